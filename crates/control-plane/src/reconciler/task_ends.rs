//! How a task that is no longer the database's current one ends: a background reconcile
//! task or an older request's task superseded by a newer request, and a canceled task halted
//! (ADR 003, ADR 013).

use serde_json::Map;
use spec::{DatabaseState, Task, TaskStatus};
use store::{StoreError, StoredDatabase};

use super::Reconciler;
use super::pass::set_state;
use crate::tasks::transition;

impl Reconciler {
    /// Ends a background episode's reconcile task that a request's task took over from.
    pub(super) async fn end_episode(
        &self,
        database_id: &str,
        episode: &str,
        by: &str,
    ) -> Result<(), StoreError> {
        let Some(t) = self.store.get_task(database_id, episode).await? else {
            return Ok(());
        };
        if t.value.status.is_terminal() || t.value.task_type != spec::TaskType::Reconcile {
            return Ok(());
        }
        let note = format!("superseded by task {by}");
        self.store
            .append_log(database_id, episode, note.clone(), Map::new())
            .await?;
        transition(
            &*self.store,
            database_id,
            episode,
            TaskStatus::Canceled,
            Some(note),
        )
        .await
        .map(drop)
    }

    /// An older unfinished task of the database is replaced by the newer spec: it ends as
    /// canceled, saying which task took over, instead of hanging forever.
    pub(super) async fn supersede_older_tasks(
        &self,
        database_id: &str,
        current: &str,
    ) -> Result<(), StoreError> {
        let recent = self
            .store
            .list_tasks(
                database_id,
                Some(current),
                50,
                store::ListOrder::NewestFirst,
            )
            .await?;
        for t in recent.into_iter().filter(|t| !t.status.is_terminal()) {
            let note = format!("superseded by task {current}");
            self.store
                .append_log(database_id, &t.task_id, note.clone(), Map::new())
                .await?;
            transition(
                &*self.store,
                database_id,
                &t.task_id,
                TaskStatus::Canceled,
                Some(note),
            )
            .await?;
        }
        Ok(())
    }

    /// The current task is canceled, or was asked to be: it ends canceled (if it has not
    /// yet), and the database is `failed` until a new spec arrives. Nothing is planned.
    pub(super) async fn halt_canceled(
        &self,
        db: &StoredDatabase,
        task: &Task,
    ) -> Result<(), StoreError> {
        let id = &db.record.id;
        if task.status == TaskStatus::Canceling {
            self.store
                .append_log(
                    id,
                    &task.task_id,
                    "task canceled: its remaining steps will not run".to_string(),
                    Map::new(),
                )
                .await?;
            transition(
                &*self.store,
                id,
                &task.task_id,
                TaskStatus::Canceled,
                Some("canceled by request".into()),
            )
            .await?;
        }
        if task.task_type.is_operation() {
            // Canceled before it ran (a running operation cannot be canceled): nothing of
            // the database changed, so its state stays; the operation goes.
            if db.record.operation.is_some() {
                let record = store::DatabaseRecord {
                    operation: None,
                    ..db.record.clone()
                };
                match self
                    .store
                    .put_database_record(db.spec_revision, &record)
                    .await
                {
                    Ok(()) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        if db.record.state != DatabaseState::Failed {
            self.store
                .append_log(
                    id,
                    &task.task_id,
                    format!(
                        "database {id} is failed: its task was canceled; the next spec applies again"
                    ),
                    Map::new(),
                )
                .await?;
            set_state(&*self.store, db, DatabaseState::Failed).await?;
        }
        Ok(())
    }
}
