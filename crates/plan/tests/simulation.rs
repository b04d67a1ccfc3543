//! Properties of `plan` over a small simulated world: a few hosts, nodes and services, in
//! random observed, applied, roles, reachability and Patroni states. Executing a plan is
//! simulated, and so is Patroni between plans: it elects a leader among running members of
//! a node without one (ADR 016).

use std::collections::{BTreeMap, BTreeSet};

use plan::{
    AppliedRecord, ApplyReason, DesiredInstance, InstanceKind, MAX_TAKEOVER_LAG_BYTES,
    ObservedInstance, ObservedStatus, PatroniMember, PatroniNode, Plan, PlanInput, Resources, Step,
    plan, postgres_instance_id, service_instance_id,
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
        Step::ForgetNode { node } => (node.clone(), String::new()),
        Step::Replicate { .. } => (String::new(), String::new()),
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
                    },
                    spec_hash: HASHES[hash].to_string(),
                    resources: RESOURCES[res],
                    waiting: false,
                    host_ports: Default::default(),
                    bootstrap: i == 0,
                    stopped: false,
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
                    bootstrap: false,
                    stopped: false,
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
        patroni_choices(),
    )
        .prop_map(
            |(desired, states, roles, unreachable, deleting, drop_unreachable_reports, choices)| {
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
                let patroni = patroni_of(&observed, &choices);
                PlanInput {
                    database_id: DB.to_string(),
                    deleting,
                    desired,
                    observed,
                    applied,
                    roles: roles.iter().map(|s| s.to_string()).collect(),
                    unreachable_hosts: unreachable,
                    patroni,
                    replicated: Default::default(),
                    replicated_hosts: Default::default(),
                }
            },
        )
}

/// Per node: which running member leads (None: no leader, or an index among them), whether
/// it is initialised, whether it has keys at all without members (stale ones); per
/// instance of the universe, how far behind it is.
type PatroniChoices = Vec<(Option<Index>, bool, bool, Vec<usize>)>;

const LAGS: [u64; 3] = [0, 1 << 10, MAX_TAKEOVER_LAG_BYTES + 1];
const LEADER_WAL: u64 = 64 << 20;

fn patroni_choices() -> impl Strategy<Value = PatroniChoices> {
    let per_node = (
        proptest::option::of(any::<Index>()),
        any::<bool>(),
        proptest::bool::weighted(0.2),
        proptest::collection::vec(0..LAGS.len(), HOSTS.len()),
    );
    proptest::collection::vec(per_node, NODES.len())
}

fn member(role: &str, state: &str, wal: u64) -> PatroniMember {
    PatroniMember {
        role: role.into(),
        state: state.into(),
        replication_state: None,
        timeline: Some(1),
        wal_position: Some(wal),
        pending_restart: false,
    }
}

/// What Patroni would report for the containers: a member per Postgres container that is
/// not missing, its state after the container's, and a leader among the running ones.
fn patroni_of(
    observed: &[ObservedInstance],
    choices: &PatroniChoices,
) -> BTreeMap<String, PatroniNode> {
    let mut out = BTreeMap::new();
    for (n, (leader, initialized, stale, lags)) in NODES.iter().zip(choices) {
        let mut node = PatroniNode::default();
        for (h, host) in HOSTS.iter().enumerate() {
            let id = postgres_instance_id(DB, n, host);
            let Some(o) = observed
                .iter()
                .find(|o| o.instance_id == id && o.host_id == *host)
            else {
                continue;
            };
            let state = match o.status {
                ObservedStatus::Running => "running",
                ObservedStatus::Creating => "starting",
                ObservedStatus::Failed | ObservedStatus::Stopped => "stopped",
                ObservedStatus::Missing => continue,
            };
            node.members
                .insert(id, member("replica", state, LEADER_WAL - LAGS[lags[h]]));
        }
        let running: Vec<String> = node
            .members
            .iter()
            .filter(|(_, m)| m.is_running())
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(pick) = leader.filter(|_| !running.is_empty()) {
            let id = running[pick.index(running.len())].clone();
            let m = node.members.get_mut(&id).unwrap();
            m.role = "primary".into();
            m.wal_position = Some(LEADER_WAL);
            node.leader = Some(id);
        }
        node.initialized = *initialized || node.leader.is_some();
        if node.members.is_empty() && *stale {
            node.leader = Some(format!("{DB}-{n}-gone"));
            node.initialized = true;
        }
        if node != PatroniNode::default() {
            out.insert(n.to_string(), node);
        }
    }
    out
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
            Step::Replicate { nodes } => {
                next.replicated = nodes.iter().cloned().collect();
                // The control plane records the hosts each node's subscribers list.
                next.replicated_hosts = nodes
                    .iter()
                    .map(|n| {
                        let hosts = input
                            .desired
                            .iter()
                            .filter(|d| d.kind.node() == Some(n.as_str()))
                            .map(|d| d.host_id.clone())
                            .collect();
                        (n.clone(), hosts)
                    })
                    .collect();
            }
            Step::Switchover {
                node,
                instance_id,
                candidate,
                ..
            } => {
                let n = next
                    .patroni
                    .get_mut(node)
                    .expect("a switchover of a node Patroni knows");
                assert_eq!(
                    n.leader.as_deref(),
                    Some(instance_id.as_str()),
                    "only the leader hands over"
                );
                assert!(
                    n.can_take_over(candidate),
                    "{candidate} cannot take over: {n:?}"
                );
                n.members.get_mut(instance_id).unwrap().role = "replica".into();
                n.members.get_mut(candidate).unwrap().role = "primary".into();
                n.leader = Some(candidate.clone());
            }
            Step::ForgetNode { node } => {
                next.patroni.remove(node);
            }
            Step::Stop { .. } => unreachable!("the simulation stops no instance"),
        }
        // What Patroni does with the instance the step changed.
        if let (Some(id), Some(InstanceKind::Postgres { node })) = (
            step.instance_id(),
            step.instance_id().and_then(|id| kind_of(input, id)),
        ) && !matches!(step, Step::Switchover { .. })
        {
            let n = next.patroni.entry(node.clone()).or_default();
            match step {
                Step::Remove { .. } => {
                    n.members.remove(id);
                    if n.leader.as_deref() == Some(id) {
                        n.leader = None;
                    }
                }
                Step::Apply { .. } => {
                    let role = if n.leader.as_deref() == Some(id) {
                        "primary"
                    } else {
                        "replica"
                    };
                    n.members
                        .insert(id.to_string(), member(role, "running", LEADER_WAL));
                }
                _ => {}
            }
        }
    }
    elect(&mut next);
    next
}

