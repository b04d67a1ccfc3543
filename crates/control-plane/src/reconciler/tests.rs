//! Unit tests of the reconciler's logic: the in-memory store (held to etcd's behaviour by
//! the store's conformance suite) and fake agents that report through the fleet's view as a
//! real agent's watch stream would. Time is tokio's paused clock: waits advance it instead
//! of sleeping.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agent_proto::{
    ApplyEvent, ApplyInstanceRequest, ApplyResult, ExecRequest, ExecResult, Health,
    InstanceSnapshot, InstanceState, InstanceStatus, PublishedPort, RemoveInstanceRequest,
    RemoveResult, ResizeInstanceRequest, ResizeResult, apply_event, instance_event,
};
use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;
use spec::manifest::{LOCAL_MANIFEST, Manifest};
use spec::{DatabaseSpec, DatabaseState, Task, TaskStatus, TaskType};
use store::{DatabaseRecord, HostLiveness, ListOrder, MemoryStore, StateStore};
use tokio::sync::mpsc;
use tonic::Status;

use super::agents::{Agents, Events};
use super::pass::Outcome;
use super::{Reconciler, WorkerState};
use crate::fleet::Fleet;
use crate::instances::{InstanceRecord, Phase};
use crate::tasks::{cancel, new_task};

pub(super) const DB: &str = "db";
pub(super) const HOST: &str = "h1";
/// A second host, on the same engine, for nodes on two hosts.
pub(super) const HOST2: &str = "h2";

/// What a test wants an agent call to do instead of succeeding.
type Hook = Box<dyn Fn(&Harness, &str) -> Option<String> + Send + Sync>;

/// Fake agents: containers in a map, every change reported through the fleet with the next
/// observation number, as the real agent's stream does.
pub(super) struct FakeAgents {
    fleet: Fleet,
    sequence: Mutex<u64>,
    states: Mutex<BTreeMap<String, InstanceState>>,
    calls: Mutex<Vec<String>>,
    /// Called before an apply with the instance id; Some(error) fails it.
    on_apply: Mutex<Option<Hook>>,
    /// Called before an exec with the SQL; Some(stderr) makes psql fail.
    on_exec: Mutex<Option<Hook>>,
    /// Report every container as made from some other spec.
    wrong_hash: Mutex<bool>,
    /// This instance's container dies once, right after it started and before the apply's
    /// reply is read.
    dies_after_apply: Mutex<Option<String>>,
    /// The host each instance was applied on (HOST unless said otherwise).
    hosts: Mutex<BTreeMap<String, String>>,
    /// Patroni registers a new instance as starting and elects no leader: the test does.
    pub(super) patroni_slow: Mutex<bool>,
    harness: Mutex<Option<Harness>>,
}

impl FakeAgents {
    fn host_of(&self, instance_id: &str) -> String {
        self.hosts
            .lock()
            .unwrap()
            .get(instance_id)
            .cloned()
            .unwrap_or_else(|| HOST.to_string())
    }

    fn publish(&self, mut state: InstanceState) {
        let mut seq = self.sequence.lock().unwrap();
        *seq += 1;
        state.sequence = *seq;
        self.states
            .lock()
            .unwrap()
            .insert(state.instance_id.clone(), state.clone());
        let host = self.host_of(&state.instance_id);
        self.fleet
            .ingest(&host, Some(instance_event::Event::Changed(state)));
    }

    pub(super) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn store(&self) -> Option<Arc<MemoryStore>> {
        Some(self.harness.lock().unwrap().as_ref()?.store.clone())
    }

