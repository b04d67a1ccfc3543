//! Which images the agents run (issue 14, item 5): the built-in manifest's Postgres is berth's
//! own image and runs as a deployment without `--manifest` would run it; an image missing from
//! a host's engine fails the step naming it when the manifest says never to pull, and is pulled
//! from its registry when the manifest says `if_not_present`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use e2e::Fleet;
use serde_json::{Value, json};

fn one_node(db: &str, host: &str) -> Value {
    json!({"id": db, "spec": {"database_name": "app", "nodes": [{"name": "n1", "host_ids": [host]}]}})
}

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The local test manifest with the default Postgres entry's image and pull policy replaced
/// (a spec without `postgres_version` runs it).
fn manifest_with_postgres(dir: &Path, image: &str, policy: &str) -> std::path::PathBuf {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs/service-versions.local.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(root).unwrap()).unwrap();
    let entry = m["postgres"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["default"] == true)
        .expect("a default Postgres entry");
    entry["image"] = json!(image);
    entry["image_pull_policy"] = json!(policy);
    let path = dir.join("manifest.json");
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_built_in_manifest_runs_berths_postgres() {
    let fleet = Fleet::start_with_manifest(1, None).await;
    let host = fleet.host(1);
    let db = fleet.db_id("builtin");
    fleet.apply("/v1/databases", &one_node(&db, &host)).await;
    let d = fleet.database(&db).await;
    assert_eq!(d["state"], "available", "{d}");
    let instance = d["instances"][0]["id"].as_str().unwrap().to_string();
    let container = Fleet::container_name(&host, &instance);
    // The default version's image, Debian trixie's Postgres 17.
    assert_eq!(
        fleet.inspect(&container)["Config"]["Image"],
        "berth/postgres:17"
    );
    // The image read berth.conf and the TLS files the agent wrote: a stock image would not.
    assert_eq!(fleet.psql(&container, "app", "SHOW ssl"), "on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_that_may_not_be_pulled_fails_the_step_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = format!("berth/postgres:absent-{:08x}", rand::random::<u32>());
    let manifest = manifest_with_postgres(dir.path(), &image, "never");
    let fleet = Fleet::start_with_manifest(1, Some(&manifest)).await;
    let db = fleet.db_id("missing");
    let resp = fleet
        .post_ok("/v1/databases", &one_node(&db, &fleet.host(1)))
        .await;
    let task_id = resp["task"]["task_id"].as_str().unwrap().to_string();
    let task = fleet.wait_task(&db, &task_id).await;
    assert_eq!(task["status"], "failed", "{task}");
    let log = fleet.task_log(&db, &task_id).await.join("\n");
    assert!(
        log.contains(&image) && log.contains("pull policy is never"),
        "the log does not name the missing image:\n{log}"
    );
}

/// A registry on 127.0.0.1 (Debian's `docker-registry`), stopped on drop.
struct Registry {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", test_support::free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (deploy/install-deps installs it)");
        Registry {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_pulled_from_its_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    // Published as deploy/images/README.md says, under a name no other test uses; the engine
    // trusts a registry on 127.0.0.1 over plain HTTP.
    let image = format!(
        "{}/berth/postgres:e2e-{:08x}",
        registry.address,
        rand::random::<u32>()
    );
    docker(&["tag", "berth/postgres:local", &image]);
    let mut pushed = false;
    for _ in 0..100 {
        // The registry may still be starting.
        if Command::new("docker")
            .args(["push", "-q", &image])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            pushed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(pushed, "docker push {image} never succeeded");
    docker(&["rmi", &image]);

    let manifest = manifest_with_postgres(dir.path(), &image, "if_not_present");
    let fleet = Fleet::start_with_manifest(1, Some(&manifest)).await;
    let db = fleet.db_id("pulled");
    let task = fleet
        .apply("/v1/databases", &one_node(&db, &fleet.host(1)))
        .await;
    let log = fleet
        .task_log(&db, task["task_id"].as_str().unwrap())
        .await
        .join("\n");
    let d = fleet.database(&db).await;
    assert_eq!(d["state"], "available", "{d}\n{log}");
    drop(fleet);
    let _ = Command::new("docker").args(["rmi", &image]).output();
}
