//! pgBackRest as berth runs it (ADR 022), without I/O: the `pgbackrest.conf` of a node's
//! Postgres instances from the node's `backup_config` ([`conf`]), the commands the
//! instances and the control plane run ([`archive_command`], [`backup_argv`], ...), the
//! backups `pgbackrest info` reports ([`info`]), and what its errors say ([`errors`]).
//!
//! Every instance of a node has the same file: a node is one pgBackRest stanza, [`STANZA`],
//! with one path per repository ([`repository_path`]), so backups and archived WAL of a node
//! outlive whichever instance is its primary, and the database itself.

pub mod conf;
pub mod errors;
pub mod info;

use std::collections::BTreeMap;

pub use conf::{PgLocal, RestoreSource, render_conf, render_restore_conf, repository_path};
pub use errors::{LOCK_ACQUIRE_ERROR, error_codes, is_lock_collision};
pub use info::{
    BackupInfo, InfoError, RepositoryStatus, StanzaInfo, Status, StatusCode, parse_info,
    parse_stanza,
};

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

/// The script of [`info_argv_conf_on_stdin`]. `$0` is the directory of the temporary file,
/// `$@` the command, whose `--config=` word is replaced by the file's path. The traps remove
/// the file however the shell ends, short of SIGKILL.
const CONF_ON_STDIN_SCRIPT: &str = r#"umask 077
f=$(mktemp "$0/pgbackrest-conf.XXXXXXXX") || exit 1
trap 'rm -f "$f"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
cat > "$f" || exit 1
for a do
  shift
  case $a in --config=*) a="--config=$f" ;; esac
  set -- "$@" "$a"
done
"$@"
exit $?"#;

/// [`info_argv`] with a config that is not in the container: one `sh -c` that writes its
/// stdin (the whole `pgbackrest.conf`, keys included) into a new private file in `dir`
/// (mode 0600, `mktemp`), runs `pgbackrest --config=<file> --stanza=db --output=json info`
/// with it, removes the file whatever happened, and exits with `info`'s status (1 when the
/// file could not be made). The keys travel on stdin only: never in an argv that `ps`
/// shows.
pub fn info_argv_conf_on_stdin(dir: &str) -> Vec<String> {
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        CONF_ON_STDIN_SCRIPT.to_string(),
        dir.to_string(),
    ];
    argv.extend(info_argv("(stdin)"));
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

    /// A directory removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs [`info_argv_conf_on_stdin`] with `sh`, and a `pgbackrest` on `PATH` that prints
    /// its argv, its config's mode and content, then exits with `status`.
    fn run_conf_on_stdin(status: i32) -> (std::process::Output, TempDir) {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir(std::env::temp_dir().join(format!(
            "pgbackrest-conf-on-stdin-{}-{status}",
            std::process::id()
        )));
        let bin = tmp.path().join("bin");
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let fake = bin.join("pgbackrest");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\"\nconf=${{1#--config=}}\n\
                 stat -c %a \"$conf\"\ncat \"$conf\"\nexit {status}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let argv = info_argv_conf_on_stdin(dir.to_str().unwrap());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"[global]\nrepo1-s3-key-secret=s3cr3t\n")
            .unwrap();
        (child.wait_with_output().unwrap(), tmp)
    }

    #[test]
    fn info_reads_its_config_from_stdin_through_a_private_file_it_removes() {
        let (out, tmp) = run_conf_on_stdin(0);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let conf = lines[0].strip_prefix("--config=").unwrap();
        assert!(
            conf.starts_with(&format!("{}/", tmp.path().join("run").display())),
            "{conf}"
        );
        assert_eq!(lines[..4], info_argv(conf)[1..]);
        assert_eq!(lines[4], "600");
        assert_eq!(lines[5..], ["[global]", "repo1-s3-key-secret=s3cr3t"]);
        let argv = info_argv_conf_on_stdin("/run");
        assert!(!argv.iter().any(|w| w.contains("s3cr3t")));
        let left = std::fs::read_dir(tmp.path().join("run")).unwrap().count();
        assert_eq!(left, 0, "the config is removed");
    }

    #[test]
    fn info_through_stdin_exits_with_infos_status_and_still_removes_the_config() {
        let (out, tmp) = run_conf_on_stdin(56);
        assert_eq!(out.status.code(), Some(56));
        let left = std::fs::read_dir(tmp.path().join("run")).unwrap().count();
        assert_eq!(left, 0, "the config is removed");
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
