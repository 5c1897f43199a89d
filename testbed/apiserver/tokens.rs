//! Service account tokens: issued through the TokenRequest API (`serviceaccounts/<name>/token`),
//! checked on every request, and reviewed through TokenReview exactly as the real API server
//! reviews bound projected tokens (audiences, expiry, the bound pod, node extras).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::error::ApiError;
use super::rbac::{SYSTEM_AUTHENTICATED, SYSTEM_MASTERS, UserInfo};
use super::store::Store;

/// The audience of tokens meant for the API server itself.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The user of requests without credentials: the sandbox's administrator, in `system:masters`
/// so that kubeconfigs without a token keep full access.
pub const ADMIN: &str = "system:admin";

#[derive(Debug, Clone)]
struct Issued {
    namespace: String,
    service_account: String,
    service_account_uid: String,
    audiences: Vec<String>,
    expires: jiff::Timestamp,
    /// The pod the token is bound to: (name, uid).
    pod: Option<(String, String)>,
    /// The node the token is bound to (boundObjectRef kind Node): (name, uid).
    node: Option<(String, String)>,
    credential_id: String,
}

/// Issued tokens.
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
    /// A static token of the sandbox's administrator (kube-apiserver's `--token-auth-file`):
    /// what HTTPS kubeconfigs carry, since kubectl asks for a password when an HTTPS server's
    /// user has no credentials.
    admin: String,
}

