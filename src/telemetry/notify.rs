//! systemd's service notification protocol (sd_notify(3)): `READY=1` once the process serves,
//! `WATCHDOG=1` while its main loop turns, `STOPPING=1` when it shuts down — datagrams sent to
//! the socket in `$NOTIFY_SOCKET`. Without that variable (a DaemonSet, a shell) nothing is sent.
//!
//! Built on std's `UnixDatagram` rather than a crate: the protocol is one `sendto` per message,
//! std reaches path and abstract sockets without `unsafe`, and a sender made from explicit
//! values can be tested without changing the process environment (`set_var` is `unsafe` in
//! edition 2024 and races other test threads).

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The variables the service manager sets for a `Type=notify` service with a watchdog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyEnv {
    /// `NOTIFY_SOCKET`: an absolute socket path, or `@name` for an abstract socket.
    pub socket: Option<OsString>,
    /// `WATCHDOG_USEC`: the watchdog timeout in microseconds.
    pub watchdog_usec: Option<String>,
    /// `WATCHDOG_PID`: the process the watchdog is meant for (ours when absent).
    pub watchdog_pid: Option<String>,
}

impl NotifyEnv {
    /// The variables as this process received them.
    pub fn from_process() -> Self {
        Self {
            socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog_usec: std::env::var("WATCHDOG_USEC").ok(),
            watchdog_pid: std::env::var("WATCHDOG_PID").ok(),
        }
    }
}

/// The service manager (systemd) this process reports its state to, if it was started by one.
/// Sending never blocks and never fails the caller: errors are logged.
#[derive(Debug)]
pub struct ServiceManager {
    channel: Option<Channel>,
    /// How often to ping the watchdog: half its timeout, as sd_watchdog_enabled(3) advises.
    watchdog_interval: Option<Duration>,
}

#[derive(Debug)]
struct Channel {
    socket: UnixDatagram,
    address: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for log lines.
    name: String,
}

impl ServiceManager {
    /// The service manager named by this process's environment.
    pub fn from_env() -> Self {
        Self::new(&NotifyEnv::from_process(), std::process::id())
    }

    /// A manager that is told nothing (no `NOTIFY_SOCKET`).
    pub fn none() -> Self {
        Self {
            channel: None,
            watchdog_interval: None,
        }
    }

    /// The service manager described by `env`, as seen by process `pid`. A variable that cannot
    /// be used is logged and treated as absent.
    pub fn new(env: &NotifyEnv, pid: u32) -> Self {
        let Some(channel) = env.socket.as_ref().and_then(|s| Channel::open(s)) else {
            return Self::none();
        };
        let watchdog_interval = watchdog_timeout(env, pid).map(|timeout| timeout / 2);
        debug!(socket = %channel.name, ?watchdog_interval, "notifying the service manager");
        Self {
            channel: Some(channel),
            watchdog_interval,
        }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.channel.is_some()
    }

    /// How often the watchdog wants `WATCHDOG=1`; `None` when it is off or not ours.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// `READY=1` with a status line: start-up is complete.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// A status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// `STOPPING=1` with a status line: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
    }

    /// `WATCHDOG=1`: the process is alive.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1\n");
    }

    fn send(&self, message: &str) {
        let Some(channel) = &self.channel else {
            return;
        };
        // Unconnected on purpose: each send resolves the path again, so a re-executed systemd
        // that bound its socket anew is still reached.
        match channel
            .socket
            .send_to_addr(message.as_bytes(), &channel.address)
        {
            Ok(sent) if sent == message.len() => {}
            Ok(sent) => warn!(
                socket = %channel.name,
                "service manager notification cut short ({sent} of {} bytes)",
                message.len()
            ),
            Err(e) => warn!(socket = %channel.name, "cannot notify the service manager: {e}"),
        }
    }
}

impl Channel {
    fn open(name: &std::ffi::OsStr) -> Option<Self> {
        let shown = name.to_string_lossy().into_owned();
        let address = match parse_address(name) {
            Ok(address) => address,
            Err(reason) => {
                warn!(
                    "NOTIFY_SOCKET={shown} is not usable ({reason}); not notifying the service manager"
                );
                return None;
            }
        };
        // Non-blocking: a full socket buffer must never stall the runtime's threads; the
        // message is dropped and logged instead.
        let socket = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        match socket {
            Ok(socket) => Some(Self {
                socket,
                address,
                name: shown,
            }),
            Err(e) => {
                warn!("cannot create a socket to notify the service manager: {e}");
                None
            }
        }
    }
}

