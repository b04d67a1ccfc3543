//! follow-latency: how long a task log line takes from the moment the control plane appends it to the moment a
//! follower prints it, for the `berth` CLI following the NDJSON stream (`berth logs ID TASK -f -o json`, the
//! real binary as a child process whose stdout lines are timestamped as they arrive) and for clients polling
//! `GET .../log?after_entry_id=` every interval, as a client had to before the stream existed.
//!
//! Every follower follows the same task at the same time, so each line is measured by all of them in one run.
//! The tasks are real: creates and deletes of a database with a Postgres node and three services, by a real
//! control plane and three real agents on the machine's one engine (the converge benchmark's shared-engine
//! fleet).
//!
//! "Emitted" is the entry's `timestamp`: the control plane's clock when it appends the entry, just before the
//! etcd transaction that stores it. The agent's own emit time (`LogLine.timestamp` in agent.proto) is not kept
//! in the entry, so the hop from the agent to the control plane (gRPC, then at most the relay's 25 ms batch
//! window, ADR 014) comes before that instant and is in neither path's figure. From it on, both paths share
//! the etcd write; then the stream is an etcd watch, the HTTP body and the CLI's parse and print, and the
//! poller is its wait for the next poll and a range read. Arrival is the bench's clock (the same machine's)
//! when the line is read from the CLI's stdout or the poll's answer is parsed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::converge::berth::{Berth, Topology};
use crate::procs::{Stack, binary};
use crate::stats::{Table, fmt_opt, median, percentile};
use crate::tasks::task_id;

/// A task that runs longer than this is taken as stuck.
const LIMIT: Duration = Duration::from_secs(300);

/// The page size a poller asks for (the API's maximum): it re-asks at once only after a full page.
const PAGE: usize = 1000;

pub struct FollowLatencyOptions {
    /// Databases created and then deleted; both tasks of each are followed.
    pub rounds: usize,
    /// The pollers' intervals, one poller per entry, in milliseconds.
    pub poll_ms: Vec<u64>,
}

/// One log entry as a follower received it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    written: DateTime<Utc>,
    arrived: DateTime<Utc>,
    /// Relayed from an agent's apply or remove stream: the relay tags it with the instance, and it has no
    /// `step` field (the control plane's own step lines have one).
    from_agent: bool,
}

impl Seen {
    fn parse(entry: &Value, arrived: DateTime<Utc>) -> Result<Seen> {
        let id = entry["id"].as_str().context("an entry without an id")?;
        let written = entry["timestamp"]
            .as_str()
            .context("an entry without a timestamp")?
            .parse::<DateTime<Utc>>()?;
        let fields = &entry["fields"];
        Ok(Seen {
            id: id.to_string(),
            written,
            arrived,
            from_agent: fields.get("instance_id").is_some() && fields.get("step").is_none(),
        })
    }

    fn delay_ms(&self) -> f64 {
        (self.arrived - self.written)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64
            / 1000.0
    }
}

/// What one follower received of one task's log, in order.
#[derive(Debug, Default)]
struct Followed {
    seen: Vec<Seen>,
    /// HTTP requests it made (the stream is one).
    requests: usize,
    /// When it was demonstrably following: the arrival of a poller's first answer (empty or not), of the
    /// CLI's first line (the CLI does not show when its request was answered).
    connected: Option<DateTime<Utc>>,
}

