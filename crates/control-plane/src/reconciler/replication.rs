//! [`plan::Step::Replicate`]: the nodes of a database become one database (ADR 019), and
//! nodes join and leave it (ADR 020). On every node's primary (the instance holding the
//! node's leader key when the step runs), pglogical and the DDL replication are installed
//! and the node subscribes to every other node; a joining node is copied from a source
//! node first; the nodes that stay unsubscribe from a node that leaves, and slots no
//! subscription reads are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use plan::routing::{PostgresEndpoint, reach};
use secrecy::ExposeSecret;
use serde_json::Map;

use super::pass::Pass;
use super::{ReconcileError, Reconciler};
use crate::patroni::pglogical::{self, Provider, Start};
use crate::patroni::pglogical_join::{self as join, Membership};

/// How long the step waits for a subscription that neither replicates nor copies
/// (`down`, `disabled`, ...) to replicate: until then a provider's slot may not exist yet,
/// and a write there would never reach the subscriber.
const REPLICATING_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a joining node's copy (a subscription `initializing`) may take: its time grows
/// with the data, so only a copy that makes no end is given up.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// One node as the step reaches it: its primary, and every instance of it.
struct NodeAt {
    host_id: String,
    instance_id: String,
    engine_id: String,
    /// The primary first, then the node's other instances.
    endpoints: Vec<PostgresEndpoint>,
}

impl Reconciler {
    /// Brings replication to `nodes` (each with a running primary, as the planner checked)
    /// from the nodes recorded in the credentials document, and records `nodes`, so the
    /// next plan has nothing left to do. Idempotent: a step that failed halfway is run
    /// again whole.
    ///
    /// Errors: a node of `nodes` without a primary, a primary on another engine whose
    /// published port is not known, psql failing on a primary, copying the roles failing,
    /// or a subscription not replicating within [`REPLICATING_TIMEOUT`] (a copy: within
    /// [`COPY_TIMEOUT`]).
    pub(crate) async fn replicate(
        &self,
        pass: &Pass,
        nodes: &[String],
    ) -> Result<(), ReconcileError> {
        let db = &pass.db;
        let database = &db.spec.database_name;
        let creds = self.credentials(&db.record.id).await?;
        let recorded = creds.replicated_nodes.clone();
        // Read afresh: a leader may have changed since the plan was made.
        let patroni = crate::patroni::read(&*self.store, &db.record.id).await?;
        let mut at: BTreeMap<String, NodeAt> = BTreeMap::new();
        for node in nodes {
            let n = self.node_at(pass, &patroni, node)?.ok_or_else(|| {
                ReconcileError::Step(format!(
                    "node {node} has no primary (no instance holds its leader key)"
                ))
            })?;
            at.insert(node.clone(), n);
        }
        // A node on its way out still runs until after this step: a source, if it must.
        for node in recorded.iter().filter(|n| !nodes.contains(n)) {
            if let Some(n) = self.node_at(pass, &patroni, node)? {
                at.insert(node.clone(), n);
            }
        }

        let passfile = pglogical::passfile(creds.superuser_password.expose_secret());
        for n in at.values() {
            self.write_passfile(n, &passfile).await?;
        }
        let mut holders = BTreeSet::new();
        if recorded.is_empty() {
            for node in nodes {
                let out = self
                    .psql_on(&at[node], database, join::HOLDS_OBJECTS_SQL.into())
                    .await?;
                if out.trim() == "t" {
                    holders.insert(node.clone());
                }
            }
        }
        let m = join::membership(&db.spec.nodes, nodes, &recorded, &holders);
        if let Some(source) = m
            .joins
            .iter()
            .map(|(_, s)| s)
            .find(|s| !at.contains_key(*s))
        {
            return Err(ReconcileError::Step(format!(
                "node {source}, the copy's source, has no primary"
            )));
        }

        self.unsubscribe_leaving(pass, &at, &m, database).await?;
        // The nodes that hold what they must subscribe to each other as they are.
        let mut core: Vec<String> = m.founders.iter().chain(&m.members).cloned().collect();
        // A table made while its node ran alone (no DDL replication yet) joins a
        // replication set here: else neither its rows nor its changes would leave the node.
        for node in &core {
            let sql = format!(
                "{}{}",
                pglogical::node_sql(node, database),
                join::REPLICATE_EXISTING_TABLES_SQL
            );
            self.psql_on(&at[node], database, sql).await?;
        }
        for a in &core {
            for b in core.iter().filter(|b| *b != a) {
                self.subscribe(&at, database, b, a, Start::Empty).await?;
            }
        }
        self.wait_replicating(&at, &core, database).await?;

        for (node, source) in &m.joins {
            self.join(pass, &at, &core, node, source).await?;
            core.push(node.clone());
        }
        self.drop_unused_slots(pass, &at, &core, database).await?;

        // The hosts each node's subscribers list, as far as the spec wants them: an
        // instance whose port is not published yet is left out, and the next plan, which
        // sees it missing, configures the subscriptions again.
        let listed: BTreeMap<String, BTreeSet<String>> = nodes
            .iter()
            .map(|n| {
                let hosts = at[n]
                    .endpoints
                    .iter()
                    .filter(|e| {
                        pass.desired
                            .values()
                            .any(|d| d.plan.host_id == e.host_id && d.plan.kind.node() == Some(n))
                    })
                    .filter(|e| {
                        nodes
                            .iter()
                            .filter(|m| *m != n)
                            .all(|m| reach(e, &at[m].host_id, &at[m].engine_id).is_ok())
                    })
                    .map(|e| e.host_id.clone())
                    .collect();
                (n.clone(), hosts)
            })
            .collect();
        // Re-read: another step of the pass may have changed the document meanwhile.
        let mut creds = self.credentials(&db.record.id).await?;
        creds.replicated_nodes = nodes.iter().cloned().collect::<BTreeSet<_>>();
        creds.replicated_hosts = listed;
        self.put_credentials(&db.record.id, &creds).await?;
        Ok(())
    }

