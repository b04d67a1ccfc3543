//! `replication-lag`: how long after its commit on one node a row is visible on the other nodes of a database
//! (ADR 019: pglogical between the nodes), under a steady write load, at several write rates in one run.
//!
//! One engine-per-host fleet with a host per node; database `app` with one node per host, one instance each,
//! created through the API. Table `lag` is created on n1 (the DDL replicates) with a `BEFORE INSERT` trigger
//! that stamps `applied_at = clock_timestamp()`, enabled `ALWAYS` so that it also fires in pglogical's apply
//! worker (which runs as `session_replication_role = replica`). A writer sends single-row INSERTs to one psql
//! session on n1 at a fixed rate; each is its own transaction.
//!
//! A row's lag on a subscriber is `applied_at` there less its commit time on n1. The commit time is
//! `pg_xact_commit_timestamp(xmin)` read on the subscriber: with `track_commit_timestamp = on` Postgres records
//! a replicated transaction's commit under the origin's commit timestamp (the replication origin's session
//! timestamp, which pglogical sets from the origin's commit; `last_update_wins` relies on it), and the run
//! checks that on a marker row. The hosts are network namespaces of one machine, so both stamps come from one
//! clock. The lag so measured runs from n1's commit record (its WAL flush, which a client waits for, is inside
//! it) to the apply's insert on the subscriber, which commits right after: what a reader on that node sees, to
//! within the apply's own commit. Polling-free: every row is a sample, read back after the load.

mod db;
pub mod join;

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::engine_fleet::EngineFleet;
use crate::stats::{Table, fmt_opt, percentile};
use db::{Db, node_name};

/// The engine-per-host fleet's name and subnet index (10.213.5.0/24): the dev fleet has 0, the e2e tests 1,
/// converge 2 and failover 4, so this one can run beside any of them.
const FLEET_NAME: &str = "replag";
const FLEET_SUBNET: u8 = 5;

/// The rows of each rate get ids from `rate index x ID_SPAN` on.
const ID_SPAN: u64 = 100_000_000;
/// How long the first rate's load runs unmeasured first (rows marked rate 0).
const WARM_UP: Duration = Duration::from_secs(5);

pub struct ReplicationLagOptions {
    /// Nodes (2..=16), one per host.
    pub nodes: usize,
    /// Write rates, rows per second, measured one after the other.
    pub rates: Vec<u32>,
    /// How long each rate's load runs.
    pub seconds: u64,
}

/// One rate's figures on one subscriber.
struct Row {
    rate: u32,
    achieved: f64,
    node: String,
    /// Per-row lag in milliseconds.
    lag_ms: Vec<f64>,
}

pub struct ReplicationLagReport {
    options: ReplicationLagOptions,
    rows: Vec<Row>,
    created_in: Duration,
    load: (String, String),
}

pub async fn run(options: ReplicationLagOptions) -> Result<ReplicationLagReport> {
    if !(2..=16).contains(&options.nodes) || options.rates.contains(&0) {
        bail!("--nodes is 2..=16 and every rate at least 1 a second");
    }
    let fleet = EngineFleet::up(FLEET_NAME, options.nodes, FLEET_SUBNET)?;
    let load_before = loadavg();
    let db = Db::start(&fleet, options.nodes).await?;
    eprintln!(
        "{} nodes created and replicating in {:.1} s",
        db.nodes(),
        db.created_in.as_secs_f64()
    );
    prepare(&db).await?;
    let subscribers: Vec<usize> = (1..db.nodes()).collect();
    let first = options.rates[0];
    db.write_steadily(0, first, WARM_UP, |k| insert(ID_SPAN - 1 - k, 0))
        .await?;

    let mut rows = Vec::new();
    for (k, &rate) in options.rates.iter().enumerate() {
        let base = (k as u64 + 1) * ID_SPAN;
        let duration = Duration::from_secs(options.seconds);
        let sent = db
            .write_steadily(0, rate, duration, |j| insert(base + j, rate))
            .await?;
        let achieved = achieved_rate(&db, rate).await?;
        for &s in &subscribers {
            let count = format!("SELECT count(*) FROM lag WHERE rate = {rate}");
            db.wait_for_value(s, &count, &sent.to_string()).await?;
            let lag_ms = lags(&db, s, rate).await?;
            eprintln!(
                "{rate}/s ({achieved:.1}/s achieved) to {}: {} rows, p50 {} ms, p99 {} ms, max {} ms",
                node_name(s),
                lag_ms.len(),
                fmt_opt(percentile(&lag_ms, 50.0), 1),
                fmt_opt(percentile(&lag_ms, 99.0), 1),
                fmt_opt(percentile(&lag_ms, 100.0), 1),
            );
            rows.push(Row {
                rate,
                achieved,
                node: node_name(s),
                lag_ms,
            });
        }
    }
    Ok(ReplicationLagReport {
        created_in: db.created_in,
        options,
        rows,
        load: (load_before, loadavg()),
    })
}

