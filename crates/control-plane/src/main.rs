use clap::Parser;
use control_plane::operator::Command;
use control_plane::settings::Settings;

/// A control-plane replica, or, with a subcommand, an operator command on its etcd.
#[derive(Debug, clap::Parser)]
#[command(
    name = "berth-control-plane",
    version,
    about = "Declarative control plane for Postgres databases and their services",
    args_conflicts_with_subcommands = false
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Some(command) => {
            control_plane::operator::run(&cli.settings, command, &mut std::io::stdout()).await
        }
        None => control_plane::run(cli.settings, shutdown_signal()).await,
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn,h2=warn"));
    let json = std::env::var("BERTH_LOG_FORMAT").is_ok_and(|f| f == "json");
    // stderr: stdout carries operator commands' answers (a new token, for one).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
