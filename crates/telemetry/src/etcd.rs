//! The control plane's etcd requests, counted where every one passes: the gRPC channel of
//! the store's etcd client (see the store crate), so leader election, watches and leases
//! count as well as reads and writes.

use std::time::Duration;

use metrics::{counter, histogram};

/// Counter `berth_etcd_requests_total{method}`: gRPC calls to etcd, by etcd's RPC name
/// (`Range`, `Put`, `DeleteRange`, `Txn`, `Compact`, `Watch`, `LeaseGrant`, `LeaseRevoke`,
/// `LeaseKeepAlive`, `LeaseTimeToLive`, `LeaseLeases`, `Status`, `Alarm`, `Defragment`,
/// `Authenticate`; `other` for the rest). A watch or keep-alive stream counts once, when
/// it opens.
pub const REQUESTS: &str = "berth_etcd_requests_total";
/// Counter `berth_etcd_request_errors_total{method}`: calls that failed: the connection
/// failed or timed out, or etcd answered with a gRPC error status (unavailable, no leader,
/// out of space, ...). A transaction whose compare failed is not an error.
pub const REQUEST_ERRORS: &str = "berth_etcd_request_errors_total";
/// Histogram `berth_etcd_request_duration_seconds{method}`: time to etcd's response head:
/// the round trip of a unary call, the time to open a stream.
pub const REQUEST_DURATION: &str = "berth_etcd_request_duration_seconds";

/// etcd's RPCs berth uses, by name (etcd's api/etcdserverpb/rpc.proto).
const METHODS: [&str; 15] = [
    "Range",
    "Put",
    "DeleteRange",
    "Txn",
    "Compact",
    "Watch",
    "LeaseGrant",
    "LeaseRevoke",
    "LeaseKeepAlive",
    "LeaseTimeToLive",
    "LeaseLeases",
    "Status",
    "Alarm",
    "Defragment",
    "Authenticate",
];

/// The `method` label of a gRPC request path (`/etcdserverpb.KV/Range` is `Range`): one of a
/// closed set, `other` for any RPC not listed in [`REQUESTS`].
pub fn method_label(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

/// One etcd call, `failed` or not, answered after `took`.
pub fn request(method: &'static str, failed: bool, took: Duration) {
    counter!(REQUESTS, "method" => method).increment(1);
    if failed {
        counter!(REQUEST_ERRORS, "method" => method).increment(1);
    }
    histogram!(REQUEST_DURATION, "method" => method).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn methods_are_named_by_their_rpc_and_unknown_ones_are_other() {
        assert_eq!(method_label("/etcdserverpb.KV/Range"), "Range");
        assert_eq!(
            method_label("/etcdserverpb.Lease/LeaseKeepAlive"),
            "LeaseKeepAlive"
        );
        assert_eq!(method_label("/etcdserverpb.Watch/Watch"), "Watch");
        assert_eq!(method_label("/v3electionpb.Election/Campaign"), "other");
        assert_eq!(method_label(""), "other");
    }
}
