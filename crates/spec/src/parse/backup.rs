//! `backup_config` and `restore_config` of the spec and of each node: read field by field,
//! every problem recorded with its JSON path (`spec.nodes[1].backup_config.schedules[0].
//! cron_expression`), omitted secrets carried over from the stored spec first.
//!
//! The reference API's rules (repository types and required fields, absolute `base_path`,
//! option names, its length bounds), made strict where berth stores or runs what it accepts
//! (ADR 021): unknown keys, a cron expression that does not parse or never comes due, the
//! `s3` fields on a `posix` repository, duplicate ids, a restore `target` its `type` cannot
//! read, options that hold credentials (they would be stored and returned in plain text)
//! or that berth sets itself. No message quotes a value that may be a secret.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::backup::{
    BackupConfig, BackupSchedule, MAX_REPOSITORIES, MAX_RESTORE_OPTIONS, MAX_SCHEDULES, Repository,
    RepositoryType, RestoreConfig, RestoreRepository, RetentionFullType, ScheduledBackupType,
    cron_schedule,
};
use crate::check::{Errors, Obj, expect_int, field, index, kind};
use crate::ident::{validate_id, validate_node_name, validate_pg_identifier, validate_tenant_id};
use options::{MANAGED_REPOSITORY_OPTIONS, MANAGED_RESTORE_OPTIONS, check_restore_target, options};

/// The backup and restore configs of one level, the spec or a node, as far as they could be
/// read (`None`: absent, or invalid and reported).
#[derive(Debug, Default)]
pub(super) struct Configs {
    pub(super) backup: Option<BackupConfig>,
    pub(super) restore: Option<RestoreConfig>,
    /// Whether `backup_config` was given (`backup` is `None` too when it was invalid).
    backup_given: bool,
    /// Whether `restore_config.repository` names a repository by id, and that id.
    restore_repository_id: Option<String>,
    path: String,
}

/// The same level of the stored spec, on an update: where omitted secrets come from.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stored<'a> {
    pub(super) backup: Option<&'a BackupConfig>,
    pub(super) restore: Option<&'a RestoreConfig>,
}

const BACKUP_CONFIG_KEYS: &[&str] = &["repositories", "schedules"];
const SCHEDULE_KEYS: &[&str] = &["id", "type", "cron_expression"];
const RESTORE_CONFIG_KEYS: &[&str] = &[
    "source_database_id",
    "source_node_name",
    "source_database_name",
    "repository",
    "restore_options",
];
/// A repository in `restore_config` has no retention: a restore expires no backups.
const RESTORE_REPOSITORY_KEYS: &[&str] = &[
    "id",
    "type",
    "base_path",
    "s3_bucket",
    "s3_region",
    "s3_endpoint",
    "s3_key",
    "s3_key_secret",
    "custom_options",
];
const BACKUP_REPOSITORY_KEYS: &[&str] = &[
    "id",
    "type",
    "base_path",
    "s3_bucket",
    "s3_region",
    "s3_endpoint",
    "s3_key",
    "s3_key_secret",
    "retention_full",
    "retention_full_type",
    "custom_options",
];
const S3_FIELDS: &[&str] = &[
    "s3_bucket",
    "s3_region",
    "s3_endpoint",
    "s3_key",
    "s3_key_secret",
];

/// pgBackRest's `repo-retention-full` range.
const MAX_RETENTION_FULL: i64 = 9_999_999;
/// The reference API's length bounds.
const MAX_BASE_PATH: usize = 256;
const MAX_SCHEDULE_ID: usize = 64;
const MAX_CRON: usize = 32;
const MAX_S3_KEY: usize = 128;

/// Reads `backup_config` and `restore_config` of the level `o` (the spec or a node).
pub(super) fn read_level(o: &Obj<'_>, stored: Stored<'_>, e: &mut Errors) -> Configs {
    let mut configs = Configs {
        path: o.path.clone(),
        ..Configs::default()
    };
    configs.backup_given = o.has("backup_config");
    if let Some(b) = o.object("backup_config", e) {
        configs.backup = backup_config(&b, stored.backup, e);
    }
    if let Some(r) = o.object("restore_config", e) {
        let (restore, id) = restore_config(&r, stored.restore, e);
        configs.restore = restore;
        configs.restore_repository_id = id;
    }
    configs
}

/// The rules between levels, once all are read: a restore repository named by id is one of
/// the same level's effective `backup_config`, and a node starts from `source_node` or
/// from `restore_config`, not both. `nodes`: each node's configs and whether it has a
/// `source_node`.
pub(super) fn check_levels<'a>(
    spec: &Configs,
    nodes: impl Iterator<Item = (&'a Configs, bool)>,
    e: &mut Errors,
) {
    check_restore_id(spec, spec, e);
    for (node, has_source) in nodes {
        let effective = if node.backup_given { node } else { spec };
        check_restore_id(node, effective, e);
        if has_source && node.restore.is_some() {
            e.push(
                field(&node.path, "source_node"),
                "specify either source_node or restore_config: a new node starts from one of them",
            );
        }
    }
}