fn kind_of(input: &PlanInput, id: &str) -> Option<InstanceKind> {
    input
        .desired
        .iter()
        .find(|d| d.instance_id == id)
        .map(|d| d.kind.clone())
        .or_else(|| {
            input
                .observed
                .iter()
                .find(|o| o.instance_id == id)
                .map(|o| o.kind.clone())
        })
        .or_else(|| {
            input
                .applied
                .iter()
                .find(|r| r.instance_id == id)
                .map(|r| r.kind.clone())
        })
}

/// Patroni between plans: a node without a leader elects its first running member, and
/// is then initialised.
fn elect(input: &mut PlanInput) {
    for node in input.patroni.values_mut() {
        if node.leader.is_none()
            && let Some(id) = node
                .members
                .iter()
                .find(|(_, m)| m.is_running())
                .map(|(id, _)| id.clone())
        {
            let m = node.members.get_mut(&id).unwrap();
            m.role = "primary".into();
            m.wal_position = Some(LEADER_WAL);
            node.leader = Some(id);
            node.initialized = true;
        }
    }
    input.patroni.retain(|_, n| n != &PatroniNode::default());
}

/// Executes plans until one has no step, at most `rounds` of them; returns the state and
/// the last plan (which only waits, if anything).
fn run(input: &PlanInput, rounds: usize) -> (PlanInput, Plan) {
    let mut current = input.clone();
    for _ in 0..rounds {
        let p = plan(&current);
        if p.is_empty() {
            return (current, p);
        }
        for step in p.steps() {
            if let Some(host) = step.host_id() {
                assert!(
                    !current.unreachable_hosts.contains(host),
                    "{step:?} on an unreachable host"
                );
            }
        }
        current = simulate(&current, &p);
    }
    let p = plan(&current);
    assert!(p.is_empty(), "not converged after {rounds} plans: {p:?}");
    (current, p)
}

/// Plans it takes at most: a new node is initialised, then its other instances are made;
/// a leader that goes hands over to an instance made before, then is removed.
const ROUNDS: usize = 5;

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

