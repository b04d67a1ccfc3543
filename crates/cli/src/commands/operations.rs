//! `berth switchover|failover DB NODE`, `berth restart|stop|start DB INSTANCE`: the
//! high-availability operations, with the API's paths and bodies (`spec::operations`).
//!
//! Each request starts a task of the database (`type` `switchover`, `failover`,
//! `restart_instance`, `stop_instance`, `start_instance`) that is printed, or followed with
//! `--wait`, as `apply` and `delete` do ([`super::tasks::started`]). A refusal (404
//! `not_found`, 400 `invalid_input`, 409 `operation_already_in_progress` or
//! `operation_not_possible`) exits 3 with every field path it names.

use reqwest::Method;
use serde_json::Value;
use spec::operations::{
    FailoverRequest, OperationResponse, RestartInstanceRequest, SwitchoverRequest,
};

use super::Ctx;
use super::tasks::started;
use crate::args::{InstanceArgs, NodeArgs, OperationCommand};
use crate::client::decode;
use crate::error::{CliError, Exit};

/// The HTTP request of an operation: `POST` of `segments` with `query` and `body`.
#[derive(Debug, PartialEq)]
pub struct Request<'a> {
    pub segments: Vec<&'a str>,
    pub query: Vec<(&'static str, &'static str)>,
    /// None for the operations without a body (stop, start).
    pub body: Option<Value>,
}

/// The request `command` sends, and whether to follow its task.
pub fn request<'a>(command: &'a OperationCommand) -> (Request<'a>, bool) {
    use OperationCommand::*;
    let node = |n: &'a NodeArgs, action| vec!["v1", "databases", &n.id, "nodes", &n.node, action];
    let instance = |i: &'a InstanceArgs, action| {
        vec!["v1", "databases", &i.id, "instances", &i.instance, action]
    };
    let (segments, query, body, wait) = match command {
        Switchover {
            node: n,
            candidate,
            at,
            wait,
        } => {
            let body = SwitchoverRequest {
                candidate_instance_id: candidate.clone(),
                scheduled_at: at.time,
            };
            (node(n, "switchover"), vec![], json(&body), wait)
        }
        Failover {
            node: n,
            candidate,
            skip_validation,
            wait,
        } => {
            let body = FailoverRequest {
                candidate_instance_id: candidate.clone(),
                skip_validation: *skip_validation,
            };
            (node(n, "failover"), vec![], json(&body), wait)
        }
        Restart {
            instance: i,
            at,
            wait,
        } => {
            let body = RestartInstanceRequest {
                scheduled_at: at.time,
            };
            (instance(i, "restart"), vec![], json(&body), wait)
        }
        Stop {
            instance: i,
            force,
            wait,
        } => {
            let force = ("force", if *force { "true" } else { "false" });
            (instance(i, "stop-instance"), vec![force], None, wait)
        }
        Start { instance: i, wait } => (instance(i, "start-instance"), vec![], None, wait),
    };
    let request = Request {
        segments,
        query,
        body,
    };
    (request, wait.wait)
}

/// A request body as JSON. The request types hold strings and times only: they always
/// serialize.
fn json(body: &impl serde::Serialize) -> Option<Value> {
    serde_json::to_value(body).ok()
}

