//! The `berth-agent` binary: flags, and SIGTERM leaving its containers running.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use agent_proto::v1::agent_client::AgentClient;
use agent_proto::v1::{ApplyInstanceRequest, apply_event};

const BIN: &str = env!("CARGO_BIN_EXE_berth-agent");

#[test]
fn help_lists_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--host-id",
        "--listen",
        "--advertise",
        "--control-plane",
        "--data-dir",
        "--docker-host",
        "--addresses",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("BERTH_AGENT_HOST_ID"));
    let missing = Command::new(BIN)
        .env_remove("BERTH_AGENT_HOST_ID")
        .output()
        .expect("run without flags");
    assert!(!missing.status.success(), "--host-id is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_but_not_its_containers() {
    let docker = common::docker().await;
    common::ensure_test_image().await;
    let host_id = common::unique_host_id("bin");
    let _guard = common::ContainerGuard::new(&host_id);
    let tmp = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--host-id",
            &host_id,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(tmp.path())
        .env("BERTH_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");

    let mut client = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match AgentClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("agent listening");
    let mut stream = client
        .apply_instance(ApplyInstanceRequest {
            spec: Some(common::sleeper_spec("s1")),
        })
        .await
        .expect("apply")
        .into_inner();
    let container_id = loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap()
            .unwrap();
        match msg.and_then(|m| m.event) {
            Some(apply_event::Event::Result(r)) => break r.container_id,
            Some(_) => continue,
            None => panic!("apply ended without result"),
        }
    };
    drop(client);

    let pid = child.id().expect("pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    let first = stderr.lines().next().expect("log output");
    let parsed: serde_json::Value = serde_json::from_str(first).expect("JSON log lines");
    assert!(parsed.get("level").is_some(), "{first}");
    assert!(stderr.contains(&host_id), "logs carry the host id");

    let c = common::inspect(&docker, &container_id)
        .await
        .expect("container still there");
    assert_eq!(c.state.unwrap().running, Some(true));
}