    /// What Patroni does when a Postgres instance of `node` starts: it registers as a
    /// running member, and leads when the node has no leader.
    fn patroni_started(&self, node: &str, instance_id: &str) {
        let Some(store) = self.store() else { return };
        if *self.patroni_slow.lock().unwrap() {
            let member = r#"{"role":"replica","state":"starting"}"#;
            let key = format!("{node}/members/{instance_id}");
            store.set_patroni_key(DB, &key, Some(member.as_bytes()));
            return;
        }
        let leader_key = format!("{node}/leader");
        let keys = futures::executor::block_on(store.patroni_keys(DB)).unwrap();
        let leads = match keys.iter().find(|(k, _)| k == &leader_key) {
            None => {
                store.set_patroni_key(DB, &leader_key, Some(instance_id.as_bytes()));
                store.set_patroni_key(DB, &format!("{node}/initialize"), Some(b"7400"));
                true
            }
            Some((_, v)) => v == instance_id.as_bytes(),
        };
        let role = if leads { "master" } else { "replica" };
        let member =
            format!(r#"{{"role":"{role}","state":"running","xlog_location":0,"timeline":1}}"#);
        store.set_patroni_key(
            DB,
            &format!("{node}/members/{instance_id}"),
            Some(member.as_bytes()),
        );
    }

    /// What Patroni's keys lose when an instance goes: its member key, and the leader key
    /// if it held it.
    fn patroni_gone(&self, instance_id: &str) {
        let Some(store) = self.store() else { return };
        let keys = futures::executor::block_on(store.patroni_keys(DB)).unwrap();
        for (k, v) in keys {
            let member = k.ends_with(&format!("/members/{instance_id}"));
            let leader = k.ends_with("/leader") && v == instance_id.as_bytes();
            if member || leader {
                store.set_patroni_key(DB, &k, None);
            }
        }
    }

    /// A switchover through the REST API: the candidate takes the leader key.
    fn patroni_switchover(&self, body: &serde_json::Value) -> Vec<u8> {
        let store = self.store().expect("a harness");
        let (leader, candidate) = (
            body["leader"].as_str().unwrap(),
            body["candidate"].as_str().unwrap(),
        );
        let keys = futures::executor::block_on(store.patroni_keys(DB)).unwrap();
        let (key, _) = keys
            .iter()
            .find(|(k, v)| k.ends_with("/leader") && v == leader.as_bytes())
            .expect("the leader holds the key");
        store.set_patroni_key(DB, key, Some(candidate.as_bytes()));
        b"Successfully switched over\nberth-http-status:200".to_vec()
    }

    fn hook(&self, hook: &Mutex<Option<Hook>>, arg: &str) -> Option<String> {
        let harness = self.harness.lock().unwrap().clone()?;
        // A hook that panicked (on purpose) poisons its lock; the next call goes on.
        let hook = hook.lock().unwrap_or_else(|e| e.into_inner());
        hook.as_ref().and_then(|h| h(&harness, arg))
    }
}

fn events(items: Vec<ApplyEvent>) -> Events {
    Box::pin(futures::stream::iter(items.into_iter().map(Ok)))
}

#[async_trait]
impl Agents for FakeAgents {
    async fn apply(&self, host_id: &str, request: ApplyInstanceRequest) -> Result<Events, Status> {
        let spec = request.spec.expect("a spec");
        self.calls
            .lock()
            .unwrap()
            .push(format!("apply {}", spec.instance_id));
        if let Some(error) = self.hook(&self.on_apply, &spec.instance_id) {
            return Err(Status::aborted(error));
        }
        self.hosts
            .lock()
            .unwrap()
            .insert(spec.instance_id.clone(), host_id.to_string());
        let mut labels: std::collections::HashMap<String, String> =
            spec.labels.clone().into_iter().collect();
        labels.insert("berth.database-id".into(), spec.database_id.clone());
        labels.insert("berth.service-id".into(), spec.service_id.clone());
        if *self.wrong_hash.lock().unwrap() {
            labels.insert(crate::desired::DESIRED_HASH_LABEL.into(), "other".into());
        }
        let ports: Vec<PublishedPort> = spec
            .ports
            .iter()
            .map(|p| PublishedPort {
                name: p.name.clone(),
                container_port: p.container_port,
                host_port: p.host_port.map_or(0, |h| if h == 0 { 40000 } else { h }),
            })
            .collect();
        self.publish(InstanceState {
            instance_id: spec.instance_id.clone(),
            labels,
            container_id: format!("c-{}", spec.instance_id),
            image: spec.image.clone(),
            state: InstanceStatus::Running as i32,
            health: Health::Healthy as i32,
            ports: ports.clone(),
            nano_cpus: Some(spec.nano_cpus),
            memory_bytes: Some(spec.memory_bytes),
            ..Default::default()
        });
        let _ = host_id;
        if let Some(f) = spec.files.iter().find(|f| f.path == "patroni.yml") {
            let yml = String::from_utf8_lossy(&f.content);
            let doc: serde_yaml::Value = serde_yaml::from_str(&yml).expect("YAML");
            let node = doc["scope"].as_str().expect("a scope");
            self.patroni_started(node, &spec.instance_id);
        }
        let replied = *self.sequence.lock().unwrap();
        let dies = self
            .dies_after_apply
            .lock()
            .unwrap()
            .take_if(|id| *id == spec.instance_id);
        if dies.is_some() {
            let mut dead = self.states.lock().unwrap()[&spec.instance_id].clone();
            dead.state = InstanceStatus::Failed as i32;
            dead.reason = "container exited with code 1".into();
            self.publish(dead);
        }
        let result = ApplyResult {
            container_id: format!("c-{}", spec.instance_id),
            image: spec.image,
            ports,
            sequence: replied,
            ..Default::default()
        };
        Ok(events(vec![ApplyEvent {
            event: Some(apply_event::Event::Result(result)),
        }]))
    }

