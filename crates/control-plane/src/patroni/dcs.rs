//! Patroni's keys in the DCS, in the planner's terms ([`plan::PatroniNode`]): one reader of
//! a database's namespace, and the parts of a member key whose change matters to berth.
//!
//! Layout below the namespace (Patroni 3.0, etcd3): `{node}/leader` (the leader's member
//! name), `{node}/members/{name}` (JSON: `role`, `state`, `timeline`, `xlog_location`,
//! `pending_restart`, `conn_url`, `api_url`, ...), `{node}/initialize` (the system id),
//! `{node}/config`, `{node}/status` (`optime`), `{node}/history`, `{node}/failover`, ...

use std::collections::BTreeMap;

use plan::{PatroniMember, PatroniNode};
use serde::Deserialize;
use store::{StateStore, StoreError};

/// A member key as Patroni writes it; fields berth does not read are ignored.
#[derive(Debug, Default, Deserialize)]
struct MemberKey {
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    /// Patroni 4.0's, for a replica: `streaming` or `in archive recovery`.
    #[serde(default)]
    replication_state: Option<String>,
    #[serde(default)]
    timeline: Option<u64>,
    #[serde(default)]
    xlog_location: Option<u64>,
    #[serde(default)]
    pending_restart: bool,
    /// Patroni's version, `4.0.7`.
    #[serde(default)]
    version: String,
}

/// The leader's `status` key: its WAL position as of its last loop.
#[derive(Debug, Default, Deserialize)]
struct StatusKey {
    #[serde(default)]
    optime: Option<u64>,
}

fn member_of(value: &[u8]) -> Option<PatroniMember> {
    let m: MemberKey = serde_json::from_slice(value).ok()?;
    // Patroni 4 writes a running replica's replication state once its WAL receiver reports
    // one; without it the replica does not stream yet. 3.0.2 never writes it.
    let reports_replication = m
        .version
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 4);
    let replication_state = match m.replication_state {
        None if reports_replication && m.role == "replica" && m.state == "running" => {
            Some("not streaming".to_string())
        }
        other => other,
    };
    Some(PatroniMember {
        // Patroni 3.0 still writes `master` for the primary; 4 writes `primary`.
        role: if m.role == "master" {
            "primary".into()
        } else {
            m.role
        },
        state: m.state,
        replication_state,
        timeline: m.timeline,
        wal_position: m.xlog_location,
        pending_restart: m.pending_restart,
    })
}

/// Patroni's keys of one database (below its namespace, as [`StateStore::patroni_keys`]
/// returns them) as nodes by name. A member key that does not decode is left out; a leader
/// key's value is the member's name.
pub fn parse(keys: &[(String, Vec<u8>)]) -> BTreeMap<String, PatroniNode> {
    let mut nodes: BTreeMap<String, PatroniNode> = BTreeMap::new();
    let mut optimes: BTreeMap<String, u64> = BTreeMap::new();
    for (key, value) in keys {
        let Some((node, rest)) = key.split_once('/') else {
            continue;
        };
        let n = nodes.entry(node.to_string()).or_default();
        match rest.split_once('/') {
            None if rest == "leader" => {
                n.leader = std::str::from_utf8(value)
                    .ok()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
            }
            None if rest == "initialize" => n.initialized = !value.is_empty(),
            None if rest == "status" => {
                if let Some(optime) = serde_json::from_slice::<StatusKey>(value)
                    .ok()
                    .and_then(|s| s.optime)
                {
                    optimes.insert(node.to_string(), optime);
                }
            }
            Some(("members", name)) => {
                if let Some(m) = member_of(value) {
                    n.members.insert(name.to_string(), m);
                }
            }
            _ => {}
        }
    }
    // The leader's own key may lag its `status` by a loop: the further of the two counts.
    for (node, optime) in optimes {
        let n = nodes.get_mut(&node).expect("seen above");
        if let Some(m) = n.leader.clone().and_then(|l| n.members.get_mut(&l)) {
            m.wal_position = Some(m.wal_position.unwrap_or(0).max(optime));
        }
    }
    nodes
}

