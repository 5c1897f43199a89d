//! The `relaunch-coordinator run` binary: HTTPS report API, admin endpoint, SIGTERM exits 0.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use relaunch_testbed::Component;
use support::{TestApi, binaries, eventually};

fn free_port() -> u16 {
    relaunch_testbed::free_port(Ipv4Addr::LOCALHOST).unwrap()
}

fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn serves_https_reports_and_admin_endpoints_and_exits_zero_on_sigterm() {
    if Command::new("openssl").arg("version").output().is_err()
        || Command::new("curl").arg("--version").output().is_err()
    {
        eprintln!("skipped: needs openssl and curl");
        return;
    }
    let api = TestApi::with_relaunch_crds().await;
    let kubeconfig = api.relaunch_kubeconfig(Component::Coordinator).await;
    let (cert, key) = (api.dir().join("tls.crt"), api.dir().join("tls.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=relaunch-coordinator",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());

    let (port, admin_port) = (free_port(), free_port());
    let mut child = Command::new(binaries().coordinator)
        .arg("run")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--agent-timeout", "2m", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = eventually("the coordinator is ready", Duration::from_secs(20), || {
        let readyz = readyz.clone();
        async move { (curl(&[&readyz])? == "200").then_some(()) }
    })
    .await;
    if ready.is_err() {
        let _ = child.kill();
        panic!("{ready:?}");
    }
    let reports = format!("https://127.0.0.1:{port}/v1/reports");
    let cacert = cert.to_string_lossy().into_owned();
    assert_eq!(
        curl(&["--cacert", &cacert, "-X", "POST", "-d", "{}", &reports]).as_deref(),
        Some("401"),
        "HTTPS works and an unauthenticated report is refused"
    );
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{admin_port}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("relaunch_coordinator_auth_failures_total{reason=\"missing_token\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("process_resident_memory_bytes"));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("the coordinator exits", Duration::from_secs(20), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}
