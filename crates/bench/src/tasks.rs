//! When tasks end, seen through an etcd watch on the task keys: exact, and it puts no polling load on the
//! control plane under test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::Notify;

/// The id of the task an API answer (create, update, delete) started.
pub fn task_id(answer: &serde_json::Value) -> Result<String> {
    answer["task"]["task_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no task id in {answer}"))
}

#[derive(Debug, Clone)]
pub struct Ended {
    pub status: String,
    pub at: Instant,
}

pub struct TaskWatch {
    ended: Arc<Mutex<HashMap<String, Ended>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TaskWatch {
    /// Watches `{prefix}/tasks/` from now on.
    pub async fn start(endpoint: &str, prefix: &str) -> Result<TaskWatch> {
        let mut client = etcd_client::Client::connect([endpoint], None).await?;
        let mut stream = client
            .watch(
                format!("{prefix}/tasks/"),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        let ended: Arc<Mutex<HashMap<String, Ended>>> = Default::default();
        let changed = Arc::new(Notify::new());
        let (e, c) = (ended.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let at = Instant::now();
                for event in resp.events() {
                    if event.event_type() != EventType::Put {
                        continue;
                    }
                    let Some(kv) = event.kv() else { continue };
                    let Ok(task) = serde_json::from_slice::<serde_json::Value>(kv.value()) else {
                        continue;
                    };
                    let (Some(id), Some(status)) =
                        (task["task_id"].as_str(), task["status"].as_str())
                    else {
                        continue;
                    };
                    if matches!(status, "completed" | "failed" | "canceled") {
                        e.lock()
                            .expect("task watch lock")
                            .entry(id.to_string())
                            .or_insert(Ended {
                                status: status.to_string(),
                                at,
                            });
                    }
                }
                c.notify_waiters();
            }
        });
        Ok(TaskWatch {
            ended,
            changed,
            task,
        })
    }

    pub fn count_ended(&self, ids: &[String]) -> usize {
        let ended = self.ended.lock().expect("task watch lock");
        ids.iter().filter(|id| ended.contains_key(*id)).count()
    }

    /// Waits until every task in `ids` ended; returns them with when they ended.
    pub async fn wait_all(&self, ids: &[String], limit: Duration) -> Result<Vec<Ended>> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            {
                let ended = self.ended.lock().expect("task watch lock");
                if ids.iter().all(|id| ended.contains_key(id)) {
                    return Ok(ids.iter().map(|id| ended[id].clone()).collect());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} of {} tasks ended within {limit:?}",
                    self.count_ended(ids),
                    ids.len()
                );
            }
            // A bounded wait: a notification between the check and here is caught by the next check.
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(200)), notified)
                    .await;
        }
    }

    /// Waits until task `task` of database `db` ended; an error holding its log (read from
    /// `stack`'s API) unless it completed. When it ended.
    pub async fn wait_completed(
        &self,
        stack: &crate::procs::Stack,
        db: &str,
        task: &str,
        limit: Duration,
    ) -> Result<Instant> {
        let ended = self.wait_all(&[task.to_string()], limit).await?;
        if ended[0].status != "completed" {
            let log = stack
                .get(&format!("/v1/databases/{db}/tasks/{task}/log?limit=1000"))
                .await
                .unwrap_or_default();
            bail!("task {task} ended {}: {log}", ended[0].status);
        }
        Ok(ended[0].at)
    }
}

/// Task `task` of database `db`'s log from `stack`'s API, each line at its offset in seconds
/// from `from`.
pub async fn task_log(
    stack: &crate::procs::Stack,
    db: &str,
    task: &str,
    from: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>> {
    let log = stack
        .get(&format!("/v1/databases/{db}/tasks/{task}/log?limit=1000"))
        .await?;
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    Ok(entries
        .iter()
        .filter_map(|e| {
            let at: chrono::DateTime<chrono::Utc> = e["timestamp"].as_str()?.parse().ok()?;
            let offset = (at - from).num_milliseconds() as f64 / 1000.0;
            Some(format!("+{offset:.2}s {}", e["message"].as_str()?))
        })
        .collect())
}