    /// Copies `node` from `source` and subscribes it to every node of `core` and every node
    /// of `core` to it (ADR 020): the roles first, then its subscription to `source`, which
    /// copies the structure and data and forwards every origin, then the DDL replication
    /// and the replication sets of the copied tables, then the subscriptions both ways with
    /// the other nodes, and then the one to `source` forwards `source`'s changes alone.
    async fn join(
        &self,
        pass: &Pass,
        at: &BTreeMap<String, NodeAt>,
        core: &[String],
        node: &str,
        source: &str,
    ) -> Result<(), ReconcileError> {
        let database = &pass.db.spec.database_name;
        let (j, s) = (&at[node], &at[source]);
        pass.log
            .line(format!("node {node} joins: copying {source}"), Map::new())
            .await?;
        let hosts = self.hosts(s, j)?;
        let dsn = pglogical::provider_dsn(
            &Provider {
                node: source,
                subscriber: node,
                hosts: &hosts,
            },
            database,
        );
        self.exec_on(j, join::copy_roles_argv(&dsn), &[], "copying the roles")
            .await?;
        let sql = pglogical::local_node_sql(node, database);
        self.psql_on(j, database, sql).await?;
        let started = Instant::now();
        self.subscribe(at, database, source, node, Start::Seed)
            .await?;
        self.wait_replicating(at, &[node.to_string()], database)
            .await?;
        pass.log
            .line(
                format!(
                    "node {node} holds {source}'s copy after {:.1}s",
                    started.elapsed().as_secs_f64()
                ),
                Map::new(),
            )
            .await?;
        let sql = format!(
            "{}{}",
            pglogical::node_sql(node, database),
            join::REPLICATE_EXISTING_TABLES_SQL
        );
        self.psql_on(j, database, sql).await?;
        for other in core.iter().filter(|o| *o != source) {
            self.subscribe(at, database, other, node, Start::Empty)
                .await?;
        }
        for other in core {
            self.subscribe(at, database, node, other, Start::Empty)
                .await?;
        }
        let mut all: Vec<String> = core.to_vec();
        all.push(node.to_string());
        self.wait_replicating(at, &all, database).await?;
        // Every other node's changes now come directly: the forwarding stops.
        let sql = pglogical::stop_forwarding_sql(source, node);
        self.psql_on(j, database, sql).await?;
        self.wait_replicating(at, &[node.to_string()], database)
            .await?;
        Ok(())
    }

