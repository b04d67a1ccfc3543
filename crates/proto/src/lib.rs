//! Generated code for the agent protocol (`proto/agent/v1/agent.proto`, package `agent.v1`).
//!
//! `v1::agent_client::AgentClient` / `v1::agent_server::{Agent, AgentServer}` for the per-host agent and
//! `v1::registry_client::RegistryClient` / `v1::registry_server::{Registry, RegistryServer}` for the control
//! plane's registration service.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("agent.v1");
}

pub use v1::*;

// Config files hold passwords and API keys, a join request the join token, an exec's stdin
// role SQL: their Debug names what they carry and prints no content.

impl std::fmt::Debug for v1::ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field(
                "content",
                &format_args!("<{} bytes, redacted>", self.content.len()),
            )
            .finish()
    }
}

impl std::fmt::Debug for v1::JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("host_id", &self.host_id)
            .field("join_token", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

impl std::fmt::Debug for v1::ExecRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecRequest")
            .field("instance_id", &self.instance_id)
            .field("argv", &self.argv)
            .field(
                "stdin",
                &format_args!("<{} bytes, redacted>", self.stdin.len()),
            )
            .field("user", &self.user)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret_content() {
        let file = ConfigFile {
            path: "berth.conf".into(),
            content: b"superuser_password=PW-SECRET".to_vec(),
        };
        let spec = InstanceSpec {
            files: vec![file],
            ..Default::default()
        };
        let join = JoinRequest {
            host_id: "h".into(),
            join_token: "TOKEN-SECRET".into(),
            csr_pem: String::new(),
        };
        let exec = ExecRequest {
            stdin: b"ALTER ROLE x PASSWORD 'SQL-SECRET'".to_vec(),
            ..Default::default()
        };
        let debug = format!("{spec:?} {join:?} {exec:?}");
        for secret in ["PW-SECRET", "TOKEN-SECRET", "SQL-SECRET"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("berth.conf"), "{debug}");
    }
}
