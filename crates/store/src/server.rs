//! Assembles a member — engine, Raft, services, listeners — and runs it until
//! asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use etcd_proto::etcdserverpb::cluster_server::ClusterServer;
use etcd_proto::etcdserverpb::kv_server::KvServer;
use etcd_proto::etcdserverpb::lease_server::LeaseServer;
use etcd_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use etcd_proto::etcdserverpb::watch_server::WatchServer;
use etcd_proto::fivefoldpb::peer_server::PeerServer;
use mvcc::MvccStore;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;

use crate::coalesce::Coalesced;
use crate::raft_stream::{classify, Accepted, Replayed, FIRST_BYTES_TIMEOUT};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::cluster_service::ClusterService;
use crate::config::{parse_url, ClusterState, StoreConfig, GRPC_OVERHEAD_BYTES};
use crate::kv_service::KvService;
use crate::lease_service::LeaseService;
use crate::lessor::Lessor;
use crate::log_store::LogStore;
use crate::maintenance_service::MaintenanceService;
use crate::metrics::{HttpEndpointsLayer, StoreMetrics};
use crate::network::{Network, PEER_MESSAGE_BYTES_MAX};
use crate::node::StoreNode;
use crate::peer_service::PeerService;
use crate::state_machine::StateMachine;
use crate::types::Raft;
use crate::watch_hub::WatchHub;
use crate::watch_service::WatchService;

/// Entries sent to a follower in one AppendEntries.
const APPEND_ENTRIES_MAX: u64 = 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot listen on {url}: {source} (is another member or etcd using that port?)")]
    Listen { url: String, source: std::io::Error },
    #[error("opening the store: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("member identity: {0}")]
    Identity(String),
    #[error("serving {what}: {source}")]
    Serve { what: &'static str, source: tonic::transport::Error },
}

fn raft_config(config: &StoreConfig) -> Result<openraft::Config, ServerError> {
    let election_ms = config.election_timeout.as_millis() as u64;
    openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        // `election_timeout_max` is also openraft's leader lease: followers
        // refuse votes for that long after the last heartbeat. Campaigns start
        // in `election` (after a pre-vote), never before the lease ends.
        election_timeout_min: election_ms / 2,
        election_timeout_max: election_ms,
        max_payload_entries: APPEND_ENTRIES_MAX,
        // Elections are started by `election` after a pre-vote.
        enable_elect: false,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ServerError::Raft(e.to_string()))
}

async fn bind(urls: &[String], flag: &'static str) -> Result<Vec<(String, TcpListener)>, ServerError> {
    let mut out = Vec::new();
    for url in urls {
        let addr: SocketAddr = parse_url(flag, url)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen { url: url.clone(), source })?;
        out.push((url.clone(), listener));
    }
    Ok(out)
}

/// Accepted connections, with Nagle's algorithm off (small gRPC messages —
/// heartbeats, read-index rounds — must not wait for delayed ACKs) and their
/// writes gathered per scheduler pass instead (`coalesce`).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Coalesced<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt as _;
    TcpIncoming::from(listener).with_nodelay(Some(true)).map(|accepted| accepted.map(Coalesced::new))
}

/// Peer connections accepted and classified, waiting for the gRPC server.
const PEER_ACCEPT_QUEUE: usize = 64;
/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// A peer connection handed to gRPC: the bytes read to classify it put back,
/// its writes coalesced.
type PeerGrpcConnection = Coalesced<Replayed<tokio::net::TcpStream>>;

/// The peer listener's connections: raft streams (`raft_stream`) are served
/// here; the rest go to the gRPC server, as `incoming` would give them.
fn peer_incoming(
    listener: TcpListener,
    node: Arc<StoreNode>,
    stop: watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = std::io::Result<PeerGrpcConnection>> {
    let (grpc, connections) = tokio::sync::mpsc::channel(PEER_ACCEPT_QUEUE);
    let mut stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "peer connection lost before use");
                continue;
            }
            tokio::spawn(route(stream, node.clone(), grpc.clone(), stop.clone()));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// Serves a new peer connection as a raft stream, or hands it to gRPC,
/// once its first bytes say which.
async fn route(
    stream: tokio::net::TcpStream,
    node: Arc<StoreNode>,
    grpc: tokio::sync::mpsc::Sender<std::io::Result<PeerGrpcConnection>>,
    mut stop: watch::Receiver<bool>,
) {
    let first_bytes = tokio::time::timeout(FIRST_BYTES_TIMEOUT, classify(stream));
    let classified = tokio::select! {
        classified = first_bytes => classified,
        _ = stop.wait_for(|stop| *stop) => return,
    };
    match classified {
        Ok(Ok(Accepted::Stream(stream))) => crate::raft_stream::serve(node, stream, stop).await,
        Ok(Ok(Accepted::Grpc(stream))) => {
            let _ = grpc.send(Ok(Coalesced::new(stream))).await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "peer connection lost before use"),
        Err(_) => tracing::debug!("peer connection sent nothing; closed"),
    }
}

/// The Raft log's directory inside the data dir.
pub const RAFT_LOG_DIR: &str = "raft-log";

