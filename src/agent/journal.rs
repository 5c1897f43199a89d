//! The crash-safety journal: one file per unfinished (or not yet acknowledged) request under
//! the state directory, holding the request's whole progress — above all the container ID the
//! agent acts on, written durably *before* every action on the container or its pod: the unready
//! request, the shutdown action (which can make the application exit by itself) and
//! `StopContainer`.
//!
//! Resuming after a crash or restart (see [`machine::decide`](super::machine::decide)): whatever
//! step the journal shows, a container whose ID in the pod status differs from the journaled one
//! was already restarted — it gets no unready request, no shutdown action and no stop; the agent
//! only waits for it to be ready. The journaled container gets the shutdown action again (with
//! what is left of the grace) or the stop again only if the runtime says that very container ID
//! still runs and the pod status shows no replacement. So a request restarts the container at
//! most once, wherever the agent crashed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::RequestProgress;
use relaunch_api::ContainerRecreatePhase;

/// Version of the journal file format.
pub const JOURNAL_VERSION: u32 = 1;

/// One journal file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub version: u32,
    pub progress: RequestProgress,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot use state directory {path}: {source} (set --state-dir to a writable directory)"
    )]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write journal file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove journal file {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another relaunch-agent already acts on this node: it holds {path} ({holder}). Run one agent per node, the DaemonSet pod or the systemd unit, not both (docs/systemd.md); this one exits"
    )]
    Locked { path: PathBuf, holder: String },
}

/// Runs a journal operation on tokio's blocking pool; `lost` names the error when the pool
/// could not run it to the end (the runtime shutting down).
async fn on_blocking_pool(
    operation: impl FnOnce() -> Result<(), JournalError> + Send + 'static,
    lost: impl FnOnce(std::io::Error) -> JournalError,
) -> Result<(), JournalError> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(done) => done,
        Err(e) => Err(lost(std::io::Error::other(e))),
    }
}

/// Name of the lock file in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// The agent's claim on its node: an exclusive `flock` on `<state dir>/agent.lock`, held as long
/// as this value lives. Two agents on one node (a DaemonSet pod and the systemd unit, both
/// with the host's `/var/lib/relaunch`) would each act on the same containers and journal; the
/// second refuses to start instead. The kernel drops the lock when the process ends, however it
/// ends, so a crashed agent never blocks its successor. The file holds who took it, for the
/// refusal's message.
#[derive(Debug)]
pub struct NodeLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl NodeLock {
    /// Takes the lock without waiting; [`JournalError::Locked`] if another agent holds it.
    pub fn acquire(state_dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::Dir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| JournalError::Dir {
                path: path.clone(),
                source,
            })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let holder = format!(
                    "pid {} on host {}",
                    std::process::id(),
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "?".into())
                );
                // Best effort: the lock, not the text, is what keeps a second agent out.
                let _ = lock
                    .set_len(0)
                    .and_then(|()| lock.write_all(holder.as_bytes()));
                Ok(Self { _lock: lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .filter(|h| !h.trim().is_empty())
                    .unwrap_or_else(|| "holder unknown".into());
                Err(JournalError::Locked {
                    path,
                    holder: holder.trim().to_string(),
                })
            }
            Err((_, errno)) => Err(JournalError::Dir {
                path,
                source: std::io::Error::from(errno),
            }),
        }
    }
}

/// Encodes an entry as the bytes of its file.
pub fn encode(progress: &RequestProgress) -> Vec<u8> {
    let entry = JournalEntry {
        version: JOURNAL_VERSION,
        progress: progress.clone(),
    };
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec_pretty(&entry).unwrap_or_default()
}

/// Decodes a journal file; `None` for a file from another version or a torn/garbled one
/// (which cannot happen with rename-into-place, but a disk can still lie).
pub fn decode(bytes: &[u8]) -> Option<RequestProgress> {
    let entry: JournalEntry = serde_json::from_slice(bytes).ok()?;
    (entry.version == JOURNAL_VERSION).then_some(entry.progress)
}

