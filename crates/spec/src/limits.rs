//! Service limits against the hosts they are placed on: a cpu or memory limit a host cannot
//! give is refused at the API with the field's path, rather than failing a task later with
//! the engine's message ("Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs
//! available").

use std::collections::BTreeMap;

use crate::quantity::{parse_cpus, parse_memory};
use crate::{DatabaseSpec, FieldError, InvalidInput};

/// What a host offers, as its agent registered it (`GET /v1/hosts`: `cpus`, `memory_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// Whether any service of `spec` sets a limit (only then are hosts worth reading).
pub fn has_limits(spec: &DatabaseSpec) -> bool {
    spec.services
        .iter()
        .any(|s| s.cpus.is_some() || s.memory.is_some())
}

/// Checks every service's `cpus` and `memory` against each host it is placed on. A host
/// missing from `hosts`, or that reported 0 (it could not tell), is not checked.
pub fn check_against_hosts(
    spec: &DatabaseSpec,
    hosts: &BTreeMap<String, HostCapacity>,
) -> Result<(), InvalidInput> {
    let mut errors = Vec::new();
    for (i, service) in spec.services.iter().enumerate() {
        let placed = || {
            service
                .host_ids
                .iter()
                .filter_map(|h| hosts.get(h).map(|c| (h, c)))
        };
        if let Some(nano_cpus) = service.cpus.as_deref().and_then(|c| parse_cpus(c).ok())
            && let Some((host, c)) = placed()
                .filter(|(_, c)| c.cpus > 0)
                .find(|(_, c)| nano_cpus > i64::from(c.cpus) * 1_000_000_000)
        {
            errors.push(FieldError::new(
                format!("spec.services[{i}].cpus"),
                format!(
                    "host \"{host}\" has {} cpus: the limit must be between 0.01 and {}",
                    c.cpus, c.cpus
                ),
            ));
        }
        if let Some(bytes) = service.memory.as_deref().and_then(|m| parse_memory(m).ok())
            && let Some((host, c)) = placed()
                .filter(|(_, c)| c.memory_bytes > 0)
                .find(|(_, c)| bytes > c.memory_bytes)
        {
            errors.push(FieldError::new(
                format!("spec.services[{i}].memory"),
                format!(
                    "host \"{host}\" has {} bytes of memory: the limit must be between 6Mi and that",
                    c.memory_bytes
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidInput { errors })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(cpus: Option<&str>, memory: Option<&str>) -> DatabaseSpec {
        let mut service = json!({"service_id": "s", "service_type": "mcp", "version": "latest",
            "host_ids": ["small", "big"], "config": {}});
        if let Some(c) = cpus {
            service["cpus"] = json!(c);
        }
        if let Some(m) = memory {
            service["memory"] = json!(m);
        }
        serde_json::from_value(json!({"database_name": "app",
            "nodes": [{"name": "n1", "host_ids": ["big"]}], "services": [service]}))
        .unwrap()
    }

    fn hosts() -> BTreeMap<String, HostCapacity> {
        BTreeMap::from([
            (
                "small".to_string(),
                HostCapacity {
                    cpus: 2,
                    memory_bytes: 1 << 30,
                },
            ),
            (
                "big".to_string(),
                HostCapacity {
                    cpus: 64,
                    memory_bytes: 1 << 40,
                },
            ),
        ])
    }

    #[test]
    fn limits_within_every_host_pass() {
        assert!(check_against_hosts(&spec(Some("2"), Some("1Gi")), &hosts()).is_ok());
        assert!(check_against_hosts(&spec(None, None), &hosts()).is_ok());
        assert!(!has_limits(&spec(None, None)));
    }

    #[test]
    fn a_limit_beyond_one_placed_host_names_the_field_and_the_host() {
        let e = check_against_hosts(&spec(Some("3"), Some("2Gi")), &hosts()).unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.services[0].cpus", "spec.services[0].memory"]);
        assert!(e.errors[0].message.contains("\"small\" has 2 cpus"), "{e}");
        assert!(e.errors[1].message.contains("\"small\""), "{e}");
    }

    #[test]
    fn hosts_that_reported_nothing_are_not_held_against_a_spec() {
        let mut h = hosts();
        h.insert(
            "small".into(),
            HostCapacity {
                cpus: 0,
                memory_bytes: 0,
            },
        );
        assert!(check_against_hosts(&spec(Some("3"), Some("2Gi")), &h).is_ok());
    }
}
