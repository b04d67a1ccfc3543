//! Scheduled backups across a leader failover (issue 17, ADR 024): a database with an s3
//! repository (a real S3 server, `berth-s3-server`) and a schedule that comes due every
//! minute, on a fleet of two control-plane replicas. The leader is killed while pgBackRest
//! takes the backup of a due time it fired; the other replica takes over, and the backup
//! that went on in the container without its control plane serves the task. Every due
//! minute from the first fire to the last one observed has exactly one `node_backup` task
//! (its first log line names the schedule and the due time) and exactly one backup in the
//! repository annotated with it and the task: none doubled, none skipped. (A CI run once
//! found two backups of one due time: the new leader took a second while the first ran.)

use std::collections::BTreeMap;
use std::time::Instant;

use e2e::Fleet;
use e2e::serde_json::json;

/// The due time of each scheduled backup task of `db`, by task id, from the `due` field
/// of the task's first log line; and the tasks' statuses.
async fn scheduled_tasks(fleet: &Fleet, db: &str) -> BTreeMap<String, (String, String)> {
    let list = fleet
        .get(&format!("/v1/databases/{db}/tasks?limit=1000"))
        .await;
    let mut out = BTreeMap::new();
    for task in list["tasks"].as_array().expect("a list of tasks") {
        if task["type"] != "node_backup" {
            continue;
        }
        let id = task["task_id"].as_str().unwrap();
        let log = fleet
            .get(&format!("/v1/databases/{db}/tasks/{id}/log?limit=1"))
            .await;
        let first = &log["entries"][0];
        assert_eq!(
            first["fields"]["schedule"], "minutely",
            "a backup only the schedule made: {first}"
        );
        let due = first["fields"]["due"]
            .as_str()
            .expect("a due time")
            .to_string();
        out.insert(
            id.to_string(),
            (due, task["status"].as_str().unwrap_or("").to_string()),
        );
    }
    out
}

/// Due time -> how many tasks fired it.
fn by_due(tasks: &BTreeMap<String, (String, String)>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (due, _) in tasks.values() {
        *counts.entry(due.clone()).or_insert(0) += 1;
    }
    counts
}

/// The due times that `count` tasks fired and that completed, once there are that many.
async fn wait_completed(fleet: &Fleet, db: &str, count: usize) -> BTreeMap<String, usize> {
    let (counts, took) = fleet
        .wait_for(&format!("{count} scheduled backups completed"), || async {
            let tasks = scheduled_tasks(fleet, db).await;
            let done = tasks.values().filter(|(_, s)| s == "completed").count();
            let ended = tasks
                .values()
                .all(|(_, s)| matches!(s.as_str(), "completed" | "failed" | "canceled"));
            (done >= count && ended).then(|| by_due(&tasks))
        })
        .await;
    println!("{count} scheduled backups completed after {took:?}: {counts:?}");
    counts
}

