//! Who a member is: its member id and its cluster's id, fixed on first start
//! and kept in the data dir, as etcd keeps them. Later starts read them back
//! and ignore `--initial-cluster`.
//!
//! - A member of a new cluster derives both from `--initial-cluster` (every
//!   initial member computes the same ids).
//! - A member joining a running cluster (`--initial-cluster-state existing`)
//!   asks the members listed in `--initial-cluster` for the membership and
//!   finds the id the leader gave it at MemberAdd by its peer URL.

use std::path::Path;
use std::time::Duration;

use etcd_proto::etcdserverpb::MemberListRequest;

use crate::config::{ClusterState, StoreConfig};
use crate::network::peer_client;

const IDENTITY_FILE: &str = "member.identity";
/// How long a joining member keeps asking the cluster for its id.
const JOIN_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: String, why: String },
    #[error(
        "joining: no member listed in --initial-cluster knows a member with peer URL {url}; \
         add it first with `etcdctl member add NAME --peer-urls={url}`"
    )]
    NotAdded { url: String },
}

fn read(path: &Path) -> Result<Option<Identity>, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path: path.display().to_string(), source }),
    };
    let corrupt =
        |why: &str| IdentityError::Corrupt { path: path.display().to_string(), why: why.to_string() };
    let mut member_id = None;
    let mut cluster_id = None;
    for line in text.lines() {
        let (key, value) = line.split_once('=').ok_or_else(|| corrupt("a line is not key=value"))?;
        let value = u64::from_str_radix(value.trim(), 16).map_err(|_| corrupt("an id is not hexadecimal"))?;
        match key.trim() {
            "member_id" => member_id = Some(value),
            "cluster_id" => cluster_id = Some(value),
            _ => return Err(corrupt("unknown key")),
        }
    }
    match (member_id, cluster_id) {
        (Some(member_id), Some(cluster_id)) => Ok(Some(Identity { member_id, cluster_id })),
        _ => Err(corrupt("member_id or cluster_id missing")),
    }
}

fn write(path: &Path, identity: Identity) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io { path: path.display().to_string(), source };
    let text = format!("member_id={:x}\ncluster_id={:x}\n", identity.member_id, identity.cluster_id);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads the identity kept in the data dir, or establishes it on first start.
pub async fn establish(config: &StoreConfig) -> Result<Identity, IdentityError> {
    let path = config.data_dir.join(IDENTITY_FILE);
    if let Some(identity) = read(&path)? {
        return Ok(identity);
    }
    let identity = match config.initial_cluster_state {
        ClusterState::New => Identity { member_id: config.member_id(), cluster_id: config.cluster_id() },
        ClusterState::Existing => look_up(config).await?,
    };
    write(&path, identity)?;
    Ok(identity)
}

async fn look_up(config: &StoreConfig) -> Result<Identity, IdentityError> {
    let own: Vec<&String> = config.initial_advertise_peer_urls.iter().collect();
    let url = own.first().map(|u| u.to_string()).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + JOIN_LOOKUP_TIMEOUT;
    loop {
        for (name, peer) in &config.initial_cluster {
            if *name == config.name || own.contains(&peer) {
                continue;
            }
            let Ok(mut client) = peer_client(peer) else { continue };
            let mut request = tonic::Request::new(MemberListRequest { linearizable: false });
            request.set_timeout(Duration::from_secs(2));
            let Ok(reply) = client.members(request).await else { continue };
            let reply = reply.into_inner();
            let cluster_id = reply.header.map_or(0, |h| h.cluster_id);
            if let Some(member) = reply.members.iter().find(|m| m.peer_ur_ls.iter().any(|u| own.contains(&u)))
            {
                tracing::info!(member_id = format_args!("{:x}", member.id), via = %peer, "joining an existing cluster");
                return Ok(Identity { member_id: member.id, cluster_id });
            }
            return Err(IdentityError::NotAdded { url });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(IdentityError::NotAdded { url });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(read(&path).unwrap(), None);
        let identity = Identity { member_id: 0xabc, cluster_id: u64::MAX };
        write(&path, identity).unwrap();
        assert_eq!(read(&path).unwrap(), Some(identity));
        std::fs::write(&path, "member_id=zz\n").unwrap();
        assert!(matches!(read(&path), Err(IdentityError::Corrupt { .. })));
    }
}
