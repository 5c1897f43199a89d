//! relaunch-coordinator: authenticates the agents' reports, owns every status write, and runs the
//! controllers (CRR admission and lifecycle, RollingRestarts and their trigger), leader-elected
//! with `--leader-election-namespace`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relaunch_coordinator::leader_election::LeaderElection;
use relaunch_coordinator::{Context, ReportListener, ServiceAccountRef, Settings, TlsFiles};
use relaunch_telemetry::{LogFormat, admin};
use tokio_util::sync::CancellationToken;

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
    /// Serve the agents' report API and run the controllers.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Kubeconfig file; without it, the usual inference (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Address of the report API.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain for the report API; with --tls-key it serves HTTPS, else plain HTTP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// The agents' service account, NAMESPACE:NAME; only its tokens may report.
    #[arg(long, default_value = relaunch_coordinator::DEFAULT_AGENT_SERVICE_ACCOUNT)]
    agent_service_account: ServiceAccountRef,
    /// Audience the agents' tokens must carry.
    #[arg(long, default_value = relaunch_api::COORDINATOR_AUDIENCE)]
    audience: String,
    /// Fail a request still Pending or Recreating when its agent has not reported for this long
    /// (e.g. 300s, 5m).
    #[arg(long, default_value = "5m", value_parser = relaunch_telemetry::parse_duration)]
    agent_timeout: Duration,
    /// Namespace of the leader-election Lease; with it, the controllers run only on the replica
    /// holding the Lease (the report API runs on every replica).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "relaunch-coordinator")]
    leader_election_name: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir } => write_crds(dir),
        Command::Run(args) => {
            relaunch_telemetry::init_logging(args.log_format, "info");
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("relaunch-coordinator: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    relaunch_telemetry::cancel_on_signals(shutdown.clone())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let client = relaunch_telemetry::client::client(args.kubeconfig.as_deref()).await?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let listener = ReportListener::bind(args.listen, tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let admin_listener = admin::bind(args.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.admin_listen))?;
    let registry = admin::registry_with_process_metrics();
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| "relaunch-coordinator".into());
    let leader_election = args.leader_election_namespace.as_deref().map(|namespace| {
        let identity = format!("{instance}_{}", std::process::id());
        LeaderElection::new(namespace, &args.leader_election_name, &identity)
    });
    let settings = Settings {
        agents: args.agent_service_account,
        audience: args.audience,
        agent_timeout: args.agent_timeout,
        instance,
        leader_election,
        ..Settings::default()
    };
    let ctx = Context::new(client, settings, &registry).map_err(|e| e.to_string())?;
    let health = Arc::new(admin::Health::default());
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        registry,
        health.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        admin = %args.admin_listen,
        "relaunch-coordinator starting"
    );
    let result = relaunch_coordinator::run(ctx, listener, health, shutdown.clone()).await;
    shutdown.cancel();
    let _ = admin_task.await;
    tracing::info!("relaunch-coordinator stopped");
    result.map_err(|e| e.to_string())
}

fn write_crds(dir: Option<PathBuf>) -> ExitCode {
    for (file, yaml) in relaunch_api::crd_manifests() {
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
