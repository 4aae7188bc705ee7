//! `fivefold bench` against a real cluster: the watch-latency workload with
//! watchers sharing streams delivers every event to every watcher, counted.

mod common;

use std::time::Duration;

use common::{bin, bounded, start};
use testkit::ClusterOptions;

const TEST_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_latency_with_shared_streams_counts_every_event() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::members(3)).await;
        let endpoints = cluster.client_urls().join(",");
        // 300 watchers on 7 streams (43 or 42 each) over 3 connections.
        let (watchers, puts) = (300u64, 40u64);
        let output = tokio::process::Command::new(bin())
            .args(["bench", "watch-latency", "--endpoints", &endpoints, "--conns", "3"])
            .args(["--watchers", &watchers.to_string(), "--watch-streams", "7", "--put-rate", "200"])
            .args(["--total", &puts.to_string(), "--time-limit", "60s", "--json"])
            .output()
            .await
            .expect("run fivefold bench");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "bench failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
        assert_eq!(report["events_missing"], 0, "every watcher sees every put: {report}");
        assert_eq!(report["requests"], watchers * puts, "one latency per delivered event: {report}");
        assert_eq!(report["errors"], 0, "{report}");
    })
    .await;
}
