//! The routes the router serves against the OpenAPI document, the document against an
//! OpenAPI validator, and the routes added for the reference API: `GET /`, `GET /v1/version`,
//! `GET /v1/tasks`, host tasks, the `GET` form of cancel and `GET /v1/service-types`.

mod common;

use std::collections::BTreeSet;

use common::ControlPlane;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::EtcdServer;

/// `(METHOD, path)` of every operation in the served document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_is_built_from() {
    let doc: Value = serde_json::from_str(&control_plane::api::openapi_json()).unwrap();
    let mut served: BTreeSet<(String, String)> = control_plane::api::routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    served.extend(
        control_plane::api::MERGED_ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string())),
    );
    let documented = documented(&doc);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{database_id}", "nope")
        .replace("{host_id}", "nope")
        .replace("{task_id}", "0197842d-9082-7496-b787-77bd2e11809f")
}

/// Every documented operation reaches a handler: the router's own fallbacks answer 404 "no
/// such resource" for an unknown path and 405 for an unknown method, and neither may answer.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let client = reqwest::Client::new();
    let doc: Value = client
        .get(format!("{}/v1/openapi.json", cp.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (method, path) in documented(&doc) {
        let url = format!("{}{}", cp.base, concrete(&path));
        let resp = client
            .request(method.parse().unwrap(), &url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert!(
            !body.contains("no such resource"),
            "{method} {path}: the router has no such route: {body}"
        );
    }
}

/// Where `openapi-spec-validator` is: `BERTH_OPENAPI_SPEC_VALIDATOR`, else the venv
/// `deploy/install-deps` makes, else `PATH`.
fn validator() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("BERTH_OPENAPI_SPEC_VALIDATOR") {
        return Some(path.into());
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| home.map(|h| h.join(".cache")));
    if let Some(venv) = cache.map(|c| c.join("berth/openapi-venv/bin/openapi-spec-validator"))
        && venv.exists()
    {
        return Some(venv);
    }
    std::process::Command::new("openapi-spec-validator")
        .arg("--help")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "openapi-spec-validator".into())
}

