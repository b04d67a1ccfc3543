//! WAL health of a Postgres instance: what the control plane reads from its system views and
//! its `pg_wal` directory (read-only, one query), and the warnings it draws from that. A
//! `pg_wal` that grows without bound (an inactive replication slot, an archive that fails
//! or has nowhere to go) fills the disk and stops the database; these warnings say so while
//! there is time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What one check of an instance read. Sizes in bytes, ages in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WalReport {
    /// When it was read.
    pub checked_at: DateTime<Utc>,
    /// The size of `pg_wal` (`pg_ls_waldir()`).
    pub pg_wal_bytes: u64,
    /// The `max_wal_size` setting: what checkpoints keep `pg_wal` near, absent anything
    /// that retains WAL.
    pub max_wal_size_bytes: u64,
    /// The `wal_keep_size` setting: WAL kept on purpose for replicas that fall behind.
    #[serde(default)]
    pub wal_keep_size_bytes: u64,
    /// The age of the oldest WAL segment file in `pg_wal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_segment_age_seconds: Option<u64>,
    /// Replication slots that no client uses and that hold WAL back, with how much.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inactive_slots: Vec<InactiveSlot>,
    /// `off`, `on` or `always` (the `archive_mode` setting).
    pub archive_mode: String,
    /// The instance is a replica (`pg_is_in_recovery()`): with `archive_mode = on` it
    /// archives nothing, the primary does ([`archives`]).
    #[serde(default)]
    pub in_recovery: bool,
    /// An `archive_command` or `archive_library` is set: archiving has somewhere to go.
    pub archive_destination: bool,
    /// Segments waiting to be archived (`.ready` files in `pg_wal/archive_status`).
    pub archive_ready: u64,
    /// `pg_stat_archiver`: the last segment archived, and the last that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Failed archive attempts since the statistics were reset.
    #[serde(default)]
    pub archive_failed_count: u64,
}

/// A replication slot no client is connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InactiveSlot {
    pub slot_name: String,
    /// WAL it holds back: from its `restart_lsn` to the current position.
    pub retained_bytes: u64,
}

/// How bad a warning is: a `critical` one turns the instance `degraded`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WarningLevel {
    Warning,
    Critical,
}

/// One condition found on an instance, for a person and for automation (`code`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceWarning {
    /// `pg_wal_size`, `inactive_replication_slot`, `archive_backlog`,
    /// `archive_without_destination`, `archive_failing` or `old_wal_retained`; of
    /// subscriptions ([`crate::subscriptions::warnings`]), `subscription_down` or
    /// `subscription_not_replicating`.
    pub code: String,
    pub level: WarningLevel,
    pub message: String,
}

/// `pg_wal` at this many times what it is expected to hold (`max_wal_size` plus
/// `wal_keep_size`), or a slot holding this many times `max_wal_size`, is critical; at once
/// a warning. Checkpoints keep `pg_wal` near `max_wal_size` (a soft limit: a burst of writes
/// goes beyond it for a while) plus the `wal_keep_size` kept on purpose, so past four times
/// something retains WAL that nothing will free.
pub const CRITICAL_FACTOR: u64 = 4;
/// Segments waiting for the archiver: a warning from this many, critical from ten times.
pub const ARCHIVE_BACKLOG_WARNING: u64 = 16;
/// WAL kept longer than this while `pg_wal` is over `max_wal_size` is not being recycled.
pub const OLD_WAL_SECONDS: u64 = 24 * 3600;