/// Follows the task with the real CLI, `berth logs DB TASK -f -o json`, timestamping each stdout line as it
/// is read. Fails unless the CLI exits 0 (the task completed); its stderr goes to `stderr_log`.
async fn follow_with_cli(api: &str, db: &str, task: &str, stderr_log: &Path) -> Result<Followed> {
    let stderr = std::fs::File::create(stderr_log)?;
    let mut child = tokio::process::Command::new(binary("berth"))
        .args(["--url", api, "-o", "json", "logs", db, task, "-f"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .context("start the berth CLI")?;
    let stdout = child.stdout.take().context("the CLI's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut out = Followed {
        requests: 1,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    while let Some(line) = tokio::time::timeout_at(deadline, lines.next_line()).await?? {
        let arrived = Utc::now();
        out.connected.get_or_insert(arrived);
        let entry: Value = serde_json::from_str(&line)
            .with_context(|| format!("the CLI printed a line that is not an entry: {line}"))?;
        out.seen.push(Seen::parse(&entry, arrived)?);
    }
    let status = tokio::time::timeout_at(deadline, child.wait()).await??;
    if !status.success() {
        bail!(
            "berth logs {db} {task} -f exited {status}: {}",
            std::fs::read_to_string(stderr_log).unwrap_or_default()
        );
    }
    Ok(out)
}

/// Follows the task by polling its log with the cursor: a page of up to 1,000 entries after the last one
/// seen, then `every` of sleep unless the page was full, until a page read after the task ended (the API
/// reads the status before the entries, so that page holds the last entry).
async fn follow_by_polling(
    stack: &Stack,
    db: &str,
    task: &str,
    every: Duration,
) -> Result<Followed> {
    let mut out = Followed::default();
    let mut cursor: Option<String> = None;
    let started = Instant::now();
    loop {
        let mut path = format!("/v1/databases/{db}/tasks/{task}/log?limit={PAGE}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&after_entry_id={c}"));
        }
        let page = stack.get(&path).await?;
        let arrived = Utc::now();
        out.requests += 1;
        out.connected.get_or_insert(arrived);
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            out.seen.push(Seen::parse(e, arrived)?);
        }
        if let Some(last) = page["last_entry_id"].as_str() {
            cursor = Some(last.to_string());
        }
        if entries.len() == PAGE {
            continue;
        }
        if matches!(
            page["task_status"].as_str(),
            Some("completed" | "failed" | "canceled")
        ) {
            return Ok(out);
        }
        if started.elapsed() > LIMIT {
            bail!("task {task} of {db} still running after {LIMIT:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The delays of one follower over every task, in milliseconds.
#[derive(Debug, Default)]
struct Delays {
    all: Vec<f64>,
    from_agents: Vec<f64>,
    requests: usize,
}

#[derive(Debug, Default)]
struct Totals {
    /// The stream first, then one per poll interval.
    followers: Vec<Delays>,
    entries: usize,
    /// Entries written before every follower was following (see [`Totals::add`]).
    left_out: usize,
    /// Per task, ms from its first entry's append until every follower had received an entry.
    connect_ms: Vec<f64>,
    tasks: Vec<String>,
}

impl Totals {
    /// Adds one task as its followers saw it. Only entries written after every follower was demonstrably
    /// following ([`Followed::connected`]) are timed: those reached each of them live (through the stream's
    /// watch, or a poll that came after them), not in the catch-up of a follower that was still starting. Fails when the followers did not all receive the same entries in the same order.
    fn add(&mut self, task: &str, followed: &[Followed]) -> Result<()> {
        let ids = |f: &Followed| f.seen.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        for (i, f) in followed.iter().enumerate().skip(1) {
            if ids(f) != ids(&followed[0]) {
                bail!(
                    "follower {i} of task {task} received {} entries, the stream {} (or another order)",
                    f.seen.len(),
                    followed[0].seen.len()
                );
            }
        }
        let cutoff = followed
            .iter()
            .map(|f| f.connected)
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().max())
            .context("a task whose log the CLI printed nothing of")?;
        self.followers.resize_with(followed.len(), Delays::default);
        let timed = followed[0]
            .seen
            .iter()
            .filter(|s| s.written > cutoff)
            .count();
        let first = &followed[0].seen[0];
        self.connect_ms.push(
            Seen {
                arrived: cutoff,
                ..first.clone()
            }
            .delay_ms(),
        );
        self.entries += followed[0].seen.len();
        self.left_out += followed[0].seen.len() - timed;
        for (f, d) in followed.iter().zip(self.followers.iter_mut()) {
            d.requests += f.requests;
            for s in f.seen.iter().filter(|s| s.written > cutoff) {
                d.all.push(s.delay_ms());
                if s.from_agent {
                    d.from_agents.push(s.delay_ms());
                }
            }
        }
        self.tasks.push(task.to_string());
        Ok(())
    }
}

/// Follows task `task` of `db` with the CLI and one poller per interval, all at once, and adds it to `into`.
async fn follow_task(
    berth: &Berth,
    db: &str,
    task: &str,
    polls: &[Duration],
    into: &mut Totals,
) -> Result<()> {
    let stack = &berth.cluster.stack;
    let log = stack.dir.path().join(format!("cli-{task}.log"));
    let cli = follow_with_cli(&stack.api, db, task, &log);
    let pollers =
        futures::future::try_join_all(polls.iter().map(|p| follow_by_polling(stack, db, task, *p)));
    let (cli, pollers) = tokio::try_join!(cli, pollers)?;
    let status = stack
        .get(&format!("/v1/databases/{db}/tasks/{task}"))
        .await?;
    if status["status"] != "completed" {
        bail!(
            "task {task} of {db} ended {}\n{}",
            status["status"],
            stack.log_tails(20)
        );
    }
    let mut followed = vec![cli];
    followed.extend(pollers);
    into.add(
        &format!("{} of {db}", status["type"].as_str().unwrap_or("?")),
        &followed,
    )
}

/// The machine's load averages over 1, 5 and 15 minutes, from /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn run(options: FollowLatencyOptions) -> Result<Table> {
    let polls: Vec<Duration> = options
        .poll_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    let berth = Berth::start(Topology::SharedEngine).await?;
    let load_before = load_average();
    let started = Instant::now();
    let mut totals = Totals::default();
    let spec = berth.spec();
    for r in 0..options.rounds.max(1) {
        let db = berth.db(r);
        let created = berth
            .cluster
            .stack
            .post(
                "/v1/databases",
                &serde_json::json!({"id": db, "spec": spec}),
            )
            .await?;
        follow_task(&berth, &db, &task_id(&created)?, &polls, &mut totals).await?;
        let resp = berth
            .cluster
            .stack
            .http
            .delete(format!("{}/v1/databases/{db}", berth.cluster.stack.api))
            .send()
            .await?;
        let deleted: Value = resp.json().await?;
        follow_task(&berth, &db, &task_id(&deleted)?, &polls, &mut totals).await?;
    }
    let wall = started.elapsed();
    Ok(report(&options, &totals, wall, &load_before))
}

fn report(options: &FollowLatencyOptions, t: &Totals, wall: Duration, load_before: &str) -> Table {
    let mut table = Table::new(
        &format!(
            "follow-latency: entry appended -> follower prints it, {} creates and {} deletes of a database with \
             three services, shared engine",
            options.rounds, options.rounds
        ),
        &[
            "follower",
            "lines timed",
            "median ms",
            "p90 ms",
            "max ms",
            "stream / this, median",
            "stream / this, p90",
        ],
    );
    let names = std::iter::once("berth logs -f -o json (NDJSON stream, the real CLI)".to_string())
        .chain(
            options
                .poll_ms
                .iter()
                .map(|ms| format!("poll with after_entry_id every {ms} ms")),
        );
    let stream = t.followers.first();
    let ratio = |p: f64, d: &Delays| -> String {
        let s = stream.and_then(|s| percentile(&s.all, p));
        let this = percentile(&d.all, p);
        match (s, this) {
            (Some(s), Some(this)) if this > 0.0 => format!("{:.3}", s / this),
            _ => "n/a".into(),
        }
    };
    for (name, d) in names.zip(&t.followers) {
        table.row(vec![
            name,
            d.all.len().to_string(),
            fmt_opt(median(&d.all), 1),
            fmt_opt(percentile(&d.all, 90.0), 1),
            fmt_opt(percentile(&d.all, 100.0), 1),
            ratio(50.0, d),
            ratio(90.0, d),
        ]);
    }
    let agent_medians: Vec<String> = t
        .followers
        .iter()
        .map(|d| {
            format!(
                "{} ms (p90 {})",
                fmt_opt(median(&d.from_agents), 1),
                fmt_opt(percentile(&d.from_agents, 90.0), 1)
            )
        })
        .collect();
    table.note(format!(
        "{} tasks ({}), {} entries; {} written before every follower was following (a poller's first answer, the \
         CLI's first line) are left out of the timing (they came in a follower's catch-up): that was {} ms \
         after the task's first entry was appended (median over the tasks; max {} ms)",
        t.tasks.len(),
        t.tasks.join(", "),
        t.entries,
        t.left_out,
        fmt_opt(median(&t.connect_ms), 0),
        fmt_opt(percentile(&t.connect_ms, 100.0), 0)
    ));
    table.note(format!(
        "the lines relayed from the agents alone ({} of the timed): medians stream, then each poller: {}",
        t.followers.first().map_or(0, |d| d.from_agents.len()),
        agent_medians.join(", ")
    ));
    table.note(format!(
        "HTTP requests over all tasks: stream {}, pollers {}",
        t.followers.first().map_or(0, |d| d.requests),
        t.followers
            .iter()
            .skip(1)
            .map(|d| d.requests.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    table.note(format!(
        "load average (1, 5, 15 min) before the first task: {load_before}; after the last: {}; wall time {:.0} s",
        load_average(),
        wall.as_secs_f64()
    ));
    table
}