/// Roles are made on every node's leader: they can change only while each desired node has
/// one that runs on a reachable host.
fn roles_can_change(input: &PlanInput) -> bool {
    let nodes: BTreeSet<&str> = input
        .desired
        .iter()
        .filter_map(|d| match &d.kind {
            InstanceKind::Postgres { node } => Some(node.as_str()),
            InstanceKind::Service { .. } => None,
        })
        .collect();
    nodes.iter().all(|node| {
        let Some(p) = input.patroni.get(*node) else {
            return false;
        };
        let Some(leader) = p.leader.as_deref() else {
            return false;
        };
        p.members.get(leader).is_some_and(|m| m.is_running())
            && input
                .observed
                .iter()
                .map(|o| (&o.host_id, &o.instance_id))
                .chain(input.applied.iter().map(|r| (&r.host_id, &r.instance_id)))
                .any(|(h, id)| id == leader && !input.unreachable_hosts.contains(h))
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

/// Converges `input` (which must not be deleting) by executing its plans.
fn converged(input: &PlanInput) -> PlanInput {
    run(input, ROUNDS).0
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

/// The leader of each node that has desired instances (not while deleting).
fn leaders_of_kept_nodes(input: &PlanInput) -> BTreeSet<String> {
    if input.deleting {
        return BTreeSet::new();
    }
    input
        .patroni
        .iter()
        .filter(|(node, _)| {
            input
                .desired
                .iter()
                .any(|d| matches!(&d.kind, InstanceKind::Postgres { node: n } if n == *node))
        })
        .filter_map(|(_, p)| p.leader.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) Executing plans (at most [`ROUNDS`]) reaches the desired state on reachable
    /// hosts, but for what the last plan says it waits for; (d) nothing is planned on an
    /// unreachable host (checked by `run`).
    #[test]
    fn plan_converges(input in plan_input(true)) {
        let (next, last) = run(&input, ROUNDS);
        let waits = |id: &str| last.waiting.iter().any(|w| w.reason.contains(id));

        let reachable = |h: &String| !input.unreachable_hosts.contains(h);
        let desired: Vec<&DesiredInstance> = if input.deleting { vec![] } else { input.desired.iter().collect() };
        let desired_keys: BTreeSet<Key> = desired.iter().map(|d| (d.host_id.clone(), d.instance_id.clone())).collect();
        for d in desired.iter().filter(|d| reachable(&d.host_id) && !service_waits(&next, d) && !waits(&d.instance_id)) {
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
        // What is left is only a leader that waits for a replica to take over.
        let left = |h: &String, id: &String| reachable(h) && !desired_keys.contains(&(h.clone(), id.clone()));
        for o in next.observed.iter().filter(|o| left(&o.host_id, &o.instance_id)) {
            prop_assert!(waits(&o.instance_id), "leftover {o:?}, waiting for {:?}", last.waiting);
        }
        for r in next.applied.iter().filter(|r| left(&r.host_id, &r.instance_id)) {
            prop_assert!(waits(&r.instance_id), "leftover {r:?}, waiting for {:?}", last.waiting);
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
        } else if roles_can_change(&next) {
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

    /// (g) The leader of a node that stays is never removed: it hands over first, and only
    /// to a replica that can take over. Across every plan until convergence.
    #[test]
    fn a_kept_nodes_leader_is_never_removed(input in plan_input(true)) {
        let mut current = input.clone();
        for _ in 0..ROUNDS {
            let p = plan(&current);
            let leaders = leaders_of_kept_nodes(&current);
            for step in p.steps() {
                if let Step::Remove { instance_id, .. } = step {
                    prop_assert!(!leaders.contains(instance_id), "{step:?} removes a leader: {:?}", current.patroni);
                }
                if let Step::Switchover { node, candidate, .. } = step {
                    prop_assert!(current.patroni[node].can_take_over(candidate));
                    prop_assert!(current.desired.iter().any(|d| &d.instance_id == candidate));
                }
            }
            if p.is_empty() {
                break;
            }
            current = simulate(&current, &p);
        }
    }

    /// (f) Roles before their service starts, a node's leader before its other instances,
    /// switchovers after every Apply; phases are non-empty and sorted.
    #[test]
    fn plan_orders_dependencies(input in plan_input(true)) {
        let p = plan(&input);
        let kinds: BTreeMap<Key, &InstanceKind> = input.desired.iter().map(|d| ((d.host_id.clone(), d.instance_id.clone()), &d.kind)).collect();
        let leaders: BTreeSet<&str> = input.patroni.values().filter_map(|n| n.leader.as_deref()).collect();
        let mut roles_phase = BTreeMap::new();
        let mut first_applies: BTreeMap<String, usize> = BTreeMap::new();
        let mut other_applies: BTreeMap<String, usize> = BTreeMap::new();
        let mut service_applies = Vec::new();
        let mut last_apply = None;
        let mut first_switchover = None;
        for (i, phase) in p.phases.iter().enumerate() {
            prop_assert!(!phase.is_empty());
            let ids: Vec<_> = phase.iter().map(order_key).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            prop_assert_eq!(ids, sorted);
            for step in phase {
                match step {
                    Step::CreateRoles { service_id } => { roles_phase.insert(service_id.clone(), i); }
                    Step::Switchover { .. } => { first_switchover.get_or_insert(i); }
                    Step::Apply { instance_id, .. } => {
                        last_apply = Some(i);
                        match kinds[&key_of_step(step).unwrap()] {
                            InstanceKind::Postgres { node } if leaders.contains(instance_id.as_str()) => { first_applies.insert(node.clone(), i); }
                            InstanceKind::Postgres { node } => { other_applies.entry(node.clone()).or_insert(i); }
                            InstanceKind::Service { service_id } => service_applies.push((service_id.clone(), i)),
                        }
                    }
                    _ => {}
                }
            }
        }
        for (service, i) in service_applies {
            if let Some(r) = roles_phase.get(&service) {
                prop_assert!(*r < i, "CreateRoles({service}) in phase {r}, its Apply in phase {i}");
            }
        }
        for (node, leader) in &first_applies {
            if let Some(other) = other_applies.get(node) {
                prop_assert!(leader < other, "{node}'s leader in phase {leader}, another instance in {other}");
            }
        }
        if let (Some(apply), Some(switchover)) = (last_apply, first_switchover) {
            prop_assert!(apply < switchover);
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