impl Default for Tokens {
    fn default() -> Self {
        Self {
            issued: Mutex::default(),
            admin: format!("rla.{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl Tokens {
    /// The administrator's static token.
    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    /// Issues a token for service account `ns/name` (the TokenRequest subresource).
    pub fn request(
        &self,
        store: &Store,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let sa_rt = store
            .resource("", "v1", "serviceaccounts")
            .expect("built in");
        let sa = store.get(&sa_rt, Some(ns), name)?;
        let spec = &body["spec"];
        let audiences = audiences(spec);
        let seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        if seconds < 600 {
            return Err(ApiError::bad_request(
                "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
            ));
        }
        let bound = &spec["boundObjectRef"];
        let bound_kind = bound["kind"].as_str();
        let bound_name = bound["name"].as_str().unwrap_or_default();
        let check_uid = |uid: &str| -> Result<(), ApiError> {
            match bound["uid"].as_str() {
                Some(want) if want != uid => Err(ApiError::bad_request(&format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record ({uid})"
                ))),
                _ => Ok(()),
            }
        };
        let (pod, node) = match bound_kind {
            None if bound.is_null() => (None, None),
            Some("Pod") => {
                let pods = store.resource("", "v1", "pods").expect("built in");
                let pod = store.get(&pods, Some(ns), bound_name)?;
                let uid = pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                check_uid(&uid)?;
                (Some((bound_name.to_string(), uid)), None)
            }
            Some("Node") => {
                let nodes = store.resource("", "v1", "nodes").expect("built in");
                let node = store.get(&nodes, None, bound_name)?;
                let uid = node["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                check_uid(&uid)?;
                (None, Some((bound_name.to_string(), uid)))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "spec.boundObjectRef.kind: Unsupported value: supported values: \"Pod\", \"Node\"",
                ));
            }
        };
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds);
        let token = format!("rlt.{}", uuid::Uuid::new_v4().simple());
        let issued = Issued {
            namespace: ns.to_string(),
            service_account: name.to_string(),
            service_account_uid: sa["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            audiences,
            expires,
            pod,
            node,
            credential_id: format!("JTI={}", uuid::Uuid::new_v4()),
        };
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), issued);
        let mut answer = body.clone();
        answer["apiVersion"] = json!("authentication.k8s.io/v1");
        answer["kind"] = json!("TokenRequest");
        answer["metadata"] =
            json!({"name": name, "namespace": ns, "creationTimestamp": super::store::now()});
        answer["status"] = json!({
            "token": token,
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        Ok(answer)
    }

    /// Authenticates a request's bearer token for the API server itself; without one, the request
    /// is the sandbox's administrator's.
    pub fn authenticate(&self, store: &Store, bearer: Option<&str>) -> Result<UserInfo, ApiError> {
        let Some(token) = bearer.filter(|t| *t != self.admin) else {
            return Ok(UserInfo::new(
                ADMIN,
                &[SYSTEM_MASTERS, SYSTEM_AUTHENTICATED],
            ));
        };
        let issued = self
            .valid(store, token, &[API_AUDIENCE.to_string()])
            .map_err(|_| ApiError::unauthorized())?;
        Ok(user_of(store, &issued))
    }

    /// The TokenReview answer for `body`.
    pub fn review(&self, store: &Store, body: &Value) -> Value {
        let token = body["spec"]["token"].as_str().unwrap_or_default();
        let wanted = audiences(&body["spec"]);
        let status = match self.valid(store, token, &wanted) {
            Ok(issued) => {
                let audiences: Vec<&String> = issued
                    .audiences
                    .iter()
                    .filter(|a| wanted.contains(a))
                    .collect();
                json!({
                    "authenticated": true,
                    "user": user_of(store, &issued).to_json(),
                    "audiences": audiences,
                })
            }
            Err(why) => json!({"authenticated": false, "user": {}, "error": why}),
        };
        let mut answer = body.clone();
        answer["apiVersion"] = json!("authentication.k8s.io/v1");
        answer["kind"] = json!("TokenReview");
        if !answer["metadata"].is_object() {
            answer["metadata"] = json!({});
        }
        answer["metadata"]["creationTimestamp"] = Value::Null;
        answer["status"] = status;
        answer
    }

    fn valid(&self, store: &Store, token: &str, audiences: &[String]) -> Result<Issued, String> {
        let issued = self
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
            .ok_or_else(|| "[invalid bearer token, token lookup failed]".to_string())?;
        if jiff::Timestamp::now() > issued.expires {
            return Err("[invalid bearer token, service account token has expired]".into());
        }
        if !issued.audiences.iter().any(|a| audiences.contains(a)) {
            return Err(
                "[invalid bearer token, token audiences don't match the requested audiences]"
                    .into(),
            );
        }
        let sas = store
            .resource("", "v1", "serviceaccounts")
            .expect("built in");
        match store.get(&sas, Some(&issued.namespace), &issued.service_account) {
            Ok(sa)
                if sa["metadata"]["uid"].as_str() == Some(issued.service_account_uid.as_str()) => {}
            _ => {
                return Err(
                    "[invalid bearer token, service account has been deleted or recreated]".into(),
                );
            }
        }
        if let Some((pod_name, pod_uid)) = &issued.pod {
            let pods = store.resource("", "v1", "pods").expect("built in");
            match store.get(&pods, Some(&issued.namespace), pod_name) {
                Ok(pod) if pod["metadata"]["uid"].as_str() == Some(pod_uid.as_str()) => {}
                _ => {
                    return Err(
                        "[invalid bearer token, pod bound to the token has been deleted]".into(),
                    );
                }
            }
        }
        if let Some((node_name, node_uid)) = &issued.node {
            let nodes = store.resource("", "v1", "nodes").expect("built in");
            match store.get(&nodes, None, node_name) {
                Ok(node) if node["metadata"]["uid"].as_str() == Some(node_uid.as_str()) => {}
                _ => {
                    return Err(
                        "[invalid bearer token, node bound to the token has been deleted]".into(),
                    );
                }
            }
        }
        Ok(issued)
    }

    /// Makes `token` expire now (tests of expiry).
    pub fn expire(&self, token: &str) {
        if let Some(issued) = self
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(token)
        {
            issued.expires = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        }
    }
}

/// The user a valid service-account token authenticates as, with the extras upstream's
/// authenticator gives bound tokens (credential id, bound pod and its node, or bound node).
fn user_of(store: &Store, issued: &Issued) -> UserInfo {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |key: &str, value: &str| {
        extra.insert(
            format!("authentication.kubernetes.io/{key}"),
            vec![value.to_string()],
        );
    };
    add("credential-id", &issued.credential_id);
    if let Some((pod_name, pod_uid)) = &issued.pod {
        add("pod-name", pod_name);
        add("pod-uid", pod_uid);
        let pods = store.resource("", "v1", "pods").expect("built in");
        if let Ok(pod) = store.get(&pods, Some(&issued.namespace), pod_name)
            && let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
        {
            add("node-name", node);
            let nodes = store.resource("", "v1", "nodes").expect("built in");
            if let Ok(node) = store.get(&nodes, None, node) {
                add(
                    "node-uid",
                    node["metadata"]["uid"].as_str().unwrap_or_default(),
                );
            }
        }
    }
    if let Some((node_name, node_uid)) = &issued.node {
        add("node-name", node_name);
        add("node-uid", node_uid);
    }
    let mut user = UserInfo::service_account(&issued.namespace, &issued.service_account);
    user.uid = issued.service_account_uid.clone();
    user.extra = extra;
    user
}

/// `spec.audiences` of a TokenRequest or TokenReview; the API server's own when there are none.
fn audiences(spec: &Value) -> Vec<String> {
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(API_AUDIENCE.to_string());
    }
    audiences
}
