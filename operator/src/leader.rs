//! Leader election through a `coordination.k8s.io/v1` Lease (kube 5 has none built in).
//! [`may_take`] decides (pure); [`LeaseLock`] talks to the API with optimistic
//! concurrency (a replace carries the resourceVersion it read, so two candidates cannot
//! both win).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, api::PostParams};
use tokio::sync::watch;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease object name.
    pub name: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_every: Duration,
}

/// Whether `identity` may take or renew a lease at `now`.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let Some(renewed) = spec.renew_time.as_ref() else {
                return true;
            };
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            renewed.0 + SignedDuration::from_secs(seconds) < now
        }
    }
}

/// One candidate's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaseLock {
    /// A lock on `config.name` in the Lease API given.
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Self { api, config }
    }

    fn spec(&self, old: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = old.and_then(|s| s.holder_identity.as_deref()) == Some(&self.config.identity);
        let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                old.and_then(|s| s.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || old.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease; `Ok(false)` when another candidate holds it or won a race.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.config.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, now)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                if !may_take(lease.spec.as_ref(), &self.config.identity, now) {
                    return Ok(false);
                }
                lease.spec = Some(self.spec(lease.spec.as_ref(), now));
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the lease up (on shutdown) so another candidate need not wait for expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.config.name).await?
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.config.identity)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await?;
        }
        Ok(())
    }

    /// Campaigns and renews until `shutdown` fires, publishing leadership on `leading`.
    /// Leadership is dropped when a renewal does not succeed within the lease duration.
    pub async fn run(&self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    last_ok = tokio::time::Instant::now();
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.config.identity, "became leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!("lost the lease to another candidate");
                    }
                    leading.send_replace(false);
                }
                Err(error) => {
                    tracing::warn!(%error, "failed to renew the lease");
                    if *leading.borrow() && last_ok.elapsed() >= self.config.duration {
                        tracing::warn!("lease expired without renewal, stepping down");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.renew_every) => {}
                _ = shutdown.changed() => break,
            }
        }
        if *leading.borrow() {
            if let Err(error) = self.release().await {
                tracing::warn!(%error, "failed to release the lease");
            }
            leading.send_replace(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("ts"))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_rules() {
        let now = Timestamp::from_second(1000).expect("ts");
        assert!(may_take(None, "a", now), "no lease yet");
        assert!(may_take(Some(&spec(None, 999)), "a", now), "released");
        assert!(may_take(Some(&spec(Some("a"), 999)), "a", now), "renew own");
        assert!(
            !may_take(Some(&spec(Some("b"), 990)), "a", now),
            "held by b"
        );
        assert!(may_take(Some(&spec(Some("b"), 980)), "a", now), "b expired");
    }
}
