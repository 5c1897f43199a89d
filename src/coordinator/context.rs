//! What the report API and the controllers share: the settings, the cluster adapter, the
//! metrics, the agents' heartbeats and the token cache.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use relaunch_api::COORDINATOR_AUDIENCE;

use crate::cluster::Cluster;
use crate::error::CoordinatorError;
use crate::exec_policy::ExecPolicyGate;
use crate::heartbeats::Heartbeats;
use crate::leader_election::{LeaderElection, Leadership};
use crate::metrics::Metrics;
use crate::report_api::auth::{ServiceAccountRef, TokenCache};

/// Default `--agent-service-account`.
pub const DEFAULT_AGENT_SERVICE_ACCOUNT: &str = "relaunch-system:relaunch-agent";
/// Default `--agent-timeout`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a successful TokenReview is trusted: 2 minutes, the default of the API server's and
/// the kubelet's own webhook token caches. One review per agent token and replica per 2 minutes
/// (a node reports continuously during a rollout); a revoked token is accepted up to that long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(120);

/// What the coordinator is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agents' service account; only its tokens may report.
    pub agents: ServiceAccountRef,
    /// Audience the agents' tokens must carry.
    pub audience: String,
    /// A request still Pending or Recreating with no report for this long is failed.
    pub agent_timeout: Duration,
    /// How long a successful TokenReview is trusted (zero: never cached).
    pub token_cache_ttl: Duration,
    /// Who writes Events (`reportingInstance`): the pod or host name.
    pub instance: String,
    /// Run the controllers only while holding this Lease (none: always run them).
    pub leader_election: Option<LeaderElection>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            agents: ServiceAccountRef {
                namespace: "relaunch-system".into(),
                name: "relaunch-agent".into(),
            },
            audience: COORDINATOR_AUDIENCE.into(),
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            token_cache_ttl: TOKEN_CACHE_TTL,
            instance: "relaunch-coordinator".into(),
            leader_election: None,
        }
    }
}

/// Everything the report API and the controllers share.
pub struct Context {
    /// The only way to the Kubernetes API.
    pub cluster: Cluster,
    pub settings: Settings,
    /// Every coordinator metric, the rollouts' included.
    pub metrics: Metrics,
    /// When the agents last reported on each request (to this replica).
    pub heartbeats: Arc<Heartbeats>,
    /// Recent TokenReview answers.
    pub tokens: Arc<TokenCache>,
    /// Whether exec actions may be admitted (the exec admission policies are installed).
    pub exec_policy: Arc<ExecPolicyGate>,
    /// The pods ScaleDowns are decommissioning: not restarted in place meanwhile.
    pub leaving: Arc<crate::scaledown::leaving::LeavingPods>,
}

impl Context {
    /// Builds the context and registers the coordinator metrics in `registry`.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        registry: &Registry,
    ) -> Result<Arc<Self>, CoordinatorError> {
        let metrics = Metrics::register(registry)?;
        Ok(Arc::new(Self {
            cluster: Cluster::new(client, &settings.instance, metrics.clone()),
            metrics,
            heartbeats: Arc::new(Heartbeats::new(settings.agent_timeout)),
            tokens: Arc::new(TokenCache::new(settings.token_cache_ttl, 100_000)),
            exec_policy: Arc::new(ExecPolicyGate::default()),
            leaving: Default::default(),
            settings,
        }))
    }

    /// The context of the controllers for one leadership term: the same state, with a cluster
    /// adapter that writes only while `leadership` holds (see [`Cluster::for_leader`]).
    pub fn for_leader(&self, leadership: Leadership) -> Arc<Self> {
        Arc::new(Self {
            cluster: self.cluster.for_leader(leadership),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            heartbeats: self.heartbeats.clone(),
            tokens: self.tokens.clone(),
            exec_policy: self.exec_policy.clone(),
            leaving: self.leaving.clone(),
        })
    }
}
