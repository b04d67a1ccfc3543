//! Registration against an in-process fake of the control plane's Registry service.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::AgentConfig;
use agent_proto::v1::registry_server::{Registry, RegistryServer};
use agent_proto::v1::{
    HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, RegisterRequest,
    RegisterResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

#[derive(Debug)]
enum Call {
    Join(JoinRequest),
    Register(RegisterRequest),
    Heartbeat(HeartbeatRequest),
}

/// Fails the first registration (so the agent must retry), and answers the first heartbeat with known=false
/// (so the agent must register again).
struct FakeRegistry {
    authority: pki::Authority,
    calls: mpsc::UnboundedSender<Call>,
    registrations: Mutex<u32>,
    heartbeats: Mutex<u32>,
}

const TOKEN: &str = "the-join-token";

#[tonic::async_trait]
impl Registry for FakeRegistry {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = request.into_inner();
        let _ = self.calls.send(Call::Join(r.clone()));
        if r.join_token != TOKEN {
            return Err(Status::unauthenticated("the join token is not valid"));
        }
        // As the control plane does: sign the agent's own key; the key never travels.
        let issued = self
            .authority
            .sign_agent_csr(&r.host_id, &r.csr_pem)
            .unwrap();
        Ok(Response::new(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: self.authority.cert_pem().to_string(),
        }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let n = {
            let mut n = self.registrations.lock().unwrap();
            *n += 1;
            *n
        };
        let _ = self.calls.send(Call::Register(request.into_inner()));
        if n == 1 {
            return Err(Status::unavailable("not leader yet"));
        }
        Ok(Response::new(RegisterResponse {
            lease_ttl_seconds: 3,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let n = {
            let mut n = self.heartbeats.lock().unwrap();
            *n += 1;
            *n
        };
        let _ = self.calls.send(Call::Heartbeat(request.into_inner()));
        Ok(Response::new(HeartbeatResponse { known: n != 1 }))
    }
}

async fn next_call(rx: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no call in time")
        .expect("registry gone")
}

/// A registry served over TLS with a control-plane certificate of a fresh CA, like the real one.
async fn start_registry(
    tx: mpsc::UnboundedSender<Call>,
    ca_file: &std::path::Path,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let authority = pki::Authority::generate().unwrap();
    std::fs::write(ca_file, authority.cert_pem()).unwrap();
    let own = authority.issue_control_plane().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &own.cert_pem,
            &own.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(
            authority.cert_pem(),
        ))
        .client_auth_optional(true);
    let registry = Arc::new(FakeRegistry {
        authority,
        calls: tx,
        registrations: Mutex::new(0),
        heartbeats: Mutex::new(0),
    });
    let cp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = cp_listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(RegistryServer::from_arc(registry))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(cp_listener)),
    );
    (cp_addr, server)
}

fn agent_config(
    host_id: &str,
    agent_addr: std::net::SocketAddr,
    cp_addr: std::net::SocketAddr,
    data_dir: &std::path::Path,
    token: &str,
    ca_file: &std::path::Path,
) -> AgentConfig {
    AgentConfig {
        host_id: host_id.to_string(),
        listen: agent_addr,
        advertise: Some("10.1.2.3:7100".into()),
        control_plane: vec![format!("http://{cp_addr}")],
        join_token: Some(token.into()),
        join_token_file: None,
        ca_file: Some(ca_file.to_path_buf()),
        data_dir: Some(data_dir.to_path_buf()),
        docker_host: None,
        addresses: vec!["10.1.2.3".into(), "192.0.2.7".into()],
        metrics_listen: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_token_is_refused_and_the_agent_stops() {
    common::docker().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    let (cp_addr, server) = start_registry(tx, &ca_file).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = agent_config(
        &common::unique_host_id("badtok"),
        listener.local_addr().unwrap(),
        cp_addr,
        &tmp.path().join("data"),
        "not-the-token",
        &ca_file,
    );
    let result = agent::serve(config, listener, std::future::pending()).await;
    assert!(
        matches!(
            result,
            Err(agent::AgentError::Tls(agent::tls::TlsError::Join(
                agent::tls::JoinError::Refused(_)
            )))
        ),
        "{:?}",
        result.err()
    );
    assert!(matches!(next_call(&mut rx).await, Call::Join(_)));
    assert!(
        !tmp.path().join("data/tls/agent.pem").exists(),
        "no certificate without the token"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_then_registers_with_retry_heartbeats_and_registers_again_when_forgotten() {
    // The agent reports docker_ok from a real ping, so this test needs the engine like the others.
    common::docker().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    let (cp_addr, server) = start_registry(tx, &ca_file).await;

    let host_id = common::unique_host_id("reg");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    let config = agent_config(
        &host_id,
        agent_addr,
        cp_addr,
        &tmp.path().join("data"),
        TOKEN,
        &ca_file,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::serve(config, listener, async {
        let _ = stopped.await;
    }));

    let Call::Join(join) = next_call(&mut rx).await else {
        panic!("expected a join first")
    };
    assert_eq!(join.host_id, host_id);
    // The agent sends a signing request for a key it keeps; no private key travels.
    assert!(join.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
    assert!(!join.csr_pem.contains("PRIVATE KEY"));
    let Call::Register(first) = next_call(&mut rx).await else {
        panic!("expected a registration after joining")
    };
    // Registering needs the certificate, so it is stored by now.
    let key = tmp.path().join("data/tls/agent.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key must be private");
    }
    assert_eq!(first.host_id, host_id);
    assert_eq!(first.agent_address, "https://10.1.2.3:7100");
    assert_eq!(first.addresses, ["10.1.2.3", "192.0.2.7"]);
    assert!(first.docker_ok, "docker_error: {}", first.docker_error);
    assert!(first.cpus > 0 && first.memory_bytes > 0);
    assert_eq!(first.agent_version, agent::VERSION);

    let Call::Register(retry) = next_call(&mut rx).await else {
        panic!("expected a retried registration")
    };
    assert_eq!(retry.host_id, host_id);
    let Call::Heartbeat(hb) = next_call(&mut rx).await else {
        panic!("expected a heartbeat")
    };
    assert_eq!(hb.host_id, host_id);
    assert!(hb.docker_ok);
    let Call::Register(again) = next_call(&mut rx).await else {
        panic!("known=false must trigger a registration")
    };
    assert_eq!(again.host_id, host_id);
    let Call::Heartbeat(_) = next_call(&mut rx).await else {
        panic!("heartbeats resume after re-registering")
    };

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stops")
        .unwrap()
        .expect("clean exit");
    server.abort();
}
