//! Whether an operation on a running database (`spec::operations`) can be accepted, and
//! what is stored for its task: pure, from the database, its instance records and
//! Patroni's keys as the API read them.
//!
//! What is refused, and how (the reference API's error names where it has them):
//! - an unknown node or instance: 404;
//! - a candidate that is not a healthy replica of the node: 400 naming
//!   `candidate_instance_id`;
//! - what the node's state does not allow (a switchover without a primary or without a
//!   replica to take over, a failover while the primary is healthy without
//!   `skip_validation`, stopping a node's last running instance without `force`): 409
//!   `operation_not_possible` naming the field that would allow it or the path parameter.

use std::collections::{BTreeMap, BTreeSet};

use plan::{PatroniMember, PatroniNode};
use spec::InvalidInput;
use spec::backup::{RepositoryType, RestoreRepository};
use spec::operations::{
    BackupRequest, FailoverRequest, Operation, RestartInstanceRequest, RestoreRequest,
    SwitchoverRequest,
};
use store::StoredDatabase;

use crate::instances::InstanceRecord;

/// What the API read to judge an operation.
pub(crate) struct Facts<'a> {
    pub db: &'a StoredDatabase,
    pub records: &'a [InstanceRecord],
    /// Patroni's keys, by node.
    pub patroni: &'a BTreeMap<String, PatroniNode>,
}

/// Why an operation is refused.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    /// 404: the node or instance of the path does not exist.
    NotFound(String),
    /// 400: a field of the body is wrong.
    Invalid(InvalidInput),
    /// 409: the node's state does not allow it now.
    NotPossible(InvalidInput),
}

fn invalid(path: &str, message: String) -> Refusal {
    Refusal::Invalid(InvalidInput::one(path, message))
}

fn not_possible(path: &str, message: String) -> Refusal {
    Refusal::NotPossible(InvalidInput::one(path, message))
}

impl Facts<'_> {
    fn node(&self, node: &str) -> Result<&PatroniNode, Refusal> {
        if !self.db.spec.nodes.iter().any(|n| n.name == node) {
            return Err(Refusal::NotFound(format!(
                "node {node:?} not found in database {:?}",
                self.db.record.id
            )));
        }
        Ok(self.patroni.get(node).unwrap_or(&NO_KEYS))
    }

    /// A Postgres instance of the database: its node's name.
    fn instance(&self, instance_id: &str) -> Result<&str, Refusal> {
        self.records
            .iter()
            .find(|r| r.instance_id == instance_id)
            .and_then(|r| r.kind.node())
            .ok_or_else(|| {
                Refusal::NotFound(format!(
                    "postgres instance {instance_id:?} not found in database {:?}",
                    self.db.record.id
                ))
            })
    }

    fn stopped(&self, instance_id: &str) -> bool {
        self.db.record.stopped_instances.contains(instance_id)
    }

    /// The instances of `node` that run under Patroni and are not stopped.
    fn running(&self, node: &str, keys: &PatroniNode) -> BTreeSet<String> {
        self.records
            .iter()
            .filter(|r| r.kind.node() == Some(node) && !self.stopped(&r.instance_id))
            .filter(|r| {
                keys.members
                    .get(&r.instance_id)
                    .is_some_and(PatroniMember::is_running)
            })
            .map(|r| r.instance_id.clone())
            .collect()
    }
}

static NO_KEYS: PatroniNode = PatroniNode {
    leader: None,
    initialized: false,
    members: BTreeMap::new(),
};

