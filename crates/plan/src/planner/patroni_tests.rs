//! The Postgres rules around Patroni (ADR 016): who goes first, switchover before a leader's
//! removal, new and removed nodes, and what the plan waits for.

use super::plan;
use super::tests::*;
use crate::types::*;

fn running(id: &str, host: &str, node: &str) -> ObservedInstance {
    observed(id, host, pg(node), Some("H"), ObservedStatus::Running)
}

/// Instances `(id, host)` of `node` that exist, run and are recorded with hash `H`.
fn existing(i: &mut PlanInput, node: &str, instances: &[(&str, &str)]) {
    for (id, host) in instances {
        i.observed.push(running(id, host, node));
        i.applied.push(record(id, host, pg(node), "H", R1));
    }
}

fn switchover(node: &str, leader: &str, host: &str, candidate: &str) -> Step {
    Step::Switchover {
        node: node.into(),
        instance_id: leader.into(),
        host_id: host.into(),
        candidate: candidate.into(),
    }
}

fn forget(node: &str) -> Step {
    Step::ForgetNode { node: node.into() }
}

fn with_patroni(mut i: PlanInput, node: &str, p: PatroniNode) -> PlanInput {
    i.patroni.insert(node.to_string(), p);
    i
}

/// The case: `n1` on host-1 (primary) and host-2, then on host-2 alone. The
/// primary hands over first; only the plan that sees host-2 lead removes host-1.
#[test]
fn the_primary_hands_over_before_its_removal() {
    let mut i = input();
    existing(&mut i, "n1", &[("db-n1-h1", "h1"), ("db-n1-h2", "h2")]);
    i.desired = vec![first("db-n1-h2", "h2", "n1", "H")];
    let before = patroni(
        Some("db-n1-h1"),
        &[("db-n1-h1", "running", 500), ("db-n1-h2", "running", 500)],
    );
    let p = plan(&with_patroni(i.clone(), "n1", before));
    assert_eq!(
        p.phases,
        vec![vec![switchover("n1", "db-n1-h1", "h1", "db-n1-h2")]]
    );

    let after = patroni(
        Some("db-n1-h2"),
        &[("db-n1-h2", "running", 600), ("db-n1-h1", "running", 600)],
    );
    let p = plan(&with_patroni(i, "n1", after));
    assert_eq!(p.phases, vec![vec![remove("db-n1-h1", "h1")]]);
    assert!(p.waiting.is_empty(), "{:?}", p.waiting);
}

/// No replica that can take over: nothing is removed, and the plan says what it waits for.
#[test]
fn a_leader_to_be_removed_waits_for_a_replica_that_can_take_over() {
    let lagging = MAX_TAKEOVER_LAG_BYTES + 1;
    /// (case, Patroni's members: name, state, WAL position)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str, u64)]);
    let cases: &[Case] = &[
        ("not a member yet", &[("db-n1-h1", "running", lagging)]),
        (
            "still starting",
            &[
                ("db-n1-h1", "running", lagging),
                ("db-n1-h2", "starting", lagging),
            ],
        ),
        (
            "too far behind",
            &[("db-n1-h1", "running", lagging), ("db-n1-h2", "running", 0)],
        ),
    ];
    for (name, members) in cases {
        let mut i = input();
        existing(&mut i, "n1", &[("db-n1-h1", "h1"), ("db-n1-h2", "h2")]);
        i.desired = vec![first("db-n1-h2", "h2", "n1", "H")];
        let p = plan(&with_patroni(i, "n1", patroni(Some("db-n1-h1"), members)));
        assert!(p.is_empty(), "{name}: {:?}", p.phases);
        assert!(
            p.waiting.iter().any(|w| w.reason.contains("db-n1-h1")
                && w.reason.contains("to be removed")
                && w.recheck),
            "{name}: {:?}",
            p.waiting
        );
    }

    // Moving to a new host: it is created (cloning from the leader) in this plan, and the
    // switchover waits for a later one.
    let mut i = input();
    existing(&mut i, "n1", &[("db-n1-h1", "h1")]);
    i.desired = vec![first("db-n1-h3", "h3", "n1", "H")];
    let p = plan(&with_patroni(
        i,
        "n1",
        patroni(Some("db-n1-h1"), &[("db-n1-h1", "running", 0)]),
    ));
    assert_eq!(
        p.phases,
        vec![vec![apply("db-n1-h3", "h3", ApplyReason::Create)]]
    );
    assert!(p.waiting.iter().any(|w| w.reason.contains("to be removed")));
}

