//! The replicated database the runs measure: etcd and a control plane, one agent in each host of the
//! engine-per-host fleet, and database `app` with one node per host (`n1` on host-1, ...) on the first hosts,
//! one instance each, replicating with pglogical (ADR 019). What the runs ask of it: SQL on a node's primary,
//! a steady writer on one, and a spec update that adds a node.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::cluster::{Cluster, query};
use crate::engine_fleet::EngineFleet;
use crate::procs::StackOptions;
use crate::tasks::task_id;

/// How long creating the database or a row's arrival may take before the run is declared broken.
pub const LIMIT: Duration = Duration::from_secs(300);

/// The fleet's database. Dropping it stops the agents and the stack; their containers go with the fleet.
pub struct Db<'f> {
    fleet: &'f EngineFleet,
    /// Its hosts are host-1.. of the fleet, in order.
    pub cluster: Cluster,
    pub id: String,
    /// How many of the hosts have a node.
    nodes: usize,
    /// How long the create task took (the nodes made and replicating).
    pub created_in: Duration,
}

impl<'f> Db<'f> {
    /// Starts the stack and an agent in each of the fleet's hosts, creates the database with a node on each
    /// of the first `nodes` hosts, and waits for its task.
    pub async fn start(fleet: &'f EngineFleet, nodes: usize) -> Result<Db<'f>> {
        let options = StackOptions {
            reconcile: true,
            grpc_ip: Some(fleet.gateway.clone()),
            ..Default::default()
        };
        let hosts: Vec<String> = (1..=fleet.hosts.len())
            .map(|i| format!("lag-host-{i}"))
            .collect();
        let mut db = Db {
            fleet,
            cluster: Cluster::start(options, hosts, Some(fleet)).await?,
            id: "lag-db".into(),
            nodes,
            created_in: Duration::ZERO,
        };
        let started = Instant::now();
        db.cluster
            .create(&db.id, &db.spec(nodes, None), LIMIT)
            .await?;
        db.created_in = started.elapsed();
        Ok(db)
    }

    /// The spec with a node on each of the first `nodes` hosts, the last copied from `source` if given.
    fn spec(&self, nodes: usize, source: Option<&str>) -> serde_json::Value {
        let mut list: Vec<_> = self.cluster.hosts[..nodes]
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"name": node_name(i), "host_ids": [h]}))
            .collect();
        if let (Some(source), Some(last)) = (source, list.last_mut()) {
            last["source_node"] = json!(source);
        }
        json!({"database_name": "app", "nodes": list})
    }

    /// How many nodes the database has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Adds a node on the next host, copied from `source` (`source_node`), and waits for the update's task.
    /// The task's id.
    pub async fn add_node(&mut self, source: &str) -> Result<String> {
        if self.nodes == self.cluster.hosts.len() {
            bail!("no host left for another node");
        }
        let spec = self.spec(self.nodes + 1, Some(source));
        let answer = self
            .cluster
            .stack
            .post(
                &format!("/v1/databases/{}", self.id),
                &json!({"spec": spec}),
            )
            .await?;
        let task = task_id(&answer)?;
        self.cluster.wait_task(&self.id, &task, LIMIT).await?;
        self.nodes += 1;
        Ok(task)
    }

    fn container(&self, i: usize) -> String {
        let host = &self.cluster.hosts[i];
        format!("berth-{host}-{}-{}-{host}", self.id, node_name(i))
    }

    /// psql on node `i`'s (0-based) instance, over its local socket on its host's engine; the output, or an
    /// error with psql's.
    pub async fn psql(&self, i: usize, sql: &str) -> Result<String> {
        query(
            Some(&self.fleet.hosts[i].docker_host),
            &self.container(i),
            sql,
        )
        .await
    }

    /// Waits until `sql` on node `i` prints `want`.
    pub async fn wait_for_value(&self, i: usize, sql: &str, want: &str) -> Result<()> {
        self.cluster
            .stack
            .wait_for(
                &format!("{sql} = {want} on {}", node_name(i)),
                LIMIT,
                || async { (self.psql(i, sql).await.ok()? == want).then_some(()) },
            )
            .await
    }

    /// Sends `statement(k)` for k = 0, 1, .. to one psql session on node `i`, `rate` a second on a fixed
    /// schedule, for `duration`; each is its own transaction (psql's autocommit). The statements go down
    /// psql's stdin, so a slow commit delays the later ones rather than dropping them. Returns how many were
    /// sent once psql has run them all.
    pub async fn write_steadily(
        &self,
        i: usize,
        rate: u32,
        duration: Duration,
        statement: impl Fn(u64) -> String,
    ) -> Result<u64> {
        let command = test_support::psql::psql_session(
            Some(&self.fleet.hosts[i].docker_host),
            &self.container(i),
            "app",
        );
        let mut psql = tokio::process::Command::from(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start psql for the writer")?;
        let mut stdin = psql.stdin.take().context("psql's stdin")?;
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < duration {
            ticks.tick().await;
            let line = format!("{}\n", statement(sent));
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            sent += 1;
        }
        stdin.write_all(b"\\q\n").await.ok();
        drop(stdin);
        let out = psql.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "the writer's psql on {} failed after {sent} statements: {}",
                node_name(i),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(sent)
    }
}

/// Node `i`'s (0-based) name: n1, n2, ...
pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}
