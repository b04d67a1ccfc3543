// Each test binary uses a different part of this module.
#![allow(dead_code)]

//! A control plane started in-process on free ports against a real etcd, and a way to join
//! and register hosts the way agents do.

use std::path::PathBuf;
use std::time::Duration;

use agent_proto::registry_client::RegistryClient;
use agent_proto::{JoinRequest, RegisterRequest};
use control_plane::settings::Settings;
use reqwest::StatusCode;
use serde_json::Value;
use test_support::{EtcdServer, free_port};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub struct ControlPlane {
    pub base: String,
    pub grpc: String,
    pub settings: Settings,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// What a host holds after joining: its certificate and the key it made itself.
#[derive(Clone)]
pub struct HostIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl HostIdentity {
    /// The certificate's serial number, as the deny list names it.
    pub fn serial(&self) -> String {
        pki::serial_hex(&pki::pem_to_der(&self.cert_pem).unwrap()).unwrap()
    }
}

impl ControlPlane {
    /// A replica serving the API only: hosts registered here have no agent behind them.
    pub async fn start(etcd: &EtcdServer) -> Self {
        Self::start_with(etcd, |_| {}).await
    }

    /// Like [`ControlPlane::start`], with `adjust` applied to the settings first.
    pub async fn start_with(etcd: &EtcdServer, adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, grpc) = (free_port(), free_port());
        let settings = Settings {
            listen: format!("127.0.0.1:{http}").parse().unwrap(),
            grpc_listen: format!("127.0.0.1:{grpc}").parse().unwrap(),
            etcd_endpoints: vec![etcd.endpoint()],
            etcd_prefix: "/berth".into(),
            etcd_username: None,
            etcd_password_file: None,
            dcs_endpoints: vec![],
            patroni_ttl: control_plane::patroni::config::TTL,
            patroni_loop_wait: control_plane::patroni::config::LOOP_WAIT,
            patroni_retry_timeout: control_plane::patroni::config::RETRY_TIMEOUT,
            data_dir: dir.path().to_path_buf(),
            key_file: None,
            manifest: Some(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../specs/service-versions.local.json"
                )
                .into(),
            ),
            host_lease_ttl: 2,
            no_reconcile: true,
            leader_lease_ttl: 5,
            replica_id: None,
            join_token: None,
            api_auth: control_plane::settings::ApiAuthMode::Auto,
            allow_unauthenticated_api: false,
            api_tls_names: vec![],
            api_tls_cert: None,
            api_tls_key: None,
            api_client_certs: false,
            task_retention_count: 100,
            task_retention_days: 30,
            deleted_history_days: 7,
            retention_sweep_seconds: 60,
            instance_check_seconds: 60,
        };
        let mut settings = settings;
        adjust(&mut settings);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = settings.clone();
        tokio::spawn(async move {
            control_plane::run(s, async {
                let _ = rx.await;
            })
            .await
            .expect("control plane runs");
        });
        let tls = settings.api_tls_enabled().unwrap_or(false);
        let base = format!("{}://127.0.0.1:{http}", if tls { "https" } else { "http" });
        let client = reqwest::Client::new();
        for _ in 0..100 {
            // With TLS on, this client trusts no fleet CA: the port accepting is the sign.
            let up = if tls {
                tokio::net::TcpStream::connect(("127.0.0.1", http))
                    .await
                    .is_ok()
            } else {
                client
                    .get(format!("{base}/v1/version"))
                    .send()
                    .await
                    .is_ok()
            };
            if up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ControlPlane {
            base,
            grpc: format!("https://127.0.0.1:{grpc}"),
            settings,
            data_dir: dir.path().to_path_buf(),
            stop: Some(tx),
            _dir: dir,
        }
    }

    /// The fleet CA the control plane wrote into its data dir.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca.pem")).unwrap()
    }

    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("join-token")).unwrap()
    }

    /// A registry connection over TLS that trusts `ca_pem` and presents `identity`, if any.
    pub async fn registry_with(
        &self,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<RegistryClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(pki::CONTROL_PLANE_NAME);
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(self.grpc.clone())?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(RegistryClient::new(channel))
    }

    pub async fn registry(&self, identity: Option<&HostIdentity>) -> RegistryClient<Channel> {
        let ca = self.ca_pem();
        self.registry_with(
            &ca,
            identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str())),
        )
        .await
        .unwrap()
    }

    /// Joins as `host_id` with `token`, as an agent does: with a key of its own and a
    /// certificate signing request for it.
    pub async fn try_join(
        &self,
        host_id: &str,
        token: &str,
    ) -> Result<HostIdentity, tonic::Status> {
        let own = pki::agent_csr(host_id).unwrap();
        let request = JoinRequest {
            host_id: host_id.into(),
            join_token: token.into(),
            csr_pem: own.csr_pem,
        };
        let answer = self.registry(None).await.join(request).await?.into_inner();
        Ok(HostIdentity {
            cert_pem: answer.cert_pem,
            key_pem: own.key_pem,
        })
    }

    /// Joins as `host_id` with the fleet's token; returns the host's certificate and key.
    pub async fn join(&self, host_id: &str) -> HostIdentity {
        self.try_join(host_id, &self.join_token()).await.unwrap()
    }

    pub fn register_request(host_id: &str) -> RegisterRequest {
        RegisterRequest {
            host_id: host_id.into(),
            agent_address: "https://127.0.0.1:1".into(),
            addresses: vec!["127.0.0.1".into()],
            cpus: 2,
            memory_bytes: 1 << 30,
            agent_version: "test".into(),
            docker_ok: true,
            docker_error: String::new(),
            engine_id: "test-engine".into(),
        }
    }

    /// Joins and registers `host_id` as an agent would.
    pub async fn register(&self, host_id: &str) {
        let identity = self.join(host_id).await;
        self.registry(Some(&identity))
            .await
            .register(Self::register_request(host_id))
            .await
            .unwrap();
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.call_as(None, method, path, body).await
    }

    /// A call with `Authorization: Bearer <token>` when `token` is given.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {text:?}"));
        (status, value)
    }

    pub async fn store(&self) -> store::Store {
        control_plane::build_state(&self.settings)
            .await
            .unwrap()
            .store
            .clone()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
