//! Table tests of `backup_config` and `restore_config`: each case breaks a valid body in one
//! place and names the errors (path, message fragment) it must produce; then the secrets:
//! carried over, removed by null, kept to the same place, never in a message.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::backup::{RestoreRepository, RetentionFullType};
use crate::manifest::Manifest;
use crate::parse::tests::set;
use crate::parse::{ValidationContext, parse_create_request, parse_update_request};
use crate::{DatabaseSpec, InvalidInput};

const KEY: &str = "AKIA-KEY-MARKER";
const SECRET: &str = "SECRET-MARKER/wJalrXUtnFEMI";

/// A valid body using every field, which each case below breaks in one place.
fn base() -> Value {
    json!({
        "id": "shop",
        "spec": {
            "database_name": "shop",
            "nodes": [
                {"name": "n1", "host_ids": ["host-1"]},
                {"name": "n2", "host_ids": ["host-2"],
                 "backup_config": {
                     "repositories": [{"id": "local", "type": "posix", "base_path": "/backups"}],
                     "schedules": [{"id": "hourly", "type": "incr", "cron_expression": "@hourly"}]
                 },
                 "restore_config": {
                     "source_database_id": "old-shop", "source_node_name": "n1",
                     "source_database_name": "shop", "repository": "local"
                 }}
            ],
            "backup_config": {
                "repositories": [
                    {"id": "s3", "type": "s3", "s3_bucket": "shop-backups", "s3_region": "us-east-1",
                     "s3_endpoint": "127.0.0.1:9000", "s3_key": KEY, "s3_key_secret": SECRET,
                     "base_path": "/berth", "retention_full": 2, "retention_full_type": "count",
                     "custom_options": {"storage-upload-chunk-size": "5MiB",
                                        "s3-kms-key-id": "1234abcd-12ab"}},
                    {"id": "nfs", "type": "posix", "base_path": "/mnt/backups"}
                ],
                "schedules": [
                    {"id": "nightly-full", "type": "full", "cron_expression": "0 0 * * *"},
                    {"id": "hourly_incr.1", "type": "incr", "cron_expression": "0 6 * * ?"}
                ]
            },
            "restore_config": {
                "source_database_id": "old-shop",
                "source_node_name": "n1",
                "source_database_name": "shop",
                "repository": {"id": "old", "type": "s3", "s3_bucket": "old-backups",
                               "s3_region": "eu-west-1", "s3_key": KEY, "s3_key_secret": SECRET},
                "restore_options": {"type": "time", "target": "2025-01-01T01:30:00Z",
                                    "set": "20250505-153628F"}
            }
        }
    })
}

fn edited(edits: &[(&str, Option<Value>)]) -> Value {
    let mut body = base();
    for (pointer, value) in edits {
        set(&mut body, pointer, value.clone());
    }
    body
}

fn create(body: &Value) -> Result<DatabaseSpec, InvalidInput> {
    let manifest = Manifest::builtin();
    let hosts: BTreeSet<String> = ["host-1", "host-2"].map(String::from).into();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: Some(&hosts),
        previous: None,
    };
    parse_create_request(body, &ctx).map(|r| r.spec)
}

fn update(previous: &DatabaseSpec, body: &Value) -> Result<DatabaseSpec, InvalidInput> {
    let manifest = Manifest::builtin();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: None,
        previous: Some(previous),
    };
    parse_update_request(&json!({"spec": body["spec"]}), &ctx)
}

fn errors(body: &Value) -> Vec<(String, String)> {
    match create(body) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|f| (f.path, f.message)).collect(),
    }
}

fn s(v: &str) -> Option<Value> {
    Some(json!(v))
}

const DB: &str = "/spec/backup_config";
const S3: &str = "/spec/backup_config/repositories/0";
const NFS: &str = "/spec/backup_config/repositories/1";
const SCHED: &str = "/spec/backup_config/schedules/0";
const RESTORE: &str = "/spec/restore_config";
const OPTS: &str = "/spec/restore_config/restore_options";

