//! `berth-hollow-agent`: many SIMULATED hosts in one process, for benchmarks. No Docker is touched.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use hollow_agent::{ApplyLog, JoinWith, start_hosts};

#[derive(Debug, Parser)]
#[command(
    name = "berth-hollow-agent",
    version,
    about = "SIMULATED berth agents for benchmarks (like kubemark): the real agent.v1 gRPC protocol, \
             instances in memory, no Docker. Apply succeeds at once, exec answers exit 0."
)]
struct Args {
    /// How many simulated hosts to run, each with its own gRPC server.
    #[arg(long, default_value_t = 1)]
    hosts: usize,
    /// Hosts are named `{prefix}-{i}`, i from 1.
    #[arg(long, default_value = "hollow")]
    host_prefix: String,
    /// Registry URLs of the control-plane replicas, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    control_plane: Vec<String>,
    /// The fleet's join token (the control plane writes it to its data dir as `join-token`).
    #[arg(long, conflicts_with = "join_token_file")]
    join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    join_token_file: Option<std::path::PathBuf>,
    /// The fleet CA's certificate (the control plane's data dir has it as `ca.pem`).
    #[arg(long)]
    ca_file: std::path::PathBuf,
    /// IP address every simulated host listens on (each on a free port).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Log lines each apply streams before its result, each carrying its emit time.
    #[arg(long, default_value_t = 0)]
    apply_log_lines: u32,
    /// Pause between two of those lines, in milliseconds.
    #[arg(long, default_value_t = 0)]
    apply_log_interval_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let log = ApplyLog {
        lines: args.apply_log_lines,
        interval: Duration::from_millis(args.apply_log_interval_ms),
    };
    let join = match join_with(&args) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("berth-hollow-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let hosts = match start_hosts(
        &args.host_prefix,
        args.hosts,
        args.ip,
        &args.control_plane,
        &join,
        log,
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("berth-hollow-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One line on stdout once every server listens, for whoever started us.
    println!("ready: {} simulated hosts", hosts.len());
    // SIGTERM (how the bench stops us) or Ctrl-C.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    drop(hosts);
    std::process::ExitCode::SUCCESS
}

fn join_with(args: &Args) -> Result<JoinWith, String> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let token = match (&args.join_token, &args.join_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => read(path)?.trim().to_string(),
        (None, None) => return Err("--join-token or --join-token-file is required".into()),
    };
    Ok(JoinWith {
        token,
        ca_pem: read(&args.ca_file)?,
    })
}
