//! `node-join`: how long adding a node to a live replicated database takes when the database holds about a
//! gigabyte (ADR 020: the new node is copied from its `source_node` by pglogical's structure and data copy,
//! then subscribes both ways with every node).
//!
//! The fleet has one host more than the database's nodes. Table `bulk` (a bigint key and 256 characters of
//! hex, about 330 bytes a row with its index) is filled on n1 with `generate_series` in transactions of
//! [`BATCH`] rows, and the run waits until every node holds the last row. Then the spec gets one more node,
//! on the spare host, with `source_node: n1`; the time runs from that update's POST to its task `completed`
//! (seen by a watch on etcd), and to the new node holding every row.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::db::{Db, node_name};
use super::{FLEET_NAME, FLEET_SUBNET, loadavg};
use crate::engine_fleet::EngineFleet;
use crate::stats::Table;

/// Rows per transaction of the fill: pglogical decodes and applies each transaction whole, so a few hundred
/// thousand rows keep each one's spill moderate.
const BATCH: u64 = 250_000;
/// Rows per GiB of `bulk`, from its measured size (about 330 bytes a row, heap and index).
const ROWS_PER_GIB: f64 = 3_250_000.0;

pub struct NodeJoinOptions {
    /// Nodes before the join (1..=15), one per host.
    pub nodes: usize,
    /// The size to fill, in GiB.
    pub gib: f64,
}

pub struct NodeJoinReport {
    options: NodeJoinOptions,
    rows: u64,
    /// `pg_total_relation_size('bulk')` and `pg_database_size` on the source, in bytes.
    table_bytes: u64,
    database_bytes: u64,
    filled_in: Duration,
    /// From the fill's last commit until every node held the last row.
    caught_up_in: Duration,
    task_in: Duration,
    rows_in: Duration,
    log: Vec<String>,
    load: (String, String),
}

pub async fn run(options: NodeJoinOptions) -> Result<NodeJoinReport> {
    if !(1..=15).contains(&options.nodes) || options.gib <= 0.0 {
        bail!("--nodes is 1..=15 and --gib above 0");
    }
    let fleet = EngineFleet::up(FLEET_NAME, options.nodes + 1, FLEET_SUBNET)?;
    let load_before = loadavg();
    let mut db = Db::start(&fleet, options.nodes).await?;
    eprintln!(
        "{} nodes created in {:.1} s",
        options.nodes,
        db.created_in.as_secs_f64()
    );
    db.psql(
        0,
        "CREATE TABLE bulk (id bigint PRIMARY KEY, pad text NOT NULL)",
    )
    .await?;
    let exists = "SELECT to_regclass('public.bulk') IS NOT NULL";
    for n in 1..options.nodes {
        db.wait_for_value(n, exists, "t").await?;
    }
    let rows = ((options.gib * ROWS_PER_GIB) as u64).max(1);
    let started = Instant::now();
    let mut from = 1;
    while from <= rows {
        let to = (from + BATCH - 1).min(rows);
        db.psql(
            0,
            &format!(
                "INSERT INTO bulk SELECT g, repeat(md5(g::text), 8) FROM generate_series({from}, {to}) g"
            ),
        )
        .await?;
        from = to + 1;
    }
    let filled_in = started.elapsed();
    let filled = Instant::now();
    for n in 1..options.nodes {
        wait_for_row(&db, n, rows).await?;
    }
    let caught_up_in = filled.elapsed();
    let sizes = db
        .psql(
            0,
            "SELECT pg_total_relation_size('bulk') || ' ' || pg_database_size('app')",
        )
        .await?;
    let (table_bytes, database_bytes) = match sizes.split_once(' ') {
        Some((t, d)) => (t.parse()?, d.parse()?),
        None => bail!("sizes: {sizes}"),
    };
    eprintln!(
        "{rows} rows, {:.2} GiB in bulk, filled in {:.1} s, on every node {:.1} s later",
        table_bytes as f64 / GIB,
        filled_in.as_secs_f64(),
        caught_up_in.as_secs_f64()
    );

    let (asked, asked_at) = (Instant::now(), chrono::Utc::now());
    let task = db.add_node("n1").await?;
    let task_in = asked.elapsed();
    let new = options.nodes;
    wait_for_row(&db, new, rows).await?;
    let rows_in = asked.elapsed();
    let count = db.psql(new, "SELECT count(*) FROM bulk").await?;
    if count != rows.to_string() {
        bail!("{} holds {count} rows of {rows}", node_name(new));
    }
    eprintln!(
        "{} added: task completed after {:.1} s, every row there after {:.1} s",
        node_name(new),
        task_in.as_secs_f64(),
        rows_in.as_secs_f64()
    );
    let log = db.cluster.task_log(&db.id, &task, asked_at).await?;
    Ok(NodeJoinReport {
        options,
        rows,
        table_bytes,
        database_bytes,
        filled_in,
        caught_up_in,
        task_in,
        rows_in,
        log,
        load: (load_before, loadavg()),
    })
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// How long a node may take to receive the fill or the copy: both grow with the data, and apply is slow on
/// a loaded machine.
const ROWS_LIMIT: Duration = Duration::from_secs(3600);

/// Waits until node `n` holds row `id` (the fill's last; rows arrive in commit order), printing the
/// highest id there every half minute.
async fn wait_for_row(db: &Db<'_>, n: usize, id: u64) -> Result<()> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let max = db
            .psql(n, "SELECT coalesce(max(id), 0) FROM bulk")
            .await
            .unwrap_or_else(|e| e.to_string());
        if max == id.to_string() {
            return Ok(());
        }
        if reported.elapsed() > Duration::from_secs(30) {
            let subscriptions = db
                .psql(
                    n,
                    "SELECT string_agg(subscription_name || ' ' || status, ', ') \
                     FROM pglogical.show_subscription_status()",
                )
                .await
                .unwrap_or_else(|e| e.to_string());
            eprintln!(
                "{} after {:.0} s: highest id {max} of {id}; subscriptions: {subscriptions}",
                node_name(n),
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if started.elapsed() > ROWS_LIMIT {
            bail!(
                "{} did not get row {id} within {ROWS_LIMIT:?}",
                node_name(n)
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

impl NodeJoinReport {
    pub fn print(&self) {
        let mut table = Table::new(
            "node join: a node added to a live database, copied from n1 (source_node)",
            &[
                "nodes before",
                "rows",
                "bulk (GiB)",
                "database (GiB)",
                "update's task completed (s)",
                "every row on the new node (s)",
                "copy rate (MiB/s of the database)",
            ],
        );
        table.row(vec![
            self.options.nodes.to_string(),
            self.rows.to_string(),
            format!("{:.2}", self.table_bytes as f64 / GIB),
            format!("{:.2}", self.database_bytes as f64 / GIB),
            format!("{:.1}", self.task_in.as_secs_f64()),
            format!("{:.1}", self.rows_in.as_secs_f64()),
            format!(
                "{:.0}",
                self.database_bytes as f64 / 1024.0 / 1024.0 / self.task_in.as_secs_f64()
            ),
        ]);
        table.note(format!(
            "the fill ({} rows in transactions of {BATCH}) took {:.1} s on n1; the other nodes held its last row \
             {:.1} s after its last commit",
            self.rows,
            self.filled_in.as_secs_f64(),
            self.caught_up_in.as_secs_f64()
        ));
        table.note(format!(
            "load average {} before, {} after",
            self.load.0, self.load.1
        ));
        table.print();
        println!("The update's task log (offsets from the POST):\n");
        println!("```\n{}\n```\n", self.log.join("\n"));
    }
}