/// `(edits, [(path, message fragment)])`.
type Case = (
    Vec<(String, Option<Value>)>,
    Vec<(&'static str, &'static str)>,
);

fn at(base: &str, rest: &str, value: Option<Value>) -> (String, Option<Value>) {
    (format!("{base}{rest}"), value)
}

fn cases() -> Vec<Case> {
    let long = |n: usize| s(&"a".repeat(n));
    vec![
        // Shape and unknown keys.
        (vec![at(DB, "", s("daily"))], vec![("spec.backup_config", "expected an object")]),
        (vec![at(DB, "/extra", Some(json!(1)))], vec![("spec.backup_config.extra", "unknown field; allowed: repositories, schedules")]),
        (vec![at(S3, "/gcs_bucket", s("b"))], vec![("spec.backup_config.repositories[0].gcs_bucket", "unknown field")]),
        (vec![at(SCHED, "/timezone", s("UTC"))], vec![("spec.backup_config.schedules[0].timezone", "unknown field")]),
        (vec![at(RESTORE, "/target_nodes", Some(json!(["n1"])))], vec![("spec.restore_config.target_nodes", "unknown field")]),
        (vec![at(RESTORE, "/repository/retention_full", Some(json!(3)))], vec![("spec.restore_config.repository.retention_full", "unknown field")]),
        (vec![("/spec/nodes/0/backup_config".into(), Some(json!({"repositories": [], "x": 1})))],
         vec![("spec.nodes[0].backup_config.x", "unknown field"), ("spec.nodes[0].backup_config.repositories", "at least one repository")]),
        // Repositories: present, non-empty, unique.
        (vec![at(DB, "/repositories", None)], vec![("spec.backup_config.repositories", "schedules have nowhere")]),
        (vec![at(DB, "/repositories", Some(json!([]))), at(DB, "/schedules", None)], vec![("spec.backup_config.repositories", "must list at least one repository")]),
        (vec![at(DB, "/repositories", s("s3"))], vec![("spec.backup_config.repositories", "expected an array")]),
        (vec![("/spec/nodes/1/backup_config/repositories".into(), None)], vec![("spec.nodes[1].backup_config.repositories", "schedules have nowhere")]),
        (vec![at(NFS, "/id", s("s3"))], vec![("spec.backup_config.repositories[1].id", "duplicate repository id \"s3\"")]),
        (vec![at(S3, "/id", None)], vec![("spec.backup_config.repositories[0].id", "is required")]),
        (vec![at(S3, "/id", s("Bad_Id"))], vec![("spec.backup_config.repositories[0].id", "lowercase letters")]),
        (vec![at(S3, "/type", None)], vec![("spec.backup_config.repositories[0].type", "is required")]),
        (vec![at(S3, "/type", s("gcs"))], vec![("spec.backup_config.repositories[0].type", "expected one of: posix, s3")]),
        // base_path.
        (vec![at(NFS, "/base_path", None)], vec![("spec.backup_config.repositories[1].base_path", "is required for a posix repository")]),
        (vec![at(NFS, "/base_path", s("backups"))], vec![("spec.backup_config.repositories[1].base_path", "absolute path")]),
        (vec![at(S3, "/base_path", s("berth/x"))], vec![("spec.backup_config.repositories[0].base_path", "absolute path")]),
        (vec![at(NFS, "/base_path", s("/mnt/../etc"))], vec![("spec.backup_config.repositories[1].base_path", "\"..\"")]),
        (vec![at(NFS, "/base_path", s(&format!("/{}", "a".repeat(256))))], vec![("spec.backup_config.repositories[1].base_path", "at most 256")]),
        (vec![at(NFS, "/base_path", s("/mnt\nrepo2-path=/x"))], vec![("spec.backup_config.repositories[1].base_path", "control characters")]),
        // s3 fields: only on s3, required ones there.
        (vec![at(NFS, "/s3_bucket", s("b-1"))], vec![("spec.backup_config.repositories[1].s3_bucket", "applies only to an s3 repository")]),
        (vec![at(NFS, "/s3_key", s(KEY)), at(NFS, "/s3_key_secret", s(SECRET))],
         vec![("spec.backup_config.repositories[1].s3_key", "applies only to an s3"), ("spec.backup_config.repositories[1].s3_key_secret", "applies only to an s3")]),
        (vec![at(S3, "/s3_bucket", None)], vec![("spec.backup_config.repositories[0].s3_bucket", "is required for an s3 repository")]),
        (vec![at(S3, "/s3_region", None)], vec![("spec.backup_config.repositories[0].s3_region", "is required for an s3 repository")]),
        (vec![at(S3, "/s3_bucket", s("My_Bucket"))], vec![("spec.backup_config.repositories[0].s3_bucket", "bucket naming rule")]),
        (vec![at(S3, "/s3_bucket", s("ab"))], vec![("spec.backup_config.repositories[0].s3_bucket", "3-63")]),
        (vec![at(S3, "/s3_region", long(33))], vec![("spec.backup_config.repositories[0].s3_region", "1-32")]),
        (vec![at(S3, "/s3_endpoint", s("https://s3.example.com"))], vec![("spec.backup_config.repositories[0].s3_endpoint", "without a scheme")]),
        (vec![at(S3, "/s3_endpoint", s("s3.example.com/path"))], vec![("spec.backup_config.repositories[0].s3_endpoint", "host name")]),
        (vec![at(S3, "/s3_key_secret", None)], vec![("spec.backup_config.repositories[0].s3_key_secret", "is required with s3_key")]),
        (vec![at(S3, "/s3_key", None)], vec![("spec.backup_config.repositories[0].s3_key", "is required with s3_key_secret")]),
        (vec![at(S3, "/s3_key_secret", s(&format!("{SECRET}{}", "x".repeat(128))))], vec![("spec.backup_config.repositories[0].s3_key_secret", "1-128 characters")]),
        (vec![at(S3, "/s3_key", Some(json!(12)))], vec![("spec.backup_config.repositories[0].s3_key", "expected a string")]),
        // Retention.
        (vec![at(S3, "/retention_full", Some(json!(0)))], vec![("spec.backup_config.repositories[0].retention_full", "from 1 to 9999999")]),
        (vec![at(S3, "/retention_full", Some(json!(10_000_000)))], vec![("spec.backup_config.repositories[0].retention_full", "from 1 to 9999999")]),
        (vec![at(S3, "/retention_full", s("7"))], vec![("spec.backup_config.repositories[0].retention_full", "expected an integer")]),
        (vec![at(S3, "/retention_full", Some(json!(1.5)))], vec![("spec.backup_config.repositories[0].retention_full", "expected an integer")]),
        (vec![at(S3, "/retention_full_type", s("days"))], vec![("spec.backup_config.repositories[0].retention_full_type", "expected one of: count, time")]),
        // custom_options.
        (vec![at(S3, "/custom_options", s("x"))], vec![("spec.backup_config.repositories[0].custom_options", "expected an object")]),
        (vec![at(S3, "/custom_options/repo1-path", s("/x"))], vec![("spec.backup_config.repositories[0].custom_options.repo1-path", "without its repoN- or pgN- prefix")]),
        (vec![at(S3, "/custom_options/path", s("/x"))], vec![("spec.backup_config.repositories[0].custom_options.path", "set by berth")]),
        (vec![at(S3, "/custom_options/retention-full", s("3"))], vec![("spec.backup_config.repositories[0].custom_options.retention-full", "set by berth")]),
        (vec![at(S3, "/custom_options/cipher-pass", s(SECRET))], vec![("spec.backup_config.repositories[0].custom_options.cipher-pass", "holds a credential")]),
        (vec![at(S3, "/custom_options/s3-token", s(SECRET))], vec![("spec.backup_config.repositories[0].custom_options.s3-token", "holds a credential")]),
        (vec![at(S3, "/custom_options/s3-sse-customer-key", s(SECRET))], vec![("spec.backup_config.repositories[0].custom_options.s3-sse-customer-key", "holds a credential")]),
        (vec![at(S3, "/custom_options/Upload_Size", s("1"))], vec![("spec.backup_config.repositories[0].custom_options.Upload_Size", "invalid option name")]),
        (vec![at(S3, "/custom_options/storage-verify-tls", Some(json!(false)))], vec![("spec.backup_config.repositories[0].custom_options.storage-verify-tls", "expected a string")]),
        (vec![at(S3, "/custom_options/storage-upload-chunk-size", s("5MiB\nrepo1-path=/etc"))], vec![("spec.backup_config.repositories[0].custom_options.storage-upload-chunk-size", "control characters")]),
        // Schedules.
        (vec![at(DB, "/schedules", s("daily"))], vec![("spec.backup_config.schedules", "expected an array")]),
        (vec![at(SCHED, "/id", None)], vec![("spec.backup_config.schedules[0].id", "is required")]),
        (vec![at(SCHED, "/id", s("nightly full"))], vec![("spec.backup_config.schedules[0].id", "1-64 ASCII letters")]),
        (vec![at(SCHED, "/id", long(65))], vec![("spec.backup_config.schedules[0].id", "1-64")]),
        (vec![("/spec/backup_config/schedules/1/id".into(), s("nightly-full"))], vec![("spec.backup_config.schedules[1].id", "duplicate schedule id \"nightly-full\"")]),
        (vec![at(SCHED, "/type", s("diff"))], vec![("spec.backup_config.schedules[0].type", "expected one of: full, incr")]),
        (vec![at(SCHED, "/type", None)], vec![("spec.backup_config.schedules[0].type", "is required")]),
        (vec![at(SCHED, "/cron_expression", None)], vec![("spec.backup_config.schedules[0].cron_expression", "is required")]),
        (vec![at(SCHED, "/cron_expression", s(""))], vec![("spec.backup_config.schedules[0].cron_expression", "must not be empty")]),
        (vec![at(SCHED, "/cron_expression", s("0 0 * *"))], vec![("spec.backup_config.schedules[0].cron_expression", "five fields")]),
        (vec![at(SCHED, "/cron_expression", s("0 0 0 * * *"))], vec![("spec.backup_config.schedules[0].cron_expression", "five fields")]),
        (vec![at(SCHED, "/cron_expression", s("61 * * * *"))], vec![("spec.backup_config.schedules[0].cron_expression", "out of bounds")]),
        (vec![at(SCHED, "/cron_expression", s("0 25 * * *"))], vec![("spec.backup_config.schedules[0].cron_expression", "five fields")]),
        (vec![at(SCHED, "/cron_expression", s("every day"))], vec![("spec.backup_config.schedules[0].cron_expression", "five fields")]),
        (vec![at(SCHED, "/cron_expression", s("@every 1h"))], vec![("spec.backup_config.schedules[0].cron_expression", "five fields")]),
        (vec![at(SCHED, "/cron_expression", s("0 0 30 2 *"))], vec![("spec.backup_config.schedules[0].cron_expression", "never comes due")]),
        (vec![at(SCHED, "/cron_expression", s("CRON_TZ=Europe/Paris 0 0 * * *"))], vec![("spec.backup_config.schedules[0].cron_expression", "evaluated in UTC")]),
        (vec![at(SCHED, "/cron_expression", s("0,5,10,15,20,25,30,35,40,45 * * * *"))], vec![("spec.backup_config.schedules[0].cron_expression", "at most 32")]),
        (vec![at(DB, "/schedules", Some(json!((0..33).map(|i| json!({"id": format!("s{i}"), "type": "full", "cron_expression": "@daily"})).collect::<Vec<_>>())))],
         vec![("spec.backup_config.schedules", "more than 32 schedules")]),
        // restore_config.
        (vec![at(RESTORE, "", Some(json!([])))], vec![("spec.restore_config", "expected an object")]),
        (vec![at(RESTORE, "/source_database_id", None)], vec![("spec.restore_config.source_database_id", "is required")]),
        (vec![at(RESTORE, "/source_database_id", s("Old Shop"))], vec![("spec.restore_config.source_database_id", "lowercase letters")]),
        (vec![at(RESTORE, "/source_node_name", s("node1"))], vec![("spec.restore_config.source_node_name", "\"n\" followed by digits")]),
        (vec![at(RESTORE, "/source_database_name", s("Shop-DB"))], vec![("spec.restore_config.source_database_name", "lowercase")]),
        (vec![at(RESTORE, "/repository", None)], vec![("spec.restore_config.repository", "is required")]),
        (vec![at(RESTORE, "/repository", Some(json!(3)))], vec![("spec.restore_config.repository", "expected the id of a repository of the backup_config or a repository object")]),
        (vec![at(RESTORE, "/repository", s("gone"))], vec![("spec.restore_config.repository", "names no repository of spec.backup_config: \"gone\"")]),
        (vec![at(RESTORE, "/repository", s("local")), at(DB, "", None)], vec![("spec.restore_config.repository", "names no repository of spec.backup_config")]),
        (vec![at(RESTORE, "/repository/base_path", s("relative"))], vec![("spec.restore_config.repository.base_path", "absolute path")]),
        (vec![at(RESTORE, "/repository/s3_region", None)], vec![("spec.restore_config.repository.s3_region", "is required for an s3 repository")]),
        // restore_options.
        (vec![at(OPTS, "", s("latest"))], vec![("spec.restore_config.restore_options", "expected an object")]),
        (vec![at(OPTS, "/type", s("point"))], vec![("spec.restore_config.restore_options.type", "expected one of: default, immediate")]),
        (vec![at(OPTS, "/target", None)], vec![("spec.restore_config.restore_options.target", "is required with type \"time\"")]),
        (vec![at(OPTS, "/target", s("yesterday"))], vec![("spec.restore_config.restore_options.target", "RFC 3339")]),
        (vec![at(OPTS, "/target", s("2025-05-05 09:38:52-04"))], vec![("spec.restore_config.restore_options.target", "RFC 3339")]),
        (vec![at(OPTS, "/target", s("2025-01-01T01:30:00"))], vec![("spec.restore_config.restore_options.target", "with its offset")]),
        (vec![at(OPTS, "/type", None)], vec![("spec.restore_config.restore_options.target", "needs a \"type\"")]),
        (vec![at(OPTS, "/type", s("immediate"))], vec![("spec.restore_config.restore_options.target", "is not read by type \"immediate\"")]),
        (vec![at(OPTS, "/type", s("lsn")), at(OPTS, "/target", s("0/3000000G"))], vec![("spec.restore_config.restore_options.target", "WAL location")]),
        (vec![at(OPTS, "/type", s("xid")), at(OPTS, "/target", s("12a"))], vec![("spec.restore_config.restore_options.target", "transaction id")]),
        (vec![at(OPTS, "/type", s("name")), at(OPTS, "/target", long(64))], vec![("spec.restore_config.restore_options.target", "restore point name")]),
        (vec![at(OPTS, "/set", s(""))], vec![("spec.restore_config.restore_options.set", "must name a backup set")]),
        (vec![at(OPTS, "/repo", s("2"))], vec![("spec.restore_config.restore_options.repo", "set by berth")]),
        (vec![at(OPTS, "/archive-mode", s("off"))], vec![("spec.restore_config.restore_options.archive-mode", "set by berth")]),
        (vec![at(OPTS, "/recovery-option", s("recovery_target_action=pause"))], vec![("spec.restore_config.restore_options.recovery-option", "set by berth")]),
        (vec![at(OPTS, "/target", s("2999-01-01T00:00:00Z"))], vec![("spec.restore_config.restore_options.target", "in the future")]),
        (vec![at(OPTS, "/pg1-path", s("/x"))], vec![("spec.restore_config.restore_options.pg1-path", "prefix")]),
        (vec![at(OPTS, "/cipher-pass", s(SECRET))], vec![("spec.restore_config.restore_options.cipher-pass", "holds a credential")]),
        (vec![at(OPTS, "/delta", Some(json!(true)))], vec![("spec.restore_config.restore_options.delta", "expected a string")]),
        (vec![at(OPTS, "", Some(json!((0..33).map(|i| (format!("o{i}"), json!("v"))).collect::<serde_json::Map<_, _>>())))],
         vec![("spec.restore_config.restore_options", "more than 32 options")]),
        // Between levels: a node's restore repository id is one of its effective
        // backup_config; a node starts from source_node or restore_config.
        (vec![("/spec/nodes/0/restore_config".into(), Some(json!({"source_database_id": "old-shop", "source_node_name": "n1", "source_database_name": "shop", "repository": "local"})))],
         vec![("spec.nodes[0].restore_config.repository", "names no repository of spec.backup_config: \"local\"")]),
        (vec![("/spec/nodes/1/restore_config/repository".into(), s("nfs"))],
         vec![("spec.nodes[1].restore_config.repository", "names no repository of spec.nodes[1].backup_config: \"nfs\"")]),
        (vec![("/spec/nodes/1/source_node".into(), s("n1"))], vec![("spec.nodes[1].source_node", "specify either source_node or restore_config")]),
        (vec![("/spec/nodes/1/backup_config/schedules/0/cron_expression".into(), s("* * * * * * *"))],
         vec![("spec.nodes[1].backup_config.schedules[0].cron_expression", "five fields")]),
        // Several problems at once: every one is reported.
        (vec![at(S3, "/type", s("azure")), at(SCHED, "/cron_expression", s("x")), at(RESTORE, "/source_node_name", s("m"))],
         vec![("spec.backup_config.repositories[0].type", "expected one of"), ("spec.backup_config.schedules[0].cron_expression", "five fields"), ("spec.restore_config.source_node_name", "\"n\" followed by digits")]),
    ]
}