    async fn remove(
        &self,
        host_id: &str,
        request: RemoveInstanceRequest,
    ) -> Result<Events, Status> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove {}", request.instance_id));
        self.states.lock().unwrap().remove(&request.instance_id);
        self.patroni_gone(&request.instance_id);
        *self.sequence.lock().unwrap() += 1;
        self.fleet.ingest(
            host_id,
            Some(instance_event::Event::RemovedInstanceId(
                request.instance_id,
            )),
        );
        Ok(events(vec![ApplyEvent {
            event: Some(apply_event::Event::Removed(RemoveResult::default())),
        }]))
    }

    async fn resize(
        &self,
        _host_id: &str,
        request: ResizeInstanceRequest,
    ) -> Result<ResizeResult, Status> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("resize {}", request.instance_id));
        let state = self
            .states
            .lock()
            .unwrap()
            .get(&request.instance_id)
            .cloned();
        let mut state = state.ok_or_else(|| Status::not_found("no container"))?;
        state.nano_cpus = Some(request.nano_cpus);
        state.memory_bytes = Some(request.memory_bytes);
        self.publish(state);
        Ok(ResizeResult {
            applied: true,
            sequence: *self.sequence.lock().unwrap(),
        })
    }

    async fn exec(&self, _host_id: &str, request: ExecRequest) -> Result<ExecResult, Status> {
        let sql = String::from_utf8_lossy(&request.stdin).into_owned();
        self.calls
            .lock()
            .unwrap()
            .push(format!("exec {}", request.instance_id));
        if let Some(stderr) = self.hook(&self.on_exec, &sql) {
            return Ok(ExecResult {
                exit_code: 3,
                stdout: vec![],
                stderr: stderr.into_bytes(),
            });
        }
        if request.argv.first().map(String::as_str) == Some("curl") {
            let at = request.argv.iter().position(|a| a == "--data").unwrap();
            let body: serde_json::Value = serde_json::from_str(&request.argv[at + 1]).unwrap();
            return Ok(ExecResult {
                exit_code: 0,
                stdout: self.patroni_switchover(&body),
                stderr: vec![],
            });
        }
        let stdout = if sql.contains("FROM pg_database") {
            b"app\npostgres\n".to_vec()
        } else if sql.contains("FROM pg_stat_replication") {
            b"streaming 0\n".to_vec()
        } else {
            vec![]
        };
        Ok(ExecResult {
            exit_code: 0,
            stdout,
            stderr: vec![],
        })
    }
}

#[derive(Clone)]
pub(super) struct Harness {
    pub(super) store: Arc<MemoryStore>,
    pub(super) agents: Arc<FakeAgents>,
    pub(super) reconciler: Arc<Reconciler>,
    pokes: Arc<Mutex<Option<mpsc::UnboundedReceiver<crate::fleet::Poke>>>>,
}

