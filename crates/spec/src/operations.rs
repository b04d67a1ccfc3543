//! Operations on a running database's Postgres instances, with the reference API's paths
//! and bodies: switchover and failover of a node's primary, and restart, stop and start of
//! one instance. Each is a task of the database, serialised with its other tasks.
//!
//! Bodies are read by hand, as specs are ([`crate::parse`]), so that every offending field
//! is named by its JSON path; the structs here type them for the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{FieldError, InvalidInput};
use crate::{Task, TaskType};

/// `POST /v1/databases/{database_id}/nodes/{node_name}/switchover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwitchoverRequest {
    /// The replica to hand the primary role to (1-63 characters); absent: the healthy
    /// replica Patroni picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 63)]
    pub candidate_instance_id: Option<String>,
    /// RFC 3339 time at which Patroni switches over; absent: now. Must be in the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// `POST /v1/databases/{database_id}/nodes/{node_name}/failover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverRequest {
    /// The replica to promote; absent: the healthy replica that lags least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 63)]
    pub candidate_instance_id: Option<String>,
    /// `true`: fail over even while the node's primary is healthy (as the reference API,
    /// which otherwise refuses: a healthy primary is moved by a switchover).
    #[serde(default)]
    pub skip_validation: bool,
}

/// `POST /v1/databases/{database_id}/instances/{instance_id}/restart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestartInstanceRequest {
    /// RFC 3339 time at which Patroni restarts the instance's Postgres; absent: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// `POST /v1/databases/{database_id}/nodes/{node_name}/backups` (the reference API's body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupRequest {
    /// `full`, `diff` or `incr` (pgBackRest's types).
    #[serde(rename = "type")]
    pub backup_type: crate::backup::BackupType,
    /// Kept with the backup and listed with it: at most 16, keys 1-64 and values 1-256
    /// characters without control characters (they become `--annotation=key=value`). Keys
    /// starting `berth.` are berth's own ([`RESERVED_ANNOTATION_PREFIX`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `POST /v1/databases/{database_id}/restore` (the reference API's body): each target node is
/// rebuilt from the backup `restore_config` names (ADR 025).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreRequest {
    /// The backup to restore from, as a spec's `restore_config` names it. An inline
    /// repository carries no keys here (they would be stored in plain text in the task):
    /// name a repository of the node's `backup_config` by id to use its keys.
    pub restore_config: crate::backup::RestoreConfig,
    /// The nodes to restore; absent or empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_nodes: Vec<String>,
}

/// The answer of every operation: its task (`type` `switchover`, `failover`,
/// `restart_instance`, `stop_instance`, `start_instance`, `node_backup` or `restore`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationResponse {
    pub task: Task,
}

/// An accepted operation, as the database's record keeps it until its task has carried it
/// out. `leader` is the node's primary when the request was accepted: a leader that
/// restarts after the operation ran (and before it recorded so) sees the primary moved and
/// does not move it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Operation {
    Switchover {
        node: String,
        leader: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        candidate: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_at: Option<DateTime<Utc>>,
    },
    Failover {
        node: String,
        /// None when the node had no primary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<String>,
        candidate: String,
    },
    RestartInstance {
        instance_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_at: Option<DateTime<Utc>>,
    },
    /// Stopped instances keep their data directory and host ports; the reconciler keeps
    /// their container away until a start.
    StopInstance {
        instance_id: String,
        /// The replica that takes over first, when the instance is its node's primary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hand_over_to: Option<String>,
    },
    StartInstance {
        instance_id: String,
    },
    /// A backup of `node`, taken on its primary into each of its repositories.
    Backup {
        node: String,
        backup_type: crate::backup::BackupType,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        annotations: BTreeMap<String, String>,
    },
    /// Each of `nodes` rebuilt from the backup `restore_config` names: its instances and
    /// their data removed, then its first instance restored by pgBackRest and the others
    /// cloned from it (ADR 025).
    Restore {
        nodes: Vec<String>,
        restore_config: Box<crate::backup::RestoreConfig>,
    },
}

