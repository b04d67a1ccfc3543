//! pgBackRest's errors as its console prints them: a line `P00  ERROR: [050]: <message>`,
//! then `HINT: ...` lines, and the command exits with the code. The codes are pgBackRest's
//! (`src/build/error/error.yaml`).

/// `LockAcquireError`: pgBackRest could not take one of its lock files.
pub const LOCK_ACQUIRE_ERROR: u16 = 50;

/// What pgBackRest adds to a [`LOCK_ACQUIRE_ERROR`] when another process holds the lock
/// (the file exists and is locked), as opposed to a lock file it may not open.
const LOCK_HELD_HINT: &str = "HINT: is another pgBackRest process running?";

/// The codes of the `ERROR: [NNN]` lines of `output`, in order. `output` may be pgBackRest's
/// console output or a message that quotes it, lines joined or not.
pub fn error_codes(output: &str) -> Vec<u16> {
    output
        .match_indices("ERROR: [")
        .filter_map(|(at, m)| {
            let rest = &output[at + m.len()..];
            let (code, _) = rest.split_once(']')?;
            (code.len() == 3).then(|| code.parse().ok()).flatten()
        })
        .collect()
}

/// Whether `output` says a command failed because another pgBackRest process held the
/// stanza's lock, such as an `archive-push` holding `db-archive-1.lock` or another backup
/// holding `db-backup.lock`: error 50 with pgBackRest's hint for a held lock. The same
/// command can succeed once the other one is done. A lock file pgBackRest may not open
/// (error 50 with a hint about permissions) is no collision: trying again changes nothing.
pub fn is_lock_collision(output: &str) -> bool {
    error_codes(output).contains(&LOCK_ACQUIRE_ERROR) && output.contains(LOCK_HELD_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a backup's console output when archive-push holds the archive lock, as
    /// pgBackRest prints it (log-timestamp=n), and as the control plane quotes it in a
    /// command's error (its last lines joined by " | ").
    const HELD: &str = "P00   INFO: backup command begin 2.54.2: --exec-id=77-1a2b3c4d --no-log-timestamp\n\
        P00  ERROR: [050]: unable to acquire lock on file '/tmp/pgbackrest/db-archive-1.lock': \
        Resource temporarily unavailable\n\
        \x20           HINT: is another pgBackRest process running?\n\
        P00   INFO: backup command end: aborted with exception [050]\n";

    #[test]
    fn a_lock_another_process_holds_is_a_collision() {
        assert_eq!(error_codes(HELD), [50]);
        assert!(is_lock_collision(HELD));
        let quoted = format!(
            "pgbackrest backup on i-1 exited 50: {}",
            HELD.lines().map(str::trim).collect::<Vec<_>>().join(" | ")
        );
        assert!(is_lock_collision(&quoted));
        let backup_lock = HELD.replace("db-archive-1.lock", "db-backup.lock");
        assert!(is_lock_collision(&backup_lock));
    }

    #[test]
    fn other_errors_are_not_collisions() {
        let denied = "P00  ERROR: [050]: unable to acquire lock on file \
            '/tmp/pgbackrest/db-archive-1.lock': Permission denied\n\
            \x20           HINT: does the user running pgBackRest have permissions on the \
            '/tmp/pgbackrest/db-archive-1.lock' file?\n";
        assert_eq!(error_codes(denied), [50]);
        assert!(!is_lock_collision(denied));
        let missing = "P00  ERROR: [055]: unable to load info file \
            '/databases/db/main/n1/backup/db/backup.info' or \
            '/databases/db/main/n1/backup/db/backup.info.copy'";
        assert_eq!(error_codes(missing), [55]);
        assert!(!is_lock_collision(missing));
        assert!(error_codes("no error here; ERROR: [x]").is_empty());
    }
}
