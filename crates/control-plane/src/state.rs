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
    /// Patroni's DCS as the reconciler renders it: a dry-run's plan must see the same files.
    pub dcs: crate::patroni::config::Dcs,
}

impl AppState {
    pub fn new(store: Store, manifest: Manifest, dcs: crate::patroni::config::Dcs) -> Self {
        AppState(Arc::new(Shared {
            store,
            manifest: Arc::new(manifest),
            known_hosts: KnownHosts::default(),
            dcs,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