/// `switchover` of `node`: the primary hands over to the candidate (or to a replica Patroni
/// picks), a replica that streams and has caught up ([`PatroniNode::can_take_over`]).
pub(crate) fn switchover(
    f: &Facts,
    node: &str,
    request: SwitchoverRequest,
) -> Result<Operation, Refusal> {
    let keys = f.node(node)?;
    let Some(leader) = keys.leader.clone() else {
        return Err(not_possible(
            "node_name",
            format!(
                "node {node} has no primary to switch over from; a failover promotes a replica"
            ),
        ));
    };
    match &request.candidate_instance_id {
        Some(c) => check_candidate(
            f,
            node,
            keys,
            c,
            "a healthy replica that streams and has caught up",
            |k, c| k.can_take_over(c),
        )?,
        None => {
            let any = f
                .running(node, keys)
                .iter()
                .any(|id| keys.can_take_over(id));
            if !any {
                return Err(not_possible(
                    "node_name",
                    format!(
                        "node {node} has no replica that streams and has caught up to take over \
                         from its primary {leader}"
                    ),
                ));
            }
        }
    }
    Ok(Operation::Switchover {
        node: node.to_string(),
        leader,
        candidate: request.candidate_instance_id,
        scheduled_at: request.scheduled_at,
    })
}

/// `failover` of `node`: a replica is promoted, whether or not the primary answers. Without
/// `skip_validation` only while the node has no running primary (the reference API's rule:
/// a healthy primary is moved by a switchover). Without a candidate, the running replica
/// that lags least is chosen.
pub(crate) fn failover(
    f: &Facts,
    node: &str,
    request: FailoverRequest,
) -> Result<Operation, Refusal> {
    let keys = f.node(node)?;
    let leader_runs = keys
        .leader
        .as_deref()
        .and_then(|l| keys.members.get(l))
        .is_some_and(PatroniMember::is_running);
    if leader_runs && !request.skip_validation {
        return Err(not_possible(
            "skip_validation",
            format!(
                "node {node}'s primary {} is healthy: use a switchover, or set skip_validation \
                 to fail over anyway",
                keys.leader.as_deref().unwrap_or_default()
            ),
        ));
    }
    let healthy = |k: &PatroniNode, c: &str| {
        k.leader.as_deref() != Some(c)
            && k.members
                .get(c)
                .is_some_and(|m| m.is_running() && m.is_replica())
    };
    let candidate = match request.candidate_instance_id {
        Some(c) => {
            check_candidate(f, node, keys, &c, "a running replica", healthy)?;
            c
        }
        None => f
            .running(node, keys)
            .into_iter()
            .filter(|id| healthy(keys, id))
            .max_by_key(|id| {
                let position = keys.members.get(id).and_then(|m| m.wal_position);
                // Ties go to the first id: max_by_key keeps the last maximum.
                (position, std::cmp::Reverse(id.clone()))
            })
            .ok_or_else(|| {
                not_possible(
                    "node_name",
                    format!("node {node} has no running replica to promote"),
                )
            })?,
    };
    Ok(Operation::Failover {
        node: node.to_string(),
        leader: keys.leader.clone(),
        candidate,
    })
}

/// The candidate is an instance of `node`, not stopped, and `healthy` by Patroni's keys
/// (which `wanted` says in words).
fn check_candidate(
    f: &Facts,
    node: &str,
    keys: &PatroniNode,
    candidate: &str,
    wanted: &str,
    healthy: impl Fn(&PatroniNode, &str) -> bool,
) -> Result<(), Refusal> {
    let path = "candidate_instance_id";
    match f.records.iter().find(|r| r.instance_id == candidate) {
        Some(r) if r.kind.node() == Some(node) => {}
        Some(_) => {
            return Err(invalid(
                path,
                format!("{candidate} is not an instance of node {node}"),
            ));
        }
        None => {
            return Err(invalid(
                path,
                format!("{candidate} is not an instance of this database"),
            ));
        }
    }
    if keys.leader.as_deref() == Some(candidate) {
        return Err(invalid(
            path,
            format!("{candidate} is node {node}'s primary already"),
        ));
    }
    if f.stopped(candidate) || !healthy(keys, candidate) {
        let seen = keys
            .members
            .get(candidate)
            .map_or("not registered with Patroni", |m| m.shown_state());
        return Err(invalid(
            path,
            format!(
                "{candidate} is not {wanted} (Patroni: {seen}{})",
                match keys.lag_bytes(candidate) {
                    Some(lag) => format!(", {lag} bytes behind"),
                    None => String::new(),
                }
            ),
        ));
    }
    Ok(())
}