/// `NOTIFY_SOCKET` as an address: `@name` is an abstract socket, `/path` a file.
fn parse_address(name: &std::ffi::OsStr) -> Result<SocketAddr, String> {
    let bytes = name.as_bytes();
    let result = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(name),
        _ => return Err("neither an absolute path nor @abstract".into()),
    };
    result.map_err(|e| e.to_string())
}

/// The watchdog timeout, if the watchdog is on and meant for process `pid`.
fn watchdog_timeout(env: &NotifyEnv, pid: u32) -> Option<Duration> {
    let usec = env.watchdog_usec.as_deref()?;
    let timeout = match usec.trim().parse::<u64>() {
        Ok(0) | Err(_) => {
            warn!(
                "WATCHDOG_USEC={usec} is not a positive number of microseconds; not pinging the watchdog"
            );
            return None;
        }
        Ok(usec) => Duration::from_micros(usec),
    };
    match env.watchdog_pid.as_deref().map(|p| p.trim().parse::<u32>()) {
        None => Some(timeout),
        Some(Ok(meant_for)) if meant_for == pid => Some(timeout),
        Some(Ok(meant_for)) => {
            debug!(meant_for, pid, "the watchdog is meant for another process");
            None
        }
        Some(Err(_)) => {
            warn!(
                "WATCHDOG_PID={} is not a process id; not pinging the watchdog",
                env.watchdog_pid.as_deref().unwrap_or_default()
            );
            None
        }
    }
}

/// STATUS= ends at a newline: keep a status to one line.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// A main loop's side of the watchdog: the watchdog asks, the loop answers when it comes round.
/// The ping is only sent after an answer, so a loop that hangs stops the pings and the service
/// manager restarts the process.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    asked: Arc<Notify>,
    answered: Arc<Notify>,
}

impl Heartbeat {
    /// A heartbeat nobody has asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves when the watchdog asks for a sign of life; answer it with [`Heartbeat::beat`].
    pub async fn asked(&self) {
        self.asked.notified().await;
    }

    /// A sign of life from the main loop.
    pub fn beat(&self) {
        self.answered.notify_one();
    }
}

