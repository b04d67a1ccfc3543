//! The leader's live view of what runs on every host, fed by each agent's WatchInstances
//! stream: a full snapshot on connect, then one message per change. Nothing here polls.
//!
//! The stream is the one writer of observed state. Every state carries the agent's
//! observation number, and a state older than the one held for its instance is dropped, so
//! a late message can never undo a newer one. Whoever acts on an agent's reply (an apply's
//! result) waits until the stream has delivered that reply's number ([`Fleet::wait_seen`])
//! instead of writing what it believes into the view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proto::agent_client::AgentClient;
use agent_proto::{InstanceState, WatchRequest, instance_event};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use chrono::Utc;
use store::{HostDialFailure, StateStore};

use crate::desired::HostPlacement;

/// Which database a change concerns, so only its reconciler wakes up.
pub type Poke = Option<String>;

const DATABASE_LABEL: &str = "berth.database-id";

#[derive(Default)]
struct HostView {
    /// True once the current stream delivered its snapshot: only then is `instances` complete.
    synced: bool,
    /// The highest observation number the stream delivered.
    sequence: u64,
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
    /// Woken by every message of every stream (for [`Fleet::wait_seen`]).
    seen: Arc<tokio::sync::Notify>,
    /// Databases whose instances passed a health check since the last
    /// [`Fleet::take_health_changes`]: worth a write, but not a pass of their own.
    health_changed: Arc<Mutex<BTreeSet<String>>>,
    conns: Arc<Mutex<HashMap<String, HostConn>>>,
    /// Where each registered host is and which engine it runs, as last read.
    placements: Arc<Mutex<BTreeMap<String, HostPlacement>>>,
    dial: Arc<DialFailures>,
    pokes: mpsc::UnboundedSender<Poke>,
    /// None: a fleet that never dials (unit tests feed it with [`Fleet::ingest`]).
    tls: Option<Arc<crate::tls::FleetTls>>,
}

fn database_of(state: &InstanceState) -> Option<String> {
    state.labels.get(DATABASE_LABEL).cloned()
}

impl Fleet {
    /// `store` is the leader's (fenced): dial failures are recorded there for the API.
    pub fn new(
        store: Arc<dyn StateStore>,
        pokes: mpsc::UnboundedSender<Poke>,
        tls: Arc<crate::tls::FleetTls>,
    ) -> Self {
        Fleet {
            tls: Some(tls),
            ..Fleet::offline(Some(store), pokes)
        }
    }

    /// A fleet that knows where hosts are but dials none: what it observes is what
    /// [`Fleet::ingest`] is given.
    pub fn offline(store: Option<Arc<dyn StateStore>>, pokes: mpsc::UnboundedSender<Poke>) -> Self {
        Fleet {
            views: Default::default(),
            seen: Default::default(),
            health_changed: Default::default(),
            conns: Default::default(),
            placements: Default::default(),
            dial: Arc::new(DialFailures {
                store,
                failing: Mutex::default(),
            }),
            pokes,
            tls: None,
        }
    }

    /// Takes in one message of a host's stream, as the stream's watcher does; returns the
    /// databases whose reconciliation it concerns (a snapshot concerns every one it names).
    pub fn ingest(&self, host_id: &str, event: Option<instance_event::Event>) -> BTreeSet<String> {
        let changes = apply_event(&self.views, host_id, event);
        self.health_changed
            .lock()
            .expect("fleet lock")
            .extend(changes.health_only);
        self.seen.notify_waiters();
        changes.touched
    }

    /// Marks a host's stream as broken: until its next snapshot nothing is known there.
    pub fn unsync(&self, host_id: &str) -> bool {
        let was = self
            .views
            .lock()
            .expect("fleet lock")
            .get_mut(host_id)
            .map(|v| std::mem::take(&mut v.synced));
        self.seen.notify_waiters();
        was == Some(true)
    }

