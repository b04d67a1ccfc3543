//! etcd authentication (ADR 017) against a real etcd with auth enabled: the store logs in,
//! and each Postgres node's Patroni user reaches its node's keys and nothing else.

use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions, WatchOptions};
use secrecy::SecretString;
use store::{EtcdCredentials, SecretBox, Store};
use test_support::EtcdServer;

const ROOT_PASSWORD: &str = "root-pw-for-tests";

fn root() -> EtcdCredentials {
    EtcdCredentials {
        username: "root".into(),
        password: ROOT_PASSWORD.into(),
    }
}

async fn store(etcd: &EtcdServer, credentials: Option<&EtcdCredentials>) -> Store {
    Store::connect_as(
        &[etcd.endpoint()],
        "/berth",
        SecretBox::from_key([5; 32]),
        |_| false,
        credentials,
    )
    .await
    .unwrap()
}

/// A client logged in as `user`, as Patroni would be; Err when etcd refuses the login.
async fn login(
    etcd: &EtcdServer,
    user: &str,
    password: &str,
) -> Result<Client, etcd_client::Error> {
    Client::connect(
        [etcd.endpoint()],
        Some(ConnectOptions::new().with_user(user, password)),
    )
    .await
}

fn denied(e: &etcd_client::Error) -> bool {
    e.to_string().contains("permission denied")
}

