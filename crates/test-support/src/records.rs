//! The records the store's tests write: a database's record and a task, with the fields a
//! test does not care about filled in one place (a new field of either is added here once).

use chrono::Utc;
use spec::{DatabaseState, Task, TaskStatus, TaskType};
use store::DatabaseRecord;

/// A pending task of type `task_type` on database `database_id` (scope `database`), with a
/// fresh time-ordered id, created now.
pub fn task(database_id: &str, task_type: TaskType) -> Task {
    Task {
        task_id: uuid::Uuid::now_v7().to_string(),
        database_id: database_id.into(),
        scope: "database".into(),
        entity_id: database_id.into(),
        task_type,
        status: TaskStatus::Pending,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        completed_at: None,
        error: None,
    }
}

/// The record of database `id` at `generation`, `creating`, created and updated now, with no
/// current task, tenant, operation, stopped instances or restored nodes. A test that needs
/// one of those sets it with `DatabaseRecord { field, ..record(id, generation) }`.
pub fn record(id: &str, generation: u64) -> DatabaseRecord {
    DatabaseRecord {
        id: id.into(),
        state: DatabaseState::Creating,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        generation,
        current_task_id: None,
        tenant_id: None,
        forced_generation: 0,
        operation: None,
        stopped_instances: Default::default(),
        stopped_primaries: Default::default(),
        restored_nodes: Default::default(),
    }
}