    /// Waits until `host_id`'s stream has delivered observation `sequence` (so the view
    /// holds everything an agent reply with that number reported), the stream broke, or
    /// `limit` passed. True when the observation arrived.
    pub async fn wait_seen(&self, host_id: &str, sequence: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.seen.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.host_sequence(host_id) {
                Some(seen) if seen >= sequence => return true,
                None => return false,
                Some(_) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// The highest observation number a synced host's stream delivered; None when the host
    /// is not synced.
    pub fn host_sequence(&self, host_id: &str) -> Option<u64> {
        let views = self.views.lock().expect("fleet lock");
        views.get(host_id).filter(|v| v.synced).map(|v| v.sequence)
    }

    /// Databases with health checks seen passing since the last call.
    pub fn take_health_changes(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.health_changed.lock().expect("fleet lock"))
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
        let Some(tls) = self.tls.clone() else {
            return;
        };
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
                .and_then(|e| e.tls_config(tls.agent_client(id)))
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
                self.clone(),
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

    /// The state a synced host reports for one instance.
    pub fn instance(&self, host_id: &str, instance_id: &str) -> Option<InstanceState> {
        let views = self.views.lock().expect("fleet lock");
        views
            .get(host_id)
            .filter(|v| v.synced)
            .and_then(|v| v.instances.get(instance_id).cloned())
    }

    /// Calls `visit` with every instance of every host, and whether its host is synced (a
    /// host whose stream broke keeps its last states until the next snapshot). For the
    /// metrics' census; the lock is held throughout, so `visit` must be quick.
    pub fn for_each_instance(&self, mut visit: impl FnMut(bool, &InstanceState)) {
        let views = self.views.lock().expect("fleet lock");
        for view in views.values() {
            for state in view.instances.values() {
                visit(view.synced, state);
            }
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
    /// None for an offline fleet.
    store: Option<Arc<dyn StateStore>>,
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
            let Some(store) = &self.store else { return };
            if let Err(e) = store.put_host_dial_failure(host_id, &failure).await {
                tracing::warn!(host_id, error = %e, "cannot record the dial failure");
            }
        }
    }

    async fn reached(&self, host_id: &str) {
        let was = self.failing.lock().expect("fleet lock").remove(host_id);
        if was.is_some_and(|f| f.recorded) {
            tracing::info!(host_id, "the host's agent can be dialled again");
            let Some(store) = &self.store else { return };
            if let Err(e) = store.clear_host_dial_failure(host_id).await {
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
    fleet: Fleet,
) {
    use backon::BackoffBuilder;
    let policy = crate::retry::stream_policy();
    let mut backoff = policy.build();
    loop {
        match client.watch_instances(WatchRequest {}).await {
            Ok(response) => {
                fleet.dial.reached(&host_id).await;
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
                    backoff = policy.build();
                    let snapshot = matches!(event, Some(instance_event::Event::Snapshot(_)));
                    let touched = fleet.ingest(&host_id, event);
                    if snapshot {
                        // A host that (re)appeared may lack instances that should run there.
                        let _ = fleet.pokes.send(None);
                    } else {
                        for db in touched {
                            let _ = fleet.pokes.send(Some(db));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(host_id = %host_id, error = %e, "agent not reachable");
                fleet.dial.failed(&host_id, &address, error_chain(&e)).await;
            }
        }
        // Until the next snapshot, what we knew may be stale: plan nothing on this host.
        if fleet.unsync(&host_id) {
            let _ = fleet.pokes.send(None);
        }
        let delay = backoff.next().unwrap_or(crate::retry::STREAM_MAX_DELAY);
        tokio::time::sleep(delay).await;
    }
}

/// What one message changed.
#[derive(Default)]
struct Changes {
    /// Databases whose instances changed in a way the reconciler acts on.
    touched: BTreeSet<String>,
    /// Databases where only a passing health check's time moved.
    health_only: BTreeSet<String>,
}

/// Equal but for the time of the last passing health check and the observation number.
fn same_but_health_time(a: &InstanceState, b: &InstanceState) -> bool {
    let strip = |s: &InstanceState| InstanceState {
        last_health_at: None,
        sequence: 0,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Applies one event to the host's view; returns what it changed. A state older than the
/// one held for its instance (a lower observation number) is dropped.
fn apply_event(
    views: &Mutex<HashMap<String, HostView>>,
    host_id: &str,
    event: Option<instance_event::Event>,
) -> Changes {
    let mut views = views.lock().expect("fleet lock");
    let view = views.entry(host_id.to_string()).or_default();
    let mut changes = Changes::default();
    match event {
        Some(instance_event::Event::Snapshot(snapshot)) => {
            changes.touched.extend(view.by_database.keys().cloned());
            let synced = view.synced;
            *view = HostView {
                synced,
                ..HostView::default()
            };
            let newest = snapshot.instances.iter().map(|s| s.sequence).max();
            view.sequence = snapshot.sequence.max(newest.unwrap_or(0));
            for state in snapshot.instances {
                view.insert(state);
            }
            changes.touched.extend(view.by_database.keys().cloned());
            view.synced = true;
            tracing::info!(
                host_id,
                instances = view.instances.len(),
                "agent snapshot received"
            );
        }
        Some(instance_event::Event::Changed(state)) => {
            let old = view.instances.get(&state.instance_id);
            if old.is_some_and(|o| o.sequence > state.sequence) {
                tracing::debug!(host_id, instance_id = %state.instance_id, "dropped a stale state");
                return changes;
            }
            view.sequence = view.sequence.max(state.sequence);
            let health_only = old.is_some_and(|o| same_but_health_time(o, &state));
            let db = database_of(&state);
            match health_only {
                true => changes.health_only.extend(db),
                false => changes.touched.extend(db),
            }
            view.insert(state);
        }
        Some(instance_event::Event::RemovedInstanceId(id)) => {
            if let Some(old) = view.remove(&id) {
                changes.touched.extend(database_of(&old));
            }
        }
        None => {}
    }
    changes
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

    fn offline() -> Fleet {
        let (tx, _rx) = mpsc::unbounded_channel();
        let f = Fleet::offline(None, tx);
        f.ingest(
            "h",
            Some(instance_event::Event::Snapshot(
                agent_proto::InstanceSnapshot::default(),
            )),
        );
        f
    }

    fn numbered(id: &str, sequence: u64, state: agent_proto::InstanceStatus) -> InstanceState {
        InstanceState {
            sequence,
            state: state as i32,
            ..state_of(id)
        }
    }

    fn state_of(id: &str) -> InstanceState {
        state(id, "db1")
    }

    /// One writer and a sequence number: a late, older state never replaces a newer one.
    #[test]
    fn a_stale_state_never_wins() {
        use agent_proto::InstanceStatus::{Failed, Running};
        let f = offline();
        let changed = |s| Some(instance_event::Event::Changed(s));
        assert_eq!(f.ingest("h", changed(numbered("a", 5, Failed))).len(), 1);
        assert!(f.ingest("h", changed(numbered("a", 4, Running))).is_empty());
        assert_eq!(f.instance("h", "a").unwrap().state(), Failed);
        assert_eq!(f.host_sequence("h"), Some(5));
        f.ingest("h", changed(numbered("a", 6, Running)));
        assert_eq!(f.instance("h", "a").unwrap().state(), Running);
    }

    /// A passing health check only moves a time: no pass for it, only a later write.
    #[test]
    fn a_health_check_alone_wakes_nobody_but_is_remembered() {
        let f = offline();
        let changed = |s| Some(instance_event::Event::Changed(s));
        let first = numbered("a", 1, agent_proto::InstanceStatus::Running);
        f.ingest("h", changed(first.clone()));
        let checked = InstanceState {
            sequence: 2,
            last_health_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            ..first
        };
        assert!(f.ingest("h", changed(checked)).is_empty());
        assert_eq!(f.take_health_changes(), BTreeSet::from(["db1".to_string()]));
        assert!(f.take_health_changes().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_an_observation_ends_when_it_arrives_or_the_stream_breaks() {
        let f = offline();
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.wait_seen("h", 3, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        f.ingest(
            "h",
            Some(instance_event::Event::Changed(numbered(
                "a",
                3,
                agent_proto::InstanceStatus::Running,
            ))),
        );
        assert!(waiter.await.unwrap());
        let broken = {
            let f = f.clone();
            tokio::spawn(async move { f.wait_seen("h", 9, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        f.unsync("h");
        assert!(!broken.await.unwrap());
        assert!(!f.wait_seen("nowhere", 1, Duration::from_secs(1)).await);
    }
}
