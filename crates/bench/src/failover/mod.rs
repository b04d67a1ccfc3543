//! `failover`: how long a node has no writable primary when its primary's host is lost, and how long a
//! switchover takes, with Patroni's default timings and with berth's, side by side in one run (ADR 016).
//!
//! One engine-per-host fleet of two hosts serves both configurations in turn; each gets its own etcd, a
//! control plane started with its `--patroni-*` flags, two agents and a database with one node on both hosts.
//! A failover run cuts the primary's host off the network (`deploy/fleet/hosts cut`: its link goes down, as
//! the e2e test `ha.rs` does) and probes the other instance with an `INSERT` (psql by `docker exec` on its
//! host's engine, about every 100 ms) until one is accepted; then it heals the link and waits until the old
//! primary is back as a streaming replica that replays a row written on the new primary. A switchover run asks the control plane to hand the primary to the
//! replica and probes the replica the same way.

mod node;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::engine_fleet::EngineFleet;
use crate::stats::{Table, fmt_opt, median};
use crate::tasks::task_id;
use node::{Node, Timings};

/// The engine-per-host fleet's name and subnet index (10.213.4.0/24): the dev fleet has 0, the e2e tests 1
/// and the converge benchmark 2, so this one can run beside any of them.
const FLEET_NAME: &str = "failover";
const FLEET_SUBNET: u8 = 4;

/// What Patroni 4.0 logs when a leader that cannot reach etcd demotes itself (`patroni/ha.py`).
const DEMOTED: &str = "demoting self because DCS is not accessible";

/// The configurations measured, in order: a name, the tag of their hosts and database, the timings.
const CONFIGURATIONS: [(&str, &str, Timings); 2] = [
    (
        "Patroni's defaults",
        "pd",
        Timings {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
        },
    ),
    (
        "berth's",
        "bd",
        Timings {
            ttl: 20,
            loop_wait: 5,
            retry_timeout: 5,
        },
    ),
];

pub struct FailoverOptions {
    /// Failover runs per configuration.
    pub runs: usize,
    /// Switchover runs per configuration (0: none).
    pub switchovers: usize,
}

/// One configuration's samples, in seconds.
#[derive(Debug, Default)]
struct Measured {
    /// From the cut to the first write accepted by the other instance.
    failover: Vec<f64>,
    /// From the cut to etcd deleting the leader key (its lease expired).
    key_expired: Vec<f64>,
    /// From the cut to the replica writing the leader key (it took over).
    key_taken: Vec<f64>,
    /// From the cut to the old primary's Patroni logging that it demotes itself (it cannot reach etcd).
    demoted: Vec<f64>,
    /// From the heal to the old primary streaming as a replica.
    rejoin: Vec<f64>,
    /// How long each accepted probe's `docker exec` took: the resolution of the two write timings.
    probe: Vec<f64>,
    /// From the switchover request to the first write accepted by the candidate.
    switchover_write: Vec<f64>,
    /// From the switchover request to its task `completed`.
    switchover_task: Vec<f64>,
    /// The control plane has no switchover route.
    no_switchover_route: bool,
    /// The last switchover's task log, each line at its offset from the request.
    switchover_log: Vec<String>,
    /// `/proc/loadavg` before and after the configuration's runs.
    load: (String, String),
}