/// The spec's host order names the instance that initialises a new node, nothing more:
/// reordering the hosts of a node that runs changes nothing.
#[test]
fn reordering_hosts_moves_nothing() {
    let mut i = input();
    existing(&mut i, "n1", &[("db-n1-h1", "h1"), ("db-n1-h2", "h2")]);
    i.desired = vec![
        first("db-n1-h2", "h2", "n1", "H"),
        desired("db-n1-h1", "h1", pg("n1"), "H", R1),
    ];
    let p = plan(&with_patroni(
        i,
        "n1",
        patroni(
            Some("db-n1-h1"),
            &[("db-n1-h1", "running", 7), ("db-n1-h2", "running", 7)],
        ),
    ));
    assert_eq!(p, Plan::default());
}

/// A new node: its first host's instance initialises it alone (the others would race it
/// for the initialize key); the others come once Patroni has a leader.
#[test]
fn a_new_node_is_initialised_by_its_first_host_alone() {
    let mut i = input();
    i.desired = vec![
        first("db-n1-h1", "h1", "n1", "H"),
        desired("db-n1-h2", "h2", pg("n1"), "H", R1),
    ];
    let p = plan(&i);
    assert_eq!(
        p.phases,
        vec![vec![apply("db-n1-h1", "h1", ApplyReason::Create)]]
    );
    assert!(p.waiting.iter().any(|w| w.reason.contains("db-n1-h2")));

    // Created, but Patroni has not initialised it yet: everything waits.
    existing(&mut i, "n1", &[("db-n1-h1", "h1")]);
    let p = plan(&with_patroni(
        i.clone(),
        "n1",
        PatroniNode {
            members: patroni(None, &[("db-n1-h1", "initializing new cluster", 0)]).members,
            ..PatroniNode::default()
        },
    ));
    assert!(p.is_empty(), "{:?}", p.phases);
    assert!(
        p.waiting
            .iter()
            .any(|w| w.reason.contains("initializing new cluster")),
        "{:?}",
        p.waiting
    );

    // Initialised and led: the replica is created.
    let p = plan(&with_patroni(
        i,
        "n1",
        patroni(Some("db-n1-h1"), &[("db-n1-h1", "running", 0)]),
    ));
    assert_eq!(
        p.phases,
        vec![vec![apply("db-n1-h2", "h2", ApplyReason::Create)]]
    );
}

/// Keys left by an earlier node of the same name (a crash between removing its last
/// instance and forgetting it) would make the new node's instances wait for a leader that
/// never comes: they are deleted before the node is initialised.
#[test]
fn a_new_node_forgets_stale_keys_first() {
    let mut i = input();
    i.desired = vec![first("db-n1-h1", "h1", "n1", "H")];
    let stale = patroni(Some("db-n1-old"), &[("db-n1-old", "running", 0)]);
    let p = plan(&with_patroni(i, "n1", stale));
    assert_eq!(
        p.phases,
        vec![
            vec![forget("n1")],
            vec![apply("db-n1-h1", "h1", ApplyReason::Create)]
        ]
    );
}

/// A removed node: every instance goes (its leader too: nothing is left to lead), then its
/// keys; while one of them is on an unreachable host, the keys stay.
#[test]
fn a_removed_node_goes_with_its_keys() {
    let mut i = input();
    existing(&mut i, "n2", &[("db-n2-h1", "h1"), ("db-n2-h2", "h2")]);
    let i = with_patroni(
        i,
        "n2",
        patroni(
            Some("db-n2-h1"),
            &[("db-n2-h1", "running", 0), ("db-n2-h2", "running", 0)],
        ),
    );
    assert_eq!(
        plan(&i).phases,
        vec![
            vec![remove("db-n2-h1", "h1"), remove("db-n2-h2", "h2")],
            vec![forget("n2")]
        ]
    );
    let mut away = i.clone();
    away.unreachable_hosts = set(&["h2"]);
    assert_eq!(plan(&away).phases, vec![vec![remove("db-n2-h1", "h1")]]);
    // Deleting the database forgets every key at its end, not node by node.
    let mut deleting = i;
    deleting.deleting = true;
    assert_eq!(
        plan(&deleting).phases,
        vec![vec![remove("db-n2-h1", "h1"), remove("db-n2-h2", "h2")]]
    );
}

