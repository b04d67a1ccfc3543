//! history: thousands of update tasks against simulated hosts, with etcd's db size sampled as they run
//! (ADR 014). Without retention and compaction every task and log line stays and etcd's db grows until
//! its quota; with them the number of keys and the db size level off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::GetOptions;
use serde_json::json;

use crate::api::create_body;
use crate::procs::{Stack, StackOptions, start_hollow};
use crate::stats::Table;
use crate::tasks::{TaskWatch, task_id};

pub struct HistoryOptions {
    pub updates: usize,
    pub databases: usize,
    pub lines_per_apply: u32,
}

/// etcd's sizes and berth's key count at one moment.
struct Sample {
    updates: usize,
    seconds: f64,
    keys: i64,
    db_size: i64,
    in_use: i64,
}

/// How often etcd compacts in this run: faster than deployments' revision mode (every 5 minutes), so a
/// run of a few minutes shows it working.
const COMPACTION: [&str; 2] = [
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=30s",
];
const SWEEP_SECONDS: u64 = 10;

async fn sample(
    client: &mut etcd_client::Client,
    updates: usize,
    started: Instant,
) -> Result<Sample> {
    let status = client.status().await?;
    let keys = client
        .get(
            "/berth/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    Ok(Sample {
        updates,
        seconds: started.elapsed().as_secs_f64(),
        keys,
        db_size: status.db_size(),
        in_use: status.raft_used_db_size(),
    })
}

/// One database's updates, one after the other, each from POST until its task ended.
async fn update_loop(
    stack: Arc<Stack>,
    watch: Arc<TaskWatch>,
    db: String,
    host: String,
    next: Arc<AtomicUsize>,
    total: usize,
) -> Result<()> {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return Ok(());
        }
        let mut body = create_body(&db, &host, &host);
        body["spec"]["services"][0]["config"]["llm_model"] = json!(format!("claude-{i}"));
        let resp = stack
            .post(
                &format!("/v1/databases/{db}"),
                &json!({"spec": body["spec"]}),
            )
            .await?;
        let task = task_id(&resp)?;
        watch
            .wait_all(std::slice::from_ref(&task), Duration::from_secs(120))
            .await?;
    }
}

pub async fn run(options: HistoryOptions) -> Result<Table> {
    let stack = Arc::new(
        Stack::start(StackOptions {
            reconcile: true,
            etcd_args: COMPACTION.to_vec(),
            control_plane_args: vec![format!("--retention-sweep-seconds={SWEEP_SECONDS}")],
            ..Default::default()
        })
        .await?,
    );
    let hosts = 4;
    let _hollow = start_hollow(&stack, "history", hosts, options.lines_per_apply, 0)?;
    stack
        .wait_hosts_healthy(hosts, Duration::from_secs(60))
        .await?;
    let watch = Arc::new(TaskWatch::start(&stack.etcd.endpoint(), "/berth").await?);
    let mut client = etcd_client::Client::connect([stack.etcd.endpoint()], None).await?;

    let mut created = Vec::new();
    let mut dbs = Vec::new();
    for i in 0..options.databases {
        let (db, host) = (format!("history-{i}"), format!("history-{}", i % hosts + 1));
        created.push(task_id(
            &stack
                .post("/v1/databases", &create_body(&db, &host, &host))
                .await?,
        )?);
        dbs.push((db, host));
    }
    watch.wait_all(&created, Duration::from_secs(300)).await?;

    let started = Instant::now();
    let mut samples = vec![sample(&mut client, 0, started).await?];
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (db, host) in dbs {
        workers.push(tokio::spawn(update_loop(
            stack.clone(),
            watch.clone(),
            db,
            host,
            next.clone(),
            options.updates,
        )));
    }
    let step = (options.updates / 10).max(1);
    let mut reported = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = next.load(Ordering::Relaxed).min(options.updates);
        if done >= reported + step {
            reported = done - done % step;
            samples.push(sample(&mut client, reported, started).await?);
        }
    }
    for w in workers {
        w.await??;
    }
    // One more sweep and compaction after the last update, then a defragmentation.
    tokio::time::sleep(Duration::from_secs(SWEEP_SECONDS + 35)).await;
    let settled = sample(&mut client, options.updates, started).await?;
    client.defragment().await?;
    let defragmented = sample(&mut client, options.updates, started).await?;

    let mut table = Table::new(
        &format!(
            "history: {} updates over {} databases, {} log lines per simulated apply; retention 100 tasks per \
             database, swept every {SWEEP_SECONDS} s; etcd {} {}",
            options.updates,
            options.databases,
            options.lines_per_apply,
            COMPACTION[0],
            COMPACTION[1]
        ),
        &[
            "updates done",
            "seconds",
            "berth keys",
            "etcd db size (MiB)",
            "in use (MiB)",
        ],
    );
    let mib = |b: i64| format!("{:.2}", b as f64 / (1024.0 * 1024.0));
    let mut row = |label: String, s: &Sample| {
        table.row(vec![
            label,
            format!("{:.0}", s.seconds),
            s.keys.to_string(),
            mib(s.db_size),
            mib(s.in_use),
        ]);
    };
    for s in &samples {
        row(s.updates.to_string(), s);
    }
    row("after a sweep and a compaction".into(), &settled);
    row("after defragmentation".into(), &defragmented);
    table.note(
        "db size is the file etcd's backend occupies, in use the pages holding live revisions; compaction frees \
         pages that later writes reuse, a defragmentation gives them back to the filesystem"
            .into(),
    );
    Ok(table)
}
