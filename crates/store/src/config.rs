//! A member's configuration: what the `fivefold store` flags say, checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::types::{Member, NodeId};

/// Extra room gRPC framing may take above `max_request_bytes`, as etcd allows.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// etcd's default backend quota: 2 GiB.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;

/// Whether a member starts a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name=url` pairs, etcd's `--initial-cluster`.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub city: String,
    pub dc: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Applied entries between two snapshots.
    pub snapshot_count: u64,
    /// Log entries kept behind a snapshot, for slow followers.
    pub snapshot_catchup_entries: u64,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// How long a client request may wait for the cluster (a leader, a commit).
    pub request_timeout: Duration,
    /// How often an idle watcher that asked for it gets a progress response.
    pub watch_progress_notify_interval: Duration,
    /// Backend size past which a NOSPACE alarm is raised and writes refused.
    pub quota_backend_bytes: u64,
    /// Automatic compaction, if any.
    pub auto_compaction: Option<AutoCompaction>,
    /// The city the leader should live in while it has a healthy voter there;
    /// leadership moves back to it after it recovers.
    pub primary_city: Option<String>,
    /// Cities of the initial members by name (`--initial-cluster-placement`),
    /// for the placement check; members not listed are not checked.
    pub initial_cities: Vec<(String, String)>,
    /// Start even if one city holds a majority of the initial voters.
    pub allow_majority_city: bool,
    /// Accept fault-injection rules over the peer service (tests only).
    pub fault_injection: bool,
    /// The key-space engine's page cache.
    pub backend_cache_bytes: usize,
    /// How long a watch client may leave its stream unread while responses
    /// wait, before the stream is ended with an error.
    pub watch_stall_timeout: Duration,
}

/// Default of `watch_stall_timeout`: generous, since a slow watcher costs no
/// memory (it catches up from disk); only a client that stopped reading is cut off.
pub const WATCH_STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);

/// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last `retention`.
    Periodic { retention: Duration },
    /// Keep the last `revisions` revisions.
    Revision { revisions: i64 },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{flag}: {url:?} is not a usable URL: {why} (expected http://HOST:PORT with an IP address)")]
    BadUrl { flag: &'static str, url: String, why: String },
    #[error("--initial-cluster: {entry:?} is not NAME=URL")]
    BadClusterEntry { entry: String },
    #[error("--initial-cluster does not name this member ({name}); add {name}=<peer url>")]
    NotInInitialCluster { name: String },
    #[error("--initial-cluster names {name} twice")]
    DuplicateMember { name: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "city {city} would hold {held} of {voters} voters: losing that one city could lose acknowledged \
         writes, and cut off from it the other cities could not elect a leader. Spread the voters so that no \
         city holds a majority (the default deployment is 2 + 2 + 1), or pass --allow-majority-city to accept the risk"
    )]
    MajorityCity { city: String, held: usize, voters: usize },
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
}

/// Parses `http://IP:PORT` into a socket address.
pub fn parse_url(flag: &'static str, url: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl { flag, url: url.to_string(), why: why.to_string() };
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        bad(if url.starts_with("https://") {
            "TLS is not supported yet"
        } else {
            "the scheme must be http://"
        })
    })?;
    let host_port = rest.trim_end_matches('/');
    host_port.parse::<SocketAddr>().map_err(|e| bad(&e.to_string()))
}

/// Parses etcd's `--initial-cluster` value.
pub fn parse_initial_cluster(value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) =
            entry.split_once('=').ok_or_else(|| ConfigError::BadClusterEntry { entry: entry.to_string() })?;
        parse_url("--initial-cluster", url)?;
        out.push((name.to_string(), url.to_string()));
    }
    Ok(out)
}

impl StoreConfig {
    /// A config with etcd's defaults for one member named `name`.
    pub fn new(name: &str, data_dir: PathBuf) -> StoreConfig {
        StoreConfig {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_cluster: vec![(name.to_string(), "http://127.0.0.1:2380".into())],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "fivefold-cluster".into(),
            city: "local".into(),
            dc: "local".into(),
            max_request_bytes: mvcc::limits::REQUEST_BYTES_MAX_DEFAULT,
            max_txn_ops: mvcc::limits::TXN_OPS_MAX_DEFAULT,
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5_000,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(5),
            watch_progress_notify_interval: Duration::from_secs(600),
            quota_backend_bytes: QUOTA_BACKEND_BYTES_DEFAULT,
            auto_compaction: None,
            primary_city: None,
            initial_cities: Vec::new(),
            allow_majority_city: false,
            fault_injection: false,
            backend_cache_bytes: mvcc::limits::CACHE_BYTES_DEFAULT,
            watch_stall_timeout: WATCH_STALL_TIMEOUT_DEFAULT,
        }
    }

