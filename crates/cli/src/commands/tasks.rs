//! `berth logs`, `berth cancel`, `berth delete`, and following a task to its end: what
//! every command that starts a task does next ([`started`]).

use reqwest::Method;
use serde_json::{Value, json};
use spec::{ListTasksResponse, Task, TaskLog, TaskStatus, TaskType};

use super::{Ctx, out, out_json};
use crate::args::{LogsArgs, Output};
use crate::client::decode;
use crate::error::{CliError, Exit};
use crate::follow::follow;
use crate::progress::{Progress, fmt_duration};
use crate::table;

/// How a task's end reads as an exit code.
pub fn exit_of(status: TaskStatus) -> Exit {
    match status {
        TaskStatus::Completed => Exit::Ok,
        TaskStatus::Canceled | TaskStatus::Canceling => Exit::TaskCanceled,
        TaskStatus::Failed | TaskStatus::Pending | TaskStatus::Running => Exit::TaskFailed,
    }
}

/// The line that tells how a followed task ended: on stdout when it completed, on stderr
/// (as an error) otherwise.
pub fn ending(task: &Task) -> (Exit, String) {
    let took = task
        .completed_at
        .and_then(|end| (end - task.created_at).to_std().ok())
        .map(|d| format!(" in {}", fmt_duration(d)))
        .unwrap_or_default();
    let what = format!(
        "{} task {} of database {}",
        table::name_of(&task.task_type),
        task.task_id,
        task.database_id
    );
    let error = task
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    let exit = exit_of(task.status);
    let line = match exit {
        Exit::Ok => format!("{what} completed{took}"),
        _ => format!("{what} {}{took}{error}", table::name_of(&task.status)),
    };
    (exit, line)
}

/// The first line of a followed task, before its log: its id and how to follow it again
/// after an interrupt (Ctrl-C), which would otherwise leave no task id on the screen.
pub fn following(task: &Task) -> String {
    format!(
        "task {} ({}) for database {}; follow again with: berth logs {} {} -f",
        task.task_id,
        table::name_of(&task.task_type),
        task.database_id,
        task.database_id,
        task.task_id
    )
}

/// Follows a task until it ends, showing its log as the output mode wants; prints first
/// which task it follows (on stderr with `-o json`, whose stdout stays the task's JSON), then
/// how it ended (the task's JSON with `-o json`), and returns the exit code that says so.
pub async fn wait(ctx: &Ctx, task: &Task) -> Result<Exit, CliError> {
    let progress = match ctx.output {
        Output::Table => {
            out(&following(task));
            Progress::stdout()
        }
        Output::Json => {
            eprintln!("{}", following(task));
            Progress::stderr_if_terminal()
        }
    };
    wait_with(ctx, &task.database_id, &task.task_id, progress, true).await
}

/// [`wait`] with the display given; `task_json`: print the ended task's JSON with `-o json`
/// (not for `logs -f`, whose stdout is the entries' NDJSON only).
async fn wait_with(
    ctx: &Ctx,
    database_id: &str,
    task_id: &str,
    mut progress: Progress,
    task_json: bool,
) -> Result<Exit, CliError> {
    let result = follow(
        &ctx.client,
        database_id,
        task_id,
        None,
        |e| progress.entry(e),
        |e, wait| eprintln!("warning: {e}; following again in {}", fmt_duration(wait)),
    )
    .await;
    progress.finish();
    let (task, value) = result?;
    let (exit, line) = ending(&task);
    if ctx.output == Output::Json {
        if task_json {
            out_json(&value);
        }
        if exit != Exit::Ok {
            eprintln!("error: {line}");
        }
    } else if exit == Exit::Ok {
        out(&line);
    } else {
        eprintln!("error: {line}");
    }
    Ok(exit)
}

/// `berth logs ID TASK [-f]`.
pub async fn logs(ctx: &Ctx, args: LogsArgs) -> Result<Exit, CliError> {
    if args.follow {
        let progress = match ctx.output {
            Output::Table => Progress::stdout(),
            Output::Json => Progress::ndjson(Box::new(std::io::stdout())),
        };
        return wait_with(ctx, &args.id, &args.task, progress, false).await;
    }
    let path = ["v1", "databases", &args.id, "tasks", &args.task, "log"];
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000")];
        if let Some(a) = &after {
            query.push(("after_entry_id", a.as_str()));
        }
        let v = ctx.client.json(Method::GET, &path, &query, None).await?;
        let raw: Vec<Value> = v["entries"].as_array().cloned().unwrap_or_default();
        let page: TaskLog = decode("the task log", v)?;
        if page.entries.is_empty() {
            return Ok(Exit::Ok);
        }
        for (entry, raw) in page.entries.iter().zip(&raw) {
            match ctx.output {
                Output::Json => out(&raw.to_string()),
                Output::Table => out(&table::log_line(entry)),
            }
        }
        after = page.entries.last().map(|e| e.id.clone());
    }
}

