//! Properties of `plan` over a small simulated world: a few hosts, nodes and services, in
//! random observed, applied, roles and reachability states.

use std::collections::{BTreeMap, BTreeSet};

use plan::{
    AppliedRecord, ApplyReason, DesiredInstance, InstanceKind, ObservedInstance, ObservedStatus,
    Plan, PlanInput, Resources, Step, plan, postgres_instance_id, service_instance_id,
};
use proptest::prelude::*;
use proptest::sample::{Index, subsequence};

const DB: &str = "db";
const HOSTS: [&str; 4] = ["h0", "h1", "h2", "h3"];
/// Desired nodes are taken from the first two; `n9` only ever exists as a leftover.
const NODES: [&str; 3] = ["n1", "n2", "n9"];
/// Desired services are taken from the first three; `s9` only ever exists as a leftover.
const SERVICES: [&str; 4] = ["s0", "s1", "s2", "s9"];
const HASHES: [&str; 3] = ["h-a", "h-b", "h-c"];
const RESOURCES: [Resources; 3] = [
    Resources {
        nano_cpus: 0,
        memory_bytes: 0,
    },
    Resources {
        nano_cpus: 500_000_000,
        memory_bytes: 256 << 20,
    },
    Resources {
        nano_cpus: 2_000_000_000,
        memory_bytes: 1 << 30,
    },
];
const STATUSES: [ObservedStatus; 5] = [
    ObservedStatus::Creating,
    ObservedStatus::Running,
    ObservedStatus::Failed,
    ObservedStatus::Stopped,
    ObservedStatus::Missing,
];

type Key = (String, String);

/// The documented order within a phase: instance (or service) id, then host.
fn order_key(step: &Step) -> (String, String) {
    match step {
        Step::CreateRoles { service_id } | Step::DropRoles { service_id } => {
            (service_id.clone(), String::new())
        }
        other => (
            other.instance_id().unwrap().to_string(),
            other.host_id().unwrap().to_string(),
        ),
    }
}

fn key_of_step(step: &Step) -> Option<Key> {
    Some((step.host_id()?.to_string(), step.instance_id()?.to_string()))
}

/// Everything that may exist for the database: every node and service (desired or not) on
/// every host, so leftovers of removed nodes, services and moved instances show up too.
fn universe() -> Vec<(String, String, InstanceKind)> {
    let mut all = Vec::new();
    for host in HOSTS {
        for node in NODES {
            let kind = InstanceKind::Postgres {
                node: node.to_string(),
                primary: false,
            };
            all.push((postgres_instance_id(DB, node, host), host.to_string(), kind));
        }
        for service in SERVICES {
            let kind = InstanceKind::Service {
                service_id: service.to_string(),
            };
            all.push((
                service_instance_id(DB, service, host),
                host.to_string(),
                kind,
            ));
        }
    }
    all
}

/// One instance's state: maybe a report (hash index or unknown, status), maybe a record.
type InstanceState = (Option<(Option<usize>, usize)>, Option<(usize, usize)>);

fn instance_state() -> impl Strategy<Value = InstanceState> {
    (
        proptest::option::of((proptest::option::of(0..HASHES.len()), 0..STATUSES.len())),
        proptest::option::of((0..HASHES.len(), 0..RESOURCES.len())),
    )
}

/// A spec-like desired set: 1-2 nodes and 0-3 services, each on 1-3 hosts.
fn desired_set() -> impl Strategy<Value = Vec<DesiredInstance>> {
    let node = (
        subsequence(HOSTS.to_vec(), 1..=3).prop_shuffle(),
        0..2usize,
        0..3usize,
    );
    let nodes = subsequence(NODES[..2].to_vec(), 1..=2).prop_flat_map(move |names| {
        proptest::collection::vec(node.clone(), names.len()).prop_map(move |placements| {
            names
                .clone()
                .into_iter()
                .zip(placements)
                .collect::<Vec<_>>()
        })
    });
    let service = (subsequence(HOSTS.to_vec(), 1..=3), 0..2usize, 0..3usize);
    let services = subsequence(SERVICES[..3].to_vec(), 0..=3).prop_flat_map(move |ids| {
        proptest::collection::vec(service.clone(), ids.len())
            .prop_map(move |placements| ids.clone().into_iter().zip(placements).collect::<Vec<_>>())
    });
    (nodes, services).prop_map(|(nodes, services)| {
        let mut desired = Vec::new();
        for (node, (hosts, hash, res)) in nodes {
            for (i, host) in hosts.iter().enumerate() {
                desired.push(DesiredInstance {
                    instance_id: postgres_instance_id(DB, node, host),
                    host_id: host.to_string(),
                    kind: InstanceKind::Postgres {
                        node: node.to_string(),
                        primary: i == 0,
                    },
                    spec_hash: HASHES[hash].to_string(),
                    resources: RESOURCES[res],
                    waiting: false,
                    host_ports: Default::default(),
                });
            }
        }
        for (service, (hosts, hash, res)) in services {
            for host in hosts {
                desired.push(DesiredInstance {
                    instance_id: service_instance_id(DB, service, host),
                    host_id: host.to_string(),
                    kind: InstanceKind::Service {
                        service_id: service.to_string(),
                    },
                    spec_hash: HASHES[hash].to_string(),
                    resources: RESOURCES[res],
                    waiting: false,
                    host_ports: Default::default(),
                });
            }
        }
        desired
    })
}

