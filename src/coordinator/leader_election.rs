//! Leader election on a `coordination.k8s.io` Lease (kube-rs has no elector), the way client-go
//! does it:
//! - every write is conditional on the resourceVersion read, so two replicas racing for the Lease
//!   cannot both win;
//! - a follower never compares the holder's `renewTime` with its own clock: it keeps the record it
//!   last saw and the local monotonic instant it saw it change ([`ObservedLease`]), and takes over
//!   only once the record has not changed for the lease duration by its own clock, so clock skew
//!   between replicas cannot make a follower take over a Lease that is being renewed;
//! - every attempt to take or renew the Lease is bounded in time, and the holder steps down once
//!   [`LeaderElection::renew_deadline`] has elapsed since its last successful renewal, whether
//!   the attempts failed or hung. The deadline is shorter than the lease duration, so an old
//!   leader has stopped before any follower may take over;
//! - the controllers get a [`Leadership`] handle, valid until the renew deadline of the last
//!   successful renewal, and [`crate::cluster::Cluster::for_leader`] checks it before every
//!   status write and Event, so a pass in flight when leadership is lost writes nothing more.

use std::future::Future;
use std::sync::{Arc, Mutex};
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

/// Whether this replica leads, shared by the election and the controllers it runs: valid until
/// an instant (the renew deadline of the last successful renewal, by the monotonic clock), so it
/// lapses by itself even before the election loop notices.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// None: always leads (no leader election configured).
    until: Option<Arc<Mutex<Term>>>,
}

/// One leadership term: valid until an instant, until revoked for good.
#[derive(Debug, Default)]
struct Term {
    until: Option<Instant>,
    revoked: bool,
}

impl Leadership {
    /// Leadership that never lapses: the only replica, no election.
    pub fn always() -> Self {
        Self { until: None }
    }

    /// Not leading (yet).
    pub fn not_yet() -> Self {
        Self {
            until: Some(Arc::new(Mutex::new(Term::default()))),
        }
    }

    fn lock(term: &Mutex<Term>) -> std::sync::MutexGuard<'_, Term> {
        term.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this replica leads now.
    pub fn holds(&self) -> bool {
        self.holds_at(Instant::now())
    }

    /// Whether this replica leads at `now`.
    pub fn holds_at(&self, now: Instant) -> bool {
        match &self.until {
            None => true,
            Some(term) => {
                let term = Self::lock(term);
                !term.revoked && term.until.is_some_and(|u| now < u)
            }
        }
    }

    /// Leads until `until` (a renewal succeeded); nothing once revoked.
    pub fn extend(&self, until: Instant) {
        if let Some(term) = &self.until {
            let mut term = Self::lock(term);
            if !term.revoked {
                term.until = Some(until);
            }
        }
    }

    /// Stops leading now (stepped down), for good: a later term gets a new handle.
    pub fn revoke(&self) {
        if let Some(term) = &self.until {
            let mut term = Self::lock(term);
            term.revoked = true;
            term.until = None;
        }
    }
}

/// The Lease record as last seen, and when (by this replica's monotonic clock) it was first seen
/// in this form: client-go's `observedRecord` and `observedTime`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedLease {
    pub spec: LeaseSpec,
    pub since: Instant,
}

