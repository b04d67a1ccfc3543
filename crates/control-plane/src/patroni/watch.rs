//! Which changes of Patroni's keys wake a database's reconciler: a leader key written or
//! gone, a member gone or changing its role, state, timeline or pending restart, a node
//! initialised or forgotten. A member key rewritten with only a new WAL position (Patroni
//! does that at every loop of a busy database) wakes nothing.

use std::collections::HashMap;

use super::dcs::member_summary;

type Summary = Option<(String, String, Option<u64>, bool)>;

/// The last summary seen of each member key, to tell a change that matters from a WAL
/// position moving.
#[derive(Debug, Default)]
pub struct Significance {
    members: HashMap<String, Summary>,
}

impl Significance {
    /// `key` changed (below the Patroni root: `{db}/{node}/...`) to `value` (None: deleted).
    /// Returns the database to wake, if the change matters.
    pub fn changed(&mut self, key: &str, value: Option<&[u8]>) -> Option<String> {
        let mut parts = key.splitn(3, '/');
        let (db, _node, rest) = (parts.next()?, parts.next()?, parts.next()?);
        let matters = if rest.starts_with("members/") {
            match value {
                None => {
                    self.members.remove(key);
                    true
                }
                Some(v) => {
                    let summary = member_summary(v);
                    self.members.insert(key.to_string(), summary.clone()) != Some(summary)
                }
            }
        } else {
            // The leader key is rewritten only when it changes hands (its lease is renewed
            // without a write); `initialize`, `failover`, `history` change rarely. `status`
            // and `optime/*` move with the WAL, like a member's position.
            !(rest == "status" || rest.starts_with("optime"))
        };
        matters.then(|| db.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_matter_wake_the_database() {
        let mut s = Significance::default();
        let member = |state: &str, wal: u64| {
            format!(r#"{{"role":"replica","state":"{state}","xlog_location":{wal}}}"#)
        };
        let key = "db1/n1/members/db1-n1-h2";
        assert_eq!(
            s.changed(key, Some(member("starting", 1).as_bytes())),
            Some("db1".into())
        );
        assert_eq!(
            s.changed(key, Some(member("running", 1).as_bytes())),
            Some("db1".into())
        );
        assert_eq!(
            s.changed(key, Some(member("running", 9).as_bytes())),
            None,
            "WAL only"
        );
        assert_eq!(s.changed(key, None), Some("db1".into()), "gone");
        assert_eq!(
            s.changed("db1/n1/leader", Some(b"db1-n1-h2")),
            Some("db1".into())
        );
        assert_eq!(s.changed("db1/n1/status", Some(br#"{"optime":5}"#)), None);
        assert_eq!(s.changed("db1/n1/optime/leader", Some(b"5")), None);
        assert_eq!(s.changed("db1", Some(b"x")), None, "not a node's key");
    }
}