pub(super) fn harness() -> Harness {
    let store = Arc::new(MemoryStore::new());
    for host in [HOST, HOST2] {
        store.put_host(spec::Host {
            id: host.into(),
            agent_address: "127.0.0.1:1".into(),
            addresses: vec!["127.0.0.1".into()],
            engine_id: "e".into(),
            cpus: 2,
            memory_bytes: 1 << 33,
            agent_version: "test".into(),
            registered_at: Utc::now(),
            status: spec::HostStatus {
                state: spec::HostState::Healthy,
                updated_at: Utc::now(),
                error: None,
            },
        });
        store.set_liveness(
            host,
            Some(HostLiveness {
                docker_ok: true,
                docker_error: None,
                updated_at: Utc::now(),
            }),
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let dyn_store: Arc<dyn StateStore> = store.clone();
    let fleet = Fleet::offline(Some(dyn_store.clone()), tx.clone());
    let registered = futures::executor::block_on(store.list_hosts()).unwrap();
    fleet.sync_hosts(&registered);
    for host in [HOST, HOST2] {
        fleet.ingest(
            host,
            Some(instance_event::Event::Snapshot(InstanceSnapshot::default())),
        );
    }
    let agents = Arc::new(FakeAgents {
        fleet: fleet.clone(),
        sequence: Mutex::new(0),
        states: Mutex::default(),
        calls: Mutex::default(),
        on_apply: Mutex::default(),
        on_exec: Mutex::default(),
        wrong_hash: Mutex::default(),
        dies_after_apply: Mutex::default(),
        hosts: Mutex::default(),
        patroni_slow: Mutex::default(),
        harness: Mutex::default(),
    });
    let reconciler = Reconciler::with_parts(
        dyn_store,
        fleet,
        agents.clone(),
        Arc::new(pki::Authority::generate().unwrap()),
        Arc::new(Manifest::from_json(LOCAL_MANIFEST).unwrap()),
        crate::patroni::config::Dcs::from_urls(&["http://10.0.0.254:2379".into()], "/berth")
            .unwrap(),
        tx,
    );
    let h = Harness {
        store,
        agents,
        reconciler,
        pokes: Arc::new(Mutex::new(Some(rx))),
    };
    *h.agents.harness.lock().unwrap() = Some(h.clone());
    h
}

fn spec_with(services: serde_json::Value) -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": [HOST]}],
        "services": services
    }))
    .unwrap()
}

fn service(id: &str) -> serde_json::Value {
    json!({"service_id": id, "service_type": "mcp", "version": "latest", "host_ids": [HOST], "config": {}})
}

impl Harness {
    pub(super) async fn create(&self, spec: DatabaseSpec) -> Task {
        let task = new_task(DB, TaskType::Create);
        let record = DatabaseRecord {
            current_task_id: Some(task.task_id.clone()),
            ..test_support::records::record(DB, 1)
        };
        self.store
            .create_database(&record, &spec, &task)
            .await
            .unwrap();
        task
    }

    pub(super) async fn update(&self, spec: DatabaseSpec) -> Task {
        let current = self.store.get_database(DB).await.unwrap().unwrap();
        let task = new_task(DB, TaskType::Update);
        let record = DatabaseRecord {
            state: DatabaseState::Modifying,
            generation: current.record.generation + 1,
            current_task_id: Some(task.task_id.clone()),
            ..current.record.clone()
        };
        self.store
            .update_database(current.spec_revision, &record, &spec, &task)
            .await
            .unwrap();
        task
    }

    /// One pass, as a worker would run it.
    pub(super) async fn pass(&self, state: &mut WorkerState) -> Outcome {
        self.reconciler
            .reconcile_database(DB, state)
            .await
            .expect("a pass that the store lets finish")
    }

    /// Passes until one ends without asking for a retry.
    pub(super) async fn settle(&self) -> Outcome {
        let mut state = WorkerState::default();
        loop {
            match self.pass(&mut state).await {
                Outcome::RetryIn(_) => continue,
                other => return other,
            }
        }
    }

    pub(super) async fn task(&self, id: &str) -> Task {
        self.store.get_task(DB, id).await.unwrap().unwrap().value
    }

