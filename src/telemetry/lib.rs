//! Process plumbing shared by the binaries: logging, signals, the admin endpoint, service-manager
//! notifications and the Kubernetes client.

pub mod admin;
pub mod client;
pub mod notify;
pub mod serving;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Cancels `shutdown` on SIGTERM or SIGINT (the signals a DaemonSet, systemd or Ctrl-C send).
pub fn cancel_on_signals(shutdown: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// Parses a command-line duration: a whole number with an optional unit `ms`, `s` (the default),
/// `m` or `h` — `90s`, `5m`, `250ms`. Values that do not fit are refused, not wrapped.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 90s or 5m, got {text:?}"))?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use ms, s, m or h"
            ));
        }
    };
    n.checked_mul(seconds_per_unit)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_refuse_what_does_not_fit() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("m")
                .unwrap_err()
                .contains("expected a duration")
        );
        let huge = format!("{}h", u64::MAX);
        assert!(parse_duration(&huge).unwrap_err().contains("too long"));
    }
}
