//! The `berth` CLI as an operator runs it, against a real fleet: the binary itself, its
//! stdout, stderr and exit code.

use std::process::{Command, Output, Stdio};

use e2e::serde_json::{self, Value, json};
use e2e::{Fleet, seed_spec};

/// What one run of `berth` did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Asserts that a followed task of `task_type` completed: exit 0, its ending line last.
    fn completed(&self, task_type: &str) {
        assert_eq!(self.code, 0, "{}", self.show());
        let ending = format!("{task_type} task ");
        assert!(
            self.stdout
                .lines()
                .last()
                .is_some_and(|l| l.starts_with(&ending) && l.contains(" completed in ")),
            "{}",
            self.show()
        );
    }

    /// Asserts that the API refused the request with the error `name`: exit 3, named first.
    fn refused(&self, name: &str) {
        assert_eq!(self.code, 3, "{}", self.show());
        let first = format!("error: {name}: ");
        assert!(self.stderr.starts_with(&first), "{}", self.show());
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("-o json did not print JSON ({e}):\n{}", self.show()))
    }
}

/// Runs `berth ARGS` against `url` (BERTH_URL), stdin closed and stdout a pipe, as in CI.
fn berth(url: &str, args: &[&str]) -> Run {
    // Built with the fleet's binaries, where the harness finds them.
    let out: Output = Command::new(e2e::built_binary("berth"))
        .args(args)
        .env("BERTH_URL", url)
        .env_remove("BERTH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run berth");
    let run = Run {
        code: out
            .status
            .code()
            .expect("berth ended by a signal (a panic abort?)"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "berth panicked:\n{}",
        run.show()
    );
    println!("$ berth {}\n{}", args.join(" "), run.show());
    run
}

/// Every step the task log reports as started, by message.
async fn started_steps(fleet: &Fleet, db: &str, task_id: &str) -> Vec<String> {
    let log = fleet
        .get(&format!(
            "/v1/databases/{db}/tasks/{task_id}/log?limit=1000"
        ))
        .await;
    log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["fields"]["status"] == "started")
        .map(|e| e["message"].as_str().expect("message").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_wait_get_dry_run_logs_and_delete_the_seed_example() {
    let fleet = Fleet::start(1).await;
    let api = fleet.api();
    let h1 = fleet.host(1);
    let db = fleet.db_id("example");
    let dir = tempfile::tempdir().unwrap();

    // apply --wait of the seed example (the create body, JSON): exit 0, every step printed.
    let create = dir.path().join("example.json");
    let body = json!({"id": db, "spec": seed_spec("example", &h1, "claude-sonnet-4-5")});
    std::fs::write(&create, body.to_string()).unwrap();
    let run = berth(&api, &["apply", "-f", create.to_str().unwrap(), "--wait"]);
    run.completed("create");

    let tasks = berth(&api, &["get", "tasks", &db, "-o", "json"]);
    assert_eq!(tasks.code, 0, "{}", tasks.show());
    let task_id = tasks.json()["tasks"][0]["task_id"]
        .as_str()
        .expect("a task id")
        .to_string();
    let steps = started_steps(&fleet, &db, &task_id).await;
    assert!(
        steps
            .iter()
            .any(|s| s.contains("creating service instance mcp-server")),
        "{steps:?}"
    );
    for step in &steps {
        let done = format!("✓ {step} (");
        assert!(
            run.stdout.lines().any(|l| l.starts_with(&done)),
            "no {done:?} line:\n{}",
            run.show()
        );
    }

    // -o json parses; tables name what they list.
    let got = berth(&api, &["get", "database", &db, "-o", "json"]);
    assert_eq!(got.code, 0, "{}", got.show());
    let d = got.json();
    assert_eq!(d["state"], "available", "{d}");
    let mcp_id = format!("{db}-mcp-server-{h1}");
    assert_eq!(
        d["service_instances"][0]["service_instance_id"],
        mcp_id.as_str()
    );
    let listed = berth(&api, &["-o", "json", "get", "databases"]).json();
    assert!(
        listed["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == db.as_str()),
        "{listed}"
    );
    let hosts = berth(&api, &["get", "hosts", "-o", "json"]).json();
    assert_eq!(hosts["hosts"][0]["id"], h1.as_str(), "{hosts}");
    let table = berth(&api, &["get", "database", &db]);
    assert_eq!(table.code, 0, "{}", table.show());
    assert!(table.stdout.contains(&mcp_id) && table.stdout.contains("running"));
    let table = berth(&api, &["get", "hosts"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&h1) && l.contains("healthy")),
        "{}",
        table.show()
    );

    // logs -o json is NDJSON: one entry per line.
    let logs = berth(&api, &["logs", &db, &task_id, "-o", "json"]);
    assert_eq!(logs.code, 0, "{}", logs.show());
    let entries: Vec<Value> = logs
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(entries.len() > steps.len(), "{}", logs.show());
    assert!(
        entries
            .iter()
            .all(|e| e["id"].is_string() && e["message"].is_string())
    );
    // Followed after the end, the log is all there and the exit code says how it ended.
    let followed = berth(&api, &["logs", &db, &task_id, "-f", "-o", "json"]);
    assert_eq!(followed.code, 0, "{}", followed.show());
    assert_eq!(
        followed.stdout.lines().count(),
        entries.len(),
        "{}",
        followed.show()
    );

    // A changed config, as a YAML spec with --id: the dry run lists the one changed
    // instance, and changes nothing.
    let changed = dir.path().join("changed.yaml");
    std::fs::write(
        &changed,
        format!(
            "database_name: example\n\
             nodes:\n  - name: n1\n    host_ids: [{h1}]\n\
             services:\n  - service_id: mcp-server\n    service_type: mcp\n    version: latest\n    \
             host_ids: [{h1}]\n    config:\n      llm_enabled: true\n      llm_provider: anthropic\n      \
             llm_model: claude-opus-4\n"
        ),
    )
    .unwrap();
    let changed_arg = changed.to_str().unwrap();
    let plan = berth(
        &api,
        &[
            "apply",
            "-f",
            changed_arg,
            "--id",
            &db,
            "--dry-run",
            "-o",
            "json",
        ],
    );
    assert_eq!(plan.code, 0, "{}", plan.show());
    let plan = plan.json();
    assert_eq!(plan["dry_run"], true, "{plan}");
    let planned = plan["steps"].as_array().expect("steps");
    assert_eq!(planned.len(), 1, "{plan}");
    assert_eq!(planned[0]["instance_id"], mcp_id.as_str(), "{plan}");
    let plan_table = berth(
        &api,
        &["apply", "-f", changed_arg, "--id", &db, "--dry-run"],
    );
    assert_eq!(plan_table.code, 0, "{}", plan_table.show());
    let rows: Vec<&str> = plan_table
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("ACTION"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 1, "{}", plan_table.show());
    assert!(rows[0].contains(&mcp_id), "{}", plan_table.show());
    let after = berth(&api, &["get", "tasks", &db, "-o", "json"]).json();
    assert_eq!(
        after["tasks"].as_array().unwrap().len(),
        1,
        "a dry run made a task"
    );

    // The same file applied for real is an update (the database exists).
    let update = berth(&api, &["apply", "-f", changed_arg, "--id", &db, "--wait"]);
    update.completed("update");

    // The operations on instances: an unknown one is the API's 404 (exit 3); a restart of
    // the single instance by its Patroni, followed, completes.
    berth(&api, &["stop", &db, &format!("{db}-n9-{h1}")]).refused("not_found");
    berth(&api, &["restart", &db, &format!("{db}-n1-{h1}"), "--wait"])
        .completed("restart_instance");

    // delete --wait, then the database is gone: a 404 is a refusal, exit 3.
    berth(&api, &["delete", &db, "--wait"]).completed("delete");
    berth(&api, &["get", "database", &db]).refused("not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_apply_a_refused_spec_and_a_dead_control_plane_exit_non_zero() {
    let fleet = Fleet::start(1).await;
    let api = fleet.api();
    let h1 = fleet.host(1);
    let db = fleet.db_id("fails");
    let dir = tempfile::tempdir().unwrap();

    // A service whose fixed port is taken on the host: its step fails, every attempt, and
    // the task with it. Exit 1, the step's error on stdout and the task's on stderr.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("a port to hold");
    let port = taken.local_addr().unwrap().port();
    let spec = json!({
        "database_name": "app", "nodes": [{"name": "n1", "host_ids": [h1]}],
        "services": [{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                      "host_ids": [h1], "config": {}, "port": port}]
    });
    let file = dir.path().join("taken.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let run = berth(
        &api,
        &["apply", "-f", file.to_str().unwrap(), "--id", &db, "--wait"],
    );
    assert_eq!(run.code, 1, "{}", run.show());
    let step = format!("✗ creating service instance mcp on {h1}: ");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&step) && l.contains("spec.services[0].port")),
        "no failed step naming the port:\n{}",
        run.show()
    );
    assert!(
        run.stderr.starts_with("error: create task ")
            && run.stderr.contains(" failed ")
            && run.stderr.contains("spec.services[0].port"),
        "{}",
        run.show()
    );
    drop(taken);

    // -o json: the final task, failed.
    let tasks = berth(&api, &["get", "tasks", &db, "-o", "json"]).json();
    assert_eq!(tasks["tasks"][0]["status"], "failed", "{tasks}");

    // A spec the API refuses: exit 3, the error name, then every offending field path.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "id: {db}-bad\nspec:\n  database_name: app\n  nodes: []\n  services:\n    \
             - service_id: mcp\n      service_type: mcp\n      version: latest\n      \
             host_ids: [{h1}]\n      config: {{}}\n      cpus: lots\n"
        ),
    )
    .unwrap();
    let refused = berth(&api, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(refused.code, 3, "{}", refused.show());
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: invalid_input: "),
        "{}",
        refused.show()
    );
    for path in ["spec.nodes", "spec.services[0].cpus"] {
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("{path}: "))),
            "no line for {path}:\n{}",
            refused.show()
        );
    }

    // No control plane there: exit 4, one line, no panic.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = berth(&format!("http://127.0.0.1:{closed}"), &["get", "hosts"]);
    assert_eq!(dead.code, 4, "{}", dead.show());
    assert!(
        dead.stderr.starts_with("error: GET http://127.0.0.1:"),
        "{}",
        dead.show()
    );
    assert_eq!(dead.stderr.lines().count(), 1, "{}", dead.show());
}
