//! pgBackRest as berth runs it (ADR 022), without I/O: the `pgbackrest.conf` of a node's
//! Postgres instances from the node's `backup_config` ([`conf`]), the commands the
//! instances and the control plane run ([`archive_command`], [`backup_argv`], ...), and the
//! backups `pgbackrest info` reports ([`info`]).
//!
//! Every instance of a node has the same file: a node is one pgBackRest stanza, [`STANZA`],
//! with one path per repository ([`repository_path`]), so backups and archived WAL of a node
//! outlive whichever instance is its primary, and the database itself.

pub mod conf;
pub mod info;

use std::collections::BTreeMap;

pub use conf::{PgLocal, RestoreSource, render_conf, render_restore_conf, repository_path};
pub use info::{BackupInfo, InfoError, parse_info};

/// The stanza of every node: each node has its own repository paths, so one name serves
/// (the reference control plane's `db`).
pub const STANZA: &str = "db";

/// The name of the file in an instance's config directory.
pub const CONF_FILE: &str = "pgbackrest.conf";
/// The file a node's first instance restores from when the node starts from a backup
/// ([`conf::render_restore_conf`]), in the same directory.
pub const RESTORE_CONF_FILE: &str = "pgbackrest-restore.conf";

pub use spec::backup::BackupType;

fn base(conf_path: &str) -> Vec<String> {
    vec![
        "pgbackrest".to_string(),
        format!("--config={conf_path}"),
        format!("--stanza={STANZA}"),
    ]
}

fn shell_words(argv: &[String]) -> String {
    argv.join(" ")
}

/// Postgres's `archive_command`: push one WAL segment to every repository. pgBackRest
/// pushes to all of them and fails (so Postgres retries) unless each one took it.
pub fn archive_command(conf_path: &str) -> String {
    let mut argv = base(conf_path);
    argv.extend(["archive-push".to_string(), "\"%p\"".to_string()]);
    shell_words(&argv)
}

/// Postgres's `restore_command`: fetch one archived WAL segment, from the first repository
/// that has it.
pub fn restore_command(conf_path: &str) -> String {
    let mut argv = base(conf_path);
    argv.extend([
        "archive-get".to_string(),
        "%f".to_string(),
        "\"%p\"".to_string(),
    ]);
    shell_words(&argv)
}

/// Creates the stanza in every repository, or checks that an existing one belongs to this
/// cluster: safe to run again (pgBackRest's `stanza-create`).
pub fn stanza_create_argv(conf_path: &str) -> Vec<String> {
    let mut argv = base(conf_path);
    argv.push("stanza-create".to_string());
    argv
}

/// A backup into repository number `repo` (1-based, the position in `repositories` plus
/// one), on the primary, starting with an immediate checkpoint. `annotations` become
/// `--annotation=key=value` (pgBackRest keeps them with the backup and `info` shows them).
/// Old backups past `retention_full` are expired by pgBackRest when the backup ends.
pub fn backup_argv(
    conf_path: &str,
    repo: usize,
    backup_type: BackupType,
    annotations: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut argv = base(conf_path);
    argv.push(format!("--repo={repo}"));
    argv.push(format!("--type={}", backup_type.as_str()));
    argv.push("--start-fast".to_string());
    argv.extend(
        annotations
            .iter()
            .map(|(k, v)| format!("--annotation={k}={v}")),
    );
    argv.push("backup".to_string());
    argv
}

/// Restore types that stop at a target: without `target-action=promote`, pgBackRest's
/// default (`pause`) leaves the restored Postgres paused in recovery, and Patroni waits for
/// a primary for ever.
const TARGET_TYPES: &[&str] = &["immediate", "lsn", "name", "time", "xid"];

