//! The SDK side: an instance registers itself and keeps its lease alive.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::etcd_client::{Client, PutOptions};
use tokio::task::JoinHandle;

use crate::{Instance, RegistryError};

/// Lease TTL of a registration unless the caller picks one: a crashed instance
/// disappears for subscribers within this many seconds.
pub const DEFAULT_TTL_SECONDS: i64 = 5;
/// Smallest TTL accepted (the store's own minimum lease TTL is lower, but a
/// keep-alive every TTL/3 needs room on a loaded machine).
pub const TTL_SECONDS_MIN: i64 = 2;
/// Pause before retrying a failed keep-alive stream.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A registered instance. [`Registration::deregister`] removes it at once;
/// dropping it stops the keep-alives without revoking, as a crash would, so the
/// record disappears when the lease expires.
pub struct Registration {
    instance: Instance,
    /// The record as last asked for, shared with the keeper, which writes it
    /// again if the lease is lost.
    record: Arc<Mutex<Instance>>,
    client: Client,
    lease: Arc<AtomicI64>,
    keeper: JoinHandle<()>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("key", &self.instance.key()).finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

async fn put_under_new_lease(
    client: &mut Client,
    instance: &Instance,
    ttl: i64,
) -> Result<i64, RegistryError> {
    let lease = client.lease_grant(ttl, None).await?.id();
    client.put(instance.key(), instance.to_json(), Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

impl Registration {
    /// Validates `instance`, writes its record under a new lease of
    /// `ttl_seconds`, and keeps the lease alive (every TTL/3) until deregistered
    /// or dropped. If the lease is lost anyway (a long pause), the record is
    /// written again under a new one.
    pub async fn register(
        mut client: Client,
        instance: Instance,
        ttl_seconds: i64,
    ) -> Result<Registration, RegistryError> {
        instance.validate()?;
        if ttl_seconds < TTL_SECONDS_MIN {
            return Err(RegistryError::Invalid(format!(
                "ttl {ttl_seconds} s is below the minimum of {TTL_SECONDS_MIN} s"
            )));
        }
        let lease = Arc::new(AtomicI64::new(put_under_new_lease(&mut client, &instance, ttl_seconds).await?));
        let record = Arc::new(Mutex::new(instance.clone()));
        let keeper = tokio::spawn(keep_alive(client.clone(), record.clone(), ttl_seconds, lease.clone()));
        Ok(Registration { instance, record, client, lease, keeper })
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The lease the record lives under now.
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Rewrites the record (health, weight, metadata...) under the same lease.
    pub async fn update(&mut self, instance: Instance) -> Result<(), RegistryError> {
        instance.validate()?;
        if instance.key() != self.instance.key() {
            return Err(RegistryError::Invalid("an update cannot change the service or the id".into()));
        }
        // Should the lease be lost from now on, the keeper writes this version.
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = instance.clone();
        let options = PutOptions::new().with_lease(self.lease());
        self.client.put(instance.key(), instance.to_json(), Some(options)).await?;
        self.instance = instance;
        Ok(())
    }

    /// Removes the record now (revokes its lease).
    pub async fn deregister(mut self) -> Result<(), RegistryError> {
        self.keeper.abort();
        self.client.lease_revoke(self.lease()).await?;
        Ok(())
    }
}

/// etcd-client's report of a keep-alive answered with TTL 0: the lease is gone.
pub(crate) fn lease_gone(error: &client::etcd_client::Error) -> bool {
    matches!(error, client::etcd_client::Error::LeaseKeepAliveError(m) if m.contains("lease not found"))
}

async fn keep_alive(mut client: Client, record: Arc<Mutex<Instance>>, ttl: i64, lease: Arc<AtomicI64>) {
    let interval = Duration::from_millis((ttl as u64 * 1000) / 3);
    let key = record.lock().unwrap_or_else(|p| p.into_inner()).key();
    let register_again = |client: &Client| {
        let mut client = client.clone();
        let instance = record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lease = lease.clone();
        async move {
            // The lease expired (this process stalled past its TTL, or was cut
            // off from the store that long): register under a new lease.
            tracing::warn!(key = %instance.key(), "lease expired; registering again");
            match put_under_new_lease(&mut client, &instance, ttl).await {
                Ok(new) => lease.store(new, Ordering::SeqCst),
                Err(error) => tracing::warn!(key = %instance.key(), %error, "re-registration failed"),
            }
        }
    };
    loop {
        let id = lease.load(Ordering::SeqCst);
        // Opening the stream renews the lease once (etcd-client sends the first
        // keep-alive itself and reports a TTL of 0 as an error).
        let (mut keeper, mut responses) = match client.lease_keep_alive(id).await {
            Ok(pair) => pair,
            Err(error) if lease_gone(&error) => {
                register_again(&client).await;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%key, %error, "keep-alive stream failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        loop {
            tokio::time::sleep(interval).await;
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match responses.message().await {
                Ok(Some(response)) if response.ttl() > 0 => {}
                Ok(Some(_)) => {
                    register_again(&client).await;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