/// What Patroni does in its node's keys: a lease, a leader key under it, a member key, a
/// range read of the node's prefix, and a watch of it. All of it must work.
async fn patroni_work_in(client: &mut Client, node_prefix: &str) {
    let lease = client.lease_grant(20, None).await.unwrap().id();
    client
        .put(
            format!("{node_prefix}leader"),
            "db-n1-host-1",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    client
        .put(format!("{node_prefix}members/db-n1-host-1"), "{}", None)
        .await
        .unwrap();
    let read = client
        .get(node_prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(read.kvs().len(), 2);
    let mut events = client
        .watch(node_prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    client
        .put(format!("{node_prefix}status"), "{}", None)
        .await
        .unwrap();
    loop {
        let message = events.message().await.unwrap().expect("a watch message");
        assert!(!message.canceled(), "{message:?}");
        if !message.events().is_empty() {
            break;
        }
    }
    client.lease_revoke(lease).await.unwrap();
}

#[tokio::test]
async fn a_nodes_user_reaches_its_node_alone() {
    let mut etcd = EtcdServer::start();
    etcd.enable_auth(ROOT_PASSWORD);
    let s = store(&etcd, Some(&root())).await;
    assert!(s.is_authenticated() && s.manages_patroni_users());
    let (pw1, pw2): (SecretString, SecretString) = ("n1-password".into(), "n2-password".into());
    s.ensure_patroni_user("app", "n1", &pw1).await.unwrap();
    s.ensure_patroni_user("app", "n2", &pw2).await.unwrap();
    s.ensure_patroni_user("app-x", "n1", &pw2).await.unwrap();
    // Again: idempotent.
    s.ensure_patroni_user("app", "n1", &pw1).await.unwrap();
    // The control plane's own keys, which a node's user must not reach.
    s.client()
        .put("/berth/credentials/app", "{}", None)
        .await
        .unwrap();

    let mut n1 = login(&etcd, "berth-patroni-app-n1", "n1-password")
        .await
        .unwrap();
    patroni_work_in(&mut n1, "/berth/patroni/app/n1/").await;

    // Another node's keys, the database's namespace as a whole, and the control plane's keys
    // are all refused, for reads as for writes.
    for key in [
        "/berth/patroni/app/n2/leader",
        "/berth/patroni/app/n10/leader",
        "/berth/patroni/app-x/n1/leader",
        "/berth/databases/app/spec",
        "/berth/credentials/app",
        "/berth/leader",
    ] {
        let put = n1.put(key, "x", None).await.unwrap_err();
        assert!(denied(&put), "put {key}: {put}");
        let get = n1.get(key, None).await.unwrap_err();
        assert!(denied(&get), "get {key}: {get}");
    }
    for prefix in ["/berth/patroni/app/", "/berth/databases/", "/berth/"] {
        let range = n1
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap_err();
        assert!(denied(&range), "range {prefix}: {range}");
    }
    // A watch of another node's keys is canceled as it is made.
    let mut watch = n1
        .watch(
            "/berth/patroni/app/n2/",
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let refused = watch.message().await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |m| m.as_ref().is_none_or(|m| m.canceled())),
        "{refused:?}"
    );
    let spec = s
        .client()
        .get("/berth/credentials/app", None)
        .await
        .unwrap();
    assert_eq!(spec.kvs()[0].value(), b"{}", "untouched");

    // A new password replaces the old one.
    let pw1b: SecretString = "n1-password-2".into();
    s.ensure_patroni_user("app", "n1", &pw1b).await.unwrap();
    assert!(
        login(&etcd, "berth-patroni-app-n1", "n1-password")
            .await
            .is_err()
    );
    login(&etcd, "berth-patroni-app-n1", "n1-password-2")
        .await
        .unwrap();

    // A node's user goes with the node; the other database's stays.
    s.drop_patroni_users("app", Some("n1")).await.unwrap();
    assert!(
        login(&etcd, "berth-patroni-app-n1", "n1-password-2")
            .await
            .is_err()
    );
    login(&etcd, "berth-patroni-app-n2", "n2-password")
        .await
        .unwrap();
    s.drop_patroni_users("app", None).await.unwrap();
    let mut auth = s.client().auth_client();
    let users = auth.user_list().await.unwrap();
    assert_eq!(users.users(), ["berth-patroni-app-x-n1", "root"]);
    let roles = auth.role_list().await.unwrap();
    assert_eq!(roles.roles(), ["berth-patroni-app-x-n1", "root"]);
    // Dropping what is gone is fine.
    s.drop_patroni_users("app", Some("n1")).await.unwrap();

    // The store's token dies with the member; the store logs in again by itself.
    // The first requests may meet the connection the restart broke (as without auth).
    etcd.restart();
    let mut after = s.list_databases().await;
    for _ in 0..50 {
        match &after {
            Err(store::StoreError::Etcd(e)) if e.to_string().contains("transport error") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                after = s.list_databases().await;
            }
            _ => break,
        }
    }
    assert!(after.is_ok(), "{after:?}");
    let roles = s.client().auth_client().role_list().await.unwrap();
    assert_eq!(roles.roles(), ["berth-patroni-app-x-n1", "root"]);
}

/// A role that grants more than its node's keys (made by hand, or left by an older berth)
/// is cut back to them, and the user loses any other role.
#[tokio::test]
async fn a_role_granting_more_is_cut_back() {
    let mut etcd = EtcdServer::start();
    etcd.enable_auth(ROOT_PASSWORD);
    let s = store(&etcd, Some(&root())).await;
    let mut auth = s.client().auth_client();
    auth.role_add("berth-patroni-app-n1").await.unwrap();
    auth.role_grant_permission(
        "berth-patroni-app-n1",
        etcd_client::Permission::read_write("/berth/").with_prefix(),
    )
    .await
    .unwrap();
    auth.role_add("wide").await.unwrap();
    auth.role_grant_permission(
        "wide",
        etcd_client::Permission::read_write("/").with_prefix(),
    )
    .await
    .unwrap();
    auth.user_add("berth-patroni-app-n1", "old", None)
        .await
        .unwrap();
    auth.user_grant_role("berth-patroni-app-n1", "wide")
        .await
        .unwrap();
    s.ensure_patroni_user("app", "n1", &"new".into())
        .await
        .unwrap();
    let mut n1 = login(&etcd, "berth-patroni-app-n1", "new").await.unwrap();
    n1.put("/berth/patroni/app/n1/x", "1", None).await.unwrap();
    let e = n1.put("/berth/databases/x", "1", None).await.unwrap_err();
    assert!(denied(&e), "{e}");
    let user = auth.user_get("berth-patroni-app-n1").await.unwrap();
    assert_eq!(user.roles(), ["berth-patroni-app-n1"]);
}

#[tokio::test]
async fn without_auth_nothing_logs_in() {
    let etcd = EtcdServer::start();
    // Credentials for an etcd whose auth is off: connected without a token; users are still
    // made (etcd allows it), so that auth can be turned on afterwards.
    let s = store(&etcd, Some(&root())).await;
    assert!(!s.is_authenticated() && s.manages_patroni_users());
    s.ensure_patroni_user("app", "n1", &"pw".into())
        .await
        .unwrap();
    s.drop_patroni_users("app", None).await.unwrap();
    // Without credentials: no user is managed, and dropping is nothing.
    let plain = store(&etcd, None).await;
    assert!(!plain.is_authenticated() && !plain.manages_patroni_users());
    plain.drop_patroni_users("app", None).await.unwrap();
    assert!(plain.list_databases().await.is_ok());
}

#[tokio::test]
async fn with_auth_on_a_wrong_password_or_none_is_refused() {
    let mut etcd = EtcdServer::start();
    etcd.enable_auth(ROOT_PASSWORD);
    let wrong = EtcdCredentials {
        username: "root".into(),
        password: "not-the-password".into(),
    };
    let e = Store::connect_as(
        &[etcd.endpoint()],
        "/berth",
        SecretBox::from_key([5; 32]),
        |_| false,
        Some(&wrong),
    )
    .await
    .unwrap_err();
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    let anonymous = store(&etcd, None).await;
    assert!(anonymous.list_databases().await.is_err());
}
