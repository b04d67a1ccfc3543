//! The backups of a stanza, from `pgbackrest --output=json info` ([`crate::info_argv`]).
//!
//! pgBackRest prints an array of stanzas; each has `backup`, an array of objects with
//! `label`, `type`, `timestamp.start`/`stop` (Unix seconds), `info.size` (the database's
//! bytes), `info.repository.size` (the backup set's bytes in the repository, compressed:
//! this backup and the ones it refers to), `archive.start`/`stop` (the first and last WAL
//! segment the backup needs), `lsn.start`/`stop`, `database.repo-key` (the repository's
//! number), `annotation` (an object, when set) and `error`. The stanza's
//! `status` (`code`, `message`) and each repository's (`repo[].status`) say whether
//! pgBackRest could read the repositories at all ([`StatusCode`]): `info` prints them and
//! exits 0 when a repository refuses its credentials. Fields this module does not know are
//! ignored: the format grows between versions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BackupType, STANZA};

/// One backup, as `GET /v1/databases/{id}/nodes/{node}/backups` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// pgBackRest's set label: `20261201-031500F` (full), `..._20261201-040000I` (incr).
    pub label: String,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// The repository's number in the node's `pgbackrest.conf` (its position in
    /// `repositories`, plus one).
    pub repository: u32,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    /// Bytes of the database the backup covers.
    pub database_size_bytes: u64,
    /// Bytes of the backup set in the repository, as stored (compressed): this backup's
    /// files and those of the backups it refers to, what a restore of it reads
    /// (`info.repository.size`, pgBackRest's "backup set size"). For a `full` backup that is
    /// what it stored; a `diff` or `incr` stored only part of it (`info.repository.delta`,
    /// not read here). 0 for a block-incremental backup, whose set size pgBackRest (2.45+)
    /// does not report.
    pub repository_size_bytes: u64,
    /// The first and last WAL segment a restore of this backup needs.
    pub wal_start: Option<String>,
    pub wal_stop: Option<String>,
    /// The label of the backup a `diff` or `incr` builds on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// pgBackRest found a page checksum error while copying.
    pub error: bool,
}

/// Why `info`'s output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("pgbackrest info printed no JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pgbackrest info has no stanza {STANZA}")]
    NoStanza,
    #[error("pgbackrest info reports backup {label} without {field}")]
    Missing { label: String, field: &'static str },
}

/// pgBackRest's status of a stanza (`status.code`), overall or in one repository
/// (`repo[].status.code`): the codes of pgBackRest's `info` command (`command/info/info.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// 0, `ok`: the stanza has backups.
    Ok,
    /// 1, `missing stanza path`: nothing was ever written at the repository's path.
    MissingStanzaPath,
    /// 2, `no valid backups`: the stanza exists and has no backup.
    NoValidBackups,
    /// 3, `missing stanza data`: the stanza's directory has no `backup.info`.
    MissingStanzaData,
    /// 4, `different across repos`: the repositories' statuses differ (overall only).
    Mixed,
    /// 5, `database mismatch across repos` (overall only).
    DatabaseMismatch,
    /// 6, `requested backup not found` (with `--set` only).
    BackupMissing,
    /// 99: any other error, such as a repository that refused the credentials or could not
    /// be reached; the repository's `message` says which (`[ErrorType] text`), the overall
    /// one only `other`.
    Other,
    /// A code this module does not know.
    Unknown(i64),
}

impl StatusCode {
    fn from_code(code: i64) -> StatusCode {
        match code {
            0 => StatusCode::Ok,
            1 => StatusCode::MissingStanzaPath,
            2 => StatusCode::NoValidBackups,
            3 => StatusCode::MissingStanzaData,
            4 => StatusCode::Mixed,
            5 => StatusCode::DatabaseMismatch,
            6 => StatusCode::BackupMissing,
            99 => StatusCode::Other,
            n => StatusCode::Unknown(n),
        }
    }

    /// The repository was read: it has backups, or there is no stanza (or no backup) at its
    /// path. Any other code means pgBackRest could not say what the repository holds.
    pub fn was_read(self) -> bool {
        matches!(
            self,
            StatusCode::Ok
                | StatusCode::MissingStanzaPath
                | StatusCode::NoValidBackups
                | StatusCode::MissingStanzaData
        )
    }
}

/// A `status` object: its code and pgBackRest's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

