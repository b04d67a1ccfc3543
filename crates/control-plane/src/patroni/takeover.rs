//! Whether a new spec can be applied without losing a node's primary (ADR 016): the
//! planner switches a leader over before removing it, so a spec is refused only when no
//! instance it keeps or adds could take over, or when it would drop every instance that
//! holds a node's data while no primary is there to clone new ones from.

use std::collections::{BTreeMap, BTreeSet};

use plan::PatroniNode;
use spec::{DatabaseSpec, FieldError};

/// A Postgres instance that exists now (its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub instance_id: String,
    pub node: String,
    pub host_id: String,
}

/// Each node of `next` (by its path, `spec.nodes[i]`) whose primary the change would lose.
///
/// - a node whose primary (the instance holding its leader key) the spec removes needs an
///   instance the spec keeps that runs as a replica, or a new one on a live host while the
///   primary's own host is live (it clones from the primary, then takes over);
/// - a node without a primary now keeps at least one instance that exists, since new ones
///   could clone from nobody.
///
/// A node none of whose instances exists yet (new, or still being created) is always fine.
/// `alive` holds the hosts whose lease is alive.
pub fn losses(
    database_id: &str,
    next: &DatabaseSpec,
    patroni: &BTreeMap<String, PatroniNode>,
    existing: &[Existing],
    alive: &BTreeSet<String>,
) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (i, node) in next.nodes.iter().enumerate() {
        let exist: Vec<&Existing> = existing.iter().filter(|e| e.node == node.name).collect();
        if exist.is_empty() {
            continue;
        }
        let id = |host: &str| plan::postgres_instance_id(database_id, &node.name, host);
        let kept: Vec<String> = node
            .host_ids
            .iter()
            .map(|h| id(h))
            .filter(|i| exist.iter().any(|e| &e.instance_id == i))
            .collect();
        let new_live_hosts = node
            .host_ids
            .iter()
            .filter(|h| !exist.iter().any(|e| &e.host_id == *h) && alive.contains(*h))
            .count();
        let p = patroni.get(&node.name);
        let path = format!("spec.nodes[{i}]");
        match p.and_then(|p| p.leader.as_deref()) {
            Some(leader) if kept.iter().any(|k| k == leader) => {}
            Some(leader) => {
                let leader_host = exist
                    .iter()
                    .find(|e| e.instance_id == leader)
                    .map(|e| e.host_id.as_str());
                let running_replica = kept.iter().any(|k| {
                    p.and_then(|p| p.members.get(k))
                        .is_some_and(|m| m.is_running() && m.is_replica())
                });
                let can_clone =
                    new_live_hosts > 0 && leader_host.is_some_and(|h| alive.contains(h));
                if !running_replica && !can_clone {
                    out.push(FieldError {
                        path,
                        message: format!(
                            "node {}: this removes its primary {leader}{}, and no instance the spec \
                             keeps or adds can take over (a kept one must run as a replica; a new \
                             one needs a live host and a live primary to clone from)",
                            node.name,
                            leader_host.map(|h| format!(" on {h}")).unwrap_or_default()
                        ),
                    });
                }
            }
            None if kept.is_empty() => out.push(FieldError {
                path,
                message: format!(
                    "node {}: it has no primary now, and this removes every instance that holds \
                     its data ({}); keep one of them until Patroni has elected a primary",
                    node.name,
                    exist
                        .iter()
                        .map(|e| e.host_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::PatroniMember;
    use serde_json::json;

    fn spec(hosts: &[&str]) -> DatabaseSpec {
        serde_json::from_value(json!({
            "database_name": "app",
            "nodes": [{"name": "n0", "host_ids": ["h9"]}, {"name": "n1", "host_ids": hosts}]
        }))
        .unwrap()
    }

    fn existing(hosts: &[&str]) -> Vec<Existing> {
        hosts
            .iter()
            .map(|h| Existing {
                instance_id: format!("db-n1-{h}"),
                node: "n1".into(),
                host_id: h.to_string(),
            })
            .collect()
    }

    fn node(leader: Option<&str>, members: &[(&str, &str)]) -> BTreeMap<String, PatroniNode> {
        let members = members
            .iter()
            .map(|(id, state)| {
                let role = if Some(*id) == leader {
                    "primary"
                } else {
                    "replica"
                };
                let m = PatroniMember {
                    role: role.into(),
                    state: state.to_string(),
                    ..Default::default()
                };
                (id.to_string(), m)
            })
            .collect();
        let n = PatroniNode {
            leader: leader.map(str::to_string),
            initialized: true,
            members,
        };
        [("n1".to_string(), n)].into()
    }

    fn alive(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn cases() {
        let both = node(
            Some("db-n1-h1"),
            &[("db-n1-h1", "running"), ("db-n1-h2", "running")],
        );
        let down_replica = node(
            Some("db-n1-h1"),
            &[("db-n1-h1", "running"), ("db-n1-h2", "stopped")],
        );
        let all = alive(&["h1", "h2", "h3"]);
        let h1_dead = alive(&["h2", "h3"]);
        // (case, new hosts, what exists, Patroni, live hosts, refused)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a BTreeMap<String, PatroniNode>,
            &'a BTreeSet<String>,
            bool,
        );
        let none = node(None, &[("db-n1-h1", "stopped")]);
        let empty = BTreeMap::new();
        let cases: &[Case] = &[
            (
                "the issue: keep the running replica",
                &["h2"],
                &["h1", "h2"],
                &both,
                &all,
                false,
            ),
            ("reorder", &["h2", "h1"], &["h1", "h2"], &both, &all, false),
            (
                "move to a new live host",
                &["h3"],
                &["h1"],
                &both,
                &all,
                false,
            ),
            (
                "the replica is down, a new host helps",
                &["h2", "h3"],
                &["h1", "h2"],
                &down_replica,
                &all,
                false,
            ),
            (
                "the replica is down, nothing else",
                &["h2"],
                &["h1", "h2"],
                &down_replica,
                &all,
                true,
            ),
            (
                "a new host, but the primary's host is dead",
                &["h3"],
                &["h1"],
                &both,
                &h1_dead,
                true,
            ),
            (
                "no primary, every instance removed",
                &["h3"],
                &["h1"],
                &none,
                &all,
                true,
            ),
            (
                "no primary, one kept",
                &["h1", "h3"],
                &["h1"],
                &none,
                &all,
                false,
            ),
            ("a new node", &["h3"], &[], &empty, &all, false),
            (
                "nothing removed",
                &["h1", "h2"],
                &["h1", "h2"],
                &both,
                &h1_dead,
                false,
            ),
        ];
        for (name, hosts, exist, patroni, live, refused) in cases {
            let got = losses("db", &spec(hosts), patroni, &existing(exist), live);
            assert_eq!(!got.is_empty(), *refused, "{name}: {got:?}");
            if *refused {
                assert_eq!(got[0].path, "spec.nodes[1]", "{name}");
                assert!(got[0].message.contains("node n1"), "{name}: {got:?}");
            }
        }
    }
}
