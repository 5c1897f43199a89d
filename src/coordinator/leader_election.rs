//! Leader election on a `coordination.k8s.io` Lease (kube-rs has no elector). Every write is
//! conditional on the resourceVersion read, so two replicas racing for the Lease cannot both win.
//! The holder stops its controllers when it cannot renew within [`LeaderElection::renew_deadline`],
//! which is shorter than the lease, so an old leader has stopped before a new one may take over.

use std::future::Future;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::ObjectMeta;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::error::{ClusterError, CoordinatorError};
use crate::error_policy::error_policy;
use crate::metrics::Metrics;

/// Where the Lease is and who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    /// This replica: host name and process ID.
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and followers retry.
    pub renew_interval: Duration,
    /// The holder steps down when it could not renew for this long (< `lease_duration`).
    pub renew_deadline: Duration,
}

impl LeaderElection {
    /// Lease `name` in `namespace`, 15 s lease, renewed every 5 s, stepping down after 10 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// What to do with the Lease as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it, holding it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Free or expired: take it over (a new transition).
    TakeOver,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Decides from the Lease's spec (None: no Lease) at `now`.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::TakeOver;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(at) if now.duration_since(at).as_secs() < duration => LeaseDecision::Follow {
            holder: holder.to_string(),
        },
        _ => LeaseDecision::TakeOver,
    }
}

/// The spec after `decision` (not for `Follow`).
pub fn next_spec(
    previous: Option<&LeaseSpec>,
    decision: &LeaseDecision,
    election: &LeaderElection,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = previous.cloned().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if !matches!(decision, LeaseDecision::Renew) {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(match decision {
            LeaseDecision::Create => 0,
            _ => transitions.saturating_add(1),
        });
    }
    spec.holder_identity = Some(election.identity.clone());
    spec.lease_duration_seconds = Some(election.lease_duration.as_secs() as i32);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// Tries to hold the Lease once: true when this replica holds it afterwards.
async fn try_hold(cluster: &Cluster, election: &LeaderElection) -> Result<bool, ClusterError> {
    let now = Timestamp::now();
    let current = cluster
        .get_lease(&election.namespace, &election.name)
        .await?;
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &election.identity,
        now,
    );
    if let LeaseDecision::Follow { .. } = decision {
        return Ok(false);
    }
    let spec = next_spec(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &decision,
        election,
        now,
    );
    let written = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(election.name.clone()),
                    namespace: Some(election.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            cluster.create_lease(&lease).await
        }
        Some(mut lease) => {
            // Replace at the version read: a concurrent writer makes this a 409.
            lease.spec = Some(spec);
            cluster.replace_lease(&lease).await
        }
    };
    match written {
        Ok(()) => Ok(true),
        Err(ClusterError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up on shutdown so another replica takes over at once; when that fails, it
/// expires by itself.
async fn release(cluster: &Cluster, metrics: &Metrics, election: &LeaderElection) {
    let Ok(Some(mut lease)) = cluster.get_lease(&election.namespace, &election.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(e) = cluster.replace_lease(&lease).await {
        error_policy(metrics, "releasing the lease", &lease_object(election), &e);
    }
}

/// `Lease namespace/name`, for logs.
fn lease_object(election: &LeaderElection) -> String {
    format!("Lease {}/{}", election.namespace, election.name)
}

/// Runs `lead` whenever this replica holds the Lease, until `shutdown`. `lead` gets a token that
/// is cancelled when leadership is lost; an error from it ends the election with that error.
/// `following` is called whenever another replica is seen holding the Lease.
pub async fn run_elected<L, F>(
    cluster: Cluster,
    metrics: Metrics,
    election: LeaderElection,
    shutdown: CancellationToken,
    mut following: impl FnMut(),
    mut lead: L,
) -> Result<(), CoordinatorError>
where
    L: FnMut(CancellationToken) -> F,
    F: Future<Output = Result<(), CoordinatorError>> + Send + 'static,
{
    let lease = lease_object(&election);
    loop {
        // Follow until the Lease is ours.
        loop {
            match try_hold(&cluster, &election).await {
                Ok(true) => break,
                Ok(false) => following(),
                Err(e) => {
                    error_policy(&metrics, "taking the lease", &lease, &e);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(election.renew_interval / 2) => {}
            }
        }
        tracing::info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.name), "became leader; starting the controllers");
        let leading = shutdown.child_token();
        let mut controllers = tokio::spawn(lead(leading.clone()));
        let mut renewed = Instant::now();
        let lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    leading.cancel();
                    let result = controllers.await.unwrap_or(Err(CoordinatorError::ControllersStopped));
                    release(&cluster, &metrics, &election).await;
                    return result;
                }
                result = &mut controllers => {
                    release(&cluster, &metrics, &election).await;
                    return result.unwrap_or(Err(CoordinatorError::ControllersStopped)).and(Err(CoordinatorError::ControllersStopped));
                }
                _ = tokio::time::sleep(election.renew_interval) => {}
            }
            match try_hold(&cluster, &election).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => break "another replica holds the lease",
                Err(e) => {
                    error_policy(&metrics, "renewing the lease", &lease, &e);
                    if renewed.elapsed() >= election.renew_deadline {
                        break "could not renew the lease in time";
                    }
                }
            }
        };
        tracing::warn!(reason = lost, "lost leadership; stopping the controllers");
        leading.cancel();
        if let Ok(Err(e)) = controllers.await {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(0))),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_our_own_is_renewed() {
        assert_eq!(decide(None, "me", at(0)), LeaseDecision::Create);
        assert_eq!(
            decide(Some(&held_by("me", 0)), "me", at(100)),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn another_holder_is_followed_until_its_lease_expires() {
        let spec = held_by("other", 10);
        assert_eq!(
            decide(Some(&spec), "me", at(24)),
            LeaseDecision::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(decide(Some(&spec), "me", at(25)), LeaseDecision::TakeOver);
        let mut released = spec;
        released.holder_identity = None;
        assert_eq!(
            decide(Some(&released), "me", at(11)),
            LeaseDecision::TakeOver
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let election = LeaderElection::new("ns", "lease", "me");
        let previous = held_by("other", 0);
        let taken = next_spec(Some(&previous), &LeaseDecision::TakeOver, &election, at(30));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        let renewed = next_spec(Some(&taken), &LeaseDecision::Renew, &election, at(35));
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(35))));
        let created = next_spec(None, &LeaseDecision::Create, &election, at(1));
        assert_eq!(
            (created.lease_transitions, created.lease_duration_seconds),
            (Some(0), Some(15))
        );
    }

    #[test]
    fn the_holder_steps_down_before_anyone_may_take_over() {
        let election = LeaderElection::new("ns", "lease", "me");
        assert!(election.renew_deadline < election.lease_duration);
        assert!(election.renew_interval < election.renew_deadline);
    }
}
