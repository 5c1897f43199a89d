//! Who is calling: the bearer token, what TokenReview says about it, and which node the agent
//! runs on. Pure decisions plus a small cache of successful reviews.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use sha2::{Digest, Sha256};

/// TokenReview extra naming the node a token is bound to (directly, or through its pod).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// TokenReview extra naming the pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// TokenReview extra with the UID of the pod a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The agents' service account, `NAMESPACE:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    /// The username Kubernetes gives this service account's tokens.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceAccountRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("expected NAMESPACE:NAME, got {s:?}")),
        }
    }
}

/// Why a caller was not let in. Each becomes a 401/403 answer and an `auth_failures_total` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the token was rejected: {0}")]
    InvalidToken(String),
    #[error("the token is not meant for audience {0}")]
    WrongAudience(String),
    #[error("{user} is not the agents' service account {expected}")]
    WrongServiceAccount { user: String, expected: String },
    #[error("the token is bound to neither a node nor a pod, so the agent's node is unknown")]
    NoNodeBinding,
    #[error("the token's pod {0} does not exist or runs on no node")]
    PodNotOnNode(String),
}

impl AuthFailure {
    /// Label value for `relaunch_coordinator_auth_failures_total{reason}`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::InvalidToken(_) => "invalid_token",
            AuthFailure::WrongAudience(_) => "wrong_audience",
            AuthFailure::WrongServiceAccount { .. } => "wrong_service_account",
            AuthFailure::NoNodeBinding => "no_node_binding",
            AuthFailure::PodNotOnNode(_) => "pod_not_on_node",
        }
    }
}

/// Where the agent's node comes from, per its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeClaim {
    /// The token names the node.
    Node(String),
    /// The token is bound to this pod (in the service account's namespace); its node must be looked up.
    Pod { name: String, uid: Option<String> },
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthFailure> {
    let value = header.ok_or(AuthFailure::MissingToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthFailure::MissingToken);
    }
    Ok(token)
}

/// Decides from a TokenReview's status whether the caller is an agent, and where its node comes from.
pub fn identify(
    status: &TokenReviewStatus,
    audience: &str,
    agents: &ServiceAccountRef,
) -> Result<NodeClaim, AuthFailure> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return Err(if why.contains("audience") {
            AuthFailure::WrongAudience(audience.into())
        } else {
            AuthFailure::InvalidToken(why)
        });
    }
    // The API server answers with the intersection of the requested and the token's audiences.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(AuthFailure::WrongAudience(audience.into()));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    if username != agents.username() {
        return Err(AuthFailure::WrongServiceAccount {
            user: username,
            expected: agents.username(),
        });
    }
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| {
        extra
            .get(key)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    if let Some(node) = first(EXTRA_NODE_NAME) {
        return Ok(NodeClaim::Node(node));
    }
    if let Some(pod) = first(EXTRA_POD_NAME) {
        return Ok(NodeClaim::Pod {
            name: pod,
            uid: first(EXTRA_POD_UID),
        });
    }
    Err(AuthFailure::NoNodeBinding)
}

/// How long a refused token is refused without asking TokenReview again.
pub const REFUSED_TOKEN_TTL: Duration = Duration::from_secs(10);
/// Most refused tokens remembered; beyond it the expired ones are dropped, then the oldest.
pub const REFUSED_TOKEN_CAPACITY: usize = 10_000;

/// Recent reviews, keyed by the token's SHA-256 (the token itself is not kept): successful ones,
/// so a busy node does not cost one TokenReview per report, and refused ones for a shorter
/// while ([`REFUSED_TOKEN_TTL`]), so a caller repeating a bogus token costs one TokenReview per
/// TTL rather than one per request. Both are bounded.
pub struct TokenCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    refused_ttl: Duration,
    refused_capacity: usize,
    refused: Mutex<HashMap<[u8; 32], (AuthFailure, Instant)>>,
}

