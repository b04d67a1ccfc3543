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
