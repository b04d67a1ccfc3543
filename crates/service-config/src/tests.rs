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
        assert_eq!(
            parsed,
            ParsedConnection {
                hosts: target().hosts,
                dbname: "app".into(),
                username: expect_user.username,
                password: expect_user.password,
                target_session_attrs: "primary".into(),
                listen_port: 9100,
            },
            "{t}"
        );
    }
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
    ) {
        let c = creds(&user, &password);
        let target = ConnectionTarget {
            hosts,
            dbname,
            target_session_attrs: "prefer-standby".into(),
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
        }
    }
}
