//! Which operations are accepted, and what is stored for them, by table.

use super::*;
use chrono::Utc;
use plan::InstanceKind;
use serde_json::json;
use spec::DatabaseState;
use store::DatabaseRecord;

use crate::instances::{ObservedView, Phase};

const DB: &str = "shop";

fn db(stopped: &[&str]) -> StoredDatabase {
    StoredDatabase {
        record: DatabaseRecord {
            id: DB.into(),
            state: DatabaseState::Available,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            generation: 1,
            current_task_id: None,
            tenant_id: None,
            forced_generation: 0,
            operation: None,
            stopped_instances: stopped.iter().map(|s| s.to_string()).collect(),
            stopped_primaries: Default::default(),
            restored_nodes: Default::default(),
        },
        spec: serde_json::from_value(json!({
            "database_name": "shop",
            "nodes": [{"name": "n1", "host_ids": ["h1", "h2", "h3"]},
                      {"name": "n2", "host_ids": ["h1"]}],
        }))
        .unwrap(),
        spec_revision: 1,
    }
}

fn record(id: &str, node: &str) -> InstanceRecord {
    InstanceRecord {
        instance_id: id.into(),
        database_id: DB.into(),
        host_id: "h1".into(),
        kind: InstanceKind::Postgres { node: node.into() },
        spec_hash: "H".into(),
        resources: Default::default(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
        observed: ObservedView {
            phase: Phase::Running,
            container_id: None,
            image: None,
            ports: vec![],
            last_health_at: None,
            ready: true,
            error: None,
            sequence: 1,
        },
        apply_error: None,
        wal: None,
        subscriptions: None,
    }
}

fn records() -> Vec<InstanceRecord> {
    vec![
        record("a", "n1"),
        record("b", "n1"),
        record("c", "n1"),
        record("z", "n2"),
    ]
}

/// n1: `a` leads at WAL 1000; `b` streams at 1000; `c` runs 10 MiB behind; n2: `z` alone.
fn keys(leader: Option<&str>, a_state: &str) -> BTreeMap<String, PatroniNode> {
    let member = |role: &str, state: &str, at: u64| PatroniMember {
        role: role.into(),
        state: state.into(),
        replication_state: (role == "replica").then(|| "streaming".into()),
        timeline: Some(1),
        wal_position: Some(at),
        pending_restart: false,
    };
    let n1 = PatroniNode {
        leader: leader.map(str::to_string),
        initialized: true,
        members: [
            ("a".to_string(), member("primary", a_state, 20_000_000)),
            ("b".to_string(), member("replica", "running", 20_000_000)),
            ("c".to_string(), member("replica", "running", 9_000_000)),
        ]
        .into(),
    };
    let n2 = PatroniNode {
        leader: Some("z".into()),
        initialized: true,
        members: [("z".to_string(), member("primary", "running", 5))].into(),
    };
    [("n1".to_string(), n1), ("n2".to_string(), n2)].into()
}

fn path(r: Refusal) -> (u16, String) {
    match r {
        Refusal::NotFound(_) => (404, String::new()),
        Refusal::Invalid(e) => (400, e.errors[0].path.clone()),
        Refusal::NotPossible(e) => (409, e.errors[0].path.clone()),
    }
}

fn candidate(c: Option<&str>) -> SwitchoverRequest {
    SwitchoverRequest {
        candidate_instance_id: c.map(str::to_string),
        scheduled_at: None,
    }
}

#[test]
fn a_switchover_goes_to_a_caught_up_replica_only() {
    let db = db(&[]);
    let recs = records();
    let k = keys(Some("a"), "running");
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &k,
    };
    assert_eq!(
        switchover(&f, "n1", candidate(Some("b"))).unwrap(),
        Operation::Switchover {
            node: "n1".into(),
            leader: "a".into(),
            candidate: Some("b".into()),
            scheduled_at: None
        }
    );
    assert!(switchover(&f, "n1", candidate(None)).is_ok());
    let cases: &[(&str, Option<&str>, (u16, &str))] = &[
        ("unknown node", None, (404, "")),
        ("n1", Some("c"), (400, "candidate_instance_id")), // 10 MiB behind
        ("n1", Some("a"), (400, "candidate_instance_id")), // the primary itself
        ("n1", Some("z"), (400, "candidate_instance_id")), // another node's
        ("n1", Some("nope"), (400, "candidate_instance_id")),
        ("n2", None, (409, "node_name")), // nothing to take over
    ];
    for (node, c, want) in cases {
        let got = path(switchover(&f, node, candidate(*c)).unwrap_err());
        assert_eq!((got.0, got.1.as_str()), *want, "{node} {c:?}");
    }
    let k = keys(None, "stopped");
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &k,
    };
    assert_eq!(
        path(switchover(&f, "n1", candidate(None)).unwrap_err()),
        (409, "node_name".into()),
        "no primary: a failover, not a switchover"
    );
}

