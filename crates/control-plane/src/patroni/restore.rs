//! A node that starts from a backup (ADR 025), as `patroni.yml` says it: Patroni's custom
//! bootstrap method runs `pgbackrest restore` into the empty data directory of the node's
//! first instance, from the node's `pgbackrest-restore.conf`
//! ([`pgbackrest::render_restore_conf`]). pgBackRest writes the recovery settings (its
//! `restore_command`, the target, `target-action=promote`) and `recovery.signal`, which
//! `keep_existing_recovery_conf` tells Patroni to keep; Patroni then starts Postgres, waits
//! for the end of recovery, and takes the leader key. The node's other instances are cloned
//! from that primary as usual.
//!
//! Patroni reads `bootstrap` only when it initialises a node, so the section stays in the
//! file of a node that runs: a node whose every instance and data directory is lost later
//! is initialised from the same backup again (Patroni's rule, documented in ADR 025).

use serde_json::{Value, json};

use super::config::RUN_DIR;

/// The name of the bootstrap method in `patroni.yml`.
pub const METHOD: &str = "berth_restore";

/// Where the image copies the node's `pgbackrest-restore.conf` (private to postgres).
pub fn conf_path() -> String {
    format!("{RUN_DIR}/{}", pgbackrest::RESTORE_CONF_FILE)
}

/// The image's wrapper of both halves of the bootstrap (`deploy/images/postgres/
/// restore-bootstrap`): `run` restores and marks the data directory as restored but not
/// finished; `finish`, the `post_bootstrap`, renames the database and removes the mark.
/// The image's entrypoint does not start a data directory whose restore failed or did
/// not finish (ADR 025).
pub const WRAPPER: &str = "berth-restore-bootstrap";

/// The backup a node starts from, as far as `patroni.yml` needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore<'a> {
    /// The `pgbackrest restore` command ([`pgbackrest::restore_argv`]), which reads
    /// [`conf_path`].
    pub argv: &'a [String],
    /// The database in the backup, renamed to the spec's `database_name` once restored.
    pub source_database_name: &'a str,
}

/// Replaces `initdb` with the restore in a rendered `patroni.yml` document, and the
/// `post_bootstrap` that creates the spec's database (the backup has it) with the
/// wrapper's `finish`, which renames the restored database when its name differs.
pub fn apply(doc: &mut Value, restore: &Restore, database_name: &str) {
    let bootstrap = doc["bootstrap"]
        .as_object_mut()
        .expect("patroni.yml has a bootstrap section");
    bootstrap.remove("initdb");
    let words = |args: &[&str]| -> Vec<String> {
        [WRAPPER]
            .iter()
            .chain(args)
            .map(|w| w.to_string())
            .collect()
    };
    let mut run = words(&["run"]);
    run.extend(restore.argv.iter().cloned());
    bootstrap.insert("method".into(), json!(METHOD));
    // Patroni passes --scope and --datadir unless told not to; pgBackRest takes neither.
    bootstrap.insert(
        METHOD.into(),
        json!({
            "command": pgbackrest::shell_join(&run),
            "no_params": true,
            "keep_existing_recovery_conf": true,
        }),
    );
    // Patroni splits the command with shlex and appends the new primary's conninfo.
    let finish = if restore.source_database_name == database_name {
        words(&["finish"])
    } else {
        words(&["finish", restore.source_database_name, database_name])
    };
    bootstrap.insert(
        "post_bootstrap".into(),
        json!(pgbackrest::shell_join(&finish)),
    );
}