/// `berth cancel ID TASK`. A task that already ended is refused (exit 3) naming its status
/// as the API spells it (`completed`).
pub async fn cancel(ctx: &Ctx, id: &str, task: &str) -> Result<Exit, CliError> {
    let v = match ctx
        .client
        .json(
            Method::POST,
            &["v1", "databases", id, "tasks", task, "cancel"],
            &[],
            None,
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return Err(already_ended(ctx, id, task, e).await),
    };
    if ctx.output == Output::Json {
        out_json(&v);
    } else {
        let t: Task = decode("the task", v)?;
        out(&format!(
            "task {}: {}",
            t.task_id,
            table::name_of(&t.status)
        ));
    }
    Ok(Exit::Ok)
}

/// A cancel's refusal as printed: the control plane's `409 task_not_cancelable` message
/// names the status by its Rust name ("already ended as Completed"), so the message is made
/// again from the task's status in the API's spelling. Any other error is returned as it is,
/// and so is this one when the task cannot be read.
async fn already_ended(ctx: &Ctx, id: &str, task_id: &str, e: CliError) -> CliError {
    let CliError::Refused { status: 409, body } = &e else {
        return e;
    };
    if body.name != "task_not_cancelable" {
        return e;
    }
    let task = match ctx
        .client
        .get(&["v1", "databases", id, "tasks", task_id])
        .await
    {
        Ok(v) => decode::<Task>("the task", v),
        Err(other) => Err(other),
    };
    match task {
        Ok(t) if t.status.is_terminal() => CliError::Refused {
            status: 409,
            body: spec::ApiErrorBody {
                name: body.name.clone(),
                message: format!(
                    "task {} already ended as {}",
                    t.task_id,
                    table::name_of(&t.status)
                ),
                errors: Vec::new(),
            },
        },
        _ => e,
    }
}

/// `berth delete ID [--wait]`. A database already being deleted is not an error: the
/// delete under way is followed (`--wait`) or named, as if this command had started it.
pub async fn delete(ctx: &Ctx, id: &str, wait_for_it: bool) -> Result<Exit, CliError> {
    let v = match ctx
        .client
        .json(Method::DELETE, &["v1", "databases", id], &[], None)
        .await
    {
        Ok(v) => v,
        Err(refused) if is_delete_under_way(&refused) => {
            let Some((task, v)) = running_delete(ctx, id).await? else {
                return Err(refused);
            };
            if wait_for_it {
                return wait(ctx, &task).await;
            }
            if ctx.output == Output::Json {
                out_json(&json!({ "task": v }));
            } else {
                out(&format!(
                    "database {id} is already being deleted by task {}; follow it with: \
                     berth logs {id} {} -f",
                    task.task_id, task.task_id
                ));
            }
            return Ok(Exit::Ok);
        }
        Err(e) => return Err(e),
    };
    let task: Task = decode("the delete task", v["task"].clone())?;
    started(ctx, &v, &task, wait_for_it).await
}

/// Whether the API refused a delete because one is already under way: `409
/// database_not_modifiable` ("database "x" is already being deleted"), the control plane's
/// answer to a DELETE of a database in state `deleting`.
fn is_delete_under_way(e: &CliError) -> bool {
    matches!(e, CliError::Refused { status: 409, body } if body.name == "database_not_modifiable")
}

/// The database's newest delete task if it has not ended, with its JSON; None otherwise.
async fn running_delete(ctx: &Ctx, id: &str) -> Result<Option<(Task, Value)>, CliError> {
    let v = ctx
        .client
        .json(
            Method::GET,
            &["v1", "databases", id, "tasks"],
            &[("limit", "100")],
            None,
        )
        .await?;
    let raw: Vec<Value> = v["tasks"].as_array().cloned().unwrap_or_default();
    let list: ListTasksResponse = decode("the tasks", v)?;
    // Newest first: the first delete is the one the database's state comes from.
    Ok(list
        .tasks
        .into_iter()
        .zip(raw)
        .find(|(t, _)| t.task_type == TaskType::Delete)
        .filter(|(t, _)| !t.status.is_terminal()))
}

/// What a request that started `task` (the API's `answer`, as it came) does next: follows
/// the task to its end with `--wait` ([`wait`]), or else prints its id (the answer with `-o
/// json`) and returns at once.
pub async fn started(
    ctx: &Ctx,
    answer: &Value,
    task: &Task,
    wait_for_it: bool,
) -> Result<Exit, CliError> {
    if wait_for_it {
        return wait(ctx, task).await;
    }
    submitted(ctx, answer, task);
    Ok(Exit::Ok)
}