/// The warnings `report` calls for, most severe first. Pure.
pub fn warnings(report: &WalReport) -> Vec<InstanceWarning> {
    let mut out = Vec::new();
    let max = report.max_wal_size_bytes.max(1);
    let expected = max + report.wal_keep_size_bytes;
    let level_for = |bytes: u64, limit: u64| {
        if bytes >= CRITICAL_FACTOR * limit {
            Some(WarningLevel::Critical)
        } else if bytes >= limit {
            Some(WarningLevel::Warning)
        } else {
            None
        }
    };
    if let Some(level) = level_for(report.pg_wal_bytes, expected) {
        out.push(InstanceWarning {
            code: "pg_wal_size".into(),
            level,
            message: format!(
                "pg_wal holds {} against a max_wal_size of {} and a wal_keep_size of {}",
                mib(report.pg_wal_bytes),
                mib(report.max_wal_size_bytes),
                mib(report.wal_keep_size_bytes)
            ),
        });
    }
    for slot in &report.inactive_slots {
        if let Some(level) = level_for(slot.retained_bytes, max) {
            out.push(InstanceWarning {
                code: "inactive_replication_slot".into(),
                level,
                message: format!(
                    "replication slot {} is inactive and retains {} of WAL; drop it if its \
                     client is gone",
                    slot.slot_name,
                    mib(slot.retained_bytes)
                ),
            });
        }
    }
    let archiving = archives(report);
    if archiving && !report.archive_destination {
        out.push(InstanceWarning {
            code: "archive_without_destination".into(),
            level: WarningLevel::Critical,
            message: format!(
                "archive_mode is {} but no archive_command or archive_library is set: no WAL \
                 segment can be archived, so none is removed",
                report.archive_mode
            ),
        });
    }
    if archiving && report.archive_ready >= ARCHIVE_BACKLOG_WARNING {
        out.push(InstanceWarning {
            code: "archive_backlog".into(),
            level: if report.archive_ready >= 10 * ARCHIVE_BACKLOG_WARNING {
                WarningLevel::Critical
            } else {
                WarningLevel::Warning
            },
            message: format!("{} WAL segments wait to be archived", report.archive_ready),
        });
    }
    if archiving && last_attempt_failed(report) {
        out.push(InstanceWarning {
            code: "archive_failing".into(),
            level: WarningLevel::Warning,
            message: format!(
                "archiving {} failed (failures so far: {})",
                report.last_failed_wal.as_deref().unwrap_or("a segment"),
                report.archive_failed_count
            ),
        });
    }
    let old = report
        .oldest_segment_age_seconds
        .is_some_and(|age| age >= OLD_WAL_SECONDS);
    if old && report.pg_wal_bytes >= expected {
        out.push(InstanceWarning {
            code: "old_wal_retained".into(),
            level: WarningLevel::Warning,
            message: format!(
                "the oldest WAL segment in pg_wal is {} hours old and pg_wal is over \
                 what it should hold: WAL is retained, not recycled",
                report.oldest_segment_age_seconds.unwrap_or_default() / 3600
            ),
        });
    }
    out.sort_by_key(|w| std::cmp::Reverse(w.level));
    out
}

/// Whether the instance archives WAL: `archive_mode` is `always`, or `on` on a primary
/// (Postgres archives nothing with `on` while in recovery). Pure.
pub fn archives(report: &WalReport) -> bool {
    match report.archive_mode.as_str() {
        "off" => false,
        "on" => !report.in_recovery,
        _ => true,
    }
}