impl Operation {
    /// The type of the task that carries it.
    pub fn task_type(&self) -> TaskType {
        match self {
            Operation::Switchover { .. } => TaskType::Switchover,
            Operation::Failover { .. } => TaskType::Failover,
            Operation::RestartInstance { .. } => TaskType::RestartInstance,
            Operation::StopInstance { .. } => TaskType::StopInstance,
            Operation::StartInstance { .. } => TaskType::StartInstance,
            Operation::Backup { .. } => TaskType::NodeBackup,
            Operation::Restore { .. } => TaskType::Restore,
        }
    }
}

/// Reads a switchover body (`{}` or an empty body is valid). `now` is what `scheduled_at`
/// must be after. Errors: each offending field by JSON path (an unknown field, a candidate
/// that is not a string of 1-63 characters, a time that is not RFC 3339 or not in the
/// future).
pub fn parse_switchover(
    body: &Value,
    now: DateTime<Utc>,
) -> Result<SwitchoverRequest, InvalidInput> {
    let mut errors = Vec::new();
    let obj = object(
        body,
        &["candidate_instance_id", "scheduled_at"],
        &mut errors,
    );
    let request = SwitchoverRequest {
        candidate_instance_id: candidate(&obj, &mut errors),
        scheduled_at: scheduled_at(&obj, now, &mut errors),
    };
    done(request, errors)
}

/// Reads a failover body. Errors as [`parse_switchover`]; `skip_validation` must be a
/// boolean.
pub fn parse_failover(body: &Value) -> Result<FailoverRequest, InvalidInput> {
    let mut errors = Vec::new();
    let obj = object(
        body,
        &["candidate_instance_id", "skip_validation"],
        &mut errors,
    );
    let skip_validation = match obj.get("skip_validation") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("skip_validation", "must be a boolean"));
            false
        }
    };
    let request = FailoverRequest {
        candidate_instance_id: candidate(&obj, &mut errors),
        skip_validation,
    };
    done(request, errors)
}

/// Reads a restart body. Errors as [`parse_switchover`].
pub fn parse_restart(
    body: &Value,
    now: DateTime<Utc>,
) -> Result<RestartInstanceRequest, InvalidInput> {
    let mut errors = Vec::new();
    let obj = object(body, &["scheduled_at"], &mut errors);
    let request = RestartInstanceRequest {
        scheduled_at: scheduled_at(&obj, now, &mut errors),
    };
    done(request, errors)
}

/// Reads the body of `stop-instance` and `start-instance`, which take none (their `force`
/// is a query parameter, as in the reference API): absent, empty or `{}`. Errors: each
/// field given, by name.
pub fn parse_no_body(body: &Value) -> Result<(), InvalidInput> {
    let errors = match body {
        Value::Null => Vec::new(),
        Value::Object(m) => m
            .keys()
            .map(|k| {
                FieldError::new(
                    k.clone(),
                    "unknown field: this request takes no body (force is a query parameter: \
                     ?force=true)",
                )
            })
            .collect(),
        _ => vec![FieldError::new("", "request body: expected none, or {}")],
    };
    done((), errors)
}

/// Annotations of a backup: what pgBackRest takes.
pub const MAX_ANNOTATIONS: usize = 16;

/// Backup annotation keys berth sets itself (`berth.task_id`, the task that took the
/// backup): a request's annotations may not use them, in any case (`BERTH.` reads as
/// berth's to a person).
pub const RESERVED_ANNOTATION_PREFIX: &str = "berth.";

