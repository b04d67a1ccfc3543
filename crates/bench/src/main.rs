//! `berth-bench`: berth's benchmarks. They print markdown tables of medians and ratios and never fail on a
//! timing; they fail only when the system under test does not work (then the table would be meaningless).

mod api;
mod backup;
mod cluster;
mod converge;
mod engine_fleet;
mod failover;
mod follow;
mod follow_latency;
mod history;
mod procs;
mod profile;
mod replication_lag;
mod scale;
mod specs;
mod stats;
mod tasks;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth-bench", about = "berth's benchmarks (see BENCHMARKS.md)")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
    /// Skip `cargo build --release` of the binaries the benchmarks start.
    #[arg(long, global = true)]
    no_build: bool,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// A database with one node and three services over three hosts, by berth on one shared engine and on an
    /// engine-per-host fleet (needs root), against docker compose, swarm and raw Docker.
    Converge {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Spec submissions per second and latency, against raw etcd transactions.
    Api {
        #[arg(long, default_value_t = 10000)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Record the control plane with perf during the API run and print where its time went.
        #[arg(long)]
        profile: bool,
    },
    /// One control plane, simulated hosts, thousands of instances.
    Scale {
        /// Fraction of the full size (100 hosts, 1,000 databases, 10,000 instances).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 9)]
        updates: usize,
        /// Record the control plane with perf while it converges and print the hottest symbols.
        #[arg(long)]
        profile: bool,
    },
    /// Clients following task logs with the cursor while tasks run.
    Follow {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        databases: usize,
        #[arg(long, default_value_t = 100)]
        lines: u32,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long, default_value_t = 50)]
        poll_ms: u64,
    },
    /// Follow latency on real tasks (real agents, the machine's engine): the berth CLI on the NDJSON stream
    /// against clients polling the log with its cursor, side by side on the same tasks.
    FollowLatency {
        /// Databases created then deleted; both tasks of each are followed.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The pollers' intervals in milliseconds, one poller each.
        #[arg(long, value_delimiter = ',', default_value = "1000,250")]
        poll_ms: Vec<u64>,
    },
    /// Update tasks against simulated hosts with etcd's db size sampled: retention and compaction at work.
    History {
        #[arg(long, default_value_t = 10000)]
        updates: usize,
        #[arg(long, default_value_t = 20)]
        databases: usize,
        #[arg(long, default_value_t = 10)]
        lines: u32,
    },
    /// Time without a writable primary when the primary's host is cut off, and switchover time, with
    /// Patroni's default timings and berth's side by side (an engine-per-host fleet of two hosts: needs root).
    Failover {
        /// Failover runs per configuration.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Switchover runs per configuration (0: none).
        #[arg(long, default_value_t = 5)]
        switchovers: usize,
    },
    /// Replication lag between the nodes of a database (pglogical, ADR 019) under a steady write load on n1, at
    /// each rate in turn (an engine-per-host fleet with a host per node: needs root).
    ReplicationLag {
        /// Nodes, one per host.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Write rates in rows per second, one single-row transaction each.
        #[arg(long, value_delimiter = ',', default_value = "20,200")]
        rates: Vec<u32>,
        /// Seconds of load per rate.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Adding a node to a live replicated database holding --gib of data, copied from n1 (ADR 020; an
    /// engine-per-host fleet with a host per node and a spare: needs root).
    NodeJoin {
        /// Nodes before the join, one per host.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// The data to fill n1 with first, in GiB.
        #[arg(long, default_value_t = 1.0)]
        gib: f64,
    },
    /// pgBackRest backup and restore throughput through berth (ADR 022, 025) for a database of about a GB on
    /// one node, to an S3 server on the machine, beside pg_basebackup and a tar of the data directory.
    Backup {
        /// Rows of the table filled first, about 228 bytes each (4,800,000: 1.1 GB).
        #[arg(long, default_value_t = 4_800_000)]
        rows: u64,
    },
    /// All four with their defaults, scaled by --scale and --rounds.
    All {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

fn scale_options(scale: f64, updates: usize, profile: bool) -> scale::ScaleOptions {
    let s = scale.clamp(0.001, 1.0);
    scale::ScaleOptions {
        hosts: ((100.0 * s).round() as usize).max(4),
        databases: ((1000.0 * s).round() as usize).max(1),
        updates,
        profile,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.no_build {
        procs::build_binaries()?;
    }
    println!(
        "berth-bench on {} cores; absolute figures are noise on a shared machine, ratios are the result",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // On SIGINT or SIGTERM the benchmark's future is dropped rather than the process exiting at once, so
    // every handle's drop runs: processes are killed, containers and the engine-per-host fleet removed.
    tokio::select! {
        result = run(args.bench) => result,
        signal = interrupted() => bail!("{signal}: stopped, cleaned up"),
    }
}

/// Resolves when SIGINT or SIGTERM arrives; which one.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers a signal kills the process as before; nothing else changes.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Converge { rounds } => converge::run(rounds).await?.print(),
        Bench::Api {
            requests,
            clients,
            profile,
        } => api::run(api::ApiOptions {
            requests,
            clients,
            profile,
        })
        .await?
        .print(),
        Bench::Scale {
            scale,
            updates,
            profile,
        } => scale::run(scale_options(scale, updates, profile))
            .await?
            .print(),
        Bench::Follow {
            clients,
            databases,
            lines,
            interval_ms,
            poll_ms,
        } => follow::run(follow::FollowOptions {
            clients,
            databases,
            lines_per_apply: lines,
            line_interval_ms: interval_ms,
            poll_ms,
        })
        .await?
        .print(),
        Bench::FollowLatency { rounds, poll_ms } => {
            follow_latency::run(follow_latency::FollowLatencyOptions { rounds, poll_ms })
                .await?
                .print()
        }
        Bench::History {
            updates,
            databases,
            lines,
        } => history::run(history::HistoryOptions {
            updates,
            databases,
            lines_per_apply: lines,
        })
        .await?
        .print(),
        Bench::Failover { runs, switchovers } => {
            failover::run(failover::FailoverOptions { runs, switchovers })
                .await?
                .print()
        }
        Bench::ReplicationLag {
            nodes,
            rates,
            seconds,
        } => replication_lag::run(replication_lag::ReplicationLagOptions {
            nodes,
            rates,
            seconds,
        })
        .await?
        .print(),
        Bench::NodeJoin { nodes, gib } => {
            replication_lag::join::run(replication_lag::join::NodeJoinOptions { nodes, gib })
                .await?
                .print()
        }
        Bench::Backup { rows } => backup::run(backup::BackupOptions { rows }).await?.print(),
        Bench::All { rounds, scale } => {
            converge::run(rounds).await?.print();
            api::run(api::ApiOptions {
                requests: ((10000.0 * scale.clamp(0.01, 1.0)) as usize).max(64),
                clients: 64,
                profile: false,
            })
            .await?
            .print();
            scale::run(scale_options(scale, 9, false)).await?.print();
            follow::run(follow::FollowOptions {
                clients: 200,
                databases: 20,
                lines_per_apply: 100,
                line_interval_ms: 50,
                poll_ms: 50,
            })
            .await?
            .print();
        }
    }
    Ok(())
}
