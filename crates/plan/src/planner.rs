//! `plan`: compares desired, observed and applied state of one database.

use std::collections::{BTreeMap, BTreeSet};

use crate::postgres::{Node, Nodes, Place};
use crate::types::{
    AppliedRecord, ApplyReason, DesiredInstance, InstanceKind, ObservedInstance, ObservedStatus,
    PatroniNode, Plan, PlanInput, Resources, Step, Wait,
};

/// Phases, in execution order. Each exists because of a dependency of a later one.
#[derive(Clone, Copy)]
#[repr(usize)]
pub(crate) enum Phase {
    /// Stale Patroni keys of a node about to be initialised anew would stop that.
    ForgetStale,
    /// The node's leader (or the instance that initialises a new node): replicas clone from it.
    PostgresPrimaries,
    PostgresReplicas,
    /// Replication between nodes needs each node's leader running, and goes before anything
    /// (roles' grants, services) writes to the databases it joins.
    Replicate,
    /// Roles need a running leader, and services log in with them.
    CreateRoles,
    Services,
    /// A role can only go once no container of its service uses it.
    DropRoles,
    /// A leader that is to be removed hands over first, once a replica can take over.
    Switchovers,
    /// Last, so that services still routed to a removed node keep working until they are updated.
    PostgresRemoves,
    /// A removed node's Patroni keys go once its instances are gone.
    ForgetRemoved,
}

pub(crate) const PHASES: usize = Phase::ForgetRemoved as usize + 1;

/// Instances are identified by host and id together: the id alone names the container on
/// its host, and a stray report of the same id on another host is another container.
pub(crate) type Key<'a> = (&'a str, &'a str);

