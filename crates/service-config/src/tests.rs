use proptest::prelude::*;
use serde_json::{Map, Value, json};
use spec::ServiceType;

use crate::*;

fn creds(username: &str, password: &str) -> Credentials {
    Credentials {
        username: username.into(),
        password: password.into(),
    }
}

fn rw() -> Credentials {
    creds("svc_api_rw", "rw-p@ss:w/rd%,\"'")
}

fn ro() -> Credentials {
    creds("svc_api_ro", "ro-secret")
}

fn target() -> ConnectionTarget {
    ConnectionTarget {
        hosts: vec![
            ("db-n1".into(), 5432),
            ("10.0.0.7".into(), 5433),
            ("fd00::2".into(), 5434),
        ],
        dbname: "app".into(),
        target_session_attrs: "primary".into(),
        ca_pem: None,
    }
}

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfleetca\n-----END CERTIFICATE-----\n";

fn tls_target() -> ConnectionTarget {
    ConnectionTarget {
        ca_pem: Some(CA_PEM.into()),
        ..target()
    }
}

fn config(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("test config must be an object, got {other}"),
    }
}

fn render_one(t: ServiceType, cfg: &Map<String, Value>) -> String {
    let files = render(t, cfg, &rw(), &ro(), &target(), 8080);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, config_files(t)[0]);
    String::from_utf8(files[0].content.clone()).unwrap()
}

#[test]
fn postgrest_conf() {
    let cfg = config(json!({
        "db_schemas": ["api", "public"],
        "db_anon_role": "web_anon",
        "db_pool": 5,
        "max_rows": 1000,
        "jwt_secret": "a-very-long-secret-with-\"quotes\"-and-\\backslash",
        "jwt_aud": "berth",
        "server_cors_allowed_origins": ["https://a.example", "https://b.example"],
    }));
    insta::assert_snapshot!(render_one(ServiceType::Postgrest, &cfg));
}

#[test]
fn postgrest_defaults_connect_rw_and_serve_as_ro() {
    let text = render_one(ServiceType::Postgrest, &Map::new());
    insta::assert_snapshot!(text);
    assert!(text.contains("db-anon-role = \"svc_api_ro\""));
    assert!(!text.contains("jwt-secret"));
}

#[test]
fn postgrest_api_reads_the_anon_role_and_schemas_back() {
    let api = |cfg: &Map<String, Value>| {
        postgrest_api(&render(
            ServiceType::Postgrest,
            cfg,
            &rw(),
            &ro(),
            &target(),
            8080,
        ))
    };
    assert_eq!(
        api(&Map::new()),
        Ok(PostgrestApi {
            anon_role: "svc_api_ro".into(),
            schemas: vec!["public".into()],
        })
    );
    let cfg = config(json!({"db_schemas": ["api", "public"], "db_anon_role": "web \"anon\""}));
    assert_eq!(
        api(&cfg),
        Ok(PostgrestApi {
            anon_role: "web \"anon\"".into(),
            schemas: vec!["api".into(), "public".into()],
        })
    );
    assert_eq!(
        postgrest_api(&[]),
        Err(ParseError::MissingFile {
            service_type: ServiceType::Postgrest,
            path: "postgrest.conf".into()
        })
    );
    let without_role = RenderedFile {
        path: "postgrest.conf".into(),
        content: b"db-schemas = \"public\"\n".to_vec(),
    };
    assert_eq!(
        postgrest_api(&[without_role]).unwrap_err().to_string(),
        "postgrest.conf: no db-anon-role"
    );
}

#[test]
fn mcp_read_only_uses_ro_role() {
    let cfg = config(json!({
        "llm_enabled": true,
        "llm_provider": "anthropic",
        "llm_model": "claude-sonnet",
        "anthropic_api_key": "sk-ant",
        "openai_api_key": "sk-oai",
        "embedding_enabled": true,
        "embedding_provider": "voyage",
        "embedding_model": "voyage-3",
        "voyage_api_key": "pa-voy",
        "pool_max_conns": 8,
    }));
    let text = render_one(ServiceType::Mcp, &cfg);
    insta::assert_snapshot!(text);
    let parsed = parse_rendered(
        ServiceType::Mcp,
        &render(ServiceType::Mcp, &cfg, &rw(), &ro(), &target(), 8080),
    )
    .unwrap();
    assert_eq!(parsed.username, "svc_api_ro");
    assert_eq!(parsed.password, "ro-secret");
}

