//! The dry-run's plan against a database whose instance records say it runs its spec: the
//! same spec plans nothing, and each kind of change plans exactly its steps, for the reason
//! it has. The records are made from the very desired state a pass would apply.

use chrono::Utc;
use serde_json::{Value, json};
use spec::{DatabaseSpec, DatabaseState, PlannedAction, PlannedKind};
use store::{DatabaseRecord, StoredDatabase};

use super::*;
use crate::instances::{ObservedView, Phase};

const DB: &str = "shop";

fn dcs() -> crate::patroni::config::Dcs {
    crate::patroni::config::Dcs::from_urls(&["http://10.0.0.254:2379".into()], "/berth").unwrap()
}

/// The local manifest, with mcp 1.0.0 on an image of its own (to change images).
fn manifest() -> Manifest {
    let mut m: Value = serde_json::from_str(spec::manifest::LOCAL_MANIFEST).unwrap();
    m["services"]["mcp"][0]["image"] = json!("berth/fixture-service:old");
    Manifest::from_json(&m.to_string()).unwrap()
}

fn mcp(model: &str) -> Value {
    json!({
        "service_id": "mcp-server",
        "service_type": "mcp",
        "version": "1.1.0",
        "host_ids": ["host-1", "host-2"],
        "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": model,
                   "anthropic_api_key": "sk-ant-test"}
    })
}

fn spec_of(services: Vec<Value>) -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "shop",
        "nodes": [{"name": "n1", "host_ids": ["host-1", "host-2"]}],
        "services": services
    }))
    .unwrap()
}

fn host(id: &str) -> spec::Host {
    serde_json::from_value(json!({
        "id": id, "agent_address": "https://127.0.0.1:1", "addresses": ["127.0.0.1"],
        "engine_id": "one-engine", "cpus": 4, "memory_bytes": 8u64 << 30,
        "agent_version": "test", "registered_at": Utc::now(),
        "status": {"state": "healthy", "updated_at": Utc::now()}
    }))
    .unwrap()
}

fn db(spec: DatabaseSpec, generation: u64, forced_generation: u64) -> StoredDatabase {
    StoredDatabase {
        record: DatabaseRecord {
            id: DB.into(),
            state: DatabaseState::Available,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            generation,
            current_task_id: None,
            tenant_id: None,
            forced_generation,
            operation: None,
            stopped_instances: Default::default(),
            stopped_primaries: Default::default(),
            restored_nodes: Default::default(),
        },
        spec,
        spec_revision: 1,
    }
}

/// A database that runs `spec`: the records and credentials a pass leaves behind once it
/// applied it (every instance running its desired hash, every service's roles created).
struct Running {
    records: BTreeMap<String, InstanceRecord>,
    /// Patroni's keys: host-1's instance leads, host-2's streams from it.
    patroni: BTreeMap<String, plan::PatroniNode>,
    creds: DatabaseCredentials,
    authority: pki::Authority,
    manifest: Manifest,
}

impl Running {
    fn new(spec: DatabaseSpec) -> Running {
        let authority = pki::Authority::generate().unwrap();
        let manifest = manifest();
        let current = db(spec, 1, 0);
        let state = inputs::desired_state(
            &current,
            Context {
                hosts: inputs::placements(&[host("host-1"), host("host-2")]),
                records: &BTreeMap::new(),
                stored_creds: None,
                manifest: &manifest,
                authority: &authority,
                dcs: &dcs(),
                now: Utc::now(),
            },
        )
        .unwrap();
        let nodes: BTreeSet<String> = current.spec.nodes.iter().map(|n| n.name.clone()).collect();
        let mut creds = state.creds;
        for c in creds.services.values_mut() {
            c.roles_created = true;
            c.roles_on = nodes.clone();
        }
        let member = |role: &str| plan::PatroniMember {
            role: role.into(),
            state: "running".into(),
            replication_state: None,
            timeline: Some(1),
            wal_position: Some(100),
            pending_restart: false,
        };
        let patroni = [(
            "n1".to_string(),
            plan::PatroniNode {
                leader: Some("shop-n1-host-1".into()),
                initialized: true,
                members: [
                    ("shop-n1-host-1".to_string(), member("primary")),
                    ("shop-n1-host-2".to_string(), member("replica")),
                ]
                .into(),
            },
        )]
        .into();
        let records = state
            .desired
            .values()
            .map(|d| {
                assert!(!d.plan.waiting, "{} waits", d.plan.instance_id);
                let record = InstanceRecord {
                    instance_id: d.plan.instance_id.clone(),
                    database_id: DB.into(),
                    host_id: d.plan.host_id.clone(),
                    kind: d.plan.kind.clone(),
                    spec_hash: d.plan.spec_hash.clone(),
                    resources: d.plan.resources,
                    created_at: Utc::now(),
                    updated_at: Utc::now(),
                    observed: ObservedView {
                        phase: Phase::Running,
                        container_id: Some(format!("c-{}", d.plan.instance_id)),
                        image: Some(d.spec.image.clone()),
                        ports: vec![],
                        last_health_at: None,
                        ready: true,
                        error: None,
                        sequence: 1,
                    },
                    apply_error: None,
                    wal: None,
                    subscriptions: None,
                };
                (d.plan.instance_id.clone(), record)
            })
            .collect();
        Running {
            records,
            patroni,
            creds,
            authority,
            manifest,
        }
    }

