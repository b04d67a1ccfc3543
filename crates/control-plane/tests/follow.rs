//! `GET .../tasks/{task_id}/log?follow=true` against a real etcd and the real control plane:
//! a follower of a long task sees every entry once, in order, and its stream ends with the
//! task; a reconnect with `after_entry_id` continues exactly. The task's lines are written
//! the way the reconciler writes them (single lines, batches, several writers at once).

use std::time::Duration;

mod common;

use common::ControlPlane;
use control_plane::tasks::{new_task, transition};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use spec::{TaskLogEntry, TaskStatus, TaskType};
use store::Store;
use test_support::EtcdServer;

/// Lines written per writer; two writers run at once, the way parallel steps do.
const LINES: usize = 120;

/// A stream of NDJSON lines read chunk by chunk, as a client sees it arrive.
struct Follow {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Follow {
    async fn open(cp: &ControlPlane, db: &str, task: &str, after: Option<&str>) -> Follow {
        let mut url = format!("{}/v1/databases/{db}/tasks/{task}/log?follow=true", cp.base);
        if let Some(a) = after {
            url.push_str(&format!("&after_entry_id={a}"));
        }
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "application/x-ndjson",
            "{:?}",
            response.headers()
        );
        Follow {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next entry; None at a clean end of the body. Blank lines (keep-alives) are skipped.
    async fn next(&mut self) -> Option<TaskLogEntry> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("not a log entry: {e}: {}", String::from_utf8_lossy(&line))
                }));
            }
            match self.response.chunk().await.expect("the body ends cleanly") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(
                        self.buffer.is_empty(),
                        "a partial last line: {:?}",
                        self.buffer
                    );
                    return None;
                }
            }
        }
    }

    async fn rest(&mut self) -> Vec<TaskLogEntry> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