/// Reads a backup body: `type` required; `annotations` an object of strings. Errors: each
/// offending field by JSON path.
pub fn parse_backup(body: &Value) -> Result<BackupRequest, InvalidInput> {
    let mut errors = Vec::new();
    let obj = object(body, &["type", "annotations"], &mut errors);
    let backup_type = match obj.get("type") {
        Some(Value::String(s)) => crate::backup::BackupType::parse(s),
        _ => None,
    };
    if backup_type.is_none() {
        errors.push(FieldError::new("type", "required: one of full, diff, incr"));
    }
    let mut annotations = BTreeMap::new();
    match obj.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if m.len() > MAX_ANNOTATIONS {
                errors.push(FieldError::new(
                    "annotations",
                    format!("at most {MAX_ANNOTATIONS} annotations"),
                ));
            }
            for (k, v) in m {
                let path = format!("annotations.{k}");
                let key_ok = (1..=64).contains(&k.len())
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if k.to_ascii_lowercase()
                    .starts_with(RESERVED_ANNOTATION_PREFIX)
                {
                    errors.push(FieldError::new(
                        path,
                        format!("keys starting {RESERVED_ANNOTATION_PREFIX} are berth's own"),
                    ));
                    continue;
                }
                match v {
                    Value::String(s)
                        if key_ok
                            && (1..=256).contains(&s.chars().count())
                            && !s.chars().any(char::is_control) =>
                    {
                        annotations.insert(k.clone(), s.clone());
                    }
                    _ if !key_ok => errors.push(FieldError::new(
                        path,
                        "the key must be 1-64 letters, digits, '-', '_' or '.'",
                    )),
                    _ => errors.push(FieldError::new(
                        path,
                        "must be a string of 1-256 characters without control characters",
                    )),
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "annotations",
            "must be an object of strings",
        )),
    }
    match backup_type {
        Some(backup_type) if errors.is_empty() => Ok(BackupRequest {
            backup_type,
            annotations,
        }),
        _ => Err(InvalidInput { errors }),
    }
}

/// Reads a restore body: `restore_config` required, by a spec's rules, with no key in an
/// inline repository; `target_nodes` an array of node names, each once. Whether the nodes
/// exist and the repository id is theirs is the caller's to check. Errors: each offending
/// field by JSON path.
pub fn parse_restore(body: &Value) -> Result<RestoreRequest, InvalidInput> {
    let mut errors = Vec::new();
    let obj = object(body, &["restore_config", "target_nodes"], &mut errors);
    let restore_config = match obj.get("restore_config") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("restore_config", "required"));
            None
        }
        Some(v) => crate::parse::restore_config_at(v, "restore_config", &mut errors),
    };
    if let Some(crate::backup::RestoreConfig {
        repository: crate::backup::RestoreRepository::Inline(r),
        ..
    }) = &restore_config
    {
        for (key, given) in [
            ("s3_key", r.s3_key.is_some()),
            ("s3_key_secret", r.s3_key_secret.is_some()),
        ] {
            if given {
                errors.push(FieldError::new(
                    format!("restore_config.repository.{key}"),
                    "a restore request carries no keys: name a repository of the node's \
                     backup_config by id to restore with its keys",
                ));
            }
        }
    }
    let mut target_nodes: Vec<String> = Vec::new();
    match obj.get("target_nodes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("target_nodes[{i}]");
                match item {
                    Value::String(n) if target_nodes.contains(n) => {
                        errors.push(FieldError::new(path, "named twice"));
                    }
                    Value::String(n) => match crate::ident::validate_node_name(n) {
                        Ok(()) => target_nodes.push(n.clone()),
                        Err(msg) => errors.push(FieldError::new(path, msg)),
                    },
                    _ => errors.push(FieldError::new(path, "expected a node name")),
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "target_nodes",
            "expected an array of node names",
        )),
    }
    match restore_config {
        Some(restore_config) if errors.is_empty() => Ok(RestoreRequest {
            restore_config,
            target_nodes,
        }),
        _ => Err(InvalidInput { errors }),
    }
}

fn done<T>(value: T, errors: Vec<FieldError>) -> Result<T, InvalidInput> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(InvalidInput { errors })
    }
}

/// The body as an object of known fields; null (no body) is an empty one.
fn object(body: &Value, known: &[&str], errors: &mut Vec<FieldError>) -> Map<String, Value> {
    match body {
        Value::Null => Map::new(),
        Value::Object(m) => {
            for key in m.keys().filter(|k| !known.contains(&k.as_str())) {
                errors.push(FieldError::new(
                    key.clone(),
                    format!("unknown field; expected one of: {}", known.join(", ")),
                ));
            }
            m.clone()
        }
        _ => {
            errors.push(FieldError::new("", "request body: expected a JSON object"));
            Map::new()
        }
    }
}

fn candidate(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match obj.get("candidate_instance_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if (1..=63).contains(&s.len()) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "candidate_instance_id",
                "must be an instance id: a string of 1 to 63 characters",
            ));
            None
        }
    }
}