/// Sends the operation, then prints its task or follows it to its end.
pub async fn run(ctx: &Ctx, command: OperationCommand) -> Result<Exit, CliError> {
    let (request, wait) = request(&command);
    let v = ctx
        .client
        .json(
            Method::POST,
            &request.segments,
            &request.query,
            request.body.as_ref(),
        )
        .await?;
    let answer: OperationResponse = decode("the answer", v.clone())?;
    started(ctx, &v, &answer.task, wait).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::args::{Cli, Command, parse_from};
    use crate::stand_in::{global, json as answer, server};

    fn parse(args: &[&str]) -> OperationCommand {
        let cli: Cli = parse_from(std::iter::once("berth").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Operation(op) => op,
            other => panic!("{args:?}: not an operation: {other:?}"),
        }
    }

    /// The path (with its query) and body `berth ARGS` sends, and whether it waits.
    fn sent(args: &[&str]) -> (String, Option<Value>, bool) {
        let command = parse(args);
        let (r, wait) = request(&command);
        let mut path = format!("/{}", r.segments.join("/"));
        for (i, (k, v)) in r.query.iter().enumerate() {
            path.push_str(&format!("{}{k}={v}", if i == 0 { '?' } else { '&' }));
        }
        (path, r.body, wait)
    }

    #[test]
    fn switchover_sends_the_candidate_and_the_time_in_utc() {
        assert_eq!(
            sent(&["switchover", "app", "n1"]),
            (
                "/v1/databases/app/nodes/n1/switchover".into(),
                Some(json!({})),
                false
            )
        );
        assert_eq!(
            sent(&[
                "switchover",
                "app",
                "n1",
                "--candidate",
                "app-n1-host-2",
                "--at",
                "2030-01-01T23:00:00+01:00",
                "--wait"
            ]),
            (
                "/v1/databases/app/nodes/n1/switchover".into(),
                Some(json!({
                    "candidate_instance_id": "app-n1-host-2",
                    "scheduled_at": "2030-01-01T22:00:00Z"
                })),
                true
            )
        );
    }

    #[test]
    fn failover_sends_skip_validation_always() {
        assert_eq!(
            sent(&["failover", "app", "n1"]),
            (
                "/v1/databases/app/nodes/n1/failover".into(),
                Some(json!({"skip_validation": false})),
                false
            )
        );
        let (_, body, _) = sent(&[
            "failover",
            "app",
            "n1",
            "--candidate",
            "app-n1-host-3",
            "--skip-validation",
        ]);
        assert_eq!(
            body,
            Some(json!({"candidate_instance_id": "app-n1-host-3", "skip_validation": true}))
        );
    }

    #[test]
    fn restart_stop_and_start_name_the_instance() {
        assert_eq!(
            sent(&[
                "restart",
                "app",
                "app-n1-host-1",
                "--at",
                "2030-01-01T22:00:00Z"
            ]),
            (
                "/v1/databases/app/instances/app-n1-host-1/restart".into(),
                Some(json!({"scheduled_at": "2030-01-01T22:00:00Z"})),
                false
            )
        );
        assert_eq!(
            sent(&["stop", "app", "app-n1-host-1", "--wait"]),
            (
                "/v1/databases/app/instances/app-n1-host-1/stop-instance?force=false".into(),
                None,
                true
            )
        );
        assert_eq!(
            sent(&["stop", "app", "app-n1-host-1", "--force"]).0,
            "/v1/databases/app/instances/app-n1-host-1/stop-instance?force=true"
        );
        assert_eq!(
            sent(&["start", "app", "app-n1-host-1"]),
            (
                "/v1/databases/app/instances/app-n1-host-1/start-instance".into(),
                None,
                false
            )
        );
    }

    #[test]
    fn a_wrong_command_line_is_refused() {
        let parse =
            |args: &[&str]| parse_from(std::iter::once("berth").chain(args.iter().copied()));
        for args in [
            &["switchover", "app"][..],
            &["switchover", "app", "n1", "--at", "tomorrow"],
            &["restart", "app", "i1", "--at", "2030-01-01 22:00"],
            &["failover", "app", "n1", "--at", "2030-01-01T22:00:00Z"],
            &["stop", "app", "i1", "--candidate", "i2"],
            &["start", "app", "i1", "--force"],
            &["restart", "app"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
        let e = parse(&["restart", "app", "i1", "--at", "tomorrow"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }

    #[test]
    fn help_says_what_patroni_does() {
        let help = |name: &str| {
            let mut cmd = crate::args::command();
            cmd.find_subcommand_mut(name)
                .expect(name)
                .render_long_help()
                .to_string()
        };
        assert!(help("switchover").contains("has caught up"));
        assert!(help("failover").contains("--skip-validation"));
        assert!(help("failover").contains("primary is healthy"));
        assert!(help("stop").contains("data directory stays"));
    }

    fn task(status: &str) -> Value {
        json!({
            "task_id": "0192", "database_id": "app", "scope": "database",
            "entity_id": "app", "type": "restart_instance", "status": status,
            "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:17Z"
        })
    }

    #[tokio::test]
    async fn the_task_is_submitted_or_followed_to_its_end() {
        let accepted = json!({ "task": task("pending") }).to_string();
        let (url, seen) = server(vec![answer("200 OK", &accepted)]).await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        let command = parse(&["restart", "app", "app-n1-host-1"]);
        assert_eq!(run(&ctx, command).await.unwrap(), Exit::Ok);
        assert_eq!(
            *seen.lock().unwrap(),
            ["POST /v1/databases/app/instances/app-n1-host-1/restart HTTP/1.1"]
        );

        let stream = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                      content-length: 0\r\nconnection: close\r\n\r\n";
        let (url, seen) = server(vec![
            answer("200 OK", &accepted),
            stream.as_bytes().to_vec(),
            answer("200 OK", &task("failed").to_string()),
        ])
        .await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        let command = parse(&["stop", "app", "app-n1-host-1", "--wait"]);
        assert_eq!(run(&ctx, command).await.unwrap(), Exit::TaskFailed);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "POST /v1/databases/app/instances/app-n1-host-1/stop-instance?force=false HTTP/1.1",
                "GET /v1/databases/app/tasks/0192/log?follow=true HTTP/1.1",
                "GET /v1/databases/app/tasks/0192 HTTP/1.1"
            ]
        );
    }

    #[tokio::test]
    async fn a_refusal_exits_3_with_every_field_path() {
        let refused = json!({
            "name": "operation_not_possible",
            "message": "app-n1-host-1 is the last running instance of node n1",
            "errors": [{"path": "force", "message": "set force=true to do so"}]
        })
        .to_string();
        let (url, _) = server(vec![answer("409 Conflict", &refused)]).await;
        let ctx = Ctx::new(&global(&url)).unwrap();
        let e = run(&ctx, parse(&["stop", "app", "app-n1-host-1"]))
            .await
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Refused);
        assert_eq!(
            e.to_string(),
            "operation_not_possible: app-n1-host-1 is the last running instance of node n1\n  \
             force: set force=true to do so"
        );
    }
}