    /// The dry-run of `spec` as generation 2 (forced: with `force_update`).
    fn dry_run(&self, spec: DatabaseSpec, forced: bool) -> Vec<PlannedStep> {
        let facts = Facts {
            records: self.records.clone(),
            stored_creds: Some(self.creds.clone()),
            hosts: vec![host("host-1"), host("host-2")],
            alive: ["host-1".to_string(), "host-2".to_string()].into(),
            patroni: self.patroni.clone(),
            dcs: dcs(),
            authority: pki::Authority::from_identity(self.authority.identity().clone()),
            now: Utc::now(),
        };
        let plan = dry_run_plan(
            &db(spec, 2, if forced { 2 } else { 0 }),
            facts,
            &self.manifest,
            forced,
        )
        .unwrap();
        assert_eq!(plan.database_id, DB);
        assert!(plan.dry_run);
        plan.steps
    }
}

fn summary(steps: &[PlannedStep]) -> Vec<(PlannedAction, PlannedKind, String, String)> {
    steps
        .iter()
        .map(|s| {
            let target = s
                .instance_id
                .clone()
                .or(s.service_id.clone())
                .unwrap_or_default();
            (s.action, s.kind, target, s.reason.clone())
        })
        .collect()
}

#[test]
fn the_spec_it_runs_plans_nothing() {
    let running = Running::new(spec_of(vec![mcp("claude-sonnet-4-5")]));
    assert_eq!(
        running.dry_run(spec_of(vec![mcp("claude-sonnet-4-5")]), false),
        vec![]
    );
}

#[test]
fn a_changed_service_config_replaces_exactly_its_instances() {
    let running = Running::new(spec_of(vec![mcp("claude-sonnet-4-5")]));
    let steps = running.dry_run(spec_of(vec![mcp("claude-opus-4-1")]), false);
    assert_eq!(
        summary(&steps),
        [
            (
                PlannedAction::Replace,
                PlannedKind::Service,
                "shop-mcp-server-host-1".into(),
                "config changed".into()
            ),
            (
                PlannedAction::Replace,
                PlannedKind::Service,
                "shop-mcp-server-host-2".into(),
                "config changed".into()
            ),
        ]
    );
    assert_eq!(steps[0].host_id.as_deref(), Some("host-1"));
    assert_eq!(steps[0].service_id.as_deref(), Some("mcp-server"));
    assert_eq!(steps[0].node_name, None);
}

#[test]
fn one_service_instance_of_two_changes_alone() {
    let mut one = mcp("claude-sonnet-4-5");
    one["host_ids"] = json!(["host-1"]);
    let mut other = mcp("claude-sonnet-4-5");
    other["service_id"] = json!("mcp-two");
    other["host_ids"] = json!(["host-2"]);
    let running = Running::new(spec_of(vec![one.clone(), other.clone()]));
    other["config"]["llm_model"] = json!("claude-opus-4-1");
    let steps = running.dry_run(spec_of(vec![one, other]), false);
    assert_eq!(
        summary(&steps),
        [(
            PlannedAction::Replace,
            PlannedKind::Service,
            "shop-mcp-two-host-2".into(),
            "config changed".into()
        )]
    );
}

#[test]
fn an_image_change_says_which_images() {
    let running = Running::new(spec_of(vec![mcp("m")]));
    let mut older = mcp("m");
    older["version"] = json!("1.0.0");
    let steps = running.dry_run(spec_of(vec![older]), false);
    assert_eq!(steps.len(), 2, "{steps:?}");
    for s in &steps {
        assert_eq!(s.action, PlannedAction::Replace);
        assert_eq!(
            s.reason,
            "image changed (berth/fixture-service:local -> berth/fixture-service:old)"
        );
    }
}

#[test]
fn new_limits_resize_in_place_and_removed_services_go_with_their_roles() {
    let running = Running::new(spec_of(vec![mcp("m")]));
    let mut limited = mcp("m");
    limited["cpus"] = json!("500m");
    let steps = running.dry_run(spec_of(vec![limited]), false);
    let actions: Vec<_> = steps
        .iter()
        .map(|s| (s.action, s.reason.as_str()))
        .collect();
    assert_eq!(
        actions,
        [(PlannedAction::Resize, "cpu/memory changed in place"); 2]
    );

    let steps = running.dry_run(spec_of(vec![]), false);
    assert_eq!(
        summary(&steps),
        [
            (
                PlannedAction::Remove,
                PlannedKind::Service,
                "shop-mcp-server-host-1".into(),
                "no longer in the spec".into()
            ),
            (
                PlannedAction::Remove,
                PlannedKind::Service,
                "shop-mcp-server-host-2".into(),
                "no longer in the spec".into()
            ),
            (
                PlannedAction::DropRoles,
                PlannedKind::Roles,
                "mcp-server".into(),
                "the service is no longer in the spec".into()
            ),
        ]
    );
}

