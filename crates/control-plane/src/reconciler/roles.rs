//! A service's two Postgres roles on every node's primary: the instance holding the node's
//! leader key in Patroni's DCS when the step runs.

use std::collections::BTreeSet;

use secrecy::ExposeSecret;

use super::pass::Pass;
use super::{ReconcileError, Reconciler};
use crate::credentials::{
    DatabaseCredentials, RoleVerifiers, create_roles_sql, drop_roles_sql, list_databases_sql,
    psql_argv,
};

impl Reconciler {
    /// Creates (or drops) a service's two roles on every node's primary, with the SQL on
    /// stdin so passwords never appear in a process list, an env or a log.
    ///
    /// Dropping first hands over or drops what the roles own or were granted in every
    /// database of the instance (`REASSIGN OWNED`/`DROP OWNED` act on the current database
    /// only), so a grant an operator made elsewhere cannot keep the role alive.
    pub(crate) async fn roles(
        &self,
        pass: &Pass,
        service_id: &str,
        create: bool,
    ) -> Result<(), ReconcileError> {
        let db = &pass.db;
        let mut creds: DatabaseCredentials = self.credentials(&db.record.id).await?;
        let secrets: Vec<String> = creds
            .services
            .get(service_id)
            .map(|c| {
                [&c.ro_password, &c.rw_password]
                    .map(|p| p.expose_secret().to_string())
                    .to_vec()
            })
            .unwrap_or_default();
        // Every desired node's leader (the planner only asks once each one runs); when
        // dropping, also the leaders of nodes on their way out. Read afresh: a leader may
        // have changed since the plan was made.
        let patroni = crate::patroni::read(&*self.store, &db.record.id).await?;
        let mut nodes: BTreeSet<String> = db.spec.nodes.iter().map(|n| n.name.clone()).collect();
        if !create {
            nodes.extend(
                pass.records
                    .values()
                    .filter_map(|r| r.kind.node().map(str::to_string)),
            );
        }
        let host_of = |id: &str| {
            pass.records
                .get(id)
                .map(|r| r.host_id.clone())
                .or_else(|| pass.desired.get(id).map(|d| d.plan.host_id.clone()))
        };
        let mut primaries: BTreeSet<(String, String)> = BTreeSet::new();
        for node in &nodes {
            let leader = patroni.get(node).and_then(|n| n.leader.clone());
            match leader.and_then(|l| Some((host_of(&l)?, l))) {
                Some(primary) => {
                    primaries.insert(primary);
                }
                // A node that is going away without a primary takes its roles with it.
                None if !create && !db.spec.nodes.iter().any(|n| &n.name == node) => {}
                None => {
                    return Err(ReconcileError::Step(format!(
                        "node {node} has no primary (no instance holds its leader key)"
                    )));
                }
            }
        }
        if primaries.is_empty() {
            return Err(ReconcileError::Step(
                "the database has no Postgres primary".into(),
            ));
        }
        for (host_id, instance_id) in primaries {
            let sql = if create {
                let svc = creds.services.get(service_id).ok_or_else(|| {
                    ReconcileError::Step(format!("no credentials for service {service_id}"))
                })?;
                create_roles_sql(&db.spec.database_name, service_id, &RoleVerifiers::of(svc))
            } else {
                let listed = self
                    .psql(
                        &host_id,
                        &instance_id,
                        &db.spec.database_name,
                        list_databases_sql(),
                        &secrets,
                    )
                    .await?;
                let databases: Vec<String> = listed
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                drop_roles_sql(service_id, &databases, &db.spec.database_name)
            };
            // Roles are made on every node here: their grants stay on each node rather than
            // replicate to nodes that may not have the roles yet (ADR 019).
            let sql = format!("{}{sql}", crate::patroni::pglogical::LOCAL_DDL);
            self.psql(
                &host_id,
                &instance_id,
                &db.spec.database_name,
                sql,
                &secrets,
            )
            .await?;
        }
        // Re-read: another step of the pass may have changed the document meanwhile.
        creds = self.credentials(&db.record.id).await?;
        if create {
            if let Some(c) = creds.services.get_mut(service_id) {
                c.roles_created = true;
                c.roles_on = nodes;
                c.drop_error = None;
            }
        } else {
            creds.services.remove(service_id);
        }
        self.put_credentials(&db.record.id, &creds).await?;
        Ok(())
    }

    /// Runs `sql` with psql on a primary; returns its output. Secrets are masked in errors.
    pub(crate) async fn psql(
        &self,
        host_id: &str,
        instance_id: &str,
        database_name: &str,
        sql: String,
        secrets: &[String],
    ) -> Result<String, ReconcileError> {
        let out = self
            .exec_postgres(
                host_id,
                instance_id,
                psql_argv(database_name),
                sql.as_bytes(),
                std::time::Duration::from_secs(30),
                "psql",
                secrets,
            )
            .await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
