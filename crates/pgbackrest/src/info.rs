//! The backups of a stanza, from `pgbackrest --output=json info` ([`crate::info_argv`]).
//!
//! pgBackRest prints an array of stanzas; each has `backup`, an array of objects with
//! `label`, `type`, `timestamp.start`/`stop` (Unix seconds), `info.size` (the database's
//! bytes), `info.repository.size` (bytes stored, compressed), `archive.start`/`stop` (the
//! first and last WAL segment the backup needs), `lsn.start`/`stop`, `database.repo-key`
//! (the repository's number), `annotation` (an object, when set) and `error`. Fields this
//! module does not know are ignored: the format grows between versions.

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
    /// Bytes the backup takes in the repository (after compression, only what this backup
    /// stored for a `diff` or `incr`).
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

#[derive(Deserialize)]
struct Stanza {
    name: String,
    #[serde(default)]
    backup: Vec<serde_json::Value>,
}

/// The backups of [`STANZA`] in `out`, oldest first. A stanza that exists in no
/// repository yet has none.
///
/// Errors: `out` is not the JSON described in the module docs.
pub fn parse_info(out: &str) -> Result<Vec<BackupInfo>, InfoError> {
    let stanzas: Vec<Stanza> = serde_json::from_str(out.trim())?;
    let stanza = stanzas
        .into_iter()
        .find(|s| s.name == STANZA)
        .ok_or(InfoError::NoStanza)?;
    let mut backups: Vec<BackupInfo> = stanza.backup.iter().map(one).collect::<Result<_, _>>()?;
    backups.sort_by(|a, b| (a.started_at, &a.label).cmp(&(b.started_at, &b.label)));
    Ok(backups)
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
         "info":{"delta":2000,"repository":{"delta":300,"size":300},"size":2000},
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
