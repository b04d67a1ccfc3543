//! What a plan is made from, computed one way for the reconciler's passes and for the API's
//! dry-run (`POST /v1/databases[/{id}]?dry_run=true`), so a dry-run shows the very plan a
//! pass would execute:
//! - [`desired_state`]: the instances a spec asks for, with the credentials and
//!   certificates they are written with (generated in memory where missing: storing them is
//!   the caller's decision, and a dry-run never does);
//! - [`plan_input`]: desired, applied and observed state in the planner's terms.
//!
//! The reconciler observes containers through its agents' streams; a replica that is not the
//! leader knows them from the instance records the leader keeps ([`observed_from_records`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use plan::PlanInput;
use spec::manifest::Manifest;
use store::StoredDatabase;

use super::ReconcileError;
use crate::credentials::DatabaseCredentials;
use crate::desired::{
    DESIRED_HASH_LABEL, Desired, HostPlacement, Topology, desired_instances, postgres_cert_names,
};
use crate::instances::{InstanceRecord, Phase};

/// The instances a spec asks for, and what they are written with.
pub(crate) struct DesiredState {
    /// Instance id -> what should run.
    pub desired: BTreeMap<String, Desired>,
    pub creds: DatabaseCredentials,
    /// Passwords or certificates were generated or issued here: they must be stored before
    /// any container is given them (a pass does; a dry-run stores nothing).
    pub creds_changed: bool,
}

/// What [`desired_state`] needs besides the database itself.
pub(crate) struct Context<'a> {
    /// Where each registered host is (address, engine).
    pub hosts: BTreeMap<String, HostPlacement>,
    /// The database's instance records (their Postgres ports are part of the topology).
    pub records: &'a BTreeMap<String, InstanceRecord>,
    /// The credentials as stored; None for a database that has none yet.
    pub stored_creds: Option<DatabaseCredentials>,
    pub manifest: &'a Manifest,
    /// The fleet CA: it signs each Postgres instance's certificate, and its certificate is
    /// written into every instance.
    pub authority: &'a pki::Authority,
    /// Patroni's DCS, as every `patroni.yml` names it.
    pub dcs: &'a crate::patroni::config::Dcs,
    pub now: DateTime<Utc>,
}

/// Every instance `db.spec` asks for (none while the database is being deleted), with the
/// credentials it is written with: stored ones, plus passwords for new services and
/// certificates for new or renamed Postgres instances, generated here.
///
/// Errors: the CA cannot issue a certificate, or the spec names something the manifest
/// does not know ([`ReconcileError::Desired`]).
pub(crate) fn desired_state(
    db: &StoredDatabase,
    ctx: Context<'_>,
) -> Result<DesiredState, ReconcileError> {
    let database_id = db.record.id.as_str();
    let deleting = db.record.state == spec::DatabaseState::Deleting;
    let mut postgres_hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in ctx.records.values() {
        if let Some(node) = r.kind.node() {
            postgres_hosts
                .entry(node.to_string())
                .or_default()
                .insert(r.host_id.clone());
        }
    }
    let topology = Topology {
        hosts: ctx.hosts,
        postgres_ports: ctx
            .records
            .values()
            .filter_map(|r| Some((r.instance_id.clone(), r.postgres_port()?)))
            .collect(),
        postgres_hosts,
    };
    let fresh = ctx.stored_creds.is_none();
    let mut creds = ctx
        .stored_creds
        .unwrap_or_else(DatabaseCredentials::generate);
    if deleting {
        return Ok(DesiredState {
            desired: BTreeMap::new(),
            creds,
            creds_changed: false,
        });
    }
    let added = creds.ensure_services(db.spec.services.iter().map(|s| s.service_id.as_str()));
    let added = creds.ensure_patroni() || added;
    // Each node's own etcd user, while the control plane holds etcd credentials (ADR 017).
    let added = (ctx.dcs.node_users
        && creds.ensure_etcd_users(db.spec.nodes.iter().map(|n| n.name.as_str())))
        || added;
    let names = postgres_cert_names(database_id, &db.spec, &topology);
    let issued = crate::postgres_tls::ensure_certs(
        &mut creds.postgres_certs,
        &names,
        ctx.authority,
        ctx.now,
    )
    .map_err(|e| ReconcileError::Step(format!("cannot issue a Postgres certificate: {e}")))?;
    // A node a restore rebuilt starts from that backup (ADR 025), whatever the spec says.
    let mut spec = db.spec.clone();
    for node in &mut spec.nodes {
        if let Some(restore) = db.record.restored_nodes.get(&node.name) {
            node.restore_config = Some(restore.clone());
        }
    }
    let desired = desired_instances(
        database_id,
        &spec,
        ctx.manifest,
        &creds,
        &topology,
        ctx.authority.cert_pem(),
        ctx.dcs,
    )?
    .into_iter()
    .map(|mut d| {
        force(&mut d, db.record.forced_generation);
        d.plan.stopped = db.record.stopped_instances.contains(&d.plan.instance_id);
        (d.plan.instance_id.clone(), d)
    })
    .collect();
    Ok(DesiredState {
        desired,
        creds,
        creds_changed: added || issued || fresh,
    })
}