/// `level`'s restore repository id against the backup config of `effective` (the same level,
/// or the spec for a node without its own). An invalid backup config has said why already.
fn check_restore_id(level: &Configs, effective: &Configs, e: &mut Errors) {
    let Some(id) = &level.restore_repository_id else {
        return;
    };
    if effective.backup_given && effective.backup.is_none() {
        return;
    }
    let backup = effective.backup.as_ref();
    if !backup.is_some_and(|b| b.repositories.iter().any(|r| &r.id == id)) {
        e.push(
            format!("{}.restore_config.repository", level.path),
            format!(
                "names no repository of {}.backup_config: \"{id}\"",
                effective.path
            ),
        );
    }
}

fn backup_config(
    o: &Obj<'_>,
    stored: Option<&BackupConfig>,
    e: &mut Errors,
) -> Option<BackupConfig> {
    o.deny_unknown(BACKUP_CONFIG_KEYS, e);
    let stored_repositories: Vec<&Repository> = stored
        .map(|b| b.repositories.iter().collect())
        .unwrap_or_default();

    let schedule_items = o.array("schedules", e);
    let has_schedules = schedule_items.is_some_and(|s| !s.is_empty());
    let (repositories, repositories_ok) = match o.array("repositories", e) {
        None if !o.has("repositories") => {
            e.push(o.at("repositories"), needs_repository(has_schedules));
            (Vec::new(), false)
        }
        None => (Vec::new(), false),
        Some(items) if items.is_empty() => {
            e.push(o.at("repositories"), needs_repository(has_schedules));
            (Vec::new(), false)
        }
        Some(items) => {
            if items.len() > MAX_REPOSITORIES {
                e.push(
                    o.at("repositories"),
                    format!("lists more than {MAX_REPOSITORIES} repositories (pgBackRest's repo1 to repo{MAX_REPOSITORIES})"),
                );
            }
            let read = |item: &Value, path: &str, e: &mut Errors| {
                repository(item, path, BACKUP_REPOSITORY_KEYS, &stored_repositories, e)
            };
            unique_items(items, &o.at("repositories"), "repository", e, read, |r| {
                &r.id
            })
        }
    };

    let (schedules, schedules_ok) = match schedule_items {
        Some(items) => {
            if items.len() > MAX_SCHEDULES {
                e.push(
                    o.at("schedules"),
                    format!("lists more than {MAX_SCHEDULES} schedules"),
                );
            }
            unique_items(items, &o.at("schedules"), "schedule", e, schedule, |s| {
                &s.id
            })
        }
        None => (Vec::new(), true),
    };
    (repositories_ok && schedules_ok).then_some(BackupConfig {
        repositories,
        schedules,
    })
}

/// Reads each item of the list at `at` with `read`, and reports an id (`id_of`) that a
/// later item repeats at that item's `id`, as "duplicate {what} id". The items read, and
/// whether every one was valid.
fn unique_items<T>(
    items: &[Value],
    at: &str,
    what: &str,
    e: &mut Errors,
    mut read: impl FnMut(&Value, &str, &mut Errors) -> Option<T>,
    id_of: impl Fn(&T) -> &String,
) -> (Vec<T>, bool) {
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = index(at, i);
        let one = read(item, &path, e);
        if let Some(x) = &one
            && !ids.insert(id_of(x).clone())
        {
            e.push(
                field(&path, "id"),
                format!("duplicate {what} id \"{}\"", id_of(x)),
            );
        }
        ok &= one.is_some();
        out.extend(one);
    }
    (out, ok)
}

fn needs_repository(has_schedules: bool) -> &'static str {
    if has_schedules {
        "must list at least one repository: the schedules have nowhere to put their backups"
    } else {
        "must list at least one repository"
    }
}

fn schedule(v: &Value, path: &str, e: &mut Errors) -> Option<BackupSchedule> {
    let o = Obj::of(v, path.to_string(), e)?;
    o.deny_unknown(SCHEDULE_KEYS, e);
    let id = o.req_str("id", e).and_then(|id| {
        let ok = id.len() <= MAX_SCHEDULE_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            e.push(
                o.at("id"),
                format!("must be 1-{MAX_SCHEDULE_ID} ASCII letters, digits, '-', '_' or '.'"),
            );
        }
        ok.then(|| id.to_string())
    });
    let backup_type = required_one_of(&o, "type", &ScheduledBackupType::ALL.map(|t| t.as_str()), e)
        .and_then(ScheduledBackupType::parse);
    let cron_expression = o.req_str("cron_expression", e).and_then(|expr| {
        let checked = if expr.chars().count() > MAX_CRON {
            Err(format!("must be at most {MAX_CRON} characters"))
        } else {
            cron_schedule(expr).map(drop)
        };
        match checked {
            Ok(()) => Some(expr.to_string()),
            Err(msg) => {
                e.push(o.at("cron_expression"), msg);
                None
            }
        }
    });
    Some(BackupSchedule {
        id: id?,
        backup_type: backup_type?,
        cron_expression: cron_expression?,
    })
}