/// Roles are made on the leader: they wait until it runs, and until a plan leaves its
/// container alone.
#[test]
fn roles_wait_for_a_running_leader() {
    let base = || {
        let mut i = input();
        existing(&mut i, "n1", &[("db-n1-h1", "h1")]);
        i.desired = vec![
            first("db-n1-h1", "h1", "n1", "H"),
            desired("db-s-h1", "h1", svc("s"), "S", R1),
        ];
        i
    };
    let starting = patroni(Some("db-n1-h1"), &[("db-n1-h1", "starting", 0)]);
    let p = plan(&with_patroni(base(), "n1", starting));
    assert!(p.is_empty(), "{:?}", p.phases);
    let led = patroni(Some("db-n1-h1"), &[("db-n1-h1", "running", 0)]);
    assert_eq!(
        plan(&with_patroni(base(), "n1", led.clone())).phases,
        vec![
            vec![create_roles("s")],
            vec![apply("db-s-h1", "h1", ApplyReason::Create)]
        ]
    );
    let mut replaced = base();
    replaced.desired[0].spec_hash = "NEW".into();
    assert_eq!(
        plan(&with_patroni(replaced, "n1", led)).phases,
        vec![vec![apply("db-n1-h1", "h1", ApplyReason::Update)]]
    );
}

/// Without a leader, every instance that exists is brought back together, so that Patroni
/// can elect the most advanced; a new instance waits for the node to be initialised.
#[test]
fn without_a_leader_existing_instances_come_back_first() {
    let mut i = input();
    i.observed = vec![
        observed(
            "db-n1-h1",
            "h1",
            pg("n1"),
            Some("H"),
            ObservedStatus::Failed,
        ),
        observed(
            "db-n1-h2",
            "h2",
            pg("n1"),
            Some("H"),
            ObservedStatus::Stopped,
        ),
    ];
    i.desired = vec![
        first("db-n1-h1", "h1", "n1", "H"),
        desired("db-n1-h2", "h2", pg("n1"), "H", R1),
        desired("db-n1-h3", "h3", pg("n1"), "H", R1),
    ];
    let mut down = patroni(
        None,
        &[("db-n1-h1", "stopped", 0), ("db-n1-h2", "stopped", 0)],
    );
    let p = plan(&with_patroni(i.clone(), "n1", down.clone()));
    assert_eq!(
        p.phases,
        vec![
            vec![
                apply("db-n1-h1", "h1", ApplyReason::Heal),
                apply("db-n1-h2", "h2", ApplyReason::Heal)
            ],
            vec![apply("db-n1-h3", "h3", ApplyReason::Create)]
        ]
    );
    assert!(p.waiting.iter().any(|w| w.reason.contains("no primary")));
    down.initialized = false;
    let p = plan(&with_patroni(i, "n1", down));
    assert_eq!(p.phases.len(), 1, "{:?}", p.phases);
    assert!(p.waiting.iter().any(|w| w.reason.contains("db-n1-h3")));
}

#[test]
fn lag_and_takeover() {
    let node = patroni(
        Some("l"),
        &[
            ("l", "running", 10 << 20),
            ("near", "running", (10 << 20) - MAX_TAKEOVER_LAG_BYTES),
            ("far", "running", (10 << 20) - MAX_TAKEOVER_LAG_BYTES - 1),
            ("ahead", "running", 11 << 20),
            ("down", "stopped", 10 << 20),
            ("streams", "streaming", 10 << 20),
            ("archive", "in archive recovery", 10 << 20),
            ("v4-streams", "running", 10 << 20),
            ("v4-archive", "running", 10 << 20),
        ],
    );
    let mut node = node;
    node.members
        .get_mut("v4-streams")
        .unwrap()
        .replication_state = Some("streaming".into());
    node.members
        .get_mut("v4-archive")
        .unwrap()
        .replication_state = Some("in archive recovery".into());
    assert_eq!(node.lag_bytes("near"), Some(MAX_TAKEOVER_LAG_BYTES));
    assert_eq!(node.lag_bytes("ahead"), Some(0));
    assert_eq!(node.lag_bytes("nobody"), None);
    let can: Vec<&str> = [
        "l",
        "near",
        "far",
        "ahead",
        "down",
        "streams",
        "archive",
        "v4-streams",
        "v4-archive",
    ]
    .into_iter()
    .filter(|m| node.can_take_over(m))
    .collect();
    // Patroni 4.0 says whether a replica streams; `in archive recovery` lost its stream.
    assert_eq!(can, ["near", "ahead", "streams", "v4-streams"]);
    assert!(node.members["archive"].is_running());
    assert_eq!(
        node.members["v4-archive"].shown_state(),
        "in archive recovery"
    );
}

