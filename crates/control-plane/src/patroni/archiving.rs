//! WAL archiving to a node's pgBackRest repositories (ADR 022), as `patroni.yml` says it:
//! only for a node with a `pgbackrest.conf` (a usable repository), so no instance ever runs
//! `archive_mode = on` with nowhere to archive. Local parameters, not `bootstrap.dcs`: a
//! repository added to a running node changes every instance's file, the instances are
//! replaced one by one, and each starts with the new setting (`archive_mode` needs a
//! restart anyway).
//!
//! `archive_mode = on` archives on the primary only, whichever instance that is now. Replicas
//! get no `restore_command`: they stream, and the primary keeps what they have not received
//! in their replication slots (`use_slots`), so the archive is for restores, not for
//! replicas catching up. The callback creates the stanza when an instance becomes primary
//! (`berth-patroni-callback` in the image).

use serde_json::{Value, json};

use super::config::RUN_DIR;

/// Where the image copies the node's `pgbackrest.conf` (private to postgres).
pub fn conf_path() -> String {
    format!("{RUN_DIR}/{}", pgbackrest::CONF_FILE)
}

/// The image's Patroni callback: on `on_start` and `on_role_change` to primary, it runs
/// `pgbackrest stanza-create` (which checks an existing stanza) in the background.
pub const CALLBACK: &str = "/usr/local/bin/berth-patroni-callback";

/// Seconds after which a primary switches to a new WAL segment even if the current one is
/// not full: the most a point-in-time restore can miss of an idle primary's commits.
pub const ARCHIVE_TIMEOUT_SECONDS: u32 = 60;

/// Adds the archiving parameters and the callbacks to a rendered `patroni.yml` document.
pub fn apply(doc: &mut Value) {
    let conf = conf_path();
    let parameters = doc["postgresql"]["parameters"]
        .as_object_mut()
        .expect("patroni.yml has postgresql.parameters");
    parameters.insert("archive_mode".into(), json!("on"));
    parameters.insert(
        "archive_command".into(),
        json!(pgbackrest::archive_command(&conf)),
    );
    parameters.insert(
        "archive_timeout".into(),
        json!(format!("{ARCHIVE_TIMEOUT_SECONDS}s")),
    );
    doc["postgresql"]["callbacks"] = json!({"on_start": CALLBACK, "on_role_change": CALLBACK});
}
