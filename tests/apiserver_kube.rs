//! kube-rs against the test API server: watches that survive faults, optimistic concurrency,
//! selectors, pagination, tokens and TokenReview.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use relaunch_testbed::{API_AUDIENCE, ApiServer, FaultCounts, FaultRates};
use serde_json::json;
use support::{TestApi, eventually};

async fn server() -> (ApiServer, kube::Client) {
    let api = TestApi::start().await;
    (api.server, api.client)
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), "demo".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "relaunch.test/busybox:1"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn watcher_survives_closed_watches_and_expired_history_without_missing_anything() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &config_map("before"))
        .await
        .unwrap();

    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let task = tokio::spawn(stream);
    let names = |reader: &reflector::Store<ConfigMap>| -> BTreeSet<String> {
        reader
            .state()
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            // The root-CA publisher's ConfigMap is in every namespace, as on a cluster.
            .filter(|n| n != "kube-root-ca.crt")
            .collect()
    };
    let wait_for = |want: Vec<&'static str>| {
        let reader = reader.clone();
        async move {
            let want: BTreeSet<String> = want.into_iter().map(String::from).collect();
            eventually(
                &format!("store to hold {want:?}"),
                Duration::from_secs(20),
                || {
                    let reader = reader.clone();
                    let want = want.clone();
                    async move { (names(&reader) == want).then_some(()) }
                },
            )
            .await
            .unwrap();
        }
    };
    wait_for(vec!["before"]).await;

    server.faults().close_watches();
    api.create(&PostParams::default(), &config_map("after-close"))
        .await
        .unwrap();
    wait_for(vec!["after-close", "before"]).await;

    // History gone and watches closed: the re-watch gets 410 Gone and the watcher re-lists.
    server.expire_history();
    server.faults().close_watches();
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("after-gone"))
        .await
        .unwrap();
    wait_for(vec!["after-close", "after-gone"]).await;
    task.abort();
}

#[tokio::test]
async fn stale_updates_conflict_and_status_subresource_is_separate() {
    let (_server, client) = server().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let created = pods
        .create(&PostParams::default(), &pod("p", None))
        .await
        .unwrap();
    let mut fresh = created.clone();
    fresh.metadata.labels = Some([("a".to_string(), "1".to_string())].into());
    pods.replace("p", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let mut stale = created;
    stale.metadata.labels = Some([("a".to_string(), "2".to_string())].into());
    let err = pods
        .replace("p", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );

    let patched = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(
        patched.spec.unwrap().node_name,
        None,
        "status write did not touch spec"
    );

    let missing = pods.get("nope").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{missing:?}"
    );
    let invalid = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "bad"}, "spec": {"containers": []}}),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&invalid, kube::Error::Api(s) if s.code == 422),
        "{invalid:?}"
    );
}

