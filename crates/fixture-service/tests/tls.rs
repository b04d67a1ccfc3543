//! The fixture's verify-full against a fake Postgres that only does TLS: it answers the
//! SSLRequest, completes the handshake with a certificate made here, then refuses the login
//! with a recognisable message. So a connection attempt that ends in that message passed the
//! certificate checks, and one that ends in a certificate error did not. No Docker needed.

use std::sync::Arc;

use fixture_service::connect::{self, Tls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use service_config::ParsedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// What the fake server says once the handshake is done.
const AFTER_HANDSHAKE: &str = "fake server: TLS handshake done";

/// Postgres's SSLRequest: length 8, code 80877103 (Postgres docs, "Message Formats").
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate with these SANs (IP addresses become IP SANs), and its key.
fn server_cert(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (cert.der().clone(), key_der)
}

/// Serves TLS-only fake Postgres sessions on 127.0.0.1; returns its port.
async fn fake_postgres(issuer: &CertifiedIssuer<'static, KeyPair>, sans: &[&str]) -> u16 {
    let (cert, key) = server_cert(issuer, sans);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if stream.read_exact(&mut request).await.is_err() || request != SSL_REQUEST {
                    return;
                }
                stream.write_all(b"S").await.unwrap();
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                // The startup message: its length, then the rest.
                let mut len = [0u8; 4];
                tls.read_exact(&mut len).await.unwrap();
                let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                tls.read_exact(&mut rest).await.unwrap();
                // ErrorResponse: severity, code, message, each a NUL-terminated field.
                let mut fields = Vec::new();
                for (tag, value) in [(b'S', "FATAL"), (b'C', "28000"), (b'M', AFTER_HANDSHAKE)] {
                    fields.push(tag);
                    fields.extend_from_slice(value.as_bytes());
                    fields.push(0);
                }
                fields.push(0);
                let mut message = vec![b'E'];
                message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                message.extend_from_slice(&fields);
                tls.write_all(&message).await.unwrap();
                tls.shutdown().await.ok();
            });
        }
    });
    port
}

fn connection(host: &str, port: u16) -> ParsedConnection {
    ParsedConnection {
        hosts: vec![(host.into(), port)],
        dbname: "app".into(),
        username: "svc".into(),
        password: "secret".into(),
        target_session_attrs: "any".into(),
        sslmode: "verify-full".into(),
        sslrootcert: Some(service_config::CA_PATH.into()),
        listen_port: 0,
    }
}

/// What one connection attempt to `host` ended with, trusting `trusted`'s certificate.
async fn attempt(trusted: &CertifiedIssuer<'static, KeyPair>, host: &str, port: u16) -> String {
    let config = connect::client_config(trusted.pem().as_bytes()).unwrap();
    let tls = Tls::VerifyFull(tokio_postgres_rustls::MakeRustlsConnect::new(config));
    match connect::connect(&connection(host, port), &tls).await {
        Ok(_) => panic!("the fake server never lets anyone in"),
        Err(e) => e.attempts.join("; "),
    }
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_as_dialled() {
    let fleet = ca("fleet CA");
    let other = ca("another CA");
    // (server SANs, host dialled, CA trusted, passes the checks)
    let cases: [(&[&str], &str, &CertifiedIssuer<'static, KeyPair>, bool); 6] = [
        // An IP address is checked against IP-address SANs (libpq since Postgres 14).
        (&["n1-host-1", "127.0.0.1"], "127.0.0.1", &fleet, true),
        (&["localhost"], "localhost", &fleet, true),
        // A DNS SAN spelling the address is not an IP-address SAN.
        (&["n1-host-1", "localhost"], "127.0.0.1", &fleet, false),
        // A name is not matched against IP-address SANs.
        (&["127.0.0.1"], "localhost", &fleet, false),
        (&["n1-host-2", "10.9.9.9"], "127.0.0.1", &fleet, false),
        // The right names from a CA the client does not trust.
        (&["localhost", "127.0.0.1"], "127.0.0.1", &other, true),
    ];
    for (i, (sans, host, issuer, names_match)) in cases.into_iter().enumerate() {
        let port = fake_postgres(issuer, sans).await;
        let ended = attempt(&fleet, host, port).await;
        let trusted = std::ptr::eq(issuer, &fleet);
        let passes = names_match && trusted;
        assert_eq!(
            ended.contains(AFTER_HANDSHAKE),
            passes,
            "case {i}: SANs {sans:?}, dialled {host}: {ended}"
        );
        if !passes {
            assert!(
                ended.contains("invalid peer certificate"),
                "case {i}: {ended}"
            );
            let why = if trusted {
                "not valid for name"
            } else {
                "UnknownIssuer"
            };
            assert!(ended.contains(why), "case {i}: wanted {why}: {ended}");
        }
        assert!(!ended.contains("secret"), "case {i}: {ended}");
    }
}
