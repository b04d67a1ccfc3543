//! Handing a fixed host port from one instance to another within one plan.
//!
//! Steps of a phase run in parallel. When one update removes (or re-ports) the instance that
//! holds host port P and creates another that publishes P on the same host, the creation
//! must not start before the removal has finished, or the engine refuses it ("port is
//! already allocated"). So on each host a step that takes a port comes after every step of
//! the plan that frees it:
//! - in the same phase: the phase is split, the freeing steps first;
//! - in a later phase (a Postgres removal, which runs last): the taking step is left out of
//!   this plan; the next plan, made once the port is free, has it.
//!
//! A cycle (two instances swapping their ports in one update) cannot be ordered this way;
//! its steps stay in one sub-phase, and the one that loses the race fails and is retried by
//! a later pass.

use std::collections::{BTreeMap, BTreeSet};

use crate::planner::{Key, PHASES};
use crate::types::{DesiredInstance, ObservedInstance, Step};

/// What one step does to its host's ports.
struct Effect<'a> {
    host: &'a str,
    frees: BTreeSet<u16>,
    takes: BTreeSet<u16>,
}

fn effect<'a>(
    step: &'a Step,
    desired: &BTreeMap<Key, &DesiredInstance>,
    observed: &BTreeMap<Key, &ObservedInstance>,
) -> Option<Effect<'a>> {
    let host = step.host_id()?;
    let key = (host, step.instance_id()?);
    let held = observed
        .get(&key)
        .map(|o| o.host_ports.clone())
        .unwrap_or_default();
    match step {
        // A new or replaced container: the old one (if any) goes first, then the new one binds.
        Step::Apply { .. } => {
            let wanted = desired
                .get(&key)
                .map(|d| d.host_ports.clone())
                .unwrap_or_default();
            Some(Effect {
                host,
                frees: held.difference(&wanted).copied().collect(),
                takes: wanted.difference(&held).copied().collect(),
            })
        }
        Step::Remove { .. } | Step::Stop { .. } => Some(Effect {
            host,
            frees: held,
            takes: BTreeSet::new(),
        }),
        Step::Resize { .. }
        | Step::CreateRoles { .. }
        | Step::DropRoles { .. }
        | Step::Switchover { .. }
        | Step::ForgetNode { .. }
        | Step::Replicate { .. } => None,
    }
}

fn depends_on(taker: &Effect, freer: &Effect) -> bool {
    taker.host == freer.host && !taker.takes.is_disjoint(&freer.frees)
}

/// Orders the phases' steps so that no step takes a host port before the steps that free
/// it have run (see the module docs). Returns the phases, some possibly split in two or
/// more, in execution order.
pub(crate) fn order_handovers(
    phases: [Vec<Step>; PHASES],
    desired: &BTreeMap<Key, &DesiredInstance>,
    observed: &BTreeMap<Key, &ObservedInstance>,
) -> Vec<Vec<Step>> {
    // The latest phase in which each (host, port) is freed.
    let mut freed_in: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (i, phase) in phases.iter().enumerate() {
        for step in phase {
            if let Some(e) = effect(step, desired, observed) {
                for port in e.frees {
                    let latest = freed_in.entry((e.host, port)).or_insert(i);
                    *latest = (*latest).max(i);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(PHASES);
    for (i, phase) in phases.iter().enumerate() {
        let kept: Vec<&Step> = phase
            .iter()
            .filter(|step| {
                let Some(e) = effect(step, desired, observed) else {
                    return true;
                };
                !e.takes
                    .iter()
                    .any(|p| freed_in.get(&(e.host, *p)).is_some_and(|&j| j > i))
            })
            .collect();
        out.extend(layers(&kept, desired, observed));
    }
    out
}

/// Splits one phase into layers: each step after the steps of its phase it waits for.
fn layers(
    steps: &[&Step],
    desired: &BTreeMap<Key, &DesiredInstance>,
    observed: &BTreeMap<Key, &ObservedInstance>,
) -> Vec<Vec<Step>> {
    let effects: Vec<Option<Effect>> = steps.iter().map(|s| effect(s, desired, observed)).collect();
    let waits_for = |i: usize, j: usize| match (&effects[i], &effects[j]) {
        (Some(a), Some(b)) => i != j && depends_on(a, b),
        _ => false,
    };
    let mut left: Vec<usize> = (0..steps.len()).collect();
    let mut out = Vec::new();
    while !left.is_empty() {
        let (ready, blocked): (Vec<usize>, Vec<usize>) = left
            .iter()
            .partition(|&&i| !left.iter().any(|&j| waits_for(i, j)));
        if ready.is_empty() {
            // A cycle: nothing can go first. They run together (see the module docs).
            out.push(blocked.iter().map(|&i| steps[i].clone()).collect());
            break;
        }
        out.push(ready.iter().map(|&i| steps[i].clone()).collect());
        left = blocked;
    }
    out
}