#[tokio::test]
async fn field_selected_watch_sees_a_pod_when_it_is_bound_to_the_node() {
    let (_server, client) = server().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("elsewhere", Some("node-2")))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("unbound", None))
        .await
        .unwrap();

    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().fields("spec.nodeName=node-1");
    let task = tokio::spawn(
        reflector(writer, watcher(pods.clone(), config))
            .applied_objects()
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    assert!(reader.state().is_empty(), "no pod on node-1 yet");

    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        "unbound",
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap();
    eventually(
        "bound pod in the node's store",
        Duration::from_secs(10),
        || async {
            let state = reader.state();
            (state.len() == 1 && state[0].metadata.name.as_deref() == Some("unbound")).then_some(())
        },
    )
    .await
    .unwrap();
    let bound = pods.get("unbound").await.unwrap();
    let scheduled = bound.status.unwrap().conditions.unwrap();
    assert!(
        scheduled
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    task.abort();
}

#[tokio::test]
async fn label_selectors_and_pagination() {
    let (_server, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    for i in 0..5 {
        let mut cm = config_map(&format!("cm-{i}"));
        if i % 2 == 0 {
            cm.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
        }
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let demo = api
        .list(&ListParams::default().labels("app=demo"))
        .await
        .unwrap();
    assert_eq!(demo.items.len(), 2);
    let set = api
        .list(&ListParams::default().labels("app in (demo,other),app notin (other)"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 2);

    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = api.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(
            page.items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                // The root-CA publisher's ConfigMap is in every namespace, as on a cluster.
                .filter(|n| n != "kube-root-ca.crt"),
        );
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(seen, vec!["cm-0", "cm-1", "cm-2", "cm-3", "cm-4"]);
}

#[tokio::test]
async fn a_watch_from_a_paged_list_sees_what_changed_between_its_pages() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(1)).await.unwrap();
    let names: Vec<_> = first
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a"]);
    // "a", already listed, changes before the next page is read.
    let changed = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    let mut rest = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    while let Some(token) = rest.metadata.continue_.clone().filter(|t| !t.is_empty()) {
        let more = api
            .list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .unwrap();
        rest.metadata = more.metadata;
    }
    // Every page carries the first page's version, as upstream's do ...
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );
    // ... so the watch a reflector starts from it replays the change the list missed.
    let version = first.metadata.resource_version.clone().unwrap();
    let mut events = api
        .watch(&kube::api::WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            if let kube::api::WatchEvent::Modified(cm) = event.unwrap()
                && cm.metadata.name.as_deref() == Some("a")
            {
                return cm;
            }
        }
        panic!("the watch ended without the change");
    })
    .await
    .expect("the change to \"a\" between the pages is replayed");
    assert_eq!(
        seen.metadata.resource_version,
        changed.metadata.resource_version
    );

    // A continue token older than the server's history is refused with 410, as upstream's.
    server.expire_history();
    let refused = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 410),
        "{refused:?}"
    );
}

#[tokio::test]
async fn injected_faults_answer_500_then_429_then_recover() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    server.faults().fail_next(1, 500);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 500),
        "{err:?}"
    );
    // kube-rs retries 429 answers by itself: the request succeeds once the throttling ends.
    server.faults().fail_next(2, 429);
    assert!(api.list(&ListParams::default()).await.is_ok());
    assert_eq!(
        server.faults().remaining(),
        0,
        "both 429 answers were served"
    );
}

#[tokio::test]
async fn object_requests_record_when_and_by_whom_each_object_was_written_and_read() {
    let (server, client) = server().await;
    let started = std::time::SystemTime::now();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("p", None))
        .await
        .unwrap();
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    pods.get("p").await.unwrap();
    pods.get("nope").await.unwrap_err();
    pods.list(&ListParams::default()).await.unwrap();
    let sa = token(&client, "writer", vec![], None).await;
    let as_writer = relaunch_testbed::client_for(&server.url(), Some(&sa)).unwrap();
    let refused = Api::<Pod>::default_namespaced(as_writer)
        .delete("p", &DeleteParams::default())
        .await;
    assert!(refused.is_err(), "the service account may not delete pods");

    let seen: Vec<(String, String, String, u16)> = server
        .object_requests()
        .into_iter()
        .filter(|r| r.resource.starts_with("pods") && r.namespace == "default")
        .map(|r| (r.user, r.verb, format!("{}:{}", r.resource, r.name), r.code))
        .collect();
    let admin = "system:admin".to_string();
    assert_eq!(
        seen,
        vec![
            (admin.clone(), "create".into(), "pods:p".into(), 201),
            (admin.clone(), "patch".into(), "pods/status:p".into(), 200),
            (admin.clone(), "get".into(), "pods:p".into(), 200),
            (admin, "get".into(), "pods:nope".into(), 404),
        ],
        "lists are not recorded, refused requests never reach the record"
    );
    let times: Vec<_> = server.object_requests().iter().map(|r| r.at).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in the order answered"
    );
    assert!(times.iter().all(|t| *t >= started));
}