#[test]
fn base_parses_and_round_trips() {
    let spec = create(&base()).unwrap();
    let backup = spec.backup_config.as_ref().unwrap();
    assert_eq!(backup.repositories.len(), 2);
    assert_eq!(backup.repositories[0].s3_key.as_deref(), Some(KEY));
    assert_eq!(
        backup.repositories[0].retention(),
        (2, RetentionFullType::Count)
    );
    assert_eq!(
        backup.repositories[1].retention(),
        (7, RetentionFullType::Time)
    );
    assert_eq!(backup.schedules[1].cron_expression, "0 6 * * ?");
    assert!(matches!(
        spec.nodes[1].restore_config.as_ref().unwrap().repository,
        RestoreRepository::Id(ref id) if id == "local"
    ));
    // What is stored reads back the same, in the shape it was written.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["backup_config"], base()["spec"]["backup_config"]);
    assert_eq!(json["restore_config"], base()["spec"]["restore_config"]);
    assert_eq!(json["nodes"], base()["spec"]["nodes"]);
    let back: DatabaseSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn accepted_variants() {
    let ok: Vec<Vec<(String, Option<Value>)>> = vec![
        vec![
            at(DB, "", None),
            at(RESTORE, "", None),
            ("/spec/nodes/1".into(), None),
        ],
        vec![
            at(DB, "", Some(Value::Null)),
            at(RESTORE, "", Some(Value::Null)),
            ("/spec/nodes/1".into(), None),
        ],
        vec![at(DB, "/schedules", None)],
        vec![at(DB, "/schedules", Some(json!([])))],
        vec![at(S3, "/s3_key", None), at(S3, "/s3_key_secret", None)],
        vec![
            at(S3, "/s3_key", Some(Value::Null)),
            at(S3, "/s3_key_secret", Some(Value::Null)),
        ],
        vec![
            at(S3, "/s3_endpoint", None),
            at(S3, "/base_path", None),
            at(S3, "/custom_options", None),
        ],
        vec![
            at(S3, "/retention_full", None),
            at(S3, "/retention_full_type", s("time")),
        ],
        vec![at(SCHED, "/cron_expression", s("*/15 * * * MON-FRI"))],
        vec![at(SCHED, "/cron_expression", s("0 0 29 2 *"))],
        vec![at(SCHED, "/cron_expression", s("30 2 L * *"))],
        vec![at(SCHED, "/cron_expression", s("0 3 * * 1#2"))],
        vec![at(SCHED, "/cron_expression", s("@daily"))],
        vec![at(OPTS, "/target", s("2025-01-01T03:30:00+02:00"))],
        vec![at(OPTS, "", None)],
        vec![at(OPTS, "", Some(json!({"type": "immediate"})))],
        vec![at(
            OPTS,
            "",
            Some(json!({"type": "lsn", "target": "0/30000000"})),
        )],
        vec![at(
            OPTS,
            "",
            Some(json!({"type": "xid", "target": "123456", "target-action": "promote"})),
        )],
        vec![at(
            OPTS,
            "",
            Some(json!({"type": "name", "target": "before-migration"})),
        )],
        vec![at(OPTS, "", Some(json!({"set": "20250505-153628F"})))],
        vec![at(RESTORE, "/repository", s("nfs"))],
        vec![at(
            RESTORE,
            "/repository",
            Some(json!({"id": "nfs", "type": "posix", "base_path": "/mnt/backups"})),
        )],
        // A node with its own config needs none at the database level, and the other node
        // then has none.
        vec![at(DB, "", None), at(RESTORE, "", None)],
        // A node's restore repository id may be one of the database's config.
        vec![
            ("/spec/nodes/1/backup_config".into(), None),
            ("/spec/nodes/1/restore_config/repository".into(), s("nfs")),
        ],
    ];
    for edits in ok {
        let refs: Vec<(&str, Option<Value>)> =
            edits.iter().map(|(p, v)| (p.as_str(), v.clone())).collect();
        let got = errors(&edited(&refs));
        assert!(got.is_empty(), "edits {edits:?}: {got:?}");
    }
}

#[test]
fn each_refusal_names_its_path() {
    for (edits, want) in cases() {
        let refs: Vec<(&str, Option<Value>)> =
            edits.iter().map(|(p, v)| (p.as_str(), v.clone())).collect();
        let got = errors(&edited(&refs));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        let want_paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
        assert_eq!(paths, want_paths, "edits {edits:?}: got {got:?}");
        for ((_, message), (_, fragment)) in got.iter().zip(&want) {
            assert!(
                message.contains(fragment),
                "edits {edits:?}: {message:?} lacks {fragment:?}"
            );
            assert!(
                !message.contains("MARKER"),
                "edits {edits:?}: a message quotes a secret: {message:?}"
            );
        }
    }
}

/// The stored spec of the base body, and the base body without the keys anywhere.
fn stored_and_keyless() -> (DatabaseSpec, Value) {
    let stored = create(&base()).unwrap();
    let mut body = base();
    for p in [S3, "/spec/restore_config/repository"] {
        for k in ["/s3_key", "/s3_key_secret"] {
            set(&mut body, &format!("{p}{k}"), None);
        }
    }
    (stored, body)
}

fn keys(spec: &DatabaseSpec) -> [(Option<String>, Option<String>); 2] {
    let b = &spec.backup_config.as_ref().unwrap().repositories[0];
    let RestoreRepository::Inline(r) = &spec.restore_config.as_ref().unwrap().repository else {
        panic!("inline")
    };
    [
        (b.s3_key.clone(), b.s3_key_secret.clone()),
        (r.s3_key.clone(), r.s3_key_secret.clone()),
    ]
}

#[test]
fn an_update_without_the_keys_keeps_them_and_null_removes_them() {
    let (stored, keyless) = stored_and_keyless();
    let both = (Some(KEY.to_string()), Some(SECRET.to_string()));
    let kept = update(&stored, &keyless).unwrap();
    assert_eq!(keys(&kept), [both.clone(), both.clone()]);
    assert_eq!(kept, stored, "the same spec as stored");

    // null removes, both at once.
    let mut body = keyless.clone();
    for k in ["/s3_key", "/s3_key_secret"] {
        set(&mut body, &format!("{S3}{k}"), Some(Value::Null));
    }
    let removed = update(&stored, &body).unwrap();
    assert_eq!(keys(&removed), [(None, None), both.clone()]);

    // A new key with the stored secret; one key removed alone leaves half a pair.
    let mut body = keyless.clone();
    set(&mut body, &format!("{S3}/s3_key"), s("AKIA-NEW"));
    let rotated = update(&stored, &body).unwrap();
    assert_eq!(
        keys(&rotated)[0],
        (Some("AKIA-NEW".into()), Some(SECRET.into()))
    );
    let mut body = keyless.clone();
    set(&mut body, &format!("{S3}/s3_key"), Some(Value::Null));
    let err = update(&stored, &body).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err:?}");
    assert_eq!(
        err.errors[0].path,
        "spec.backup_config.repositories[0].s3_key"
    );
}

