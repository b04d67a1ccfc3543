//! follow: many clients following task logs with the cursor while the tasks run. Simulated agents stream apply
//! log lines stamped with their emit time, so each client measures how long a line took to reach it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hollow_agent::EMITTED_AT_FIELD;

use crate::api::create_body;
use crate::procs::{Stack, StackOptions, start_hollow};
use crate::stats::{Table, fmt_opt, percentile};
use crate::tasks::task_id;

pub struct FollowOptions {
    pub clients: usize,
    pub databases: usize,
    pub lines_per_apply: u32,
    pub line_interval_ms: u64,
    /// How long a client waits before asking again after an empty page.
    pub poll_ms: u64,
}

#[derive(Default)]
struct ClientStats {
    entries: usize,
    requests: usize,
    delays_ms: Vec<f64>,
}

fn unix_micros() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i128
}

async fn follow(
    stack: Arc<Stack>,
    db: String,
    task: String,
    poll: Duration,
) -> Result<ClientStats> {
    let mut stats = ClientStats::default();
    let mut cursor: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut path = format!("/v1/databases/{db}/tasks/{task}/log?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&after_entry_id={c}"));
        }
        let page = stack.get(&path).await?;
        stats.requests += 1;
        let seen = unix_micros();
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            stats.entries += 1;
            let emitted = e["fields"][EMITTED_AT_FIELD]
                .as_str()
                .and_then(|s| s.parse::<i128>().ok());
            if let Some(emitted) = emitted {
                stats.delays_ms.push((seen - emitted) as f64 / 1000.0);
            }
        }
        if let Some(last) = page["last_entry_id"].as_str() {
            cursor = Some(last.to_string());
        }
        let ended = matches!(
            page["task_status"].as_str(),
            Some("completed" | "failed" | "canceled")
        );
        // The status is read before the entries, so an empty page of an ended task is the end of its log.
        if entries.is_empty() && ended {
            return Ok(stats);
        }
        if Instant::now() > deadline {
            anyhow::bail!("task {task} of {db} still running after 300 s");
        }
        if entries.is_empty() {
            tokio::time::sleep(poll).await;
        }
    }
}

pub async fn run(options: FollowOptions) -> Result<Table> {
    let stack = Arc::new(
        Stack::start(StackOptions {
            reconcile: true,
            ..Default::default()
        })
        .await?,
    );
    let hosts = 4;
    let _hollow = start_hollow(
        &stack,
        "follow",
        hosts,
        options.lines_per_apply,
        options.line_interval_ms,
    )?;
    stack
        .wait_hosts_healthy(hosts, Duration::from_secs(60))
        .await?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..options.databases {
        let host = format!("follow-{}", i % hosts + 1);
        let db = format!("follow-{i}");
        let resp = stack
            .post("/v1/databases", &create_body(&db, &host, &host))
            .await?;
        let task = task_id(&resp)?;
        tasks.push((db, task));
    }
    let poll = Duration::from_millis(options.poll_ms);
    let mut clients = Vec::new();
    for c in 0..options.clients {
        let (db, task) = tasks[c % tasks.len()].clone();
        clients.push(tokio::spawn(follow(stack.clone(), db, task, poll)));
    }
    let mut total = ClientStats::default();
    for c in clients {
        let s = c.await??;
        total.entries += s.entries;
        total.requests += s.requests;
        total.delays_ms.extend(s.delays_ms);
    }
    let wall = started.elapsed();
    let failed = {
        let mut n = 0;
        for (db, task) in &tasks {
            let t = stack
                .get(&format!("/v1/databases/{db}/tasks/{task}"))
                .await?;
            if t["status"] != "completed" {
                n += 1;
            }
        }
        n
    };

    let mut table = Table::new(
        &format!(
            "follow: {} clients on {} running tasks, {} lines per simulated apply every {} ms",
            options.clients, options.databases, options.lines_per_apply, options.line_interval_ms
        ),
        &["measure", "value"],
    );
    table.row(vec![
        "log entries served per second (all clients)".into(),
        format!("{:.0}", total.entries as f64 / wall.as_secs_f64()),
    ]);
    table.row(vec![
        "log requests per second".into(),
        format!("{:.0}", total.requests as f64 / wall.as_secs_f64()),
    ]);
    table.row(vec![
        "delay agent emit -> client sees it, p50".into(),
        fmt_opt(percentile(&total.delays_ms, 50.0), 1) + " ms",
    ]);
    table.row(vec![
        "delay agent emit -> client sees it, p99".into(),
        fmt_opt(percentile(&total.delays_ms, 99.0), 1) + " ms",
    ]);
    table.row(vec![
        "entries served / timed lines".into(),
        format!("{} / {}", total.entries, total.delays_ms.len()),
    ]);
    table.row(vec!["tasks not completed".into(), failed.to_string()]);
    table.note(format!(
        "clients re-ask at once after a non-empty page and {} ms after an empty one (the API has no long poll), so the delay includes up to that wait; wall time {:.1} s",
        options.poll_ms,
        wall.as_secs_f64()
    ));
    Ok(table)
}
