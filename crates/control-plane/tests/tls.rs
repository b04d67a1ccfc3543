//! The registry and the agent channel are mutually authenticated: a caller without a fleet
//! certificate, or with another host's, is refused. A host id joins once: a second join with
//! the fleet's token is refused, removing a host revokes its certificate, and a re-join token
//! is bound to its host and used once.

mod common;

use agent_proto::HeartbeatRequest;
use common::{ControlPlane, HostIdentity};
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
            csr_pem: pki::agent_csr("host-1").unwrap().csr_pem,
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

async fn heartbeat_as(
    cp: &ControlPlane,
    host: &str,
    identity: &HostIdentity,
) -> Result<bool, tonic::Status> {
    cp.registry(Some(identity))
        .await
        .heartbeat(heartbeat(host))
        .await
        .map(|r| r.into_inner().known)
}

async fn register_as(
    cp: &ControlPlane,
    host: &str,
    identity: &HostIdentity,
) -> Result<(), tonic::Status> {
    cp.registry(Some(identity))
        .await
        .register(ControlPlane::register_request(host))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_join_for_a_host_id_that_already_joined_is_refused() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let real = cp.join("host-2").await;
    register_as(&cp, "host-2", &real).await.unwrap();

    // An impostor with the fleet's join token asks for host-2: refused, and host-2 keeps the
    // address its own agent registered.
    let refused = cp
        .try_join("host-2", &cp.join_token())
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused}");
    assert!(
        refused.message().contains("DELETE /v1/hosts/host-2"),
        "{refused}"
    );
    let (_, host) = cp.call("GET", "/v1/hosts/host-2", None).await;
    assert_eq!(host["agent_address"], "https://127.0.0.1:1", "{host}");

    // A host id that joined but has not registered yet is taken too.
    cp.join("host-3").await;
    let refused = cp
        .try_join("host-3", &cp.join_token())
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused}");

    // The real host goes on.
    assert!(heartbeat_as(&cp, "host-2", &real).await.unwrap());
}

#[tokio::test]
async fn removing_a_host_revokes_its_certificate_and_frees_its_id() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let old = cp.join("host-1").await;
    register_as(&cp, "host-1", &old).await.unwrap();

    let (status, removed) = cp.call("DELETE", "/v1/hosts/host-1", None).await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["revoked_certificate_serial"], old.serial().as_str());
    let (status, _) = cp.call("GET", "/v1/hosts/host-1", None).await;
    assert_eq!(status, 404);
    let (status, body) = cp.call("DELETE", "/v1/hosts/host-1", None).await;
    assert_eq!(status, 404, "{body}");

    // The old certificate is refused on every call from now on.
    let refused = register_as(&cp, "host-1", &old).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("revoked"), "{refused}");
    let refused = heartbeat_as(&cp, "host-1", &old).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    // The id joins again with the fleet's token, as a new machine would.
    let new = cp.join("host-1").await;
    register_as(&cp, "host-1", &new).await.unwrap();
    assert!(register_as(&cp, "host-1", &old).await.is_err());
}

#[tokio::test]
async fn a_host_a_database_runs_on_is_not_removed() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let body = r#"{"id": "db1", "spec": {"database_name": "db1", "nodes": [{"name": "n1", "host_ids": ["host-1"]}]}}"#;
    let (status, created) = cp.call("POST", "/v1/databases", Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let (status, refused) = cp.call("DELETE", "/v1/hosts/host-1", None).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["name"], "conflict");
    assert!(
        refused["message"].as_str().unwrap().contains("db1"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_rejoin_token_is_bound_to_its_host_used_once_and_replaces_the_certificate() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let old = cp.join("host-1").await;
    register_as(&cp, "host-1", &old).await.unwrap();
    cp.register("host-2").await;

    let (status, body) = cp.call("POST", "/v1/hosts/host-1/rejoin-token", None).await;
    assert_eq!(status, 200, "{body}");
    let token = body["rejoin_token"].as_str().unwrap().to_string();
    let (status, _) = cp.call("POST", "/v1/hosts/nope/rejoin-token", None).await;
    assert_eq!(status, 404);

    // Bound to host-1: it buys nothing for host-2 nor for a new host id.
    for other in ["host-2", "host-9"] {
        let refused = cp.try_join(other, &token).await.err().expect("refused");
        assert_eq!(refused.code(), Code::Unauthenticated, "{other}: {refused}");
    }
    // host-1 re-joins with it once; its old certificate is revoked.
    let new = cp.try_join("host-1", &token).await.unwrap();
    register_as(&cp, "host-1", &new).await.unwrap();
    let refused = heartbeat_as(&cp, "host-1", &old).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let refused = cp
        .try_join("host-1", &token)
        .await
        .err()
        .expect("single use");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    // Only hashes are stored: neither the re-join token nor any private key is in etcd.
    let dump = cp.store().await.dump().await.unwrap();
    for (key, value) in dump {
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains(&token), "{key} holds the re-join token");
        assert!(!text.contains("PRIVATE KEY"), "{key} holds a private key");
    }
}
