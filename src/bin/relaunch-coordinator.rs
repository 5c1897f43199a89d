//! relaunch-coordinator: authenticates the agents' reports, owns every status write, and runs the
//! controllers (CRR admission and lifecycle).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "relaunch-coordinator",
    version,
    about = "The relaunch coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types (one file per CRD).
    Crds {
        /// Directory to write into; prints to stdout when absent.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir } => write_crds(dir),
    }
}

fn write_crds(dir: Option<PathBuf>) -> ExitCode {
    for (file, yaml) in relaunch::api::crd_manifests() {
        match &dir {
            Some(dir) => {
                let path = dir.join(&file);
                if let Err(e) =
                    std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, yaml))
                {
                    eprintln!("relaunch-coordinator: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}
