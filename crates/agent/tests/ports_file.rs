//! A container learns the host ports the engine published for it from the file the agent
//! writes into its instance's runtime directory (ADR 015), against the real engine: the
//! container itself reads the file and serves what it read on the port it names.

mod common;

use agent_proto::v1::{ApplyAction, HealthCheck};
use common::{TestAgent, bound_host_port, docker, http_get, inspect, sleeper_spec, web_spec};

const MOUNT: &str = "/var/lib/berth/runtime";

/// A busybox httpd that starts only once the published-ports file exists, and serves a copy
/// of it: what the container read, seen from outside through the port it names.
fn reader_spec(instance_id: &str, version: &str) -> agent_proto::v1::InstanceSpec {
    let mut spec = web_spec(instance_id, version);
    let script = format!(
        "until [ -s {MOUNT}/published-ports ]; do /bin/busybox sleep 0.1; done; \
         /bin/busybox mkdir -p /www && /bin/busybox cp {MOUNT}/published-ports /www/ports && \
         exec /bin/busybox httpd -f -p 8080 -h /www"
    );
    spec.command = vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script];
    spec.health_check = Some(HealthCheck {
        test: vec![
            "CMD".into(),
            "/bin/busybox".into(),
            "wget".into(),
            "-q".into(),
            "-O".into(),
            "/dev/null".into(),
            "http://127.0.0.1:8080/ports".into(),
        ],
        interval_ms: 300,
        timeout_ms: 2_000,
        retries: 3,
        start_period_ms: 10_000,
    });
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reads_the_host_port_the_engine_chose_for_it() {
    let docker = docker().await;
    let mut agent = TestAgent::start("ports-file").await;
    let (logs, first) = agent
        .apply(reader_spec("reader", "v1"))
        .await
        .expect("apply");
    assert_eq!(first.action(), ApplyAction::Created);
    let c = inspect(&docker, &agent.container_name("reader"))
        .await
        .expect("container exists");
    let port = bound_host_port(&c, 8080);
    assert_eq!(
        http_get(port, "/ports").await,
        format!("http={port}\n"),
        "the container read its own chosen port"
    );
    assert!(
        logs.iter()
            .any(|l| l.message == "published ports written for the container"),
        "logs: {logs:?}"
    );
    let mount = c
        .mounts
        .unwrap()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some(MOUNT))
        .expect("runtime mount");
    assert_eq!(mount.rw, Some(false), "the container cannot write it");

    // A new container of the instance keeps the chosen port and finds the file before it
    // starts, with that port.
    let (_, second) = agent
        .apply(reader_spec("reader", "v2"))
        .await
        .expect("apply changed spec");
    assert_eq!(second.action(), ApplyAction::Recreated);
    assert_eq!(http_get(port, "/ports").await, format!("http={port}\n"));
    let file = agent.instance_dir("reader").join("runtime/published-ports");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("http={port}\n")
    );

    // Nothing is mounted into a container that publishes nothing.
    agent
        .apply(sleeper_spec("quiet"))
        .await
        .expect("apply sleeper");
    let quiet = inspect(&docker, &agent.container_name("quiet"))
        .await
        .unwrap();
    assert!(
        quiet
            .mounts
            .unwrap_or_default()
            .iter()
            .all(|m| m.destination.as_deref() != Some(MOUNT)),
        "no runtime mount without published ports"
    );

    // Removing the instance but keeping its data drops the runtime directory with the config.
    agent.remove("reader", false).await.expect("remove");
    assert!(!agent.instance_dir("reader").join("runtime").exists());
    agent.shutdown().await;
}