#[test]
fn mcp_allow_writes_uses_rw_role() {
    // A credential alone configures no section.
    let cfg = config(json!({"allow_writes": true, "openai_api_key": "sk"}));
    let files = render(ServiceType::Mcp, &cfg, &rw(), &ro(), &target(), 8080);
    let parsed = parse_rendered(ServiceType::Mcp, &files).unwrap();
    assert_eq!(parsed.username, "svc_api_rw");
    assert_eq!(parsed.password, rw().password);
    let text = String::from_utf8(files[0].content.clone()).unwrap();
    assert!(text.contains("allow_writes: true"));
    assert!(
        !text.contains("llm:") && !text.contains("embedding:"),
        "no llm_* keys, no llm section:\n{text}"
    );
}

#[test]
fn rag_config() {
    let cfg = config(json!({
        "pipelines": [{
            "name": "docs",
            "tables": [{"table": "documents", "text_column": "body", "vector_column": "embedding"}],
            "embedding_llm": {"provider": "openai", "model": "text-embedding-3-small", "api_key": "sk-emb"},
            "rag_llm": {"provider": "anthropic", "model": "claude-sonnet", "api_key": "sk-ant"},
        }],
        "defaults": {"top_n": 5, "token_budget": 4000},
    }));
    let text = render_one(ServiceType::Rag, &cfg);
    insta::assert_snapshot!(text);
    let parsed = parse_rendered(
        ServiceType::Rag,
        &render(ServiceType::Rag, &cfg, &rw(), &ro(), &target(), 8080),
    )
    .unwrap();
    assert_eq!(parsed.username, "svc_api_ro");
}

#[test]
fn round_trip_every_type() {
    for t in ServiceType::ALL {
        let files = render(t, &Map::new(), &rw(), &ro(), &target(), 9100);
        let parsed = parse_rendered(t, &files).unwrap_or_else(|e| panic!("{t}: {e}"));
        let expect_user = if t == ServiceType::Postgrest {
            rw()
        } else {
            ro()
        };
        // Without a CA each format keeps what it said before: the YAML files `disable`,
        // PostgREST's URI nothing, which is libpq's default.
        let sslmode = if t == ServiceType::Postgrest {
            "prefer"
        } else {
            "disable"
        };
        assert_eq!(
            parsed,
            ParsedConnection {
                hosts: target().hosts,
                dbname: "app".into(),
                username: expect_user.username.clone(),
                password: expect_user.password.clone(),
                target_session_attrs: "primary".into(),
                sslmode: sslmode.into(),
                sslrootcert: None,
                listen_port: 9100,
            },
            "{t}"
        );

        let files = render(t, &Map::new(), &rw(), &ro(), &tls_target(), 9100);
        let parsed = parse_rendered(t, &files).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(
            parsed,
            ParsedConnection {
                hosts: target().hosts,
                dbname: "app".into(),
                username: expect_user.username,
                password: expect_user.password,
                target_session_attrs: "primary".into(),
                sslmode: "verify-full".into(),
                sslrootcert: Some("/etc/berth/service/ca.crt".into()),
                listen_port: 9100,
            },
            "{t} with a CA"
        );
    }
}

#[test]
fn the_ca_path_is_the_ca_file_in_the_config_dir() {
    assert_eq!(CA_PATH, format!("{DEFAULT_CONFIG_DIR}/{CA_FILE}"));
}

/// The connection settings each format renders, with and without the fleet CA: the exact
/// lines, so that a change of form (not only of meaning) shows here.
#[test]
fn tls_settings_in_each_format() {
    let uri_hosts = "db-n1:5432,10.0.0.7:5433,[fd00::2]:5434";
    let rw_userinfo = "svc_api_rw:rw-p%40ss%3Aw%2Frd%25%2C%22%27";
    let cases: [(ServiceType, bool, &[&str], &[&str]); 6] = [
        (
            ServiceType::Postgrest,
            false,
            &[&format!(
                "db-uri = \"postgresql://{rw_userinfo}@{uri_hosts}/app?target_session_attrs=primary\"\n"
            )],
            &["ssl"],
        ),
        (
            ServiceType::Postgrest,
            true,
            // libpq URI query parameters (libpq docs, "Connection URIs").
            &[&format!(
                "db-uri = \"postgresql://{rw_userinfo}@{uri_hosts}/app?target_session_attrs=primary\
                 &sslmode=verify-full&sslrootcert=/etc/berth/service/ca.crt\"\n"
            )],
            &[],
        ),
        (
            ServiceType::Mcp,
            false,
            &["\n  sslmode: disable\n  target_session_attrs: primary\n"],
            &["sslrootcert"],
        ),
        (
            ServiceType::Mcp,
            true,
            &[
                "\n  sslmode: verify-full\n  sslrootcert: /etc/berth/service/ca.crt\n  target_session_attrs: primary\n",
            ],
            &[],
        ),
        (
            ServiceType::Rag,
            false,
            &["\n  sslmode: disable\n  target_session_attrs: primary\n"],
            &["sslrootcert"],
        ),
        (
            ServiceType::Rag,
            true,
            &[
                "\n  sslmode: verify-full\n  sslrootcert: /etc/berth/service/ca.crt\n  target_session_attrs: primary\n",
            ],
            &[],
        ),
    ];
    for (t, with_ca, present, absent) in cases {
        let target = if with_ca { tls_target() } else { target() };
        let files = render(t, &Map::new(), &rw(), &ro(), &target, 8080);
        let text = String::from_utf8(files[0].content.clone()).unwrap();
        for want in present {
            assert!(
                text.contains(want),
                "{t} ca={with_ca}: no {want:?} in\n{text}"
            );
        }
        for unwanted in absent {
            assert!(
                !text.contains(unwanted),
                "{t} ca={with_ca}: {unwanted:?} in\n{text}"
            );
        }
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        if with_ca {
            assert_eq!(paths, [config_files(t)[0], "ca.crt"], "{t}");
            assert_eq!(files[1].content, CA_PEM.as_bytes(), "{t}");
        } else {
            assert_eq!(paths, [config_files(t)[0]], "{t}");
        }
    }
}