/// A Patroni 4.0 replica that runs but does not stream yet (`in archive recovery`) is waited
/// for: the node has converged once it streams.
#[test]
fn a_replica_that_does_not_stream_yet_is_waited_for() {
    let mut i = input();
    existing(&mut i, "n1", &[("db-n1-h1", "h1"), ("db-n1-h2", "h2")]);
    i.desired = vec![
        first("db-n1-h1", "h1", "n1", "H"),
        desired("db-n1-h2", "h2", pg("n1"), "H", R1),
    ];
    // Patroni 4.0's member key: running, and not streaming yet.
    let mut node = patroni(
        Some("db-n1-h1"),
        &[("db-n1-h1", "running", 5), ("db-n1-h2", "running", 5)],
    );
    node.members.get_mut("db-n1-h2").unwrap().replication_state =
        Some("in archive recovery".into());
    let p = plan(&with_patroni(i.clone(), "n1", node.clone()));
    assert!(p.is_empty());
    assert!(
        p.waiting
            .iter()
            .any(|w| w.reason.contains("db-n1-h2") && w.reason.contains("in archive recovery")),
        "{:?}",
        p.waiting
    );
    node.members.get_mut("db-n1-h2").unwrap().replication_state = Some("streaming".into());
    assert_eq!(plan(&with_patroni(i, "n1", node)), Plan::default());
}

fn stopped(mut d: DesiredInstance) -> DesiredInstance {
    d.stopped = true;
    d
}

/// `stop-instance` of a replica: its container goes, keeping its data, and the node
/// neither waits for it nor would hand over to it; once it is gone nothing more is done.
#[test]
fn a_stopped_instance_is_stopped_once_and_not_waited_for() {
    let mut i = input();
    existing(&mut i, "n1", &[("db-n1-h1", "h1"), ("db-n1-h2", "h2")]);
    i.desired = vec![
        first("db-n1-h1", "h1", "n1", "H"),
        stopped(desired("db-n1-h2", "h2", pg("n1"), "H", R1)),
    ];
    let keys = patroni(
        Some("db-n1-h1"),
        &[("db-n1-h1", "running", 500), ("db-n1-h2", "running", 500)],
    );
    let p = plan(&with_patroni(i.clone(), "n1", keys));
    assert_eq!(
        p.phases,
        vec![vec![Step::Stop {
            instance_id: "db-n1-h2".into(),
            host_id: "h2".into(),
        }]]
    );

    // Gone (the agent reports it missing) and unregistered from Patroni: converged.
    i.observed.retain(|o| o.instance_id != "db-n1-h2");
    i.observed.push(observed(
        "db-n1-h2",
        "h2",
        pg("n1"),
        Some("H"),
        ObservedStatus::Missing,
    ));
    let keys = patroni(Some("db-n1-h1"), &[("db-n1-h1", "running", 600)]);
    let p = plan(&with_patroni(i, "n1", keys));
    assert!(p.is_empty(), "{:?}", p.phases);
    assert!(p.waiting.is_empty(), "{:?}", p.waiting);
}

/// A forced stop of a node's every instance: no primary is waited for, and nothing brings
/// the instances back.
#[test]
fn a_node_whose_every_instance_is_stopped_waits_for_no_primary() {
    let mut i = input();
    i.applied.push(record("db-n1-h1", "h1", pg("n1"), "H", R1));
    i.observed.push(observed(
        "db-n1-h1",
        "h1",
        pg("n1"),
        Some("H"),
        ObservedStatus::Missing,
    ));
    i.desired = vec![stopped(first("db-n1-h1", "h1", "n1", "H"))];
    let keys = PatroniNode {
        initialized: true,
        ..PatroniNode::default()
    };
    let p = plan(&with_patroni(i, "n1", keys));
    assert!(p.is_empty(), "{:?}", p.phases);
    assert!(p.waiting.is_empty(), "{:?}", p.waiting);
}