/// The archiver's last attempt failed: its latest failure is newer than its latest success
/// (or it never archived anything). `pg_stat_archiver` keeps only the latest of each.
fn last_attempt_failed(report: &WalReport) -> bool {
    match (report.last_failed_at, report.last_archived_at) {
        (Some(failed), Some(archived)) => failed > archived,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The WAL archiver of an instance that archives ([`archives`]), as the API shows it
/// (`wal_archive` on an instance): where archiving stands, read from `pg_stat_archiver` and
/// `pg_wal/archive_status` by the last check ([`WalReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WalArchive {
    /// The last segment archived (a WAL file name such as `000000010000000000000007`, or a
    /// `.history` or `.partial` file); null until one was.
    pub last_archived_wal: Option<String>,
    /// When it was archived; null until one was.
    pub last_archived_at: Option<DateTime<Utc>>,
    /// The last segment whose archiving failed, absent if none ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    /// When that attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Failed attempts since the instance's statistics were reset (Postgres retries a
    /// segment, so one segment may count several times).
    pub failed_count: u64,
    /// Segments waiting to be archived (`.ready` files in `pg_wal/archive_status`): what
    /// `pg_wal` keeps until archiving catches up.
    pub ready_segments: u64,
    /// Archiving does not work now: the latest failure is newer than the latest success, or
    /// `archive_mode` is on with no `archive_command` or `archive_library` to archive with.
    /// `pg_wal` then grows until it works again.
    pub failing: bool,
}

/// `report`'s archiver state, or None when the instance archives nothing ([`archives`]:
/// `archive_mode = off`, or a replica with `on`). Pure.
pub fn archive_status(report: &WalReport) -> Option<WalArchive> {
    if !archives(report) {
        return None;
    }
    Some(WalArchive {
        last_archived_wal: report.last_archived_wal.clone(),
        last_archived_at: report.last_archived_at,
        last_failed_wal: report.last_failed_wal.clone(),
        last_failed_at: report.last_failed_at,
        failed_count: report.archive_failed_count,
        ready_segments: report.archive_ready,
        failing: !report.archive_destination || last_attempt_failed(report),
    })
}

/// A sentence for the instance's `error` while archiving fails ([`WalArchive::failing`]),
/// naming the segment and the failure count; None while it works or is off. Pure.
pub fn archive_error(report: &WalReport) -> Option<String> {
    let status = archive_status(report).filter(|s| s.failing)?;
    if !report.archive_destination {
        return Some(format!(
            "WAL archiving is failing: archive_mode is {} but no archive_command or \
             archive_library is set; pg_wal grows until one is",
            report.archive_mode
        ));
    }
    let failures = match status.failed_count {
        1 => "1 failure".to_string(),
        n => format!("{n} failures"),
    };
    Some(format!(
        "WAL archiving is failing: {} could not be archived ({failures}); pg_wal grows until \
         it works again",
        status.last_failed_wal.as_deref().unwrap_or("a segment"),
    ))
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn report() -> WalReport {
        WalReport {
            pg_wal_bytes: 48 * MIB,
            max_wal_size_bytes: 1024 * MIB,
            archive_mode: "off".into(),
            ..WalReport::default()
        }
    }

    fn codes(r: &WalReport) -> Vec<(String, WarningLevel)> {
        warnings(r).into_iter().map(|w| (w.code, w.level)).collect()
    }

    #[test]
    fn a_healthy_instance_has_no_warning() {
        assert!(warnings(&report()).is_empty());
    }

    #[test]
    fn each_condition_and_its_level() {
        use WarningLevel::*;
        let slot = |bytes| InactiveSlot {
            slot_name: "leaked".into(),
            retained_bytes: bytes,
        };
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        /// (case, report, the warnings it calls for)
        type Case = (&'static str, WalReport, Vec<(&'static str, WarningLevel)>);
        let cases: Vec<Case> = vec![
            (
                "pg_wal at max_wal_size",
                WalReport {
                    pg_wal_bytes: 1024 * MIB,
                    ..report()
                },
                vec![("pg_wal_size", Warning)],
            ),
            (
                "pg_wal at four times max_wal_size, held by a slot",
                WalReport {
                    pg_wal_bytes: 4096 * MIB,
                    inactive_slots: vec![slot(4000 * MIB)],
                    ..report()
                },
                vec![
                    ("pg_wal_size", Critical),
                    ("inactive_replication_slot", Warning),
                ],
            ),
            (
                "pg_wal within max_wal_size and wal_keep_size",
                WalReport {
                    pg_wal_bytes: 1200 * MIB,
                    wal_keep_size_bytes: 256 * MIB,
                    ..report()
                },
                vec![],
            ),
            (
                "a slot holding little",
                WalReport {
                    inactive_slots: vec![slot(MIB)],
                    ..report()
                },
                vec![],
            ),
            (
                "archive_mode on with nowhere to go",
                WalReport {
                    archive_mode: "on".into(),
                    ..report()
                },
                vec![("archive_without_destination", Critical)],
            ),
            (
                "a backlog, and the last attempt failed",
                WalReport {
                    archive_mode: "on".into(),
                    archive_destination: true,
                    archive_ready: 20,
                    last_failed_at: at("2030-01-01T00:01:00Z"),
                    last_archived_at: at("2030-01-01T00:00:00Z"),
                    ..report()
                },
                vec![("archive_backlog", Warning), ("archive_failing", Warning)],
            ),
            (
                "an old failure, archived since",
                WalReport {
                    archive_mode: "on".into(),
                    archive_destination: true,
                    archive_ready: 200,
                    last_failed_at: at("2030-01-01T00:00:00Z"),
                    last_archived_at: at("2030-01-01T00:01:00Z"),
                    ..report()
                },
                vec![("archive_backlog", Critical)],
            ),
            (
                "old segments in a pg_wal over the limit",
                WalReport {
                    pg_wal_bytes: 2048 * MIB,
                    oldest_segment_age_seconds: Some(3 * 24 * 3600),
                    ..report()
                },
                vec![("pg_wal_size", Warning), ("old_wal_retained", Warning)],
            ),
            (
                "old segments in a small pg_wal (an idle database)",
                WalReport {
                    oldest_segment_age_seconds: Some(30 * 24 * 3600),
                    ..report()
                },
                vec![],
            ),
        ];
        for (name, r, want) in cases {
            let want: Vec<(String, WarningLevel)> =
                want.into_iter().map(|(c, l)| (c.to_string(), l)).collect();
            assert_eq!(codes(&r), want, "{name}");
        }
    }

    #[test]
    fn archive_status_and_error_follow_the_archiver() {
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(archive_status(&report()), None, "archiving off");
        assert_eq!(archive_error(&report()), None);

        let archiving = WalReport {
            archive_mode: "on".into(),
            archive_destination: true,
            archive_ready: 2,
            last_archived_wal: Some("000000010000000000000006".into()),
            last_archived_at: at("2030-01-01T00:00:00Z"),
            ..report()
        };
        let ok = archive_status(&archiving).unwrap();
        assert_eq!(
            ok,
            WalArchive {
                last_archived_wal: Some("000000010000000000000006".into()),
                last_archived_at: at("2030-01-01T00:00:00Z"),
                last_failed_wal: None,
                last_failed_at: None,
                failed_count: 0,
                ready_segments: 2,
                failing: false,
            }
        );
        assert_eq!(archive_error(&archiving), None);

        let failing = WalReport {
            last_failed_wal: Some("000000010000000000000007".into()),
            last_failed_at: at("2030-01-01T00:01:00Z"),
            archive_failed_count: 3,
            ..archiving.clone()
        };
        assert!(archive_status(&failing).unwrap().failing);
        assert_eq!(
            archive_error(&failing).unwrap(),
            "WAL archiving is failing: 000000010000000000000007 could not be archived \
             (3 failures); pg_wal grows until it works again"
        );

        let recovered = WalReport {
            last_archived_wal: Some("000000010000000000000008".into()),
            last_archived_at: at("2030-01-01T00:02:00Z"),
            ..failing.clone()
        };
        let status = archive_status(&recovered).unwrap();
        assert!(!status.failing, "archived since the failure");
        assert_eq!(status.failed_count, 3, "the count stays");
        assert_eq!(archive_error(&recovered), None);

        let never_archived = WalReport {
            last_archived_wal: None,
            last_archived_at: None,
            archive_failed_count: 1,
            ..failing.clone()
        };
        assert!(
            archive_error(&never_archived)
                .unwrap()
                .contains("(1 failure)")
        );

        // A replica with `on` archives nothing: a failure from when it was the primary
        // is not its own now.
        let demoted = WalReport {
            in_recovery: true,
            ..failing.clone()
        };
        assert_eq!(archive_status(&demoted), None);
        assert_eq!(archive_error(&demoted), None);
        assert!(warnings(&demoted).is_empty());
        let always = WalReport {
            archive_mode: "always".into(),
            ..demoted
        };
        assert!(
            archive_status(&always).unwrap().failing,
            "`always` archives there"
        );

        let nowhere = WalReport {
            archive_mode: "always".into(),
            archive_destination: false,
            ..archiving
        };
        assert!(archive_status(&nowhere).unwrap().failing);
        assert!(
            archive_error(&nowhere)
                .unwrap()
                .contains("archive_mode is always but no archive_command")
        );
    }

    #[test]
    fn messages_name_the_slot_and_sizes() {
        let r = WalReport {
            pg_wal_bytes: 5000 * MIB,
            inactive_slots: vec![InactiveSlot {
                slot_name: "old_subscriber".into(),
                retained_bytes: 4900 * MIB,
            }],
            ..report()
        };
        let w = warnings(&r);
        assert!(w[0].message.contains("5000 MiB"), "{w:?}");
        assert!(w[1].message.contains("old_subscriber"), "{w:?}");
    }
}
