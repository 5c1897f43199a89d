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
