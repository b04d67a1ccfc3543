//! `backup`: pgBackRest backup and restore throughput through berth (ADR 022, ADR 025), beside
//! `pg_basebackup` and a plain copy of the data directory of the same database, on the same machine, in
//! one run.
//!
//! One host and one node of one instance (a replica would double the disk and clone after a restore, which
//! is not what is measured); the repository is the e2e tests' S3 server (s3s-fs over HTTPS, [`s3`]) on the
//! machine. Table `big` is filled to about a gigabyte with hex text, which gzip shrinks to about half as it
//! would real data, rather than a repeated character that it shrinks to nothing (which would flatter a
//! compressing backup). Then, after a checkpoint and once the fill's WAL is archived, so that no archiving
//! competes with what is measured:
//!
//! 1. the comparisons, each in the primary's container through `docker exec` as postgres over the local
//!    socket: `tar` of the data directory (the floor: read and write it once), `pg_basebackup -X stream
//!    -c fast` to a plain directory, and the same to gzip'd tar files (`-Ft -z`, gzip's default level, 6,
//!    which is also pgBackRest's default compression); each output's size is read, then it is removed;
//! 2. a full backup through the API (`POST .../nodes/n1/backups {"type":"full"}`), from the POST until the
//!    task completed (an etcd watch), and pgBackRest's own span (its `timestamp.start`/`stop`, whole
//!    seconds, from the API's list of backups); what it added to the bucket;
//! 3. an incremental backup after appending a few rows, likewise;
//! 4. a restore in place to the latest point (`POST .../restore`, the repository by id): until a probe first
//!    wrote to the restored primary (the node available again), Patroni's bootstrap (pgBackRest's restore,
//!    the WAL replay and the promotion) as the task log shows it, and until the task completed (the full
//!    backup of the new timeline follows as a `node_backup` task of its own, ADR 025); the rows are checked.
//!
//! Throughput is `pg_database_size` over the time, in MB/s (10^6 bytes). The outputs of every path go to
//! the same disk; the database's files are in the page cache for all of them (the machine has the memory).

mod node;
mod s3;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::stats::Table;
use node::{Node, REPOSITORY};
use s3::S3Server;

/// Rows added between the full and the incremental backup.
const CHANGE_ROWS: u64 = 10_000;
/// The data directory in berth's Postgres containers.
const PGDATA: &str = "/var/lib/postgresql/data";
/// How long the fill's WAL may take to reach the repository.
const ARCHIVE_LIMIT: Duration = Duration::from_secs(900);

pub struct BackupOptions {
    /// Rows of `big` (about 228 bytes each on disk).
    pub rows: u64,
}

/// One way of copying the database, timed.
struct Copy {
    what: String,
    took: Duration,
    /// Bytes it wrote, where known.
    output_bytes: Option<u64>,
}

pub struct BackupReport {
    options: BackupOptions,
    database_bytes: u64,
    table_bytes: u64,
    filled_in: Duration,
    archived_in: Duration,
    copies: Vec<Copy>,
    full: Operation,
    incr: Operation,
    restore: Operation,
    /// From the restore's POST until the probe's first write to the restored primary.
    first_write: Duration,
    /// The full and incremental backups' entries in the API's list.
    full_entry: serde_json::Value,
    incr_entry: serde_json::Value,
    /// What each backup added to the bucket (its files, and any WAL archived meanwhile).
    full_added: u64,
    incr_added: u64,
    /// From the restore's POST: the bootstrap's first and next task log lines.
    bootstrap: Option<(f64, f64)>,
    bucket_bytes: u64,
    load: (String, String),
}

/// An operation through the API, timed.
struct Operation {
    took: Duration,
    log: Vec<String>,
}

pub async fn run(options: BackupOptions) -> Result<BackupReport> {
    if options.rows == 0 {
        bail!("--rows must be at least 1");
    }
    let load_before = loadavg();
    let s3 = S3Server::start()?;
    let node = Node::start(&s3).await?;
    eprintln!("database {} up in {}", node.id, node.container);
    let result = measure(&node, &s3, options).await;
    if result.is_err() {
        eprintln!("{}\n{}", node.cluster.stack.log_tails(20), s3.log());
    }
    let mut report = result?;
    report.load = (load_before, loadavg());
    Ok(report)
}