fn insert(id: u64, rate: u32) -> String {
    format!("INSERT INTO lag (id, rate) VALUES ({id}, {rate});")
}

/// Creates the table and its trigger on n1, each statement on its own (ADR 019: a query string is replayed
/// whole), waits until they are on every node, and checks the method on a marker row: the subscribers record
/// it under n1's commit timestamp and stamp their own apply time.
async fn prepare(db: &Db<'_>) -> Result<()> {
    for sql in [
        "CREATE TABLE lag (id bigint PRIMARY KEY, rate int NOT NULL, applied_at timestamptz)",
        "CREATE FUNCTION lag_applied() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END$$",
        "CREATE TRIGGER lag_applied BEFORE INSERT ON lag FOR EACH ROW EXECUTE FUNCTION lag_applied()",
        "ALTER TABLE lag ENABLE ALWAYS TRIGGER lag_applied",
    ] {
        db.psql(0, sql).await?;
    }
    let trigger = "SELECT tgenabled FROM pg_trigger WHERE tgname = 'lag_applied'";
    for s in 1..db.nodes() {
        db.wait_for_value(s, trigger, "A").await?;
    }
    db.psql(0, &insert(0, 0)).await?;
    let stamps = "SELECT pg_xact_commit_timestamp(xmin) || '|' || applied_at FROM lag WHERE id = 0";
    let on_n1 = db.psql(0, stamps).await?;
    let (committed, _) = on_n1.split_once('|').context("n1's stamps")?;
    let check = format!(
        "SELECT pg_xact_commit_timestamp(xmin) = '{committed}'::timestamptz \
         AND applied_at > pg_xact_commit_timestamp(xmin) FROM lag WHERE id = 0"
    );
    for s in 1..db.nodes() {
        db.wait_for_value(s, "SELECT count(*) FROM lag WHERE id = 0", "1")
            .await?;
        if db.psql(s, &check).await? != "t" {
            let there = db.psql(s, stamps).await?;
            let (recorded, applied) = there.split_once('|').context("the stamps")?;
            bail!(
                "{} records the marker row committed at {recorded} and applied at {applied}, n1 committed it \
                 at {committed}: the lag cannot be read from these stamps",
                node_name(s)
            );
        }
    }
    Ok(())
}

/// Rows a second n1 committed at `rate`: the rows less one over the time between the first and last commit.
async fn achieved_rate(db: &Db<'_>, rate: u32) -> Result<f64> {
    let out = db
        .psql(
            0,
            &format!(
                "SELECT count(*) || ' ' || extract(epoch FROM max(c) - min(c)) FROM \
                 (SELECT pg_xact_commit_timestamp(xmin) c FROM lag WHERE rate = {rate}) t"
            ),
        )
        .await?;
    let (count, seconds) = out.split_once(' ').context("the rate")?;
    let (count, seconds): (f64, f64) = (count.parse()?, seconds.parse()?);
    Ok((count - 1.0) / seconds)
}

/// Every row's lag on subscriber `s`, in milliseconds (read as whole microseconds).
async fn lags(db: &Db<'_>, s: usize, rate: u32) -> Result<Vec<f64>> {
    let out = db
        .psql(
            s,
            &format!(
                "SELECT round(extract(epoch FROM applied_at - pg_xact_commit_timestamp(xmin)) * 1e6)::bigint \
                 FROM lag WHERE rate = {rate}"
            ),
        )
        .await?;
    out.lines()
        .map(|l| Ok(l.trim().parse::<f64>()? / 1000.0))
        .collect()
}

/// The machine's 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

impl ReplicationLagReport {
    pub fn print(&self) {
        let mut table = Table::new(
            "replication lag: ms from a row's commit on n1 to its apply on another node",
            &[
                "write rate (rows/s)",
                "achieved (rows/s)",
                "node",
                "rows",
                "p50",
                "p99",
                "max",
            ],
        );
        for r in &self.rows {
            table.row(vec![
                r.rate.to_string(),
                format!("{:.1}", r.achieved),
                r.node.clone(),
                r.lag_ms.len().to_string(),
                fmt_opt(percentile(&r.lag_ms, 50.0), 1),
                fmt_opt(percentile(&r.lag_ms, 99.0), 1),
                fmt_opt(percentile(&r.lag_ms, 100.0), 1),
            ]);
        }
        table.note(format!(
            "{} nodes on as many hosts with engines of their own, one instance each; {} s of single-row INSERTs \
             (one transaction each) on n1 per rate, after {} s unmeasured; p50 and p99 by nearest rank",
            self.options.nodes,
            self.options.seconds,
            WARM_UP.as_secs()
        ));
        table.note(format!(
            "the database was created and replicating {:.1} s after the POST",
            self.created_in.as_secs_f64()
        ));
        table.note(format!(
            "load average {} before, {} after",
            self.load.0, self.load.1
        ));
        table.print();
    }
}