fn ids(entries: &[TaskLogEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

async fn full_log(store: &Store, db: &str, task: &str) -> Vec<TaskLogEntry> {
    store.read_log(db, task, None, 10_000).await.unwrap()
}

/// A task that runs for a while: two writers append single lines and batches with pauses in
/// between, then the task completes and one last line follows its end.
async fn run_task(store: Store, db: String, task: String) {
    transition(&store, &db, &task, TaskStatus::Running, None)
        .await
        .unwrap();
    let writer = |name: &'static str| {
        let (store, db, task) = (store.clone(), db.clone(), task.clone());
        async move {
            let mut i = 0;
            while i < LINES {
                if i % 3 == 0 {
                    let batch = (i..(i + 7).min(LINES))
                        .map(|j| (format!("{name} line {j}"), Map::new()))
                        .collect::<Vec<_>>();
                    i += batch.len();
                    store.append_logs(&db, &task, batch).await.unwrap();
                } else {
                    let mut fields = Map::new();
                    fields.insert("step".into(), json!(name));
                    store
                        .append_log(&db, &task, format!("{name} line {i}"), fields)
                        .await
                        .unwrap();
                    i += 1;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    };
    tokio::join!(writer("a"), writer("b"));
    store
        .append_log(&db, &task, "task completed".to_string(), Map::new())
        .await
        .unwrap();
    transition(&store, &db, &task, TaskStatus::Completed, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_sees_every_entry_once_in_order_and_ends_with_the_task() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let store = cp.store().await;
    let db = "followed";
    let task = new_task(db, TaskType::Update);
    store.create_task(&task).await.unwrap();
    let task_id = task.task_id.clone();
    store
        .append_log(db, &task_id, "accepted".to_string(), Map::new())
        .await
        .unwrap();

    // One follower from the start, one that breaks off and resumes with its cursor.
    let mut whole = Follow::open(&cp, db, &task_id, None).await;
    let mut broken = Follow::open(&cp, db, &task_id, None).await;
    let writing = tokio::spawn(run_task(store.clone(), db.to_string(), task_id.clone()));

    let mut resumed = Vec::new();
    for _ in 0..50 {
        resumed.push(broken.next().await.expect("an entry before the end"));
    }
    drop(broken);
    let cursor = resumed.last().unwrap().id.clone();
    let mut again = Follow::open(&cp, db, &task_id, Some(&cursor)).await;
    let seen = whole.rest().await;
    resumed.extend(again.rest().await);
    writing.await.unwrap();

    let stored = full_log(&store, db, &task_id).await;
    assert_eq!(stored.len(), 2 + 2 * LINES);
    let ended = store.get_task(db, &task_id).await.unwrap().unwrap().value;
    assert_eq!(ended.status, TaskStatus::Completed);
    // Every entry once, in entry order, exactly as stored (and as the non-follow read gives).
    assert_eq!(ids(&seen), ids(&stored));
    assert_eq!(seen, stored);
    assert_eq!(ids(&resumed), ids(&stored));

    // A task that has ended streams what it has and ends at once; a cursor still applies.
    let after_end = Follow::open(&cp, db, &task_id, None).await.rest().await;
    assert_eq!(ids(&after_end), ids(&stored));
    let tail = Follow::open(&cp, db, &task_id, Some(&stored[9].id))
        .await
        .rest()
        .await;
    assert_eq!(ids(&tail), ids(&stored[10..]));
    let none = Follow::open(&cp, db, &task_id, Some(&stored.last().unwrap().id))
        .await
        .rest()
        .await;
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_of_a_task_that_fails_or_is_canceled_ends_too() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let store = cp.store().await;
    let db = "ends";
    for end in [TaskStatus::Failed, TaskStatus::Canceled] {
        let task = new_task(db, TaskType::Update);
        store.create_task(&task).await.unwrap();
        let mut follow = Follow::open(&cp, db, &task.task_id, None).await;
        store
            .append_log(db, &task.task_id, "one".to_string(), Map::new())
            .await
            .unwrap();
        assert_eq!(follow.next().await.unwrap().message, "one");
        transition(&store, db, &task.task_id, end, Some("stopped".into()))
            .await
            .unwrap();
        assert_eq!(follow.rest().await, vec![]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn following_an_unknown_task_is_a_404_and_a_bad_flag_a_400() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let store = cp.store().await;
    let task = new_task("known", TaskType::Update);
    store.create_task(&task).await.unwrap();

    let unknown = uuid_like();
    for path in [
        format!("/v1/databases/known/tasks/{unknown}/log?follow=true"),
        format!("/v1/databases/other/tasks/{}/log?follow=true", task.task_id),
        "/v1/databases/known/tasks/not-a-task/log?follow=true".to_string(),
    ] {
        let (status, body) = cp.call("GET", &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["name"], "not_found", "{body}");
    }
    let path = format!("/v1/databases/known/tasks/{}/log?follow=yes", task.task_id);
    let (status, body): (StatusCode, Value) = cp.call("GET", &path, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["path"], "follow", "{body}");
    // Without follow the answer is the page it always was.
    let path = format!(
        "/v1/databases/known/tasks/{}/log?follow=false",
        task.task_id
    );
    let (status, body) = cp.call("GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["task_status"], "pending", "{body}");
}

fn uuid_like() -> String {
    "0190a0a0-0000-7000-8000-000000000000".to_string()
}

/// etcd's own count of watchers (`etcd_debugging_mvcc_watcher_total` on its /metrics).
async fn etcd_watchers(etcd: &EtcdServer) -> u64 {
    let text = reqwest::get(format!("{}/metrics", etcd.endpoint()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .unwrap_or_else(|| panic!("no watcher gauge in etcd's metrics"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

/// Waits until etcd counts `want` watchers, for as long as a loaded machine may need; the
/// count it last saw if it never does.
async fn watchers_become(etcd: &EtcdServer, want: u64) -> u64 {
    let mut seen = etcd_watchers(etcd).await;
    for _ in 0..600 {
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = etcd_watchers(etcd).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_goes_away_leaves_no_watch_behind() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let store = cp.store().await;
    let db = "leaves";
    let task = new_task(db, TaskType::Update);
    store.create_task(&task).await.unwrap();
    store
        .append_log(db, &task.task_id, "one".to_string(), Map::new())
        .await
        .unwrap();
    let baseline = etcd_watchers(&etcd).await;

    // Three followers of a task that goes on: two watchers each (the log and the task).
    let mut followers = Vec::new();
    for _ in 0..3 {
        let mut f = Follow::open(&cp, db, &task.task_id, None).await;
        assert_eq!(f.next().await.unwrap().message, "one");
        followers.push(f);
    }
    assert_eq!(watchers_become(&etcd, baseline + 6).await, baseline + 6);
    // The clients go away while the task still runs: their watches go with them.
    drop(followers);
    assert_eq!(watchers_become(&etcd, baseline).await, baseline);
}