async fn measure(node: &Node, s3: &S3Server, options: BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    node.psql(&format!(
        "CREATE TABLE big AS SELECT g, md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd') \
         || md5(g || 'e') || md5(g || 'f') AS pad FROM generate_series(1, {}) g",
        options.rows
    ))
    .await?;
    node.psql("CREATE TABLE probe (at timestamptz DEFAULT clock_timestamp())")
        .await?;
    let filled_in = started.elapsed();
    let sizes = node
        .psql("SELECT pg_database_size('app') || ' ' || pg_total_relation_size('big')")
        .await?;
    let (database_bytes, table_bytes) = match sizes.split_once(' ') {
        Some((d, t)) => (d.parse()?, t.parse()?),
        None => bail!("sizes: {sizes}"),
    };
    eprintln!(
        "{} rows, database {:.2} GB, filled in {:.1} s",
        options.rows,
        database_bytes as f64 / 1e9,
        filled_in.as_secs_f64()
    );
    let archived_in = settle(node).await?;
    eprintln!(
        "checkpointed and the fill's WAL archived {:.1} s later",
        archived_in.as_secs_f64()
    );

    let copies = copies(node).await?;

    let path = format!("/v1/databases/{}/nodes/n1/backups", node.id);
    let before = s3.stored_bytes();
    let full = operation(node, &path, &json!({"type": "full"})).await?;
    let full_added = s3.stored_bytes().saturating_sub(before);
    eprintln!("full backup: {:.1} s", full.took.as_secs_f64());
    let full_entry = node
        .backups()
        .await?
        .last()
        .cloned()
        .context("no backup listed")?;

    let next = options.rows + 1;
    node.psql(&format!(
        "INSERT INTO big SELECT g, md5(g || 'a') FROM generate_series({next}, {}) g",
        options.rows + CHANGE_ROWS
    ))
    .await?;
    node.psql("CHECKPOINT").await?;
    let before = s3.stored_bytes();
    let incr = operation(node, &path, &json!({"type": "incr"})).await?;
    let incr_added = s3.stored_bytes().saturating_sub(before);
    eprintln!("incremental backup: {:.1} s", incr.took.as_secs_f64());
    let incr_entry = node
        .backups()
        .await?
        .last()
        .cloned()
        .context("no backup listed")?;

    let (restore, first_write) = restore(node).await?;
    let bootstrap = bootstrap_span(&restore.log);
    let want = (options.rows + CHANGE_ROWS).to_string();
    let count = node.psql("SELECT count(*) FROM big").await?;
    if count != want {
        bail!("the restored database holds {count} rows of big, not {want}");
    }
    eprintln!(
        "restore: {:.1} s, first write after {:.1} s, {count} rows",
        restore.took.as_secs_f64(),
        first_write.as_secs_f64()
    );
    Ok(BackupReport {
        options,
        database_bytes,
        table_bytes,
        filled_in,
        archived_in,
        copies,
        full,
        incr,
        restore,
        first_write,
        full_entry,
        incr_entry,
        full_added,
        incr_added,
        bootstrap,
        bucket_bytes: s3.stored_bytes(),
        load: Default::default(),
    })
}

