use std::collections::BTreeSet;

use super::plan;
use crate::types::*;

pub(super) const R1: Resources = Resources {
    nano_cpus: 500_000_000,
    memory_bytes: 1 << 29,
};
pub(super) const R2: Resources = Resources {
    nano_cpus: 2_000_000_000,
    memory_bytes: 0,
};

pub(super) fn pg(node: &str) -> InstanceKind {
    InstanceKind::Postgres {
        node: node.to_string(),
    }
}

pub(super) fn svc(service_id: &str) -> InstanceKind {
    InstanceKind::Service {
        service_id: service_id.to_string(),
    }
}

pub(super) fn desired(
    id: &str,
    host: &str,
    kind: InstanceKind,
    hash: &str,
    resources: Resources,
) -> DesiredInstance {
    DesiredInstance {
        instance_id: id.to_string(),
        host_id: host.to_string(),
        kind,
        spec_hash: hash.to_string(),
        resources,
        waiting: false,
        host_ports: BTreeSet::new(),
        bootstrap: false,
        stopped: false,
    }
}

/// A desired Postgres instance on its node's first host.
pub(super) fn first(id: &str, host: &str, node: &str, hash: &str) -> DesiredInstance {
    DesiredInstance {
        bootstrap: true,
        ..desired(id, host, pg(node), hash, R1)
    }
}

/// Patroni's view of a node: `leader`, and each member with its state and WAL position.
pub(super) fn patroni(leader: Option<&str>, members: &[(&str, &str, u64)]) -> PatroniNode {
    PatroniNode {
        leader: leader.map(str::to_string),
        initialized: true,
        members: members
            .iter()
            .map(|(name, state, wal)| {
                let role = if Some(*name) == leader {
                    "primary"
                } else {
                    "replica"
                };
                let member = PatroniMember {
                    role: role.into(),
                    state: state.to_string(),
                    replication_state: None,
                    timeline: Some(1),
                    wal_position: Some(*wal),
                    pending_restart: false,
                };
                (name.to_string(), member)
            })
            .collect(),
    }
}

pub(super) fn observed(
    id: &str,
    host: &str,
    kind: InstanceKind,
    hash: Option<&str>,
    status: ObservedStatus,
) -> ObservedInstance {
    ObservedInstance {
        instance_id: id.to_string(),
        host_id: host.to_string(),
        kind,
        spec_hash: hash.map(str::to_string),
        status,
        resources: None,
        host_ports: BTreeSet::new(),
    }
}

pub(super) fn record(
    id: &str,
    host: &str,
    kind: InstanceKind,
    hash: &str,
    resources: Resources,
) -> AppliedRecord {
    AppliedRecord {
        instance_id: id.to_string(),
        host_id: host.to_string(),
        kind,
        spec_hash: hash.to_string(),
        resources,
    }
}

pub(super) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub(super) fn apply(id: &str, host: &str, reason: ApplyReason) -> Step {
    Step::Apply {
        instance_id: id.to_string(),
        host_id: host.to_string(),
        reason,
    }
}

pub(super) fn resize(id: &str, host: &str, resources: Resources) -> Step {
    Step::Resize {
        instance_id: id.to_string(),
        host_id: host.to_string(),
        resources,
    }
}

pub(super) fn remove(id: &str, host: &str) -> Step {
    Step::Remove {
        instance_id: id.to_string(),
        host_id: host.to_string(),
    }
}

pub(super) fn create_roles(service_id: &str) -> Step {
    Step::CreateRoles {
        service_id: service_id.to_string(),
    }
}

pub(super) fn drop_roles(service_id: &str) -> Step {
    Step::DropRoles {
        service_id: service_id.to_string(),
    }
}

pub(super) fn input() -> PlanInput {
    PlanInput {
        database_id: "db".to_string(),
        ..PlanInput::default()
    }
}

