//! When the nodes of a database are made one database ([`Step::Replicate`], ADR 019).

use super::plan;
use super::tests::*;
use crate::types::*;

fn replicate(nodes: &[&str]) -> Step {
    Step::Replicate {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
    }
}

/// Node `n` with one instance `db-{n}-{host}` on `host`, converged; its leader `state`
/// (`None`: no leader key).
fn node(i: &mut PlanInput, n: &str, host: &str, state: Option<&str>) {
    let id = format!("db-{n}-{host}");
    i.desired.push(first(&id, host, n, "H"));
    i.observed.push(observed(
        &id,
        host,
        pg(n),
        Some("H"),
        ObservedStatus::Running,
    ));
    i.applied.push(record(&id, host, pg(n), "H", R1));
    let leader = state.map(|_| id.as_str());
    let members = [(id.as_str(), state.unwrap_or("starting"), 0)];
    i.patroni.insert(n.to_string(), patroni(leader, &members));
}

#[test]
fn replication_follows_the_nodes_once_every_node_has_a_running_primary() {
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str, Option<&'static str>)],
        &'static [&'static str],
        bool,
        Option<Step>,
    );
    let cases: &[Case] = &[
        (
            "one node: nothing to replicate",
            &[("n1", "h1", Some("running"))],
            &[],
            false,
            None,
        ),
        (
            "two nodes, both primaries running",
            &[("n1", "h1", Some("running")), ("n2", "h2", Some("running"))],
            &[],
            false,
            Some(replicate(&["n1", "n2"])),
        ),
        (
            "three nodes",
            &[
                ("n1", "h1", Some("running")),
                ("n2", "h2", Some("running")),
                ("n3", "h3", Some("running")),
            ],
            &[],
            false,
            Some(replicate(&["n1", "n2", "n3"])),
        ),
        (
            "a node without a leader yet",
            &[("n1", "h1", Some("running")), ("n2", "h2", None)],
            &[],
            false,
            None,
        ),
        (
            "a leader whose Postgres is not running",
            &[
                ("n1", "h1", Some("running")),
                ("n2", "h2", Some("starting")),
            ],
            &[],
            false,
            None,
        ),
        (
            "already replicated: a pass that changes nothing does nothing",
            &[("n1", "h1", Some("running")), ("n2", "h2", Some("running"))],
            &["n1", "n2"],
            false,
            None,
        ),
        (
            "a node added to a replicated database joins it",
            &[
                ("n1", "h1", Some("running")),
                ("n2", "h2", Some("running")),
                ("n3", "h3", Some("running")),
            ],
            &["n1", "n2"],
            false,
            Some(replicate(&["n1", "n2", "n3"])),
        ),
        (
            "a second node added to a database that ran alone",
            &[("n1", "h1", Some("running")), ("n2", "h2", Some("running"))],
            &[],
            false,
            Some(replicate(&["n1", "n2"])),
        ),
        (
            "a node removed: the others unsubscribe from it",
            &[("n1", "h1", Some("running")), ("n3", "h3", Some("running"))],
            &["n1", "n2", "n3"],
            false,
            Some(replicate(&["n1", "n3"])),
        ),
        (
            "down to one node: it unsubscribes from the one that left",
            &[("n1", "h1", Some("running"))],
            &["n1", "n2"],
            false,
            Some(replicate(&["n1"])),
        ),
        (
            "a node to join without a leader yet waits",
            &[
                ("n1", "h1", Some("running")),
                ("n2", "h2", Some("running")),
                ("n3", "h3", None),
            ],
            &["n1", "n2"],
            false,
            None,
        ),
        (
            "being deleted",
            &[("n1", "h1", Some("running")), ("n2", "h2", Some("running"))],
            &[],
            true,
            None,
        ),
    ];
    for (name, nodes, replicated, deleting, want) in cases {
        let mut i = input();
        for (n, host, state) in *nodes {
            node(&mut i, n, host, *state);
        }
        i.replicated = set(replicated);
        // Each recorded node as its subscriptions list it: on its one host.
        i.replicated_hosts = nodes
            .iter()
            .filter(|(n, _, _)| replicated.contains(n))
            .map(|(n, host, _)| (n.to_string(), set(&[host])))
            .collect();
        i.deleting = *deleting;
        let p = plan(&i);
        let got: Vec<&Step> = p
            .steps()
            .filter(|s| matches!(s, Step::Replicate { .. }))
            .collect();
        assert_eq!(
            got,
            want.iter().collect::<Vec<_>>(),
            "{name}: {:?}",
            p.phases
        );
    }
}

/// Replication is configured before anything writes: roles (their grants) and services
/// come in later phases of the same plan.
#[test]
fn replication_goes_before_roles_and_services() {
    let mut i = input();
    node(&mut i, "n1", "h1", Some("running"));
    node(&mut i, "n2", "h2", Some("running"));
    i.desired.push(desired("db-s-h1", "h1", svc("s"), "H", R1));
    let p = plan(&i);
    assert_eq!(
        p.phases,
        vec![
            vec![replicate(&["n1", "n2"])],
            vec![create_roles("s")],
            vec![apply("db-s-h1", "h1", ApplyReason::Create)],
        ]
    );
}

/// A node whose every instance is stopped has no primary: replication waits for it.
#[test]
fn a_stopped_node_holds_replication_back() {
    let mut i = input();
    node(&mut i, "n1", "h1", Some("running"));
    node(&mut i, "n2", "h2", Some("running"));
    for d in i.desired.iter_mut().filter(|d| d.host_id == "h2") {
        d.stopped = true;
    }
    let p = plan(&i);
    assert!(
        !p.steps().any(|s| matches!(s, Step::Replicate { .. })),
        "{:?}",
        p.phases
    );
}

/// The other nodes' subscriptions list every instance of a node: when its hosts change
/// (a replica added, a host replaced), replication is configured again.
#[test]
fn a_node_whose_hosts_change_is_configured_again() {
    let mut i = input();
    node(&mut i, "n1", "h1", Some("running"));
    node(&mut i, "n2", "h2", Some("running"));
    i.replicated = set(&["n1", "n2"]);
    i.replicated_hosts = [("n1", "h1"), ("n2", "h2")]
        .into_iter()
        .map(|(n, h)| (n.to_string(), set(&[h])))
        .collect();
    let replicates = |i: &PlanInput| plan(i).steps().any(|s| matches!(s, Step::Replicate { .. }));
    assert!(!replicates(&i), "as recorded: nothing to do");
    i.replicated_hosts.insert("n1".into(), set(&["h1", "h9"]));
    assert!(replicates(&i), "a host of n1 is gone");
    i.replicated_hosts.remove("n2");
    i.replicated_hosts.insert("n1".into(), set(&["h1"]));
    assert!(replicates(&i), "n2's hosts were never recorded");
}