/// A checkpoint and a WAL switch, then waits until no segment waits for the archiver (no `.ready` file in
/// `pg_wal/archive_status`): the fill's gigabyte of WAL is archived segment by segment, each a compressing
/// `archive-push`, and a backup started before would wait for the backlog. How long that took.
async fn settle(node: &Node) -> Result<Duration> {
    let started = Instant::now();
    node.psql("CHECKPOINT").await?;
    node.psql("SELECT pg_switch_wal()").await?;
    let waiting = "SELECT count(*) || ' ' || (SELECT coalesce(last_archived_wal, '') || ' ' || failed_count \
                   FROM pg_stat_archiver) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'";
    loop {
        let state = node.psql(waiting).await?;
        if state.starts_with("0 ") {
            return Ok(started.elapsed());
        }
        if started.elapsed() > ARCHIVE_LIMIT {
            bail!(
                "WAL not archived in {ARCHIVE_LIMIT:?}: segments waiting, last archived, failures: {state}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The comparisons, in the primary's container; each output removed once measured.
async fn copies(node: &Node) -> Result<Vec<Copy>> {
    let base = "pg_basebackup -h /var/run/postgresql -U postgres -X stream -c fast";
    let runs = [
        (
            "floor: `tar -cf` of the data directory",
            format!("tar -cf /tmp/bench-copy.tar -C {PGDATA} ."),
            "/tmp/bench-copy.tar",
        ),
        (
            "`pg_basebackup -X stream -c fast`, plain",
            format!("{base} -D /tmp/bench-bb"),
            "/tmp/bench-bb",
        ),
        (
            "`pg_basebackup -X stream -c fast -Ft -z` (gzip 6)",
            format!("{base} -Ft -z -D /tmp/bench-bbz"),
            "/tmp/bench-bbz",
        ),
    ];
    let mut out = Vec::new();
    for (what, script, output) in runs {
        let (took, _) = node.sh(&script, &[0, 1]).await?;
        let (_, du) = node.sh(&format!("du -sb {output}"), &[0]).await?;
        node.sh(&format!("rm -rf {output}"), &[0]).await?;
        let output_bytes = du.split_whitespace().next().and_then(|b| b.parse().ok());
        eprintln!("{what}: {:.1} s", took.as_secs_f64());
        out.push(Copy {
            what: what.to_string(),
            took,
            output_bytes,
        });
    }
    Ok(out)
}

/// A backup operation through the API, with its log and pgBackRest's own time from it.
async fn operation(node: &Node, path: &str, body: &serde_json::Value) -> Result<Operation> {
    let posted_at = chrono::Utc::now();
    let (task, took) = node.operation(path, body).await?;
    let log = node.cluster.task_log(&node.id, &task, posted_at).await?;
    Ok(Operation { took, log })
}

/// A restore in place to the latest point, with a probe writing to the node's primary every half second:
/// the operation, and how long after the POST the probe's first write succeeded after the old primary went.
async fn restore(node: &Node) -> Result<(Operation, Duration)> {
    let path = format!("/v1/databases/{}/restore", node.id);
    let body = json!({"restore_config": {
        "source_database_id": node.id, "source_node_name": "n1",
        "source_database_name": "app", "repository": REPOSITORY, "restore_options": {}}});
    let container = node.container.clone();
    let started = Instant::now();
    let probe = tokio::spawn(async move {
        let mut gone = false;
        loop {
            let c = container.clone();
            let ok = tokio::task::spawn_blocking(move || {
                test_support::psql::psql(None, &c, "app", "INSERT INTO probe DEFAULT VALUES").0
            })
            .await
            .unwrap_or(false);
            match (ok, gone) {
                (false, _) => gone = true,
                (true, true) => return started.elapsed(),
                (true, false) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let posted_at = chrono::Utc::now();
    let answer = node.operation(&path, &body).await;
    let (task, took) = match answer {
        Ok(a) => a,
        Err(e) => {
            probe.abort();
            return Err(e);
        }
    };
    let primary = node.primary().await?;
    if primary != node.container {
        probe.abort();
        bail!(
            "the restored primary is {primary}, not {}: the probe wrote to a name that went",
            node.container
        );
    }
    let first_write = match tokio::time::timeout(Duration::from_secs(300), probe).await {
        Ok(w) => w?,
        Err(_) => bail!("no write reached the restored primary within 5 minutes of the task's end"),
    };
    let log = node.cluster.task_log(&node.id, &task, posted_at).await?;
    let restore = Operation { took, log };
    Ok((restore, first_write))
}

/// The offsets (s) of the task log line where Patroni reports its custom bootstrap running and of the line
/// after it: the restore, the replay and the promotion lie between (the reconciler logs the next step once
/// the node has a primary again).
fn bootstrap_span(log: &[String]) -> Option<(f64, f64)> {
    let offset = |l: &String| l.strip_prefix('+')?.split_once("s ")?.0.parse::<f64>().ok();
    let at = log
        .iter()
        .position(|l| l.contains("running custom bootstrap script"))?;
    Some((offset(&log[at])?, offset(log.get(at + 1)?)?))
}

/// The machine's 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

impl BackupReport {
    fn mb_per_s(&self, took: Duration) -> String {
        format!(
            "{:.0}",
            self.database_bytes as f64 / 1e6 / took.as_secs_f64()
        )
    }

    pub fn print(&self) {
        let basebackup = self
            .copies
            .iter()
            .find(|c| c.what.contains("plain"))
            .map(|c| c.took);
        let ratio = |took: Duration| {
            basebackup.map_or("n/a".into(), |b| {
                format!("{:.2}", took.as_secs_f64() / b.as_secs_f64())
            })
        };
        let mb =
            |bytes: Option<u64>| bytes.map_or("n/a".into(), |b| format!("{:.0}", b as f64 / 1e6));
        let mut table = Table::new(
            &format!(
                "backup and restore: a database of {:.2} GB on one node, pgBackRest through berth beside pg_basebackup",
                self.database_bytes as f64 / 1e9
            ),
            &[
                "path",
                "seconds",
                "MB/s of the database",
                "time / pg_basebackup",
                "written (MB)",
            ],
        );
        for c in &self.copies {
            table.row(vec![
                c.what.clone(),
                format!("{:.1}", c.took.as_secs_f64()),
                self.mb_per_s(c.took),
                ratio(c.took),
                mb(c.output_bytes),
            ]);
        }
        let stored = |e: &serde_json::Value| e["repository_size_bytes"].as_u64();
        let span = |e: &serde_json::Value| -> String {
            let at = |k: &str| {
                e[k].as_str()
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            };
            match (at("started_at"), at("stopped_at")) {
                (Some(a), Some(b)) => format!("{}", (b - a).num_seconds()),
                _ => "n/a".into(),
            }
        };
        for (what, op, entry, added) in [
            (
                "pgBackRest full backup",
                &self.full,
                &self.full_entry,
                self.full_added,
            ),
            (
                "pgBackRest incremental backup after appending rows",
                &self.incr,
                &self.incr_entry,
                self.incr_added,
            ),
        ] {
            table.row(vec![
                format!(
                    "{what} (POST to task completed; pgBackRest's own start to stop {} s)",
                    span(entry)
                ),
                format!("{:.1}", op.took.as_secs_f64()),
                self.mb_per_s(op.took),
                ratio(op.took),
                mb(Some(added)),
            ]);
        }
        table.row(vec![
            "restore in place to the latest point: POST to the first write accepted by the restored primary"
                .into(),
            format!("{:.1}", self.first_write.as_secs_f64()),
            self.mb_per_s(self.first_write),
            ratio(self.first_write),
            String::new(),
        ]);
        if let Some((from, to)) = self.bootstrap {
            let took = Duration::from_secs_f64((to - from).max(0.001));
            table.row(vec![
                format!(
                    "restore: Patroni's bootstrap (pgBackRest restore, WAL replay, promotion), task log +{from:.1} s \
                     to +{to:.1} s"
                ),
                format!("{:.1}", took.as_secs_f64()),
                self.mb_per_s(took),
                ratio(took),
                String::new(),
            ]);
        }
        table.row(vec![
            "restore: POST to task completed (the full backup that follows is a task of its own)"
                .into(),
            format!("{:.1}", self.restore.took.as_secs_f64()),
            self.mb_per_s(self.restore.took),
            ratio(self.restore.took),
            String::new(),
        ]);
        table.note(format!(
            "database `app`: {:.2} GB (`pg_database_size`), table big {:.2} GB with {} rows of 192 hex characters, \
             filled by one CREATE TABLE AS in {:.1} s; its WAL archived {:.1} s after the fill (a checkpoint, \
             then waiting until no segment was `.ready`), before anything was measured; the tar includes \
             pg_wal (the segments kept for `max_wal_size`), pg_basebackup only the WAL of its own span",
            self.database_bytes as f64 / 1e9,
            self.table_bytes as f64 / 1e9,
            self.options.rows,
            self.filled_in.as_secs_f64(),
            self.archived_in.as_secs_f64()
        ));
        table.note(format!(
            "pgBackRest's list: the full backup {} MB of database, `repository_size_bytes` {} MB; the incremental's \
             set ({CHANGE_ROWS} rows appended to big; the set counts the full it builds on) {} MB; `written` for the backups is what the bucket grew by \
             during each (its files and any WAL archived meanwhile); at the end the bucket holds {:.0} MB \
             (three full backups, the incremental and the archived WAL)",
            mb(self.full_entry["database_size_bytes"].as_u64()),
            mb(stored(&self.full_entry)),
            mb(stored(&self.incr_entry)),
            self.bucket_bytes as f64 / 1e6
        ));
        table.note(
            "the comparisons ran in the primary's container through `docker exec` (its start-up included), as \
             postgres over the local socket, writing to the container's /tmp on the same disk; \
             `written` is `du -sb` of their output"
                .into(),
        );
        table.note(format!(
            "load average {} before, {} after",
            self.load.0, self.load.1
        ));
        table.print();
        for (what, op) in [
            ("full backup", &self.full),
            ("incremental backup", &self.incr),
            ("restore", &self.restore),
        ] {
            println!("The {what}'s task log (offsets from the POST):\n");
            println!("```\n{}\n```\n", op.log.join("\n"));
        }
    }
}