/// What a request that started a task prints when it is not followed.
fn submitted(ctx: &Ctx, answer: &Value, task: &Task) {
    if ctx.output == Output::Json {
        out_json(answer);
    } else {
        out(&format!(
            "{} task {} of database {} submitted; follow it with: berth logs {} {} -f",
            table::name_of(&task.task_type),
            task.task_id,
            task.database_id,
            task.database_id,
            task.task_id
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stand_in::{global, json as answer, server};

    #[tokio::test]
    async fn deleting_a_database_already_being_deleted_reports_the_delete_under_way() {
        let refused = r#"{"name":"database_not_modifiable","message":"database \"example\" is already being deleted"}"#;
        let mut running = task("running", None);
        running.task_type = TaskType::Delete;
        let tasks = json!({"tasks": [running, task("completed", None)]}).to_string();
        let (url, seen) = server(vec![
            answer("409 Conflict", refused),
            answer("200 OK", &tasks),
        ])
        .await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        assert_eq!(delete(&ctx, "example", false).await.unwrap(), Exit::Ok);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "DELETE /v1/databases/example HTTP/1.1",
                "GET /v1/databases/example/tasks?limit=100 HTTP/1.1"
            ]
        );
    }

    #[tokio::test]
    async fn delete_wait_follows_the_delete_under_way() {
        let refused = r#"{"name":"database_not_modifiable","message":"database \"example\" is already being deleted"}"#;
        let mut running = task("running", None);
        running.task_type = TaskType::Delete;
        let tasks = json!({"tasks": [running]}).to_string();
        let mut done = task("completed", None);
        done.task_type = TaskType::Delete;
        let stream = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                      content-length: 0\r\nconnection: close\r\n\r\n";
        let (url, seen) = server(vec![
            answer("409 Conflict", refused),
            answer("200 OK", &tasks),
            stream.as_bytes().to_vec(),
            answer("200 OK", &json!(done).to_string()),
        ])
        .await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        assert_eq!(delete(&ctx, "example", true).await.unwrap(), Exit::Ok);
        assert_eq!(
            seen.lock().unwrap()[2..],
            [
                "GET /v1/databases/example/tasks/0192/log?follow=true HTTP/1.1",
                "GET /v1/databases/example/tasks/0192 HTTP/1.1"
            ]
        );
    }

    #[tokio::test]
    async fn cancelling_an_ended_task_names_its_status_as_the_api_spells_it() {
        let refused = r#"{"name":"task_not_cancelable","message":"task \"0192\" already ended as Completed"}"#;
        let (url, seen) = server(vec![
            answer("409 Conflict", refused),
            answer("200 OK", &json!(task("completed", None)).to_string()),
        ])
        .await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        let e = cancel(&ctx, "example", "0192").await.unwrap_err();
        assert_eq!(e.exit(), Exit::Refused);
        assert_eq!(
            e.to_string(),
            "task_not_cancelable: task 0192 already ended as completed"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn another_refusal_of_a_delete_stays_a_refusal() {
        // The 409 without a delete under way (it ended): the API's refusal, exit 3.
        let refused = r#"{"name":"database_not_modifiable","message":"database \"example\" is already being deleted"}"#;
        let mut ended = task("failed", Some("boom"));
        ended.task_type = TaskType::Delete;
        let tasks = json!({"tasks": [ended]}).to_string();
        let (url, _) = server(vec![
            answer("409 Conflict", refused),
            answer("200 OK", &tasks),
        ])
        .await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        let e = delete(&ctx, "example", false).await.unwrap_err();
        assert_eq!(e.exit(), Exit::Refused);
        assert!(
            e.to_string().starts_with("database_not_modifiable: "),
            "{e}"
        );
    }

    fn task(status: &str, error: Option<&str>) -> Task {
        let mut v = json!({
            "task_id": "0192", "database_id": "example", "scope": "database",
            "entity_id": "example", "type": "create", "status": status,
            "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:17Z",
            "completed_at": "2025-01-02T03:04:17.300Z"
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_followed_task_is_named_first_with_the_command_that_follows_it_again() {
        assert_eq!(
            following(&task("pending", None)),
            "task 0192 (create) for database example; follow again with: \
             berth logs example 0192 -f"
        );
    }

    #[test]
    fn a_completed_task_exits_0_and_says_how_long_it_took() {
        assert_eq!(
            ending(&task("completed", None)),
            (
                Exit::Ok,
                "create task 0192 of database example completed in 12.3s".to_string()
            )
        );
    }

    #[test]
    fn a_failed_or_canceled_task_exits_non_zero_with_its_error() {
        let (exit, line) = ending(&task(
            "failed",
            Some("creating service instance mcp-server on host-1 failed: image missing"),
        ));
        assert_eq!(exit, Exit::TaskFailed);
        assert_eq!(
            line,
            "create task 0192 of database example failed in 12.3s: \
             creating service instance mcp-server on host-1 failed: image missing"
        );
        let (exit, line) = ending(&task("canceled", Some("superseded by task 0193")));
        assert_eq!(exit, Exit::TaskCanceled);
        assert!(
            line.ends_with("canceled in 12.3s: superseded by task 0193"),
            "{line}"
        );
    }
}