/// The per-instance rules, for a service instance and for a Postgres primary: the same
/// table must hold whatever the kind.
#[test]
fn instance_rules() {
    use ApplyReason::*;
    use ObservedStatus::*;
    type Case = (
        &'static str,
        Option<(Option<&'static str>, ObservedStatus)>,
        Option<(&'static str, Resources)>,
        Option<fn() -> Step>,
    );
    let cases: &[Case] = &[
        (
            "nothing anywhere",
            None,
            None,
            Some(|| apply("i", "h", Create)),
        ),
        (
            "record, no container",
            None,
            Some(("H", R1)),
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "record of an old hash, no container",
            None,
            Some(("old", R2)),
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "failed",
            Some((Some("H"), Failed)),
            Some(("H", R1)),
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "stopped",
            Some((Some("H"), Stopped)),
            Some(("H", R1)),
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "missing",
            Some((Some("H"), Missing)),
            Some(("H", R1)),
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "missing without record",
            Some((Some("H"), Missing)),
            None,
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "failed, resources changed",
            Some((Some("H"), Failed)),
            Some(("H", R2)),
            Some(|| apply("i", "h", Heal)),
        ),
        (
            "failed, old hash",
            Some((Some("old"), Failed)),
            Some(("old", R1)),
            Some(|| apply("i", "h", Update)),
        ),
        (
            "stopped, old hash",
            Some((Some("old"), Stopped)),
            Some(("old", R1)),
            Some(|| apply("i", "h", Update)),
        ),
        (
            "missing, unknown hash",
            Some((None, Missing)),
            None,
            Some(|| apply("i", "h", Update)),
        ),
        (
            "running, old hash",
            Some((Some("old"), Running)),
            Some(("old", R1)),
            Some(|| apply("i", "h", Update)),
        ),
        (
            "running, old hash, new resources",
            Some((Some("old"), Running)),
            Some(("old", R2)),
            Some(|| apply("i", "h", Update)),
        ),
        (
            "running, unknown hash",
            Some((None, Running)),
            Some(("H", R1)),
            Some(|| apply("i", "h", Update)),
        ),
        (
            "creating, old hash",
            Some((Some("old"), Creating)),
            Some(("old", R1)),
            Some(|| apply("i", "h", Update)),
        ),
        (
            "running, converged",
            Some((Some("H"), Running)),
            Some(("H", R1)),
            None,
        ),
        (
            "running, resources changed",
            Some((Some("H"), Running)),
            Some(("H", R2)),
            Some(|| resize("i", "h", R1)),
        ),
        (
            "running, no record",
            Some((Some("H"), Running)),
            None,
            Some(|| resize("i", "h", R1)),
        ),
        // The container is right, only the record lags: a Resize in place rewrites it.
        (
            "running, record of another hash",
            Some((Some("H"), Running)),
            Some(("old", R1)),
            Some(|| resize("i", "h", R1)),
        ),
        (
            "creating, record of another hash",
            Some((Some("H"), Creating)),
            Some(("old", R1)),
            Some(|| resize("i", "h", R1)),
        ),
        (
            "creating, in progress",
            Some((Some("H"), Creating)),
            Some(("H", R1)),
            None,
        ),
        (
            "creating, resources changed",
            Some((Some("H"), Creating)),
            Some(("H", R2)),
            Some(|| resize("i", "h", R1)),
        ),
        (
            "creating, no record",
            Some((Some("H"), Creating)),
            None,
            Some(|| resize("i", "h", R1)),
        ),
    ];
    // A service; a new node's first instance (or the only one left, with no leader); a
    // node's leader; a replica of another leader.
    let leads = |leader: &str| patroni(Some(leader), &[(leader, "running", 0)]);
    let variants = [
        (svc("s"), None),
        (pg("n1"), None),
        (pg("n1"), Some(leads("i"))),
        (pg("n1"), Some(leads("other"))),
    ];
    for (kind, node) in variants {
        for (name, obs, rec, expected) in cases {
            if node.is_some() && obs.is_none() && rec.is_none() {
                // Keys of a node none of whose instances exists are stale: see
                // `a_new_node_forgets_stale_keys_first`.
                continue;
            }
            let mut i = input();
            i.roles = kind.service_id().into_iter().map(str::to_string).collect();
            i.desired = vec![DesiredInstance {
                bootstrap: true,
                ..desired("i", "h", kind.clone(), "H", R1)
            }];
            i.patroni = node.iter().map(|n| ("n1".to_string(), n.clone())).collect();
            if node
                .as_ref()
                .is_some_and(|n| n.leader.as_deref() == Some("other"))
            {
                i.applied.push(record("other", "h2", kind.clone(), "H", R1));
                i.desired
                    .push(desired("other", "h2", kind.clone(), "H", R1));
                i.observed.push(observed(
                    "other",
                    "h2",
                    kind.clone(),
                    Some("H"),
                    ObservedStatus::Running,
                ));
            }
            i.observed.extend(
                obs.iter()
                    .map(|(hash, status)| observed("i", "h", kind.clone(), *hash, *status)),
            );
            i.applied.extend(
                rec.iter()
                    .map(|(hash, res)| record("i", "h", kind.clone(), hash, *res)),
            );
            let got: Vec<Step> = plan(&i).steps().cloned().collect();
            let expected: Vec<Step> = expected.iter().map(|f| f()).collect();
            assert_eq!(got, expected, "{name} ({kind:?}, {:?})", i.patroni);
        }
    }
}

#[test]
fn converged_database_has_an_empty_plan() {
    let mut i = input();
    i.roles = set(&["s"]);
    i.patroni = [(
        "n1".to_string(),
        patroni(Some("p"), &[("p", "running", 10), ("r", "running", 10)]),
    )]
    .into();
    for (id, kind) in [("p", pg("n1")), ("r", pg("n1")), ("s1", svc("s"))] {
        i.desired.push(desired(id, "h", kind.clone(), "H", R1));
        i.observed.push(observed(
            id,
            "h",
            kind.clone(),
            Some("H"),
            ObservedStatus::Running,
        ));
        i.applied.push(record(id, "h", kind, "H", R1));
    }
    let p = plan(&i);
    assert!(p.is_empty());
    assert_eq!(p, Plan::default(), "nothing to do and nothing to wait for");
    assert_eq!(p.steps().count(), 0);
}

/// A desired instance whose spec waits on another instance's published port is neither
/// created, updated, healed nor removed, and everything else goes on around it.
#[test]
fn a_waiting_instance_is_left_as_it_is() {
    let waiting = |id: &str, kind: InstanceKind| DesiredInstance {
        waiting: true,
        ..desired(id, "h2", kind, "", R1)
    };
    let mut i = input();
    i.desired.push(first("p", "h1", "n1", "H"));
    i.desired.push(waiting("r", pg("n1")));
    // Not there yet: only the primary is created; the replica waits for its port.
    assert_eq!(
        plan(&i).phases,
        vec![vec![apply("p", "h1", ApplyReason::Create)]]
    );
    // Already there, even down or from another spec: kept as it is, never removed.
    for status in [ObservedStatus::Running, ObservedStatus::Failed] {
        let mut i = i.clone();
        i.observed.push(observed(
            "p",
            "h1",
            pg("n1"),
            Some("H"),
            ObservedStatus::Running,
        ));
        i.applied.push(record("p", "h1", pg("n1"), "H", R1));
        i.observed
            .push(observed("r", "h2", pg("n1"), Some("OLD"), status));
        i.applied.push(record("r", "h2", pg("n1"), "OLD", R2));
        assert!(plan(&i).is_empty(), "{status:?}: {:?}", plan(&i));
    }
}

/// Removal of what is not desired: observed or recorded, on reachable hosts only.
#[test]
fn removal_rules() {
    use ObservedStatus::*;
    type Case = (
        &'static str,
        Vec<ObservedInstance>,
        Vec<AppliedRecord>,
        Vec<Step>,
    );
    let cases: Vec<Case> = vec![
        (
            "observed only",
            vec![observed("x", "h1", svc("s"), Some("H"), Running)],
            vec![],
            vec![remove("x", "h1")],
        ),
        (
            "recorded only",
            vec![],
            vec![record("x", "h1", svc("s"), "H", R1)],
            vec![remove("x", "h1")],
        ),
        (
            "observed and recorded: one step",
            vec![observed("x", "h1", svc("s"), Some("H"), Failed)],
            vec![record("x", "h1", svc("s"), "H", R1)],
            vec![remove("x", "h1")],
        ),
        (
            "observed with unknown hash, missing",
            vec![observed("x", "h1", pg("n2"), None, Missing)],
            vec![],
            vec![remove("x", "h1")],
        ),
        (
            "record on an unreachable host: nothing now",
            vec![],
            vec![record("x", "down", svc("s"), "H", R1)],
            vec![],
        ),
        (
            "a report from an unreachable host is ignored too",
            vec![observed("x", "down", svc("s"), Some("H"), Running)],
            vec![],
            vec![],
        ),
        (
            "the desired id on another host is another container",
            vec![observed("keep", "h2", svc("s"), Some("H"), Running)],
            vec![record("keep", "h2", svc("s"), "H", R1)],
            vec![remove("keep", "h2")],
        ),
    ];
    for (name, obs, rec, expected) in cases {
        let mut i = input();
        i.roles = set(&["s"]);
        i.unreachable_hosts = set(&["down"]);
        i.desired = vec![desired("keep", "h1", svc("s"), "H", R1)];
        i.observed = obs;
        i.observed
            .push(observed("keep", "h1", svc("s"), Some("H"), Running));
        i.applied = rec;
        i.applied.push(record("keep", "h1", svc("s"), "H", R1));
        let got: Vec<Step> = plan(&i).steps().cloned().collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn nothing_is_planned_on_an_unreachable_host() {
    let mut i = input();
    i.unreachable_hosts = set(&["down"]);
    i.roles = set(&["s"]);
    i.desired = vec![
        first("p", "down", "n1", "H"),
        desired("s-down", "down", svc("s"), "H", R1),
    ];
    // What the control plane recorded there is all it knows; it stays as it is.
    i.applied = vec![record("s-down", "down", svc("s"), "old", R2)];
    assert!(plan(&i).is_empty());
}

#[test]
fn roles() {
    type Case = (
        &'static str,
        bool,
        Vec<DesiredInstance>,
        Vec<AppliedRecord>,
        &'static [&'static str],
        Vec<Step>,
    );
    let on = |id: &str, host: &str, service: &str| desired(id, host, svc(service), "H", R1);
    let converged = |d: &[DesiredInstance]| -> Vec<AppliedRecord> {
        d.iter()
            .map(|d| record(&d.instance_id, &d.host_id, d.kind.clone(), "H", R1))
            .collect()
    };
    let two_instances = vec![on("a1", "h1", "a"), on("a2", "h2", "a")];
    let cases: Vec<Case> = vec![
        (
            "once per service, not per instance",
            false,
            two_instances.clone(),
            converged(&two_instances),
            &[],
            vec![create_roles("a")],
        ),
        (
            "roles present",
            false,
            two_instances.clone(),
            converged(&two_instances),
            &["a"],
            vec![],
        ),
        (
            "a service on an unreachable host still gets its roles",
            false,
            vec![on("d1", "down", "d")],
            vec![],
            &[],
            vec![create_roles("d")],
        ),
        (
            "no longer desired",
            false,
            two_instances.clone(),
            converged(&two_instances),
            &["a", "gone"],
            vec![drop_roles("gone")],
        ),
        (
            "no longer desired, but a container remains on an unreachable host",
            false,
            two_instances.clone(),
            [
                converged(&two_instances),
                vec![record("g", "down", svc("gone"), "H", R1)],
            ]
            .concat(),
            &["a", "gone"],
            vec![],
        ),
        (
            "roles wait while a primary's host is unreachable",
            false,
            vec![on("a1", "h1", "a"), first("p", "down", "n1", "H")],
            vec![],
            &["gone"],
            vec![resize("a1", "h1", R1)],
        ),
        (
            "roles wait while a primary is still starting",
            false,
            vec![on("a1", "h1", "a"), first("p", "h1", "n1", "H")],
            vec![record("p", "h1", pg("n1"), "H", R1)],
            &[],
            vec![resize("a1", "h1", R1)],
        ),
        (
            "deleting: roles are forgotten with the database, not dropped",
            true,
            vec![],
            vec![],
            &["a", "gone"],
            vec![],
        ),
    ];
    for (name, deleting, desired_set, applied, roles, expected) in cases {
        let mut i = input();
        i.deleting = deleting;
        i.unreachable_hosts = set(&["down"]);
        i.roles = set(roles);
        i.observed = desired_set
            .iter()
            .filter(|d| d.host_id != "down")
            .map(|d| {
                let starting = name.contains("still starting") && d.instance_id == "p";
                let status = if starting {
                    ObservedStatus::Creating
                } else {
                    ObservedStatus::Running
                };
                observed(
                    &d.instance_id,
                    &d.host_id,
                    d.kind.clone(),
                    Some("H"),
                    status,
                )
            })
            .collect();
        i.desired = desired_set;
        i.applied = applied;
        let got: Vec<Step> = plan(&i).steps().cloned().collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn deleting_removes_everything_reachable_and_ignores_desired() {
    use ObservedStatus::*;
    let mut i = input();
    i.deleting = true;
    i.unreachable_hosts = set(&["down"]);
    i.roles = set(&["s"]);
    // Even if the caller still passes the desired set, deleting means nothing is desired.
    i.desired = vec![
        first("db-n1-h1", "h1", "n1", "H"),
        desired("db-s-h1", "h1", svc("s"), "H", R1),
    ];
    i.patroni = [(
        "n1".to_string(),
        patroni(Some("db-n1-h1"), &[("db-n1-h1", "running", 0)]),
    )]
    .into();
    i.observed = vec![
        observed("db-n1-h1", "h1", pg("n1"), Some("H"), Running),
        observed("db-n1-h2", "h2", pg("n1"), Some("H"), Failed),
        observed("db-s-h1", "h1", svc("s"), Some("H"), Running),
    ];
    i.applied = vec![
        record("db-n1-h1", "h1", pg("n1"), "H", R1),
        record("db-s-h1", "h1", svc("s"), "H", R1),
        record("db-s-h2", "h2", svc("s"), "H", R1),
        record("db-s-down", "down", svc("s"), "H", R1),
    ];
    assert_eq!(
        plan(&i),
        Plan {
            phases: vec![
                vec![remove("db-s-h1", "h1"), remove("db-s-h2", "h2")],
                vec![remove("db-n1-h1", "h1"), remove("db-n1-h2", "h2")],
            ],
            waiting: vec![],
        }
    );
}

/// A change that gives every instance of a node a new container: the replicas first, then a
/// switchover to one that has caught up, then the old primary as a replica. Never the
/// primary while a replica is still to be replaced (Patroni would promote the replica the
/// plan replaces next).
#[test]
fn a_rolling_update_replaces_replicas_then_switches_over() {
    use ApplyReason::*;
    use ObservedStatus::*;
    let step = |leader: &str, hashes: [&str; 3]| {
        let mut i = input();
        let ids = ["db-n1-h1", "db-n1-h2", "db-n1-h3"];
        i.desired = vec![
            first(ids[0], "h1", "n1", "NEW"),
            desired(ids[1], "h2", pg("n1"), "NEW", R1),
            desired(ids[2], "h3", pg("n1"), "NEW", R1),
        ];
        i.observed = (0..3)
            .map(|k| {
                observed(
                    ids[k],
                    &format!("h{}", k + 1),
                    pg("n1"),
                    Some(hashes[k]),
                    Running,
                )
            })
            .collect();
        i.applied = (0..3)
            .map(|k| record(ids[k], &format!("h{}", k + 1), pg("n1"), hashes[k], R1))
            .collect();
        let members: Vec<(&str, &str, u64)> = ids.iter().map(|id| (*id, "running", 9)).collect();
        i.patroni = [("n1".to_string(), patroni(Some(leader), &members))].into();
        plan(&i)
    };
    // Both replicas first; the primary waits.
    let p = step("db-n1-h1", ["OLD", "OLD", "OLD"]);
    assert_eq!(
        p.steps().cloned().collect::<Vec<_>>(),
        [
            apply("db-n1-h2", "h2", Update),
            apply("db-n1-h3", "h3", Update)
        ]
    );
    assert!(
        p.waiting
            .iter()
            .any(|w| w.reason.contains("after its replicas")),
        "{:?}",
        p.waiting
    );
    // Then the primary hands over to an updated replica that has caught up.
    let p = step("db-n1-h1", ["OLD", "NEW", "NEW"]);
    assert_eq!(
        p.steps().cloned().collect::<Vec<_>>(),
        [Step::Switchover {
            node: "n1".into(),
            instance_id: "db-n1-h1".into(),
            host_id: "h1".into(),
            candidate: "db-n1-h2".into(),
        }]
    );
    // Then the old primary, now a replica, gets its new container.
    let p = step("db-n1-h2", ["OLD", "NEW", "NEW"]);
    assert_eq!(
        p.steps().cloned().collect::<Vec<_>>(),
        [apply("db-n1-h1", "h1", Update)]
    );
}

/// Every phase at once, each sorted by id, in the documented order.
#[test]
fn phase_order() {
    use ApplyReason::*;
    use ObservedStatus::*;
    let mut i = input();
    i.roles = set(&["old", "web"]);
    i.desired = vec![
        // n1: no replica can take over from its leader (the only one is down), so the
        // leader is updated in place before its replica is healed.
        first("db-n1-h1", "h1", "n1", "P"),
        desired("db-n1-h2", "h2", pg("n1"), "P", R1),
        // n2: a new instance; the leader on h5 is no longer wanted and hands over to h3.
        first("db-n2-h3", "h3", "n2", "P"),
        desired("db-n2-h4", "h4", pg("n2"), "P", R1),
        // n3: new, with stale keys of an earlier n3.
        first("db-n3-h1", "h1", "n3", "P"),
        desired("db-web-h2", "h2", svc("web"), "W", R1),
        desired("db-api-h1", "h1", svc("api"), "A", R1),
        desired("db-api-h2", "h2", svc("api"), "A", R1),
    ];
    let running = |id: &str, host: &str, node: &str, hash: &str| {
        observed(id, host, pg(node), Some(hash), Running)
    };
    i.observed = vec![
        running("db-n1-h1", "h1", "n1", "OLD"),
        observed("db-n1-h2", "h2", pg("n1"), Some("P"), Stopped),
        running("db-n2-h3", "h3", "n2", "P"),
        running("db-n2-h5", "h5", "n2", "P"),
        observed("db-web-h2", "h2", svc("web"), Some("old"), Running),
        observed("db-old-h1", "h1", svc("old"), Some("O"), Running),
        running("db-n9-h1", "h1", "n9", "P"),
    ];
    i.applied = vec![
        record("db-n1-h1", "h1", pg("n1"), "OLD", R1),
        record("db-n1-h2", "h2", pg("n1"), "P", R1),
        record("db-n2-h3", "h3", pg("n2"), "P", R2),
        record("db-n2-h5", "h5", pg("n2"), "P", R1),
        record("db-web-h2", "h2", svc("web"), "old", R1),
        record("db-old-h1", "h1", svc("old"), "O", R1),
        record("db-n9-h1", "h1", pg("n9"), "P", R1),
    ];
    i.patroni = [
        (
            "n1",
            patroni(
                Some("db-n1-h1"),
                &[("db-n1-h1", "running", 9), ("db-n1-h2", "stopped", 9)],
            ),
        ),
        (
            "n2",
            patroni(
                Some("db-n2-h5"),
                &[("db-n2-h5", "running", 9), ("db-n2-h3", "running", 9)],
            ),
        ),
        ("n3", patroni(None, &[])),
        (
            "n9",
            patroni(Some("db-n9-h1"), &[("db-n9-h1", "running", 9)]),
        ),
    ]
    .into_iter()
    .map(|(n, p)| (n.to_string(), p))
    .collect();
    let expected = vec![
        vec![Step::ForgetNode { node: "n3".into() }],
        vec![
            apply("db-n1-h1", "h1", Update),
            apply("db-n3-h1", "h1", Create),
        ],
        vec![
            apply("db-n1-h2", "h2", Heal),
            resize("db-n2-h3", "h3", R1),
            apply("db-n2-h4", "h4", Create),
        ],
        vec![remove("db-old-h1", "h1"), apply("db-web-h2", "h2", Update)],
        vec![Step::Switchover {
            node: "n2".into(),
            instance_id: "db-n2-h5".into(),
            host_id: "h5".into(),
            candidate: "db-n2-h3".into(),
        }],
        vec![remove("db-n9-h1", "h1")],
        vec![Step::ForgetNode { node: "n9".into() }],
    ];
    let p = plan(&i);
    assert_eq!(p.phases, expected);
    // Roles wait: n1's leader is replaced by this very plan, n3 has none yet.
    assert!(
        !p.steps()
            .any(|s| matches!(s, Step::CreateRoles { .. } | Step::DropRoles { .. }))
    );

    // The order of the input lists does not matter.
    i.desired.reverse();
    i.observed.reverse();
    i.applied.rotate_left(2);
    assert_eq!(plan(&i).phases, expected);

    // With every leader running and left alone, roles come between Postgres and services.
    let mut settled = i.clone();
    settled.observed[6] = running("db-n1-h1", "h1", "n1", "P");
    settled.applied[5] = record("db-n1-h1", "h1", pg("n1"), "P", R1);
    settled.desired.retain(|d| d.kind != pg("n3"));
    settled.patroni.remove("n3");
    let phases = plan(&settled).phases;
    let roles = phases
        .iter()
        .position(|p| p == &vec![create_roles("api")])
        .expect("CreateRoles(api)");
    let services = phases
        .iter()
        .position(|p| p.contains(&apply("db-api-h1", "h1", Create)))
        .expect("the api's instances");
    let drop = phases
        .iter()
        .position(|p| p == &vec![drop_roles("old")])
        .expect("DropRoles(old)");
    assert!(roles < services && services < drop, "{phases:?}");
}

#[test]
fn empty_phases_are_omitted() {
    let mut i = input();
    i.desired = vec![desired("db-s-h1", "h1", svc("s"), "H", R1)];
    i.roles = set(&["s"]);
    assert_eq!(
        plan(&i),
        Plan {
            phases: vec![vec![apply("db-s-h1", "h1", ApplyReason::Create)]],
            waiting: vec![],
        }
    );
}

#[test]
fn duplicate_reports_fold_to_the_one_needing_work_whatever_their_order() {
    use ObservedStatus::*;
    let mut i = input();
    i.roles = set(&["s"]);
    i.desired = vec![desired("x", "h", svc("s"), "H", R1)];
    i.applied = vec![record("x", "h", svc("s"), "H", R1)];
    i.observed = vec![
        observed("x", "h", svc("s"), Some("H"), Running),
        observed("x", "h", svc("s"), Some("H"), Failed),
    ];
    let expected = vec![apply("x", "h", ApplyReason::Heal)];
    assert_eq!(plan(&i).steps().cloned().collect::<Vec<_>>(), expected);
    i.observed.reverse();
    assert_eq!(plan(&i).steps().cloned().collect::<Vec<_>>(), expected);
}

#[test]
fn removal_kind_comes_from_the_container_before_the_record() {
    use ObservedStatus::*;
    let mut i = input();
    // The record says service, the container says Postgres: the container is what is there.
    i.observed = vec![observed("x", "h", pg("n1"), Some("H"), Running)];
    i.applied = vec![record("x", "h", svc("s"), "H", R1)];
    let p = plan(&i);
    assert_eq!(p.phases, vec![vec![remove("x", "h")]]);
    // Alone, the record decides: a service Remove comes before DropRoles.
    i.observed.clear();
    i.roles = set(&["s"]);
    assert_eq!(
        plan(&i).phases,
        vec![vec![remove("x", "h")], vec![drop_roles("s")]]
    );
}

#[test]
fn step_accessors() {
    let a = apply("i", "h", ApplyReason::Create);
    assert_eq!((a.instance_id(), a.host_id()), (Some("i"), Some("h")));
    let r = resize("j", "g", R1);
    assert_eq!((r.instance_id(), r.host_id()), (Some("j"), Some("g")));
    let c = create_roles("s");
    assert_eq!((c.instance_id(), c.host_id()), (None, None));
}

#[test]
fn plan_serializes_as_tagged_steps() {
    let p = Plan {
        phases: vec![vec![apply("i", "h", ApplyReason::Heal), drop_roles("s")]],
        waiting: vec![],
    };
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"phases": [[
            {"type": "apply", "instance_id": "i", "host_id": "h", "reason": "heal"},
            {"type": "drop_roles", "service_id": "s"}
        ]]})
    );
    assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), p);
}