impl TokenCache {
    /// Successful reviews kept for `ttl` (zero: nothing is cached, refusals neither), at most
    /// `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
            refused_ttl: REFUSED_TOKEN_TTL.min(ttl),
            refused_capacity: REFUSED_TOKEN_CAPACITY,
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Refusals kept for `ttl`, at most `capacity` of them.
    pub fn with_refusals(mut self, ttl: Duration, capacity: usize) -> Self {
        self.refused_ttl = ttl;
        self.refused_capacity = capacity;
        self
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The node of a token reviewed less than the TTL ago.
    pub fn get(&self, token: &str, now: Instant) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&Self::key(token))
            .filter(|(_, expires)| *expires > now)
            .map(|(node, _)| node.clone())
    }

    pub fn insert(&self, token: &str, node: String, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(Self::key(token), (node, now + self.ttl));
    }

    /// Why a token was refused less than the refusal TTL ago.
    pub fn refusal(&self, token: &str, now: Instant) -> Option<AuthFailure> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused
            .get(&Self::key(token))
            .filter(|(_, expires)| *expires > now)
            .map(|(failure, _)| failure.clone())
    }

    /// Remembers that a token was refused. When full, expired refusals go first, then the ones
    /// closest to expiry (the oldest): a flood of distinct bogus tokens costs memory up to the
    /// capacity and no more.
    pub fn refuse(&self, token: &str, failure: AuthFailure, now: Instant) {
        if self.refused_ttl.is_zero() || self.refused_capacity == 0 {
            return;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= self.refused_capacity {
            refused.retain(|_, (_, expires)| *expires > now);
        }
        while refused.len() >= self.refused_capacity {
            let oldest = refused
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(key, _)| *key);
            let Some(key) = oldest else { break };
            refused.remove(&key);
        }
        refused.insert(Self::key(token), (failure, now + self.refused_ttl));
    }

    /// Forgets every review (e.g. after a token was found to be revoked).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn agents() -> ServiceAccountRef {
        "relaunch-system:relaunch-agent".parse().unwrap()
    }

    fn review(username: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["relaunch-coordinator".into()]),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            error: None,
        }
    }

    const AGENT: &str = "system:serviceaccount:relaunch-system:relaunch-agent";

    #[test]
    fn node_extra_names_the_node() {
        let r = review(
            AGENT,
            &[(EXTRA_NODE_NAME, "node-1"), (EXTRA_POD_NAME, "agent-x")],
        );
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents()),
            Ok(NodeClaim::Node("node-1".into()))
        );
    }

    #[test]
    fn pod_extra_is_the_fallback() {
        let r = review(AGENT, &[(EXTRA_POD_NAME, "agent-x"), (EXTRA_POD_UID, "u1")]);
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents()),
            Ok(NodeClaim::Pod {
                name: "agent-x".into(),
                uid: Some("u1".into())
            })
        );
    }

    #[test]
    fn unbound_token_has_no_node() {
        let r = review(AGENT, &[]);
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents()),
            Err(AuthFailure::NoNodeBinding)
        );
    }

    #[test]
    fn other_service_account_is_refused() {
        let r = review(
            "system:serviceaccount:default:default",
            &[(EXTRA_NODE_NAME, "node-1")],
        );
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents())
                .unwrap_err()
                .metric_reason(),
            "wrong_service_account"
        );
    }

    #[test]
    fn unauthenticated_token_is_refused() {
        let r = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token, token lookup failed]".into()),
            ..Default::default()
        };
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents())
                .unwrap_err()
                .metric_reason(),
            "invalid_token"
        );
        let r = TokenReviewStatus {
            authenticated: Some(false),
            error: Some(
                "[invalid bearer token, token audiences don't match the requested audiences]"
                    .into(),
            ),
            ..Default::default()
        };
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents()),
            Err(AuthFailure::WrongAudience("relaunch-coordinator".into()))
        );
    }

    #[test]
    fn authenticated_without_our_audience_is_refused() {
        let mut r = review(AGENT, &[(EXTRA_NODE_NAME, "node-1")]);
        r.audiences = Some(vec![]);
        assert_eq!(
            identify(&r, "relaunch-coordinator", &agents()),
            Err(AuthFailure::WrongAudience("relaunch-coordinator".into()))
        );
    }

    #[test]
    fn bearer_header_is_parsed_strictly() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthFailure::MissingToken));
        assert_eq!(
            bearer_token(Some("Basic abc")),
            Err(AuthFailure::MissingToken)
        );
        assert_eq!(
            bearer_token(Some("Bearer ")),
            Err(AuthFailure::MissingToken)
        );
        assert_eq!(bearer_token(Some("Bearer")), Err(AuthFailure::MissingToken));
    }

    #[test]
    fn service_account_flag_is_parsed() {
        assert_eq!(agents().username(), AGENT);
        assert!("nocolon".parse::<ServiceAccountRef>().is_err());
        assert!(":name".parse::<ServiceAccountRef>().is_err());
        assert!("a:b:c".parse::<ServiceAccountRef>().is_err());
    }

    #[test]
    fn cache_expires_entries() {
        let cache = TokenCache::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        cache.insert("tok", "node-1".into(), t0);
        assert_eq!(
            cache.get("tok", t0 + Duration::from_secs(29)),
            Some("node-1".into())
        );
        assert_eq!(cache.get("tok", t0 + Duration::from_secs(31)), None);
        assert_eq!(cache.get("other", t0), None);
    }

    #[test]
    fn cache_stays_bounded() {
        let cache = TokenCache::new(Duration::from_secs(30), 2);
        let t0 = Instant::now();
        for i in 0..5 {
            cache.insert(&format!("t{i}"), "n".into(), t0);
        }
        assert!(cache.entries.lock().unwrap().len() <= 2);
        assert_eq!(cache.get("t4", t0), Some("n".into()));
    }

    #[test]
    fn refusals_are_remembered_briefly_and_bounded() {
        let cache =
            TokenCache::new(Duration::from_secs(30), 10).with_refusals(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let bogus = AuthFailure::InvalidToken("invalid bearer token".into());
        cache.refuse("bogus", bogus.clone(), t0);
        assert_eq!(
            cache.refusal("bogus", t0 + Duration::from_secs(9)),
            Some(bogus.clone())
        );
        assert_eq!(cache.refusal("bogus", t0 + Duration::from_secs(10)), None);
        assert_eq!(cache.get("bogus", t0), None, "a refusal is no node");
        for i in 0..10u64 {
            cache.refuse(
                &format!("t{i}"),
                bogus.clone(),
                t0 + Duration::from_millis(i),
            );
        }
        assert_eq!(cache.refused.lock().unwrap().len(), 3);
        assert!(cache.refusal("t9", t0).is_some(), "the newest stay");
        assert!(cache.refusal("t0", t0).is_none());
        // No positive cache, no negative one either.
        let off = TokenCache::new(Duration::ZERO, 10);
        off.refuse("bogus", bogus, t0);
        assert_eq!(off.refusal("bogus", t0), None);
    }
}
