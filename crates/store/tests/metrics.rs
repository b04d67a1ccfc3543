//! Every etcd call the store makes is counted by RPC, and failed ones as errors, against a
//! real etcd (the recorder is Prometheus', rendered and parsed as a scrape would be).

use etcd_client::GetOptions;
use prom_text_format_parser::Scrape;
use store::{SecretBox, Store};
use test_support::EtcdServer;

/// The sample of `name` whose `method` label is `method`; 0 when there is none yet.
fn count(name: &str, method: &str) -> f64 {
    let text = telemetry::render().expect("recorder installed");
    if text.is_empty() {
        return 0.0;
    }
    let scrape = Scrape::parse(&text).expect("the exposition parses");
    scrape
        .metrics
        .iter()
        .filter(|m| m.name == name)
        .flat_map(|m| &m.samples)
        .find(|s| {
            s.labels
                .iter()
                .any(|l| l.key == "method" && l.value == method)
        })
        .map_or(0.0, |s| s.value.value.as_f64())
}

#[tokio::test]
async fn etcd_calls_are_counted_by_rpc_and_failures_as_errors() {
    telemetry::install();
    let etcd = EtcdServer::start();
    let store = Store::connect(
        &[etcd.endpoint()],
        "/berth-metrics",
        SecretBox::from_key([3; 32]),
        |_| false,
    )
    .await
    .unwrap();
    let (requests, errors) = (telemetry::etcd::REQUESTS, telemetry::etcd::REQUEST_ERRORS);

    let (ranges, txns) = (count(requests, "Range"), count(requests, "Txn"));
    assert!(store.get_task("db", "t").await.unwrap().is_none());
    store
        .put_sealed("/berth-metrics/doc", &"value")
        .await
        .unwrap();
    assert_eq!(count(requests, "Range") - ranges, 1.0);
    assert_eq!(count(requests, "Put"), 1.0);
    assert_eq!(count(requests, "Txn"), txns, "no transaction ran");

    // A read at a revision etcd has not reached: etcd answers with an error status.
    let failed = count(errors, "Range");
    let future = GetOptions::new().with_revision(1_000_000);
    assert!(store.client().get("k", Some(future)).await.is_err());
    assert_eq!(count(errors, "Range") - failed, 1.0);
    assert_eq!(count(errors, "Put"), 0.0);
}
