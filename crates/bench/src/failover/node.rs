//! One configuration's fleet: etcd and a control plane started with that configuration's Patroni timings,
//! two agents in the hosts of the engine-per-host fleet, and database `app` with one node `n1` on both hosts.
//! What the runs ask of it: which instance is the primary, whether an instance accepts a write, whether an
//! instance is back as a streaming replica.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cluster::{Cluster, psql};
use crate::engine_fleet::EngineFleet;
use crate::procs::StackOptions;

/// How long a leader, a write or a rejoin may take before the run is declared broken: several times the
/// longest ttl measured, so a slow machine is not mistaken for a broken failover.
pub const LIMIT: Duration = Duration::from_secs(240);
/// The pause between two write probes (each is a `docker exec` of psql, itself 0.1-0.3 s).
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// The table every probe inserts a row into.
const TABLE: &str = "probes";

/// Patroni's three timeouts in seconds, as passed to the control plane's `--patroni-*` flags.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Timings {
    fn flags(&self) -> Vec<String> {
        vec![
            format!("--patroni-ttl={}", self.ttl),
            format!("--patroni-loop-wait={}", self.loop_wait),
            format!("--patroni-retry-timeout={}", self.retry_timeout),
        ]
    }
}

/// A write probe that succeeded: when psql returned (from the caller's start), and how long that one
/// `docker exec` took (the measurement's resolution).
pub struct Accepted {
    pub after: Duration,
    pub probe: Duration,
}

/// The fleet of one configuration. Dropping it stops the agents and the stack; the containers they leave
/// on the engines go with the fleet's `clean`.
pub struct Node<'f> {
    fleet: &'f EngineFleet,
    /// Its hosts are host-1 and host-2 of the fleet, in order.
    pub cluster: Cluster,
    pub db: String,
}