    /// Checks the config; returns the member ids of the initial cluster.
    pub fn validate(&self) -> Result<(), ConfigError> {
        topology::validate_name("member", &self.name)?;
        topology::Placement::new(&self.city, &self.dc)?;
        for url in &self.listen_client_urls {
            parse_url("--listen-client-urls", url)?;
        }
        for url in &self.listen_peer_urls {
            parse_url("--listen-peer-urls", url)?;
        }
        for url in self.advertise_client_urls.iter() {
            parse_url("--advertise-client-urls", url)?;
        }
        for url in self.initial_advertise_peer_urls.iter() {
            parse_url("--initial-advertise-peer-urls", url)?;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (name, _) in &self.initial_cluster {
            if seen.contains(&name.as_str()) {
                return Err(ConfigError::DuplicateMember { name: name.clone() });
            }
            seen.push(name);
        }
        if !seen.contains(&self.name.as_str()) {
            return Err(ConfigError::NotInInitialCluster { name: self.name.clone() });
        }
        if self.heartbeat_interval.is_zero() || self.election_timeout < self.heartbeat_interval * 3 {
            return Err(ConfigError::Invalid(format!(
                "--election-timeout ({:?}) must be at least 3 x --heartbeat-interval ({:?})",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.max_request_bytes == 0 || self.max_txn_ops == 0 {
            return Err(ConfigError::Invalid(
                "--max-request-bytes and --max-txn-ops must be positive".into(),
            ));
        }
        if self.watch_progress_notify_interval < Duration::from_millis(10) {
            return Err(ConfigError::Invalid(
                "the watch progress notify interval must be at least 10ms".into(),
            ));
        }
        self.check_placement()?;
        if self.snapshot_count == 0 {
            return Err(ConfigError::Invalid("--snapshot-count must be positive".into()));
        }
        Ok(())
    }

    /// Refuses an initial placement in which one city holds a majority of the
    /// voters, unless allowed.
    fn check_placement(&self) -> Result<(), ConfigError> {
        for (name, city) in &self.initial_cities {
            topology::validate_name("city", city)?;
            if !self.initial_cluster.iter().any(|(n, _)| n == name) {
                return Err(ConfigError::Invalid(format!(
                    "--initial-cluster-placement names {name}, which --initial-cluster does not list"
                )));
            }
        }
        if self.allow_majority_city || self.initial_cities.len() < self.initial_cluster.len() {
            return Ok(());
        }
        let cities = self.initial_cities.iter().map(|(_, city)| city.as_str());
        match topology::city_holding_majority(cities) {
            Some(city) => Err(ConfigError::MajorityCity {
                city: city.to_string(),
                held: self.initial_cities.iter().filter(|(_, c)| c == city).count(),
                voters: self.initial_cluster.len(),
            }),
            None => Ok(()),
        }
    }

    /// The initial members with their ids, as every member computes them.
    pub fn initial_members(&self) -> Vec<(NodeId, Member)> {
        self.initial_cluster
            .iter()
            .map(|(name, url)| {
                let peer_urls = vec![url.clone()];
                let id = topology::member_id(&self.initial_cluster_token, name, &peer_urls);
                (id, Member { name: name.clone(), peer_urls, promote_when_caught_up: false })
            })
            .collect()
    }

    pub fn member_id(&self) -> NodeId {
        let url = self
            .initial_cluster
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| self.initial_advertise_peer_urls.first().cloned().unwrap_or_default());
        topology::member_id(&self.initial_cluster_token, &self.name, &[url])
    }

    pub fn cluster_id(&self) -> u64 {
        let ids: Vec<u64> = self.initial_members().iter().map(|(id, _)| *id).collect();
        topology::cluster_id(&self.initial_cluster_token, &ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cluster_lists_parse_with_clear_errors() {
        assert_eq!(parse_url("--x", "http://127.0.0.1:2379").unwrap().port(), 2379);
        assert!(parse_url("--x", "https://127.0.0.1:2379").unwrap_err().to_string().contains("TLS"));
        assert!(parse_url("--x", "127.0.0.1:2379").is_err());
        let cluster = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2").unwrap();
        assert_eq!(cluster.len(), 2);
        assert!(parse_initial_cluster("a").is_err());
    }

    #[test]
    fn a_city_holding_a_majority_is_refused_unless_allowed() {
        let mut c = StoreConfig::new("a", "/tmp/x".into());
        c.initial_cluster =
            ["a", "b", "c"].iter().map(|n| (n.to_string(), "http://127.0.0.1:1".into())).collect();
        c.initial_cities =
            vec![("a".into(), "hz".into()), ("b".into(), "hz".into()), ("c".into(), "sh".into())];
        let err = c.validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::MajorityCity { ref city, held: 2, voters: 3 } if city == "hz"),
            "{err}"
        );
        assert!(err.to_string().contains("--allow-majority-city"));
        c.allow_majority_city = true;
        assert!(c.validate().is_ok());
        c.allow_majority_city = false;
        c.initial_cities[1].1 = "sz".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation() {
        let mut c = StoreConfig::new("a", "/tmp/x".into());
        assert!(c.validate().is_ok());
        c.initial_cluster = vec![("b".into(), "http://127.0.0.1:1".into())];
        assert!(matches!(c.validate(), Err(ConfigError::NotInInitialCluster { .. })));
    }
}
