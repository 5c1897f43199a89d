//! relaunch-agent: the per-node agent that recreates containers in place.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use relaunch_agent::AgentArgs;
use relaunch_telemetry::notify::ServiceManager;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = AgentArgs::parse();
    relaunch_telemetry::init_logging(args.log_format, "info");
    let shutdown = CancellationToken::new();
    match relaunch_telemetry::cancel_on_signals(shutdown.clone()) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    }
    let service = Arc::new(ServiceManager::from_env());
    match relaunch_agent::run(args, shutdown, service).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
