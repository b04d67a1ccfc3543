//! A simulated host against a stand-in Registry (serving TLS with a certificate of a real fleet CA, issuing
//! certificates on join) and a real gRPC client holding a control plane's certificate: join, registration,
//! refusal of a non-control-plane client, snapshot, apply with log lines, unchanged re-apply, exec, remove.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proto::v1::agent_client::AgentClient;
use agent_proto::v1::registry_server::{Registry, RegistryServer};
use agent_proto::v1::{
    ApplyAction, ApplyInstanceRequest, ExecRequest, Health, HeartbeatRequest, HeartbeatResponse,
    InstanceSpec, InstanceStatus, RegisterRequest, RegisterResponse, RemoveInstanceRequest,
    WatchRequest, apply_event, instance_event,
};
use hollow_agent::{ApplyLog, EMITTED_AT_FIELD, HostConfig, JoinWith, start_host};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct FakeRegistry {
    ca: Arc<pki::Authority>,
    token: String,
    joined: Arc<Mutex<Vec<String>>>,
    registered: Arc<Mutex<Vec<RegisterRequest>>>,
}

#[tonic::async_trait]
impl Registry for FakeRegistry {
    async fn join(
        &self,
        request: Request<agent_proto::v1::JoinRequest>,
    ) -> Result<Response<agent_proto::v1::JoinResponse>, Status> {
        let r = request.into_inner();
        if r.join_token != self.token {
            return Err(Status::unauthenticated("wrong token"));
        }
        let issued = self.ca.sign_agent_csr(&r.host_id, &r.csr_pem).unwrap();
        self.joined.lock().unwrap().push(r.host_id);
        Ok(Response::new(agent_proto::v1::JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        // As the control plane does: only a host's own certificate may register it.
        let caller = request
            .peer_certs()
            .and_then(|c| c.first().and_then(|c| pki::peer_host_id(c)));
        if caller.as_deref() != Some(request.get_ref().host_id.as_str()) {
            return Err(Status::permission_denied("not this host's certificate"));
        }
        self.registered.lock().unwrap().push(request.into_inner());
        Ok(Response::new(RegisterResponse {
            lease_ttl_seconds: 3,
        }))
    }

    async fn heartbeat(
        &self,
        _request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse { known: true }))
    }
}

