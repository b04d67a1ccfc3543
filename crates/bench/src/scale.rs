//! scale: one control plane driving many SIMULATED hosts (berth-hollow-agent) to thousands of instances, and
//! what one unrelated update costs with many databases stored versus one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;

use crate::procs::{EtcdCounts, Proc, Stack, StackOptions, start_hollow};
use crate::profile::Profile;
use crate::specs::three_services;
use crate::stats::{Table, fmt_opt, median, verdict};
use crate::tasks::{TaskWatch, task_id};

pub struct ScaleOptions {
    pub hosts: usize,
    pub databases: usize,
    pub updates: usize,
    /// Sample the control plane with `perf record` while it converges, and print the hottest symbols.
    pub profile: bool,
}

/// The simulated hosts' lease. Every heartbeat (each host's, every third of the TTL) costs etcd a read and a
/// lease renewal; at the 5 s default 100 hosts make ~120 requests a second, arriving in bursts while the
/// control plane is busy, which swamped the few dozen requests an update costs and moved the many/one ratio
/// from run to run. Both fleets run with the same TTL.
const HOST_LEASE_TTL_SECONDS: u32 = 30;

/// Instances per database: one Postgres node plus three service types on three hosts each.
pub const INSTANCES_PER_DATABASE: usize = 10;

fn host(i: usize, hosts: usize) -> String {
    format!("hollow-{}", i % hosts + 1)
}

fn database_spec(i: usize, hosts: usize, model: &str) -> serde_json::Value {
    let h = |k: usize| {
        vec![
            host(i + k, hosts),
            host(i + k + 1, hosts),
            host(i + k + 2, hosts),
        ]
    };
    let (a, b, c) = (h(1), h(2), h(3));
    three_services(&host(i, hosts), [&a, &b, &c], model)
}

struct Fleet {
    stack: Arc<Stack>,
    _hollow: Proc,
    watch: TaskWatch,
}

async fn start_fleet(hosts: usize) -> Result<Fleet> {
    let stack = Arc::new(
        Stack::start(StackOptions {
            reconcile: true,
            host_lease_ttl_seconds: Some(HOST_LEASE_TTL_SECONDS),
            ..Default::default()
        })
        .await?,
    );
    let hollow = start_hollow(&stack, "hollow", hosts, 0, 0)?;
    stack
        .wait_hosts_healthy(hosts, Duration::from_secs(60))
        .await?;
    let watch = TaskWatch::start(&stack.etcd.endpoint(), "/berth").await?;
    Ok(Fleet {
        stack,
        _hollow: hollow,
        watch,
    })
}

