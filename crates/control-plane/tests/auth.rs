//! The HTTP API with bearer-token authentication on: no token or a bad one is a 401, a
//! read-only token cannot write (403), both in the API's error shape; tokens are stored hashed
//! and can be revoked; the version stays open. And a replica refuses to serve an open API
//! beyond loopback.

mod common;

use common::ControlPlane;
use control_plane::operator::{Command, Scope, TokenCommand};
use control_plane::settings::ApiAuthMode;
use test_support::EtcdServer;

async fn token(cp: &ControlPlane, scope: Scope) -> String {
    let mut out = Vec::new();
    let command = Command::Token(TokenCommand::Create {
        name: "test".into(),
        scope,
    });
    control_plane::operator::run(&cp.settings, command, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap().trim().to_string()
}

async fn www_authenticate(cp: &ControlPlane, token: Option<&str>) -> String {
    let mut req = reqwest::Client::new().get(format!("{}/v1/hosts", cp.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_unauthenticated_call_gets_401_and_a_read_only_token_cannot_write() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start_with(&etcd, |s| s.api_auth = ApiAuthMode::On).await;

    let (status, body) = cp.call("GET", "/v1/hosts", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["name"], "unauthorized", "{body}");
    assert_eq!(www_authenticate(&cp, None).await, r#"Bearer realm="berth""#);
    let (status, body) = cp.call("POST", "/v1/databases", Some("{}")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = cp.call("DELETE", "/v1/hosts/host-1", None).await;
    assert_eq!(status, 401, "{body}");
    // The version stays open, for probes.
    let (status, _) = cp.call("GET", "/v1/version", None).await;
    assert_eq!(status, 200);

    let reader = token(&cp, Scope::ReadOnly).await;
    let writer = token(&cp, Scope::ReadWrite).await;
    let (status, body) = cp.call_as(Some(&reader), "GET", "/v1/hosts", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cp
        .call_as(Some(&reader), "POST", "/v1/databases", Some("{}"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["name"], "forbidden", "{body}");
    // Past authentication, the request reaches the handler (which finds the body wanting).
    let (status, body) = cp
        .call_as(Some(&writer), "POST", "/v1/databases", Some("{}"))
        .await;
    assert_eq!(status, 400, "{body}");

    // A wrong secret for a real id, a made-up token, another scheme: all 401 invalid_token.
    // (The secret is base64url, which may itself hold '_': split with the parser.)
    let (writer_id, _) = control_plane::api::auth::parse(&writer).unwrap();
    for bad in [
        format!("berth_{writer_id}_wrong"),
        "berth_0123456789ab_x".into(),
        "nonsense".into(),
    ] {
        let (status, body) = cp.call_as(Some(&bad), "GET", "/v1/hosts", None).await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert!(
            !body.to_string().contains(&bad),
            "the token is echoed: {body}"
        );
        assert!(
            www_authenticate(&cp, Some(&bad))
                .await
                .contains(r#"error="invalid_token""#)
        );
    }

    // Stored hashed: no token appears in etcd.
    for (key, value) in cp.store().await.dump().await.unwrap() {
        let text = String::from_utf8_lossy(&value);
        for t in [&reader, &writer] {
            let (_, secret) = control_plane::api::auth::parse(t).unwrap();
            assert!(!text.contains(secret), "{key} holds a token's secret");
        }
    }

    // Revoked: refused from the next request on.
    let mut listed = Vec::new();
    control_plane::operator::run(
        &cp.settings,
        Command::Token(TokenCommand::List),
        &mut listed,
    )
    .await
    .unwrap();
    let listed = String::from_utf8(listed).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains(&writer));
    let id = parse_id(&reader);
    control_plane::operator::run(
        &cp.settings,
        Command::Token(TokenCommand::Revoke { id: id.clone() }),
        &mut Vec::new(),
    )
    .await
    .unwrap();
    let (status, body) = cp.call_as(Some(&reader), "GET", "/v1/hosts", None).await;
    assert_eq!(status, 401, "{body}");
}

fn parse_id(token: &str) -> String {
    control_plane::api::auth::parse(token)
        .unwrap()
        .0
        .to_string()
}

#[tokio::test]
async fn a_loopback_api_is_open_unless_asked_and_an_open_api_beyond_loopback_is_refused() {
    let etcd = EtcdServer::start();
    // The harness listens on 127.0.0.1 with the default (auto): open.
    let cp = ControlPlane::start(&etcd).await;
    let (status, _) = cp.call("GET", "/v1/hosts", None).await;
    assert_eq!(status, 200);

    let mut settings = cp.settings.clone();
    settings.listen = format!("0.0.0.0:{}", test_support::free_port())
        .parse()
        .unwrap();
    settings.api_auth = ApiAuthMode::Off;
    let refused = control_plane::run(settings, async {}).await.unwrap_err();
    assert!(
        refused.to_string().contains("without authentication"),
        "{refused:#}"
    );
}
