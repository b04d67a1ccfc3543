//! Pure reconciliation planning for one database, and the routing of services to Postgres.
//!
//! The reconciler calls [`plan`] with the desired instances, what the agents report and
//! what it recorded as applied; it runs the returned phases in order (the steps of a phase
//! in parallel), stops at the first failure and calls [`plan`] again until the plan is
//! empty. Because the planner is level-triggered, every step is idempotent and a crashed
//! leader that replans from the same state repeats nothing harmful.
//!
//! # Rules
//!
//! Instances are matched by `(host_id, instance_id)`.
//!
//! For each desired instance on a reachable host:
//! - no container reported: `Apply(Create)` without a record, `Apply(Heal)` with one;
//! - reported `Failed`, `Stopped` or `Missing`: `Apply(Heal)`, or `Apply(Update)` when its
//!   `spec_hash` also differs (or is unknown);
//! - reported `Running` or `Creating` with another (or unknown) `spec_hash`: `Apply(Update)`;
//! - reported `Running` or `Creating` with the desired `spec_hash`: `Apply(LiftLimits)` when
//!   the desired resources remove a cpu or memory limit the container has (the engine
//!   cannot lift a limit in place); else `Resize` when there is no record, the record
//!   differs (resources, or a stale `spec_hash`: the container is right, only the record
//!   lags) or the container's reported limits differ; nothing otherwise (a `Creating`
//!   container is in progress, not failed).
//!
//! The executor of `Apply` and `Resize` records the desired `spec_hash` and resources once
//! the step succeeded; that is what makes the next plan empty.
//!
//! Every reported container or record on a reachable host that is not desired (all of
//! them while `deleting`) is removed. Nothing is planned on, or removed from, an
//! unreachable host.
//!
//! Postgres nodes (ADR 016): Patroni runs each node's instances and decides which one is the
//! primary; [`PlanInput::patroni`] says what it reports. The planner orders its own steps
//! around that:
//! - a node's leader (the instance holding its leader key) is applied before the node's
//!   other instances; a new node (no instance exists) is initialised by the instance on its
//!   first host (`bootstrap`) alone, the others wait until it did; a node without a leader
//!   gets every existing instance back first, so that Patroni can elect one;
//! - an instance that is no longer desired is removed, except the leader of a node that
//!   stays: it first gets a `Switchover` to a desired replica that runs and has caught up
//!   ([`PatroniNode::can_take_over`]), planned only once one can, after the creations; the
//!   plan that sees the new leader removes it. The leader of a removed node goes with it;
//! - `ForgetNode` deletes a node's Patroni keys: a removed node's once none of its
//!   instances is left, a new node's before it is initialised (stale keys would stop that);
//! - what only Patroni can bring about (a leader elected, a member running, a replica
//!   catching up) is a [`Plan::waiting`] sentence, not a step.
//!
//! Roles: a desired service without roles gets `CreateRoles` (once per service), once every
//! desired node has a running leader on a reachable host that the plan leaves alone. A
//! service with roles that is no longer desired gets `DropRoles` (with the same condition),
//! except
//! - while `deleting`: the database and its data go, the roles with them, so the control
//!   plane forgets them rather than dropping them;
//! - while a container or record of that service remains on an unreachable host: that
//!   container still logs in with the roles, so they are dropped once it is removed.
//!
//! Phases, empty ones omitted, each sorted by instance id (or service id) then host:
//! 1. `ForgetNode` of a new node's stale keys;
//! 2. Postgres leaders (or a new node's first instance): `Apply`/`Resize`;
//! 3. other Postgres instances: `Apply`/`Resize` (they clone from the leader);
//! 4. `CreateRoles` (needs a running leader, and comes before any service starts);
//! 5. services: `Apply`/`Resize`, and service `Remove`s;
//! 6. `DropRoles` (after the service's containers are gone);
//! 7. `Switchover`s of leaders that are to be removed;
//! 8. Postgres `Remove`s;
//! 9. `ForgetNode` of removed nodes.
//!
//! Fixed host ports: on each host, a step that takes a port runs after every step of the
//! plan that frees it (a phase is split, or the taking step waits for a later plan); see
//! the `ports` module.

