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