    /// Unsubscribes the nodes that stay and were configured before (`m.members`) from each
    /// node that leaves, and that node from them when it still has a primary. First in the
    /// step: a subscription to a node that is gone would never replicate, and the step
    /// waits for every subscription of the nodes that stay.
    async fn unsubscribe_leaving(
        &self,
        pass: &Pass,
        at: &BTreeMap<String, NodeAt>,
        m: &Membership,
        database: &str,
    ) -> Result<(), ReconcileError> {
        for node in &m.leaves {
            pass.log
                .line(
                    format!("node {node} leaves: unsubscribing every node from it"),
                    Map::new(),
                )
                .await?;
            // Its own subscriptions first: their walsenders keep the others' slots active.
            if let Some(l) = at.get(node) {
                let names: Vec<String> = m
                    .members
                    .iter()
                    .map(|p| pglogical::subscription_name(p, node))
                    .collect();
                let sql = join::drop_subscriptions_sql(&names);
                self.psql_on(l, database, sql).await?;
            }
        }
        for node in &m.members {
            let names: Vec<String> = m
                .leaves
                .iter()
                .map(|l| pglogical::subscription_name(l, node))
                .collect();
            if !names.is_empty() {
                let sql = join::drop_subscriptions_sql(&names);
                self.psql_on(&at[node], database, sql).await?;
            }
        }
        Ok(())
    }

