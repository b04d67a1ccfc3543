//! The berth variants: etcd, a control plane and three real agents, every agent either driving the machine's
//! one engine or running in a host of an engine-per-host fleet with an engine of its own. A round is one
//! create, from the POST until its task completed, then its delete.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cluster::Cluster;
use crate::engine_fleet::EngineFleet;
use crate::procs::StackOptions;
use crate::specs::three_services;
use crate::tasks::task_id;

use super::engine::LIMIT;

/// The engine-per-host fleet's name and subnet index for `deploy/fleet/hosts` (10.213.2.0/24): the dev fleet
/// has index 0 and the end-to-end tests' fleet 1, so the bench can run beside either.
const FLEET_NAME: &str = "bench";
const FLEET_SUBNET: u8 = 2;

/// Where the three hosts' containers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every agent drives the machine's engine: instances share one Docker network per database and reach
    /// Postgres by its alias there.
    SharedEngine,
    /// Each host is a network namespace with its own address and engine (`deploy/fleet/hosts`): instances on
    /// different hosts reach each other only at host addresses and published ports, across the fleet's
    /// bridge. (Services verify Postgres's TLS certificate in both topologies.)
    EnginePerHost,
}

/// One berth round's task, to read its log back.
pub struct Timeline {
    db: String,
    task: String,
    posted_at: chrono::DateTime<chrono::Utc>,
}

/// One berth variant's rounds: the times of those that converged, the last lines of those that failed, and
/// the last converged round's task log.
#[derive(Debug, Default)]
pub struct Measured {
    pub times: Vec<f64>,
    pub failures: Vec<String>,
    pub timeline: Vec<String>,
    /// Where postgrest (host-2) connects, from the first converged round's rendered `db-uri`, credentials
    /// left out: evidence of how the topology routes it (an alias on a shared network, or a host address and
    /// published port) and that it asks for TLS.
    pub rest_connection: Option<String>,
}

/// A running berth fleet of three hosts.
pub struct Berth {
    pub topology: Topology,
    /// Its hosts are host-1..3 in order.
    pub cluster: Cluster,
    /// Database ids of this run start with it (so do their networks).
    db_prefix: String,
    /// The engine-per-host fleet; taken down in `drop`, after the agents stopped.
    fleet: Option<EngineFleet>,
}

impl Drop for Berth {
    /// Whatever a failed round left: the agents leave containers running when they stop.
    fn drop(&mut self) {
        self.cluster.stop_agents();
        match self.fleet.take() {
            // Its `down` removes every container and network of its engines, and the engines.
            Some(fleet) => drop(fleet),
            None => self.cluster.remove_leftovers(&self.db_prefix),
        }
    }
}

impl Berth {
    /// Starts etcd, a control plane and three agents in `topology` (bringing the engine-per-host fleet up
    /// first, images loaded, outside any round's time) and waits until the three hosts are healthy.
    pub async fn start(topology: Topology) -> Result<Berth> {
        let fleet = match topology {
            Topology::SharedEngine => None,
            Topology::EnginePerHost => Some(EngineFleet::up(FLEET_NAME, 3, FLEET_SUBNET)?),
        };
        let options = StackOptions {
            reconcile: true,
            grpc_ip: fleet.as_ref().map(|f| f.gateway.clone()),
            ..Default::default()
        };
        let id = std::process::id() & 0xffff;
        let (host_prefix, db_prefix) = match topology {
            Topology::SharedEngine => (format!("bench{id:04x}"), format!("cv{id:04x}")),
            Topology::EnginePerHost => (format!("benchnet{id:04x}"), format!("cn{id:04x}")),
        };
        let hosts: Vec<String> = (1..=3).map(|i| format!("{host_prefix}-host-{i}")).collect();
        Ok(Berth {
            topology,
            cluster: Cluster::start(options, hosts, fleet.as_ref()).await?,
            db_prefix,
            fleet,
        })
    }

    /// The id of this variant's database of round `r`.
    pub fn db(&self, r: usize) -> String {
        format!("{}-{r}", self.db_prefix)
    }

    /// The spec each round creates: three services on the three hosts ([`three_services`]).
    pub fn spec(&self) -> serde_json::Value {
        let h = |i: usize| vec![self.cluster.hosts[i].clone()];
        let (a, b, c) = (h(0), h(1), h(2));
        three_services(&self.cluster.hosts[0], [&a, &b, &c], "claude-sonnet-4-5")
    }

