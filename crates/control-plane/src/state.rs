use std::sync::Arc;

use spec::manifest::Manifest;
use store::Store;

use crate::hosts::KnownHosts;

/// What every request handler of one replica shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub manifest: Arc<Manifest>,
    pub known_hosts: KnownHosts,
}
