//! The Python `kubernetes` client against the test API server. scripts/test.sh provides a
//! Python with the client installed in `RELAUNCH_PYTHON`.

use std::process::Command;

use relaunch_testbed::ApiServer;

fn python() -> String {
    let candidate = std::env::var("RELAUNCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let usable = Command::new(&candidate)
        .args(["-c", "import kubernetes"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        usable,
        "{candidate} cannot import the kubernetes client: run ./scripts/test.sh (it installs it) or set RELAUNCH_PYTHON"
    );
    candidate
}

#[tokio::test(flavor = "multi_thread")]
async fn python_kubernetes_client_works() {
    let python = python();
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig(None)).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_check.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
