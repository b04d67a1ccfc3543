//! Where a pass says what it does: the log of the task that carries the change, and the
//! process log. A pass with no task of a request's (healing, finishing what a failed task
//! left) opens a task of type `reconcile` the first time it has something to say, so that
//! every change the control plane makes is on some task.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use spec::{TaskStatus, TaskType};
use store::{StateStore, StoreError};

use crate::tasks::{new_task, transition};

/// A pass's task log. Cloning shares the (possibly not yet opened) reconcile task.
#[derive(Clone)]
pub(crate) struct TaskLog {
    store: Arc<dyn StateStore>,
    pub database_id: String,
    task: Arc<Mutex<Option<String>>>,
    /// Whether a reconcile task may be opened when there is no task yet.
    opens_reconcile: bool,
}

impl TaskLog {
    /// The log of `task_id`, or, without one, of a reconcile task opened when first needed
    /// (`reconcile` false: process log only, as for the orphans of a deleted database).
    pub fn new(
        store: Arc<dyn StateStore>,
        database_id: &str,
        task_id: Option<String>,
        reconcile: bool,
    ) -> Self {
        TaskLog {
            store,
            database_id: database_id.to_string(),
            task: Arc::new(Mutex::new(task_id)),
            opens_reconcile: reconcile,
        }
    }

    /// The task lines go to, if one is open.
    pub fn task_id(&self) -> Option<String> {
        self.task.lock().expect("task log lock").clone()
    }

    /// The task lines go to, opening a reconcile task if there is none yet.
    pub async fn ensure_task(&self) -> Result<Option<String>, StoreError> {
        if let Some(id) = self.task_id() {
            return Ok(Some(id));
        }
        if !self.opens_reconcile {
            return Ok(None);
        }
        let mut task = new_task(&self.database_id, TaskType::Reconcile);
        task.status = TaskStatus::Running;
        self.store.create_task(&task).await?;
        tracing::info!(database_id = %self.database_id, task_id = %task.task_id, "opened a reconcile task");
        *self.task.lock().expect("task log lock") = Some(task.task_id.clone());
        self.store
            .append_log(
                &self.database_id,
                &task.task_id,
                "task started: reconcile of database ".to_string()
                    + &self.database_id
                    + " (no request: the control plane acts on what it observed)",
                Map::new(),
            )
            .await?;
        Ok(Some(task.task_id))
    }

    /// A line that records a change: it opens a reconcile task if needed.
    pub async fn line(
        &self,
        message: impl Into<String>,
        fields: Map<String, Value>,
    ) -> Result<(), StoreError> {
        let message = message.into();
        tracing::info!(database_id = %self.database_id, fields = %serde_json::Value::Object(fields.clone()), "{message}");
        match self.ensure_task().await? {
            Some(task_id) => self
                .store
                .append_log(&self.database_id, &task_id, message, fields)
                .await
                .map(drop),
            None => Ok(()),
        }
    }

    /// Lines that record a change, written in one batch (an agent's progress lines, ADR 014):
    /// like [`TaskLog::line`] each, in one store write.
    pub async fn lines(&self, lines: Vec<(String, Map<String, Value>)>) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        for (message, fields) in &lines {
            tracing::info!(database_id = %self.database_id, fields = %serde_json::Value::Object(fields.clone()), "{message}");
        }
        match self.ensure_task().await? {
            Some(task_id) => self
                .store
                .append_logs(&self.database_id, &task_id, lines)
                .await
                .map(drop),
            None => Ok(()),
        }
    }

    /// A line about waiting, not a change: it goes to an open task only.
    pub async fn note(
        &self,
        message: impl Into<String>,
        fields: Map<String, Value>,
    ) -> Result<(), StoreError> {
        let message = message.into();
        tracing::info!(database_id = %self.database_id, fields = %serde_json::Value::Object(fields.clone()), "{message}");
        match self.task_id() {
            Some(task_id) => self
                .store
                .append_log(&self.database_id, &task_id, message, fields)
                .await
                .map(drop),
            None => Ok(()),
        }
    }

    /// Ends the open task, if any, as `status`.
    pub async fn end(&self, status: TaskStatus, error: Option<String>) -> Result<(), StoreError> {
        if let Some(task_id) = self.task_id() {
            transition(&*self.store, &self.database_id, &task_id, status, error).await?;
        }
        Ok(())
    }
}

/// Log fields from string pairs.
pub(crate) fn fields(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}
