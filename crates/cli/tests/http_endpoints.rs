//! etcd's plain HTTP endpoints on the client port, beside gRPC:
//! `GET /metrics` (Prometheus text), `GET /health`, `GET /version`.

mod common;

use std::time::Duration;

use common::{bounded, http_get, metric_samples, poll_until, start, wait_same_revision};
use testkit::ClusterOptions;

const STEP_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_version_are_served_on_the_client_port() {
    bounded(Duration::from_secs(120), async {
        let mut cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(0).await;
        for i in 0..20 {
            client.put(format!("http/{i}"), "v", None).await.expect("put over gRPC on the same port");
        }
        let revision = wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;
        let version = client.status().await.expect("status").version().to_string();

        let mut leaders = 0;
        for index in 0..cluster.len() {
            let url = cluster.client_url(index);
            let (status, content_type, text) = http_get(&url, "/metrics").await;
            assert_eq!(status, 200, "{text}");
            assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
            let metrics = metric_samples(&text);
            let value = |name: &str| {
                *metrics.get(name).unwrap_or_else(|| panic!("{name} in member {index}'s metrics"))
            };
            assert_eq!(value("etcd_server_has_leader"), 1.0);
            leaders += value("etcd_server_is_leader") as usize;
            assert!(value("etcd_server_leader_changes_seen_total") >= 1.0, "the first election counts");
            assert_eq!(value("etcd_debugging_mvcc_current_revision"), revision as f64);
            assert!(value("etcd_mvcc_db_total_size_in_bytes") > 0.0);
            assert!(
                value("etcd_server_proposals_applied_total") >= 20.0,
                "20 writes and more entries applied"
            );
            // Every member fsyncs its log and applies the writes.
            let fsyncs = value("etcd_disk_wal_fsync_duration_seconds_count");
            assert!(fsyncs >= 1.0, "member {index} timed its log syncs");
            assert_eq!(value("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"), fsyncs);
            assert!(value("fivefold_apply_duration_seconds_count") >= 1.0);
            assert!(text.contains("# TYPE etcd_disk_backend_commit_duration_seconds histogram"), "{text}");

            let (status, content_type, body) = http_get(&url, "/health").await;
            assert_eq!((status, body.as_str()), (200, "{\"health\":\"true\",\"reason\":\"\"}"));
            assert_eq!(content_type, "application/json");
            let (status, _, body) = http_get(&url, "/version").await;
            assert_eq!(status, 200);
            assert!(
                body.contains(&format!("\"etcdserver\":\"{version}\"")),
                "{body} against Status {version}"
            );
            let (status, _, _) = http_get(&url, "/no-such-page").await;
            assert_eq!(status, 404, "another path over HTTP/1.1");
        }
        assert_eq!(leaders, 1, "exactly one member reports itself leader");

        // Two of three members gone: the last one has no quorum and says so.
        cluster.kill(1).expect("kill member 1");
        cluster.kill(2).expect("kill member 2");
        let url = cluster.client_url(0);
        poll_until(STEP_LIMIT, "member 0 reports itself unhealthy", || {
            let url = url.clone();
            async move {
                let (status, _, body) = http_get(&url, "/health").await;
                if status == 503 && body.contains("\"health\":\"false\"") {
                    Ok(())
                } else {
                    Err(format!("{status} {body}"))
                }
            }
        })
        .await;
    })
    .await;
}