fn plan_input(deleting_allowed: bool) -> impl Strategy<Value = PlanInput> {
    let universe_len = universe().len();
    (
        desired_set(),
        proptest::collection::vec(instance_state(), universe_len),
        subsequence(SERVICES.to_vec(), 0..=SERVICES.len()),
        subsequence(HOSTS.to_vec(), 0..=2),
        if deleting_allowed {
            proptest::bool::weighted(0.2).boxed()
        } else {
            Just(false).boxed()
        },
        any::<bool>(),
    )
        .prop_map(
            |(desired, states, roles, unreachable, deleting, drop_unreachable_reports)| {
                let unreachable: BTreeSet<String> =
                    unreachable.iter().map(|h| h.to_string()).collect();
                let desired_kind: BTreeMap<Key, InstanceKind> = desired
                    .iter()
                    .map(|d| ((d.host_id.clone(), d.instance_id.clone()), d.kind.clone()))
                    .collect();
                let mut observed = Vec::new();
                let mut applied = Vec::new();
                for ((instance_id, host_id, kind), (report, rec)) in
                    universe().into_iter().zip(states)
                {
                    // A desired instance is reported with its desired kind (a primary stays a primary).
                    let kind = desired_kind
                        .get(&(host_id.clone(), instance_id.clone()))
                        .cloned()
                        .unwrap_or(kind);
                    // The contract is that unreachable hosts report nothing; sometimes break it,
                    // to check that such reports are ignored anyway.
                    let hidden = drop_unreachable_reports && unreachable.contains(&host_id);
                    if let Some((hash, status)) = report.filter(|_| !hidden) {
                        observed.push(ObservedInstance {
                            instance_id: instance_id.clone(),
                            host_id: host_id.clone(),
                            kind: kind.clone(),
                            spec_hash: hash.map(|h| HASHES[h].to_string()),
                            status: STATUSES[status],
                            resources: None,
                            host_ports: Default::default(),
                        });
                    }
                    if let Some((hash, res)) = rec {
                        applied.push(AppliedRecord {
                            instance_id,
                            host_id,
                            kind,
                            spec_hash: HASHES[hash].to_string(),
                            resources: RESOURCES[res],
                        });
                    }
                }
                PlanInput {
                    database_id: DB.to_string(),
                    deleting,
                    desired,
                    observed,
                    applied,
                    roles: roles.iter().map(|s| s.to_string()).collect(),
                    unreachable_hosts: unreachable,
                }
            },
        )
}

/// Applies each step's effect the way a successful executor would.
fn simulate(input: &PlanInput, plan: &Plan) -> PlanInput {
    let mut next = input.clone();
    let desired: BTreeMap<Key, &DesiredInstance> = input
        .desired
        .iter()
        .map(|d| ((d.host_id.clone(), d.instance_id.clone()), d))
        .collect();
    let same = |host: &str, id: &str, h: &String, i: &String| h == host && i == id;
    for step in plan.steps() {
        match step {
            Step::Apply {
                instance_id,
                host_id,
                ..
            } => {
                let d = desired[&(host_id.clone(), instance_id.clone())];
                next.observed
                    .retain(|o| !same(host_id, instance_id, &o.host_id, &o.instance_id));
                next.applied
                    .retain(|r| !same(host_id, instance_id, &r.host_id, &r.instance_id));
                next.observed.push(ObservedInstance {
                    instance_id: d.instance_id.clone(),
                    host_id: d.host_id.clone(),
                    kind: d.kind.clone(),
                    spec_hash: Some(d.spec_hash.clone()),
                    status: ObservedStatus::Running,
                    resources: None,
                    host_ports: Default::default(),
                });
                next.applied.push(record_of(d));
            }
            Step::Resize {
                instance_id,
                host_id,
                resources,
            } => {
                let d = desired[&(host_id.clone(), instance_id.clone())];
                assert_eq!(
                    *resources, d.resources,
                    "a Resize sets the desired resources"
                );
                next.applied
                    .retain(|r| !same(host_id, instance_id, &r.host_id, &r.instance_id));
                next.applied.push(record_of(d));
            }
            Step::Remove {
                instance_id,
                host_id,
            } => {
                next.observed
                    .retain(|o| !same(host_id, instance_id, &o.host_id, &o.instance_id));
                next.applied
                    .retain(|r| !same(host_id, instance_id, &r.host_id, &r.instance_id));
            }
            Step::CreateRoles { service_id } => {
                next.roles.insert(service_id.clone());
            }
            Step::DropRoles { service_id } => {
                next.roles.remove(service_id);
            }
        }
    }
    next
}

