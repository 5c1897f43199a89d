//! The Python `kubernetes` client against the test API server. scripts/test.sh provides a
//! Python with the client installed in `RELAUNCH_PYTHON`.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::TestApi;

#[tokio::test(flavor = "multi_thread")]
async fn python_kubernetes_client_works() {
    let python = support::python("kubernetes");
    let api = TestApi::start().await;
    let mut check = Command::new(python);
    check
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/client_check.py"
        ))
        .arg(api.kubeconfig());
    let out = support::output(check).await;
    assert!(
        out.status.success(),
        "python client check failed:\n{}",
        support::printed(&out)
    );
}

/// relaunch's CRD schema and its shipped admission policy through the Python client: a
/// service account that may only create requests cannot create one with an exec action until it
/// may exec into the pod; invalid and edited requests are refused with field paths.
#[tokio::test(flavor = "multi_thread")]
async fn python_client_meets_relaunchs_schema_and_exec_policy() {
    let python = support::python("kubernetes");
    let api = TestApi::with_relaunch_crds().await;
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/base/admission-policy.yaml"
    );
    let out = support::output(support::kubectl(
        &api.kubeconfig(),
        api.dir(),
        &["apply", "-f", policy],
    ))
    .await;
    assert!(out.status.success(), "{}", support::printed(&out));
    let mut check = Command::new(python);
    check
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/relaunch_admission_check.py"
        ))
        .arg(api.kubeconfig());
    let out = support::output(check).await;
    assert!(
        out.status.success(),
        "relaunch admission check failed:\n{}",
        support::printed(&out)
    );
}