fn scheduled_at(
    obj: &Map<String, Value>,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let raw = match obj.get("scheduled_at") {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => s,
        Some(_) => {
            errors.push(FieldError::new(
                "scheduled_at",
                "must be an RFC 3339 time such as 2030-01-01T22:00:00Z",
            ));
            return None;
        }
    };
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) if t.with_timezone(&Utc) > now => Some(t.with_timezone(&Utc)),
        Ok(_) => {
            errors.push(FieldError::new(
                "scheduled_at",
                format!(
                    "must be in the future (it is {raw}; now is {})",
                    now.to_rfc3339()
                ),
            ));
            None
        }
        Err(e) => {
            errors.push(FieldError::new(
                "scheduled_at",
                format!("not an RFC 3339 time ({e}): {raw:?}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_body_names_each_bad_field() {
        let ok = parse_backup(
            &serde_json::json!({"type": "incr", "annotations": {"why": "before the upgrade"}}),
        )
        .unwrap();
        assert_eq!(ok.backup_type, crate::backup::BackupType::Incr);
        assert_eq!(ok.annotations["why"], "before the upgrade");
        let bad = parse_backup(&serde_json::json!({"type": "differential", "annotations": {"a b": "x", "berth.task_id": "t", "Berth.x": "t", "ok": ""}, "repo": 1}))
            .unwrap_err();
        let paths: Vec<&str> = bad.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "repo",
                "type",
                "annotations.Berth.x",
                "annotations.a b",
                "annotations.berth.task_id",
                "annotations.ok"
            ]
        );
        assert_eq!(
            parse_backup(&Value::Null).unwrap_err().errors[0].path,
            "type"
        );
    }
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn paths(e: InvalidInput) -> Vec<String> {
        e.errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn an_empty_body_switches_over_now_to_patronis_choice() {
        assert_eq!(
            parse_switchover(&Value::Null, now()).unwrap(),
            SwitchoverRequest::default()
        );
        assert_eq!(
            parse_switchover(&json!({}), now()).unwrap(),
            SwitchoverRequest::default()
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let e = parse_switchover(
            &json!({"candidate_instance_id": "", "scheduled_at": "2029-12-31T23:00:00Z", "x": 1}),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            paths(e),
            ["x", "candidate_instance_id", "scheduled_at"],
            "unknown field, empty candidate, a time in the past"
        );
        let e = parse_restart(&json!({"scheduled_at": "tomorrow"}), now()).unwrap_err();
        assert!(e.errors[0].message.contains("RFC 3339"), "{e:?}");
        let e = parse_failover(&json!({"skip_validation": "yes"})).unwrap_err();
        assert_eq!(paths(e), ["skip_validation"]);
        let e = parse_failover(&json!([1])).unwrap_err();
        assert_eq!(paths(e), [""]);
        assert!(parse_no_body(&json!({})).is_ok());
        let e = parse_no_body(&json!({"force": true})).unwrap_err();
        assert_eq!(paths(e), ["force"], "force is a query parameter");
    }

    #[test]
    fn a_time_ahead_is_kept_in_utc() {
        let r = parse_restart(&json!({"scheduled_at": "2030-01-01T05:30:00+05:30"}), now());
        assert!(r.is_err(), "05:30+05:30 is midnight UTC: not after now");
        let r =
            parse_restart(&json!({"scheduled_at": "2030-01-01T06:00:00+05:30"}), now()).unwrap();
        assert_eq!(
            r.scheduled_at.unwrap().to_rfc3339(),
            "2030-01-01T00:30:00+00:00"
        );
    }

    #[test]
    fn operations_round_trip_as_stored() {
        let op = Operation::Switchover {
            node: "n1".into(),
            leader: "db-n1-a".into(),
            candidate: None,
            scheduled_at: None,
        };
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(
            v,
            json!({"type": "switchover", "node": "n1", "leader": "db-n1-a"})
        );
        assert_eq!(serde_json::from_value::<Operation>(v).unwrap(), op);
        assert_eq!(op.task_type(), TaskType::Switchover);
    }

    #[test]
    fn task_type_names_are_the_serialized_ones() {
        use TaskType::*;
        for t in [
            Create,
            Update,
            Delete,
            Reconcile,
            RemoveHost,
            Switchover,
            Failover,
            RestartInstance,
            StopInstance,
            StartInstance,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
    }
}
