//! Readiness probes (exec, httpGet, tcpSocket) and the handlers preStop hooks share with them.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use relaunch_cri::RuntimeClient;

/// Probe timing and thresholds with the API's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTiming {
    pub fn of(probe: &Probe) -> Self {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1) as u32;
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// The readiness result a probe worker reports: a readiness probe starts failed and flips only
/// after `success_threshold` consecutive successes or `failure_threshold` consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounter {
    ready: bool,
    last: Option<bool>,
    streak: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

impl ProbeCounter {
    pub fn new(timing: &ProbeTiming) -> Self {
        Self {
            ready: false,
            last: None,
            streak: 0,
            success_threshold: timing.success_threshold,
            failure_threshold: timing.failure_threshold,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Records one probe outcome; returns true when the reported result changed.
    pub fn record(&mut self, success: bool) -> bool {
        if self.last == Some(success) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.last = Some(success);
            self.streak = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.streak >= threshold && self.ready != success {
            self.ready = success;
            return true;
        }
        false
    }
}

/// What a probe or hook does, decoded from the API types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    HttpGet {
        port: u16,
        path: String,
    },
    TcpSocket {
        port: u16,
    },
    Sleep(Duration),
    /// A handler we cannot run (unresolvable named port, gRPC probe, empty handler).
    Unsupported(String),
}

impl Action {
    /// The action of a probe; named ports resolve against the container's `ports`.
    pub fn of_probe(probe: &Probe, ports: &[ContainerPort]) -> Self {
        decode(
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
            None,
            ports,
        )
    }

    /// The action of a lifecycle handler (preStop).
    pub fn of_handler(handler: &LifecycleHandler, ports: &[ContainerPort]) -> Self {
        decode(
            handler.exec.as_ref(),
            handler.http_get.as_ref(),
            handler.tcp_socket.as_ref(),
            handler.sleep.as_ref().map(|s| s.seconds),
            ports,
        )
    }
}

fn decode(
    exec: Option<&ExecAction>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    sleep: Option<i64>,
    ports: &[ContainerPort],
) -> Action {
    if let Some(exec) = exec {
        return Action::Exec(exec.command.clone().unwrap_or_default());
    }
    if let Some(http) = http {
        return match resolve_port(&http.port, ports) {
            Some(port) => Action::HttpGet {
                port,
                path: http.path.clone().unwrap_or_else(|| "/".into()),
            },
            None => Action::Unsupported(format!("cannot resolve port {:?}", http.port)),
        };
    }
    if let Some(tcp) = tcp {
        return match resolve_port(&tcp.port, ports) {
            Some(port) => Action::TcpSocket { port },
            None => Action::Unsupported(format!("cannot resolve port {:?}", tcp.port)),
        };
    }
    if let Some(seconds) = sleep {
        return Action::Sleep(Duration::from_secs(seconds.max(0) as u64));
    }
    Action::Unsupported("no handler".into())
}

/// A numeric port, or a named one looked up in the container's ports.
pub fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
    }
}

/// Whether an HTTP status line reports success (2xx or 3xx), as the kubelet's HTTP prober.
pub fn http_success(status_line: &str) -> bool {
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| (200..400).contains(&code))
}

/// Runs `action` against container `container_id` of a pod on `ip`, within `timeout`.
/// Ok(true) = success, Ok(false) = the check failed; Err = it could not be run.
pub async fn run(
    runtime: &RuntimeClient,
    container_id: &str,
    ip: Ipv4Addr,
    action: &Action,
    timeout: Duration,
) -> Result<bool, String> {
    match action {
        Action::Exec(cmd) => runtime
            .exec_sync(container_id, cmd, timeout, 64 * 1024)
            .await
            .map(|out| out.exit_code == 0)
            .map_err(|e| e.to_string()),
        Action::HttpGet { port, path } => {
            let get = async {
                let mut stream = tokio::net::TcpStream::connect((ip, *port)).await?;
                let request = format!(
                    "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await?;
                let mut response = Vec::new();
                let mut buf = [0u8; 1024];
                while !response.contains(&b'\n') {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    response.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
            };
            match tokio::time::timeout(timeout, get).await {
                Ok(Ok(response)) => Ok(http_success(response.lines().next().unwrap_or_default())),
                Ok(Err(_)) | Err(_) => Ok(false),
            }
        }
        Action::TcpSocket { port } => Ok(matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, *port))).await,
            Ok(Ok(_))
        )),
        Action::Sleep(d) => {
            tokio::time::sleep((*d).min(timeout)).await;
            Ok(true)
        }
        Action::Unsupported(why) => Err(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn timing_defaults_match_the_api() {
        let t = ProbeTiming::of(&probe(json!({"exec": {"command": ["true"]}})));
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn readiness_flips_only_after_thresholds() {
        let t = ProbeTiming::of(&probe(
            json!({"successThreshold": 2, "failureThreshold": 3}),
        ));
        let mut c = ProbeCounter::new(&t);
        assert!(!c.ready());
        assert!(!c.record(true));
        assert!(c.record(true));
        assert!(c.ready());
        assert!(!c.record(false));
        assert!(!c.record(false));
        assert!(!c.record(true), "a success breaks the failure streak");
        assert!(!c.record(false));
        assert!(!c.record(false));
        assert!(c.record(false));
        assert!(!c.ready());
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let ports: Vec<ContainerPort> =
            serde_json::from_value(json!([{"name": "http", "containerPort": 8080}])).unwrap();
        assert_eq!(resolve_port(&IntOrString::Int(80), &ports), Some(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &ports),
            Some(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("nope".into()), &ports),
            None
        );
        assert_eq!(resolve_port(&IntOrString::Int(0), &ports), None);
    }

    #[test]
    fn decodes_handlers() {
        let ports: Vec<ContainerPort> =
            serde_json::from_value(json!([{"name": "admin", "containerPort": 9000}])).unwrap();
        let h: LifecycleHandler =
            serde_json::from_value(json!({"httpGet": {"port": "admin", "path": "/drain"}}))
                .unwrap();
        assert_eq!(
            Action::of_handler(&h, &ports),
            Action::HttpGet {
                port: 9000,
                path: "/drain".into()
            }
        );
        let h: LifecycleHandler = serde_json::from_value(json!({"sleep": {"seconds": 3}})).unwrap();
        assert_eq!(
            Action::of_handler(&h, &ports),
            Action::Sleep(Duration::from_secs(3))
        );
        let h: LifecycleHandler =
            serde_json::from_value(json!({"exec": {"command": ["sh", "-c", "x"]}})).unwrap();
        assert_eq!(
            Action::of_handler(&h, &ports),
            Action::Exec(vec!["sh".into(), "-c".into(), "x".into()])
        );
    }

    #[test]
    fn http_status_2xx_and_3xx_succeed() {
        assert!(http_success("HTTP/1.0 200 OK"));
        assert!(http_success("HTTP/1.1 302 Found"));
        assert!(!http_success("HTTP/1.1 500 Internal Server Error"));
        assert!(!http_success(""));
    }
}
