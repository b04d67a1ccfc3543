use std::sync::Arc;

use spec::manifest::Manifest;
use store::Store;
use tokio::sync::Notify;

/// What every request handler and background task of one replica shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub manifest: Arc<Manifest>,
    /// Wakes the reconciler when desired state changes, so it never waits for its timer.
    pub reconcile: Arc<Notify>,
}
