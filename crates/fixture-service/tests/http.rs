//! The fixture's HTTP side without a database: nothing answers on the configured hosts, so
//! /health (and a postgrest stand-in's rows) must say 503 and /config must show the
//! connection without its password.

use std::time::Duration;

use fixture_service::probe::probe;
use service_config::{ConnectionTarget, Credentials, ParsedConnection};
use spec::ServiceType;

/// A port on which nothing listens: bound, then released.
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn start(
    conn: ParsedConnection,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_as(ServiceType::Mcp, conn, None).await
}

async fn start_as(
    service_type: ServiceType,
    conn: ParsedConnection,
    api: Option<service_config::PostgrestApi>,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let tls = fixture_service::connect::Tls::Off;
        fixture_service::run(service_type, conn, api, tls, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (port, stop, task)
}

#[tokio::test]
async fn health_is_503_while_no_host_answers_and_config_hides_the_password() {
    let db_port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = Credentials {
        username: "svc_x_ro".into(),
        password: "hunter2-secret".into(),
    };
    let target = ConnectionTarget {
        hosts: vec![("127.0.0.1".into(), db_port)],
        dbname: "app".into(),
        target_session_attrs: "standby".into(),
        ca_pem: None,
    };
    for f in service_config::render(
        ServiceType::Mcp,
        &Default::default(),
        &creds,
        &creds,
        &target,
        0,
    ) {
        std::fs::write(dir.path().join(&f.path), &f.content).unwrap();
    }
    let conn = fixture_service::load_config(ServiceType::Mcp, dir.path()).unwrap();
    let (port, stop, task) = start(conn).await;
    let base = format!("http://127.0.0.1:{port}");

    // Give the connection manager time to try (and fail) at least once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = probe(&format!("{base}/health")).await.unwrap();
    assert_eq!(code, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["error"], "disconnected");
    assert_eq!(health["type"], "mcp");
    assert_eq!(health["user"], "svc_x_ro");
    assert_eq!(health["target_session_attrs"], "standby");
    assert!(health["connected_host"].is_null());
    assert!(health["ssl"].is_null(), "no session, so no answer: {body}");

    let (code, body) = probe(&format!("{base}/config")).await.unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains("hunter2"), "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["hosts"],
        serde_json::json!([{"host": "127.0.0.1", "port": db_port}])
    );
    assert_eq!(config["username"], "svc_x_ro");
    assert_eq!(config["dbname"], "app");
    assert_eq!(config["sslmode"], "disable");
    assert!(config["sslrootcert"].is_null());
    assert!(config.get("password").is_none());

    let (code, _) = probe(&format!("{base}/nope")).await.unwrap();
    assert_eq!(code, 404);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// What service-config renders with a CA is what the fixture starts from: the CA file lands
/// beside the config, and the fixture finds it there although the config names it at its
/// path inside a container.
#[tokio::test]
async fn a_config_rendered_with_a_ca_asks_for_verify_full_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(
        {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        },
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let creds = Credentials {
        username: "svc_x_rw".into(),
        password: "pw".into(),
    };
    let target = ConnectionTarget {
        hosts: vec![("10.0.0.7".into(), 5433)],
        dbname: "app".into(),
        target_session_attrs: "primary".into(),
        ca_pem: Some(ca.pem()),
    };
    for t in ServiceType::ALL {
        for f in service_config::render(t, &Default::default(), &creds, &creds, &target, 8080) {
            std::fs::write(dir.path().join(&f.path), &f.content).unwrap();
        }
        let conn = fixture_service::load_config(t, dir.path()).unwrap();
        assert_eq!(conn.sslmode, "verify-full", "{t}");
        assert_eq!(
            conn.sslrootcert.as_deref(),
            Some("/etc/berth/service/ca.crt"),
            "{t}"
        );
        let tls = fixture_service::connect::Tls::from_connection(&conn, dir.path()).unwrap();
        assert!(
            matches!(tls, fixture_service::connect::Tls::VerifyFull(_)),
            "{t}"
        );
    }
}

/// The postgrest stand-in reads its anonymous role and schema from the rendered file, and
/// without a session answers a table's rows with 503; a name that is no plain identifier is
/// a 404 before any SQL.
#[tokio::test]
async fn postgrest_rows_need_a_session_and_a_plain_table_name() {
    let db_port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = |username: &str| Credentials {
        username: username.into(),
        password: "pw".into(),
    };
    let target = ConnectionTarget {
        hosts: vec![("127.0.0.1".into(), db_port)],
        dbname: "app".into(),
        target_session_attrs: "read-write".into(),
        ca_pem: None,
    };
    let config = serde_json::json!({"db_schemas": "api"});
    for f in service_config::render(
        ServiceType::Postgrest,
        config.as_object().unwrap(),
        &creds("svc_rest_rw"),
        &creds("svc_rest_ro"),
        &target,
        0,
    ) {
        std::fs::write(dir.path().join(&f.path), &f.content).unwrap();
    }
    let api = fixture_service::load_api(ServiceType::Postgrest, dir.path()).unwrap();
    assert_eq!(
        api,
        Some(service_config::PostgrestApi {
            anon_role: "svc_rest_ro".into(),
            schemas: vec!["api".into()],
        })
    );
    assert_eq!(
        fixture_service::load_api(ServiceType::Mcp, dir.path()).unwrap(),
        None
    );
    let conn = fixture_service::load_config(ServiceType::Postgrest, dir.path()).unwrap();
    let (port, stop, task) = start_as(ServiceType::Postgrest, conn, api).await;
    let base = format!("http://127.0.0.1:{port}");

    let (code, body) = probe(&format!("{base}/kv")).await.unwrap();
    assert_eq!(code, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["message"], "no database connection", "{body}");
    let (code, body) = probe(&format!("{base}/kv;select")).await.unwrap();
    assert_eq!(code, 404, "{body}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn load_config_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = fixture_service::load_config(ServiceType::Postgrest, dir.path()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "reading {}",
            dir.path().join("postgrest.conf").display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn probe_of_a_dead_port_is_an_error() {
    let port = dead_port().await;
    assert!(
        probe(&format!("http://127.0.0.1:{port}/health"))
            .await
            .is_err()
    );
}