/// Runs a member until `shutdown` completes, then stops it cleanly: servers
/// first, then Raft, then a durable commit of the state machine.
pub async fn run(config: StoreConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|source| ServerError::DataDir { path: data_dir.display().to_string(), source })?;
    let peer_listeners = bind(&config.listen_peer_urls, "--listen-peer-urls").await?;
    let client_listeners = bind(&config.listen_client_urls, "--listen-client-urls").await?;

    let identity =
        crate::identity::establish(&config).await.map_err(|e| ServerError::Identity(e.to_string()))?;
    let log_dir = data_dir.join(RAFT_LOG_DIR);
    crate::log_migrate::migrate(&data_dir, &log_dir).map_err(|e| ServerError::Storage(e.to_string()))?;
    let metrics = Arc::new(StoreMetrics::default());
    let log = LogStore::open_with_metrics(&log_dir, metrics.clone())
        .map_err(|e| ServerError::Storage(e.to_string()))?;
    let mvcc = Arc::new(
        MvccStore::open_with_cache(&data_dir.join("mvcc.redb"), config.backend_cache_bytes)
            .map_err(|e| ServerError::Storage(e.to_string()))?,
    );
    let (revision, compacted) = mvcc.revisions().map_err(|e| ServerError::Storage(e.to_string()))?;
    let watch_hub = Arc::new(WatchHub::new(revision));
    watch_hub.publish(Vec::new(), revision, compacted);
    let lessor = Arc::new(Lessor::new(identity.member_id));
    let state_machine = StateMachine::new(
        mvcc.clone(),
        watch_hub.clone(),
        lessor.clone(),
        &data_dir.join("snap"),
        metrics.clone(),
    )
    .map_err(|source| ServerError::DataDir { path: data_dir.display().to_string(), source })?;
    let network = Network::default();
    let channels = network.channels.clone();
    let raft = Raft::new(identity.member_id, Arc::new(raft_config(&config)?), network, log, state_machine)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let node = Arc::new(StoreNode::new(
        raft,
        mvcc.clone(),
        watch_hub,
        lessor,
        config.clone(),
        identity,
        channels,
        metrics,
    ));
    tracing::info!(
        name = %config.name, member_id = format_args!("{:x}", node.member_id),
        cluster_id = format_args!("{:x}", node.cluster_id), city = %config.city, dc = %config.dc,
        revision = mvcc.revision(), "member starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    for (url, listener) in peer_listeners {
        let service = PeerServer::new(PeerService { node: node.clone() })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let signal = stopped(stop_rx.clone());
        let connections = peer_incoming(listener, node.clone(), stop_rx.clone());
        servers.spawn(async move {
            tracing::info!(%url, "serving peers");
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(connections, signal)
                .await
                .map_err(|source| ServerError::Serve { what: "peers", source })
        });
    }
    let decode_max = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    for (url, listener) in client_listeners {
        let kv = KvServer::new(KvService { node: node.clone() }).max_decoding_message_size(decode_max);
        let maintenance = MaintenanceServer::new(MaintenanceService { node: node.clone() })
            .max_decoding_message_size(decode_max);
        let cluster =
            ClusterServer::new(ClusterService { node: node.clone() }).max_decoding_message_size(decode_max);
        let watch = WatchServer::new(WatchService {
            node: node.clone(),
            progress_notify_interval: config.watch_progress_notify_interval,
        })
        .max_decoding_message_size(decode_max);
        let lease =
            LeaseServer::new(LeaseService { node: node.clone() }).max_decoding_message_size(decode_max);
        let signal = stopped(stop_rx.clone());
        let http = HttpEndpointsLayer { node: node.clone() };
        servers.spawn(async move {
            tracing::info!(%url, "serving clients");
            // HTTP/1.1 too: etcd's `GET /metrics`, `/health` and `/version`
            // share the client port with gRPC.
            tonic::transport::Server::builder()
                .accept_http1(true)
                // Outermost first: HTTP/1 requests are answered before the
                // gRPC status alignment, which only gRPC responses need.
                .layer(http)
                .layer(tower::util::MapResponseLayer::new(crate::grpc_status::align_codes))
                .add_service(kv)
                .add_service(maintenance)
                .add_service(cluster)
                .add_service(watch)
                .add_service(lease)
                .serve_with_incoming_shutdown(incoming(listener), signal)
                .await
                .map_err(|source| ServerError::Serve { what: "clients", source })
        });
    }

    if config.initial_cluster_state == ClusterState::New {
        node.bootstrap().await.map_err(|e| ServerError::Raft(e.message().to_string()))?;
    }
    let read_rounds = tokio::spawn(node.clone().run_read_rounds());
    let forwards = tokio::spawn(node.clone().run_forwards());
    let elections = tokio::spawn(node.clone().run_elections());
    let publisher = tokio::spawn(node.clone().publish_attributes());
    let lease_clock = tokio::spawn(node.clone().run_lease_expiry());
    let apply_commits = tokio::spawn(node.clone().run_apply_commits());
    let promoter = tokio::spawn(node.clone().run_promoter());
    let placement = tokio::spawn(node.clone().run_leader_placement());
    let leader_watch = tokio::spawn(node.clone().run_leader_watch());
    let compactor = config.auto_compaction.map(|mode| tokio::spawn(node.clone().run_auto_compaction(mode)));

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        Some(result) = servers.join_next() => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ServerError::Raft(format!("server task failed: {e}"))),
        },
    };
    tracing::info!("member stopping");
    publisher.abort();
    read_rounds.abort();
    forwards.abort();
    elections.abort();
    lease_clock.abort();
    apply_commits.abort();
    promoter.abort();
    placement.abort();
    leader_watch.abort();
    if let Some(compactor) = compactor {
        compactor.abort();
    }
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    mvcc.persist().map_err(|e| ServerError::Storage(e.to_string()))?;
    tracing::info!("member stopped");
    outcome
}