    /// Creates database `db` and records the round in `into`: the time from POST until its task completed
    /// and its task log, or, if the create failed, its last log line (the round is then not timed, and the
    /// processes' recent warnings go to stderr). Whether it converged; the caller deletes `db` either way.
    pub async fn measure(&self, db: &str, into: &mut Measured) -> Result<bool> {
        match self.round(db).await {
            Ok((took, task)) => {
                into.times.push(took.as_secs_f64());
                if into.rest_connection.is_none() {
                    into.rest_connection = self.rest_connection(db);
                }
                // The last round's is kept, so the first one's image and page-cache warm-up are not in it.
                into.timeline = self
                    .timeline(&task)
                    .await
                    .unwrap_or_else(|e| vec![format!("(task log unreadable: {e})")]);
                Ok(true)
            }
            Err(e) => {
                let last = e.to_string().lines().last().unwrap_or_default().to_string();
                eprintln!(
                    "berth ({:?}) round {db} failed: {e}\n{}",
                    self.topology,
                    self.cluster.stack.log_tails(20)
                );
                into.failures.push(last);
                Ok(false)
            }
        }
    }

    /// Creates database `db`; returns the time from POST until its task completed, and the task.
    async fn round(&self, db: &str) -> Result<(Duration, Timeline)> {
        let started = Instant::now();
        let posted_at = chrono::Utc::now();
        let resp = self
            .cluster
            .stack
            .post(
                "/v1/databases",
                &serde_json::json!({"id": db, "spec": self.spec()}),
            )
            .await?;
        let task = task_id(&resp)?;
        let ended = self
            .cluster
            .watch
            .wait_all(std::slice::from_ref(&task), LIMIT)
            .await?;
        if ended[0].status != "completed" {
            let log = self
                .cluster
                .stack
                .get(&format!("/v1/databases/{db}/tasks/{task}/log?limit=1000"))
                .await
                .unwrap_or_default();
            let lines: Vec<&str> = log["entries"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e["message"].as_str()).collect())
                .unwrap_or_default();
            bail!(
                "berth's create of {db} ended {}; its log:\n{}",
                ended[0].status,
                lines.join("\n")
            );
        }
        Ok((
            ended[0].at - started,
            Timeline {
                db: db.to_string(),
                task,
                posted_at,
            },
        ))
    }

    /// The task's log lines, each at its offset from the POST: where berth's time went.
    async fn timeline(&self, t: &Timeline) -> Result<Vec<String>> {
        let log = self
            .cluster
            .stack
            .get(&format!(
                "/v1/databases/{}/tasks/{}/log?limit=1000",
                t.db, t.task
            ))
            .await?;
        Ok(log["entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| {
                        let at = e["timestamp"]
                            .as_str()?
                            .parse::<chrono::DateTime<chrono::Utc>>();
                        let offset = (at.ok()? - t.posted_at).num_milliseconds() as f64 / 1000.0;
                        Some(format!("+{offset:.2}s {}", e["message"].as_str()?))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes database `db` and waits for its task to end.
    pub async fn delete(&self, db: &str) -> Result<()> {
        let stack = &self.cluster.stack;
        let resp = stack
            .http
            .delete(format!("{}/v1/databases/{db}", stack.api))
            .send()
            .await?;
        let body: serde_json::Value = resp.json().await?;
        let task = task_id(&body)?;
        self.cluster.watch.wait_all(&[task], LIMIT).await?;
        Ok(())
    }

    /// postgrest's `db-uri` in database `db` after the `@` (so without its role and password), as the agent of
    /// host-2 wrote it to the instance's config dir.
    fn rest_connection(&self, db: &str) -> Option<String> {
        let host = &self.cluster.hosts[1];
        let file = agent::instance::instances_root(&self.cluster.stack.dir.path().join(host))
            .join(format!("{db}-rest-{host}"))
            .join("config/postgrest.conf");
        let text = std::fs::read_to_string(file).ok()?;
        let uri = text.lines().find_map(|l| l.strip_prefix("db-uri = "))?;
        Some(uri.trim_matches('"').rsplit_once('@')?.1.to_string())
    }

    /// The container the agent of host `host` (0-based) runs instance `instance` in.
    pub fn container(&self, host: usize, instance: &str) -> String {
        format!("berth-{}-{instance}", self.cluster.hosts[host])
    }
}
