//! What the two YAML formats share.

use serde::{Deserialize, Serialize};

use crate::{ConnectionTarget, HEADER};

#[derive(Serialize, Deserialize)]
pub(crate) struct HostPort {
    pub host: String,
    pub port: u16,
}

pub(crate) fn host_list(hosts: &[(String, u16)]) -> Vec<HostPort> {
    hosts
        .iter()
        .map(|(host, port)| HostPort {
            host: host.clone(),
            port: *port,
        })
        .collect()
}

pub(crate) fn is_empty_mapping(v: &serde_yaml::Value) -> bool {
    match v {
        serde_yaml::Value::Mapping(m) => m.is_empty(),
        serde_yaml::Value::Null => true,
        _ => false,
    }
}

pub(crate) fn to_yaml<T: Serialize>(value: &T) -> Vec<u8> {
    // Structs of strings, numbers and YAML values always serialise.
    let body = serde_yaml::to_string(value).expect("config structs serialise to YAML");
    format!("{HEADER}{body}").into_bytes()
}

/// The YAML files' `sslmode`: `verify-full` when the target has a CA, else `disable` (what
/// they said before there was TLS; the YAML files always name one).
pub(crate) fn sslmode(target: &ConnectionTarget) -> &'static str {
    target.tls().map_or("disable", |(mode, _)| mode)
}