impl<'f> Node<'f> {
    /// Starts etcd, a control plane with `timings` and the agents of the fleet's first two hosts, creates the
    /// database (`tag` names its hosts and database), and waits until it has a primary, a streaming replica
    /// and the probe table on both.
    pub async fn start(fleet: &'f EngineFleet, tag: &str, timings: Timings) -> Result<Node<'f>> {
        let options = StackOptions {
            reconcile: true,
            grpc_ip: Some(fleet.gateway.clone()),
            control_plane_args: timings.flags(),
            ..Default::default()
        };
        let hosts: Vec<String> = (1..=2).map(|i| format!("{tag}-host-{i}")).collect();
        let node = Node {
            fleet,
            cluster: Cluster::start(options, hosts, Some(fleet)).await?,
            db: format!("{tag}-db"),
        };
        let nodes = json!([{"name": "n1", "host_ids": node.cluster.hosts}]);
        let spec = json!({"database_name": "app", "nodes": nodes});
        node.cluster.create(&node.db, &spec, LIMIT).await?;
        let (primary, replica) = node.roles_settled().await?;
        let (ok, out) = node
            .psql(
                primary,
                &format!(
                    "CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"
                ),
            )
            .await;
        if !ok {
            bail!("create the probe table on the primary: {out}");
        }
        node.cluster
            .stack
            .wait_for("the probe table on the replica", LIMIT, || async {
                node.psql(replica, &format!("SELECT count(*) FROM {TABLE}"))
                    .await
                    .0
                    .then_some(())
            })
            .await?;
        Ok(node)
    }

    /// Instance id of host `i`'s (0-based) instance.
    pub fn instance(&self, i: usize) -> String {
        format!("{}-n1-{}", self.db, self.cluster.hosts[i])
    }

    fn container(&self, i: usize) -> String {
        format!("berth-{}-{}", self.cluster.hosts[i], self.instance(i))
    }

    /// psql in host `i`'s instance, on its host's engine: (succeeded, output).
    async fn psql(&self, i: usize, sql: &str) -> (bool, String) {
        psql(
            Some(&self.fleet.hosts[i].docker_host),
            &self.container(i),
            sql,
        )
        .await
    }

    /// (primary, replica) by host index when the API shows both instances `available`, one the primary and
    /// one the replica (for Patroni 4 a replica is available only once it streams, ADR 016); None otherwise.
    async fn roles(&self) -> Option<(usize, usize)> {
        let d = self
            .cluster
            .stack
            .get(&format!("/v1/databases/{}", self.db))
            .await
            .ok()?;
        let role = |i: usize| -> Option<String> {
            d["instances"]
                .as_array()?
                .iter()
                .find(|x| x["id"] == self.instance(i).as_str() && x["state"] == "available")
                .and_then(|x| x["role"].as_str().map(str::to_string))
        };
        match (role(0)?.as_str(), role(1)?.as_str()) {
            ("primary", "replica") => Some((0, 1)),
            ("replica", "primary") => Some((1, 0)),
            _ => None,
        }
    }

    /// Waits until one instance is the primary and the other a replica that Postgres itself says is in recovery
    /// and that the primary's `pg_stat_replication` shows streaming (Patroni names the connection after the
    /// member). (primary, replica).
    pub async fn roles_settled(&self) -> Result<(usize, usize)> {
        self.cluster
            .stack
            .wait_for("a primary and a streaming replica", LIMIT, || async {
                let (p, r) = self.roles().await?;
                let recovering = self.psql(r, "SELECT pg_is_in_recovery()").await;
                let streaming = self
                    .psql(
                        p,
                        &format!(
                            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' \
                             AND application_name = '{}'",
                            self.instance(r)
                        ),
                    )
                    .await;
                let t = |s: &str| (true, s.to_string());
                (recovering == t("t") && streaming == t("1")).then_some((p, r))
            })
            .await
            .with_context(|| format!("database {}: {}", self.db, self.cluster.stack.log_tails(10)))
    }

    /// [`Node::roles_settled`], then a row written on the primary is read on the replica: the replica replays
    /// the primary's WAL, on its timeline. A healed old primary may show as a streaming replica for a moment
    /// before Patroni stops it to rewind it; cutting the new primary then would leave no instance to promote.
    /// The state every run starts from, and a healed primary's rejoin. (primary, replica).
    pub async fn settled(&self) -> Result<(usize, usize)> {
        let started = Instant::now();
        loop {
            let (p, r) = self.roles_settled().await?;
            let (ok, id) = self
                .psql(
                    p,
                    &format!("INSERT INTO {TABLE} DEFAULT VALUES RETURNING id"),
                )
                .await;
            if ok {
                let sql = format!("SELECT count(*) FROM {TABLE} WHERE id = {id}");
                self.cluster
                    .stack
                    .wait_for("the primary's row on the replica", LIMIT, || async {
                        (self.psql(r, &sql).await == (true, "1".to_string())).then_some(())
                    })
                    .await
                    .with_context(|| {
                        format!("database {}: {}", self.db, self.cluster.stack.log_tails(10))
                    })?;
                return Ok((p, r));
            }
            // The roles changed in between: wait for them again.
            if started.elapsed() > LIMIT {
                bail!(
                    "{} accepted no write within {LIMIT:?}: {id}",
                    self.instance(p)
                );
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }

    /// Probes host `i`'s instance with an `INSERT` every [`PROBE_PAUSE`] until one is accepted; the time from
    /// `since` to the return of that psql.
    pub async fn first_write(&self, i: usize, since: Instant) -> Result<Accepted> {
        let sql = format!("SET statement_timeout = '2s'; INSERT INTO {TABLE} DEFAULT VALUES");
        loop {
            let started = Instant::now();
            let (ok, out) = self.psql(i, &sql).await;
            if ok {
                return Ok(Accepted {
                    after: since.elapsed(),
                    probe: started.elapsed(),
                });
            }
            if since.elapsed() > LIMIT {
                bail!(
                    "{} accepted no write within {LIMIT:?}: {out}",
                    self.instance(i)
                );
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }

    /// When host `i`'s instance first logged a line containing `needle` since `since`, by the engine's
    /// timestamps (Patroni writes its log to the container's stderr); None if it did not.
    pub async fn logged_at(
        &self,
        i: usize,
        since: chrono::DateTime<chrono::Utc>,
        needle: &str,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let engine = self.fleet.hosts[i].docker_host.clone();
        let container = self.container(i);
        let since = since.to_rfc3339();
        let out = tokio::task::spawn_blocking(move || {
            test_support::psql::docker(Some(&engine))
                .args(["logs", "--timestamps", "--since", &since, &container])
                .output()
        })
        .await
        .ok()?
        .ok()?;
        let text = [out.stdout, out.stderr].concat();
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .min()
    }

    /// Starts watching the node's leader key in etcd (`/berth/patroni/{db}/n1/leader`): when it is deleted
    /// (its lease expired) and when it is next written (a member took it).
    pub async fn watch_leader_key(&self) -> Result<LeaderKeyWatch> {
        let mut client =
            etcd_client::Client::connect([self.cluster.stack.etcd.endpoint()], None).await?;
        let key = format!("/berth/patroni/{}/n1/leader", self.db);
        let mut stream = client.watch(key, None).await?;
        let seen: std::sync::Arc<std::sync::Mutex<LeaderKeyEvents>> = Default::default();
        let into = seen.clone();
        let task = tokio::spawn(async move {
            // The client lives as long as its watch.
            let _client = client;
            while let Ok(Some(resp)) = stream.message().await {
                let at = Instant::now();
                let mut e = into.lock().expect("leader key events");
                for event in resp.events() {
                    match event.event_type() {
                        etcd_client::EventType::Delete => {
                            e.expired.get_or_insert(at);
                        }
                        etcd_client::EventType::Put if e.expired.is_some() => {
                            e.taken.get_or_insert(at);
                        }
                        etcd_client::EventType::Put => {}
                    }
                }
            }
        });
        Ok(LeaderKeyWatch { seen, task })
    }

    /// POSTs `body` to `path`: the answer's JSON, or None when the control plane has no such route (its
    /// fallbacks' 404 "no such resource" or 405).
    pub async fn post_if_routed(&self, path: &str, body: &Value) -> Result<Option<Value>> {
        let resp = self
            .cluster
            .stack
            .http
            .post(format!("{}{path}", self.cluster.stack.api))
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.as_u16() == 405 || (status.as_u16() == 404 && text.contains("no such resource")) {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        Ok(Some(serde_json::from_str(&text)?))
    }
}

/// When the leader key was deleted and when it was next written, as far as seen yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeaderKeyEvents {
    pub expired: Option<Instant>,
    pub taken: Option<Instant>,
}

/// A watch of a node's leader key; stops when dropped.
pub struct LeaderKeyWatch {
    seen: std::sync::Arc<std::sync::Mutex<LeaderKeyEvents>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderKeyWatch {
    pub fn events(&self) -> LeaderKeyEvents {
        *self.seen.lock().expect("leader key events")
    }
}

impl Drop for LeaderKeyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