/// Removing a limit cannot be done in place (the engine's update API reads 0 as "leave as
/// is"): the container is replaced, whether the record or the container tells the limits.
#[test]
fn lifting_a_limit_replaces_the_container() {
    let unlimited = Resources::default();
    let cpu_only = Resources {
        nano_cpus: 500_000_000,
        memory_bytes: 0,
    };
    let mut i = input();
    i.desired.push(desired("s", "h1", svc("a"), "H", unlimited));
    i.observed.push(observed(
        "s",
        "h1",
        svc("a"),
        Some("H"),
        ObservedStatus::Running,
    ));
    i.applied.push(record("s", "h1", svc("a"), "H", R1));
    i.roles = set(&["a"]);
    assert_eq!(
        plan(&i).phases,
        vec![vec![apply("s", "h1", ApplyReason::LiftLimits)]]
    );
    // Only the memory limit goes: still a new container.
    i.desired[0].resources = cpu_only;
    assert_eq!(
        plan(&i).phases,
        vec![vec![apply("s", "h1", ApplyReason::LiftLimits)]]
    );
    // The container's own limits win over a record that lags.
    i.applied[0].resources = cpu_only;
    i.observed[0].resources = Some(R1);
    assert_eq!(
        plan(&i).phases,
        vec![vec![apply("s", "h1", ApplyReason::LiftLimits)]]
    );
    // Lowering or raising a limit stays in place, and so does adding one.
    i.observed[0].resources = Some(cpu_only);
    i.desired[0].resources = R1;
    assert_eq!(plan(&i).phases, vec![vec![resize("s", "h1", R1)]]);
    // A container changed behind our back (`docker update`) is set back.
    i.applied[0].resources = R1;
    assert_eq!(plan(&i).phases, vec![vec![resize("s", "h1", R1)]]);
    i.observed[0].resources = Some(R1);
    assert!(plan(&i).is_empty());
}

