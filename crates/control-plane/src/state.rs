use std::sync::Arc;

use spec::manifest::Manifest;
use store::Store;

use crate::hosts::KnownHosts;

/// What every request handler of one replica shares. Behind one `Arc`: the router clones the
/// state for every request, and the store's etcd client is several gRPC channels (the clone
/// showed in the api benchmark's profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Store,
    /// Shared with the reconciler.
    pub manifest: Arc<Manifest>,
    pub known_hosts: KnownHosts,
}

impl AppState {
    pub fn new(store: Store, manifest: Manifest) -> Self {
        AppState(Arc::new(Shared {
            store,
            manifest: Arc::new(manifest),
            known_hosts: KnownHosts::default(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