fn record_of(d: &DesiredInstance) -> AppliedRecord {
    AppliedRecord {
        instance_id: d.instance_id.clone(),
        host_id: d.host_id.clone(),
        kind: d.kind.clone(),
        spec_hash: d.spec_hash.clone(),
        resources: d.resources,
    }
}

/// Services with a report or record on an unreachable host.
fn stranded_services(input: &PlanInput) -> BTreeSet<String> {
    let observed = input.observed.iter().map(|o| (&o.host_id, &o.kind));
    let applied = input.applied.iter().map(|r| (&r.host_id, &r.kind));
    observed
        .chain(applied)
        .filter(|(host, _)| input.unreachable_hosts.contains(*host))
        .filter_map(|(_, kind)| kind.service_id().map(str::to_string))
        .collect()
}

/// Roles are made on every node's primary: they change only while each one is reachable and
/// either runs or is applied by the same plan.
fn roles_can_change(input: &PlanInput) -> bool {
    let p = plan(input);
    input
        .desired
        .iter()
        .filter(|d| matches!(d.kind, InstanceKind::Postgres { primary: true, .. }))
        .all(|d| {
            let reachable = !input.unreachable_hosts.contains(&d.host_id);
            let running = input.observed.iter().any(|o| {
                o.instance_id == d.instance_id
                    && o.host_id == d.host_id
                    && o.status == ObservedStatus::Running
            });
            let stepped = p
                .steps()
                .any(|s| s.instance_id() == Some(d.instance_id.as_str()));
            reachable && (running || stepped)
        })
}

/// A service without roles waits, containers included, while its roles cannot be made.
fn service_waits(input: &PlanInput, d: &DesiredInstance) -> bool {
    d.kind
        .service_id()
        .is_some_and(|s| !input.roles.contains(s))
        && !roles_can_change(input)
}

fn desired_services(input: &PlanInput) -> BTreeSet<String> {
    input
        .desired
        .iter()
        .filter_map(|d| d.kind.service_id().map(str::to_string))
        .collect()
}

/// The same input with every list in another order.
fn reordered(input: &PlanInput, by: usize) -> PlanInput {
    let mut other = input.clone();
    other.desired.reverse();
    let n = other.observed.len().max(1);
    other.observed.rotate_left(by % n);
    other.applied.reverse();
    other
}

/// Converges `input` (which must not be deleting) by one plan and its execution.
fn converged(input: &PlanInput) -> PlanInput {
    let next = simulate(input, &plan(input));
    assert!(plan(&next).is_empty(), "one round converges");
    next
}

fn services_of(input: &PlanInput) -> Vec<String> {
    desired_services(input).into_iter().collect()
}

