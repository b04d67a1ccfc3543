//! Patroni's keys, on etcd and in memory: read per database in one range, forgotten per node
//! or per database, and nothing else touched (ADR 016).

use store::{MemoryStore, SecretBox, StateStore, Store};
use test_support::EtcdServer;

/// What Patroni would have written for two databases, keys below `/berth/patroni/`.
const KEYS: [(&str, &str); 6] = [
    ("db/n1/leader", "db-n1-h1"),
    (
        "db/n1/members/db-n1-h1",
        r#"{"role":"primary","state":"running"}"#,
    ),
    ("db/n1/initialize", "7400000000000000001"),
    ("db/n2/leader", "db-n2-h2"),
    ("db2/n1/leader", "db2-n1-h1"),
    // A database whose id starts like another's is another database.
    ("db-x/n1/leader", "db-x-n1-h1"),
];

async fn suite(s: &dyn StateStore) {
    let keys = |pairs: Vec<(String, Vec<u8>)>| -> Vec<String> {
        pairs.into_iter().map(|(k, _)| k).collect()
    };
    let read = s.patroni_keys("db").await.unwrap();
    assert_eq!(
        keys(read.clone()),
        [
            "n1/initialize",
            "n1/leader",
            "n1/members/db-n1-h1",
            "n2/leader"
        ]
    );
    assert_eq!(read[1].1, b"db-n1-h1");
    s.forget_patroni("db", Some("n1")).await.unwrap();
    assert_eq!(keys(s.patroni_keys("db").await.unwrap()), ["n2/leader"]);
    s.forget_patroni("db", None).await.unwrap();
    assert!(s.patroni_keys("db").await.unwrap().is_empty());
    assert_eq!(keys(s.patroni_keys("db2").await.unwrap()), ["n1/leader"]);
    assert_eq!(keys(s.patroni_keys("db-x").await.unwrap()), ["n1/leader"]);
}

#[tokio::test]
async fn in_memory() {
    let m = MemoryStore::new();
    for (k, v) in KEYS {
        let (db, rest) = k.split_once('/').unwrap();
        m.set_patroni_key(db, rest, Some(v.as_bytes()));
    }
    suite(&m).await;
}

#[tokio::test]
async fn on_etcd() {
    let etcd = EtcdServer::start();
    let s = Store::connect(
        &[etcd.endpoint()],
        "/berth",
        SecretBox::from_key([7; 32]),
        |_| false,
    )
    .await
    .unwrap();
    let mut kv = s.client().kv_client();
    for (k, v) in KEYS {
        kv.put(format!("/berth/patroni/{k}"), v, None)
            .await
            .unwrap();
    }
    kv.put("/berth/databases/db/record", "{}", None)
        .await
        .unwrap();
    let all = s.all_patroni_keys().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["db", "db-x", "db2"]);
    assert_eq!(all["db"].len(), 4);
    suite(&s).await;
    assert_eq!(
        kv.get("/berth/databases/db/record", None)
            .await
            .unwrap()
            .kvs()
            .len(),
        1,
        "forgetting touches only Patroni's keys"
    );
}
