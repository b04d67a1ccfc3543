//! Prometheus metrics for the control plane and the agents.
//!
//! Every metric berth exports is named here, once, with its type, labels and meaning
//! ([`control_plane`], [`etcd`], [`agent`], [`http`] for the request metrics both serve), and
//! recorded through the small functions beside its name, so label keys and values cannot
//! drift between the code and docs/operations.md.
//!
//! Recording goes through the [`metrics`] facade: until [`install`] puts the Prometheus
//! recorder in place (the binaries do at start) every call is a no-op, which is what unit
//! tests and libraries embedding these crates get. [`install`] returns the handle that
//! renders the text exposition format (Prometheus' `text/plain; version=0.0.4`) for
//! `GET /metrics` ([`http::metrics_router`], with the `http` feature).
//!
//! Durations are seconds (`_seconds`, Prometheus' base unit); counters end in `_total`
//! (<https://prometheus.io/docs/practices/naming/>). Label values come from closed sets
//! (routes as templates, never raw paths), so the number of series stays bounded.

pub mod agent;
pub mod catalog;
pub mod control_plane;
pub mod etcd;
#[cfg(feature = "http")]
pub mod http;

use std::sync::OnceLock;
use std::time::Duration;

pub use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets (seconds) for requests answered from memory or one etcd round trip: 0.5 ms to 10 s.
pub const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets (seconds) for work that runs containers: 10 ms to 10 min (a Postgres primary's
/// first start, an image pull, a task waiting out retries).
pub const SLOW_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How often histogram samples are folded into their buckets between scrapes, so that a
/// process nobody scrapes does not keep every sample.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as this process's global [`metrics`] recorder, once;
/// later calls return the same handle. Histograms get [`FAST_BUCKETS`] or [`SLOW_BUCKETS`]
/// as [`catalog::METRICS`] assigns them, and every metric its `# HELP` text.
///
/// Panics if another crate installed a different global recorder first: the process would
/// then silently export nothing, which is worse.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new()
            .set_buckets(FAST_BUCKETS)
            .expect("non-empty buckets");
        for (name, buckets) in catalog::buckets() {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .expect("non-empty buckets");
        }
        let handle = builder
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        catalog::describe();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_PERIOD);
                    upkeep.run_upkeep();
                }
            })
            .expect("spawn the metrics upkeep thread");
        handle
    })
}

/// The Prometheus text exposition of every metric recorded so far, or None before [`install`].
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}
