//! Instance records: what the leader applied on each host and what it last saw there.
//! The API builds `instances[]` and `service_instances[]` from them, so every replica can
//! answer without talking to agents.

use std::collections::BTreeSet;

use agent_proto::{Health, InstanceState, InstanceStatus};
use chrono::{DateTime, Utc};
use plan::{InstanceKind, PatroniMember, PatroniNode, Resources};
use serde::{Deserialize, Serialize};
use spec::{
    ConnectionInfo, Instance, InstanceRole, InstanceState as PgState, PortMapping, ServiceInstance,
    ServiceInstanceState, ServiceInstanceStatus,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Creating,
    Running,
    Failed,
    Deleting,
    /// Stopped by `stop-instance`: no container, the data directory kept.
    Stopped,
}

/// The last observation of an instance, in the API's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedView {
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The agent's observation number this view was made from (0: none): a view made from
    /// an older observation never replaces a newer one.
    #[serde(default)]
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub database_id: String,
    pub host_id: String,
    pub kind: InstanceKind,
    /// Hash and resources of the spec last applied successfully.
    pub spec_hash: String,
    pub resources: Resources,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub observed: ObservedView,
    /// Why the last apply failed (the engine refused the container, a port was taken),
    /// until one succeeds: a container that never started has no state of its own to say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// A Postgres instance's WAL as last checked (`reconciler::wal_watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<spec::wal::WalReport>,
    /// A Postgres primary's pglogical subscriptions as last checked, with each one's lag
    /// behind its provider (`reconciler::subscription_watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<spec::subscriptions::SubscriptionReport>,
}

/// The fields of a stored [`InstanceRecord`] that only the health watch writes
/// (`reconciler::wal_watch`); the database's worker writes every other one.
pub const HEALTH_FIELDS: [&str; 2] = ["wal", "subscriptions"];

/// `doc` (an encoded record) with [`HEALTH_FIELDS`] as they are in `stored`, absent where
/// `stored` has none. Pure.
pub fn with_health_of(
    mut doc: serde_json::Value,
    stored: Option<&serde_json::Value>,
) -> serde_json::Value {
    if let Some(fields) = doc.as_object_mut() {
        for name in HEALTH_FIELDS {
            match stored.and_then(|s| s.get(name)) {
                Some(v) => fields.insert(name.to_string(), v.clone()),
                None => fields.remove(name),
            };
        }
    }
    doc
}

impl InstanceRecord {
    /// The host port its `postgres` port is published on, as last seen.
    pub fn postgres_port(&self) -> Option<u16> {
        self.observed
            .ports
            .iter()
            .find(|p| p.name == "postgres")
            .and_then(|p| p.host_port)
    }
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

/// How an agent's report of a container reads in the API. `host_sequence` is the host's
/// observation number, which dates the absence of a report.
pub fn view_of(state: Option<&InstanceState>, host_sequence: u64) -> ObservedView {
    let Some(s) = state else {
        return ObservedView {
            phase: Phase::Failed,
            container_id: None,
            image: None,
            ports: vec![],
            last_health_at: None,
            ready: false,
            error: Some("the container is missing".into()),
            sequence: host_sequence,
        };
    };
    let status = InstanceStatus::try_from(s.state).unwrap_or(InstanceStatus::Unspecified);
    let health = Health::try_from(s.health).unwrap_or(Health::Unspecified);
    let (phase, ready) = match (status, health) {
        (InstanceStatus::Running, Health::Healthy | Health::None | Health::Unspecified) => {
            (Phase::Running, true)
        }
        (InstanceStatus::Running, Health::Unhealthy) => (Phase::Failed, false),
        (InstanceStatus::Running | InstanceStatus::Creating | InstanceStatus::Unspecified, _) => {
            (Phase::Creating, false)
        }
        (InstanceStatus::Failed | InstanceStatus::Stopped | InstanceStatus::Missing, _) => {
            (Phase::Failed, false)
        }
    };
    let error = match phase {
        Phase::Failed if !s.reason.is_empty() => Some(s.reason.clone()),
        Phase::Failed => Some(format!(
            "container is {}",
            status
                .as_str_name()
                .trim_start_matches("INSTANCE_STATUS_")
                .to_lowercase()
        )),
        _ => None,
    };
    ObservedView {
        phase,
        container_id: (!s.container_id.is_empty()).then(|| s.container_id.clone()),
        image: (!s.image.is_empty()).then(|| s.image.clone()),
        ports: s
            .ports
            .iter()
            .map(|p| PortMapping {
                name: p.name.clone(),
                container_port: p.container_port as u16,
                host_port: (p.host_port != 0).then_some(p.host_port as u16),
            })
            .collect(),
        last_health_at: timestamp(&s.last_health_at),
        ready,
        error,
        sequence: s.sequence,
    }
}

/// Why an instance is not running: the failed apply's reason when it has one (its
/// container may never have existed), else what was observed.
fn error_of(r: &InstanceRecord) -> Option<String> {
    match (&r.apply_error, r.observed.phase) {
        (Some(e), phase) if phase != Phase::Running => Some(e.clone()),
        _ => r.observed.error.clone(),
    }
}

/// An instance's `error`: why it does not run first, then WAL archiving's failure; either
/// alone when the other is absent.
fn joined_error(instance: Option<String>, archive: Option<String>) -> Option<String> {
    match (instance, archive) {
        (Some(i), Some(a)) => Some(format!("{i}; {a}")),
        (i, a) => i.or(a),
    }
}

/// A record as the API shows it; `unreachable` hosts make their instances `unknown`.
// Made and taken apart at once per record, never stored: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum View {
    Postgres(Instance),
    Service(ServiceInstance),
}

