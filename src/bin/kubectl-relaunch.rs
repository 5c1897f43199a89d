//! kubectl-relaunch: the kubectl plugin (`kubectl relaunch ...`) for in-place restarts.

use std::process::ExitCode;

use clap::Parser;
use relaunch_cli::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match relaunch_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