#[test]
fn a_new_service_gets_roles_then_instances() {
    let running = Running::new(spec_of(vec![]));
    let steps = running.dry_run(spec_of(vec![mcp("m")]), false);
    assert_eq!(
        summary(&steps),
        [
            (
                PlannedAction::CreateRoles,
                PlannedKind::Roles,
                "mcp-server".into(),
                "new service: its roles svc_mcp_server_ro and svc_mcp_server_rw".into()
            ),
            (
                PlannedAction::Create,
                PlannedKind::Service,
                "shop-mcp-server-host-1".into(),
                "new instance".into()
            ),
            (
                PlannedAction::Create,
                PlannedKind::Service,
                "shop-mcp-server-host-2".into(),
                "new instance".into()
            ),
        ]
    );
}

#[test]
fn force_update_replaces_every_instance_once() {
    let running = Running::new(spec_of(vec![mcp("m")]));
    let steps = running.dry_run(spec_of(vec![mcp("m")]), true);
    let ids: Vec<_> = steps
        .iter()
        .map(|s| (s.action, s.kind, s.node_name.clone(), s.reason.as_str()))
        .collect();
    let postgres = |node: &str| {
        (
            PlannedAction::Replace,
            PlannedKind::Postgres,
            Some(node.to_string()),
            "forced update (force_update=true)",
        )
    };
    let service = (
        PlannedAction::Replace,
        PlannedKind::Service,
        None,
        "forced update (force_update=true)",
    );
    // The replica, then the services: the planner's phases. The primary gets its new
    // container after a switchover to the replaced replica, in a later plan (a rolling
    // update), so this plan does not hold it.
    assert_eq!(ids, [postgres("n1"), service.clone(), service]);
    assert!(
        steps[0]
            .instance_id
            .as_deref()
            .is_some_and(|id| id.ends_with("host-2")),
        "{:?}",
        steps[0]
    );
}

#[test]
fn a_new_database_plans_every_instance() {
    let manifest = manifest();
    let facts = Facts {
        records: BTreeMap::new(),
        stored_creds: None,
        hosts: vec![host("host-1"), host("host-2")],
        alive: ["host-1".to_string(), "host-2".to_string()].into(),
        patroni: BTreeMap::new(),
        dcs: dcs(),
        authority: pki::Authority::generate().unwrap(),
        now: Utc::now(),
    };
    let mut new = db(spec_of(vec![mcp("m")]), 1, 0);
    new.record.state = DatabaseState::Creating;
    let plan = dry_run_plan(&new, facts, &manifest, false).unwrap();
    let summary: Vec<_> = plan
        .steps
        .iter()
        .map(|s| (s.action, s.kind, s.host_id.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                PlannedAction::Create,
                PlannedKind::Postgres,
                Some("host-1".into())
            ),
            (
                PlannedAction::Create,
                PlannedKind::Postgres,
                Some("host-2".into())
            ),
            (PlannedAction::CreateRoles, PlannedKind::Roles, None),
            (
                PlannedAction::Create,
                PlannedKind::Service,
                Some("host-1".into())
            ),
            (
                PlannedAction::Create,
                PlannedKind::Service,
                Some("host-2".into())
            ),
        ]
    );
    let json = serde_json::to_value(&plan.steps[0]).unwrap();
    assert_eq!(
        json,
        json!({"action": "create", "kind": "postgres", "instance_id": "shop-n1-host-1",
               "host_id": "host-1", "node_name": "n1", "reason": "new instance"})
    );
    let roles = serde_json::to_value(&plan.steps[2]).unwrap();
    assert_eq!(roles["action"], "create_roles");
    assert_eq!(roles["kind"], "roles");
    assert!(roles.get("instance_id").is_none(), "{roles}");
}

/// The case as a dry-run: the primary's host leaves the node; the plan hands over
/// first and removes the old primary after.
#[test]
fn dropping_the_primarys_host_plans_a_switchover_then_the_removal() {
    let running = Running::new(spec_of(vec![]));
    let moved: DatabaseSpec = serde_json::from_value(json!({
        "database_name": "shop",
        "nodes": [{"name": "n1", "host_ids": ["host-2"]}]
    }))
    .unwrap();
    let steps = running.dry_run(moved, false);
    let summary: Vec<_> = steps
        .iter()
        .map(|s| (s.action, s.instance_id.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            (PlannedAction::Switchover, "shop-n1-host-1".to_string()),
            (PlannedAction::Remove, "shop-n1-host-1".to_string()),
        ]
    );
    assert!(
        steps[0].reason.contains("hands over to shop-n1-host-2"),
        "{}",
        steps[0].reason
    );
}
