//! `kubectl-relaunch`, the kubectl plugin: restart a pod's containers in place, roll a whole
//! workload, follow either live, list them, and pause, resume or abort rollouts. It talks to the
//! Kubernetes API only (creating ContainerRecreateRequests and RollingRestarts), with the user's
//! kubeconfig, context and namespace as kubectl would use them.
//!
//! Building the objects and rendering progress are pure functions ([`restart::recreate_request`],
//! [`rollout::rolling_restart`], [`restart::request_view`], ...); the commands are thin shells
//! around them.

pub mod control;
pub mod error;
pub mod parse;
pub mod progress;
pub mod restart;
pub mod rollout;
pub mod scale;
pub mod session;
pub mod status;
pub mod wait;

use clap::{Parser, Subcommand};

pub use error::CliError;
use session::{ClusterArgs, Session};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-relaunch",
    bin_name = "kubectl relaunch",
    version,
    about = "Restart containers in place: one pod's containers, or a whole workload batch by batch",
    after_help = "Exit status: 0 on success; 1 when the restart or rollout failed or paused, or on \
                  any error; 2 for a usage error; 130 when interrupted while waiting."
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Restart containers of one pod in place (creates a ContainerRecreateRequest).
    Restart(restart::RestartArgs),
    /// Restart the pods of a workload in place, batch by batch (creates a RollingRestart).
    Rollout(rollout::RolloutArgs),
    /// Scale a StatefulSet down, decommissioning each leaving pod first (creates a ScaleDown).
    Scale(scale::ScaleArgs),
    /// List RollingRestarts and ContainerRecreateRequests, or show one in detail.
    Status(status::StatusArgs),
    /// Pause a RollingRestart: no new batch starts (pods restarting now finish).
    Pause(control::RolloutName),
    /// Resume a paused RollingRestart (one paused by failures goes on, accepting them).
    Resume(control::RolloutName),
    /// Abort a RollingRestart for good: no new batch starts and it ends Failed.
    Abort(control::RolloutName),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let session = Session::connect(&cli.cluster).await?;
    match &cli.command {
        Command::Restart(args) => restart::run(&session, args).await,
        Command::Rollout(args) => rollout::run(&session, args).await,
        Command::Scale(args) => scale::run(&session, args).await,
        Command::Status(args) => status::run(&session, args).await,
        Command::Pause(args) => control::run(&session, control::Control::Pause, args).await,
        Command::Resume(args) => control::run(&session, control::Control::Resume, args).await,
        Command::Abort(args) => control::run(&session, control::Control::Abort, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_flags_go_anywhere_after_the_plugin_name() {
        let cli = Cli::try_parse_from([
            "kubectl-relaunch",
            "restart",
            "pod/db-0",
            "-c",
            "db",
            "-n",
            "data",
            "--context",
            "prod",
            "--wait",
        ])
        .unwrap();
        assert_eq!(cli.cluster.namespace.as_deref(), Some("data"));
        assert_eq!(cli.cluster.context.as_deref(), Some("prod"));
        let Command::Restart(args) = cli.command else {
            panic!("not restart")
        };
        assert_eq!(args.containers, ["db"]);
        assert!(args.wait);
    }

    #[test]
    fn timeout_needs_wait() {
        let error =
            Cli::try_parse_from(["kubectl-relaunch", "restart", "pod/db-0", "--timeout", "1m"])
                .unwrap_err();
        assert!(error.to_string().contains("--wait"), "{error}");
    }
}