/// Makes an instance's desired hash depend on the generation of the last `force_update`
/// (0: never forced, the hash is left alone), so each forced update replaces every container
/// once and later passes see it converged. The hash is also the container's label, which
/// the agent's own hash covers.
fn force(d: &mut Desired, forced_generation: u64) {
    if forced_generation == 0 || d.plan.waiting {
        return;
    }
    let hash = plan::spec_hash(&(&d.plan.spec_hash, forced_generation));
    d.spec
        .labels
        .insert(DESIRED_HASH_LABEL.to_string(), hash.clone());
    d.plan.spec_hash = hash;
}

/// Desired, applied and observed state of `db` in the planner's terms. `observed` is what
/// the agents of `reachable` hosts report; every other host a desired instance or a record
/// sits on counts as unreachable. `patroni` is what Patroni's keys say, by node.
pub(crate) fn plan_input(
    db: &StoredDatabase,
    desired: &BTreeMap<String, Desired>,
    records: &BTreeMap<String, InstanceRecord>,
    creds: &DatabaseCredentials,
    observed: Vec<plan::ObservedInstance>,
    reachable: &BTreeSet<String>,
    patroni: &BTreeMap<String, plan::PatroniNode>,
) -> PlanInput {
    // Roles live in each node's database, whichever instance leads it.
    let nodes: BTreeSet<String> = db.spec.nodes.iter().map(|n| n.name.clone()).collect();
    let mut hosts: BTreeSet<String> = desired.values().map(|d| d.plan.host_id.clone()).collect();
    hosts.extend(records.values().map(|r| r.host_id.clone()));
    let generation = db.record.generation;
    PlanInput {
        database_id: db.record.id.clone(),
        deleting: db.record.state == spec::DatabaseState::Deleting,
        desired: desired.values().map(|d| d.plan.clone()).collect(),
        observed,
        applied: records
            .values()
            .map(|r| plan::AppliedRecord {
                instance_id: r.instance_id.clone(),
                host_id: r.host_id.clone(),
                kind: r.kind.clone(),
                spec_hash: r.spec_hash.clone(),
                resources: r.resources,
            })
            .collect(),
        // A drop that failed at this generation is not planned again until the spec
        // changes: the roles stay, and the rest of the change goes on.
        roles: creds
            .services
            .iter()
            .filter(|(_, c)| c.roles_created)
            // A service still wanted counts as having its roles only where every
            // node has them; one no longer wanted needs them dropped wherever they are.
            .filter(|(id, c)| {
                !db.spec.services.iter().any(|s| &s.service_id == *id)
                    || nodes.is_subset(&c.roles_on)
            })
            .filter(|(_, c)| c.drop_error.as_ref().is_none_or(|(g, _)| *g != generation))
            .map(|(id, _)| id.clone())
            .collect(),
        unreachable_hosts: hosts
            .into_iter()
            .filter(|h| !reachable.contains(h))
            .collect(),
        patroni: patroni.clone(),
        replicated: creds.replicated_nodes.clone(),
        replicated_hosts: creds.replicated_hosts.clone(),
    }
}

/// The planner's view of the containers of a database as its instance records last saw
/// them, for a replica without the agents' streams: a record on a `reachable` host stands
/// for a container running the spec it recorded, in the phase last observed.
pub(crate) fn observed_from_records(
    records: &BTreeMap<String, InstanceRecord>,
    reachable: &BTreeSet<String>,
) -> Vec<plan::ObservedInstance> {
    records
        .values()
        .filter(|r| reachable.contains(&r.host_id))
        .map(|r| {
            let status = match r.observed.phase {
                Phase::Running => plan::ObservedStatus::Running,
                Phase::Creating => plan::ObservedStatus::Creating,
                // No container at all reads as missing; one that stopped or failed as failed.
                Phase::Failed if r.observed.container_id.is_none() => plan::ObservedStatus::Missing,
                Phase::Failed => plan::ObservedStatus::Failed,
                Phase::Deleting => plan::ObservedStatus::Stopped,
                // Its container was removed, its data kept.
                Phase::Stopped => plan::ObservedStatus::Missing,
            };
            let live = matches!(
                status,
                plan::ObservedStatus::Running | plan::ObservedStatus::Creating
            );
            plan::ObservedInstance {
                instance_id: r.instance_id.clone(),
                host_id: r.host_id.clone(),
                kind: r.kind.clone(),
                spec_hash: Some(r.spec_hash.clone()),
                status,
                resources: None,
                host_ports: if live {
                    r.observed
                        .ports
                        .iter()
                        .filter_map(|p| p.host_port)
                        .collect()
                } else {
                    BTreeSet::new()
                },
            }
        })
        .collect()
}

/// Where each registered host is, as [`Context::hosts`] wants it.
pub(crate) fn placements(hosts: &[spec::Host]) -> BTreeMap<String, HostPlacement> {
    hosts
        .iter()
        .map(|h| {
            let placement = HostPlacement {
                address: h.addresses.first().cloned(),
                engine_id: h.engine_id.clone(),
            };
            (h.id.clone(), placement)
        })
        .collect()
}