/// Computes what to do next for one database. Pure and deterministic; see the crate docs for
/// the rules.
pub fn plan(input: &PlanInput) -> Plan {
    let reachable = |host: &str| !input.unreachable_hosts.contains(host);

    let desired: BTreeMap<Key, &DesiredInstance> = if input.deleting {
        BTreeMap::new()
    } else {
        input
            .desired
            .iter()
            .map(|d| ((d.host_id.as_str(), d.instance_id.as_str()), d))
            .collect()
    };
    let observed = fold_observed(&input.observed);
    let applied: BTreeMap<Key, &AppliedRecord> = input
        .applied
        .iter()
        .map(|r| ((r.host_id.as_str(), r.instance_id.as_str()), r))
        .collect();
    // An observed container is authoritative for what it runs; a record only says what was
    // applied, so it decides the kind only when nothing is reported.
    let existing: BTreeMap<Key, &InstanceKind> = applied
        .iter()
        .map(|(k, r)| (*k, &r.kind))
        .chain(observed.iter().map(|(k, o)| (*k, &o.kind)))
        .collect();
    let nodes = Nodes::new(input, &desired, &existing);

    let mut phases: [Vec<Step>; PHASES] = Default::default();
    let mut waiting: Vec<Wait> = Vec::new();
    fn push(phases: &mut [Vec<Step>; PHASES], phase: Phase, step: Step) {
        phases[phase as usize].push(step);
    }

    // Postgres instances whose running container this plan would replace: a node's
    // primary is replaced only after these of its replicas (see `replace_primary`).
    let replacing: BTreeSet<&str> = desired
        .iter()
        .filter(|(key, d)| {
            reachable(&d.host_id)
                && !d.waiting
                && !d.stopped
                && d.kind.node().is_some()
                && observed.get(key).is_some_and(|o| !o.status.is_down())
                && matches!(
                    instance_step(d, observed.get(key).copied(), applied.get(key).copied()),
                    Some(Step::Apply {
                        reason: ApplyReason::Update | ApplyReason::LiftLimits,
                        ..
                    })
                )
        })
        .map(|(_, d)| d.instance_id.as_str())
        .collect();

    for (key, d) in &desired {
        if !reachable(&d.host_id) || d.waiting {
            continue;
        }
        if d.stopped {
            if observed
                .get(key)
                .is_some_and(|o| o.status != ObservedStatus::Missing)
            {
                push(
                    &mut phases,
                    Phase::PostgresRemoves,
                    Step::Stop {
                        instance_id: d.instance_id.clone(),
                        host_id: d.host_id.clone(),
                    },
                );
            }
            continue;
        }
        let phase = match &d.kind {
            InstanceKind::Service { .. } => Phase::Services,
            InstanceKind::Postgres { node } => match nodes.get(node).place(d, key) {
                Place::First => Phase::PostgresPrimaries,
                Place::Other => Phase::PostgresReplicas,
                Place::Wait(why) => {
                    waiting.push(Wait::on_keys(why));
                    continue;
                }
            },
        };
        if let Some(step) = instance_step(d, observed.get(key).copied(), applied.get(key).copied())
        {
            if let (InstanceKind::Postgres { node }, true) =
                (&d.kind, replacing.contains(d.instance_id.as_str()))
            {
                let n = nodes.get(node);
                if n.leader() == Some(d.instance_id.as_str()) {
                    match replace_primary(node, n, d, &replacing) {
                        Ok(None) => {}
                        Ok(Some(switchover)) => {
                            push(&mut phases, Phase::Switchovers, switchover);
                            continue;
                        }
                        Err(wait) => {
                            waiting.push(wait);
                            continue;
                        }
                    }
                }
            }
            push(&mut phases, phase, step);
        }
    }

    for (name, node) in &nodes.0 {
        if node.desired.is_empty() {
            continue;
        }
        if node.existing.is_empty() && node.patroni.is_some_and(|p| p != &PatroniNode::default()) {
            push(
                &mut phases,
                Phase::ForgetStale,
                Step::ForgetNode {
                    node: name.to_string(),
                },
            );
        }
        waiting.extend(node.waits(name, &reachable).into_iter().map(Wait::on_keys));
    }

    for ((host_id, instance_id), kind) in &existing {
        if desired.contains_key(&(*host_id, *instance_id)) || !reachable(host_id) {
            continue;
        }
        let remove = Step::Remove {
            instance_id: instance_id.to_string(),
            host_id: host_id.to_string(),
        };
        match kind {
            InstanceKind::Service { .. } => push(&mut phases, Phase::Services, remove),
            InstanceKind::Postgres { node: name } => {
                let node = nodes.get(name);
                let leads = node.leader() == Some(*instance_id);
                if node.desired.is_empty() || !leads {
                    push(&mut phases, Phase::PostgresRemoves, remove);
                    continue;
                }
                // The node stays and this is its primary: it hands over first, and the
                // next plan (which sees the new leader) removes it.
                match node.candidate() {
                    Some(candidate) => push(
                        &mut phases,
                        Phase::Switchovers,
                        Step::Switchover {
                            node: name.clone(),
                            instance_id: instance_id.to_string(),
                            host_id: host_id.to_string(),
                            candidate: candidate.to_string(),
                        },
                    ),
                    None => waiting.push(Wait {
                        reason: format!(
                            "node {name}: its primary {instance_id} on {host_id} is to be removed \
                             once a replica the spec keeps runs and has caught up to take over"
                        ),
                        recheck: true,
                    }),
                }
            }
        }
    }

    // A removed node's keys go once none of its instances is left anywhere.
    if !input.deleting {
        for (name, patroni) in &input.patroni {
            let node = nodes.get(name);
            let gone = node
                .existing
                .iter()
                .all(|(host, id)| reachable(host) && !desired.contains_key(&(*host, *id)));
            if node.desired.is_empty() && gone && patroni != &PatroniNode::default() {
                push(
                    &mut phases,
                    Phase::ForgetRemoved,
                    Step::ForgetNode { node: name.clone() },
                );
            }
        }
    }

    // Roles are made on every node's leader: they wait until each desired node has one that
    // runs on a reachable host and whose container this plan does not replace.
    let replaced: BTreeSet<&str> = phases
        .iter()
        .flatten()
        .filter(|s| matches!(s, Step::Apply { .. }))
        .filter_map(Step::instance_id)
        .collect();
    let primaries_ready = nodes.0.values().filter(|n| n.runs()).all(|n| {
        n.leader().is_some_and(|l| {
            n.leader_running()
                && !replaced.contains(l)
                && existing
                    .keys()
                    .chain(desired.keys())
                    .any(|(host, id)| *id == l && reachable(host))
        })
    });

    if let Some(step) = crate::replication::step(input, &nodes, primaries_ready) {
        push(&mut phases, Phase::Replicate, step);
    }

    // A service is desired as soon as one of its instances is, even on an unreachable host:
    // roles live in the database, not on a host.
    let desired_services: BTreeSet<&str> = desired
        .values()
        .filter_map(|d| d.kind.service_id())
        .collect();
    for service_id in &desired_services {
        if primaries_ready && !input.roles.contains(*service_id) {
            push(
                &mut phases,
                Phase::CreateRoles,
                Step::CreateRoles {
                    service_id: service_id.to_string(),
                },
            );
        }
    }

    // When the database is deleted its data goes, and the roles with it: the control plane
    // forgets them instead of dropping them one by one from a database about to disappear.
    if !input.deleting {
        // A container left on an unreachable host still logs in with the roles; dropping them
        // waits until that host is back and the container removed.
        let stranded: BTreeSet<&str> = existing
            .iter()
            .filter(|((host, _), _)| !reachable(host))
            .filter_map(|(_, kind)| kind.service_id())
            .collect();
        for service_id in &input.roles {
            let service_id = service_id.as_str();
            if primaries_ready
                && !desired_services.contains(service_id)
                && !stranded.contains(service_id)
            {
                push(
                    &mut phases,
                    Phase::DropRoles,
                    Step::DropRoles {
                        service_id: service_id.to_string(),
                    },
                );
            }
        }
    }

    // A service cannot start without its roles: while they can be neither found nor made in
    // this plan, its containers wait too (they would only fail their health check).
    if !primaries_ready {
        phases[Phase::Services as usize].retain(|step| match step {
            Step::Apply {
                instance_id,
                host_id,
                ..
            } => desired
                .get(&(host_id.as_str(), instance_id.as_str()))
                .and_then(|d| d.kind.service_id())
                .is_none_or(|s| input.roles.contains(s)),
            _ => true,
        });
    }

    let phases = crate::ports::order_handovers(phases, &desired, &observed)
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|mut p| {
            p.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            p
        })
        .collect();
    waiting.sort();
    waiting.dedup();
    Plan { phases, waiting }
}

