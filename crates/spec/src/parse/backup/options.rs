//! pgBackRest option maps (`custom_options`, `restore_options`): which names may be given,
//! and what a restore's `type` and `target` must be.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::backup::RESTORE_TYPES;
use crate::check::{Errors, Obj, field, kind};

/// Repository options a repository's own fields or berth set (`repo1-path` is where berth
/// puts each database's backups).
pub(super) const MANAGED_REPOSITORY_OPTIONS: &[&str] = &[
    "type",
    "path",
    "s3-bucket",
    "s3-region",
    "s3-endpoint",
    "s3-key",
    "s3-key-secret",
    "s3-key-type",
    "retention-full",
    "retention-full-type",
];
/// Restore options that say where to restore from or to, which berth decides from
/// `repository` and the node, and those that would change the restored node's recovery or
/// archiving behind berth's back (ADR 025): `archive-mode` (`off` stops the node archiving
/// for good) and `recovery-option` (a `recovery_target_action` or `restore_command` of its
/// own).
pub(super) const MANAGED_RESTORE_OPTIONS: &[&str] = &[
    "repo",
    "stanza",
    "config",
    "pg1-path",
    "archive-mode",
    "recovery-option",
];
/// Restore types that read a `target`.
const TARGET_TYPES: &[&str] = &["time", "xid", "name", "lsn"];

/// A map of pgBackRest options under `key` (`custom_options`, `restore_options`): names as
/// pgBackRest spells them, values strings on one line, none that holds a credential, none
/// in `managed`, at most `max`. Absent = empty. Values are never quoted.
pub(super) fn options(
    o: &Obj<'_>,
    key: &str,
    max: usize,
    managed: &[&str],
    e: &mut Errors,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some(map) = o.object(key, e) else {
        return (!o.has(key)).then_some(out);
    };
    if map.map.len() > max {
        e.push(map.path.clone(), format!("lists more than {max} options"));
    }
    let mut ok = true;
    for (name, value) in map.map {
        let path = map.at(name);
        let problem = option_name_problem(name, managed);
        let value = match (problem, value) {
            (Some(msg), _) => {
                e.push(&path, msg);
                None
            }
            (None, Value::String(v)) if v.chars().any(char::is_control) => {
                e.push(&path, "must not contain control characters");
                None
            }
            (None, Value::String(v)) => Some(v.clone()),
            (None, other) => {
                e.push(&path, format!("expected a string, got {}", kind(other)));
                None
            }
        };
        match value {
            Some(v) => {
                out.insert(name.clone(), v);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn option_name_problem(name: &str, managed: &[&str]) -> Option<String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some(
            "invalid option name: pgBackRest options are lowercase letters, digits and hyphens"
                .into(),
        );
    }
    let indexed = ["repo", "pg"].iter().any(|prefix| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with('-')
        })
    });
    if indexed {
        return Some("write the option without its repoN- or pgN- prefix: berth numbers repositories and instances".into());
    }
    if managed.contains(&name) {
        return Some("is set by berth or by a field of this config".into());
    }
    let credential = name.contains("pass")
        || name.contains("secret")
        || name.contains("token")
        || name.ends_with("-key")
        || name == "key";
    if credential {
        return Some("holds a credential, and options are stored and returned as written; S3 keys go in s3_key and s3_key_secret, which are sealed".into());
    }
    None
}

/// `type` is one pgBackRest knows, and `target` is there exactly when `type` reads one, in
/// the form it reads: an RFC 3339 time with its offset (so it names one instant whatever
/// the server's time zone), an LSN, a transaction id, a restore point name.
pub(super) fn check_restore_target(options: &BTreeMap<String, String>, path: &str, e: &mut Errors) {
    let restore_type = options.get("type").map(String::as_str);
    if let Some(t) = restore_type
        && !RESTORE_TYPES.contains(&t)
    {
        e.push(
            field(path, "type"),
            format!("expected one of: {}", RESTORE_TYPES.join(", ")),
        );
        return;
    }
    let target_path = field(path, "target");
    let target = options.get("target").map(String::as_str);
    let reads_target = restore_type.is_some_and(|t| TARGET_TYPES.contains(&t));
    match (restore_type, target) {
        (None, Some(_)) => e.push(
            target_path,
            "needs a \"type\" that reads it: time, xid, name or lsn",
        ),
        (Some(t), Some(_)) if !reads_target => e.push(
            target_path,
            format!("is not read by type \"{t}\"; only by time, xid, name or lsn"),
        ),
        (Some(t), None) if reads_target => {
            e.push(target_path, format!("is required with type \"{t}\""))
        }
        (Some(t), Some(target)) => {
            if let Err(msg) = check_target(t, target) {
                e.push(target_path, msg);
            }
        }
        _ => {}
    }
    if options.get("set").is_some_and(String::is_empty) {
        e.push(
            field(path, "set"),
            "must name a backup set, like 20250505-153628F",
        );
    }
}

fn check_target(restore_type: &str, target: &str) -> Result<(), String> {
    if restore_type == "time"
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(target)
        && at > chrono::Utc::now()
    {
        // Recovery would end at the end of the archive short of it: Postgres refuses to
        // start then, and nothing good follows.
        return Err("is in the future: no WAL reaches it".into());
    }
    let ok = match restore_type {
        "time" => chrono::DateTime::parse_from_rfc3339(target).is_ok(),
        "lsn" => target.split_once('/').is_some_and(|(hi, lo)| {
            [hi, lo]
                .iter()
                .all(|h| (1..=8).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
        }),
        "xid" => {
            !target.is_empty()
                && target.bytes().all(|b| b.is_ascii_digit())
                && target.parse::<u64>().is_ok()
        }
        // Restore point names are at most 63 bytes (MAXFNAMELEN - 1).
        _ => !target.is_empty() && target.len() <= 63,
    };
    if ok {
        return Ok(());
    }
    Err(match restore_type {
        "time" => "expected an RFC 3339 time with its offset, like 2025-01-01T01:30:00Z".into(),
        "lsn" => "expected a WAL location, like 0/30000000".into(),
        "xid" => "expected a transaction id: digits".into(),
        _ => "expected a restore point name of 1-63 bytes".into(),
    })
}