/// Pings the watchdog of `manager` every half timeout — each time only after the main loop
/// answered `heartbeat` within that half and `alive()` holds — until `stop` is cancelled.
/// Returns at once when there is no watchdog.
pub async fn keep_watchdog(
    manager: Arc<ServiceManager>,
    heartbeat: Heartbeat,
    alive: impl Fn() -> bool,
    stop: CancellationToken,
) {
    let Some(interval) = manager.watchdog_interval() else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        heartbeat.asked.notify_one();
        let answered = tokio::select! {
            _ = stop.cancelled() => return,
            answer = tokio::time::timeout(interval, heartbeat.answered.notified()) => answer.is_ok(),
        };
        if !answered {
            warn!(waited = ?interval, "the main loop did not answer; withholding the watchdog ping");
        } else if !alive() {
            warn!("unhealthy; withholding the watchdog ping");
        } else {
            manager.watchdog_ping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> NotifyEnv {
        NotifyEnv {
            socket: socket.map(OsString::from),
            watchdog_usec: usec.map(str::to_string),
            watchdog_pid: pid.map(str::to_string),
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_ready_status_and_stopping_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let manager = ServiceManager::new(&env(path.to_str(), None, None), 1);
        assert!(manager.is_enabled());
        manager.ready("watching node-1\nsecond line");
        assert_eq!(
            receive(&listener),
            "READY=1\nSTATUS=watching node-1 second line\n"
        );
        manager.stopping("draining");
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=draining\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("relaunch-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        let manager = ServiceManager::new(&env(Some(&format!("@{name}")), None, None), 1);
        manager.watchdog_ping();
        assert_eq!(receive(&listener), "WATCHDOG=1\n");
    }

    #[test]
    fn does_nothing_without_notify_socket() {
        let manager = ServiceManager::new(&env(None, Some("30000000"), None), 1);
        assert!(!manager.is_enabled());
        assert_eq!(manager.watchdog_interval(), None);
        manager.ready("ready");
        manager.watchdog_ping();
    }

    #[test]
    fn ignores_unusable_notify_socket() {
        for bad in ["relative/path", "", "vsock:2:1234"] {
            let manager = ServiceManager::new(&env(Some(bad), Some("30000000"), None), 1);
            assert!(!manager.is_enabled(), "{bad:?}");
        }
        let too_long = format!("/{}", "x".repeat(200));
        assert!(!ServiceManager::new(&env(Some(&too_long), None, None), 1).is_enabled());
    }

    #[test]
    fn send_errors_are_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody-listens");
        let manager = ServiceManager::new(&env(path.to_str(), None, None), 1);
        assert!(manager.is_enabled());
        manager.ready("ready");
        manager.watchdog_ping();
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_our_pid_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _listener = UnixDatagram::bind(&path).unwrap();
        let socket = path.to_str();
        let interval =
            |usec, pid| ServiceManager::new(&env(socket, usec, pid), 42).watchdog_interval();
        assert_eq!(
            interval(Some("30000000"), None),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval(Some("400000"), Some("42")),
            Some(Duration::from_millis(200))
        );
        assert_eq!(interval(Some("400000"), Some("43")), None);
        assert_eq!(interval(Some("400000"), Some("pid")), None);
        assert_eq!(interval(Some("0"), None), None);
        assert_eq!(interval(Some("soon"), None), None);
        assert_eq!(interval(None, Some("42")), None);
    }

    fn watchdog_bed(usec: &str) -> (tempfile::TempDir, UnixDatagram, Arc<ServiceManager>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let manager = Arc::new(ServiceManager::new(
            &env(path.to_str(), Some(usec), None),
            1,
        ));
        (dir, listener, manager)
    }

    #[tokio::test]
    async fn pings_while_the_main_loop_answers() {
        let (_dir, listener, manager) = watchdog_bed("100000");
        let heartbeat = Heartbeat::new();
        let stop = CancellationToken::new();
        let main_loop = {
            let heartbeat = heartbeat.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = heartbeat.asked() => heartbeat.beat(),
                    }
                }
            })
        };
        let keeper = tokio::spawn(keep_watchdog(manager, heartbeat, || true, stop.clone()));
        let pings = tokio::task::spawn_blocking(move || [receive(&listener), receive(&listener)])
            .await
            .unwrap();
        assert_eq!(pings, ["WATCHDOG=1\n", "WATCHDOG=1\n"]);
        stop.cancel();
        keeper.await.unwrap();
        main_loop.await.unwrap();
    }

    #[tokio::test]
    async fn withholds_pings_when_the_main_loop_hangs_or_is_unhealthy() {
        for answering in [false, true] {
            let (_dir, listener, manager) = watchdog_bed("40000");
            let heartbeat = Heartbeat::new();
            let stop = CancellationToken::new();
            let responder = {
                let heartbeat = heartbeat.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    if !answering {
                        return;
                    }
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = heartbeat.asked() => heartbeat.beat(),
                        }
                    }
                })
            };
            // Healthy when the loop hangs, unhealthy when it answers: each reason alone must
            // withhold the ping.
            let healthy = !answering;
            let keeper = tokio::spawn(keep_watchdog(
                manager,
                heartbeat,
                move || healthy,
                stop.clone(),
            ));
            listener
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let received = tokio::task::spawn_blocking(move || {
                let mut buffer = [0u8; 64];
                listener.recv(&mut buffer).ok()
            })
            .await
            .unwrap();
            assert_eq!(received, None, "answering: {answering}");
            stop.cancel();
            keeper.await.unwrap();
            responder.await.unwrap();
        }
    }

    #[tokio::test]
    async fn keep_watchdog_returns_without_a_watchdog() {
        let manager = Arc::new(ServiceManager::none());
        keep_watchdog(manager, Heartbeat::new(), || true, CancellationToken::new()).await;
    }
}