async fn token(
    client: &kube::Client,
    sa: &str,
    audiences: Vec<String>,
    pod: Option<(&str, &str)>,
) -> String {
    let sas: Api<ServiceAccount> = Api::default_namespaced(client.clone());
    if sas.get_opt(sa).await.unwrap().is_none() {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let bound =
        pod.map(|(name, uid)| json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}));
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": audiences, "expirationSeconds": 3600, "boundObjectRef": bound}
    }))
    .unwrap();
    let _: TokenRequestSpec = request.spec.clone();
    let answer: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .unwrap();
    answer.status.unwrap().token
}

#[tokio::test]
async fn token_review_reports_the_bound_pods_node_and_rejects_wrong_audiences() {
    let (server, client) = server().await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let agent = pods
        .create(&PostParams::default(), &pod("agent-x", Some("node-1")))
        .await
        .unwrap();
    let uid = agent.metadata.uid.unwrap();
    let coordinator = "relaunch-coordinator".to_string();
    let token = token(
        &client,
        "relaunch-agent",
        vec![coordinator.clone()],
        Some(("agent-x", &uid)),
    )
    .await;

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: String, audiences: Vec<String>| {
        let reviews = reviews.clone();
        async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(audiences),
                },
                ..Default::default()
            };
            reviews
                .create(&PostParams::default(), &request)
                .await
                .unwrap()
                .status
                .unwrap()
        }
    };
    let ok = review(token.clone(), vec![coordinator.clone()]).await;
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:relaunch-agent")
    );
    let extra = user.extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        vec!["node-1".to_string()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        vec!["agent-x".to_string()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        vec![uid.clone()]
    );

    let wrong_audience = review(token.clone(), vec![API_AUDIENCE.to_string()]).await;
    assert_eq!(wrong_audience.authenticated, Some(false));
    let unknown = review("rlt.nope".into(), vec![coordinator.clone()]).await;
    assert_eq!(unknown.authenticated, Some(false));
    server.expire_token(&token);
    let expired = review(token, vec![coordinator]).await;
    assert_eq!(expired.authenticated, Some(false));
}

#[tokio::test]
async fn service_account_tokens_have_what_rbac_grants_and_bad_tokens_are_unauthorized() {
    let (server, admin) = server().await;
    let api_token = token(&admin, "reader", vec![], None).await;
    let reader = relaunch_testbed::client_for(&server.url(), Some(&api_token)).unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(reader);
    let forbidden = |err: kube::Error| match err {
        kube::Error::Api(s) if s.code == 403 => s.message,
        other => panic!("expected 403, got {other:?}"),
    };
    assert_eq!(
        forbidden(cms.list(&ListParams::default()).await.unwrap_err()),
        r#"configmaps is forbidden: User "system:serviceaccount:default:reader" cannot list resource "configmaps" in API group "" in the namespace "default""#
    );

    let roles: Api<Role> = Api::default_namespaced(admin.clone());
    let role = |verbs: &[&str]| -> Role {
        serde_json::from_value(json!({"metadata": {"name": "config-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}]}))
        .unwrap()
    };
    roles
        .create(&PostParams::default(), &role(&["get", "list", "watch"]))
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "config-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "config-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}],
    }))
    .unwrap();
    Api::<RoleBinding>::default_namespaced(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    assert!(cms.list(&ListParams::default()).await.is_ok());
    assert_eq!(
        forbidden(
            cms.create(&PostParams::default(), &config_map("x"))
                .await
                .unwrap_err()
        ),
        r#"configmaps is forbidden: User "system:serviceaccount:default:reader" cannot create resource "configmaps" in API group "" in the namespace "default""#
    );

    // A changed Role takes effect with the next request.
    roles
        .patch(
            "config-reader",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "create"]}]})),
        )
        .await
        .unwrap();
    assert!(
        cms.create(&PostParams::default(), &config_map("x"))
            .await
            .is_ok()
    );
    assert_eq!(
        forbidden(cms.get("x").await.unwrap_err()),
        r#"configmaps "x" is forbidden: User "system:serviceaccount:default:reader" cannot get resource "configmaps" in API group "" in the namespace "default""#
    );

    let stranger = relaunch_testbed::client_for(&server.url(), Some("rlt.unknown")).unwrap();
    let err = Api::<ConfigMap>::default_namespaced(stranger)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err:?}"
    );
}