#[test]
fn keys_stay_with_their_place() {
    let (stored, keyless) = stored_and_keyless();
    // Another bucket, endpoint, region, id or level: nothing carried over.
    for (pointer, value) in [
        (format!("{S3}/s3_bucket"), s("other-bucket")),
        (format!("{S3}/s3_endpoint"), None),
        (format!("{S3}/s3_region"), s("eu-west-1")),
        (format!("{S3}/id"), s("s3-new")),
    ] {
        let mut body = keyless.clone();
        set(&mut body, &pointer, value);
        let got = update(&stored, &body).unwrap();
        assert_eq!(keys(&got)[0], (None, None), "{pointer}");
    }
    // The database's repository moved onto node n1: the node had none stored.
    let mut body = keyless.clone();
    let repository = body.pointer(S3).unwrap().clone();
    set(
        &mut body,
        "/spec/nodes/0/backup_config",
        Some(json!({"repositories": [repository]})),
    );
    let got = update(&stored, &body).unwrap();
    let on_node = &got.nodes[0].backup_config.as_ref().unwrap().repositories[0];
    assert_eq!(
        (on_node.s3_key.as_ref(), on_node.s3_key_secret.as_ref()),
        (None, None)
    );
    // Still on the database as well: kept there.
    assert_eq!(keys(&got)[0].0.as_deref(), Some(KEY));
    // The restore repository's keys come from the stored restore repository only.
    let mut body = keyless.clone();
    set(
        &mut body,
        "/spec/restore_config/repository/s3_bucket",
        s("shop-backups"),
    );
    assert_eq!(keys(&update(&stored, &body).unwrap())[1], (None, None));
}

#[test]
fn a_node_keeps_its_own_keys_by_name() {
    let mut body = base();
    let node_repo = json!({"id": "s3", "type": "s3", "s3_bucket": "n2-backups",
                           "s3_region": "us-east-1", "s3_key": KEY, "s3_key_secret": SECRET});
    set(
        &mut body,
        "/spec/nodes/1/backup_config/repositories/1",
        Some(node_repo),
    );
    let stored = create(&body).unwrap();
    for k in ["s3_key", "s3_key_secret"] {
        set(
            &mut body,
            &format!("/spec/nodes/1/backup_config/repositories/1/{k}"),
            None,
        );
    }
    let got = update(&stored, &body).unwrap();
    let repo = &got.nodes[1].backup_config.as_ref().unwrap().repositories[1];
    assert_eq!(repo.s3_key_secret.as_deref(), Some(SECRET));
    // The same node under another name is a new node: nothing carried.
    set(&mut body, "/spec/nodes/1/name", s("n3"));
    let renamed = update(&stored, &body).unwrap();
    let repo = &renamed.nodes[1]
        .backup_config
        .as_ref()
        .unwrap()
        .repositories[1];
    assert_eq!(repo.s3_key, None);
}
