//! A private containerd for tests and the sandbox: its own root, state and socket under a
//! temporary directory, the CRI plugin with the local test image as sandbox image, and a teardown
//! that leaves no container, shim, mount or file behind, also when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::TestbedError;
use super::image::{BUSYBOX, TEST_IMAGE, build_test_image};
use relaunch_cri::{ClientConfig, CriMetrics, RuntimeClient};

/// How long containerd may take to answer CRI after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running private containerd. Dropping it tears everything down.
pub struct Containerd {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd, imports the test image and waits until CRI answers.
    pub async fn start() -> Result<Self, TestbedError> {
        check_prerequisites()?;
        let dir = tempfile::Builder::new()
            .prefix("relaunch-containerd-")
            .tempdir()?;
        let root = dir.path().to_path_buf();
        let socket = root.join("containerd.sock");
        std::fs::write(root.join("config.toml"), config_toml(&root))?;
        for sub in ["cni/bin", "cni/conf", "pods"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let log = std::fs::File::create(root.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| TestbedError::Setup(format!("cannot start containerd: {e}")))?;
        let mut containerd = Self {
            dir: Some(dir),
            child: Some(child),
            socket,
        };
        containerd.wait_until_answering().await?;
        containerd.import_test_image()?;
        Ok(containerd)
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The private directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// Root under which pod log directories go (the kubelet's `/var/log/pods`).
    pub fn pod_log_root(&self) -> PathBuf {
        self.dir().join("pods")
    }

    /// containerd's own log, for diagnosing failed tests.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// A fresh CRI client for this containerd.
    pub async fn client(&self) -> Result<RuntimeClient, TestbedError> {
        Ok(RuntimeClient::connect(
            self.socket.clone(),
            ClientConfig::default(),
            CriMetrics::unregistered(),
        )
        .await?)
    }

    /// Stops the containerd daemon (SIGTERM) but leaves its containers: what a node sees when the
    /// runtime is restarted or crashes. Teardown still cleans up everything.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    async fn wait_until_answering(&mut self) -> Result<(), TestbedError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(TestbedError::Setup(format!(
                    "containerd exited at start ({status}); its log:\n{}",
                    super::tail(&self.log(), 40)
                )));
            }
            if self.socket.exists() && self.client().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestbedError::Setup(format!(
                    "containerd did not answer CRI within {START_TIMEOUT:?}; its log:\n{}",
                    super::tail(&self.log(), 40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn import_test_image(&self) -> Result<(), TestbedError> {
        let archive = self.dir().join("test-image.tar");
        build_test_image(Path::new(BUSYBOX), &archive)?;
        self.import(&archive)
    }

    /// Imports the images of an OCI archive (`ctr images import`) into the CRI namespace, where
    /// the kubelet simulator finds them by name.
    pub fn import(&self, archive: &Path) -> Result<(), TestbedError> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .map_err(|e| {
                TestbedError::Setup(format!("cannot run ctr (part of containerd): {e}"))
            })?;
        if !out.status.success() {
            return Err(TestbedError::Setup(format!(
                "importing {} failed: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Removes every pod sandbox through CRI, stops containerd, kills whatever is left, unmounts
    /// and deletes the directory. Safe to call more than once.
    pub fn teardown(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let root = dir.path().to_path_buf();
        if self.child.is_some() {
            remove_all_sandboxes(&self.socket);
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
        kill_leftover_shims(&self.socket);
        unmount_below(&root);
        if let Err(e) = dir.close() {
            tracing::warn!(dir = %root.display(), error = %e, "could not remove containerd test directory");
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn check_prerequisites() -> Result<(), TestbedError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(TestbedError::Setup(
            "the test bed runs containerd and needs root: run as root (sudo)".into(),
        ));
    }
    for (binary, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        (BUSYBOX, "busybox-static"),
    ] {
        if which(binary).is_none() {
            return Err(TestbedError::Setup(format!(
                "{binary} is missing: apt-get install -y {package}"
            )));
        }
    }
    Ok(())
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = Path::new(binary);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .find(|candidate| candidate.exists())
}

fn config_toml(root: &Path) -> String {
    let r = root.display();
    format!(
        r#"version = 2
root = "{r}/root"
state = "{r}/state"
[grpc]
  address = "{r}/containerd.sock"
[ttrpc]
  address = "{r}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{TEST_IMAGE}"
  # These machines lack CAP_SYS_RESOURCE: never lower a container's oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{r}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{r}/cni/bin"
    conf_dir = "{r}/cni/conf"
"#
    )
}

/// Stops and removes every pod sandbox (and so every container) through CRI. Runs on its own
/// thread and runtime because teardown happens in `Drop`, possibly inside another runtime.
fn remove_all_sandboxes(socket: &Path) {
    let socket = socket.to_path_buf();
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let work = async {
                let client = RuntimeClient::connect(
                    socket,
                    ClientConfig::default(),
                    CriMetrics::unregistered(),
                )
                .await
                .ok()?;
                let mut raw = client.raw();
                let sandboxes = raw
                    .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                for sandbox in sandboxes {
                    let id = sandbox.id;
                    let _ = raw
                        .stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    let _ = raw
                        .remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                            pod_sandbox_id: id,
                        })
                        .await;
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), work).await;
        });
    });
    let _ = worker.join();
}

fn terminate(child: &mut Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills the shims started by this containerd and their children (the pods' processes), which
/// outlive containerd by design.
fn kill_leftover_shims(socket: &Path) {
    let socket = socket.to_string_lossy().into_owned();
    let processes = list_processes();
    let shims: Vec<i32> = processes
        .iter()
        .filter(|p| p.cmdline.contains("containerd-shim") && p.cmdline.contains(&socket))
        .map(|p| p.pid)
        .collect();
    for shim in &shims {
        for child in processes.iter().filter(|p| p.ppid == *shim) {
            let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(*shim), Signal::SIGKILL);
    }
}

struct Process {
    pid: i32,
    ppid: i32,
    cmdline: String,
}

fn list_processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name in stat may contain spaces; fields after the last ')' are fixed.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some(Process { pid, ppid, cmdline })
        })
        .collect()
}

/// Lazily unmounts everything mounted below `root`, deepest first.
fn unmount_below(root: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(root))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mount in mounts {
        let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> PathBuf {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&code, 8) {
                out.push(byte as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(
            unescape_mount_path(r"/tmp/a\040b/c"),
            PathBuf::from("/tmp/a b/c")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
