//! Faults injected into a running fleet; each ends with the fleet converged and nothing lost.
//! Each test prints what it injected and how long convergence took.

use std::collections::BTreeSet;
use std::time::Instant;

use e2e::serde_json::{Value, json};
use e2e::{Fleet, seed_spec};

async fn create_seed(fleet: &Fleet, db: &str, host: &str) {
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": seed_spec("example", host, "m1")}),
        )
        .await;
}

/// Container names of the fleet, running or not.
fn names(fleet: &Fleet) -> BTreeSet<String> {
    fleet.containers().into_keys().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_service_container_comes_back_without_a_request() {
    let fleet = Fleet::start(1).await;
    let (h1, db) = (fleet.host(1), fleet.db_id("heal"));
    create_seed(&fleet, &db, &h1).await;
    let id = format!("{db}-mcp-server-{h1}");
    let before = fleet.service_instances(&db).await[&id].clone();
    let tasks_before = fleet.get(&format!("/v1/databases/{db}/tasks")).await["tasks"]
        .as_array()
        .unwrap()
        .len();

    println!("injecting: docker kill of {id}");
    let started = Instant::now();
    fleet.docker_kill(&Fleet::container_name(&h1, &id));
    let (after, _) = fleet
        .wait_for("the service to run again", || async {
            let s = fleet.service_instances(&db).await.remove(&id)?;
            (s["state"] == "running"
                && s["status"]["container_id"] != before["status"]["container_id"])
                .then_some(s)
        })
        .await;
    println!(
        "converged: {id} running again after {:?}",
        started.elapsed()
    );
    assert_eq!(
        after["created_at"], before["created_at"],
        "healing keeps the instance's identity"
    );
    // Healing needs no request; what it did is on a task of type reconcile.
    let (heal, _) = fleet
        .wait_for("the heal's reconcile task to end", || async {
            let tasks = fleet.get(&format!("/v1/databases/{db}/tasks")).await;
            let tasks = tasks["tasks"].as_array()?.clone();
            (tasks.len() == tasks_before + 1 && tasks[0]["status"] == "completed")
                .then(|| tasks[0].clone())
        })
        .await;
    assert_eq!(heal["type"], "reconcile", "{heal}");
    let log = fleet.task_log(&db, heal["task_id"].as_str().unwrap()).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("restoring service instance mcp-server")),
        "{}",
        log.join("\n")
    );
    assert_eq!(
        fleet
            .containers()
            .values()
            .filter(|(_, state)| state == "running")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_turns_unreachable_and_is_reconciled_when_back() {
    let mut fleet = Fleet::start(2).await;
    let (h1, h2, db) = (fleet.host(1), fleet.host(2), fleet.db_id("agent"));
    let mut spec = seed_spec("example", &h1, "m1");
    spec["services"][0]["host_ids"] = json!([h1, h2]);
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    let before = names(&fleet);
    assert_eq!(before.len(), 3);

    println!("injecting: SIGKILL of the agent of {h2}");
    let started = Instant::now();
    fleet.kill_agent(&h2);
    fleet
        .wait_for("the host to be unreachable", || async {
            let h = fleet.get(&format!("/v1/hosts/{h2}")).await;
            (h["status"]["state"] == "unreachable").then_some(())
        })
        .await;
    println!("host {h2} unreachable after {:?}", started.elapsed());
    let id2 = format!("{db}-mcp-server-{h2}");
    let instance = fleet.service_instances(&db).await.remove(&id2).unwrap();
    assert_eq!(instance["state"], "unknown", "{instance}");
    // Its container keeps running: the agent died, not the host.
    assert_eq!(
        fleet.containers()[&Fleet::container_name(&h2, &id2)].1,
        "running"
    );

    // Meanwhile, kill its container too: the restarted agent must report it and have it healed.
    let killed = fleet.containers()[&Fleet::container_name(&h2, &id2)]
        .0
        .clone();
    fleet.docker_kill(&Fleet::container_name(&h2, &id2));
    let started = Instant::now();
    fleet.restart_agent(&h2);
    fleet.wait_hosts_healthy().await;
    fleet
        .wait_for(
            "the instance on the returning host to run in a new container",
            || async {
                let s = fleet.service_instances(&db).await.remove(&id2)?;
                let replaced = s["status"]["container_id"]
                    .as_str()
                    .is_some_and(|c| c != killed);
                (s["state"] == "running" && replaced).then_some(())
            },
        )
        .await;
    println!(
        "converged after the agent restart in {:?}",
        started.elapsed()
    );
    assert_eq!(names(&fleet), before, "no duplicate or missing container");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_agent_past_its_lease_converges_without_duplicates() {
    let fleet = Fleet::start(2).await;
    let (h1, h2, db) = (fleet.host(1), fleet.host(2), fleet.db_id("pause"));
    let mut spec = seed_spec("example", &h1, "m1");
    spec["services"][0]["host_ids"] = json!([h2]);
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec.clone()}))
        .await;
    let before = names(&fleet);
    let before_ids: std::collections::BTreeMap<String, String> = fleet
        .containers()
        .into_iter()
        .map(|(name, (id, _))| (name, id))
        .collect();

    println!("injecting: SIGSTOP of the agent of {h2} beyond its lease");
    fleet.pause_agent(&h2);
    fleet
        .wait_for("the host to be unreachable", || async {
            let h = fleet.get(&format!("/v1/hosts/{h2}")).await;
            (h["status"]["state"] == "unreachable").then_some(())
        })
        .await;
    // A change while the host is away: the model of the service on it.
    spec["services"][0]["config"]["llm_model"] = json!("m2");
    let resp = fleet
        .post_ok(&format!("/v1/databases/{db}"), &json!({"spec": spec}))
        .await;
    let started = Instant::now();
    println!("injecting: SIGCONT");
    fleet.resume_agent(&h2);
    fleet.wait_hosts_healthy().await;
    let task = fleet
        .wait_task(&db, resp["task"]["task_id"].as_str().unwrap())
        .await;
    println!(
        "the update's task ended {} after the partition healed in {:?}",
        task["status"],
        started.elapsed()
    );
    // The update may have failed at once (its host was away when it started); then the
    // control plane finishes it in a reconcile task when the host is back. Either way the
    // proof is the container: a new one, running the new model. (Before, this waited for
    // "running" only, which the old container's record still said while its replacement
    // was being made, and then found no container.)
    let id = format!("{db}-mcp-server-{h2}");
    let name = Fleet::container_name(&h2, &id);
    let old_container = before_ids[&name].clone();
    fleet
        .wait_for("the service to run with the new model", || async {
            let s = fleet.service_instances(&db).await.remove(&id)?;
            let container = s["status"]["container_id"].as_str()?.to_string();
            let config =
                std::fs::read_to_string(fleet.instance_dir(&h2, &id).join("config/config.yaml"))
                    .ok()?;
            let now = fleet.containers().get(&name)?.clone();
            (s["state"] == "running"
                && container != old_container
                && now.0 == container
                && now.1 == "running"
                && config.contains("m2"))
            .then_some(())
        })
        .await;
    assert_eq!(names(&fleet), before, "no duplicated instance");
    let config = std::fs::read_to_string(
        fleet
            .instance_dir(&h2, &format!("{db}-mcp-server-{h2}"))
            .join("config/config.yaml"),
    )
    .unwrap();
    assert!(config.contains("m2"), "{config}");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_killed_during_create_and_delete_finishes_after_restart() {
    let mut fleet = Fleet::start(2).await;
    let (h1, h2, db) = (fleet.host(1), fleet.host(2), fleet.db_id("crash"));
    let mut spec = seed_spec("example", &h1, "m1");
    spec["services"][0]["host_ids"] = json!([h1, h2]);
    let created = fleet
        .post_ok("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    let task_id = created["task"]["task_id"].as_str().unwrap().to_string();
    // Kill the leader once the first step is under way.
    fleet
        .wait_for("the create to start a step", || async {
            let log = fleet.task_log(&db, &task_id).await;
            log.iter()
                .any(|l| l.contains("creating postgres primary"))
                .then_some(())
        })
        .await;
    println!("injecting: SIGKILL of the control plane during the create");
    fleet.kill_control_plane(0);
    let started = Instant::now();
    fleet.restart_control_plane(0);
    let task = fleet.wait_task(&db, &task_id).await;
    println!(
        "create finished {} {:?} after the restart",
        task["status"],
        started.elapsed()
    );
    assert_eq!(task["status"], "completed", "{task}");
    let expected: BTreeSet<String> = [
        Fleet::container_name(&h1, &format!("{db}-n1-{h1}")),
        Fleet::container_name(&h1, &format!("{db}-mcp-server-{h1}")),
        Fleet::container_name(&h2, &format!("{db}-mcp-server-{h2}")),
    ]
    .into();
    assert_eq!(
        names(&fleet),
        expected,
        "docker ps must match the spec exactly"
    );
    assert!(
        fleet
            .containers()
            .values()
            .all(|(_, state)| state == "running")
    );

    let (status, deleted) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    let delete_task = deleted["task"]["task_id"].as_str().unwrap().to_string();
    fleet
        .wait_for("the delete to start", || async {
            let t = fleet
                .get(&format!("/v1/databases/{db}/tasks/{delete_task}"))
                .await;
            (t["status"] != "pending").then_some(())
        })
        .await;
    println!("injecting: SIGKILL of the control plane during the delete");
    fleet.kill_control_plane(0);
    let started = Instant::now();
    fleet.restart_control_plane(0);
    let task = fleet.wait_task(&db, &delete_task).await;
    println!(
        "delete finished {} {:?} after the restart",
        task["status"],
        started.elapsed()
    );
    assert_eq!(task["status"], "completed", "{task}");
    assert!(names(&fleet).is_empty(), "{:?}", names(&fleet));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_replica_takes_over_when_the_leader_dies() {
    let mut fleet = Fleet::start_with(1, 2).await;
    let h1 = fleet.host(1);
    let leader = fleet.wait_for("a leader", || fleet.leader()).await.0;
    let (dead, survivor) = match leader.as_str() {
        "cp0" => (0, "cp1"),
        "cp1" => (1, "cp0"),
        other => panic!("unexpected leader {other}"),
    };
    create_seed(&fleet, &fleet.db_id("one"), &h1).await;

    println!("injecting: SIGKILL of the leader {leader}");
    let started = Instant::now();
    fleet.kill_control_plane(dead);
    let (new_leader, took) = fleet
        .wait_for("another leader", || async {
            fleet.leader().await.filter(|l| *l != leader)
        })
        .await;
    println!("{new_leader} took over after {took:?}");
    assert_eq!(new_leader, survivor);
    // The new leader reconciles: a new database converges through the surviving replica.
    create_seed(&fleet, &fleet.db_id("two"), &h1).await;
    println!(
        "new database converged {:?} after the leader died",
        started.elapsed()
    );
    assert_eq!(fleet.containers().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restart_loses_nothing_accepted() {
    let mut fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("durable");
    create_seed(&fleet, &db, &h1).await;
    let before = fleet.database(&db).await;

    println!("injecting: etcd restart (kill -9, same data dir)");
    let started = Instant::now();
    fleet.etcd.restart();
    let (after, took) = fleet
        .wait_for("the API to answer again", || async {
            let (status, d) = fleet
                .call("GET", &format!("/v1/databases/{db}"), None)
                .await;
            (status == 200).then_some(d)
        })
        .await;
    println!("API answered {took:?} after etcd restarted");
    assert_eq!(after["spec"], before["spec"]);
    // Writes work again, and the reconciler still converges them.
    let mut spec = before["spec"].clone();
    spec["services"][0]["config"]["llm_model"] = json!("m2");
    spec["services"][0]["config"]["anthropic_api_key"] = json!("sk-ant-e2e-SECRET");
    fleet
        .apply(&format!("/v1/databases/{db}"), &json!({"spec": spec}))
        .await;
    println!("converged {:?} after the etcd restart", started.elapsed());
    let d = fleet.database(&db).await;
    assert_eq!(d["spec"]["services"][0]["config"]["llm_model"], "m2");
    assert_eq!(d["service_instances"][0]["state"], "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_updates_end_in_the_last_accepted_spec() {
    let fleet = Fleet::start(1).await;
    let (h1, db) = (fleet.host(1), fleet.db_id("race"));
    create_seed(&fleet, &db, &h1).await;

    println!("injecting: 50 updates of one database from 10 concurrent clients");
    let api = fleet.api();
    let mut clients = Vec::new();
    for client in 0..10 {
        let (api, db, h1) = (api.clone(), db.clone(), h1.clone());
        clients.push(tokio::spawn(async move {
            let http = e2e::reqwest::Client::new();
            let mut answers = Vec::new();
            for i in 0..5 {
                let model = format!("model-{client}-{i}");
                let body = json!({"spec": seed_spec("example", &h1, &model)});
                let resp = http
                    .post(format!("{api}/v1/databases/{db}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let value: Value = resp.json().await.unwrap();
                answers.push((status, model, value));
            }
            answers
        }));
    }
    let mut accepted = Vec::new();
    for c in clients {
        for (status, model, value) in c.await.unwrap() {
            assert!(status == 200 || status == 409, "answered {status}: {value}");
            if status == 200 {
                accepted.push((
                    value["task"]["task_id"].as_str().unwrap().to_string(),
                    model,
                ));
            }
        }
    }
    assert!(!accepted.is_empty());
    // Task ids are time-ordered: the newest accepted task carries the last accepted spec.
    accepted.sort();
    let (last_task, last_model) = accepted.last().unwrap().clone();
    println!(
        "{} of 50 accepted; the last one set {last_model}",
        accepted.len()
    );
    let task = fleet.wait_task(&db, &last_task).await;
    assert_eq!(task["status"], "completed", "{task}");
    let d = fleet.database(&db).await;
    assert_eq!(
        d["spec"]["services"][0]["config"]["llm_model"],
        last_model.as_str()
    );
    let id = format!("{db}-mcp-server-{h1}");
    let config =
        std::fs::read_to_string(fleet.instance_dir(&h1, &id).join("config/config.yaml")).unwrap();
    assert!(
        config.contains(&last_model),
        "the running service has another model:\n{config}"
    );
    assert_eq!(fleet.containers().len(), 2);
}