    pub(super) async fn log(&self, id: &str) -> Vec<String> {
        self.store
            .read_log(DB, id, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    pub(super) async fn state(&self) -> DatabaseState {
        self.store
            .get_database(DB)
            .await
            .unwrap()
            .unwrap()
            .record
            .state
    }

    pub(super) async fn tasks(&self) -> Vec<Task> {
        self.store
            .list_tasks(DB, None, 100, ListOrder::OldestFirst)
            .await
            .unwrap()
    }

    pub(super) async fn record(&self, instance_id: &str) -> InstanceRecord {
        self.reconciler.records(DB).await.unwrap()[instance_id].clone()
    }
}

fn svc_id(service: &str) -> String {
    plan::service_instance_id(DB, service, HOST)
}

fn pg_id() -> String {
    plan::postgres_instance_id(DB, "n1", HOST)
}

#[tokio::test(start_paused = true)]
async fn a_create_converges_and_completes_its_task() {
    let h = harness();
    let task = h.create(spec_with(json!([service("mcp")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    assert_eq!(h.state().await, DatabaseState::Available);
    let calls = h.agents.calls();
    assert_eq!(calls[0], format!("apply {}", pg_id()));
    assert_eq!(calls.last().unwrap(), &format!("apply {}", svc_id("mcp")));
    assert_eq!(h.tasks().await.len(), 1, "no task but the request's");
}

/// Failure 5: a cancel that wins the race with the task's start. Before: the pass saw no
/// unfinished task and applied the spec anyway, logging "task started" after "canceled".
#[tokio::test(start_paused = true)]
async fn a_task_canceled_before_it_started_never_runs() {
    let h = harness();
    let task = h.create(spec_with(json!([service("mcp")]))).await;
    let canceled = cancel(&*h.store, DB, &task.task_id).await.unwrap();
    assert_eq!(canceled.status, TaskStatus::Canceled);
    for _ in 0..3 {
        assert_eq!(h.settle().await, Outcome::Done);
    }
    assert!(h.agents.calls().is_empty(), "{:?}", h.agents.calls());
    assert_eq!(h.state().await, DatabaseState::Failed);
    let log = h.log(&task.task_id).await;
    assert!(
        !log.iter().any(|l| l.starts_with("task started")),
        "{log:?}"
    );
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Canceled);
}

/// Failure 5: a cancel while the task runs. Before: the next pass applied the rest of the
/// spec anyway. Its remaining steps never run; the database is failed until the next spec.
#[tokio::test(start_paused = true)]
async fn a_task_canceled_while_running_stops_and_stays_stopped_until_the_next_spec() {
    let h = harness();
    let spec = spec_with(json!([service("mcp")]));
    let task = h.create(spec.clone()).await;
    let task_id = task.task_id.clone();
    *h.agents.on_apply.lock().unwrap() = Some(Box::new(move |h: &Harness, instance: &str| {
        if instance.ends_with(&format!("n1-{HOST}")) {
            let (store, id) = (h.store.clone(), task_id.clone());
            // The API's cancel, while the primary's apply is in flight.
            futures::executor::block_on(cancel(&*store, DB, &id)).unwrap();
        }
        None
    }));
    for _ in 0..3 {
        assert_eq!(h.settle().await, Outcome::Done);
    }
    let t = h.task(&task.task_id).await;
    assert_eq!(t.status, TaskStatus::Canceled);
    assert_eq!(t.error.as_deref(), Some("canceled by request"));
    assert_eq!(h.agents.calls(), [format!("apply {}", pg_id())]);
    assert_eq!(h.state().await, DatabaseState::Failed);

    // The next spec applies again.
    *h.agents.on_apply.lock().unwrap() = None;
    let next = h.update(spec).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&next.task_id).await.status, TaskStatus::Completed);
    assert_eq!(h.state().await, DatabaseState::Available);
}

#[tokio::test(start_paused = true)]
async fn a_newer_spec_supersedes_the_running_task() {
    let h = harness();
    let first = h.create(spec_with(json!([service("a")]))).await;
    let second = h.update(spec_with(json!([service("b")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let t1 = h.task(&first.task_id).await;
    assert_eq!(t1.status, TaskStatus::Canceled, "{t1:?}");
    assert_eq!(
        t1.error,
        Some(format!("superseded by task {}", second.task_id))
    );
    assert_eq!(h.task(&second.task_id).await.status, TaskStatus::Completed);
    assert!(!h.agents.calls().contains(&format!("apply {}", svc_id("a"))));
}

/// Also wrong: after an apply the reconciler wrote "running, healthy" over whatever the
/// stream had delivered meanwhile. Here the container dies right after its apply, before
/// the reply: the record must say failed.
#[tokio::test(start_paused = true)]
async fn a_container_that_dies_right_after_its_apply_reads_failed() {
    let h = harness();
    h.create(spec_with(json!([service("mcp")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let id = svc_id("mcp");
    // The stream's newest word: the container died (after the apply's reply number).
    let mut dead = h.agents.states.lock().unwrap()[&id].clone();
    dead.state = InstanceStatus::Failed as i32;
    dead.reason = "container exited with code 137".into();
    h.agents.publish(dead.clone());
    // A late copy of an older state must not win over it.
    let mut stale = dead.clone();
    stale.state = InstanceStatus::Running as i32;
    stale.sequence = 1;
    h.reconciler
        .fleet
        .ingest(HOST, Some(instance_event::Event::Changed(stale)));
    let seen = h.reconciler.fleet.instance(HOST, &id).unwrap();
    assert_eq!(seen.state(), InstanceStatus::Failed);
    let (reachable, _) = h.reconciler.reachable_hosts().await.unwrap();
    let mut state = WorkerState::default();
    let super::pass::Loaded::Pass(mut pass) = h.reconciler.load(DB, &mut state).await.unwrap()
    else {
        panic!("a pass")
    };
    h.reconciler
        .refresh_views(&mut pass, &reachable)
        .await
        .unwrap();
    let r = h.record(&id).await;
    assert_eq!(r.observed.phase, Phase::Failed, "{r:?}");
    assert_eq!(r.observed.sequence, dead_sequence(&h, &id));
}

/// The same through a whole pass: the stream's "died" (newer than the apply's reply) is
/// what the pass acts on, so the container is restored at once. Before, the synthetic
/// "running" hid it until the host's stream reconnected.
#[tokio::test(start_paused = true)]
async fn a_death_reported_before_the_apply_reply_is_healed_not_hidden() {
    let h = harness();
    *h.agents.dies_after_apply.lock().unwrap() = Some(svc_id("mcp"));
    let task = h.create(spec_with(json!([service("mcp")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let applies = h
        .agents
        .calls()
        .iter()
        .filter(|c| **c == format!("apply {}", svc_id("mcp")))
        .count();
    assert_eq!(applies, 2, "{:?}", h.agents.calls());
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    let log = h.log(&task.task_id).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("restoring service instance mcp")),
        "{log:?}"
    );
    assert_eq!(
        h.record(&svc_id("mcp")).await.observed.phase,
        Phase::Running
    );
}

fn dead_sequence(h: &Harness, id: &str) -> u64 {
    h.agents.states.lock().unwrap()[id].sequence
}

/// Also wrong: a heal outside any request left no trace. It is a reconcile task now.
#[tokio::test(start_paused = true)]
async fn healing_without_a_request_is_recorded_as_a_reconcile_task() {
    let h = harness();
    h.create(spec_with(json!([service("mcp")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let id = svc_id("mcp");
    let mut dead = h.agents.states.lock().unwrap()[&id].clone();
    dead.state = InstanceStatus::Failed as i32;
    h.agents.publish(dead);
    // Observed, not yet acted on: the database reads failed, as a failed pass would leave it.
    let db = h.store.get_database(DB).await.unwrap().unwrap();
    super::pass::set_state(&*h.store, &db, DatabaseState::Failed)
        .await
        .unwrap();
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.state().await, DatabaseState::Available);
    let tasks = h.tasks().await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let heal = &tasks[1];
    assert_eq!(heal.task_type, TaskType::Reconcile);
    assert_eq!(heal.status, TaskStatus::Completed);
    let log = h.log(&heal.task_id).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("restoring service instance mcp")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l == &format!("database {DB} is available")),
        "{log:?}"
    );
    // Nothing more to do: no further task.
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.tasks().await.len(), 2);
}

/// Also wrong: an instance whose container never started was missing from the records.
/// And failure 2: the engine's refusal names the spec field.
#[tokio::test(start_paused = true)]
async fn an_instance_that_never_started_is_recorded_failed_with_the_field_to_change() {
    let h = harness();
    *h.agents.on_apply.lock().unwrap() = Some(Box::new(|_: &Harness, instance: &str| {
        instance.contains("mcp").then(|| {
            "instance failed to start: OCI runtime create failed: cpu.cfs_quota_us: invalid argument"
                .to_string()
        })
    }));
    let task = h.create(spec_with(json!([service("mcp")]))).await;
    assert!(matches!(h.settle().await, Outcome::GaveUp(_)));
    let t = h.task(&task.task_id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    let error = t.error.unwrap();
    assert!(error.contains("spec.services[0].cpus"), "{error}");
    assert!(error.contains("after 4 attempts"), "{error}");
    let log = h.log(&task.task_id).await;
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("attempt ") && l.contains(" of 4 failed"))
            .count(),
        3,
        "{log:?}"
    );
    let r = h.record(&svc_id("mcp")).await;
    assert_eq!(r.observed.phase, Phase::Failed);
    assert!(
        r.apply_error
            .as_deref()
            .is_some_and(|e| e.contains("spec.services[0].cpus")),
        "{r:?}"
    );
    assert_eq!(h.state().await, DatabaseState::Failed);
}

/// After a task gave up, the events that keep coming (health checks, the failing
/// container itself) do not each open a reconcile task that fails the same way; the next
/// spec, or the safety net's sweep after the quiet time, tries again.
#[tokio::test(start_paused = true)]
async fn a_task_that_gave_up_is_not_retried_by_every_event() {
    let h = harness();
    *h.agents.on_apply.lock().unwrap() = Some(Box::new(|_: &Harness, instance: &str| {
        instance
            .contains("mcp")
            .then(|| "port is already allocated".to_string())
    }));
    h.create(spec_with(json!([service("mcp")]))).await;
    let mut state = WorkerState::default();
    loop {
        match h.pass(&mut state).await {
            Outcome::RetryIn(_) => continue,
            Outcome::GaveUp(_) => break,
            other => panic!("{other:?}"),
        }
    }
    let applies = h.agents.calls().len();
    for _ in 0..5 {
        assert_eq!(h.pass(&mut state).await, Outcome::Done);
    }
    assert_eq!(h.agents.calls().len(), applies, "{:?}", h.agents.calls());
    assert_eq!(h.tasks().await.len(), 1);
    // After the quiet time, a pass tries again, as a reconcile task.
    tokio::time::advance(super::SAFETY_NET_PERIOD).await;
    assert!(matches!(h.pass(&mut state).await, Outcome::RetryIn(_)));
    let tasks = h.tasks().await;
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1].task_type, TaskType::Reconcile);
}

/// A failed attempt is retried within its task; one that then succeeds completes it.
#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_within_its_task() {
    let h = harness();
    let failures = Arc::new(Mutex::new(2));
    let left = failures.clone();
    *h.agents.on_apply.lock().unwrap() = Some(Box::new(move |_: &Harness, instance: &str| {
        let mut left = left.lock().unwrap();
        (instance.contains("mcp") && *left > 0).then(|| {
            *left -= 1;
            "engine busy".to_string()
        })
    }));
    let task = h.create(spec_with(json!([service("mcp")]))).await;
    let mut state = WorkerState::default();
    assert!(matches!(h.pass(&mut state).await, Outcome::RetryIn(_)));
    assert!(matches!(h.pass(&mut state).await, Outcome::RetryIn(_)));
    assert_eq!(h.pass(&mut state).await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    assert_eq!(h.tasks().await.len(), 1);
}

/// Failure 3: a removed service's roles cannot be dropped. Before: the task failed, and so
/// did every later update. Now the roles are kept (said on the task) and changes go on.
#[tokio::test(start_paused = true)]
async fn a_failing_role_cleanup_does_not_hold_back_later_changes() {
    let h = harness();
    h.create(spec_with(json!([service("gx")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    *h.agents.on_exec.lock().unwrap() = Some(Box::new(|_: &Harness, sql: &str| {
        sql.contains("DROP ROLE").then(|| {
            "ERROR:  role \"svc_gx_ro\" cannot be dropped because some objects depend on it".into()
        })
    }));
    let removal = h.update(spec_with(json!([]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let t = h.task(&removal.task_id).await;
    assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    let log = h.log(&removal.task_id).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("dropping roles of service gx failed")),
        "{log:?}"
    );
    let other = h.update(spec_with(json!([service("other")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&other.task_id).await.status, TaskStatus::Completed);
    // With the cause gone, the next change drops them.
    *h.agents.on_exec.lock().unwrap() = None;
    let last = h.update(spec_with(json!([]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&last.task_id).await.status, TaskStatus::Completed);
    let creds = h.reconciler.credentials(DB).await.unwrap();
    assert!(creds.services.is_empty(), "{:?}", creds.services.keys());
}

/// Failure 1 end to end through the reconciler: removing both limits replaces the
/// container (a new apply), not an in-place resize that the engine cannot do.
#[tokio::test(start_paused = true)]
async fn removing_limits_replaces_the_container() {
    let h = harness();
    let mut limited = service("mcp");
    limited["cpus"] = json!("0.5");
    limited["memory"] = json!("256M");
    h.create(spec_with(json!([limited]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let before = h.agents.calls().len();
    let task = h.update(spec_with(json!([service("mcp")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    assert_eq!(
        h.agents.calls()[before..],
        [format!("apply {}", svc_id("mcp"))]
    );
    let r = h.record(&svc_id("mcp")).await;
    assert_eq!(r.resources, plan::Resources::default());
}

/// Also wrong: a pass that ran out of plans returned "converged" silently. Here every apply
/// succeeds but the container never reports the desired spec, so every plan is the same.
#[tokio::test(start_paused = true)]
async fn a_pass_that_never_converges_fails_its_task() {
    let h = harness();
    *h.agents.wrong_hash.lock().unwrap() = true;
    let task = h.create(spec_with(json!([]))).await;
    let outcome = h.settle().await;
    assert!(matches!(outcome, Outcome::GaveUp(_)), "{outcome:?}");
    let t = h.task(&task.task_id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.error
            .as_deref()
            .is_some_and(|e| e.contains("did not converge after 20 plans")),
        "{t:?}"
    );
    assert_eq!(h.state().await, DatabaseState::Failed);
}

/// Also wrong: a worker that panicked stopped its database's reconciliation for good.
#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_is_restarted_and_said_on_the_task() {
    let h = harness();
    let panicked = Arc::new(Mutex::new(false));
    let once = panicked.clone();
    *h.agents.on_apply.lock().unwrap() = Some(Box::new(move |_: &Harness, _: &str| {
        let first = !std::mem::replace(&mut *once.lock().unwrap_or_else(|e| e.into_inner()), true);
        if first {
            panic!("boom in the fake agent");
        }
        None
    }));
    let task = h.create(spec_with(json!([]))).await;
    let rx = h.pokes.lock().unwrap().take().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let r = h.reconciler.clone();
    let running = tokio::spawn(async move {
        r.run(rx, async {
            let _ = stop_rx.await;
        })
        .await
    });
    h.reconciler.poke(DB);
    let mut waited = 0;
    while h.task(&task.task_id).await.status != TaskStatus::Completed {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
        assert!(waited < 10_000, "the task never completed");
    }
    let _ = stop_tx.send(());
    running.await.unwrap();
    h.reconciler.shutdown();
    assert!(*panicked.lock().unwrap_or_else(|e| e.into_inner()));
    let log = h.log(&task.task_id).await;
    assert!(
        log.iter()
            .any(|l| l.contains("worker for this database crashed (boom in the fake agent)")),
        "{log:?}"
    );
}

/// A host whose lease ran out while nothing was asked: every event used to open a reconcile
/// task and fail it ("hosts are unreachable"), dozens a second, pushing the real history out
/// of the task list. Nothing was asked, so nothing fails: no task, the state untouched.
#[tokio::test(start_paused = true)]
async fn a_lost_host_opens_no_task_while_nothing_was_asked() {
    let h = harness();
    h.create(spec_with(json!([service("mcp")]))).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.state().await, DatabaseState::Available);
    let before = h.tasks().await.len();
    h.store.set_liveness(HOST, None);
    for _ in 0..5 {
        assert_eq!(h.settle().await, Outcome::Done);
    }
    assert_eq!(h.tasks().await.len(), before, "{:?}", h.tasks().await);
    assert_eq!(h.state().await, DatabaseState::Available);
}

/// A node added after its services: its primary gets the services' roles before any
/// service is pointed at it (the roles were recorded once per service, so the new primary
/// never got them and the services' logins to it failed).
#[tokio::test(start_paused = true)]
async fn a_node_added_later_gets_the_services_roles() {
    let h = harness();
    let one = spec_with(json!([service("mcp")]));
    h.create(one.clone()).await;
    assert_eq!(h.settle().await, Outcome::Done);
    let mut two = one;
    two.nodes
        .push(serde_json::from_value(json!({"name": "n2", "host_ids": [HOST]})).unwrap());
    let task = h.update(two).await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    let n2 = plan::postgres_instance_id(DB, "n2", HOST);
    assert!(
        h.agents.calls().contains(&format!("exec {n2}")),
        "the roles were made on n2's primary: {:?}",
        h.agents.calls()
    );
    let log = h.log(&task.task_id).await;
    let roles = log
        .iter()
        .position(|l| l.starts_with("creating roles of service mcp"))
        .unwrap_or_else(|| panic!("{log:?}"));
    let repointed = log
        .iter()
        .position(|l| l.starts_with("updating service instance mcp"))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(roles < repointed, "{log:?}");
}