/// The step that brings one desired instance (on a reachable host) to its desired state.
/// How a node's running primary `d` gets a new container (a rolling update): never while
/// one of its replicas is still to be replaced (`replacing`), since Patroni would promote a
/// replica that this plan replaces next, and the old primary, back as a replica that never
/// streamed from it, could be promoted to the same timeline number on another history;
/// then through a switchover to a replica that has caught up, the old primary being
/// replaced as a replica by a later plan; in place (`Ok(None)`) when no other instance can
/// take over.
fn replace_primary(
    name: &str,
    node: &Node,
    d: &DesiredInstance,
    replacing: &BTreeSet<&str>,
) -> Result<Option<Step>, Wait> {
    let others: Vec<&DesiredInstance> = node
        .desired
        .iter()
        .copied()
        .filter(|o| o.instance_id != d.instance_id && !o.stopped)
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    let wait = |reason: String| Wait {
        reason,
        recheck: true,
    };
    if others
        .iter()
        .any(|o| replacing.contains(o.instance_id.as_str()))
    {
        return Err(wait(format!(
            "node {name}: its primary {} gets its new container after its replicas",
            d.instance_id
        )));
    }
    match node.candidate() {
        Some(candidate) => Ok(Some(Step::Switchover {
            node: name.to_string(),
            instance_id: d.instance_id.clone(),
            host_id: d.host_id.clone(),
            candidate: candidate.to_string(),
        })),
        // No replica can take over (none runs yet, or none has caught up; a new one may
        // even need the primary's new container to reach it, as when a node comes to span
        // engines): replaced in place, as a lone primary is.
        None => Ok(None),
    }
}

