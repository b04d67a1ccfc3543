//! The HTTP API over TLS with the fleet CA (ADR 012, amended): plain HTTP is refused, a
//! client trusting the fleet CA works with verification on, and with mutual TLS a client
//! needs a certificate the fleet CA signed (`berth-control-plane client-cert create`), which
//! does not stand in for a bearer token.

mod common;

use common::ControlPlane;
use control_plane::operator::{ClientCertCommand, Command, Scope, TokenCommand};
use control_plane::settings::ApiAuthMode;
use test_support::EtcdServer;

fn names() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

/// A client that trusts only `ca_pem` (certificates and host names verified) and presents
/// `identity` (certificate and key PEM), if any.
fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// Issues a client certificate with the operator command; returns (certificate, key) PEM.
async fn client_cert(cp: &ControlPlane, name: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let command = Command::ClientCert(ClientCertCommand::Create {
        name: name.into(),
        out: dir.path().to_path_buf(),
    });
    control_plane::operator::run(&cp.settings, command, &mut Vec::new())
        .await
        .unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("ca.pem"), cp.ca_pem());
    (
        read(&format!("{name}.pem")),
        read(&format!("{name}-key.pem")),
    )
}

#[tokio::test]
async fn the_api_serves_tls_with_the_fleet_ca_and_refuses_plain_http() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start_with(&etcd, |s| s.api_tls_names = names()).await;
    assert!(cp.base.starts_with("https://"), "{}", cp.base);

    let plain = cp.base.replacen("https://", "http://", 1);
    let refused = reqwest::Client::new()
        .get(format!("{plain}/v1/version"))
        .send()
        .await;
    assert!(refused.is_err(), "plain HTTP was answered: {refused:?}");

    // A client that does not trust the fleet CA refuses the server.
    let other_ca = pki::Authority::generate().unwrap();
    let untrusting = client(other_ca.cert_pem(), None)
        .get(format!("{}/v1/version", cp.base))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    let trusting = client(&cp.ca_pem(), None);
    for host in ["127.0.0.1", "localhost"] {
        let base = cp.base.replacen("127.0.0.1", host, 1);
        let resp = trusting
            .get(format!("{base}/v1/hosts"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
}

#[tokio::test]
async fn mutual_tls_accepts_only_clients_with_a_fleet_certificate_and_still_wants_a_token() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start_with(&etcd, |s| {
        s.api_tls_names = names();
        s.api_client_certs = true;
        s.api_auth = ApiAuthMode::On;
    })
    .await;
    let version = format!("{}/v1/version", cp.base);

    let without = client(&cp.ca_pem(), None).get(&version).send().await;
    assert!(
        without.is_err(),
        "a client without a certificate got in: {without:?}"
    );

    let stranger_ca = pki::Authority::generate().unwrap();
    let stranger = stranger_ca.issue_api_client("mallory").unwrap();
    let foreign = client(&cp.ca_pem(), Some((&stranger.cert_pem, &stranger.key_pem)))
        .get(&version)
        .send()
        .await;
    assert!(
        foreign.is_err(),
        "a certificate of another CA got in: {foreign:?}"
    );

    let (cert, key) = client_cert(&cp, "alice").await;
    let alice = client(&cp.ca_pem(), Some((&cert, &key)));
    let resp = alice.get(&version).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The certificate opens the connection; the API still asks for a token.
    let resp = alice
        .get(format!("{}/v1/hosts", cp.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let mut out = Vec::new();
    let create = Command::Token(TokenCommand::Create {
        name: "alice".into(),
        scope: Scope::ReadOnly,
    });
    control_plane::operator::run(&cp.settings, create, &mut out)
        .await
        .unwrap();
    let token = String::from_utf8(out).unwrap().trim().to_string();
    let resp = alice
        .get(format!("{}/v1/hosts", cp.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
