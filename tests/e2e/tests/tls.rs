//! Agents of a running fleet serve only the control plane, over mutual TLS.

use e2e::Fleet;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refuses_callers_that_are_not_the_control_plane() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let ca = std::fs::read_to_string(fleet.ca_file()).unwrap();
    let url = format!("https://{}", fleet.agent_address(&h1));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name(pki::agent_server_name(&h1));

    // Without a client certificate the handshake fails.
    let anonymous = async {
        let channel = Endpoint::from_shared(url.clone())
            .ok()?
            .tls_config(tls.clone())
            .ok()?
            .connect()
            .await
            .ok()?;
        agent_proto::agent_client::AgentClient::new(channel)
            .get_host_info(())
            .await
            .ok()
    };
    assert!(
        anonymous.await.is_none(),
        "an anonymous caller got an answer"
    );

    // With host-2's own certificate (valid, signed by the fleet CA) the agent of host-1 still
    // says no: only control planes drive agents.
    let dir = fleet.agent_tls_dir(&h2);
    let cert = std::fs::read_to_string(dir.join("agent.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("agent.key")).unwrap();
    let channel = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls.identity(Identity::from_pem(cert, key)))
        .unwrap()
        .connect()
        .await
        .expect("the handshake itself succeeds: the certificate is the fleet's");
    let refused = agent_proto::agent_client::AgentClient::new(channel)
        .get_host_info(())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

    // Meanwhile the control plane drives both agents: the hosts are healthy.
    let hosts = fleet.get("/v1/hosts").await;
    assert!(
        hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"]["state"] == "healthy")
    );
    assert!(
        hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["agent_address"].as_str().unwrap().starts_with("https://"))
    );
}

/// The attack of issue 14: a second agent started with the fleet's join token and a host id
/// that is already registered. It must not get a certificate, and the host must keep its
/// address and its agent.
#[tokio::test(flavor = "multi_thread")]
async fn an_impostor_with_the_join_token_cannot_take_over_a_registered_host() {
    let fleet = Fleet::start(2).await;
    let victim = fleet.host(2);
    let before = fleet.get(&format!("/v1/hosts/{victim}")).await;
    let data = tempfile::tempdir().unwrap();

    let impostor = tokio::process::Command::from(fleet.extra_agent_command(&victim, data.path()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(e2e::CONVERGE, impostor)
        .await
        .expect("the impostor agent is refused and exits, rather than running as the host")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("already joined"), "{log}");
    assert!(
        !data.path().join("tls/agent.pem").exists(),
        "the impostor got a certificate"
    );

    let after = fleet.get(&format!("/v1/hosts/{victim}")).await;
    assert_eq!(after["agent_address"], before["agent_address"], "{after}");
    assert_eq!(after["status"]["state"], "healthy", "{after}");
}
