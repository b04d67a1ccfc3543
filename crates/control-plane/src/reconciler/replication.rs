//! [`plan::Step::Replicate`]: the nodes of a database become one database (ADR 019). On
//! every node's primary (the instance holding the node's leader key when the step runs),
//! pglogical and the DDL replication are installed and the node subscribes to every other
//! node's primary.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agent_proto::ExecRequest;
use plan::routing::{PostgresEndpoint, reach};
use secrecy::ExposeSecret;

use super::pass::Pass;
use super::{ReconcileError, Reconciler};
use crate::patroni::pglogical::{self, Provider};

/// How long the step waits for every subscription to replicate: until then a provider's
/// slot may not exist yet, and a write there would never reach the subscriber.
const REPLICATING_TIMEOUT: Duration = Duration::from_secs(90);

/// The primary of one node: where it runs, and how the other nodes dial it.
struct Primary {
    host_id: String,
    instance_id: String,
    engine_id: String,
    endpoint: PostgresEndpoint,
}

impl Reconciler {
    /// Configures replication between `nodes` (each with a running primary, as the planner
    /// checked) and records them in the credentials document, so the next plan has nothing
    /// left to do. Idempotent: a step that failed halfway is run again whole.
    ///
    /// Errors: a node without a primary, a primary on another engine whose published port is
    /// not known, psql failing on a primary, or a subscription not replicating within
    /// [`REPLICATING_TIMEOUT`].
    pub(crate) async fn replicate(
        &self,
        pass: &Pass,
        nodes: &[String],
    ) -> Result<(), ReconcileError> {
        let db = &pass.db;
        let database = &db.spec.database_name;
        let creds = self.credentials(&db.record.id).await?;
        // Read afresh: a leader may have changed since the plan was made.
        let patroni = crate::patroni::read(&*self.store, &db.record.id).await?;
        let placements = self.fleet.placements();
        let mut primaries: BTreeMap<&str, Primary> = BTreeMap::new();
        for node in nodes {
            let leader = patroni
                .get(node)
                .and_then(|n| n.leader.clone())
                .ok_or_else(|| {
                    ReconcileError::Step(format!(
                        "node {node} has no primary (no instance holds its leader key)"
                    ))
                })?;
            let record = pass.records.get(&leader);
            let host_id = record
                .map(|r| r.host_id.clone())
                .or_else(|| pass.desired.get(&leader).map(|d| d.plan.host_id.clone()))
                .ok_or_else(|| {
                    ReconcileError::Step(format!(
                        "node {node}'s primary {leader} is on no known host"
                    ))
                })?;
            let placement = placements.get(&host_id);
            let engine_id = placement.map(|p| p.engine_id.clone()).unwrap_or_default();
            let address = placement.and_then(|p| p.address.clone());
            let endpoint = PostgresEndpoint {
                node: node.clone(),
                host_id: host_id.clone(),
                engine_id: engine_id.clone(),
                alias: crate::desired::postgres_alias(node, &host_id),
                port: crate::patroni::config::POSTGRES_PORT,
                published: address.zip(record.and_then(|r| r.postgres_port())),
            };
            primaries.insert(
                node,
                Primary {
                    host_id,
                    instance_id: leader,
                    engine_id,
                    endpoint,
                },
            );
        }

        // Every node first: a subscription asks its provider for its pglogical node.
        let passfile = pglogical::passfile(creds.superuser_password.expose_secret());
        for (node, p) in &primaries {
            self.write_passfile(p, &passfile).await?;
            let sql = pglogical::node_sql(node, database);
            self.psql(&p.host_id, &p.instance_id, database, sql, &[])
                .await?;
        }
        for (node, p) in &primaries {
            for (provider, q) in primaries.iter().filter(|(n, _)| n != &node) {
                let (host, port) = reach(&q.endpoint, &p.host_id, &p.engine_id)
                    .map_err(|e| ReconcileError::Step(e.to_string()))?;
                let provider = Provider {
                    node: provider,
                    subscriber: node,
                    host: &host,
                    port,
                };
                let sql = pglogical::subscribe_sql(&provider, database);
                self.psql(&p.host_id, &p.instance_id, database, sql, &[])
                    .await?;
            }
        }
        self.wait_replicating(&primaries, database).await?;

        // Re-read: another step of the pass may have changed the document meanwhile.
        let mut creds = self.credentials(&db.record.id).await?;
        creds.replicated_nodes = nodes.iter().cloned().collect::<BTreeSet<_>>();
        self.put_credentials(&db.record.id, &creds).await?;
        Ok(())
    }

    /// Writes [`pglogical::PASSFILE`] in the primary, the password on stdin.
    async fn write_passfile(&self, p: &Primary, content: &str) -> Result<(), ReconcileError> {
        let out = self
            .agents
            .exec(
                &p.host_id,
                ExecRequest {
                    instance_id: p.instance_id.clone(),
                    argv: pglogical::passfile_argv(),
                    stdin: content.as_bytes().to_vec(),
                    user: "postgres".into(),
                    timeout_ms: 30_000,
                },
            )
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?;
        if out.exit_code != 0 {
            // The command's stderr cannot hold the password: it only ever reads it.
            return Err(ReconcileError::Step(format!(
                "writing the replication password file on {} exited {}: {}",
                p.instance_id,
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Waits until every subscription on every primary replicates (its slot on the provider
    /// exists from then on).
    async fn wait_replicating(
        &self,
        primaries: &BTreeMap<&str, Primary>,
        database: &str,
    ) -> Result<(), ReconcileError> {
        let sql = "\\pset format unaligned\n\\pset tuples_only on\n\
                   SELECT subscription_name || ' ' || status \
                   FROM pglogical.show_subscription_status() WHERE status <> 'replicating';\n";
        let started = Instant::now();
        loop {
            let mut pending = Vec::new();
            for (node, p) in primaries {
                let out = self
                    .psql(&p.host_id, &p.instance_id, database, sql.to_string(), &[])
                    .await?;
                pending.extend(
                    out.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| format!("{node}: {l}")),
                );
            }
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() > REPLICATING_TIMEOUT {
                return Err(ReconcileError::Step(format!(
                    "subscriptions not replicating after {}s: {}",
                    REPLICATING_TIMEOUT.as_secs(),
                    pending.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