pub struct FailoverReport {
    rows: Vec<(&'static str, Timings, Measured)>,
}

pub async fn run(options: FailoverOptions) -> Result<FailoverReport> {
    let fleet = EngineFleet::up(FLEET_NAME, 2, FLEET_SUBNET)?;
    let mut rows = Vec::new();
    for (name, tag, timings) in CONFIGURATIONS {
        let load_before = loadavg();
        let result = measure(&fleet, name, tag, timings, &options).await;
        // The agents are gone (the node dropped); their containers go before the next configuration.
        fleet.clean()?;
        let mut measured = result.with_context(|| format!("{name} timings"))?;
        measured.load = (load_before, loadavg());
        rows.push((name, timings, measured));
    }
    Ok(FailoverReport { rows })
}

async fn measure(
    fleet: &EngineFleet,
    name: &str,
    tag: &str,
    timings: Timings,
    options: &FailoverOptions,
) -> Result<Measured> {
    let node = Node::start(fleet, tag, timings).await?;
    let mut m = Measured::default();
    for run in 1..=options.runs {
        node.cluster
            .stack
            .wait_hosts_healthy(2, node::LIMIT)
            .await?;
        let (primary, replica) = node.settled().await?;
        // A host fails at any moment of Patroni's loop, but the runs would all cut at about the same one:
        // each starts once the API shows the roles settled, which one of Patroni's loops writes. So run k of
        // n first waits (k - 1 + a random fraction) / n of loop_wait, spreading the cuts over the loop.
        let phase =
            f64::from(timings.loop_wait) * ((run - 1) as f64 + fraction()) / options.runs as f64;
        tokio::time::sleep(Duration::from_secs_f64(phase)).await;
        let key = node.watch_leader_key().await?;
        let (cut, cut_at) = (Instant::now(), chrono::Utc::now());
        fleet.cut(primary)?;
        let accepted = node.first_write(replica, cut).await;
        // Healed whatever happened, so a failed run leaves no host cut off.
        fleet.heal(primary)?;
        let accepted = accepted?;
        let healed = Instant::now();
        node.settled().await?;
        let rejoin = healed.elapsed().as_secs_f64();
        let after_cut = |at: Option<chrono::DateTime<chrono::Utc>>| {
            at.map(|at| (at - cut_at).num_milliseconds() as f64 / 1000.0)
        };
        let since = cut_at - chrono::Duration::seconds(1);
        let demoted = after_cut(node.logged_at(primary, since, DEMOTED).await);
        let events = key.events();
        let since_cut = |at: Option<Instant>| at.map(|at| (at - cut).as_secs_f64());
        let (expired, taken) = (since_cut(events.expired), since_cut(events.taken));
        eprintln!(
            "{name} failover {run}/{} (cut {phase:.1} s into the wait): after the cut, the old primary demoted itself at {} s, the leader key \
             expired at {} s, the replica took it at {} s and accepted a write at {:.2} s; the old primary was a \
             streaming replica {rejoin:.2} s after the heal",
            options.runs,
            fmt_opt(demoted, 2),
            fmt_opt(expired, 2),
            fmt_opt(taken, 2),
            accepted.after.as_secs_f64()
        );
        m.demoted.extend(demoted);
        m.key_expired.extend(expired);
        m.key_taken.extend(taken);
        m.failover.push(accepted.after.as_secs_f64());
        m.probe.push(accepted.probe.as_secs_f64());
        m.rejoin.push(rejoin);
    }
    let path = format!("/v1/databases/{}/nodes/n1/switchover", node.db);
    for run in 1..=options.switchovers {
        node.cluster
            .stack
            .wait_hosts_healthy(2, node::LIMIT)
            .await?;
        let (_, replica) = node.settled().await?;
        let (asked, asked_at) = (Instant::now(), chrono::Utc::now());
        let body = json!({"candidate_instance_id": node.instance(replica)});
        let Some(answer) = node.post_if_routed(&path, &body).await? else {
            eprintln!("{name}: the control plane has no switchover route; switchover not measured");
            m.no_switchover_route = true;
            break;
        };
        let task = task_id(&answer)?;
        let accepted = node.first_write(replica, asked).await?;
        let completed = node.cluster.wait_task(&node.db, &task, node::LIMIT).await? - asked;
        m.switchover_log = node.cluster.task_log(&node.db, &task, asked_at).await?;
        eprintln!(
            "{name} switchover {run}/{}: first write on the new primary {:.2} s after the request, task \
             completed after {:.2} s",
            options.switchovers,
            accepted.after.as_secs_f64(),
            completed.as_secs_f64()
        );
        m.switchover_write.push(accepted.after.as_secs_f64());
        m.switchover_task.push(completed.as_secs_f64());
        m.probe.push(accepted.probe.as_secs_f64());
    }
    Ok(m)
}

/// A number in [0, 1) from the clock's nanoseconds: enough to place a cut within a loop.
fn fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// The machine's 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// "median (min-max)" of samples in seconds, one decimal.
fn spread(samples: &[f64]) -> String {
    let min = samples.iter().copied().reduce(f64::min);
    let max = samples.iter().copied().reduce(f64::max);
    format!(
        "{} ({}-{})",
        fmt_opt(median(samples), 1),
        fmt_opt(min, 1),
        fmt_opt(max, 1)
    )
}

impl FailoverReport {
    pub fn print(&self) {
        let mut failover = Table::new(
            "failover: the primary's host cut off; seconds after the cut, median (min-max)",
            &[
                "timings",
                "ttl / loop_wait / retry_timeout (s)",
                "runs",
                "old primary demoted itself",
                "leader key expired (ttl - loop_wait .. ttl)",
                "replica took the key",
                "first write accepted",
                "old primary streaming again, after the heal",
            ],
        );
        let mut switchover = Table::new(
            "switchover: POST .../nodes/n1/switchover to the replica, seconds",
            &[
                "timings",
                "runs",
                "first write on the new primary: median (min-max)",
                "task completed: median (min-max)",
            ],
        );
        for (name, t, m) in &self.rows {
            failover.row(vec![
                name.to_string(),
                format!("{} / {} / {}", t.ttl, t.loop_wait, t.retry_timeout),
                m.failover.len().to_string(),
                spread(&m.demoted),
                format!(
                    "{} ({}..{})",
                    spread(&m.key_expired),
                    t.ttl - t.loop_wait,
                    t.ttl
                ),
                spread(&m.key_taken),
                spread(&m.failover),
                spread(&m.rejoin),
            ]);
            switchover.row(vec![
                name.to_string(),
                m.switchover_write.len().to_string(),
                if m.no_switchover_route {
                    "no switchover route in this build".into()
                } else {
                    spread(&m.switchover_write)
                },
                spread(&m.switchover_task),
            ]);
            failover.note(format!(
                "{name}: load average {} before, {} after",
                m.load.0, m.load.1
            ));
        }
        let probes: Vec<f64> = self.rows.iter().flat_map(|r| r.2.probe.clone()).collect();
        failover.note(format!(
            "a write time is when the accepted probe's psql returned; one probe (`docker exec` of psql) took {} s \
             (median), the times' resolution",
            fmt_opt(median(&probes), 2)
        ));
        failover.note(
            "the leader key was last renewed 0 to loop_wait s before the cut, so it expires ttl - loop_wait to ttl \
             s after it (etcd's delete, seen by a watch; each run cuts at another point of loop_wait); the \
             demotion is the old primary's Patroni log line, by its engine's log timestamp"
                .into(),
        );
        failover.print();
        switchover.print();
        for (name, _, m) in &self.rows {
            if !m.switchover_log.is_empty() {
                println!(
                    "The last switchover's task log, {name} timings (offsets from the request):\n"
                );
                println!("```\n{}\n```\n", m.switchover_log.join("\n"));
            }
        }
    }
}
