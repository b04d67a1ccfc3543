//! The leader's live view of what runs on every host, fed by each agent's WatchInstances
//! stream: a full snapshot on connect, then one message per change. Nothing here polls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proto::agent_client::AgentClient;
use agent_proto::{InstanceState, WatchRequest, instance_event};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use chrono::Utc;
use store::{HostDialFailure, Store};

use crate::desired::HostPlacement;

/// Which database a change concerns, so only its reconciler wakes up.
pub type Poke = Option<String>;

const DATABASE_LABEL: &str = "berth.database-id";

#[derive(Default)]
struct HostView {
    /// True once the current stream delivered its snapshot: only then is `instances` complete.
    synced: bool,
    instances: HashMap<String, InstanceState>,
    /// Instance ids by database: a pass over one database must not scan the whole fleet.
    by_database: HashMap<String, BTreeSet<String>>,
}

impl HostView {
    fn insert(&mut self, state: InstanceState) {
        self.remove(&state.instance_id);
        if let Some(db) = database_of(&state) {
            self.by_database
                .entry(db)
                .or_default()
                .insert(state.instance_id.clone());
        }
        self.instances.insert(state.instance_id.clone(), state);
    }

    fn remove(&mut self, instance_id: &str) -> Option<InstanceState> {
        let old = self.instances.remove(instance_id)?;
        if let Some(db) = database_of(&old)
            && let Some(ids) = self.by_database.get_mut(&db)
        {
            ids.remove(instance_id);
            if ids.is_empty() {
                self.by_database.remove(&db);
            }
        }
        Some(old)
    }

    fn of_database<'a>(
        &'a self,
        database_id: &str,
    ) -> impl Iterator<Item = &'a InstanceState> + 'a {
        self.by_database
            .get(database_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.instances.get(id))
    }
}

struct HostConn {
    address: String,
    client: AgentClient<Channel>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for HostConn {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[derive(Clone)]
pub struct Fleet {
    views: Arc<Mutex<HashMap<String, HostView>>>,
    conns: Arc<Mutex<HashMap<String, HostConn>>>,
    /// Where each registered host is and which engine it runs, as last read.
    placements: Arc<Mutex<BTreeMap<String, HostPlacement>>>,
    dial: Arc<DialFailures>,
    pokes: mpsc::UnboundedSender<Poke>,
    tls: Arc<crate::tls::FleetTls>,
}

fn database_of(state: &InstanceState) -> Option<String> {
    state.labels.get(DATABASE_LABEL).cloned()
}

impl Fleet {
    /// `store` is the leader's (fenced): dial failures are recorded there for the API.
    pub fn new(
        store: Store,
        pokes: mpsc::UnboundedSender<Poke>,
        tls: Arc<crate::tls::FleetTls>,
    ) -> Self {
        Fleet {
            views: Default::default(),
            conns: Default::default(),
            placements: Default::default(),
            dial: Arc::new(DialFailures {
                store,
                failing: Mutex::default(),
            }),
            pokes,
            tls,
        }
    }

    /// Connects to every registered host and drops the others; remembers where each is.
    pub fn sync_hosts(&self, registered: &[spec::Host]) {
        *self.placements.lock().expect("fleet lock") = registered
            .iter()
            .map(|h| {
                let placement = HostPlacement {
                    address: h.addresses.first().cloned(),
                    engine_id: h.engine_id.clone(),
                };
                (h.id.clone(), placement)
            })
            .collect();
        let hosts: BTreeMap<String, String> = registered
            .iter()
            .map(|h| (h.id.clone(), h.agent_address.clone()))
            .collect();
        let mut conns = self.conns.lock().expect("fleet lock");
        conns.retain(|id, c| hosts.get(id) == Some(&c.address));
        for (id, address) in &hosts {
            if conns.contains_key(id) {
                continue;
            }
            // Agents are only ever spoken to over mutual TLS, whatever scheme they advertised.
            let url = format!(
                "https://{}",
                address
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
            );
            let endpoint = match Endpoint::from_shared(url)
                .and_then(|e| e.tls_config(self.tls.agent_client(id)))
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(host_id = %id, %address, error = %e, "cannot dial this agent address");
                    continue;
                }
            };
            let channel = endpoint
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy();
            let client = AgentClient::new(channel);
            let watcher = tokio::spawn(watch_host(
                id.clone(),
                address.clone(),
                client.clone(),
                self.views.clone(),
                self.pokes.clone(),
                self.dial.clone(),
            ));
            conns.insert(
                id.clone(),
                HostConn {
                    address: address.clone(),
                    client,
                    watcher,
                },
            );
        }
        self.views
            .lock()
            .expect("fleet lock")
            .retain(|id, _| hosts.contains_key(id));
    }

