//! Registration against an in-process fake of the control plane's Registry service.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::AgentConfig;
use agent_proto::v1::registry_server::{Registry, RegistryServer};
use agent_proto::v1::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

#[derive(Debug)]
enum Call {
    Register(RegisterRequest),
    Heartbeat(HeartbeatRequest),
}

/// Fails the first registration (so the agent must retry), and answers the first heartbeat with known=false
/// (so the agent must register again).
struct FakeRegistry {
    calls: mpsc::UnboundedSender<Call>,
    registrations: Mutex<u32>,
    heartbeats: Mutex<u32>,
}

#[tonic::async_trait]
impl Registry for FakeRegistry {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_retry_heartbeats_and_registers_again_when_forgotten() {
    // The agent reports docker_ok from a real ping, so this test needs the engine like the others.
    common::docker().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let registry = Arc::new(FakeRegistry {
        calls: tx,
        registrations: Mutex::new(0),
        heartbeats: Mutex::new(0),
    });
    let cp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = cp_listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistryServer::from_arc(registry))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(cp_listener)),
    );

    let host_id = common::unique_host_id("reg");
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    let config = AgentConfig {
        host_id: host_id.clone(),
        listen: agent_addr,
        advertise: Some("10.1.2.3:7100".into()),
        control_plane: vec![format!("http://{cp_addr}")],
        data_dir: Some(tmp.path().to_path_buf()),
        docker_host: None,
        addresses: vec!["10.1.2.3".into(), "192.0.2.7".into()],
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::serve(config, listener, async {
        let _ = stopped.await;
    }));

    let Call::Register(first) = next_call(&mut rx).await else {
        panic!("expected a registration first")
    };
    assert_eq!(first.host_id, host_id);
    assert_eq!(first.agent_address, "http://10.1.2.3:7100");
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