/// The served document passes `openapi-spec-validator` (OpenAPI 3.1 and the JSON Schemas in
/// it). `deploy/install-deps` installs the tool; without it this fails, unless
/// `BERTH_ALLOW_MISSING_OPENAPI_VALIDATOR=1` says a machine without it may skip.
#[tokio::test]
async fn the_served_document_is_valid_openapi() {
    let Some(tool) = validator() else {
        if std::env::var("BERTH_ALLOW_MISSING_OPENAPI_VALIDATOR").as_deref() == Ok("1") {
            eprintln!(
                "openapi-spec-validator is missing; skipped as BERTH_ALLOW_MISSING_OPENAPI_VALIDATOR=1 allows"
            );
            return;
        }
        panic!("openapi-spec-validator is missing: run deploy/install-deps");
    };
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let text = reqwest::get(format!("{}/v1/openapi.json", cp.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(&tool)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the document is not valid OpenAPI:\n{report}"
    );
    assert!(report.contains("OK"), "{report}");
}

#[tokio::test]
async fn root_links_the_document_and_version_names_the_build() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let resp = reqwest::get(format!("{}/", cp.base)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["link"],
        "</v1/openapi.json>; rel=\"service-desc\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["service_desc"], "/v1/openapi.json");

    let (status, version) = cp.call("GET", "/v1/version", None).await;
    assert_eq!(status, StatusCode::OK);
    let built = control_plane::api::version_info();
    assert_eq!(version["revision"], built.revision.as_str());
    assert_eq!(version["arch"], built.arch.as_str());
    assert!(
        ["amd64", "arm64"].contains(&built.arch.as_str()),
        "{version}"
    );
    // Built from this git checkout: a commit id and its time.
    let revision = built.revision.as_str();
    assert!(
        revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
        "{version}"
    );
    assert!(version["revision_time"].as_str().is_some(), "{version}");
}

async fn create(cp: &ControlPlane, id: &str, host: &str) -> Value {
    let body = json!({"id": id, "spec": {"database_name": "app",
        "nodes": [{"name": "n1", "host_ids": [host]}]}});
    let (status, created) = cp
        .call("POST", "/v1/databases", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created
}

fn task_ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_host_removal_is_a_host_task_refused_while_instances_are_placed_unless_forced() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    cp.register("host-2").await;
    let db_task = create(&cp, "db1", "host-1").await["task"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, refused) = cp.call("DELETE", "/v1/hosts/host-1", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("db1"),
        "{refused}"
    );
    assert!(
        refused["message"].as_str().unwrap().contains("force=true"),
        "{refused}"
    );
    let (status, bad) = cp
        .call("DELETE", "/v1/hosts/host-1?force=maybe", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["errors"][0]["path"], "force");

    let (status, removed) = cp.call("DELETE", "/v1/hosts/host-1?force=true", None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let task = &removed["task"];
    assert_eq!(task["scope"], "host");
    assert_eq!(task["entity_id"], "host-1");
    assert_eq!(task["type"], "remove_host");
    assert_eq!(task["status"], "completed");
    assert!(task.get("database_id").is_none(), "{task}");
    assert_eq!(removed["update_database_tasks"], json!([]));
    let serial = removed["revoked_certificate_serial"].as_str().unwrap();
    let task_id = task["task_id"].as_str().unwrap();

    // Its join identity is revoked: the host is gone, and its id may join afresh.
    let (status, _) = cp.call("GET", "/v1/hosts/host-1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let standing = cp
        .store()
        .await
        .certificate_standing("host-1", serial)
        .await
        .unwrap();
    assert_eq!(standing, store::CertificateStanding::Revoked);

    // The removed host's task and its log stay readable.
    let (status, list) = cp.call("GET", "/v1/hosts/host-1/tasks", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(task_ids(&list), vec![task_id.to_string()]);
    let (status, got) = cp
        .call("GET", &format!("/v1/hosts/host-1/tasks/{task_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&got, task);
    let (status, log) = cp
        .call(
            "GET",
            &format!("/v1/hosts/host-1/tasks/{task_id}/logs"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log["scope"], "host");
    assert_eq!(log["entity_id"], "host-1");
    assert_eq!(log["task_status"], "completed");
    let messages: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("forced") && m.contains("db1")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains(serial) && m.contains("revoked")),
        "{messages:?}"
    );
    let first = log["entries"][0]["id"].as_str().unwrap();
    let (_, rest) = cp
        .call(
            "GET",
            &format!("/v1/hosts/host-1/tasks/{task_id}/logs?after_entry_id={first}&limit=1"),
            None,
        )
        .await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["entries"][0], log["entries"][1]);

    for unknown in [
        "/v1/hosts/host-7/tasks".to_string(),
        format!("/v1/hosts/host-2/tasks/{task_id}"),
        "/v1/hosts/host-1/tasks/not-a-task/logs".to_string(),
    ] {
        let (status, body) = cp.call("GET", &unknown, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
    }
    // A host with nothing on it goes without force.
    let (status, removed) = cp.call("DELETE", "/v1/hosts/host-2", None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let host2_task = removed["task"]["task_id"].as_str().unwrap().to_string();

    // Across scopes, newest first by default; filtered by scope and entity.
    let (status, all) = cp.call("GET", "/v1/tasks", None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        task_ids(&all),
        vec![host2_task.clone(), task_id.to_string(), db_task.clone()]
    );
    let (_, oldest) = cp
        .call("GET", "/v1/tasks?sort_order=ascending&limit=2", None)
        .await;
    assert_eq!(
        task_ids(&oldest),
        vec![db_task.clone(), task_id.to_string()]
    );
    let (_, next) = cp
        .call(
            "GET",
            &format!("/v1/tasks?sort_order=ascend&after_task_id={task_id}"),
            None,
        )
        .await;
    assert_eq!(task_ids(&next), vec![host2_task.clone()]);
    let (_, hosts) = cp.call("GET", "/v1/tasks?scope=host", None).await;
    assert_eq!(
        task_ids(&hosts),
        vec![host2_task.clone(), task_id.to_string()]
    );
    let (_, one) = cp
        .call("GET", "/v1/tasks?scope=database&entity_id=db1", None)
        .await;
    assert_eq!(task_ids(&one), vec![db_task.clone()]);
    let (_, none) = cp
        .call("GET", "/v1/tasks?scope=host&entity_id=host-9", None)
        .await;
    assert_eq!(task_ids(&none), Vec::<String>::new());
    for (query, field) in [
        ("entity_id=db1", "entity_id"),
        ("scope=cluster", "scope"),
        ("sort_order=sideways", "sort_order"),
        ("limit=0", "limit"),
        ("after_task_id=x", "after_task_id"),
    ] {
        let (status, bad) = cp.call("GET", &format!("/v1/tasks?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {bad}");
        assert_eq!(bad["errors"][0]["path"], field, "{query}: {bad}");
    }
    // The database's own listing takes the long forms too.
    let (status, db_tasks) = cp
        .call("GET", "/v1/databases/db1/tasks?sort_order=descending", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{db_tasks}");
    assert_eq!(task_ids(&db_tasks), vec![db_task.clone()]);

    // The GET form of cancel does what POST does.
    let (status, canceled) = cp
        .call(
            "GET",
            &format!("/v1/databases/db1/tasks/{db_task}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    let (status, again) = cp
        .call(
            "GET",
            &format!("/v1/databases/db1/tasks/{db_task}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
}

/// `GET /v1/service-types` lists every type the validator accepts, and a spec built from
/// nothing but that answer is accepted, with each type's features off and on.
#[tokio::test]
async fn a_spec_built_only_from_the_service_catalog_is_accepted() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let (status, body) = cp.call("GET", "/v1/service-types", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let catalog: spec::ListServiceTypesResponse = serde_json::from_value(body.clone()).unwrap();

    // Every type the validator accepts is listed, and nothing else: a type the catalog does
    // not list is refused.
    let listed: BTreeSet<String> = catalog
        .service_types
        .iter()
        .map(|t| t.service_type.to_string())
        .collect();
    let accepted: BTreeSet<String> = spec::ServiceType::ALL
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(listed, accepted);
    let manifest =
        spec::Manifest::from_json(spec::LOCAL_MANIFEST).expect("the test fleet's manifest");
    for t in &catalog.service_types {
        let latest: Vec<&str> = t
            .versions
            .iter()
            .filter(|v| v.latest)
            .map(|v| v.version.as_str())
            .collect();
        assert_eq!(
            latest,
            vec![manifest.default_service_version(t.service_type).unwrap()],
            "{body}"
        );
    }
    assert_eq!(
        body["service_types"][0]["defaults"]["database_connection"]["target_session_attrs"],
        "prefer-standby"
    );

    for switch_on in [false, true] {
        let services: Vec<Value> = catalog
            .service_types
            .iter()
            .map(|t| {
                let version = &t.versions.iter().find(|v| v.latest).unwrap().version;
                json!({
                    "service_id": format!("svc-{}", t.service_type),
                    "service_type": t.service_type,
                    "version": version,
                    "host_ids": ["host-1"],
                    "config": spec::catalog::example::example_config(&t.config_fields, switch_on),
                })
            })
            .collect();
        let id = format!("catalog-{switch_on}");
        let body = json!({"id": id, "spec": {"database_name": "app",
            "nodes": [{"name": "n1", "host_ids": ["host-1"]}], "services": services}});
        let (status, created) = cp
            .call("POST", "/v1/databases", Some(&body.to_string()))
            .await;
        assert_eq!(status, StatusCode::OK, "switch_on {switch_on}: {created}");
    }
    let body = json!({"spec": {"database_name": "app", "nodes": [{"name": "n1", "host_ids": ["host-1"]}],
        "services": [{"service_id": "x", "service_type": "unlisted", "version": "latest",
            "host_ids": ["host-1"], "config": {}}]}});
    let (status, refused) = cp
        .call("POST", "/v1/databases", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
}

/// With authentication on, the operations the document marks open (`security: []`) answer
/// without a token, and every other one asks for it.
#[tokio::test]
async fn the_document_says_which_operations_need_a_token() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start_with(&etcd, |s| {
        s.api_auth = control_plane::settings::ApiAuthMode::On
    })
    .await;
    let doc: Value = serde_json::from_str(&control_plane::api::openapi_json()).unwrap();
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let client = reqwest::Client::new();
    for (method, path) in documented(&doc) {
        let operation = &doc["paths"][&path][method.to_lowercase()];
        let open = operation["security"] == json!([]);
        let resp = client
            .request(
                method.parse().unwrap(),
                format!("{}{}", cp.base, concrete(&path)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status() == StatusCode::UNAUTHORIZED,
            !open,
            "{method} {path}: {}",
            resp.status()
        );
    }
}