/// `backups` of `node` (ADR 022): refused with a 400 when the node has no repository its
/// instances can use (none configured, or only `posix` ones, which no instance reaches
/// yet), and with a 409 while the node has no running primary to take it on.
pub(crate) fn backup(f: &Facts, node: &str, request: BackupRequest) -> Result<Operation, Refusal> {
    let keys = f.node(node)?;
    let spec = &f.db.spec;
    let node_spec = spec
        .nodes
        .iter()
        .find(|n| n.name == node)
        .expect("Facts::node found it");
    let repositories = spec::backup::effective_backup_config(spec, node_spec)
        .map(|c| c.repositories.as_slice())
        .unwrap_or_default();
    if pgbackrest::conf::usable(repositories).is_empty() {
        let why = if repositories.is_empty() {
            "has no backup repository"
        } else {
            "has only posix repositories, which berth cannot reach from every host yet"
        };
        return Err(invalid(
            "node_name",
            format!(
                "node {node} {why}: add an s3 repository to spec.backup_config.repositories \
                 (or to the node's backup_config) first"
            ),
        ));
    }
    let leader_runs = keys
        .leader
        .as_deref()
        .filter(|l| !f.stopped(l))
        .and_then(|l| keys.members.get(l))
        .is_some_and(PatroniMember::is_running);
    if !leader_runs {
        return Err(not_possible(
            "node_name",
            format!("node {node} has no running primary to take a backup on"),
        ));
    }
    Ok(Operation::Backup {
        node: node.to_string(),
        backup_type: request.backup_type,
        annotations: request.annotations,
    })
}

/// Restore types that leave no primary behind (a standby, or recovery settings kept as
/// they are): a restored node must come up writable.
const NO_PRIMARY_RESTORE_TYPES: [&str; 2] = ["standby", "preserve"];

