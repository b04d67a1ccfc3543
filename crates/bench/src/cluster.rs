//! berth as the database benchmarks run it (backup, converge, failover, replication lag): etcd and a control
//! plane ([`Stack`]), a real agent for each host, on the machine or in the hosts of an engine-per-host fleet,
//! and an etcd watch on the task keys; and psql in the Postgres containers those agents run.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::converge::engine::cli;
use crate::engine_fleet::EngineFleet;
use crate::procs::{Proc, Stack, StackOptions, start_agents};
use crate::tasks::{TaskWatch, task_id};

/// The processes of one berth fleet. Dropped, the agents stop first (the fields drop in order), then the
/// watch, then etcd and the control plane with their directory (which holds the agents' data directories).
/// The containers the agents ran stay: [`Cluster::remove_leftovers`] removes those on the machine's engine,
/// an engine-per-host fleet's go with the fleet.
pub struct Cluster {
    agents: Vec<Proc>,
    pub watch: TaskWatch,
    pub stack: Stack,
    /// The API's host ids, in the order the agents were started.
    pub hosts: Vec<String>,
}

impl Cluster {
    /// Starts etcd and a control plane with `options`, a real agent for each of `hosts` (all on the machine's
    /// engine when `engines` is None, else host N in host N of `engines`), waits until every host is healthy,
    /// and starts the task watch.
    pub async fn start(
        options: StackOptions,
        hosts: Vec<String>,
        engines: Option<&EngineFleet>,
    ) -> Result<Cluster> {
        let stack = Stack::start(options).await?;
        let agents = start_agents(&stack, &hosts, engines).await?;
        let watch = TaskWatch::start(&stack.etcd.endpoint(), "/berth").await?;
        Ok(Cluster {
            agents,
            watch,
            stack,
            hosts,
        })
    }

    /// Kills the agents; their containers keep running. Before removing those, so that no reconcile pass
    /// brings back what is being removed.
    pub fn stop_agents(&mut self) {
        self.agents.clear();
    }

    /// Removes what the agents left on the machine's engine: every container labelled with one of this
    /// fleet's host ids (with its anonymous volumes), and the networks of the databases whose id starts with
    /// `db_prefix` (berth names a database's network `berth-<id>`). For a `Drop`: failures are ignored.
    pub fn remove_leftovers(&self, db_prefix: &str) {
        for h in &self.hosts {
            if let Ok(ids) = cli(&["ps", "-aq", "--filter", &format!("label=berth.host-id={h}")]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = cli(&args);
                }
            }
        }
        let prefix = format!("berth-{db_prefix}");
        if let Ok(names) = cli(&["network", "ls", "--format", "{{.Name}}"]) {
            for n in names.lines().filter(|n| n.starts_with(&prefix)) {
                let _ = cli(&["network", "rm", n]);
            }
        }
    }

    /// Creates database `id` with `spec` and waits (at most `limit`) for its create task to complete; an
    /// error with the task's log unless it did. When it ended.
    pub async fn create(&self, id: &str, spec: &Value, limit: Duration) -> Result<Instant> {
        let created = self
            .stack
            .post("/v1/databases", &json!({"id": id, "spec": spec}))
            .await?;
        self.wait_task(id, &task_id(&created)?, limit).await
    }

    /// Waits (at most `limit`) until task `task` of database `db` ended; an error with its log unless it
    /// completed. When it ended.
    pub async fn wait_task(&self, db: &str, task: &str, limit: Duration) -> Result<Instant> {
        self.watch
            .wait_completed(&self.stack, db, task, limit)
            .await
    }

    /// Task `task` of database `db`'s log, each line at its offset in seconds from `from`.
    pub async fn task_log(
        &self,
        db: &str,
        task: &str,
        from: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        crate::tasks::task_log(&self.stack, db, task, from).await
    }
}

/// psql as the superuser in `container` on `engine` (a `DOCKER_HOST`; None: the machine's engine), in
/// database `app`, run off the async runtime ([`test_support::psql::psql`]): whether it succeeded, and its
/// output.
pub async fn psql(engine: Option<&str>, container: &str, sql: &str) -> (bool, String) {
    let (engine, container, sql) = (
        engine.map(str::to_string),
        container.to_string(),
        sql.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        test_support::psql::psql(engine.as_deref(), &container, "app", &sql)
    })
    .await
    .unwrap_or_else(|e| (false, e.to_string()))
}

/// [`psql`], its output, or an error with it naming the container.
pub async fn query(engine: Option<&str>, container: &str, sql: &str) -> Result<String> {
    match psql(engine, container, sql).await {
        (true, out) => Ok(out),
        (false, out) => bail!("psql in {container}: {out}"),
    }
}