/// Whether `step`'s instance goes from limits to none (cpu or memory) between `base` and `changed`.
fn lifts(base: &PlanInput, changed: &PlanInput, step: &Step) -> bool {
    let find = |input: &PlanInput| {
        input
            .desired
            .iter()
            .find(|d| {
                Some(d.instance_id.as_str()) == step.instance_id()
                    && Some(d.host_id.as_str()) == step.host_id()
            })
            .map(|d| d.resources)
            .unwrap()
    };
    let (from, to) = (find(base), find(changed));
    (from.nano_cpus > 0 && to.nano_cpus == 0) || (from.memory_bytes > 0 && to.memory_bytes == 0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) Executing the plan reaches the desired state on reachable hosts, and the next
    /// plan is empty; (d) nothing is planned on an unreachable host.
    #[test]
    fn plan_converges(input in plan_input(true)) {
        let p = plan(&input);
        for step in p.steps() {
            if let Some(host) = step.host_id() {
                prop_assert!(!input.unreachable_hosts.contains(host), "{step:?} on an unreachable host");
            }
        }
        let next = simulate(&input, &p);
        prop_assert_eq!(plan(&next), Plan::default(), "replanning after execution");

        let reachable = |h: &String| !input.unreachable_hosts.contains(h);
        let desired: Vec<&DesiredInstance> = if input.deleting { vec![] } else { input.desired.iter().collect() };
        let desired_keys: BTreeSet<Key> = desired.iter().map(|d| (d.host_id.clone(), d.instance_id.clone())).collect();
        for d in desired.iter().filter(|d| reachable(&d.host_id) && !service_waits(&input, d)) {
            let reports: Vec<_> = next.observed.iter().filter(|o| o.host_id == d.host_id && o.instance_id == d.instance_id).collect();
            prop_assert!(!reports.is_empty(), "{} not reported", d.instance_id);
            for o in reports {
                prop_assert_eq!(o.spec_hash.as_deref(), Some(d.spec_hash.as_str()));
                prop_assert!(matches!(o.status, ObservedStatus::Running | ObservedStatus::Creating));
            }
            let records: Vec<_> = next.applied.iter().filter(|r| r.host_id == d.host_id && r.instance_id == d.instance_id).collect();
            prop_assert_eq!(records.len(), 1);
            prop_assert_eq!(records[0].resources, d.resources);
            prop_assert_eq!(&records[0].spec_hash, &d.spec_hash);
        }
        for o in next.observed.iter().filter(|o| reachable(&o.host_id)) {
            prop_assert!(desired_keys.contains(&(o.host_id.clone(), o.instance_id.clone())), "leftover {o:?}");
        }
        for r in next.applied.iter().filter(|r| reachable(&r.host_id)) {
            prop_assert!(desired_keys.contains(&(r.host_id.clone(), r.instance_id.clone())), "leftover {r:?}");
        }
        // Unreachable hosts are left exactly as they were.
        let on_unreachable = |i: &PlanInput| -> (Vec<ObservedInstance>, Vec<AppliedRecord>) {
            (
                i.observed.iter().filter(|o| !reachable(&o.host_id)).cloned().collect(),
                i.applied.iter().filter(|r| !reachable(&r.host_id)).cloned().collect(),
            )
        };
        prop_assert_eq!(on_unreachable(&next), on_unreachable(&input));

        if input.deleting {
            prop_assert_eq!(&next.roles, &input.roles, "deleting forgets roles, it does not create or drop them");
        } else if !roles_can_change(&input) {
            prop_assert_eq!(&next.roles, &input.roles, "roles wait for every primary's host");
        } else {
            let wanted = desired_services(&input);
            prop_assert!(wanted.is_subset(&next.roles));
            let stranded = stranded_services(&input);
            for extra in next.roles.difference(&wanted) {
                prop_assert!(stranded.contains(extra), "roles of {extra} left behind");
            }
        }
    }

    /// (e) Same input, same plan, whatever the order of the input lists.
    #[test]
    fn plan_is_deterministic(input in plan_input(true), by in 0usize..8) {
        let p = plan(&input);
        prop_assert_eq!(&p, &plan(&input.clone()));
        prop_assert_eq!(&p, &plan(&reordered(&input, by)));
    }

    /// (f) Roles before their service starts, primaries before replicas; phases are
    /// non-empty and sorted.
    #[test]
    fn plan_orders_dependencies(input in plan_input(true)) {
        let p = plan(&input);
        let kinds: BTreeMap<Key, &InstanceKind> = input.desired.iter().map(|d| ((d.host_id.clone(), d.instance_id.clone()), &d.kind)).collect();
        let mut roles_phase = BTreeMap::new();
        let mut primary_applies = Vec::new();
        let mut replica_applies = Vec::new();
        let mut service_applies = Vec::new();
        for (i, phase) in p.phases.iter().enumerate() {
            prop_assert!(!phase.is_empty());
            let ids: Vec<_> = phase.iter().map(order_key).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            prop_assert_eq!(ids, sorted);
            for step in phase {
                match step {
                    Step::CreateRoles { service_id } => { roles_phase.insert(service_id.clone(), i); }
                    Step::Apply { .. } => match kinds[&key_of_step(step).unwrap()] {
                        InstanceKind::Postgres { primary: true, .. } => primary_applies.push(i),
                        InstanceKind::Postgres { primary: false, .. } => replica_applies.push(i),
                        InstanceKind::Service { service_id } => service_applies.push((service_id.clone(), i)),
                    },
                    _ => {}
                }
            }
        }
        for (service, i) in service_applies {
            if let Some(r) = roles_phase.get(&service) {
                prop_assert!(*r < i, "CreateRoles({service}) in phase {r}, its Apply in phase {i}");
            }
        }
        if let (Some(last_primary), Some(first_replica)) = (primary_applies.iter().max(), replica_applies.iter().min()) {
            prop_assert!(last_primary < first_replica);
        }
    }

    /// (b) From a converged state, changing one service's spec_hash or resources plans
    /// only that service's instances (on reachable hosts), each with the matching step.
    #[test]
    fn changing_one_service_touches_only_it(input in plan_input(false), which in any::<Index>(), hash in any::<bool>()) {
        let base = converged(&input);
        let services = services_of(&base);
        prop_assume!(!services.is_empty());
        let service = &services[which.index(services.len())];
        let mut changed = base.clone();
        let mut expected = BTreeSet::new();
        let mut maybe = BTreeSet::new();
        for d in changed.desired.iter_mut().filter(|d| d.kind.service_id() == Some(service)) {
            if hash {
                d.spec_hash = format!("{}-new", d.spec_hash);
            } else {
                let i = RESOURCES.iter().position(|r| *r == d.resources).unwrap();
                d.resources = RESOURCES[(i + 1) % RESOURCES.len()];
            }
            // A service whose roles cannot be made yet may or may not move (an Apply waits,
            // a Resize of a running container does not); it is judged by the other checks.
            let waits = service_waits(&base, d);
            if waits {
                maybe.insert((d.host_id.clone(), d.instance_id.clone()));
            }
            if !base.unreachable_hosts.contains(&d.host_id) && !waits {
                expected.insert((d.host_id.clone(), d.instance_id.clone()));
            }
        }
        let p = plan(&changed);
        let mut touched = BTreeSet::new();
        for step in p.steps() {
            match step {
                Step::Apply { reason: ApplyReason::Update, .. } if hash => {}
                // Removing a limit needs a new container; any other change of limits does not.
                Step::Apply { reason: ApplyReason::LiftLimits, .. } if !hash => prop_assert!(lifts(&base, &changed, step)),
                Step::Resize { .. } if !hash => prop_assert!(!lifts(&base, &changed, step)),
                other => prop_assert!(false, "unexpected {other:?}"),
            }
            touched.insert(key_of_step(step).unwrap());
        }
        let touched: BTreeSet<Key> = touched.difference(&maybe).cloned().collect();
        prop_assert_eq!(touched, expected);
        prop_assert!(plan(&simulate(&changed, &p)).is_empty());
    }

        /// (c) From a converged state, removing one service from the desired set plans only
    /// its Removes and its DropRoles.
    #[test]
    fn removing_one_service_touches_only_it(input in plan_input(false), which in any::<Index>()) {
        let base = converged(&input);
        let services = services_of(&base);
        prop_assume!(!services.is_empty());
        let service = services[which.index(services.len())].clone();
        let mut changed = base.clone();
        changed.desired.retain(|d| d.kind.service_id() != Some(service.as_str()));

        let mut expected: Vec<Step> = base
            .desired
            .iter()
            .filter(|d| d.kind.service_id() == Some(service.as_str()))
            .filter(|d| !base.unreachable_hosts.contains(&d.host_id))
            // Only what exists can be removed: a waiting service never got its containers.
            .filter(|d| {
                base.observed.iter().any(|o| o.instance_id == d.instance_id && o.host_id == d.host_id)
                    || base.applied.iter().any(|r| r.instance_id == d.instance_id && r.host_id == d.host_id)
            })
            .map(|d| Step::Remove { instance_id: d.instance_id.clone(), host_id: d.host_id.clone() })
            .collect();
        expected.sort_by(|a, b| a.instance_id().cmp(&b.instance_id()));
        let p = plan(&changed);
        let mut phases = p.phases.iter();
        if !expected.is_empty() {
            prop_assert_eq!(phases.next(), Some(&expected));
        }
        if stranded_services(&base).contains(&service) || !roles_can_change(&changed) || !base.roles.contains(&service) {
            prop_assert_eq!(phases.next(), None, "roles stay while a container is stranded or a primary is away");
        } else {
            prop_assert_eq!(phases.next(), Some(&vec![Step::DropRoles { service_id: service.clone() }]));
            prop_assert_eq!(phases.next(), None);
        }
    }
}