/// One read of `database_id`'s Patroni namespace, parsed: the one reader of Patroni's
/// state, for the planner, the API and the steps that must not act on a stale view.
pub async fn read(
    store: &dyn StateStore,
    database_id: &str,
) -> Result<BTreeMap<String, PatroniNode>, StoreError> {
    Ok(parse(&store.patroni_keys(database_id).await?))
}

/// What of a member key is worth a reconcile pass when it changes: its role, state (with a
/// replica's replication state), timeline and pending restart. Its WAL position moves with
/// every write to the database and is left out, so that a busy database does not wake the
/// reconciler at each of Patroni's loops. None when the value does not decode.
pub fn member_summary(value: &[u8]) -> Option<(String, String, Option<u64>, bool)> {
    let m = member_of(value)?;
    let state = m.shown_state().to_string();
    Some((m.role, state, m.timeline, m.pending_restart))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, Vec<u8>) {
        (k.to_string(), v.as_bytes().to_vec())
    }

    #[test]
    fn keys_become_nodes() {
        let keys = [
            kv("n1/config", r#"{"ttl":20}"#),
            kv("n1/initialize", "7412345678901234567"),
            kv("n1/leader", "db-n1-h1"),
            kv(
                "n1/members/db-n1-h1",
                r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"https://10.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331808,"timeline":2}"#,
            ),
            kv(
                "n1/members/db-n1-h2",
                r#"{"state":"running","role":"replica","xlog_location":50331648,"timeline":2,"pending_restart":true}"#,
            ),
            kv("n1/members/db-n1-h3", "not json"),
            kv("n1/status", r#"{"optime":50331900,"slots":{}}"#),
            kv(
                "n2/members/db-n2-h1",
                r#"{"state":"starting","role":"replica"}"#,
            ),
        ];
        let nodes = parse(&keys);
        let n1 = &nodes["n1"];
        assert_eq!(n1.leader.as_deref(), Some("db-n1-h1"));
        assert!(n1.initialized);
        assert_eq!(n1.members.len(), 2, "an undecodable member is left out");
        let leader = &n1.members["db-n1-h1"];
        assert_eq!(leader.role, "primary", "3.0's `master` reads as primary");
        assert_eq!(leader.wal_position, Some(50331900), "the status is newer");
        assert_eq!(leader.timeline, Some(2));
        assert!(n1.members["db-n1-h2"].pending_restart);
        assert_eq!(n1.lag_bytes("db-n1-h2"), Some(252));
        let n2 = &nodes["n2"];
        assert_eq!(n2.leader, None);
        assert!(!n2.initialized);
        assert_eq!(n2.members["db-n2-h1"].state, "starting");
    }

    #[test]
    fn a_member_summary_ignores_the_wal_position() {
        let a = member_summary(br#"{"state":"running","role":"replica","xlog_location":1}"#);
        let b = member_summary(br#"{"state":"running","role":"replica","xlog_location":2}"#);
        let c = member_summary(br#"{"state":"running","role":"master","xlog_location":2}"#);
        assert_eq!(a, b);
        assert_ne!(b, c);
        assert_eq!(member_summary(b"{"), None);
        // Patroni 4.0: a replica that starts streaming changes its replication state only.
        let archive = member_summary(
            br#"{"state":"running","role":"replica","replication_state":"in archive recovery"}"#,
        );
        let streaming = member_summary(
            br#"{"state":"running","role":"replica","replication_state":"streaming"}"#,
        );
        assert_ne!(archive, streaming);
        // A 4.0 replica whose WAL receiver has not reported yet does not stream; a 3.0.2
        // one says nothing either way.
        let v4 = parse(&[kv(
            "n1/members/r",
            r#"{"state":"running","role":"replica","version":"4.0.7"}"#,
        )]);
        let r = &v4["n1"].members["r"];
        assert_eq!(r.replication_state.as_deref(), Some("not streaming"));
        assert!(!r.is_streaming_or_running());
        let v3 = parse(&[kv(
            "n1/members/r",
            r#"{"state":"running","role":"replica","version":"3.0.2"}"#,
        )]);
        assert!(v3["n1"].members["r"].is_streaming_or_running());
    }
}
