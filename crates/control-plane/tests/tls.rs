//! The registry and the agent channel are mutually authenticated: a caller without a fleet
//! certificate, or with another host's, is refused.

mod common;

use agent_proto::HeartbeatRequest;
use common::ControlPlane;
use test_support::EtcdServer;
use tonic::Code;

fn heartbeat(host_id: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        host_id: host_id.into(),
        docker_ok: true,
        docker_error: String::new(),
    }
}

#[tokio::test]
async fn joining_needs_the_token_and_calls_need_the_hosts_own_certificate() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;

    // A wrong join token buys nothing.
    let mut anonymous = cp.registry(None).await;
    let refused = anonymous
        .join(agent_proto::JoinRequest {
            host_id: "host-1".into(),
            join_token: "guess".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    // No client certificate: registering and heartbeating are refused.
    let refused = anonymous
        .register(ControlPlane::register_request("host-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let refused = anonymous.heartbeat(heartbeat("host-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    // host-2's certificate cannot speak for host-1.
    let host1 = cp.join("host-1").await;
    let host2 = cp.join("host-2").await;
    let mut as_host2 = cp.registry(Some(&host2)).await;
    let refused = as_host2
        .register(ControlPlane::register_request("host-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let refused = as_host2.heartbeat(heartbeat("host-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let (_, hosts) = cp.call("GET", "/v1/hosts", None).await;
    assert!(
        hosts["hosts"].as_array().unwrap().is_empty(),
        "nothing registered: {hosts}"
    );

    // Each host with its own certificate is welcome.
    let mut as_host1 = cp.registry(Some(&host1)).await;
    as_host1
        .register(ControlPlane::register_request("host-1"))
        .await
        .unwrap();
    assert!(
        as_host1
            .heartbeat(heartbeat("host-1"))
            .await
            .unwrap()
            .into_inner()
            .known
    );
    as_host2
        .register(ControlPlane::register_request("host-2"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let stranger = pki::Authority::generate().unwrap();
    let forged = stranger.issue_agent("host-1").unwrap();
    let ca = cp.ca_pem();
    // TLS itself rejects a client certificate the fleet CA did not sign (the handshake
    // error may surface at connect or at the first call).
    match cp
        .registry_with(&ca, Some((&forged.cert_pem, &forged.key_pem)))
        .await
    {
        Err(_) => {}
        Ok(mut client) => {
            let refused = client
                .register(ControlPlane::register_request("host-1"))
                .await
                .unwrap_err();
            assert_ne!(refused.code(), Code::Ok);
        }
    }
    // And a client that trusts another CA refuses the control plane.
    assert!(cp.registry_with(stranger.cert_pem(), None).await.is_err());
}

#[tokio::test]
async fn the_control_plane_only_talks_to_the_agent_of_the_host_it_dials() {
    use agent_proto::agent_server::{Agent, AgentServer};
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let state = control_plane::build_state(&cp.settings).await.unwrap();
    let tls = control_plane::tls::FleetTls::load(&state.store, &cp.data_dir, None)
        .await
        .unwrap();

    // An "agent" serving with host-2's certificate, dialed as host-1.
    let host2 = cp.join("host-2").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&host2.cert_pem, &host2.key_pem),
    );
    struct Nothing;
    #[tonic::async_trait]
    impl Agent for Nothing {
        type ApplyInstanceStream =
            tokio_stream::Empty<Result<agent_proto::ApplyEvent, tonic::Status>>;
        type RemoveInstanceStream =
            tokio_stream::Empty<Result<agent_proto::ApplyEvent, tonic::Status>>;
        type WatchInstancesStream =
            tokio_stream::Empty<Result<agent_proto::InstanceEvent, tonic::Status>>;
        async fn apply_instance(
            &self,
            _: tonic::Request<agent_proto::ApplyInstanceRequest>,
        ) -> Result<tonic::Response<Self::ApplyInstanceStream>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn remove_instance(
            &self,
            _: tonic::Request<agent_proto::RemoveInstanceRequest>,
        ) -> Result<tonic::Response<Self::RemoveInstanceStream>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn resize_instance(
            &self,
            _: tonic::Request<agent_proto::ResizeInstanceRequest>,
        ) -> Result<tonic::Response<agent_proto::ResizeResult>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn exec_instance(
            &self,
            _: tonic::Request<agent_proto::ExecRequest>,
        ) -> Result<tonic::Response<agent_proto::ExecResult>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn watch_instances(
            &self,
            _: tonic::Request<agent_proto::WatchRequest>,
        ) -> Result<tonic::Response<Self::WatchInstancesStream>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn get_host_info(
            &self,
            _: tonic::Request<()>,
        ) -> Result<tonic::Response<agent_proto::HostInfo>, tonic::Status> {
            Ok(tonic::Response::new(agent_proto::HostInfo::default()))
        }
    }
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(server_tls)
            .unwrap()
            .add_service(AgentServer::new(Nothing))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dial = |host: &str| {
        tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls.agent_client(host))
            .unwrap()
    };
    // Dialed as host-2, the certificate matches and the call goes through.
    let channel = dial("host-2").connect().await.unwrap();
    agent_proto::agent_client::AgentClient::new(channel)
        .get_host_info(())
        .await
        .unwrap();
    // Dialed as host-1, the same server is refused at the handshake.
    let wrong = match dial("host-1").connect().await {
        Err(e) => e.to_string(),
        Ok(channel) => agent_proto::agent_client::AgentClient::new(channel)
            .get_host_info(())
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(!wrong.is_empty());
}