/// Creates databases `range` with `concurrency` submissions in flight; returns their task ids.
async fn create(fleet: &Fleet, range: std::ops::Range<usize>, hosts: usize) -> Result<Vec<String>> {
    let results: Vec<Result<String>> = futures::stream::iter(range)
        .map(|i| {
            let stack = fleet.stack.clone();
            async move {
                let body = serde_json::json!({"id": format!("db-{i}"), "spec": database_spec(i, hosts, "claude-sonnet-4-5")});
                let resp = stack.post("/v1/databases", &body).await?;
                task_id(&resp)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

struct UpdateCost {
    seconds: Vec<f64>,
    etcd: Vec<f64>,
    /// The costliest sample's etcd requests by method, to tell what an outlier was.
    costliest: EtcdCounts,
    statuses: Vec<String>,
    /// etcd requests per second with nothing submitted, measured just before the updates: heartbeats and
    /// lease renewals that fall into every sample's window whatever the update costs.
    idle_per_second: EtcdCounts,
}

impl UpdateCost {
    /// Each sample's etcd requests less what the idle rate puts in a window of its length: the update's own.
    fn own_etcd(&self) -> Vec<f64> {
        let idle = self.idle_per_second.total();
        self.etcd
            .iter()
            .zip(&self.seconds)
            .map(|(requests, seconds)| (requests - idle * seconds).max(0.0))
            .collect()
    }
}

/// etcd's request rate with nothing submitted, over `window`.
async fn idle_rate(fleet: &Fleet, window: Duration) -> Result<EtcdCounts> {
    let before = fleet.stack.etcd_requests().await?;
    tokio::time::sleep(window).await;
    let after = fleet.stack.etcd_requests().await?;
    let mut rate = after.since(&before);
    for v in rate.by_method.values_mut() {
        *v /= window.as_secs_f64();
    }
    Ok(rate)
}

/// Changes one database's mcp model `n` times, one after the other; each from POST to task ended.
async fn updates(fleet: &Fleet, n: usize, hosts: usize) -> Result<UpdateCost> {
    let mut cost = UpdateCost {
        seconds: Vec::new(),
        etcd: Vec::new(),
        costliest: EtcdCounts::default(),
        statuses: Vec::new(),
        idle_per_second: idle_rate(fleet, Duration::from_secs(5)).await?,
    };
    for round in 0..n {
        let model = format!("claude-bench-{round}");
        let before = fleet.stack.etcd_requests().await?;
        let started = Instant::now();
        let resp = fleet
            .stack
            .post(
                "/v1/databases/db-0",
                &serde_json::json!({"spec": database_spec(0, hosts, &model)}),
            )
            .await?;
        let task = task_id(&resp)?;
        let ended = fleet
            .watch
            .wait_all(std::slice::from_ref(&task), Duration::from_secs(120))
            .await?;
        let took = ended[0].at - started;
        let after = fleet.stack.etcd_requests().await?;
        let spent = after.since(&before);
        if spent.total() > cost.costliest.total() {
            cost.costliest = spent.clone();
        }
        cost.seconds.push(took.as_secs_f64());
        cost.etcd.push(spent.total());
        cost.statuses.push(ended[0].status.clone());
    }
    Ok(cost)
}

pub async fn run(options: ScaleOptions) -> Result<Table> {
    let instances = options.databases * INSTANCES_PER_DATABASE;

    // Baseline: the same fleet with one database stored.
    let small = start_fleet(options.hosts).await?;
    let tasks = create(&small, 0..1, options.hosts).await?;
    small
        .watch
        .wait_all(&tasks, Duration::from_secs(120))
        .await?;
    let one = updates(&small, options.updates, options.hosts).await?;
    drop(small);

    let big = start_fleet(options.hosts).await?;
    let cp_pid = big.stack.control_plane.pid();
    let perf = options
        .profile
        .then(|| Profile::start(cp_pid, big.stack.dir.path()))
        .flatten();
    let etcd_before: EtcdCounts = big.stack.etcd_requests().await?;
    let cpu_before = big.stack.control_plane.cpu_time();
    let started = Instant::now();
    let tasks = create(&big, 0..options.databases, options.hosts).await?;
    let accepted = started.elapsed();
    // Bounded so a stuck run reports instead of hanging; 10 minutes is far beyond any healthy run.
    let ended = big
        .watch
        .wait_all(&tasks, Duration::from_secs(600))
        .await
        .context("waiting for the creates to converge")?;
    let last = ended.iter().map(|e| e.at).max().unwrap_or(started);
    let converge = last - started;
    let failed: Vec<(usize, String)> = ended
        .iter()
        .zip(&tasks)
        .enumerate()
        .filter(|(_, (e, _))| e.status != "completed")
        .map(|(i, (_, t))| (i, t.clone()))
        .collect();
    let mut failure_notes = Vec::new();
    for (i, task) in failed.iter().take(3) {
        if let Ok(t) = big
            .stack
            .get(&format!("/v1/databases/db-{i}/tasks/{task}"))
            .await
        {
            failure_notes.push(format!("db-{i}: {} {}", t["status"], t["error"]));
        }
    }
    let etcd_converge = big.stack.etcd_requests().await?.since(&etcd_before);
    let cpu_converge = big
        .stack
        .control_plane
        .cpu_time()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    let profile = perf.map(Profile::report);
    let many = updates(&big, options.updates, options.hosts).await?;
    let rss = big.stack.control_plane.peak_rss();

    let per_instance = etcd_converge.total() / instances as f64;
    let rss_mb = rss.map(|b| b as f64 / 1e6);
    let (t1, tn) = (median(&one.seconds), median(&many.seconds));
    let (e1, en) = (median(&one.own_etcd()), median(&many.own_etcd()));
    let time_ratio = tn.zip(t1).map(|(n, o)| n / o);
    let etcd_ratio = en.zip(e1).map(|(n, o)| n / o);

    let mut table = Table::new(
        &format!(
            "scale: {} simulated hosts, {} databases, {} instances ({} per database: 1 Postgres + 3 services x 3 hosts)",
            options.hosts, options.databases, instances, INSTANCES_PER_DATABASE
        ),
        &["measure", "value", "target"],
    );
    table.row(vec![
        "time to converge (first POST to last task completed)".into(),
        format!("{:.1} s", converge.as_secs_f64()),
        format!(
            "< 60 s for 10,000: {}",
            verdict(converge < Duration::from_secs(60))
        ),
    ]);
    table.row(vec![
        "of which accepting the POSTs (16 in flight)".into(),
        format!("{:.1} s", accepted.as_secs_f64()),
        String::new(),
    ]);
    table.row(vec![
        "tasks not completed".into(),
        failed.len().to_string(),
        String::new(),
    ]);
    table.row(vec![
        "control-plane peak RSS (VmHWM)".into(),
        fmt_opt(rss_mb, 0) + " MB",
        format!("< 300 MB: {}", verdict(rss_mb.is_some_and(|m| m < 300.0))),
    ]);
    table.row(vec![
        "control-plane CPU time while converging".into(),
        cpu_converge.map_or("n/a".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        String::new(),
    ]);
    table.row(vec![
        "etcd requests per converged instance".into(),
        format!("{per_instance:.1}"),
        String::new(),
    ]);
    table.row(vec![
        format!(
            "unrelated update, {} databases stored: median s / etcd requests of its own",
            options.databases
        ),
        format!("{} s / {}", fmt_opt(tn, 3), fmt_opt(en, 0)),
        String::new(),
    ]);
    table.row(vec![
        "unrelated update, 1 database stored: median s / etcd requests of its own".into(),
        format!("{} s / {}", fmt_opt(t1, 3), fmt_opt(e1, 0)),
        String::new(),
    ]);
    table.row(vec![
        "**update cost ratio (many / one): time, etcd requests**".into(),
        format!(
            "**{} / {}**",
            fmt_opt(time_ratio, 2),
            fmt_opt(etcd_ratio, 2)
        ),
        format!(
            "< 1.2: {}",
            verdict(time_ratio.is_some_and(|r| r < 1.2) && etcd_ratio.is_some_and(|r| r < 1.2))
        ),
    ]);
    table.note(format!(
        "etcd requests while converging, by method: {}",
        etcd_converge.summary()
    ));
    table.note(format!(
        "update samples (s): many {:?}, one {:?}; statuses {:?} / {:?}",
        many.seconds
            .iter()
            .map(|s| (s * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        one.seconds
            .iter()
            .map(|s| (s * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        many.statuses,
        one.statuses
    ));
    table.note(format!(
        "update etcd requests as counted in each sample's window (before subtracting the idle rate below): \
         many {:?}, one {:?}; the costliest by method: many ({}), one ({})",
        many.etcd,
        one.etcd,
        many.costliest.summary(),
        one.costliest.summary()
    ));
    table.note(format!(
        "etcd requests per second with nothing submitted (heartbeats, lease renewals), in every sample's window: \
         many {:.0} ({}), one {:.0} ({})",
        many.idle_per_second.total(),
        many.idle_per_second.summary(),
        one.idle_per_second.total(),
        one.idle_per_second.summary()
    ));
    if !failure_notes.is_empty() {
        table.note(format!(
            "tasks that did not complete (first 3): {}",
            failure_notes.join("; ")
        ));
    }
    if let Some(p) = profile {
        table.note(format!(
            "perf profile of the control plane while converging:\n\n```\n{p}\n```"
        ));
    }
    Ok(table)
}
