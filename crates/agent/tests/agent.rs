//! The agent against the machine's real Docker engine. Every claim is checked through the engine itself
//! (inspect, HTTP to the published port), not through the agent's own answers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agent_proto::v1::{
    ApplyAction, ExecRequest, Health, InstanceEvent, InstanceState, InstanceStatus,
    ResizeInstanceRequest, WatchRequest, instance_event,
};
use bollard::query_parameters::KillContainerOptions;
use common::{
    TestAgent, bound_host_port, docker, force_remove, http_get, inspect, sleeper_spec, web_spec,
};
use tonic::Streaming;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_a_healthy_owned_container_and_reapply_changes_nothing() {
    let docker = docker().await;
    let mut agent = TestAgent::start("apply").await;
    let (logs, first) = agent
        .apply(web_spec("web1", "hello v1"))
        .await
        .expect("apply");
    assert_eq!(first.action(), ApplyAction::Created);
    assert!(
        logs.iter().any(|l| l.message.contains("container started")),
        "logs: {logs:?}"
    );

    let c = inspect(&docker, &agent.container_name("web1"))
        .await
        .expect("container exists");
    assert_eq!(c.id.as_deref(), Some(first.container_id.as_str()));
    let state = c.state.as_ref().unwrap();
    assert_eq!(state.running, Some(true));
    // The agent may have seen its own run of the check pass before the engine's first one; the
    // engine must agree soon after.
    common::wait_engine_healthy(&docker, &agent.container_name("web1")).await;
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels["berth.host-id"], agent.host_id);
    assert_eq!(labels["berth.instance-id"], "web1");
    assert_eq!(labels["berth.database-id"], "db-test");
    assert_eq!(labels["berth.service-id"], "web");
    assert_eq!(labels["berth.kind"], "service");
    assert_eq!(labels["berth.spec-hash"], first.spec_hash);
    assert_eq!(labels["test.suite"], "agent");
    let host_config = c.host_config.as_ref().unwrap();
    assert_eq!(
        host_config.restart_policy.as_ref().and_then(|r| r.name),
        Some(bollard::models::RestartPolicyNameEnum::NO)
    );
    let mounts = c.mounts.clone().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/config"))
        .expect("config mount");
    assert_eq!(config_mount.rw, Some(false));
    let data_mount = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/data"))
        .expect("data mount");
    assert_eq!(data_mount.rw, Some(true));

    let file = agent.instance_dir("web1").join("config/index.html");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config_dir = agent.instance_dir("web1").join("config");
    assert_eq!(
        std::fs::metadata(&config_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let port = bound_host_port(&c, 8080);
    assert_eq!(http_get(port, "/index.html").await, "hello v1");

    let (_, second) = agent
        .apply(web_spec("web1", "hello v1"))
        .await
        .expect("re-apply");
    assert_eq!(second.action(), ApplyAction::Unchanged);
    assert_eq!(second.container_id, first.container_id);
    let c = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(c.id.as_deref(), Some(first.container_id.as_str()));
    assert_eq!(
        c.state.unwrap().started_at,
        state.started_at,
        "container was not restarted"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_memory_change_in_place() {
    let docker = docker().await;
    let mut agent = TestAgent::start("resize").await;
    let (_, first) = agent.apply(web_spec("web1", "x")).await.expect("apply");
    let before = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(
        before.host_config.as_ref().unwrap().nano_cpus,
        Some(500_000_000)
    );
    assert_eq!(
        before.host_config.as_ref().unwrap().memory,
        Some(64 * 1024 * 1024)
    );

    let mut bigger = web_spec("web1", "x");
    bigger.nano_cpus = 1_000_000_000;
    bigger.memory_bytes = 128 * 1024 * 1024;
    let (_, resized) = agent.apply(bigger).await.expect("apply resize");
    assert_eq!(resized.action(), ApplyAction::Resized);
    assert!(resized.resize_applied);
    assert_eq!(resized.container_id, first.container_id);
    let after = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(
        after.host_config.as_ref().unwrap().nano_cpus,
        Some(1_000_000_000)
    );
    assert_eq!(
        after.host_config.as_ref().unwrap().memory,
        Some(128 * 1024 * 1024)
    );
    assert_eq!(
        after.state.as_ref().unwrap().started_at,
        before.state.as_ref().unwrap().started_at
    );

    let applied = agent
        .client
        .resize_instance(ResizeInstanceRequest {
            instance_id: "web1".into(),
            nano_cpus: 250_000_000,
            memory_bytes: 32 * 1024 * 1024,
        })
        .await
        .expect("resize rpc")
        .into_inner()
        .applied;
    assert!(applied);
    let after = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(
        after.host_config.as_ref().unwrap().nano_cpus,
        Some(250_000_000)
    );
    assert_eq!(
        after.host_config.as_ref().unwrap().memory,
        Some(32 * 1024 * 1024)
    );

    let missing = agent
        .client
        .resize_instance(ResizeInstanceRequest {
            instance_id: "nope".into(),
            nano_cpus: 1,
            memory_bytes: 0,
        })
        .await
        .expect_err("resizing a missing instance fails");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_recreates_with_new_content_and_the_same_chosen_port() {
    let docker = docker().await;
    let mut agent = TestAgent::start("recreate").await;
    let (_, first) = agent
        .apply(web_spec("web1", "version one"))
        .await
        .expect("apply");
    let c1 = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    let port = bound_host_port(&c1, 8080);
    assert_ne!(port, 0);
    assert_eq!(first.ports.len(), 1);
    assert_eq!(first.ports[0].host_port, u32::from(port));
    std::fs::write(agent.instance_dir("web1").join("data/keep"), b"state").unwrap();

    let (_, second) = agent
        .apply(web_spec("web1", "version two"))
        .await
        .expect("apply changed config");
    assert_eq!(second.action(), ApplyAction::Recreated);
    assert_ne!(second.container_id, first.container_id);
    assert_ne!(second.spec_hash, first.spec_hash);
    assert!(
        inspect(&docker, &first.container_id).await.is_none(),
        "old container removed"
    );
    let c2 = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(c2.id.as_deref(), Some(second.container_id.as_str()));
    assert_eq!(
        bound_host_port(&c2, 8080),
        port,
        "host port chosen once and kept"
    );
    assert_eq!(http_get(port, "/index.html").await, "version two");
    assert_eq!(
        std::fs::read(agent.instance_dir("web1").join("data/keep")).unwrap(),
        b"state",
        "data kept"
    );

    // A container that is gone behind the agent's back comes back on the same port too.
    force_remove(&docker, &second.container_id).await;
    let (_, third) = agent
        .apply(web_spec("web1", "version two"))
        .await
        .expect("apply after loss");
    assert_eq!(third.action(), ApplyAction::Created);
    let c3 = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(bound_host_port(&c3, 8080), port);

    // Another container took the port while the instance had none: the engine picks a new
    // one, and the instance keeps that from then on.
    force_remove(&docker, &third.container_id).await;
    let mut squatter = web_spec("squatter", "not web1");
    squatter.ports[0].host_port = Some(u32::from(port));
    agent.apply(squatter).await.expect("apply the squatter");
    let (log, fourth) = agent
        .apply(web_spec("web1", "version two"))
        .await
        .expect("apply with its port taken");
    assert!(
        log.iter()
            .any(|l| l.message.contains("a host port chosen earlier is taken")),
        "{log:?}"
    );
    let moved = bound_host_port(
        &inspect(&docker, &agent.container_name("web1"))
            .await
            .unwrap(),
        8080,
    );
    assert_ne!(moved, port);
    assert_eq!(fourth.ports[0].host_port, u32::from(moved));
    assert_eq!(http_get(moved, "/index.html").await, "version two");
    let (_, fifth) = agent
        .apply(web_spec("web1", "version three"))
        .await
        .expect("apply after the move");
    assert_eq!(fifth.action(), ApplyAction::Recreated);
    assert_eq!(
        fifth.ports[0].host_port,
        u32::from(moved),
        "the new choice is kept"
    );
    agent.shutdown().await;
}

/// Writing and fsyncing config files, preparing a data directory and deleting it run on the
/// blocking pool. The agent serves from this test's only async thread, and in this debug build
/// `agent::blocking::assert_allowed` panics on blocking filesystem work done there.
#[tokio::test(flavor = "current_thread")]
async fn filesystem_work_of_apply_and_remove_runs_off_the_async_thread() {
    let mut agent = TestAgent::start("fs-off-runtime").await;
    let spec = web_spec("web-fs", "x");
    assert!(
        spec.data_mount_path.is_some(),
        "the spec has a data directory"
    );
    agent.apply(spec).await.expect("apply");
    assert!(agent.instance_dir("web-fs").join("data").is_dir());

    let removed = agent.remove("web-fs", true).await.expect("remove");
    assert!(removed.data_deleted);
    assert!(!agent.instance_dir("web-fs").exists());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_deletes_container_and_instance_dir_and_is_idempotent() {
    let docker = docker().await;
    let mut agent = TestAgent::start("remove").await;
    agent.apply(web_spec("web1", "x")).await.expect("apply");
    assert!(
        agent
            .instance_dir("web1")
            .join("config/index.html")
            .exists()
    );

    let removed = agent.remove("web1", true).await.expect("remove");
    assert!(removed.container_removed);
    assert!(removed.data_deleted);
    assert!(
        inspect(&docker, &agent.container_name("web1"))
            .await
            .is_none()
    );
    assert!(!agent.instance_dir("web1").exists());

    let again = agent
        .remove("web1", true)
        .await
        .expect("removing again succeeds");
    assert!(!again.container_removed);
    let never = agent
        .remove("never-existed", true)
        .await
        .expect("removing an unknown instance succeeds");
    assert!(!never.container_removed);
    agent.shutdown().await;
}

async fn next_event(stream: &mut Streaming<InstanceEvent>, within: Duration) -> InstanceEvent {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("no instance event in time")
        .expect("watch stream error")
        .expect("watch stream ended")
}

fn snapshot_of(event: InstanceEvent) -> Vec<InstanceState> {
    match event.event {
        Some(instance_event::Event::Snapshot(s)) => s.instances,
        other => panic!("expected a snapshot first, got {other:?}"),
    }
}

/// Waits for a change of `instance_id` matching `pred`, skipping others.
async fn wait_for_state(
    stream: &mut Streaming<InstanceEvent>,
    instance_id: &str,
    within: Duration,
    pred: impl Fn(&InstanceState) -> bool,
) -> InstanceState {
    tokio::time::timeout(within, async {
        loop {
            let event = stream
                .message()
                .await
                .expect("watch stream error")
                .expect("watch stream ended");
            let candidates = match event.event {
                Some(instance_event::Event::Changed(s)) => vec![s],
                Some(instance_event::Event::Snapshot(s)) => s.instances,
                _ => continue,
            };
            if let Some(s) = candidates
                .into_iter()
                .find(|s| s.instance_id == instance_id && pred(s))
            {
                return s;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{instance_id} did not reach the expected state within {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_behind_the_agents_back_is_reported_failed() {
    let docker = docker().await;
    let mut agent = TestAgent::start("kill").await;
    let mut watch = agent
        .client
        .watch_instances(WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    assert!(snapshot_of(next_event(&mut watch, Duration::from_secs(5)).await).is_empty());

    let (_, applied) = agent.apply(web_spec("web1", "x")).await.expect("apply");
    let running = wait_for_state(&mut watch, "web1", Duration::from_secs(10), |s| {
        s.state() == InstanceStatus::Running && s.health() == Health::Healthy
    })
    .await;
    assert_eq!(running.container_id, applied.container_id);

    docker
        .kill_container(&applied.container_id, None::<KillContainerOptions>)
        .await
        .expect("docker kill");
    let failed = wait_for_state(&mut watch, "web1", Duration::from_secs(2), |s| {
        s.state() == InstanceStatus::Failed
    })
    .await;
    assert_eq!(failed.exit_code, 137);
    assert!(failed.reason.contains("137"), "reason: {}", failed.reason);
    let c = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(c.state.unwrap().running, Some(false));

    // A late subscriber sees the failure in its snapshot.
    let mut late = agent
        .client
        .watch_instances(WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let snapshot = snapshot_of(next_event(&mut late, Duration::from_secs(5)).await);
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].state(), InstanceStatus::Failed);

    // And re-applying heals it.
    let (_, healed) = agent.apply(web_spec("web1", "x")).await.expect("re-apply");
    assert_eq!(healed.action(), ApplyAction::Recreated);
    wait_for_state(&mut watch, "web1", Duration::from_secs(10), |s| {
        s.state() == InstanceStatus::Running
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_one_engine_never_see_each_others_containers() {
    let mut a = TestAgent::start("iso-a").await;
    let mut b = TestAgent::start("iso-b").await;
    a.apply(sleeper_spec("same-id")).await.expect("apply on a");
    b.apply(sleeper_spec("same-id")).await.expect("apply on b");
    b.apply(sleeper_spec("only-b"))
        .await
        .expect("apply only on b");

    let docker = docker().await;
    let ca = inspect(&docker, &a.container_name("same-id"))
        .await
        .expect("a's container");
    let cb = inspect(&docker, &b.container_name("same-id"))
        .await
        .expect("b's container");
    assert_ne!(ca.id, cb.id);

    let mut wa = a
        .client
        .watch_instances(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let sa = snapshot_of(next_event(&mut wa, Duration::from_secs(5)).await);
    assert_eq!(sa.len(), 1, "a sees only its own: {sa:?}");
    assert_eq!(sa[0].container_id, ca.id.clone().unwrap());
    assert!(sa.iter().all(|s| s.labels["berth.host-id"] == a.host_id));

    let mut wb = b
        .client
        .watch_instances(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let sb = snapshot_of(next_event(&mut wb, Duration::from_secs(5)).await);
    let mut ids: Vec<&str> = sb.iter().map(|s| s.instance_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["only-b", "same-id"]);
    assert!(sb.iter().all(|s| s.labels["berth.host-id"] == b.host_id));

    // Removing b's instance leaves a's container alone.
    b.remove("same-id", true).await.expect("remove on b");
    assert!(
        inspect(&docker, &b.container_name("same-id"))
            .await
            .is_none()
    );
    let ca_after = inspect(&docker, &a.container_name("same-id"))
        .await
        .expect("a's container survives");
    assert_eq!(ca_after.state.unwrap().running, Some(true));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_feeds_stdin_and_returns_output_and_exit_code() {
    let mut agent = TestAgent::start("exec").await;
    let info = agent
        .client
        .get_host_info(())
        .await
        .expect("host info")
        .into_inner();
    assert_eq!(info.host_id, agent.host_id);
    assert!(info.docker_ok, "{}", info.docker_error);
    assert!(info.cpus > 0 && info.memory_bytes > 0);
    assert_eq!(info.addresses, ["127.0.0.1"]);
    agent.apply(sleeper_spec("sleeper")).await.expect("apply");
    let secret = b"CREATE ROLE x PASSWORD 'not-in-argv';\n".to_vec();
    let out = agent
        .client
        .exec_instance(ExecRequest {
            instance_id: "sleeper".into(),
            argv: vec!["/bin/busybox".into(), "cat".into()],
            stdin: secret.clone(),
            user: String::new(),
            timeout_ms: 10_000,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, secret);

    let out = agent
        .client
        .exec_instance(ExecRequest {
            instance_id: "sleeper".into(),
            argv: vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "echo oops >&2; exit 3".into(),
            ],
            stdin: Vec::new(),
            user: String::new(),
            timeout_ms: 10_000,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stderr, b"oops\n");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_while_starting_fails_the_apply_with_the_reason() {
    let docker = docker().await;
    let mut agent = TestAgent::start("crash").await;
    let mut spec = web_spec("bad", "x");
    spec.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "exit 7".into(),
    ];
    let err = agent
        .apply(spec)
        .await
        .expect_err("apply of a crashing container fails");
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(
        err.message().contains("exited with code 7"),
        "message: {}",
        err.message()
    );
    let c = inspect(&docker, &agent.container_name("bad"))
        .await
        .expect("container kept for inspection");
    assert_eq!(c.state.unwrap().exit_code, Some(7));

    let mut spec = web_spec("sick", "x");
    spec.health_check.as_mut().unwrap().test = vec![
        "CMD".into(),
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "echo db not ready; exit 1".into(),
    ];
    spec.health_check.as_mut().unwrap().retries = 1;
    let err = agent
        .apply(spec)
        .await
        .expect_err("apply of an unhealthy container fails");
    assert!(
        err.message().contains("db not ready"),
        "message: {}",
        err.message()
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_leaves_containers_running_and_a_new_agent_adopts_them() {
    let docker = docker().await;
    let mut agent = TestAgent::start("restart").await;
    let (_, first) = agent.apply(web_spec("web1", "x")).await.expect("apply");
    let name = agent.container_name("web1");
    agent.stop_serving().await;
    let c = inspect(&docker, &name)
        .await
        .expect("container survives the agent");
    assert_eq!(c.state.unwrap().running, Some(true));

    agent.start_serving().await;
    let mut watch = agent
        .client
        .watch_instances(WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let snapshot = snapshot_of(next_event(&mut watch, Duration::from_secs(5)).await);
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].container_id, first.container_id);
    assert_eq!(snapshot[0].state(), InstanceStatus::Running);
    let (_, second) = agent
        .apply(web_spec("web1", "x"))
        .await
        .expect("apply on the new agent");
    assert_eq!(second.action(), ApplyAction::Unchanged);
    assert_eq!(second.container_id, first.container_id);
    assert_eq!(second.ports, first.ports);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_aliases_and_the_container_user_are_applied() {
    let docker = docker().await;
    let mut agent = TestAgent::start("netuser").await;
    let network = common::test_network(&agent.host_id);
    let mut spec = web_spec("web1", "served as 1000");
    spec.network = Some(agent_proto::v1::NetworkAttachment {
        name: network.clone(),
        aliases: vec!["web".into()],
    });
    spec.user = "1000:1000".into();
    agent.apply(spec).await.expect("apply");

    let net = docker
        .inspect_network(
            &network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .expect("network created");
    assert_eq!(
        net.labels
            .unwrap_or_default()
            .get("berth.managed")
            .map(String::as_str),
        Some("true")
    );
    let c = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(
        c.config.as_ref().unwrap().user.as_deref(),
        Some("1000:1000")
    );
    let endpoint = c
        .network_settings
        .as_ref()
        .unwrap()
        .networks
        .as_ref()
        .unwrap()
        .get(&network)
        .cloned();
    let aliases = endpoint
        .expect("attached to the network")
        .aliases
        .unwrap_or_default();
    assert!(aliases.contains(&"web".to_string()), "aliases: {aliases:?}");

    // The 0600 config file is readable by the container's user because the agent gave it the file.
    let port = bound_host_port(&c, 8080);
    assert_eq!(http_get(port, "/index.html").await, "served as 1000");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(agent.instance_dir("web1").join("config/index.html")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    let data = std::fs::metadata(agent.instance_dir("web1").join("data")).unwrap();
    assert_eq!((data.uid(), data.mode() & 0o777), (1000, 0o700));
    agent.shutdown().await;
}

/// The engine checks health once per interval; the agent does not wait for that. A check that
/// passes at once, on a container whose engine interval is far longer than this test, makes the
/// apply return and the instance count as healthy while the engine still says "starting".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_container_is_ready_when_the_agents_own_run_of_its_check_passes() {
    let docker = docker().await;
    let mut agent = TestAgent::start("probe").await;
    let mut spec = web_spec("web1", "x");
    if let Some(h) = spec.health_check.as_mut() {
        h.interval_ms = 600_000;
        h.start_period_ms = 600_000;
    }
    let (logs, result) = agent.apply(spec).await.expect("apply");
    assert!(
        logs.iter().any(|l| l.message == "instance ready"),
        "logs: {logs:?}"
    );
    let c = inspect(&docker, &agent.container_name("web1"))
        .await
        .unwrap();
    assert_eq!(c.id.as_deref(), Some(result.container_id.as_str()));
    assert_eq!(
        c.state.unwrap().health.and_then(|h| h.status),
        Some(bollard::models::HealthStatusEnum::STARTING),
        "the engine has not run its first check yet"
    );

    let mut watch = agent
        .client
        .clone()
        .watch_instances(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let reported = snapshot_of(next_event(&mut watch, Duration::from_secs(30)).await);
    let web = reported
        .iter()
        .find(|s| s.instance_id == "web1")
        .expect("web1 reported");
    assert_eq!(web.state(), InstanceStatus::Running);
    assert_eq!(web.health(), Health::Healthy);

    // (A check that fails is never passed by the probe: the "sick" case of
    // a_container_that_exits_while_starting_fails_the_apply_with_the_reason still fails its apply.)
    agent.shutdown().await;
}

/// A database's network goes with its last container on this engine, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_is_removed_with_the_last_container_on_it() {
    let docker = docker().await;
    let mut agent = TestAgent::start("netgone").await;
    let network = common::test_network(&agent.host_id);
    for id in ["web1", "web2"] {
        let mut spec = web_spec(id, "x");
        spec.network = Some(agent_proto::v1::NetworkAttachment {
            name: network.clone(),
            aliases: vec![id.into()],
        });
        agent.apply(spec).await.expect("apply");
    }
    let network_exists = || async {
        docker
            .inspect_network(
                &network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .is_ok()
    };

    agent.remove("web1", true).await.expect("remove web1");
    assert!(network_exists().await, "web2 still uses the network");

    agent.remove("web2", true).await.expect("remove web2");
    assert!(
        !network_exists().await,
        "the network outlived its last container"
    );
    agent.shutdown().await;
}