/// A due time (`YYYY-MM-DDTHH:MM:SSZ`, as the scheduler writes it) in minutes since
/// 1970-01-01 (days by Howard Hinnant's days_from_civil).
fn minute(due: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 { due[r].parse().expect("a due time") };
    assert!(due.len() == 20 && due.ends_with("00Z"), "{due}");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 1440 + n(11..13) * 60 + n(14..16)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_once_per_due_time_across_a_leader_failover() {
    let started = Instant::now();
    let mut fleet = Fleet::start_with(1, 2).await;
    let host = fleet.host(1);
    let db = fleet.db_id("sched");
    let s3 = fleet.start_s3();
    let backup_config = json!({
        "repositories": [s3.repository("main", "/berth")],
        "schedules": [{"id": "minutely", "type": "full", "cron_expression": "* * * * *"}],
    });
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [host]}],
                "backup_config": backup_config}}),
        )
        .await;
    println!("database available after {:?}", started.elapsed());

    // The first fire: the schedule counts from when the leader first saw it.
    let first = wait_completed(&fleet, &db, 1).await;
    println!(
        "first scheduled backup done {:?} after the start",
        started.elapsed()
    );
    assert!(first.values().all(|n| *n == 1), "{first:?}");

    // The next fire: kill the leader while pgBackRest takes its backup.
    let before = scheduled_tasks(&fleet, &db).await.len();
    let primary = Fleet::container_name(&host, &format!("{db}-n1-{host}"));
    let leader = fleet.wait_for("a leader", || fleet.leader()).await.0;
    let (dead, survivor) = match leader.as_str() {
        "cp0" => (0, "cp1"),
        "cp1" => (1, "cp0"),
        other => panic!("unexpected leader {other}"),
    };
    let (fired, took) = fleet
        .wait_for("the next scheduled fire's backup running", || async {
            let tasks = scheduled_tasks(&fleet, &db).await;
            let (running, _) = fleet.docker_on_status(
                &host,
                &[
                    "exec",
                    &primary,
                    "pgrep",
                    "-f",
                    "pgbackrest .*--start-fast.* backup$",
                ],
            );
            (tasks.len() > before && running).then_some(tasks)
        })
        .await;
    println!(
        "injecting: SIGKILL of the leader {leader} while pgBackRest backs up, {took:?} after \
         waiting for a fire"
    );
    let killed_at = Instant::now();
    fleet.kill_control_plane(dead);
    let fired_before_kill = by_due(&fired);
    println!("fired before the kill: {fired_before_kill:?}");
    let (new_leader, took) = fleet
        .wait_for("another leader", || async {
            fleet.leader().await.filter(|l| *l != leader)
        })
        .await;
    println!("{new_leader} took over {took:?} after the kill");
    assert_eq!(new_leader, survivor);

    // Two more due minutes under the new leader.
    let want = fired.len() + 2;
    let counts = wait_completed(&fleet, &db, want).await;
    // The task the dead leader left found the backup that ran on without it.
    let newest = fired
        .iter()
        .max_by_key(|(_, (due, _))| due.clone())
        .map(|(id, _)| id.clone())
        .expect("the fire the kill interrupted");
    let log = fleet.task_log(&db, &newest).await;
    assert!(
        log.iter().any(|l| l.contains("already holds backup")),
        "task {newest} took its backup again: {log:#?}"
    );
    println!(
        "{want} scheduled backups {:?} after the kill, {:?} after the start",
        killed_at.elapsed(),
        started.elapsed()
    );

    // Exactly one task per due minute, consecutive minutes from the first.
    let dues: Vec<_> = counts.keys().map(|d| minute(d)).collect();
    assert!(
        counts.values().all(|n| *n == 1),
        "a due time fired twice: {counts:?}"
    );
    for pair in dues.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "a due minute was skipped: {counts:?}");
    }
    assert!(dues.len() >= want, "{counts:?}");
    for due in fired_before_kill.keys() {
        assert!(
            counts.contains_key(due),
            "{due} kept its one task: {counts:?}"
        );
    }

    // The repository has exactly one backup per due minute, annotated with it.
    let list = fleet
        .get(&format!("/v1/databases/{db}/nodes/n1/backups"))
        .await;
    // A backup names the task that took it: the task of its due time.
    let task_of_due: BTreeMap<String, String> = scheduled_tasks(&fleet, &db)
        .await
        .into_iter()
        .map(|(id, (due, _))| (due, id))
        .collect();
    let mut backups: BTreeMap<String, usize> = BTreeMap::new();
    for b in list["backups"].as_array().expect("a list of backups") {
        assert_eq!(b["annotations"]["schedule"], "minutely", "{b}");
        let due = b["annotations"]["due"].as_str().expect("a due annotation");
        if let Some(task) = task_of_due.get(due) {
            assert_eq!(b["annotations"]["berth.task_id"], task.as_str(), "{b}");
        }
        *backups.entry(due.to_string()).or_insert(0) += 1;
    }
    println!("backups by due time: {backups:?}");
    assert!(
        backups.values().all(|n| *n == 1),
        "a due time was backed up twice: {backups:?}"
    );
    // Each backup task writes the list when it ends: read after `counts`, the list has each
    // of its due times, and a due time listed has exactly one task.
    let tasks = by_due(&scheduled_tasks(&fleet, &db).await);
    for due in counts.keys() {
        assert!(
            backups.contains_key(due),
            "no backup for {due}: {backups:?}"
        );
    }
    for due in backups.keys() {
        assert_eq!(tasks.get(due), Some(&1), "{due}: tasks {tasks:?}");
    }
}

#[test]
fn minutes_of_due_times() {
    assert_eq!(minute("1970-01-01T00:01:00Z"), 1);
    assert_eq!(
        minute("2000-03-01T00:00:00Z") - minute("2000-02-28T23:59:00Z"),
        1441
    );
    assert_eq!(
        minute("2026-01-01T00:00:00Z") - minute("2025-12-31T23:59:00Z"),
        1
    );
}