/// What to do with a journaled request at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Carry on from the journaled progress (checked against the live state before any stop).
    Resume(RequestProgress),
    /// Finished here but maybe not delivered: send the final report again.
    Redeliver(RequestProgress),
}

/// The start-up decision for one journal entry.
pub fn recover(progress: RequestProgress) -> Recovery {
    if progress.phase.is_finished() {
        Recovery::Redeliver(progress)
    } else {
        Recovery::Resume(progress)
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating) `<state_dir>/requests`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let dir = state_dir.join("requests");
        std::fs::create_dir_all(&dir).map_err(|source| JournalError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, uid: &str) -> PathBuf {
        // UIDs are UUIDs; anything else is made file-name safe.
        let safe: String = uid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Durably records `progress`: temp file, fsync, rename, fsync of the directory.
    pub fn write(&self, progress: &RequestProgress) -> Result<(), JournalError> {
        let path = self.path(&progress.request.uid);
        let tmp = path.with_extension("json.tmp");
        let err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&encode(progress)).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    /// [`Journal::write`] on tokio's blocking pool. Its two fsyncs take milliseconds; done on a
    /// runtime worker they would hold up every task queued behind the caller on that thread,
    /// among them the report sender woken just before (a task woken by the running one waits
    /// for that thread).
    pub async fn write_async(&self, progress: &RequestProgress) -> Result<(), JournalError> {
        let journal = self.clone();
        let progress = progress.clone();
        let path = self.path(&progress.request.uid);
        on_blocking_pool(
            move || journal.write(&progress),
            |source| JournalError::Write { path, source },
        )
        .await
    }

    /// [`Journal::remove`] on tokio's blocking pool (its directory fsync; see [`Journal::write_async`]).
    pub async fn remove_async(&self, uid: &str) -> Result<(), JournalError> {
        let journal = self.clone();
        let owned = uid.to_string();
        let path = self.path(uid);
        on_blocking_pool(
            move || journal.remove(&owned),
            |source| JournalError::Remove { path, source },
        )
        .await
    }

    /// The readable entry of request `uid`, if there is one.
    pub fn read(&self, uid: &str) -> Option<RequestProgress> {
        std::fs::read(self.path(uid))
            .ok()
            .as_deref()
            .and_then(decode)
    }

    /// Forgets a request (finished and acknowledged, or deleted).
    pub fn remove(&self, uid: &str) -> Result<(), JournalError> {
        let path = self.path(uid);
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| JournalError::Remove { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Remove { path, source }),
        }
    }

    /// The UIDs of the journaled requests (no reads, no clean-up: safe while workers write).
    pub fn uids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect()
    }

    /// Every entry (call at start-up: it also removes leftover temp files): the readable ones,
    /// and the request UIDs of those that cannot be read (logged; their requests are refused,
    /// never started over).
    pub fn load(&self) -> Result<Loaded, JournalError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| JournalError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Loaded::default();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                // Leftover temp files of a write that never got renamed.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path).ok().as_deref().and_then(decode) {
                Some(progress) => out.entries.push(progress),
                None => {
                    tracing::warn!(path = %path.display(), "unreadable journal file: its request will be failed, not started over");
                    if let Some(uid) = path.file_stem().and_then(|s| s.to_str()) {
                        out.unreadable.push(uid.to_string());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What [`Journal::load`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub entries: Vec<RequestProgress>,
    /// Request UIDs (file names) of the entries that cannot be read.
    pub unreadable: Vec<String>,
}

/// What the journal holds for a request being started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Journaled {
    /// Progress to resume from.
    Progress(Box<RequestProgress>),
    /// An entry that cannot be read (garbled, or another format version).
    Unreadable,
}

/// Why a journaled request is refused instead of resumed or started over.
pub fn refusal(journaled: &Journaled, pod_uid: &str, containers: &[&str]) -> Option<String> {
    const WHY: &str = "the agent refuses to act on it, so that no container is restarted a second time; create a new request if the containers still need a restart";
    match journaled {
        Journaled::Unreadable => Some(format!(
            "the agent's journal entry for this request cannot be read; {WHY}"
        )),
        Journaled::Progress(p)
            if p.phase.is_unknown()
                || p.containers
                    .iter()
                    .any(|c| c.phase == ContainerRecreatePhase::Unknown) =>
        {
            Some(format!(
                "the agent's journal entry for this request was written by a newer agent (a phase this one does not know); {WHY}"
            ))
        }
        Journaled::Progress(p) => {
            let journaled: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
            (p.pod_uid != pod_uid || journaled != containers).then(|| {
                format!(
                    "the agent's journal entry for this request is for pod UID {} and containers [{}], not pod UID {pod_uid} and containers [{}]; {WHY}",
                    p.pod_uid,
                    journaled.join(", "),
                    containers.join(", ")
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ContainerProgress;
    use jiff::Timestamp;
    use relaunch_api::report::RequestRef;
    use relaunch_api::{ContainerRecreatePhase, RecreatePhase};

    fn progress(phase: RecreatePhase) -> RequestProgress {
        let mut c = ContainerProgress::new("db");
        c.phase = ContainerRecreatePhase::Stopping;
        c.previous_container_id = Some("containerd://aaa".into());
        c.previous_restart_count = Some(2);
        c.steps.shutdown = Some(Timestamp::from_second(1_700_000_000).unwrap());
        RequestProgress {
            request: RequestRef {
                namespace: "ns".into(),
                name: "r".into(),
                uid: "0b1c-uid".into(),
            },
            pod_name: "pod-0".into(),
            pod_uid: "pod".into(),
            phase,
            message: None,
            start_time: Some(Timestamp::from_second(1_700_000_000).unwrap()),
            completion_time: None,
            containers: vec![c],
            sequence: 0,
        }
    }

    #[test]
    fn encode_decode_round_trips_the_container_to_stop() {
        let p = progress(RecreatePhase::Recreating);
        let decoded = decode(&encode(&p)).unwrap();
        assert_eq!(decoded, p);
        assert_eq!(
            decoded.containers[0].previous_container_id.as_deref(),
            Some("containerd://aaa")
        );
    }

    #[test]
    fn garbage_and_other_versions_are_not_resumed() {
        assert_eq!(decode(b"{not json"), None);
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&progress(RecreatePhase::Recreating))).unwrap();
        v["version"] = 99.into();
        assert_eq!(decode(&serde_json::to_vec(&v).unwrap()), None);
    }

    #[test]
    fn unfinished_requests_resume_and_finished_ones_are_redelivered() {
        assert!(matches!(
            recover(progress(RecreatePhase::Recreating)),
            Recovery::Resume(_)
        ));
        assert!(matches!(
            recover(progress(RecreatePhase::Succeeded)),
            Recovery::Redeliver(_)
        ));
    }

    /// The agent was killed while the shutdown action ran; the action made the application exit
    /// and the kubelet restarted it before the agent came back.
    #[test]
    fn a_journal_written_before_the_shutdown_action_resumes_without_touching_the_new_container() {
        use crate::machine::{Decision, Observation, PodContainerView, RuntimeView, decide};
        use crate::plan::{ContainerPlan, ShutdownSource, ShutdownStep};
        use std::time::Duration;

        let plan = ContainerPlan {
            name: "db".into(),
            shutdown: Some((
                ShutdownSource::Request,
                ShutdownStep::Exec(vec!["SYSTEM SHUTDOWN".into()]),
            )),
            grace: Duration::from_secs(30),
            unready_grace: None,
            min_started: Duration::ZERO,
            force: false,
        };
        let view = |id: &str, restart_count| PodContainerView {
            container_id: Some(id.into()),
            restart_count,
            ready: true,
            started: true,
            running: true,
        };
        let at = |s: i64| Timestamp::from_second(1_700_000_000 + s).unwrap();
        let mut p = progress(RecreatePhase::Recreating);
        p.containers[0] = ContainerProgress::new("db");
        let old = Observation {
            now: at(0),
            pod: Some(view("containerd://aaa", 2)),
            runtime: Some(RuntimeView {
                newest_id: Some("aaa".into()),
                newest_running: true,
                previous_running: true,
            }),
        };
        let d = decide(&mut p.containers[0], &plan, &old, None);
        assert!(matches!(d, Decision::Shutdown { .. }), "{d:?}");
        // What the shell journals before running the action; then the agent dies.
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.write(&p).unwrap();

        let mut resumed = match recover(journal.load().unwrap().entries.remove(0)) {
            Recovery::Resume(p) => p,
            other => panic!("{other:?}"),
        };
        let new = Observation {
            now: at(3),
            pod: Some(view("containerd://bbb", 3)),
            runtime: Some(RuntimeView {
                newest_id: Some("bbb".into()),
                newest_running: true,
                previous_running: false,
            }),
        };
        let c = &mut resumed.containers[0];
        assert_eq!(decide(c, &plan, &new, None), Decision::Finished);
        assert_eq!(c.phase, ContainerRecreatePhase::Succeeded);
        assert_eq!(c.previous_container_id.as_deref(), Some("containerd://aaa"));
        assert_eq!(c.new_container_id.as_deref(), Some("containerd://bbb"));
    }

    #[test]
    fn writes_durably_loads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let p = progress(RecreatePhase::Recreating);
        journal.write(&p).unwrap();
        std::fs::write(dir.path().join("requests/x.json.tmp"), b"torn").unwrap();
        assert_eq!(journal.load().unwrap().entries, vec![p.clone()]);
        assert!(!dir.path().join("requests/x.json.tmp").exists());
        journal.remove(&p.request.uid).unwrap();
        journal.remove(&p.request.uid).unwrap();
        assert_eq!(journal.load().unwrap(), Loaded::default());
    }

    #[tokio::test]
    async fn the_blocking_pool_writes_and_removes_the_same_entries() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let p = progress(RecreatePhase::Recreating);
        journal.write_async(&p).await.unwrap();
        assert_eq!(journal.read(&p.request.uid), Some(p.clone()));
        journal.remove_async(&p.request.uid).await.unwrap();
        journal.remove_async(&p.request.uid).await.unwrap();
        assert_eq!(journal.load().unwrap(), Loaded::default());
        // A directory that is gone is an error, not a lost write.
        drop(dir);
        assert!(matches!(
            journal.write_async(&p).await,
            Err(JournalError::Write { .. })
        ));
    }

    #[test]
    fn an_unreadable_or_mismatched_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("requests/0b1c-bad.json"), b"{torn").unwrap();
        let loaded = journal.load().unwrap();
        assert_eq!(loaded.unreadable, vec!["0b1c-bad".to_string()]);
        let why = refusal(&Journaled::Unreadable, "pod", &["db"]).unwrap();
        assert!(why.contains("cannot be read"), "{why}");
        let p = Journaled::Progress(Box::new(progress(RecreatePhase::Recreating)));
        assert_eq!(refusal(&p, "pod", &["db"]), None);
        let why = refusal(&p, "other-pod", &["db"]).unwrap();
        assert!(
            why.contains("pod UID pod and containers [db], not pod UID other-pod"),
            "{why}"
        );
        assert!(refusal(&p, "pod", &["db", "log"]).is_some());
        // Written by a newer agent (a downgrade): its steps cannot be trusted either.
        let mut newer = progress(RecreatePhase::Recreating);
        newer.containers[0].phase = ContainerRecreatePhase::Unknown;
        let why = refusal(&Journaled::Progress(Box::new(newer)), "pod", &["db"]).unwrap();
        assert!(why.contains("newer agent"), "{why}");
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&progress(RecreatePhase::Recreating))).unwrap();
        v["progress"]["phase"] = "Restarting".into();
        let newer = decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(refusal(&Journaled::Progress(Box::new(newer)), "pod", &["db"]).is_some());
    }

    #[test]
    fn a_second_agent_on_the_node_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeLock::acquire(dir.path()).unwrap();
        let refused = NodeLock::acquire(dir.path()).unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("another relaunch-agent already acts on this node")
                && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        NodeLock::acquire(dir.path()).unwrap();
    }
}