fn instance_step(
    d: &DesiredInstance,
    observed: Option<&ObservedInstance>,
    record: Option<&AppliedRecord>,
) -> Option<Step> {
    let apply = |reason| Step::Apply {
        instance_id: d.instance_id.clone(),
        host_id: d.host_id.clone(),
        reason,
    };
    let Some(o) = observed else {
        // A record without a container means it existed once: bringing it back is healing.
        return Some(apply(match record {
            None => ApplyReason::Create,
            Some(_) => ApplyReason::Heal,
        }));
    };
    let same_hash = o.spec_hash.as_deref() == Some(d.spec_hash.as_str());
    if o.status.is_down() {
        return Some(apply(if same_hash {
            ApplyReason::Heal
        } else {
            ApplyReason::Update
        }));
    }
    if !same_hash {
        return Some(apply(ApplyReason::Update));
    }
    // Running or Creating from the desired spec: only the limits may lag. The container's
    // own limits decide when the agent reports them, else the record's.
    let current = o.resources.or(record.map(|r| r.resources));
    if current.is_some_and(|c| lifts_a_limit(c, d.resources)) {
        return Some(apply(ApplyReason::LiftLimits));
    }
    // A missing or stale record with a matching container (a leader crashed between the
    // step and its record) is repaired by a Resize, which records the desired hash and
    // resources it sets.
    let record_current =
        record.is_some_and(|r| r.resources == d.resources && r.spec_hash == d.spec_hash);
    if record_current && o.resources.is_none_or(|r| r == d.resources) {
        return None;
    }
    Some(Step::Resize {
        instance_id: d.instance_id.clone(),
        host_id: d.host_id.clone(),
        resources: d.resources,
    })
}

/// Whether going from `current` to `desired` removes a cpu or memory limit (0 = unlimited):
/// the one change of limits the engine cannot make in place.
pub(crate) fn lifts_a_limit(current: Resources, desired: Resources) -> bool {
    (current.nano_cpus > 0 && desired.nano_cpus == 0)
        || (current.memory_bytes > 0 && desired.memory_bytes == 0)
}

/// One report per instance. Should an agent report the same instance twice, the one that
/// needs the most work wins, so that a down duplicate is healed rather than hidden.
fn fold_observed(observed: &[ObservedInstance]) -> BTreeMap<Key<'_>, &ObservedInstance> {
    let mut folded: BTreeMap<Key, &ObservedInstance> = BTreeMap::new();
    for o in observed {
        folded
            .entry((o.host_id.as_str(), o.instance_id.as_str()))
            .and_modify(|kept| {
                if urgency(o) > urgency(kept) {
                    *kept = o;
                }
            })
            .or_insert(o);
    }
    folded
}

/// Orders duplicate reports by how much work they call for (a down container first), then
/// by their other fields, so that the choice does not depend on the input order.
fn urgency(o: &ObservedInstance) -> (u8, &Option<String>, &InstanceKind) {
    use crate::types::ObservedStatus::*;
    let status = match o.status {
        Missing => 4,
        Failed => 3,
        Stopped => 2,
        Creating => 1,
        Running => 0,
    };
    (status, &o.spec_hash, &o.kind)
}

#[cfg(test)]
mod patroni_tests;
#[cfg(test)]
mod replication_tests;
#[cfg(test)]
mod tests;