fn spec(model: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: "db1-mcp-h1".into(),
        database_id: "db1".into(),
        service_id: "mcp".into(),
        kind: agent_proto::v1::InstanceKind::Service as i32,
        image: "berth/fixture-service:local".into(),
        env: [("MODEL".to_string(), model.to_string())]
            .into_iter()
            .collect(),
        labels: [
            ("berth.desired-hash".to_string(), "h".to_string()),
            ("berth.host-id".to_string(), "forged".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn simulated_host_speaks_the_agent_protocol() {
    let ca = Arc::new(pki::Authority::generate().unwrap());
    let control_plane = ca.issue_control_plane().unwrap();
    let registry = FakeRegistry {
        ca: ca.clone(),
        token: "the-token".into(),
        joined: Default::default(),
        registered: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    let served = registry.clone();
    let server_tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &control_plane.cert_pem,
            &control_plane.key_pem,
        ))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(server_tls)
            .unwrap()
            .add_service(RegistryServer::new(served))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });

    let host = start_host(HostConfig {
        host_id: "h1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        registries: vec![registry_url],
        join: JoinWith {
            token: "the-token".into(),
            ca_pem: ca.cert_pem().to_string(),
        },
        apply_log: ApplyLog {
            lines: 3,
            interval: Duration::from_millis(1),
        },
    })
    .await
    .unwrap();

    // Registration carries the address the control plane must dial.
    for _ in 0..100 {
        if !registry.registered.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registered = registry.registered.lock().unwrap()[0].clone();
    assert_eq!(*registry.joined.lock().unwrap(), ["h1"]);
    assert_eq!(registered.host_id, "h1");
    assert_eq!(registered.agent_address, host.address);
    assert!(registered.agent_version.starts_with("hollow-"));

    // Like a real agent, it serves only a client proving a control plane's certificate.
    let dial = |identity: &pki::Identity| {
        Endpoint::from_shared(host.address.clone())
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca.cert_pem()))
                    .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
                    .domain_name(pki::agent_server_name("h1")),
            )
            .unwrap()
            .connect_lazy()
    };
    let other_host = ca.issue_agent("h2").unwrap();
    let refused = AgentClient::new(dial(&other_host))
        .watch_instances(WatchRequest {})
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
    let mut client = AgentClient::new(dial(&control_plane));
    let mut watch = client
        .watch_instances(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    match watch.message().await.unwrap().unwrap().event {
        Some(instance_event::Event::Snapshot(s)) => assert!(s.instances.is_empty()),
        other => panic!("expected an empty snapshot first, got {other:?}"),
    }

    // Apply: log lines stamped with their emit time, then the result, and a RUNNING+HEALTHY change.
    let mut apply = client
        .apply_instance(ApplyInstanceRequest {
            spec: Some(spec("a")),
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = 0;
    let mut result = None;
    while let Some(event) = apply.message().await.unwrap() {
        match event.event {
            Some(apply_event::Event::Log(l)) => {
                assert!(l.fields[EMITTED_AT_FIELD].parse::<u128>().unwrap() > 0);
                lines += 1;
            }
            Some(apply_event::Event::Result(r)) => result = Some(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(lines, 3);
    let result = result.expect("an apply result");
    assert_eq!(result.action, ApplyAction::Created as i32);
    let changed = match watch.message().await.unwrap().unwrap().event {
        Some(instance_event::Event::Changed(s)) => s,
        other => panic!("expected a change, got {other:?}"),
    };
    assert_eq!(changed.state, InstanceStatus::Running as i32);
    assert_eq!(changed.health, Health::None as i32);
    assert_eq!(changed.labels["berth.database-id"], "db1");
    assert_eq!(changed.labels["berth.host-id"], "h1");
    // The real agent's rule: ownership labels cannot be forged by a request (host-id above is the
    // host's own), and the control plane's desired-hash passes through.
    assert_eq!(changed.labels["berth.desired-hash"], "h");

    // The same spec again: unchanged, and no event.
    let mut again = client
        .apply_instance(ApplyInstanceRequest {
            spec: Some(spec("a")),
        })
        .await
        .unwrap()
        .into_inner();
    let mut action = None;
    while let Some(event) = again.message().await.unwrap() {
        if let Some(apply_event::Event::Result(r)) = event.event {
            action = Some(r.action);
        }
    }
    assert_eq!(action, Some(ApplyAction::Unchanged as i32));
    // A changed spec is a recreation.
    let mut changed_spec = client
        .apply_instance(ApplyInstanceRequest {
            spec: Some(spec("b")),
        })
        .await
        .unwrap()
        .into_inner();
    let mut action = None;
    while let Some(event) = changed_spec.message().await.unwrap() {
        if let Some(apply_event::Event::Result(r)) = event.event {
            action = Some(r.action);
        }
    }
    assert_eq!(action, Some(ApplyAction::Recreated as i32));
    match watch.message().await.unwrap().unwrap().event {
        Some(instance_event::Event::Changed(s)) => assert_eq!(s.instance_id, "db1-mcp-h1"),
        other => panic!("expected the recreation's change, got {other:?}"),
    }

    let exec = client
        .exec_instance(ExecRequest {
            instance_id: "db1-mcp-h1".into(),
            argv: vec!["psql".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exec.exit_code, 0);
    let unknown = client
        .exec_instance(ExecRequest {
            instance_id: "nope".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    let mut removed = client
        .remove_instance(RemoveInstanceRequest {
            instance_id: "db1-mcp-h1".into(),
            delete_data: true,
        })
        .await
        .unwrap()
        .into_inner();
    match removed.message().await.unwrap().unwrap().event {
        Some(apply_event::Event::Removed(r)) => assert!(r.container_removed),
        other => panic!("expected a removal result, got {other:?}"),
    }
    match watch.message().await.unwrap().unwrap().event {
        Some(instance_event::Event::RemovedInstanceId(id)) => assert_eq!(id, "db1-mcp-h1"),
        other => panic!("expected the removal, got {other:?}"),
    }
    assert_eq!(
        host.counters
            .applies
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}