/// A repository object at `path` with the keys `allowed`, its omitted secrets carried over
/// from the one of `stored` in the same place ([`Repository::same_place`]).
fn repository(
    v: &Value,
    path: &str,
    allowed: &[&str],
    stored: &[&Repository],
    e: &mut Errors,
) -> Option<Repository> {
    let o = Obj::of(v, path.to_string(), e)?;
    o.deny_unknown(allowed, e);
    let id = o
        .req_str("id", e)
        .and_then(|id| match validate_tenant_id(id) {
            Ok(()) => Some(id.to_string()),
            Err(msg) => {
                e.push(o.at("id"), msg);
                None
            }
        });
    let repository_type = required_one_of(&o, "type", &RepositoryType::ALL.map(|t| t.as_str()), e)
        .and_then(RepositoryType::parse);

    let base_path = o.str("base_path", e).and_then(|p| {
        let problem = if p.chars().count() > MAX_BASE_PATH {
            Some(format!("must be at most {MAX_BASE_PATH} characters"))
        } else if !p.starts_with('/') {
            Some("must be an absolute path (start with '/'), as pgBackRest's repo-path".into())
        } else if p.split('/').any(|part| part == "..") {
            Some("must not contain \"..\"".into())
        } else if p.chars().any(char::is_control) {
            Some("must not contain control characters".into())
        } else {
            None
        };
        checked(&o, "base_path", p, problem, e)
    });
    if repository_type == Some(RepositoryType::Posix) && base_path.is_none() && !o.has("base_path")
    {
        e.push(o.at("base_path"), "is required for a posix repository");
    }

    let s3 = repository_type == Some(RepositoryType::S3);
    let mut s3_fields = [None, None, None, None, None];
    for (slot, key) in s3_fields.iter_mut().zip(S3_FIELDS) {
        let Some(value) = o.str(key, e) else { continue };
        if repository_type == Some(RepositoryType::Posix) {
            e.push(o.at(key), "applies only to an s3 repository");
            continue;
        }
        *slot = s3_field(&o, key, value, e);
    }
    let [
        s3_bucket,
        s3_region,
        s3_endpoint,
        mut s3_key,
        mut s3_key_secret,
    ] = s3_fields;
    // A key given but refused has its own error; pairing it would add a second one.
    let keys_refused = (o.has("s3_key") && s3_key.is_none())
        || (o.has("s3_key_secret") && s3_key_secret.is_none());
    if s3 {
        for (value, key) in [(&s3_bucket, "s3_bucket"), (&s3_region, "s3_region")] {
            if value.is_none() && !o.has(key) {
                e.push(o.at(key), "is required for an s3 repository");
            }
        }
    }

    let retention_full = o.get("retention_full").and_then(|v| {
        expect_int(v, &o.at("retention_full"), 1, MAX_RETENTION_FULL, e)
            .and_then(|n| u32::try_from(n).ok())
    });
    let retention_full_type = o
        .one_of(
            "retention_full_type",
            &RetentionFullType::ALL.map(|t| t.as_str()),
            e,
        )
        .and_then(RetentionFullType::parse);
    let custom_options = options(
        &o,
        "custom_options",
        usize::MAX,
        MANAGED_REPOSITORY_OPTIONS,
        e,
    );

    let mut repository = Repository {
        id: id?,
        repository_type: repository_type?,
        base_path,
        s3_bucket,
        s3_region,
        s3_endpoint,
        s3_key: None,
        s3_key_secret: None,
        retention_full,
        retention_full_type,
        custom_options: custom_options?,
    };
    // A key left out is kept from the stored repository in the same place; one sent as
    // null is removed (absent from the map vs present as null).
    let previous = stored.iter().find(|s| s.same_place(&repository));
    if let Some(previous) = previous {
        if !o.map.contains_key("s3_key") {
            s3_key.clone_from(&previous.s3_key);
        }
        if !o.map.contains_key("s3_key_secret") {
            s3_key_secret.clone_from(&previous.s3_key_secret);
        }
    }
    match (&s3_key, &s3_key_secret) {
        _ if keys_refused => {}
        (Some(_), None) if s3 => e.push(o.at("s3_key_secret"), "is required with s3_key"),
        (None, Some(_)) if s3 => e.push(o.at("s3_key"), "is required with s3_key_secret"),
        _ => {}
    }
    repository.s3_key = s3_key;
    repository.s3_key_secret = s3_key_secret;
    Some(repository)
}