    /// Drops, on every node of `staying` (all configured by now), each slot of berth's
    /// subscriptions that no subscription of any of them names: those of a node that left,
    /// or of a subscription dropped while its provider could not be reached.
    async fn drop_unused_slots(
        &self,
        pass: &Pass,
        at: &BTreeMap<String, NodeAt>,
        staying: &[String],
        database: &str,
    ) -> Result<(), ReconcileError> {
        let mut in_use = BTreeSet::new();
        for node in staying {
            let out = self
                .psql_on(&at[node], database, join::SUBSCRIPTION_SLOTS_SQL.into())
                .await?;
            in_use.extend(lines(&out));
        }
        for node in staying {
            let sql = join::drop_unused_slots_sql(&in_use);
            let out = self.psql_on(&at[node], database, sql).await?;
            let dropped: Vec<String> = lines(&out)
                .map(|l| l.split('|').next().unwrap_or_default().to_string())
                .collect();
            if !dropped.is_empty() {
                pass.log
                    .line(
                        format!(
                            "node {node}: dropped replication slots no subscription reads: {}",
                            dropped.join(", ")
                        ),
                        Map::new(),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// `node`'s primary and every instance of it, or None when no instance holds its
    /// leader key.
    fn node_at(
        &self,
        pass: &Pass,
        patroni: &BTreeMap<String, plan::PatroniNode>,
        node: &str,
    ) -> Result<Option<NodeAt>, ReconcileError> {
        let Some(leader) = patroni.get(node).and_then(|n| n.leader.clone()) else {
            return Ok(None);
        };
        let placements = self.fleet.placements();
        let host_of = |id: &str| {
            pass.records
                .get(id)
                .map(|r| r.host_id.clone())
                .or_else(|| pass.desired.get(id).map(|d| d.plan.host_id.clone()))
        };
        let endpoint = |id: &str, host_id: &str| {
            let placement = placements.get(host_id);
            let address = placement.and_then(|p| p.address.clone());
            PostgresEndpoint {
                node: node.to_string(),
                host_id: host_id.to_string(),
                engine_id: placement.map(|p| p.engine_id.clone()).unwrap_or_default(),
                alias: crate::desired::postgres_alias(node, host_id),
                port: crate::patroni::config::POSTGRES_PORT,
                published: address.zip(pass.records.get(id).and_then(|r| r.postgres_port())),
            }
        };
        let host_id = host_of(&leader).ok_or_else(|| {
            ReconcileError::Step(format!(
                "node {node}'s primary {leader} is on no known host"
            ))
        })?;
        let mut endpoints = vec![endpoint(&leader, &host_id)];
        let others: BTreeSet<String> = pass
            .desired
            .iter()
            .filter(|(_, d)| d.plan.kind.node() == Some(node))
            .map(|(id, _)| id.clone())
            .chain(
                pass.records
                    .iter()
                    .filter(|(_, r)| r.kind.node() == Some(node))
                    .map(|(id, _)| id.clone()),
            )
            .filter(|id| *id != leader)
            .collect();
        for id in others {
            if let Some(h) = host_of(&id) {
                endpoints.push(endpoint(&id, &h));
            }
        }
        Ok(Some(NodeAt {
            engine_id: endpoints[0].engine_id.clone(),
            host_id,
            instance_id: leader,
            endpoints,
        }))
    }

    /// Where `subscriber`'s primary reaches every instance of `provider`: the primary is
    /// required; another instance whose port is not published yet is left out (libpq keeps
    /// the writable one among those listed).
    fn hosts(
        &self,
        provider: &NodeAt,
        subscriber: &NodeAt,
    ) -> Result<Vec<(String, u16)>, ReconcileError> {
        let mut hosts = Vec::new();
        for (i, e) in provider.endpoints.iter().enumerate() {
            match reach(e, &subscriber.host_id, &subscriber.engine_id) {
                Ok(h) => hosts.push(h),
                Err(e) if i == 0 => return Err(ReconcileError::Step(e.to_string())),
                Err(_) => {}
            }
        }
        Ok(hosts)
    }

    /// Subscribes `subscriber` to `provider` (both in `at`), idempotently.
    async fn subscribe(
        &self,
        at: &BTreeMap<String, NodeAt>,
        database: &str,
        provider: &str,
        subscriber: &str,
        start: Start,
    ) -> Result<(), ReconcileError> {
        let s = &at[subscriber];
        let hosts = self.hosts(&at[provider], s)?;
        let p = Provider {
            node: provider,
            subscriber,
            hosts: &hosts,
        };
        let sql = pglogical::subscribe_sql(&p, database, start);
        self.psql_on(s, database, sql).await.map(|_| ())
    }

    async fn psql_on(
        &self,
        n: &NodeAt,
        database: &str,
        sql: String,
    ) -> Result<String, ReconcileError> {
        self.psql(&n.host_id, &n.instance_id, database, sql, &[])
            .await
    }

    /// Runs `argv` as `postgres` in `n`'s primary with `stdin`; `what` names it in the
    /// error, which holds the command's stderr (never `stdin`).
    async fn exec_on(
        &self,
        n: &NodeAt,
        argv: Vec<String>,
        stdin: &[u8],
        what: &str,
    ) -> Result<(), ReconcileError> {
        self.exec_postgres(
            &n.host_id,
            &n.instance_id,
            argv,
            stdin,
            std::time::Duration::from_secs(300),
            what,
            &[],
        )
        .await
        .map(|_| ())
    }

    /// Writes [`pglogical::PASSFILE`] in the primary, the password on stdin (the command
    /// only ever reads it, so its stderr cannot hold it).
    async fn write_passfile(&self, n: &NodeAt, content: &str) -> Result<(), ReconcileError> {
        let what = "writing the replication password file";
        self.exec_on(n, pglogical::passfile_argv(), content.as_bytes(), what)
            .await
    }

    /// Waits until every subscription on the primaries of `nodes` replicates (its slot on
    /// the provider exists from then on; a copy has finished): [`REPLICATING_TIMEOUT`] from
    /// the first time one is neither replicating nor copying, [`COPY_TIMEOUT`] in all.
    async fn wait_replicating(
        &self,
        at: &BTreeMap<String, NodeAt>,
        nodes: &[String],
        database: &str,
    ) -> Result<(), ReconcileError> {
        let sql = "\\pset format unaligned\n\\pset tuples_only on\n\
                   SELECT subscription_name || ' ' || status \
                   FROM pglogical.show_subscription_status() WHERE status <> 'replicating';\n";
        let started = Instant::now();
        let mut stuck_since: Option<Instant> = None;
        loop {
            let mut pending = Vec::new();
            for node in nodes {
                let out = self.psql_on(&at[node], database, sql.to_string()).await?;
                pending.extend(lines(&out).map(|l| format!("{node}: {l}")));
            }
            if pending.is_empty() {
                return Ok(());
            }
            if pending.iter().all(|p| p.ends_with(" initializing")) {
                stuck_since = None;
            } else {
                stuck_since.get_or_insert_with(Instant::now);
            }
            let stuck = stuck_since.is_some_and(|t| t.elapsed() > REPLICATING_TIMEOUT);
            if stuck || started.elapsed() > COPY_TIMEOUT {
                return Err(ReconcileError::Step(format!(
                    "subscriptions not replicating after {}s: {}",
                    started.elapsed().as_secs(),
                    pending.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The non-empty lines of psql's unaligned output.
fn lines(out: &str) -> impl Iterator<Item = String> + '_ {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
}
