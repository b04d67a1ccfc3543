//! The database the backup benchmark measures: etcd, a control plane and one real agent on the machine's
//! engine, and database `app` with one node of one instance, backed up to the benchmark's S3 server. What the
//! run asks of it: SQL and commands in the primary's container, and the API's backup and restore operations.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cluster::{Cluster, query};
use crate::procs::StackOptions;
use crate::tasks::task_id;

use super::s3::S3Server;

/// How long a task may take before the run is declared broken: a backup or restore of a few GB on a loaded
/// machine takes minutes.
const TASK_LIMIT: Duration = Duration::from_secs(1800);

/// The repository's id in `backup_config`.
pub const REPOSITORY: &str = "main";

/// A database of one node on one host. Dropping it stops the agent, removes the host's containers and the
/// database's networks, then the stack (whose directory holds the agent's data directories).
pub struct Node {
    pub cluster: Cluster,
    /// The database's id.
    pub id: String,
    /// The primary's container on the machine's engine (its name stays across a restore: the instance id is
    /// the node's and the host's).
    pub container: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cluster.stop_agents();
        self.cluster.remove_leftovers(&self.id);
    }
}

impl Node {
    /// Starts the stack and one agent, creates the database with `s3` as its repository, and waits for the
    /// create task and the primary.
    pub async fn start(s3: &S3Server) -> Result<Node> {
        let tag = std::process::id() & 0xffff;
        let host = format!("bk{tag:04x}-host-1");
        let options = StackOptions {
            reconcile: true,
            ..Default::default()
        };
        let mut node = Node {
            cluster: Cluster::start(options, vec![host.clone()], None).await?,
            id: format!("bk{tag:04x}"),
            container: String::new(),
        };
        let spec = json!({
            "database_name": "app",
            "nodes": [{"name": "n1", "host_ids": [host]}],
            "backup_config": {"repositories": [s3.repository(REPOSITORY, "/berth")]},
        });
        node.cluster.create(&node.id, &spec, TASK_LIMIT).await?;
        node.container = node.primary().await?;
        Ok(node)
    }

    /// Waits until the database is available with its primary running; the primary's container.
    pub async fn primary(&self) -> Result<String> {
        let path = format!("/v1/databases/{}", self.id);
        self.cluster
            .stack
            .wait_for(
                "the database available with a primary",
                Duration::from_secs(300),
                || async {
                    let d = self.cluster.stack.get(&path).await.ok()?;
                    if d["state"] != "available" {
                        return None;
                    }
                    let primary = d["instances"]
                        .as_array()?
                        .iter()
                        .find(|i| i["role"] == "primary" && i["state"] == "available")?;
                    Some(format!(
                        "berth-{}-{}",
                        primary["host_id"].as_str()?,
                        primary["id"].as_str()?
                    ))
                },
            )
            .await
    }

    /// psql as the superuser in the primary's container, in database `app`; its output, or an error with it.
    pub async fn psql(&self, sql: &str) -> Result<String> {
        query(None, &self.container, sql).await
    }

    /// Runs `script` with `sh -c` as user postgres in the primary's container, and how long the `docker exec`
    /// took (its start-up, a few tens of ms, included). Exit codes in `ok` count as success (GNU tar exits 1
    /// when a file changed while it read it).
    pub async fn sh(&self, script: &str, ok: &[i32]) -> Result<(Duration, String)> {
        let args: Vec<String> = [
            "exec",
            "-u",
            "postgres",
            &self.container,
            "sh",
            "-c",
            script,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ok = ok.to_vec();
        let script = script.to_string();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = std::process::Command::new("docker")
                .args(&args)
                .output()
                .context("run docker exec")?;
            let took = started.elapsed();
            let code = out.status.code().unwrap_or(-1);
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if !ok.contains(&code) {
                bail!("`{script}` exited {code}: {text}");
            }
            Ok((took, text.trim().to_string()))
        })
        .await?
    }

    /// POSTs `body` to `path` (an operation that starts a task) and waits for the task to complete. The task's
    /// id and how long from the POST until the watch saw it completed.
    pub async fn operation(&self, path: &str, body: &Value) -> Result<(String, Duration)> {
        let started = Instant::now();
        let answer = self.cluster.stack.post(path, body).await?;
        let task = task_id(&answer)?;
        let ended = self.cluster.wait_task(&self.id, &task, TASK_LIMIT).await?;
        Ok((task, ended.duration_since(started)))
    }

    /// The node's backups as the API lists them (oldest first).
    pub async fn backups(&self) -> Result<Vec<Value>> {
        let list = self
            .cluster
            .stack
            .get(&format!("/v1/databases/{}/nodes/n1/backups", self.id))
            .await?;
        list["backups"]
            .as_array()
            .cloned()
            .with_context(|| format!("no backups in {list}"))
    }
}