/// One of the `s3_*` strings, checked; `value` is never quoted (keys are secrets).
fn s3_field(o: &Obj<'_>, key: &str, value: &str, e: &mut Errors) -> Option<String> {
    let len = value.chars().count();
    let problem = if value.chars().any(char::is_control) {
        Some("must not contain control characters".to_string())
    } else {
        match key {
            "s3_bucket" => (!is_bucket_name(value)).then(|| {
                "must be 3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit (S3's bucket naming rule)".to_string()
            }),
            "s3_region" => (len == 0 || len > 32 || value.contains(char::is_whitespace))
                .then(|| "must be 1-32 characters without spaces".to_string()),
            "s3_endpoint" => {
                if value.contains("://") {
                    Some("must be a host name without a scheme: pgBackRest always connects with HTTPS".to_string())
                } else if !(3..=128).contains(&len)
                    || value.contains(['/', '?', '#'])
                    || value.contains(char::is_whitespace)
                {
                    Some("must be a host name (3-128 characters), like s3.us-east-1.amazonaws.com".to_string())
                } else {
                    None
                }
            }
            // s3_key, s3_key_secret
            _ => (len == 0 || len > MAX_S3_KEY)
                .then(|| format!("must be 1-{MAX_S3_KEY} characters")),
        }
    };
    checked(o, key, value, problem, e)
}

fn is_bucket_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// `value` if `problem` is none, else records it at `key`.
fn checked(
    o: &Obj<'_>,
    key: &str,
    value: &str,
    problem: Option<String>,
    e: &mut Errors,
) -> Option<String> {
    match problem {
        None => Some(value.to_string()),
        Some(msg) => {
            e.push(o.at(key), msg);
            None
        }
    }
}

/// A required string among `allowed`.
fn required_one_of(
    o: &Obj<'_>,
    key: &str,
    allowed: &[&'static str],
    e: &mut Errors,
) -> Option<&'static str> {
    o.require(key, e)?;
    o.one_of(key, allowed, e)
}

/// `restore_config`, and the repository id it names when it names one by id.
pub(super) fn restore_config(
    o: &Obj<'_>,
    stored: Option<&RestoreConfig>,
    e: &mut Errors,
) -> (Option<RestoreConfig>, Option<String>) {
    o.deny_unknown(RESTORE_CONFIG_KEYS, e);
    let checked_str = |key: &str, rule: fn(&str) -> Result<(), String>, e: &mut Errors| {
        o.req_str(key, e).and_then(|s| match rule(s) {
            Ok(()) => Some(s.to_string()),
            Err(msg) => {
                e.push(o.at(key), msg);
                None
            }
        })
    };
    let source_database_id = checked_str("source_database_id", validate_id, e);
    let source_node_name = checked_str("source_node_name", validate_node_name, e);
    let source_database_name = checked_str("source_database_name", validate_pg_identifier, e);

    let path = o.at("repository");
    let mut named_id = None;
    let repository = match o.require("repository", e) {
        None => None,
        Some(Value::String(id)) => match validate_tenant_id(id) {
            Ok(()) => {
                named_id = Some(id.clone());
                Some(RestoreRepository::Id(id.clone()))
            }
            Err(msg) => {
                e.push(&path, msg);
                None
            }
        },
        Some(v @ Value::Object(_)) => {
            let stored: Vec<&Repository> = stored
                .and_then(|r| match &r.repository {
                    RestoreRepository::Inline(r) => Some(r),
                    RestoreRepository::Id(_) => None,
                })
                .into_iter()
                .collect();
            repository(v, &path, RESTORE_REPOSITORY_KEYS, &stored, e).map(RestoreRepository::Inline)
        }
        Some(other) => {
            e.push(
                &path,
                format!(
                    "expected the id of a repository of the backup_config or a repository object, got {}",
                    kind(other)
                ),
            );
            None
        }
    };
    let restore_options = options(
        o,
        "restore_options",
        MAX_RESTORE_OPTIONS,
        MANAGED_RESTORE_OPTIONS,
        e,
    );
    if let Some(options) = &restore_options {
        check_restore_target(options, &o.at("restore_options"), e);
    }
    let config = (|| {
        Some(RestoreConfig {
            source_database_id: source_database_id?,
            source_node_name: source_node_name?,
            source_database_name: source_database_name?,
            repository: repository?,
            restore_options: restore_options?,
        })
    })();
    (config, named_id)
}

mod options;
#[cfg(test)]
mod tests;
