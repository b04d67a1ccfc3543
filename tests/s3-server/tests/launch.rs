//! `Launch::start` against the real binary: it comes up where it says, with its bucket,
//! and a server that refuses its arguments is reported with its log.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;

use s3_server::{Launch, LaunchError};

fn launch(bucket: &str) -> Launch<'_> {
    Launch {
        binary: Path::new(env!("CARGO_BIN_EXE_berth-s3-server")),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        bucket,
        region: "eu-central-1",
        prefix: "berth-s3-test",
        log_filter: "info,rustls=error",
    }
}

#[test]
fn starts_listening_with_its_bucket() {
    let server = launch("backups").start().expect("the server starts");
    assert_eq!(server.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(server.addr.port(), 0);
    TcpStream::connect(server.addr).expect("it accepts connections");
    assert!(server.root.join("backups").is_dir());
    assert!(server.access_key.starts_with("berth-s3-test-"));
    assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let debug = format!("{server:?}");
    assert!(!debug.contains(&server.secret_key), "{debug}");

    let root = server.root.clone();
    drop(server);
    assert!(!root.exists(), "its data is removed with it");
}

#[test]
fn a_refused_start_is_reported_with_the_log() {
    match launch("../outside").start() {
        Err(LaunchError::NotStarted { stdout, log }) => {
            assert_eq!(stdout, "");
            assert!(log.contains("is not a bucket name"), "{log}");
        }
        other => panic!("expected NotStarted, got {other:?}"),
    }
}