/// libpq URIs as others may write them: the TLS parameters in any order, percent-encoded
/// or not, and libpq's defaults when absent.
#[test]
fn uri_tls_parameters() {
    let cases = [
        ("postgresql://u@h/db", "any", "prefer", None),
        (
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/etc/ca.crt",
            "any",
            "verify-full",
            Some("/etc/ca.crt"),
        ),
        (
            "postgresql://u@h/db?sslrootcert=%2Fa%20b%2Fca.crt&target_session_attrs=standby&sslmode=verify-ca",
            "standby",
            "verify-ca",
            Some("/a b/ca.crt"),
        ),
        (
            "postgresql://u@h/db?connect_timeout=5&sslmode=disable",
            "any",
            "disable",
            None,
        ),
        (
            "postgresql://u@h/db?%73slmode=require",
            "any",
            "require",
            None,
        ),
    ];
    for (text, tsa, sslmode, sslrootcert) in cases {
        let u = uri::parse(text, "f").unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            (
                u.target_session_attrs.as_str(),
                u.sslmode.as_str(),
                u.sslrootcert.as_deref()
            ),
            (tsa, sslmode, sslrootcert),
            "{text}"
        );
    }
    let err = uri::parse("postgresql://u@h/db?sslmode", "f")
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "f: db-uri: query parameter \"sslmode\" has no value"
    );
}

#[test]
fn a_rootcert_path_with_separators_survives_the_uri() {
    let built = uri::build(
        "u",
        "p",
        &[("h".into(), 1)],
        "db",
        "any",
        Some(("verify-full", "/odd dir/a&b=c/ca.crt")),
    );
    assert!(
        built.ends_with("&sslrootcert=/odd%20dir/a%26b%3Dc/ca.crt"),
        "{built}"
    );
    let parsed = uri::parse(&built, "f").unwrap();
    assert_eq!(parsed.sslrootcert.as_deref(), Some("/odd dir/a&b=c/ca.crt"));
}

#[test]
fn key_order_of_the_input_does_not_change_the_bytes() {
    // Parsed from text so that, whichever map type serde_json was built with, the two maps
    // hold their keys in different orders.
    let a: Map<String, Value> = serde_json::from_str(
        r#"{"llm_model":"m","llm_provider":"p","pipelines":[{"z":1,"a":{"y":2,"b":3}}],"db_schemas":"api","jwt_secret":"s"}"#,
    )
    .unwrap();
    let b: Map<String, Value> = serde_json::from_str(
        r#"{"jwt_secret":"s","db_schemas":"api","pipelines":[{"a":{"b":3,"y":2},"z":1}],"llm_provider":"p","llm_model":"m"}"#,
    )
    .unwrap();
    for t in ServiceType::ALL {
        assert_eq!(
            render(t, &a, &rw(), &ro(), &target(), 1),
            render(t, &b, &rw(), &ro(), &target(), 1),
            "{t}"
        );
    }
}