/// The observation after reading `current` at `now`: unchanged records keep their first sighting.
pub fn observe(
    previous: Option<ObservedLease>,
    current: &LeaseSpec,
    now: Instant,
) -> ObservedLease {
    match previous {
        Some(seen) if seen.spec == *current => seen,
        _ => ObservedLease {
            spec: current.clone(),
            since: now,
        },
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

/// Decides from the Lease's spec (None: no Lease) as observed in `observed` (the result of
/// [`observe`] on that spec) at `now`. Another holder's Lease expires once it has not changed for
/// its lease duration (`fallback` when it names none) by this replica's clock; the times written
/// in it are never compared with this replica's clock.
pub fn decide(
    lease: Option<&LeaseSpec>,
    observed: Option<&ObservedLease>,
    identity: &str,
    now: Instant,
    fallback: Duration,
) -> LeaseDecision {
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
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(fallback, |s| Duration::from_secs(s.unsigned_abs().into()));
    // Seen unchanged since when: a record not (yet) observed counts as first seen now.
    let since = observed
        .filter(|o| o.spec == *spec)
        .map_or(now, |o| o.since);
    if now.saturating_duration_since(since) < duration {
        LeaseDecision::Follow {
            holder: holder.to_string(),
        }
    } else {
        LeaseDecision::TakeOver
    }
}

/// The spec after `decision` (not for `Follow`). The times written are for people and tools
/// reading the Lease; no replica of relaunch compares them with its own clock.
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
    spec.lease_duration_seconds =
        Some(i32::try_from(election.lease_duration.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// Tries to hold the Lease once: true when this replica holds it afterwards. `observed` is kept
/// up to date with what was read.
async fn try_hold(
    cluster: &Cluster,
    election: &LeaderElection,
    observed: &mut Option<ObservedLease>,
) -> Result<bool, ClusterError> {
    let current = cluster
        .get_lease(&election.namespace, &election.name)
        .await?;
    let now = Instant::now();
    let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
    if let Some(spec) = &spec {
        *observed = Some(observe(observed.take(), spec, now));
    }
    let decision = decide(
        spec.as_ref(),
        observed.as_ref(),
        &election.identity,
        now,
        election.lease_duration,
    );
    if let LeaseDecision::Follow { .. } = decision {
        return Ok(false);
    }
    let next = next_spec(spec.as_ref(), &decision, election, Timestamp::now());
    let written = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(election.name.clone()),
                    namespace: Some(election.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(next.clone()),
            };
            cluster.create_lease(&lease).await
        }
        Some(mut lease) => {
            // Replace at the version read: a concurrent writer makes this a 409.
            lease.spec = Some(next.clone());
            cluster.replace_lease(&lease).await
        }
    };
    match written {
        Ok(()) => {
            *observed = Some(ObservedLease {
                spec: next,
                since: Instant::now(),
            });
            Ok(true)
        }
        Err(ClusterError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`try_hold`], given up at `deadline`: an API server that does not answer makes the attempt
/// fail in time instead of hanging (the client has no read timeout of its own).
async fn try_hold_until(
    cluster: &Cluster,
    election: &LeaderElection,
    observed: &mut Option<ObservedLease>,
    deadline: Instant,
) -> Result<bool, ClusterError> {
    match tokio::time::timeout_at(deadline.into(), try_hold(cluster, election, observed)).await {
        Ok(result) => result,
        Err(_) => Err(ClusterError::Timeout(kube::Error::Service(Box::new(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer about the lease before the deadline",
            ),
        )))),
    }
}

/// Gives the Lease up on shutdown so another replica takes over at once; when that fails (or
/// takes longer than `within`), it expires by itself.
async fn release(
    cluster: &Cluster,
    metrics: &Metrics,
    election: &LeaderElection,
    within: Duration,
) {
    let give_up = async {
        let Ok(Some(mut lease)) = cluster.get_lease(&election.namespace, &election.name).await
        else {
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
    };
    if tokio::time::timeout(within, give_up).await.is_err() {
        tracing::warn!(lease = %lease_object(election), "could not release the lease in time; it expires by itself");
    }
}

/// `Lease namespace/name`, for logs.
fn lease_object(election: &LeaderElection) -> String {
    format!("Lease {}/{}", election.namespace, election.name)
}

/// Waits up to `grace` for the controllers to stop once told to, then aborts them: a call
/// hanging on an API server that does not answer must not keep this replica from following.
/// None when they had to be aborted.
async fn stop_controllers(
    mut controllers: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
    grace: Duration,
) -> Option<Result<(), CoordinatorError>> {
    match tokio::time::timeout(grace, &mut controllers).await {
        Ok(joined) => Some(joined.unwrap_or(Err(CoordinatorError::ControllersStopped))),
        Err(_) => {
            tracing::warn!("the controllers did not stop in time; aborting them");
            controllers.abort();
            let _ = controllers.await;
            None
        }
    }
}

/// Runs `lead` whenever this replica holds the Lease, until `shutdown`. `lead` gets the
/// [`Leadership`] of its term (check it before every write) and a token that is cancelled when
/// leadership is lost; an error from it ends the election with that error. `following` is called
/// whenever another replica is seen holding the Lease.
pub async fn run_elected<L, F>(
    cluster: Cluster,
    metrics: Metrics,
    election: LeaderElection,
    shutdown: CancellationToken,
    mut following: impl FnMut(),
    mut lead: L,
) -> Result<(), CoordinatorError>
where
    L: FnMut(Leadership, CancellationToken) -> F,
    F: Future<Output = Result<(), CoordinatorError>> + Send + 'static,
{
    let lease = lease_object(&election);
    let mut observed: Option<ObservedLease> = None;
    // Retries after a failed renewal come sooner than renewals, so a short outage does not
    // cost the leadership.
    let retry = (election.renew_interval / 4).max(Duration::from_millis(10));
    metrics.leader.set(0);
    loop {
        // Follow until the Lease is ours; `renewed` is when the winning attempt started.
        let mut renewed = loop {
            let start = Instant::now();
            let deadline = start + election.renew_interval;
            match try_hold_until(&cluster, &election, &mut observed, deadline).await {
                Ok(true) => break start,
                Ok(false) => following(),
                Err(e) => {
                    error_policy(&metrics, "taking the lease", &lease, &e);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(election.renew_interval / 2) => {}
            }
        };
        let leadership = Leadership::not_yet();
        leadership.extend(renewed + election.renew_deadline);
        metrics.leader.set(1);
        tracing::info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.name), "became leader; starting the controllers");
        let leading = shutdown.child_token();
        let mut controllers = tokio::spawn(lead(leadership.clone(), leading.clone()));
        let mut wait = election.renew_interval;
        let lost = loop {
            // Leadership ends at the renew deadline of the last successful renewal, whatever
            // the attempts in between did.
            let deadline = renewed + election.renew_deadline;
            let next = Instant::now()
                .checked_add(wait)
                .unwrap_or(deadline)
                .min(deadline);
            tokio::select! {
                _ = shutdown.cancelled() => {
                    leadership.revoke();
                    metrics.leader.set(0);
                    leading.cancel();
                    let result = stop_controllers(controllers, election.renew_interval).await;
                    release(&cluster, &metrics, &election, election.renew_interval).await;
                    return result.unwrap_or(Ok(()));
                }
                result = &mut controllers => {
                    leadership.revoke();
                    metrics.leader.set(0);
                    release(&cluster, &metrics, &election, election.renew_interval).await;
                    return result.unwrap_or(Err(CoordinatorError::ControllersStopped)).and(Err(CoordinatorError::ControllersStopped));
                }
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            let start = Instant::now();
            if start >= deadline {
                break "could not renew the lease within the renew deadline";
            }
            match try_hold_until(&cluster, &election, &mut observed, deadline).await {
                Ok(true) => {
                    renewed = start;
                    leadership.extend(start + election.renew_deadline);
                    wait = election.renew_interval;
                }
                Ok(false) => break "another replica holds the lease",
                Err(e) => {
                    error_policy(&metrics, "renewing the lease", &lease, &e);
                    wait = retry;
                }
            }
        };
        // Stop writing first: the controllers check the leadership before every write.
        leadership.revoke();
        metrics.leader.set(0);
        metrics.rollouts.clear();
        tracing::warn!(reason = lost, "lost leadership; stopping the controllers");
        leading.cancel();
        if let Some(Err(e)) = stop_controllers(controllers, election.renew_interval).await {
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

    const LEASE: Duration = Duration::from_secs(15);

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

    /// A follower reading `spec` at `now` after having observed `seen`: what it decides, and
    /// what it observes afterwards.
    fn read(
        seen: Option<ObservedLease>,
        spec: &LeaseSpec,
        now: Instant,
    ) -> (LeaseDecision, Option<ObservedLease>) {
        let seen = observe(seen, spec, now);
        let decision = decide(Some(spec), Some(&seen), "me", now, LEASE);
        (decision, Some(seen))
    }

    #[test]
    fn a_missing_lease_is_created_and_our_own_is_renewed() {
        let now = Instant::now();
        assert_eq!(decide(None, None, "me", now, LEASE), LeaseDecision::Create);
        assert_eq!(
            decide(Some(&held_by("me", 0)), None, "me", now, LEASE),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn an_unchanged_lease_expires_after_the_lease_duration_by_the_local_clock() {
        let t0 = Instant::now();
        let spec = held_by("other", 10);
        let follow = LeaseDecision::Follow {
            holder: "other".into(),
        };
        let (decision, seen) = read(None, &spec, t0);
        assert_eq!(
            decision, follow,
            "first sighting: a full lease duration to go"
        );
        let (decision, seen) = read(seen, &spec, t0 + Duration::from_secs(14));
        assert_eq!(decision, follow);
        let (decision, _) = read(seen, &spec, t0 + LEASE);
        assert_eq!(decision, LeaseDecision::TakeOver);
        let mut released = spec;
        released.holder_identity = None;
        assert_eq!(read(None, &released, t0).0, LeaseDecision::TakeOver);
    }

    #[test]
    fn clock_skew_cannot_cause_the_takeover_of_a_lease_that_keeps_changing() {
        // The holder's clock is an hour behind ours: its renewTime looks long expired, but it
        // renews every 5 s, and we see each renewal.
        let t0 = Instant::now();
        let mut seen = None;
        for renewal in 0..20u64 {
            let now = t0 + Duration::from_secs(5 * renewal);
            let spec = held_by("other", -3600 + 5 * renewal as i64);
            let (decision, next) = read(seen, &spec, now);
            assert_eq!(
                decision,
                LeaseDecision::Follow {
                    holder: "other".into()
                },
                "renewal {renewal}"
            );
            seen = next;
        }
        // Its clock an hour ahead: it renews, and stops renewing; we take over after the lease
        // duration by our clock, not an hour later.
        let spec = held_by("other", 3600);
        let (_, seen) = read(None, &spec, t0);
        assert!(matches!(
            read(seen.clone(), &spec, t0 + Duration::from_secs(14)).0,
            LeaseDecision::Follow { .. }
        ));
        assert_eq!(read(seen, &spec, t0 + LEASE).0, LeaseDecision::TakeOver);
    }

    #[test]
    fn the_lease_duration_comes_from_the_lease_and_a_bad_one_falls_back() {
        let t0 = Instant::now();
        let mut spec = held_by("other", 0);
        spec.lease_duration_seconds = Some(60);
        let (_, seen) = read(None, &spec, t0);
        assert!(matches!(
            read(seen.clone(), &spec, t0 + Duration::from_secs(59)).0,
            LeaseDecision::Follow { .. }
        ));
        for bad in [Some(0), Some(-5), None] {
            spec.lease_duration_seconds = bad;
            let (_, seen) = read(None, &spec, t0);
            assert_eq!(read(seen, &spec, t0 + LEASE).0, LeaseDecision::TakeOver);
        }
        spec.lease_duration_seconds = Some(i32::MAX);
        let (_, seen) = read(None, &spec, t0);
        assert!(matches!(
            read(
                seen,
                &spec,
                t0 + Duration::from_secs(u64::from(i32::MAX.unsigned_abs()) - 1)
            )
            .0,
            LeaseDecision::Follow { .. }
        ));
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

    #[test]
    fn leadership_lapses_at_its_deadline_and_on_revocation() {
        let t0 = Instant::now();
        let leadership = Leadership::not_yet();
        assert!(!leadership.holds_at(t0));
        leadership.extend(t0 + Duration::from_secs(10));
        let shared = leadership.clone();
        assert!(shared.holds_at(t0 + Duration::from_secs(9)));
        assert!(!shared.holds_at(t0 + Duration::from_secs(10)));
        leadership.revoke();
        assert!(!shared.holds_at(t0));
        shared.extend(t0 + Duration::from_secs(10));
        assert!(!shared.holds_at(t0), "a revoked term stays revoked");
        assert!(Leadership::always().holds());
    }
}