/// A restore into the (empty) data directory with `options` (pgBackRest's `restore`
/// options by name, validated on the way in, ADR 021) as `--name=value`, on the command
/// line since pgBackRest reads `type`, `target` and `set` from there only. A restore to a
/// target gets `--target-action=promote` unless it names its action; an RFC 3339 `time`
/// target (what the API takes) is given in pgBackRest's own form, which it reads to pick
/// the backup set to start from (with another form it warns and starts from the latest
/// set, which may end after the target).
pub fn restore_argv(conf_path: &str, options: &BTreeMap<String, String>) -> Vec<String> {
    let mut options = options.clone();
    let restore_type = options.get("type").cloned().unwrap_or_default();
    if TARGET_TYPES.contains(&restore_type.as_str()) {
        options
            .entry("target-action".into())
            .or_insert_with(|| "promote".into());
    }
    if restore_type == "time"
        && let Some(target) = options.get_mut("target")
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(target)
    {
        *target = at
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S%.6f+00")
            .to_string();
    }
    let mut argv = base(conf_path);
    argv.extend(options.iter().map(|(k, v)| format!("--{k}={v}")));
    argv.push("restore".to_string());
    argv
}

/// `argv` as one command line that a POSIX shell, or Python's `shlex.split` (how Patroni
/// reads a bootstrap `command`), splits back into the same words: words of safe characters
/// bare, others in single quotes.
pub fn shell_join(argv: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:%+@,".contains(c);
    argv.iter()
        .map(|w| {
            if !w.is_empty() && w.chars().all(safe) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r#"'"'"'"#))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every backup of the stanza in every repository, as JSON ([`parse_info`]).
pub fn info_argv(conf_path: &str) -> Vec<String> {
    let mut argv = base(conf_path);
    argv.extend(["--output=json".to_string(), "info".to_string()]);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_config_and_the_stanza() {
        let conf = "/var/lib/postgresql/berth/pgbackrest.conf";
        assert_eq!(
            archive_command(conf),
            "pgbackrest --config=/var/lib/postgresql/berth/pgbackrest.conf --stanza=db archive-push \"%p\""
        );
        assert_eq!(
            restore_command(conf),
            "pgbackrest --config=/var/lib/postgresql/berth/pgbackrest.conf --stanza=db archive-get %f \"%p\""
        );
        let argv = backup_argv(
            conf,
            2,
            BackupType::Incr,
            &BTreeMap::from([("reason".to_string(), "before the upgrade".to_string())]),
        );
        assert_eq!(
            argv[3..],
            [
                "--repo=2",
                "--type=incr",
                "--start-fast",
                "--annotation=reason=before the upgrade",
                "backup"
            ]
        );
        assert_eq!(stanza_create_argv(conf).last().unwrap(), "stanza-create");
        assert_eq!(info_argv(conf)[3..], ["--output=json", "info"]);
        assert_eq!(BackupType::parse("diff"), Some(BackupType::Diff));
        assert_eq!(BackupType::parse("differential"), None);
    }

    #[test]
    fn a_restore_to_a_time_promotes_there_in_pgbackrests_form() {
        let conf = "/run/pgbackrest-restore.conf";
        let options = BTreeMap::from([
            ("type".to_string(), "time".to_string()),
            (
                "target".to_string(),
                "2026-12-01T07:00:00.5+01:00".to_string(),
            ),
        ]);
        let argv = restore_argv(conf, &options);
        assert_eq!(
            argv[3..],
            [
                "--target=2026-12-01 06:00:00.500000+00",
                "--target-action=promote",
                "--type=time",
                "restore"
            ]
        );
        assert_eq!(
            shell_join(&argv),
            "pgbackrest --config=/run/pgbackrest-restore.conf --stanza=db \
             '--target=2026-12-01 06:00:00.500000+00' --target-action=promote --type=time restore"
        );
        // The latest point: no target, so no target action (pgBackRest refuses one).
        assert_eq!(restore_argv(conf, &BTreeMap::new())[3..], ["restore"]);
        let named = BTreeMap::from([
            ("type".to_string(), "name".to_string()),
            ("target".to_string(), "it's here".to_string()),
        ]);
        assert_eq!(
            shell_join(&restore_argv(conf, &named)[3..4]),
            r#"'--target=it'"'"'s here'"#
        );
    }
}