mod planner;
mod ports;
mod postgres;
mod replication;
pub mod routing;
mod types;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use planner::plan;
pub use types::{
    AppliedRecord, ApplyReason, DesiredInstance, InstanceKind, MAX_TAKEOVER_LAG_BYTES,
    ObservedInstance, ObservedStatus, PatroniMember, PatroniNode, Plan, PlanInput, Resources, Step,
    Wait,
};

/// The id of a service's instance on a host: `{database_id}-{service_id}-{host_id}`.
pub fn service_instance_id(database_id: &str, service_id: &str, host_id: &str) -> String {
    format!("{database_id}-{service_id}-{host_id}")
}

/// The id of a Postgres node's instance on a host: `{database_id}-{node}-{host_id}`.
pub fn postgres_instance_id(database_id: &str, node: &str, host_id: &str) -> String {
    format!("{database_id}-{node}-{host_id}")
}

/// SHA-256 (lowercase hex) of the canonical JSON encoding of `value`.
///
/// The hash is stored as a container label and compared across restarts and releases, so
/// it must not depend on iteration order. Object keys are sorted before encoding, which
/// makes the order of fields and of `serde_json::Map` entries irrelevant; maps inside
/// `value` should still be `BTreeMap` (a `HashMap` only hashes stably because of that
/// sorting, and only when its keys serialize as strings or numbers).
///
/// # Panics
///
/// When `value` cannot be represented as JSON (a map with non-scalar keys, or a
/// `Serialize` impl that fails): a programming error, not an input error.
pub fn spec_hash<T: Serialize + ?Sized>(value: &T) -> String {
    let value = serde_json::to_value(value).expect("spec_hash: value must serialize to JSON");
    let encoded = serde_json::to_vec(&canonical(value)).expect("JSON values always encode");
    hex::encode(Sha256::digest(&encoded))
}

/// Rebuilds every object with sorted keys: with serde_json's `preserve_order` feature,
/// which another crate of the workspace may turn on, maps keep insertion order.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        scalar => scalar,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;
    use serde_json::json;

    use super::*;

    #[test]
    fn instance_ids() {
        assert_eq!(
            service_instance_id("db1", "mcp", "host-1"),
            "db1-mcp-host-1"
        );
        assert_eq!(postgres_instance_id("db1", "n2", "host-3"), "db1-n2-host-3");
    }

    #[test]
    fn spec_hash_is_sha256_of_compact_json() {
        // sha256("{\"a\":1}")
        assert_eq!(
            spec_hash(&json!({"a": 1})),
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
        );
    }

    #[test]
    fn spec_hash_ignores_key_order_but_not_values() {
        let a = json!({"image": "x", "env": {"B": "2", "A": "1"}, "ports": [1, 2]});
        let b = json!({"ports": [1, 2], "env": {"A": "1", "B": "2"}, "image": "x"});
        assert_eq!(spec_hash(&a), spec_hash(&b));
        let reordered_list = json!({"image": "x", "env": {"A": "1", "B": "2"}, "ports": [2, 1]});
        assert_ne!(spec_hash(&a), spec_hash(&reordered_list));
        let other_value = json!({"image": "y", "env": {"A": "1", "B": "2"}, "ports": [1, 2]});
        assert_ne!(spec_hash(&a), spec_hash(&other_value));
    }

    #[test]
    fn spec_hash_of_structs_and_maps() {
        #[derive(Serialize)]
        struct Spec<M> {
            image: &'static str,
            env: M,
        }
        let pairs = [("Z", "1"), ("A", "2"), ("M", "3")];
        let btree: BTreeMap<_, _> = pairs.into_iter().collect();
        let hash: HashMap<_, _> = pairs.into_iter().collect();
        let expected = spec_hash(&json!({"image": "i", "env": {"A": "2", "M": "3", "Z": "1"}}));
        assert_eq!(
            spec_hash(&Spec {
                image: "i",
                env: btree
            }),
            expected
        );
        assert_eq!(
            spec_hash(&Spec {
                image: "i",
                env: hash
            }),
            expected
        );
    }
}