#[test]
fn what_a_service_depends_on_changes_the_bytes() {
    let base = config(json!({"pipelines": [], "llm_model": "m", "db_schemas": "api"}));
    for t in ServiceType::ALL {
        let before = render(t, &base, &rw(), &ro(), &target(), 1);
        let mut other_target = target();
        other_target.hosts.reverse();
        assert_ne!(
            before,
            render(t, &base, &rw(), &ro(), &other_target, 1),
            "{t}: host order"
        );
        assert_ne!(
            before,
            render(t, &base, &rw(), &ro(), &target(), 2),
            "{t}: port"
        );
        assert_ne!(
            before,
            render(t, &base, &rw(), &ro(), &tls_target(), 1),
            "{t}: CA"
        );
        let rotated = creds("svc_api_ro", "rotated");
        let rotated_rw = creds("svc_api_rw", "rotated");
        assert_ne!(
            before,
            render(t, &base, &rotated_rw, &rotated, &target(), 1),
            "{t}: password"
        );
    }
    let mut cfg = base.clone();
    cfg.insert("db_schemas".into(), json!("other"));
    assert_ne!(
        render(ServiceType::Postgrest, &base, &rw(), &ro(), &target(), 1),
        render(ServiceType::Postgrest, &cfg, &rw(), &ro(), &target(), 1)
    );
}

#[test]
fn parse_errors_name_the_file() {
    assert_eq!(
        parse_rendered(ServiceType::Rag, &[]),
        Err(ParseError::MissingFile {
            service_type: ServiceType::Rag,
            path: "config.yaml".into()
        })
    );
    let bad = |path: &str, text: &str| {
        vec![RenderedFile {
            path: path.into(),
            content: text.as_bytes().to_vec(),
        }]
    };
    let err = parse_rendered(
        ServiceType::Postgrest,
        &bad("postgrest.conf", "server-port = 3000\n"),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "postgrest.conf: no db-uri");
    let err = parse_rendered(
        ServiceType::Postgrest,
        &bad(
            "postgrest.conf",
            "db-uri = \"mysql://u@h/db\"\nserver-port = 3000\n",
        ),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "postgrest.conf: db-uri: not a postgresql:// URI"
    );
    let err = parse_rendered(ServiceType::Mcp, &bad("config.yaml", "databases: [")).unwrap_err();
    assert!(err.to_string().starts_with("config.yaml: "), "{err}");
    let no_hosts = "database: {database: d, hosts: [], password: p, sslmode: disable, target_session_attrs: any, user: u}\nserver: {address: 0.0.0.0, port: 1}\n";
    assert_eq!(
        parse_rendered(ServiceType::Rag, &bad("config.yaml", no_hosts))
            .unwrap_err()
            .to_string(),
        "config.yaml: no database host"
    );
}

#[test]
fn debug_hides_passwords() {
    let files = render(ServiceType::Rag, &Map::new(), &rw(), &ro(), &target(), 1);
    let parsed = parse_rendered(ServiceType::Rag, &files).unwrap();
    assert!(!format!("{parsed:?}").contains("ro-secret"));
    assert!(!format!("{:?}", ro()).contains("ro-secret"));
}

#[test]
fn libpq_uri_without_ports_or_params_uses_libpq_defaults() {
    let u = uri::parse("postgres://u@h1,h2:6000/db", "f").unwrap();
    assert_eq!(
        u.hosts,
        vec![("h1".to_string(), 5432), ("h2".to_string(), 6000)]
    );
    assert_eq!(
        (
            u.user.as_str(),
            u.password.as_str(),
            u.target_session_attrs.as_str()
        ),
        ("u", "", "any")
    );
}

proptest! {
    #[test]
    fn any_credentials_survive_the_round_trip(
        user in "[a-z_][a-z0-9_]{0,20}",
        password in "\\PC{0,40}",
        dbname in "\\PC{1,20}",
        hosts in proptest::collection::vec(("[a-z0-9.-]{1,15}|[0-9a-f:]{2,15}", 1u16..), 1..4),
        port in 1u16..,
        with_ca in any::<bool>(),
    ) {
        let c = creds(&user, &password);
        let target = ConnectionTarget {
            hosts,
            dbname,
            target_session_attrs: "prefer-standby".into(),
            ca_pem: with_ca.then(|| CA_PEM.to_owned()),
        };
        for t in ServiceType::ALL {
            let files = render(t, &Map::new(), &c, &c, &target, port);
            let parsed = parse_rendered(t, &files).unwrap();
            prop_assert_eq!(&parsed.username, &user);
            prop_assert_eq!(&parsed.password, &password);
            prop_assert_eq!(&parsed.dbname, &target.dbname);
            prop_assert_eq!(&parsed.hosts, &target.hosts);
            prop_assert_eq!(&parsed.target_session_attrs, "prefer-standby");
            prop_assert_eq!(parsed.listen_port, port);
            prop_assert_eq!(parsed.sslrootcert.is_some(), with_ca);
        }
    }
}
