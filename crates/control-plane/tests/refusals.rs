//! Requests the API refuses before storing anything, against a real etcd: a fixed host port
//! another database holds on the same host (409), a Postgres version the manifest lacks
//! (400), a bad `backup_config` or `restore_config` (400), and a body over the size limit
//! (413), each in the API's JSON error shape naming what is wrong.

mod common;

use common::ControlPlane;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::EtcdServer;

/// A database on `host` with the fixed Postgres `port` and, if given, a postgrest service on
/// `service_host` published on `service_port`.
fn spec(host: &str, port: u16, service: Option<(&str, u16)>) -> Value {
    let services: Vec<Value> = service
        .into_iter()
        .map(|(h, p)| {
            json!({"service_id": "api", "service_type": "postgrest", "version": "latest",
                   "host_ids": [h], "port": p})
        })
        .collect();
    json!({"database_name": "app", "port": port,
           "nodes": [{"name": "n1", "host_ids": [host]}], "services": services})
}

fn create(id: &str, spec: Value) -> String {
    json!({"id": id, "spec": spec}).to_string()
}

fn errors(body: &Value) -> Vec<(String, String)> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body}"))
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("path"), s("message"))
        })
        .collect()
}

#[tokio::test]
async fn a_fixed_port_another_database_holds_on_the_host_is_refused_with_409() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    cp.register("host-2").await;

    let a = create("a", spec("host-1", 6543, Some(("host-1", 8081))));
    let (status, body) = cp.call("POST", "/v1/databases", Some(&a)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Its own ports are not a conflict when it is updated.
    let same = json!({"spec": spec("host-1", 6543, Some(("host-1", 8081)))}).to_string();
    let (status, body) = cp.call("POST", "/v1/databases/a", Some(&same)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The same Postgres port on the same host, with and without dry_run: 409, nothing stored.
    let b = create("b", spec("host-1", 6543, None));
    for path in ["/v1/databases?dry_run=true", "/v1/databases"] {
        let (status, body) = cp.call("POST", path, Some(&b)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        assert_eq!(body["name"], "port_taken");
        let errs = errors(&body);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "spec.port");
        assert!(
            errs[0].1.contains("6543")
                && errs[0].1.contains("host-1")
                && errs[0].1.contains("\"a\""),
            "{errs:?}"
        );
    }
    let (status, _) = cp.call("GET", "/v1/databases/b", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A service port equal to another database's Postgres port on that host is taken too.
    let c = create("c", spec("host-2", 7000, Some(("host-1", 6543))));
    let (status, body) = cp.call("POST", "/v1/databases", Some(&c)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let errs = errors(&body);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "spec.services[0].port");
    assert!(errs[0].1.contains("\"a\" (spec.port)"), "{errs:?}");

    // The same port on another host is free; an update that moves a service onto a port the
    // other database holds is refused and leaves the stored spec as it was.
    let b = create("b", spec("host-2", 6543, Some(("host-2", 8081))));
    let (status, body) = cp.call("POST", "/v1/databases", Some(&b)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let moved = json!({"spec": spec("host-2", 6543, Some(("host-1", 8081)))}).to_string();
    for path in ["/v1/databases/b?dry_run=true", "/v1/databases/b"] {
        let (status, body) = cp.call("POST", path, Some(&moved)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        let errs = errors(&body);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "spec.services[0].port");
        assert!(
            errs[0].1.contains("\"a\" (spec.services[0].port)"),
            "{errs:?}"
        );
    }
    let stored = cp.store().await.get_database("b").await.unwrap().unwrap();
    assert_eq!(stored.record.generation, 1);
    assert_eq!(stored.spec.services[0].host_ids, ["host-2"]);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_in_the_api_error_shape() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let (status, body) = cp
        .call(
            "POST",
            "/v1/databases",
            Some(&create("a", spec("host-1", 0, None))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // 3 MB, over the 2 MiB limit; `call` fails the test if the answer is not JSON.
    let mut huge = spec("host-1", 0, None);
    huge["database_name"] = json!("x".repeat(3 * 1024 * 1024));
    let huge = json!({"id": "b", "spec": huge}).to_string();
    for path in ["/v1/databases", "/v1/databases/a"] {
        let (status, body) = cp.call("POST", path, Some(&huge)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {body}");
        assert_eq!(body["name"], "payload_too_large", "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&control_plane::api::MAX_BODY_BYTES.to_string()),
            "{path}: {message}"
        );
    }
    let stored = cp.store().await.get_database("a").await.unwrap().unwrap();
    assert_eq!(stored.record.generation, 1);
    let (status, _) = cp.call("GET", "/v1/databases/b", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `"16"` lies between the manifest's 15 and 17 but is not one of them: a create and an
/// update naming it are 400s at `spec.postgres_version` listing what there is, with and
/// without dry_run, and neither stores a database, a spec or a task.
#[tokio::test]
async fn a_postgres_version_the_manifest_lacks_is_a_400_and_stores_nothing() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let with_version = |version: &str| {
        let mut s = spec("host-1", 0, None);
        s["postgres_version"] = json!(version);
        s
    };
    let (status, body) = cp
        .call(
            "POST",
            "/v1/databases",
            Some(&create("a", with_version("15"))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tasks_of_a = || async {
        let (status, body) = cp.call("GET", "/v1/databases/a/tasks", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["tasks"].as_array().map(Vec::len).unwrap_or_default()
    };
    assert_eq!(tasks_of_a().await, 1);

    let refused = |body: &Value| {
        let errs = errors(body);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "spec.postgres_version");
        assert!(
            errs[0].1.contains("\"16\"") && errs[0].1.contains("available: latest, 15, 17"),
            "{errs:?}"
        );
    };
    let b = create("b", with_version("16"));
    for path in ["/v1/databases?dry_run=true", "/v1/databases"] {
        let (status, body) = cp.call("POST", path, Some(&b)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        refused(&body);
    }
    let (status, _) = cp.call("GET", "/v1/databases/b", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let update = json!({"spec": with_version("16")}).to_string();
    for path in ["/v1/databases/a?dry_run=true", "/v1/databases/a"] {
        let (status, body) = cp.call("POST", path, Some(&update)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        refused(&body);
    }
    let stored = cp.store().await.get_database("a").await.unwrap().unwrap();
    assert_eq!(stored.record.generation, 1);
    assert_eq!(stored.spec.postgres_version.as_deref(), Some("15"));
    assert_eq!(tasks_of_a().await, 1, "a refused update made a task");
    let (status, list) = cp.call("GET", "/v1/databases", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["databases"]
        .as_array()
        .unwrap_or_else(|| panic!("no databases in {list}"))
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["a"]);
}

/// A bad `backup_config` or `restore_config`, on a create and on an update, with and without
/// dry_run: a 400 naming each bad field by its JSON path, no message quoting a key, and
/// nothing stored changes (no database, no generation, no task, the stored keys as they were).
#[tokio::test]
async fn a_bad_backup_config_is_a_400_naming_the_field_and_stores_nothing() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let with_backups = |schedule_cron: &str, base_path: &str| {
        let mut s = spec("host-1", 0, None);
        s["backup_config"] = json!({
            "repositories": [
                {"id": "s3", "type": "s3", "s3_bucket": "app-backups", "s3_region": "us-east-1",
                 "s3_key": "AKIA-REFUSALS-KEY", "s3_key_secret": "REFUSALS-SECRET"},
                {"id": "nfs", "type": "posix", "base_path": base_path}
            ],
            "schedules": [{"id": "nightly", "type": "full", "cron_expression": schedule_cron}]
        });
        s
    };
    let good = with_backups("0 0 * * *", "/mnt/backups");
    let (status, body) = cp
        .call("POST", "/v1/databases", Some(&create("a", good.clone())))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = cp.store().await.get_database("a").await.unwrap().unwrap();

    let mut bad = with_backups("0 0 30 2 *", "backups");
    bad["nodes"][0]["backup_config"] =
        json!({"schedules": [{"id": "n1-hourly", "type": "incr", "cron_expression": "@hourly"}]});
    bad["restore_config"] = json!({"source_database_id": "old", "source_node_name": "n1",
        "source_database_name": "app", "repository": "s3",
        "restore_options": {"type": "time", "target": "yesterday"}});
    let want = [
        (
            "spec.backup_config.repositories[1].base_path",
            "absolute path",
        ),
        (
            "spec.backup_config.schedules[0].cron_expression",
            "never comes due",
        ),
        ("spec.restore_config.restore_options.target", "RFC 3339"),
        ("spec.nodes[0].backup_config.repositories", "nowhere to put"),
    ];
    let refused = |body: &Value| {
        let errs = errors(body);
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, want.map(|(p, _)| p), "{errs:?}");
        for ((_, message), (_, fragment)) in errs.iter().zip(want) {
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
        assert!(!body.to_string().contains("REFUSALS"), "a key in {body}");
    };
    let b = create("b", bad.clone());
    for path in ["/v1/databases?dry_run=true", "/v1/databases"] {
        let (status, body) = cp.call("POST", path, Some(&b)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["name"], "invalid_input", "{body}");
        refused(&body);
    }
    let (status, _) = cp.call("GET", "/v1/databases/b", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The update leaves the keys out, as a client that read the database back would.
    for k in ["s3_key", "s3_key_secret"] {
        bad["backup_config"]["repositories"][0]
            .as_object_mut()
            .unwrap()
            .remove(k);
    }
    let update = json!({"spec": bad}).to_string();
    for path in ["/v1/databases/a?dry_run=true", "/v1/databases/a"] {
        let (status, body) = cp.call("POST", path, Some(&update)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        refused(&body);
    }
    let after = cp.store().await.get_database("a").await.unwrap().unwrap();
    assert_eq!(after.record.generation, 1);
    assert_eq!(after.spec_revision, before.spec_revision);
    assert_eq!(
        after.spec, before.spec,
        "the stored spec, keys included, is unchanged"
    );
    let (_, tasks) = cp.call("GET", "/v1/databases/a/tasks", None).await;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(1), "{tasks}");

    // What a posix repository would silently not do: schedules that never fire, and a
    // database that starts empty instead of from its backup.
    let mut posix_only = spec("host-1", 0, None);
    posix_only["backup_config"] = json!({
        "repositories": [{"id": "nfs", "type": "posix", "base_path": "/mnt/backups"}],
        "schedules": [{"id": "nightly", "type": "full", "cron_expression": "0 0 * * *"}]
    });
    posix_only["restore_config"] = json!({"source_database_id": "old",
        "source_node_name": "n1", "source_database_name": "app", "repository": "nfs"});
    let (status, body) = cp
        .call("POST", "/v1/databases", Some(&create("c", posix_only)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let paths: Vec<String> = errors(&body).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            "spec.backup_config.schedules",
            "spec.restore_config.repository"
        ],
        "{body}"
    );
    let (status, _) = cp.call("GET", "/v1/databases/c", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