#[test]
fn a_failover_needs_a_lost_primary_or_skip_validation() {
    let db = db(&[]);
    let recs = records();
    let healthy = keys(Some("a"), "running");
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &healthy,
    };
    let plain = FailoverRequest::default();
    assert_eq!(
        path(failover(&f, "n1", plain.clone()).unwrap_err()),
        (409, "skip_validation".into())
    );
    let skip = FailoverRequest {
        skip_validation: true,
        ..plain.clone()
    };
    assert!(
        matches!(failover(&f, "n1", skip).unwrap(), Operation::Failover { candidate, .. } if candidate == "b"),
        "the replica that lags least"
    );

    // The primary's key expired: any running replica may be promoted, lagging or not.
    let lost = keys(None, "stopped");
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &lost,
    };
    assert_eq!(
        failover(
            &f,
            "n1",
            FailoverRequest {
                candidate_instance_id: Some("c".into()),
                skip_validation: false
            }
        )
        .unwrap(),
        Operation::Failover {
            node: "n1".into(),
            leader: None,
            candidate: "c".into()
        }
    );
    let stopped_db = self::db(&["b", "c"]);
    let f = Facts {
        db: &stopped_db,
        records: &recs,
        patroni: &lost,
    };
    assert_eq!(
        path(failover(&f, "n1", plain).unwrap_err()),
        (409, "node_name".into()),
        "stopped replicas are not promoted"
    );
}

#[test]
fn stopping_keeps_a_node_running_unless_forced() {
    let db = db(&[]);
    let recs = records();
    let k = keys(Some("a"), "running");
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &k,
    };
    assert_eq!(
        stop(&f, "a", false).unwrap(),
        Operation::StopInstance {
            instance_id: "a".into(),
            hand_over_to: Some("b".into())
        },
        "the primary hands over to the caught-up replica first"
    );
    assert_eq!(
        stop(&f, "c", false).unwrap(),
        Operation::StopInstance {
            instance_id: "c".into(),
            hand_over_to: None
        }
    );
    assert_eq!(
        path(stop(&f, "z", false).unwrap_err()),
        (409, "force".into())
    );
    assert!(stop(&f, "z", true).is_ok());
    assert_eq!(path(stop(&f, "nope", true).unwrap_err()).0, 404);

    // b stopped: the primary's only other instance lags; stopping it needs force.
    let db = self::db(&["b"]);
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &k,
    };
    assert_eq!(
        path(stop(&f, "a", false).unwrap_err()),
        (409, "force".into())
    );
    assert_eq!(
        path(restart(&f, "b", RestartInstanceRequest::default()).unwrap_err()),
        (409, "instance_id".into())
    );
    assert!(start(&f, "b", false).is_ok());
    assert!(restart(&f, "a", RestartInstanceRequest::default()).is_ok());
}

/// The data-loss case: every instance stopped, the replica that was stopped first
/// (and is behind) may not start first without force.
#[test]
fn only_the_last_primary_starts_a_stopped_node_without_force() {
    let mut db = db(&["a", "b", "c"]);
    db.record
        .stopped_primaries
        .insert("n1".to_string(), "a".to_string());
    let recs = records();
    let none = keys(None, "stopped");
    let mut nothing_runs = none.clone();
    nothing_runs.get_mut("n1").unwrap().members.clear();
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &nothing_runs,
    };
    assert_eq!(
        path(start(&f, "b", false).unwrap_err()),
        (409, "force".into())
    );
    assert!(
        start(&f, "b", true).is_ok(),
        "forced: the operator accepts the loss"
    );
    assert!(start(&f, "a", false).is_ok(), "the last primary starts");
    // Once an instance of the node runs (b, started), the others join it as replicas.
    db.record.stopped_instances.remove("b");
    let f = Facts {
        db: &db,
        records: &recs,
        patroni: &none,
    };
    assert!(start(&f, "c", false).is_ok());
}

