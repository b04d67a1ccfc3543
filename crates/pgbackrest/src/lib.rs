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

pub use conf::{PgLocal, render_conf, repository_path};
pub use info::{BackupInfo, InfoError, parse_info};

/// The stanza of every node: each node has its own repository paths, so one name serves
/// (the reference control plane's `db`).
pub const STANZA: &str = "db";

/// The name of the file in an instance's config directory.
pub const CONF_FILE: &str = "pgbackrest.conf";

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
}