    /// Where every registered host is, as of the last [`Fleet::sync_hosts`].
    pub fn placements(&self) -> BTreeMap<String, HostPlacement> {
        self.placements.lock().expect("fleet lock").clone()
    }

    /// Since when, and why, this replica has been unable to open its stream to the host's
    /// agent; None while the stream is up or was never tried.
    pub fn dial_failure(&self, host_id: &str) -> Option<DialFailure> {
        self.dial
            .failing
            .lock()
            .expect("fleet lock")
            .get(host_id)
            .cloned()
    }

    pub fn client(&self, host_id: &str) -> Option<AgentClient<Channel>> {
        self.conns
            .lock()
            .expect("fleet lock")
            .get(host_id)
            .map(|c| c.client.clone())
    }

    /// Hosts whose agent stream is up and has sent its snapshot.
    pub fn synced_hosts(&self) -> BTreeSet<String> {
        self.views
            .lock()
            .expect("fleet lock")
            .iter()
            .filter(|(_, v)| v.synced)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What synced hosts report for one database, as (host id, state).
    pub fn observed(&self, database_id: &str) -> Vec<(String, InstanceState)> {
        let views = self.views.lock().expect("fleet lock");
        let mut out: Vec<(String, InstanceState)> = views
            .iter()
            .filter(|(_, v)| v.synced)
            .flat_map(|(host, v)| {
                v.of_database(database_id)
                    .map(move |s| (host.clone(), s.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.1.instance_id.cmp(&b.1.instance_id));
        out
    }

    /// Every database with an instance on a synced host (to find orphans of deleted databases).
    pub fn databases(&self) -> BTreeSet<String> {
        let views = self.views.lock().expect("fleet lock");
        views
            .values()
            .flat_map(|v| v.by_database.keys().cloned())
            .collect()
    }

    /// Records what an agent said in reply to a command, without waiting for its event.
    pub fn note(&self, host_id: &str, state: InstanceState) {
        if let Some(v) = self.views.lock().expect("fleet lock").get_mut(host_id) {
            v.insert(state);
        }
    }

    pub fn forget(&self, host_id: &str, instance_id: &str) {
        if let Some(v) = self.views.lock().expect("fleet lock").get_mut(host_id) {
            v.remove(instance_id);
        }
    }
}

/// One host's failure to be dialled.
#[derive(Debug, Clone)]
pub struct DialFailure {
    pub address: String,
    pub error: String,
    pub since: Instant,
    /// How many attempts in a row failed.
    attempts: u32,
    recorded: bool,
}

/// Hosts this replica cannot dial, and their record in etcd for the API.
struct DialFailures {
    store: Store,
    failing: Mutex<HashMap<String, DialFailure>>,
}

/// Failed attempts in a row before a host's dial failure is recorded: one failure is an
/// agent restarting, two at the stream's backoff are not.
const RECORD_AFTER_ATTEMPTS: u32 = 2;

impl DialFailures {
    async fn failed(&self, host_id: &str, address: &str, error: String) {
        let record = {
            let mut failing = self.failing.lock().expect("fleet lock");
            let f = failing
                .entry(host_id.to_string())
                .or_insert_with(|| DialFailure {
                    address: address.to_string(),
                    error: error.clone(),
                    since: Instant::now(),
                    attempts: 0,
                    recorded: false,
                });
            f.attempts += 1;
            f.error = error;
            let due = f.attempts >= RECORD_AFTER_ATTEMPTS && !f.recorded;
            f.recorded |= due;
            due.then(|| HostDialFailure {
                address: f.address.clone(),
                error: f.error.clone(),
                since: Utc::now()
                    - chrono::Duration::from_std(f.since.elapsed()).unwrap_or_default(),
            })
        };
        if let Some(failure) = record {
            tracing::warn!(host_id, address, error = %failure.error, "cannot dial the host's agent");
            if let Err(e) = self.store.put_host_dial_failure(host_id, &failure).await {
                tracing::warn!(host_id, error = %e, "cannot record the dial failure");
            }
        }
    }

    async fn reached(&self, host_id: &str) {
        let was = self.failing.lock().expect("fleet lock").remove(host_id);
        if was.is_some_and(|f| f.recorded) {
            tracing::info!(host_id, "the host's agent can be dialled again");
            if let Err(e) = self.store.clear_host_dial_failure(host_id).await {
                tracing::warn!(host_id, error = %e, "cannot clear the dial failure");
            }
        }
    }
}

/// A gRPC error and its causes on one line ("transport error: tcp connect error: ...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !out.contains(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        source = s.source();
    }
    out
}

async fn watch_host(
    host_id: String,
    address: String,
    mut client: AgentClient<Channel>,
    views: Arc<Mutex<HashMap<String, HostView>>>,
    pokes: mpsc::UnboundedSender<Poke>,
    dial: Arc<DialFailures>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.watch_instances(WatchRequest {}).await {
            Ok(response) => {
                dial.reached(&host_id).await;
                let mut stream = response.into_inner();
                loop {
                    let message = stream.message().await;
                    let event = match message {
                        Ok(Some(m)) => m.event,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(host_id = %host_id, error = %e, "agent stream broke");
                            break;
                        }
                    };
                    backoff = Duration::from_millis(200);
                    let snapshot = matches!(event, Some(instance_event::Event::Snapshot(_)));
                    let touched = apply_event(&views, &host_id, event);
                    if snapshot {
                        // A host that (re)appeared may lack instances that should run there.
                        let _ = pokes.send(None);
                    } else {
                        for db in touched {
                            let _ = pokes.send(Some(db));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(host_id = %host_id, error = %e, "agent not reachable");
                dial.failed(&host_id, &address, error_chain(&e)).await;
            }
        }
        // Until the next snapshot, what we knew may be stale: plan nothing on this host.
        let was_synced = views
            .lock()
            .expect("fleet lock")
            .get_mut(&host_id)
            .map(|v| std::mem::take(&mut v.synced));
        if was_synced == Some(true) {
            let _ = pokes.send(None);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}

/// Applies one event to the host's view; returns the databases it concerned.
fn apply_event(
    views: &Mutex<HashMap<String, HostView>>,
    host_id: &str,
    event: Option<instance_event::Event>,
) -> BTreeSet<String> {
    let mut views = views.lock().expect("fleet lock");
    let view = views.entry(host_id.to_string()).or_default();
    let mut touched = BTreeSet::new();
    match event {
        Some(instance_event::Event::Snapshot(snapshot)) => {
            touched.extend(view.by_database.keys().cloned());
            let synced = view.synced;
            *view = HostView {
                synced,
                ..HostView::default()
            };
            for state in snapshot.instances {
                view.insert(state);
            }
            touched.extend(view.by_database.keys().cloned());
            view.synced = true;
            tracing::info!(
                host_id,
                instances = view.instances.len(),
                "agent snapshot received"
            );
        }
        Some(instance_event::Event::Changed(state)) => {
            touched.extend(database_of(&state));
            view.insert(state);
        }
        Some(instance_event::Event::RemovedInstanceId(id)) => {
            if let Some(old) = view.remove(&id) {
                touched.extend(database_of(&old));
            }
        }
        None => {}
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, db: &str) -> InstanceState {
        InstanceState {
            instance_id: id.into(),
            labels: [(DATABASE_LABEL.to_string(), db.to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_database_index_follows_inserts_moves_and_removals() {
        let mut v = HostView::default();
        v.insert(state("a", "db1"));
        v.insert(state("b", "db1"));
        v.insert(state("c", "db2"));
        let ids = |v: &HostView, db: &str| -> Vec<String> {
            v.of_database(db).map(|s| s.instance_id.clone()).collect()
        };
        assert_eq!(ids(&v, "db1"), ["a", "b"]);
        // The same instance reported under another database moves index entries.
        v.insert(state("b", "db2"));
        assert_eq!(ids(&v, "db1"), ["a"]);
        assert_eq!(ids(&v, "db2"), ["b", "c"]);
        assert!(v.remove("a").is_some());
        assert!(ids(&v, "db1").is_empty());
        assert!(
            !v.by_database.contains_key("db1"),
            "empty entries are dropped"
        );
        assert!(v.remove("a").is_none());
    }
}
