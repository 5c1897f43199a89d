//! `relaunch-sandbox up` as a user runs it: kubectl works against it, and SIGTERM leaves nothing
//! behind. Needs root and kubectl. `up` runs relaunch-agent and relaunch-coordinator from beside
//! its own executable: a workspace `cargo test` builds them there.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use relaunch_testbed::eventually;
use serde_json::Value;

/// `kubectl ARGS` against `kubeconfig` (its directory is HOME): stdout, or what went wrong.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let home = kubeconfig.parent().unwrap().to_path_buf();
    let mut command = Command::new("kubectl");
    command
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&kubectl(kubeconfig, args).await.unwrap()).unwrap()
}

/// Command lines of all processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[tokio::test]
async fn sandbox_up_then_sigterm_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaunch-sandbox"))
        .args(["up", "--nodes", "2", "--port", "0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ready = dir.path().join("ready");
    eventually("sandbox ready", Duration::from_secs(60), || async {
        ready.exists().then_some(())
    })
    .await
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: relaunch.test/busybox:1, command: [sleep, \"100000\"]}\n").unwrap();
    kubectl(&kubeconfig, &["apply", "-f", pod.to_str().unwrap()])
        .await
        .unwrap();
    eventually("pod running", Duration::from_secs(60), || async {
        let pod = kubectl_json(&kubeconfig, &["get", "pod", "p", "-o", "json"]).await;
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await
    .unwrap();

    // This sandbox's containerd is a child of the sandbox process; its private directory names
    // everything it started (its shims carry the socket path on their command line).
    let containerd_dir = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?)
                .replace('\0', " ");
            (ppid == pid && cmdline.starts_with("containerd ")).then_some(cmdline)
        })
        .find_map(|cmdline| {
            let config = cmdline.split_whitespace().nth(2)?.to_string();
            Some(Path::new(&config).parent()?.to_string_lossy().into_owned())
        })
        .expect("the sandbox runs its own containerd");
    assert!(
        processes_mentioning(&containerd_dir).len() >= 2,
        "containerd and the pod's shim run"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "sandbox exits 0 on SIGTERM: {status}");
    assert_eq!(
        processes_mentioning(&containerd_dir),
        Vec::<String>::new(),
        "no containerd, shim or container left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&containerd_dir), "no mount left");
    assert!(
        !Path::new(&containerd_dir).exists(),
        "containerd's directory removed"
    );
    assert!(!ready.exists(), "ready file removed");
}
