//! `fivefold store`: one store member.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use store::{ClusterState, StoreConfig};

#[derive(Clone, Copy, ValueEnum)]
pub enum InitialClusterState {
    New,
    Existing,
}

fn urls(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
}

#[derive(Args)]
pub struct StoreArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Where the Raft log, the state machine and snapshots live. Default: NAME.fivefold
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to serve clients on (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Client URLs this member tells others about. Default: the listen URLs.
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// URLs to serve other members on (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// Peer URLs of this member as the others reach them. Default: the listen URLs.
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// The initial members, NAME=PEER_URL,... Default: this member alone.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` bootstraps a cluster; `existing` joins one that runs.
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: InitialClusterState,
    /// Token that keeps member and cluster ids of different clusters apart.
    #[arg(long, default_value = "fivefold-cluster")]
    pub initial_cluster_token: String,
    /// The city (failure region) this member runs in.
    #[arg(long, default_value = "local")]
    pub city: String,
    /// The data center (failure domain inside the city) this member runs in.
    #[arg(long, default_value = "local")]
    pub dc: String,
    /// Largest client request accepted, in bytes (etcd's default: 1.5 MiB).
    #[arg(long, default_value_t = mvcc::limits::REQUEST_BYTES_MAX_DEFAULT)]
    pub max_request_bytes: usize,
    /// Most operations in one Txn branch.
    #[arg(long, default_value_t = mvcc::limits::TXN_OPS_MAX_DEFAULT)]
    pub max_txn_ops: usize,
    /// Applied entries between Raft snapshots.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Log entries kept behind a snapshot so slow followers catch up without one.
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_catchup_entries: u64,
    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// How often idle watchers that asked for progress notifications get one
    /// (etcd's flag name; durations like 500ms, 5s, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Backend size in bytes past which writes are refused with a NOSPACE
    /// alarm (0: the default, 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Automatic compaction: `periodic` (keep a time window of history) or
    /// `revision` (keep the last N revisions). Off unless a retention is set.
    #[arg(long, value_enum, default_value = "periodic")]
    pub auto_compaction_mode: CompactionMode,
    /// How much history auto compaction keeps: a duration (periodic mode;
    /// a plain number means hours, as in etcd) or a revision count. 0: off.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// The city the leader should live in; leadership moves back there when a
    /// caught-up voter in it is available.
    #[arg(long)]
    pub primary_city: Option<String>,
    /// Cities of the initial members, NAME=CITY,... : starting is refused if one
    /// city would hold a majority of the voters.
    #[arg(long)]
    pub initial_cluster_placement: Option<String>,
    /// Start even if one city holds a majority of the initial voters.
    #[arg(long)]
    pub allow_majority_city: bool,
    /// Accept fault-injection rules (drop or delay messages to peers) over the
    /// peer port. For tests and demos only; never in production.
    #[arg(long, hide = true)]
    pub experimental_fault_injection: bool,
    /// Bytes of key-space pages the engine caches in memory (beyond that, the
    /// OS page cache serves reads).
    #[arg(long, default_value_t = mvcc::limits::CACHE_BYTES_DEFAULT)]
    pub backend_cache_bytes: usize,
    /// How long a watch client may leave its stream unread (with responses
    /// waiting) before the stream is ended with an error.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub experimental_watch_stall_timeout: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

fn auto_compaction(
    mode: CompactionMode,
    retention: &str,
) -> anyhow::Result<Option<store::config::AutoCompaction>> {
    use store::config::AutoCompaction;
    let plain: Option<u64> = retention.parse().ok();
    Ok(match (mode, plain) {
        (_, Some(0)) => None,
        (CompactionMode::Periodic, Some(hours)) => {
            Some(AutoCompaction::Periodic { retention: Duration::from_secs(hours * 3600) })
        }
        (CompactionMode::Periodic, None) => Some(AutoCompaction::Periodic {
            retention: parse_duration(retention)
                .map_err(|e| anyhow::anyhow!("--auto-compaction-retention: {e}"))?,
        }),
        (CompactionMode::Revision, Some(revisions)) => {
            Some(AutoCompaction::Revision { revisions: revisions.min(i64::MAX as u64) as i64 })
        }
        (CompactionMode::Revision, None) => {
            anyhow::bail!("--auto-compaction-retention must be a number of revisions in revision mode")
        }
    })
}

/// Parses a duration written as a number and a unit: ms, s, m or h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 10m"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    number.checked_mul(millis).map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

impl StoreArgs {
    pub fn to_config(&self) -> anyhow::Result<StoreConfig> {
        let data_dir =
            self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.fivefold", self.name)));
        let mut config = StoreConfig::new(&self.name, data_dir);
        config.listen_client_urls = urls(&self.listen_client_urls);
        config.advertise_client_urls = self
            .advertise_client_urls
            .as_deref()
            .map(urls)
            .unwrap_or_else(|| config.listen_client_urls.clone());
        config.listen_peer_urls = urls(&self.listen_peer_urls);
        config.initial_advertise_peer_urls = self
            .initial_advertise_peer_urls
            .as_deref()
            .map(urls)
            .unwrap_or_else(|| config.listen_peer_urls.clone());
        let cluster = match &self.initial_cluster {
            Some(value) => value.clone(),
            None => format!(
                "{}={}",
                self.name,
                config.initial_advertise_peer_urls.join(&format!(",{}=", self.name))
            ),
        };
        config.initial_cluster = store::config::parse_initial_cluster(&cluster)?;
        config.initial_cluster_state = match self.initial_cluster_state {
            InitialClusterState::New => ClusterState::New,
            InitialClusterState::Existing => ClusterState::Existing,
        };
        config.initial_cluster_token = self.initial_cluster_token.clone();
        config.city = self.city.clone();
        config.dc = self.dc.clone();
        config.max_request_bytes = self.max_request_bytes;
        config.max_txn_ops = self.max_txn_ops;
        config.snapshot_count = self.snapshot_count;
        config.snapshot_catchup_entries = self.snapshot_catchup_entries;
        config.heartbeat_interval = Duration::from_millis(self.heartbeat_interval);
        config.election_timeout = Duration::from_millis(self.election_timeout);
        config.watch_progress_notify_interval = self.experimental_watch_progress_notify_interval;
        if self.quota_backend_bytes > 0 {
            config.quota_backend_bytes = self.quota_backend_bytes;
        }
        config.auto_compaction = auto_compaction(self.auto_compaction_mode, &self.auto_compaction_retention)?;
        config.primary_city = self.primary_city.clone();
        config.allow_majority_city = self.allow_majority_city;
        config.fault_injection = self.experimental_fault_injection;
        config.backend_cache_bytes = self.backend_cache_bytes;
        config.watch_stall_timeout = self.experimental_watch_stall_timeout;
        if let Some(placement) = &self.initial_cluster_placement {
            for entry in placement.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, city) = entry.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--initial-cluster-placement: {entry:?} is not NAME=CITY")
                })?;
                config.initial_cities.push((name.to_string(), city.to_string()));
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// A future that resolves when the process is asked to stop (SIGTERM or
/// SIGINT). The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives right after a command has
/// printed its first line is neither lost nor fatal.
pub fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let config = args.to_config().context("invalid flags")?;
    store::run(config, stop_signal()?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x5s").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }

    #[test]
    fn auto_compaction_flags_follow_etcd() {
        use store::config::AutoCompaction;
        assert_eq!(auto_compaction(CompactionMode::Periodic, "0").unwrap(), None);
        assert_eq!(
            auto_compaction(CompactionMode::Periodic, "1").unwrap(),
            Some(AutoCompaction::Periodic { retention: Duration::from_secs(3600) })
        );
        assert_eq!(
            auto_compaction(CompactionMode::Periodic, "30s").unwrap(),
            Some(AutoCompaction::Periodic { retention: Duration::from_secs(30) })
        );
        assert_eq!(
            auto_compaction(CompactionMode::Revision, "1000").unwrap(),
            Some(AutoCompaction::Revision { revisions: 1000 })
        );
        assert!(auto_compaction(CompactionMode::Revision, "1h").is_err());
    }
}