fn with_ports(mut d: DesiredInstance, ports: &[u16]) -> DesiredInstance {
    d.host_ports = ports.iter().copied().collect();
    d
}

fn holding(mut o: ObservedInstance, ports: &[u16]) -> ObservedInstance {
    o.host_ports = ports.iter().copied().collect();
    o
}

/// The reported case: one update drops m2 and adds m3 with m2's fixed port on the same
/// host. The removal finishes before the creation starts; elsewhere nothing waits.
#[test]
fn a_fixed_port_is_handed_over_after_its_holder_is_removed() {
    let mut i = input();
    i.roles = set(&["m2", "m3", "other"]);
    i.desired
        .push(with_ports(desired("m3", "h1", svc("m3"), "H", R1), &[8100]));
    i.desired.push(with_ports(
        desired("o", "h2", svc("other"), "H", R1),
        &[8100],
    ));
    i.observed.push(holding(
        observed("m2", "h1", svc("m2"), Some("H"), ObservedStatus::Running),
        &[8100],
    ));
    i.applied.push(record("m2", "h1", svc("m2"), "H", R1));
    assert_eq!(
        plan(&i).phases,
        vec![
            // The same port on another host does not wait.
            vec![remove("m2", "h1"), apply("o", "h2", ApplyReason::Create)],
            vec![apply("m3", "h1", ApplyReason::Create)],
            vec![drop_roles("m2")],
        ]
    );
}

/// A port held by a Postgres instance that goes in the last phase: the service that wants
/// it waits for the next plan rather than fail on it.
#[test]
fn a_port_freed_in_a_later_phase_defers_its_taker() {
    let mut i = input();
    i.roles = set(&["a"]);
    i.desired.push(first("p1", "h1", "n1", "H"));
    i.desired
        .push(with_ports(desired("s", "h1", svc("a"), "H", R1), &[6000]));
    for (id, node) in [("p1", "n1"), ("p2", "n2")] {
        i.observed.push(observed(
            id,
            "h1",
            pg(node),
            Some("H"),
            ObservedStatus::Running,
        ));
        i.applied.push(record(id, "h1", pg(node), "H", R1));
    }
    i.observed[1].host_ports = [6000].into();
    assert_eq!(plan(&i).phases, vec![vec![remove("p2", "h1")]]);
}