/// A Postgres instance's state from its container's phase and what Patroni says of it:
/// `available` only once its Postgres runs under Patroni (the container's health check
/// says Patroni lives, not that Postgres serves).
fn postgres_state(phase: Phase, member: Option<&PatroniMember>) -> PgState {
    match (phase, member.map(|m| m.state.as_str())) {
        (Phase::Failed, _) => PgState::Failed,
        (Phase::Stopped, _) => PgState::Stopped,
        (Phase::Creating | Phase::Deleting, _) => PgState::Creating,
        (Phase::Running, Some("running" | "streaming" | "in archive recovery")) => {
            PgState::Available
        }
        (
            Phase::Running,
            Some("crashed" | "start failed" | "restart failed" | "bootstrap failed"),
        ) => PgState::Failed,
        (Phase::Running, _) => PgState::Creating,
    }
}

/// `patroni` is what Patroni's keys say of the instance's node, when it has any.
pub fn api_view(
    r: &InstanceRecord,
    unreachable: &BTreeSet<String>,
    host_addresses: &[String],
    patroni: Option<&PatroniNode>,
) -> View {
    let unknown = unreachable.contains(&r.host_id);
    let o = &r.observed;
    match &r.kind {
        InstanceKind::Postgres { node } => View::Postgres({
            let member = patroni.and_then(|p| p.members.get(&r.instance_id));
            let leads = patroni.is_some_and(|p| p.leader.as_deref() == Some(&r.instance_id));
            // A stopped instance's last report says nothing of now.
            let wal = r.wal.clone().filter(|_| o.phase != Phase::Stopped);
            // Subscriptions run on primaries alone; a replica's last report is from when it
            // was one.
            let subscriptions = r
                .subscriptions
                .as_ref()
                .filter(|_| o.phase != Phase::Stopped && leads)
                .map(|s| s.subscriptions.clone())
                .unwrap_or_default();
            let mut warnings = wal.as_ref().map(spec::wal::warnings).unwrap_or_default();
            warnings.extend(spec::subscriptions::warnings(&subscriptions));
            warnings.sort_by_key(|w| std::cmp::Reverse(w.level));
            let critical = warnings
                .iter()
                .any(|w| w.level == spec::wal::WarningLevel::Critical);
            Instance {
                id: r.instance_id.clone(),
                database_id: r.database_id.clone(),
                node_name: node.clone(),
                host_id: r.host_id.clone(),
                role: if leads {
                    InstanceRole::Primary
                } else {
                    InstanceRole::Replica
                },
                state: match (unknown, postgres_state(o.phase, member)) {
                    (true, _) => PgState::Unknown,
                    (false, PgState::Available) if critical => PgState::Degraded,
                    (false, state) => state,
                },
                patroni_state: member.map(|m| m.shown_state().to_string()),
                timeline: member.and_then(|m| m.timeline),
                lag_bytes: patroni.and_then(|p| p.lag_bytes(&r.instance_id)),
                pending_restart: member.is_some_and(|m| m.pending_restart),
                wal_archive: wal.as_ref().and_then(spec::wal::archive_status),
                error: joined_error(
                    if unknown {
                        Some("the host is unreachable".into())
                    } else {
                        error_of(r)
                    },
                    wal.as_ref().and_then(spec::wal::archive_error),
                ),
                wal,
                subscriptions,
                warnings,
                connection_info: o.ports.iter().find_map(|p| {
                    p.host_port.map(|port| ConnectionInfo {
                        addresses: host_addresses.to_vec(),
                        port,
                    })
                }),
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        }),
        InstanceKind::Service { service_id } => View::Service(ServiceInstance {
            service_instance_id: r.instance_id.clone(),
            service_id: service_id.clone(),
            database_id: r.database_id.clone(),
            host_id: r.host_id.clone(),
            state: match (unknown, o.phase) {
                (true, _) => ServiceInstanceState::Unknown,
                (_, Phase::Creating) => ServiceInstanceState::Creating,
                (_, Phase::Running) => ServiceInstanceState::Running,
                // Only Postgres instances are stopped by request.
                (_, Phase::Failed | Phase::Stopped) => ServiceInstanceState::Failed,
                (_, Phase::Deleting) => ServiceInstanceState::Deleting,
            },
            status: Some(ServiceInstanceStatus {
                container_id: o.container_id.clone(),
                image: o.image.clone(),
                addresses: host_addresses.to_vec(),
                ports: o.ports.clone(),
                last_health_at: o.last_health_at,
                ready: o.ready && !unknown,
            }),
            error: if unknown {
                Some("the host is unreachable".into())
            } else {
                error_of(r)
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_write_keeps_the_stored_health_reports() {
        let stored = serde_json::json!({"spec_hash": "old", "wal": {"pg_wal_bytes": 7}});
        let doc = serde_json::json!({"spec_hash": "new", "subscriptions": {"stale": true}});
        assert_eq!(
            with_health_of(doc.clone(), Some(&stored)),
            serde_json::json!({"spec_hash": "new", "wal": {"pg_wal_bytes": 7}})
        );
        assert_eq!(
            with_health_of(doc, None),
            serde_json::json!({"spec_hash": "new"})
        );
    }
    use spec::subscriptions::{Subscription, SubscriptionReport};

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            database_id: "db".into(),
            host_id: "h1".into(),
            kind: InstanceKind::Postgres { node: "n1".into() },
            spec_hash: String::new(),
            resources: Default::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            observed: ObservedView {
                phase: Phase::Running,
                container_id: None,
                image: None,
                ports: vec![],
                last_health_at: None,
                ready: true,
                error: None,
                sequence: 1,
            },
            apply_error: None,
            wal: None,
            subscriptions: Some(SubscriptionReport {
                checked_at: Utc::now(),
                subscriptions: ["replicating", "down"]
                    .iter()
                    .zip(["n2", "n3"])
                    .map(|(status, provider)| Subscription {
                        name: format!("berth_n1_from_{provider}"),
                        provider_node: provider.into(),
                        status: status.to_string(),
                        lag_bytes: Some(0),
                        lag_seconds: None,
                    })
                    .collect(),
            }),
        }
    }

    fn shown(r: &InstanceRecord, patroni: &PatroniNode) -> Instance {
        match api_view(r, &BTreeSet::new(), &[], Some(patroni)) {
            View::Postgres(i) => i,
            View::Service(_) => unreachable!("a Postgres record"),
        }
    }

    /// A primary shows its subscriptions, and a down one degrades it; a replica's report,
    /// from when it was the primary, is not shown.
    #[test]
    fn a_down_subscription_degrades_the_primary_alone() {
        let member = |role: &str| PatroniMember {
            role: role.into(),
            state: "running".into(),
            replication_state: None,
            timeline: Some(1),
            wal_position: Some(0),
            pending_restart: false,
        };
        let patroni = PatroniNode {
            leader: Some("a".into()),
            initialized: true,
            members: [
                ("a".to_string(), member("primary")),
                ("b".to_string(), member("replica")),
            ]
            .into(),
        };
        let primary = shown(&record("a"), &patroni);
        assert_eq!(primary.subscriptions.len(), 2);
        assert_eq!(primary.state, PgState::Degraded);
        assert_eq!(primary.warnings[0].code, "subscription_down");
        let replica = shown(&record("b"), &patroni);
        assert!(replica.subscriptions.is_empty());
        assert!(replica.warnings.is_empty());
        assert_eq!(replica.state, PgState::Available);
    }

    /// A failing archiver shows in `wal_archive` and in `error`, after why the instance
    /// does not run when it does not.
    #[test]
    fn a_failing_archiver_is_the_instances_error() {
        let patroni = PatroniNode {
            leader: Some("b".into()),
            initialized: true,
            members: Default::default(),
        };
        let mut r = record("a");
        r.wal = Some(spec::wal::WalReport {
            archive_mode: "on".into(),
            archive_destination: true,
            last_failed_wal: Some("000000010000000000000007".into()),
            last_failed_at: Some(Utc::now()),
            archive_failed_count: 3,
            ..Default::default()
        });
        let i = shown(&r, &patroni);
        assert!(i.wal_archive.as_ref().unwrap().failing);
        assert!(i.warnings.iter().any(|w| w.code == "archive_failing"));
        let error = i.error.unwrap();
        assert!(error.starts_with("WAL archiving is failing: 000000010000000000000007"));
        assert!(error.contains("(3 failures)"), "{error}");

        r.observed.phase = Phase::Failed;
        r.observed.error = Some("container is exited".into());
        let error = shown(&r, &patroni).error.unwrap();
        assert!(
            error.starts_with("container is exited; WAL archiving is failing"),
            "{error}"
        );

        r.wal.as_mut().unwrap().archive_mode = "off".into();
        let i = shown(&r, &patroni);
        assert_eq!(i.wal_archive, None);
        assert_eq!(i.error.as_deref(), Some("container is exited"));
    }
}