/// `restore` of `request.target_nodes` (every node when empty) in place (ADR 025). Refused
/// with a 404 for an unknown node; a 400 naming the field for a repository the node's
/// instances cannot use (an id that is not one of the node's repositories, a `posix` one)
/// or a restore that would leave no primary (`type` `standby` or `preserve`, a
/// `target-action` other than `promote`); a 409 for a database of several nodes (their
/// pglogical replication is not rebuilt yet). A node with no running instance is restored
/// all the same (a node whose instances all fail is what a restore is for): the task checks
/// the backup first on a running instance when the node has one, and otherwise says in its
/// log that the node's first instance checks it as it restores.
pub(crate) fn restore(f: &Facts, request: RestoreRequest) -> Result<Operation, Refusal> {
    let spec = &f.db.spec;
    let nodes: Vec<String> = if request.target_nodes.is_empty() {
        spec.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        request.target_nodes.clone()
    };
    for node in &nodes {
        f.node(node)?;
    }
    if spec.nodes.len() > 1 {
        return Err(not_possible(
            "target_nodes",
            format!(
                "database {} has {} nodes: restoring a node of a multi-master database is \
                 not supported yet (its pglogical replication would not be rebuilt)",
                f.db.record.id,
                spec.nodes.len()
            ),
        ));
    }
    let config = &request.restore_config;
    let options = &config.restore_options;
    if let Some(t) = options.get("type")
        && NO_PRIMARY_RESTORE_TYPES.contains(&t.as_str())
    {
        return Err(invalid(
            "restore_config.restore_options.type",
            format!("a restored node must come up as a primary: type {t} leaves none"),
        ));
    }
    if let Some(action) = options.get("target-action")
        && action != "promote"
    {
        return Err(invalid(
            "restore_config.restore_options.target-action",
            format!("a restored node must come up as a primary: only promote, not {action}"),
        ));
    }
    for node in &nodes {
        let node_spec = spec
            .nodes
            .iter()
            .find(|n| &n.name == node)
            .expect("Facts::node found it");
        let repository = match &config.repository {
            RestoreRepository::Inline(r) => Some(r),
            RestoreRepository::Id(id) => spec::backup::effective_backup_config(spec, node_spec)
                .and_then(|c| c.repositories.iter().find(|r| &r.id == id)),
        };
        match repository {
            None => {
                return Err(invalid(
                    "restore_config.repository",
                    format!("node {node} has no repository of that id in its backup_config"),
                ));
            }
            Some(r) if r.repository_type != RepositoryType::S3 => {
                return Err(invalid(
                    "restore_config.repository",
                    "berth restores from s3 repositories only: posix repositories are not \
                     reachable from every host yet"
                        .to_string(),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(Operation::Restore {
        nodes,
        restore_config: Box::new(request.restore_config),
    })
}

/// `restart` of an instance's Postgres by its Patroni, now or at `scheduled_at`.
pub(crate) fn restart(
    f: &Facts,
    instance_id: &str,
    request: RestartInstanceRequest,
) -> Result<Operation, Refusal> {
    f.instance(instance_id)?;
    if f.stopped(instance_id) {
        return Err(not_possible(
            "instance_id",
            format!("{instance_id} is stopped: start it instead"),
        ));
    }
    Ok(Operation::RestartInstance {
        instance_id: instance_id.to_string(),
        scheduled_at: request.scheduled_at,
    })
}

/// `stop-instance`: the container goes, the data directory stays. A primary hands over
/// to a caught-up replica first. Without `force`, refused when it would leave its node
/// with no running instance, or a primary with no replica able to take over.
pub(crate) fn stop(f: &Facts, instance_id: &str, force: bool) -> Result<Operation, Refusal> {
    let node = f.instance(instance_id)?;
    let keys = f.patroni.get(node).unwrap_or(&NO_KEYS);
    let others: BTreeSet<String> = f
        .running(node, keys)
        .into_iter()
        .filter(|id| id != instance_id)
        .collect();
    let leads = keys.leader.as_deref() == Some(instance_id);
    let hand_over_to = if leads {
        others.iter().find(|id| keys.can_take_over(id)).cloned()
    } else {
        None
    };
    if !force && !f.stopped(instance_id) {
        if others.is_empty() {
            return Err(not_possible(
                "force",
                format!(
                    "{instance_id} is the last running instance of node {node}: stopping it stops \
                     the node; set force=true to do so"
                ),
            ));
        }
        if leads && hand_over_to.is_none() {
            return Err(not_possible(
                "force",
                format!(
                    "{instance_id} is node {node}'s primary and no replica has caught up to take \
                     over; set force=true to stop it anyway"
                ),
            ));
        }
    }
    Ok(Operation::StopInstance {
        instance_id: instance_id.to_string(),
        hand_over_to,
    })
}

/// `start-instance`: a stopped instance comes back (starting a running one changes
/// nothing). While none of its node's instances runs, only the one that was the node's
/// primary when it stopped may start without `force`: any other may be behind it, and
/// Patroni would make it the primary (and rewind the old one), losing what only the old
/// primary had.
pub(crate) fn start(f: &Facts, instance_id: &str, force: bool) -> Result<Operation, Refusal> {
    let node = f.instance(instance_id)?;
    let keys = f.patroni.get(node).unwrap_or(&NO_KEYS);
    let last = f.db.record.stopped_primaries.get(node);
    if let Some(last) = last
        && last != instance_id
        && !force
        && f.running(node, keys).is_empty()
    {
        return Err(not_possible(
            "force",
            format!(
                "{last} was node {node}'s primary when the node stopped and holds its latest \
                 data; start {last} first (its replicas then catch up from it), or set \
                 force=true to start {instance_id} as the primary and lose what only {last} has"
            ),
        ));
    }
    Ok(Operation::StartInstance {
        instance_id: instance_id.to_string(),
    })
}

#[cfg(test)]
#[path = "operations_tests.rs"]
mod tests;
