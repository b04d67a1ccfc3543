//! etcd out of space: the store says so (ADR 014), and does not call it unreachable.

use serde_json::Map;
use store::{SecretBox, Store, StoreError};
use test_support::EtcdServer;

#[tokio::test]
async fn a_full_etcd_is_out_of_space_not_unreachable() {
    // A 2 MiB quota fills after a few dozen 64 KiB lines.
    let etcd = EtcdServer::start_with(&["--quota-backend-bytes=2097152"]);
    let s = Store::connect(
        &[etcd.endpoint()],
        "/space",
        SecretBox::from_key([3; 32]),
        |_| false,
    )
    .await
    .unwrap();
    let line = "x".repeat(64 * 1024);
    let mut refused = None;
    for _ in 0..1000 {
        if let Err(e) = s.append_log("db", "t", line.clone(), Map::new()).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("etcd refused a write at its quota");
    assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
    assert!(e.is_out_of_space() && !e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("etcd is out of space"), "{e}");
    // Reads still work.
    assert!(!s.read_log("db", "t", None, 1).await.unwrap().is_empty());
}