#[tokio::test]
async fn faults_injected_at_random_reach_only_the_chosen_users_and_are_counted() {
    let api = TestApi::start().await;
    let (server, client) = (&api.server, api.client.clone());
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    // Another user's requests draw nothing.
    server.faults().inject(FaultRates {
        users: "system:serviceaccount:".into(),
        error: 1.0,
        ..FaultRates::default()
    });
    for _ in 0..5 {
        config_maps.list(&ListParams::default()).await.unwrap();
    }
    assert_eq!(server.faults().injected(), FaultCounts::default());

    // 500s: kube-rs sees each one.
    server.faults().inject(FaultRates {
        error: 0.5,
        seed: 7,
        ..FaultRates::default()
    });
    let mut failed = 0;
    for _ in 0..40 {
        match config_maps.list(&ListParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 500 => failed += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(failed > 0 && failed < 40, "{failed} of 40 failed");
    assert_eq!(server.faults().injected().errors, failed);

    // kubectl sees them too.
    server.faults().inject(FaultRates {
        error: 1.0,
        ..FaultRates::default()
    });
    let out = support::output(support::kubectl(
        &api.kubeconfig(),
        api.dir(),
        &["get", "configmaps"],
    ))
    .await;
    assert!(!out.status.success());
    assert!(
        support::printed(&out).contains("injected fault"),
        "{}",
        support::printed(&out)
    );

    // 429s (with Retry-After: kube-rs waits and retries them itself).
    server.faults().inject(FaultRates {
        throttle: 0.3,
        seed: 3,
        ..FaultRates::default()
    });
    for _ in 0..20 {
        match config_maps.list(&ListParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 429 => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(server.faults().injected().throttled > 0);

    // A watch from a resourceVersion answered 410 Gone.
    server.faults().inject(FaultRates {
        watch_gone: 1.0,
        ..FaultRates::default()
    });
    let version = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // As the real API server does it: an ERROR event in the stream, then its end.
    let events: Vec<_> = config_maps
        .watch(&kube::api::WatchParams::default(), &version)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(events.as_slice(), [Ok(kube::api::WatchEvent::Error(e))] if e.code == 410),
        "{events:?}"
    );
    assert_eq!(server.faults().injected().watches_gone, 1);
    server.faults().stop_injecting();
}

#[tokio::test]
async fn a_reflector_converges_through_watches_closed_early_410s_and_500s() {
    let (server, client) = server().await;
    server.faults().inject(FaultRates {
        error: 0.1,
        watch_close: 1.0,
        watch_lifetime: Duration::from_millis(300),
        watch_gone: 0.3,
        seed: 11,
        ..FaultRates::default()
    });
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(config_maps.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let admin = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    for i in 0..20 {
        // The test's own writes get faults too (every user): retry them.
        eventually("a create", Duration::from_secs(10), || async {
            match admin
                .create(&PostParams::default(), &config_map(&format!("cm-{i}")))
                .await
            {
                Ok(_) => Some(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Some(()),
                Err(_) => None,
            }
        })
        .await
        .unwrap();
    }
    eventually(
        "the reflector sees all 20 and watches were cut",
        Duration::from_secs(30),
        || async {
            let counts = server.faults().injected();
            let ours = (reader.state().iter())
                .filter(|c| {
                    c.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("cm-"))
                })
                .count();
            (ours == 20 && counts.watches_closed > 1 && counts.watches_gone > 0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}, {} seen",
            server.faults().injected(),
            reader.state().len()
        )
    });
    server.faults().stop_injecting();
    task.abort();
}