#[test]
fn a_backup_needs_a_usable_repository_and_a_running_primary() {
    let request = || BackupRequest {
        backup_type: spec::backup::BackupType::Full,
        annotations: BTreeMap::new(),
    };
    let repository = |kind: &str| {
        let mut r = json!({"id": "main", "type": kind, "base_path": "/b"});
        if kind == "s3" {
            r["s3_bucket"] = json!("bucket");
            r["s3_region"] = json!("eu-west-1");
        }
        serde_json::from_value::<spec::backup::BackupConfig>(json!({"repositories": [r]})).unwrap()
    };
    let recs = records();
    let k = keys(Some("a"), "running");
    let mut plain = db(&[]);
    fn facts<'a>(
        db: &'a StoredDatabase,
        records: &'a [InstanceRecord],
        patroni: &'a BTreeMap<String, PatroniNode>,
    ) -> Facts<'a> {
        Facts {
            db,
            records,
            patroni,
        }
    }
    assert_eq!(
        path(backup(&facts(&plain, &recs, &k), "n1", request()).unwrap_err()),
        (400, "node_name".into())
    );
    plain.spec.backup_config = Some(repository("posix"));
    let refused = backup(&facts(&plain, &recs, &k), "n1", request()).unwrap_err();
    assert!(matches!(&refused, Refusal::Invalid(e) if e.errors[0].message.contains("only posix")));
    plain.spec.backup_config = Some(repository("s3"));
    assert_eq!(
        backup(&facts(&plain, &recs, &k), "n1", request()).unwrap(),
        Operation::Backup {
            node: "n1".into(),
            backup_type: spec::backup::BackupType::Full,
            annotations: BTreeMap::new(),
        }
    );
    assert_eq!(
        path(backup(&facts(&plain, &recs, &k), "n9", request()).unwrap_err()),
        (404, String::new())
    );
    let stopped = DatabaseRecord {
        stopped_instances: ["a".to_string()].into(),
        ..plain.record.clone()
    };
    let with_stopped = StoredDatabase {
        record: stopped,
        ..plain
    };
    assert_eq!(
        path(backup(&facts(&with_stopped, &recs, &k), "n1", request()).unwrap_err()),
        (409, "node_name".into())
    );
}

#[test]
fn a_restore_needs_one_node_and_an_s3_repository_of_it_not_a_running_instance() {
    let request = |repository: serde_json::Value, options: serde_json::Value| RestoreRequest {
        restore_config: serde_json::from_value(json!({"source_database_id": DB,
            "source_node_name": "n1", "source_database_name": "shop",
            "repository": repository, "restore_options": options}))
        .unwrap(),
        target_nodes: vec![],
    };
    let recs = records();
    let k = keys(Some("a"), "running");
    let mut one = db(&[]);
    one.spec.nodes.truncate(1);
    one.spec.backup_config = Some(
        serde_json::from_value(json!({"repositories": [
            {"id": "main", "type": "s3", "s3_bucket": "bucket", "s3_region": "eu-west-1"},
            {"id": "local", "type": "posix", "base_path": "/b"}]}))
        .unwrap(),
    );
    let facts = |db| Facts {
        db,
        records: &recs,
        patroni: &k,
    };
    let ok = restore(&facts(&one), request(json!("main"), json!({}))).unwrap();
    assert!(matches!(&ok, Operation::Restore { nodes, .. } if nodes == &["n1".to_string()]));
    for (repository, options, refused) in [
        (json!("nope"), json!({}), (400, "restore_config.repository")),
        (
            json!("local"),
            json!({}),
            (400, "restore_config.repository"),
        ),
        (
            json!("main"),
            json!({"type": "standby"}),
            (400, "restore_config.restore_options.type"),
        ),
        (
            json!("main"),
            json!({"type": "immediate", "target-action": "pause"}),
            (400, "restore_config.restore_options.target-action"),
        ),
    ] {
        let got = path(restore(&facts(&one), request(repository, options)).unwrap_err());
        assert_eq!(got, (refused.0, refused.1.to_string()));
    }
    // Several nodes: their replication would not be rebuilt.
    let mut two = db(&[]);
    two.spec.backup_config = one.spec.backup_config.clone();
    let got = path(restore(&facts(&two), request(json!("main"), json!({}))).unwrap_err());
    assert_eq!(got, (409, "target_nodes".into()));
    // No running instance to check the backup on: a node whose instances all fail is what a
    // restore is for, and its first instance checks the backup as it restores.
    let stopped = StoredDatabase {
        record: DatabaseRecord {
            stopped_instances: ["a", "b", "c"].map(String::from).into(),
            ..one.record.clone()
        },
        ..one.clone()
    };
    let ok = restore(&facts(&stopped), request(json!("main"), json!({}))).unwrap();
    assert!(matches!(&ok, Operation::Restore { nodes, .. } if nodes == &["n1".to_string()]));
    let no_keys = BTreeMap::new();
    let failing = Facts {
        db: &one,
        records: &recs,
        patroni: &no_keys,
    };
    assert!(restore(&failing, request(json!("main"), json!({}))).is_ok());
}