/// The status of the stanza in one repository (`repo[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryStatus {
    /// The repository's number in the config (`key`).
    pub key: u32,
    pub status: Status,
}

/// What `info` says of [`STANZA`]: its backups and whether it could read its repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaInfo {
    /// Oldest first.
    pub backups: Vec<BackupInfo>,
    /// The overall status; None when pgBackRest printed none.
    pub status: Option<Status>,
    /// The status in each repository, in the config's order.
    pub repositories: Vec<RepositoryStatus>,
    /// A backup (or expire) of the stanza holds its lock on the host `info` ran on
    /// (`status.lock.backup.held`); false when pgBackRest did not say.
    pub backup_running: bool,
}

impl StanzaInfo {
    /// The newest backup in repository `repository` (its number in the config) annotated
    /// `key=value`, if there is one.
    pub fn annotated(&self, repository: u32, key: &str, value: &str) -> Option<&BackupInfo> {
        self.backups.iter().rev().find(|b| {
            b.repository == repository && b.annotations.get(key).map(String::as_str) == Some(value)
        })
    }

    /// Why pgBackRest could not read the stanza, in its own words: the messages of the
    /// repositories whose status is not [`StatusCode::was_read`] (prefixed with `repoN: `
    /// when several repositories were asked), or else the overall message when the overall
    /// status is not one of those or [`StatusCode::Mixed`]. None when every repository was
    /// read, whether or not it holds a backup. A message pgBackRest wrote on several lines
    /// (an S3 error with its response) reads as one, its lines joined by ` | `.
    pub fn unreadable(&self) -> Option<String> {
        let several = self.repositories.len() > 1;
        let failed: Vec<String> = self
            .repositories
            .iter()
            .filter(|r| !r.status.code.was_read())
            .map(|r| {
                let message = one_line(&r.status.message);
                if several {
                    format!("repo{}: {message}", r.key)
                } else {
                    message
                }
            })
            .collect();
        if !failed.is_empty() {
            return Some(failed.join("; "));
        }
        self.status
            .as_ref()
            .filter(|s| !s.code.was_read() && s.code != StatusCode::Mixed)
            .map(|s| one_line(&s.message))
    }
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[derive(Deserialize)]
struct Stanza {
    name: String,
    #[serde(default)]
    backup: Vec<serde_json::Value>,
    #[serde(default)]
    status: Option<RawStatus>,
    #[serde(default)]
    repo: Vec<RawRepository>,
}

#[derive(Deserialize)]
struct RawStatus {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    lock: serde_json::Value,
}

impl From<RawStatus> for Status {
    fn from(s: RawStatus) -> Status {
        Status {
            code: StatusCode::from_code(s.code),
            message: s.message,
        }
    }
}

#[derive(Deserialize)]
struct RawRepository {
    key: u32,
    status: RawStatus,
}

/// The backups of [`STANZA`] in `out`, oldest first. A stanza that exists in no
/// repository yet has none; so has one whose repositories pgBackRest could not read
/// ([`parse_stanza`] says which).
///
/// Errors: `out` is not the JSON described in the module docs.
pub fn parse_info(out: &str) -> Result<Vec<BackupInfo>, InfoError> {
    Ok(parse_stanza(out)?.backups)
}

/// [`STANZA`] in `out`: its backups, oldest first, and its statuses.
///
/// Errors: `out` is not the JSON described in the module docs.
pub fn parse_stanza(out: &str) -> Result<StanzaInfo, InfoError> {
    let stanzas: Vec<Stanza> = serde_json::from_str(out.trim())?;
    let stanza = stanzas
        .into_iter()
        .find(|s| s.name == STANZA)
        .ok_or(InfoError::NoStanza)?;
    let mut backups: Vec<BackupInfo> = stanza.backup.iter().map(one).collect::<Result<_, _>>()?;
    backups.sort_by(|a, b| (a.started_at, &a.label).cmp(&(b.started_at, &b.label)));
    let backup_running = stanza
        .status
        .as_ref()
        .and_then(|s| s.lock["backup"]["held"].as_bool())
        .unwrap_or(false);
    Ok(StanzaInfo {
        backups,
        backup_running,
        status: stanza.status.map(Status::from),
        repositories: stanza
            .repo
            .into_iter()
            .map(|r| RepositoryStatus {
                key: r.key,
                status: r.status.into(),
            })
            .collect(),
    })
}

fn one(b: &serde_json::Value) -> Result<BackupInfo, InfoError> {
    let label = b["label"].as_str().unwrap_or_default().to_string();
    let missing = |field| InfoError::Missing {
        label: label.clone(),
        field,
    };
    let time = |field: &'static str, v: &serde_json::Value| {
        v.as_i64()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or_else(|| missing(field))
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    if label.is_empty() {
        return Err(missing("label"));
    }
    Ok(BackupInfo {
        backup_type: b["type"]
            .as_str()
            .and_then(BackupType::parse)
            .ok_or_else(|| missing("type"))?,
        repository: b["database"]["repo-key"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1),
        started_at: time("timestamp.start", &b["timestamp"]["start"])?,
        stopped_at: time("timestamp.stop", &b["timestamp"]["stop"])?,
        database_size_bytes: b["info"]["size"].as_u64().unwrap_or(0),
        repository_size_bytes: b["info"]["repository"]["size"].as_u64().unwrap_or(0),
        wal_start: text(&b["archive"]["start"]),
        wal_stop: text(&b["archive"]["stop"]),
        prior: text(&b["prior"]),
        annotations: b["annotation"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        error: b["error"].as_bool().unwrap_or(false),
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape pgBackRest 2.45 prints (trimmed of fields this module ignores).
    const OUT: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1",
      "max":"000000010000000000000006","min":"000000010000000000000003"}],
      "backup":[
        {"annotation":{"reason":"nightly"},"archive":{"start":"000000010000000000000005","stop":"000000010000000000000005"},
         "database":{"id":1,"repo-key":1},"error":false,
         "info":{"delta":2000,"repository":{"delta":300,"size":4000300},"size":31000000},
         "label":"20261201-031501F_20261201-031600I","prior":"20261201-031501F",
         "timestamp":{"start":1764558960,"stop":1764558965},"type":"incr"},
        {"archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},
         "database":{"id":1,"repo-key":1},"error":false,
         "info":{"delta":31000000,"repository":{"delta":4000000,"size":4000000},"size":31000000},
         "label":"20261201-031501F","prior":null,
         "timestamp":{"start":1764558901,"stop":1764558910},"type":"full"}],
      "name":"db","status":{"code":0,"message":"ok"}}]"#;

