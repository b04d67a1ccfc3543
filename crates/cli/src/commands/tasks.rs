//! `berth logs`, `berth cancel`, `berth delete`, and following a task to its end.

use reqwest::Method;
use serde_json::Value;
use spec::{Task, TaskLog, TaskStatus};

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

/// `berth cancel ID TASK`.
pub async fn cancel(ctx: &Ctx, id: &str, task: &str) -> Result<Exit, CliError> {
    let v = ctx
        .client
        .json(
            Method::POST,
            &["v1", "databases", id, "tasks", task, "cancel"],
            &[],
            None,
        )
        .await?;
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

/// `berth delete ID [--wait]`.
pub async fn delete(ctx: &Ctx, id: &str, wait_for_it: bool) -> Result<Exit, CliError> {
    let v = ctx
        .client
        .json(Method::DELETE, &["v1", "databases", id], &[], None)
        .await?;
    let task: Task = decode("the delete task", v["task"].clone())?;
    if wait_for_it {
        return wait(ctx, &task).await;
    }
    submitted(ctx, &v, &task);
    Ok(Exit::Ok)
}

/// What a request that started a task prints when it is not followed.
pub fn submitted(ctx: &Ctx, answer: &Value, task: &Task) {
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
    use serde_json::json;

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
