//! Following a real task's log (`?follow=true`) while the fleet runs it: a database with a
//! Postgres node and a service, created and then replaced by a force_update. A follower sees
//! every entry once, in order, exactly as the paged log has them, and its stream ends when
//! the task ends; one that breaks off and resumes with `after_entry_id` continues exactly.

use e2e::serde_json::{Value, json};
use e2e::{Fleet, seed_spec};

/// An NDJSON body read as it arrives.
struct Follow {
    response: e2e::reqwest::Response,
    buffer: Vec<u8>,
}

impl Follow {
    async fn open(fleet: &Fleet, db: &str, task: &str, after: Option<&str>) -> Follow {
        let mut url = format!(
            "{}/v1/databases/{db}/tasks/{task}/log?follow=true",
            fleet.api()
        );
        if let Some(a) = after {
            url.push_str(&format!("&after_entry_id={a}"));
        }
        let response = e2e::reqwest::get(url).await.expect("follow request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Follow {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next entry, None at a clean end; keep-alive blank lines are skipped.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(e2e::serde_json::from_slice(&line).expect("an entry per line"));
            }
            match self.response.chunk().await.expect("the body ends cleanly") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(self.buffer.is_empty(), "a partial last line");
                    return None;
                }
            }
        }
    }

    async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

fn ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["id"].as_str().expect("entry id").to_string())
        .collect()
}

/// The whole log as the paged API gives it.
async fn paged(fleet: &Fleet, db: &str, task: &str) -> Vec<Value> {
    let log = fleet
        .get(&format!("/v1/databases/{db}/tasks/{task}/log?limit=1000"))
        .await;
    assert!(
        matches!(
            log["task_status"].as_str(),
            Some("completed" | "failed" | "canceled")
        ),
        "{log}"
    );
    log["entries"].as_array().expect("entries").clone()
}

/// Follows `task` from the start with one client, and with another that breaks off after
/// `break_after` entries and resumes from the last id it got; both must see `paged` whole,
/// a log of at least `min_steps` steps.
async fn follow_whole_task(
    fleet: &Fleet,
    db: &str,
    task: &str,
    break_after: usize,
    min_steps: usize,
) {
    let mut whole = Follow::open(fleet, db, task, None).await;
    let mut broken = Follow::open(fleet, db, task, None).await;
    let mut resumed = Vec::new();
    while resumed.len() < break_after {
        match broken.next().await {
            Some(e) => resumed.push(e),
            None => break,
        }
    }
    drop(broken);
    let cursor = resumed
        .last()
        .map(|e| e["id"].as_str().unwrap().to_string());
    let mut again = Follow::open(fleet, db, task, cursor.as_deref()).await;
    let seen = whole.rest().await;
    resumed.extend(again.rest().await);

    let stored = paged(fleet, db, task).await;
    assert_eq!(ids(&seen), ids(&stored), "the follower saw another log");
    assert_eq!(seen, stored, "entries differ from the paged log's");
    assert_eq!(ids(&resumed), ids(&stored), "the resumed follower");
    // Several steps, each with its start and end on the log.
    let steps = |status: &str| {
        stored
            .iter()
            .filter(|e| e["fields"]["status"] == status && e["fields"]["step"].is_string())
            .count()
    };
    assert!(steps("started") >= min_steps, "{stored:#?}");
    assert_eq!(steps("started"), steps("done"), "{stored:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_sees_a_real_task_whole_and_its_stream_ends_with_it() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("follow");

    let created = fleet
        .post_ok(
            "/v1/databases",
            &json!({"id": db, "spec": seed_spec("app", &h1, "claude-sonnet-4-5")}),
        )
        .await;
    let task = created["task"]["task_id"].as_str().unwrap().to_string();
    // Postgres, the service's roles, the service.
    follow_whole_task(&fleet, &db, &task, 3, 3).await;
    assert_eq!(fleet.wait_task(&db, &task).await["status"], "completed");

    // force_update on an unchanged spec: a task that replaces every instance.
    let forced = fleet
        .post_ok(
            &format!("/v1/databases/{db}?force_update=true"),
            &json!({"spec": seed_spec("app", &h1, "claude-sonnet-4-5")}),
        )
        .await;
    let task = forced["task"]["task_id"].as_str().unwrap().to_string();
    // Postgres and the service, each replaced.
    follow_whole_task(&fleet, &db, &task, 5, 2).await;
    assert_eq!(fleet.wait_task(&db, &task).await["status"], "completed");
    let replaced: Vec<Value> = paged(&fleet, &db, &task)
        .await
        .into_iter()
        .filter(|e| e["fields"]["status"] == "done" && e["fields"]["step"] == "apply")
        .collect();
    assert_eq!(replaced.len(), 2, "postgres and the service: {replaced:#?}");
}