    #[test]
    fn backups_read_oldest_first_with_sizes_and_wal_range() {
        let b = parse_info(OUT).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].label, "20261201-031501F");
        assert_eq!(b[0].backup_type, BackupType::Full);
        assert_eq!(b[0].database_size_bytes, 31_000_000);
        assert_eq!(b[0].repository_size_bytes, 4_000_000);
        assert_eq!(b[0].wal_start.as_deref(), Some("000000010000000000000003"));
        assert_eq!(b[0].prior, None);
        assert_eq!(b[1].backup_type, BackupType::Incr);
        assert_eq!(b[1].prior.as_deref(), Some("20261201-031501F"));
        assert_eq!(b[1].annotations["reason"], "nightly");
        assert_eq!(b[1].started_at.timestamp(), 1764558960);
        assert_eq!(b[1].repository, 1);
        // The set: the incr's own 300 bytes and the full's it refers to.
        assert_eq!(b[1].repository_size_bytes, 4_000_300);
    }

    /// `info --stanza=db --output=json` of an S3 repository that refused the key, in the
    /// shape of pgBackRest 2.45+ (the lock object gained `restore` in later versions).
    const REFUSED: &str = r#"[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"db",
      "repo":[{"cipher":"none","key":1,"status":{"code":99,
        "message":"[ProtocolError] HTTP request failed with 403 (Forbidden):\n*** Path/Query ***:\nGET /?delimiter=%2F&list-type=2&prefix=databases%2Fold%2Fmain%2Fn1%2Fbackup%2F\n*** Response Content ***:\n<Error><Code>InvalidAccessKeyId</Code><AWSAccessKeyId>AKIA</AWSAccessKeyId></Error>"}}],
      "status":{"code":99,"lock":{"backup":{"held":false},"restore":{"held":false}},"message":"other"}}]"#;

    #[test]
    fn a_repository_pgbackrest_could_not_read_says_why_in_its_words() {
        let stanza = parse_stanza(REFUSED).unwrap();
        assert!(stanza.backups.is_empty());
        assert_eq!(stanza.status.as_ref().unwrap().code, StatusCode::Other);
        assert_eq!(stanza.repositories[0].key, 1);
        assert_eq!(
            stanza.unreadable().unwrap(),
            "[ProtocolError] HTTP request failed with 403 (Forbidden): | *** Path/Query ***: | \
             GET /?delimiter=%2F&list-type=2&prefix=databases%2Fold%2Fmain%2Fn1%2Fbackup%2F | \
             *** Response Content ***: | <Error><Code>InvalidAccessKeyId</Code>\
             <AWSAccessKeyId>AKIA</AWSAccessKeyId></Error>"
        );
    }

    #[test]
    fn a_stanza_without_backups_was_read() {
        // pgBackRest's own test shapes (test/src/module/command/infoTest.c), named db.
        for (code, message) in [
            (1, "missing stanza path"),
            (2, "no valid backups"),
            (3, "missing stanza data"),
        ] {
            let out = format!(
                r#"[{{"archive":[],"backup":[],"cipher":"none","db":[],"name":"db",
                  "repo":[{{"cipher":"none","key":1,"status":{{"code":{code},"message":"{message}"}}}}],
                  "status":{{"code":{code},"lock":{{"backup":{{"held":false}}}},"message":"{message}"}}}}]"#
            );
            let stanza = parse_stanza(&out).unwrap();
            assert!(stanza.status.as_ref().unwrap().code.was_read(), "{code}");
            assert_eq!(stanza.unreadable(), None, "{code}");
        }
        assert_eq!(parse_stanza(OUT).unwrap().unreadable(), None);
    }

    #[test]
    fn a_backup_is_found_by_its_annotation_in_its_repository() {
        let stanza = parse_stanza(OUT).unwrap();
        let found = stanza.annotated(1, "reason", "nightly").unwrap();
        assert_eq!(found.label, "20261201-031501F_20261201-031600I");
        assert!(stanza.annotated(2, "reason", "nightly").is_none());
        assert!(stanza.annotated(1, "reason", "weekly").is_none());
        assert!(stanza.annotated(1, "why", "nightly").is_none());
    }

    #[test]
    fn a_held_backup_lock_is_a_running_backup() {
        assert!(!parse_stanza(REFUSED).unwrap().backup_running);
        assert!(!parse_stanza(OUT).unwrap().backup_running);
        // While the stanza's first backup copies files.
        let running = r#"[{"backup":[],"name":"db","repo":[],
          "status":{"code":2,"lock":{"backup":{"held":true}},"message":"no valid backups"}}]"#;
        assert!(parse_stanza(running).unwrap().backup_running);
    }

    #[test]
    fn of_several_repositories_the_ones_not_read_are_named() {
        let out = r#"[{"backup":[],"name":"db","repo":[
            {"cipher":"none","key":1,"status":{"code":2,"message":"no valid backups"}},
            {"cipher":"none","key":3,"status":{"code":99,"message":"[HostConnectError] unable to connect"}}],
          "status":{"code":4,"lock":{"backup":{"held":false}},"message":"different across repos"}}]"#;
        assert_eq!(
            parse_stanza(out).unwrap().unreadable().unwrap(),
            "repo3: [HostConnectError] unable to connect"
        );
        // Mixed, but every repository was read.
        let read = out.replace(
            r#""code":99,"message":"[HostConnectError] unable to connect""#,
            r#""code":0,"message":"ok""#,
        );
        assert_eq!(parse_stanza(&read).unwrap().unreadable(), None);
        // An overall status no repository explains.
        let mismatch = r#"[{"backup":[],"name":"db","repo":[],
          "status":{"code":5,"message":"database mismatch across repos"}}]"#;
        assert_eq!(
            parse_stanza(mismatch).unwrap().unreadable().unwrap(),
            "database mismatch across repos"
        );
    }

    #[test]
    fn a_new_stanza_has_no_backups_and_other_output_is_an_error() {
        assert!(
            parse_info(r#"[{"name":"db","backup":[],"status":{"code":2}}]"#)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            parse_info(r#"[{"name":"other"}]"#),
            Err(InfoError::NoStanza)
        ));
        assert!(matches!(
            parse_info("ERROR: [055]"),
            Err(InfoError::Json(_))
        ));
        assert!(matches!(
            parse_info(r#"[{"name":"db","backup":[{"label":"x","type":"full"}]}]"#),
            Err(InfoError::Missing {
                field: "timestamp.start",
                ..
            })
        ));
    }
}
