//! The engine-per-host fleet `deploy/fleet/hosts` makes: hosts as network namespaces on a bridge of their own,
//! each with its own address and dockerd, the images loaded. This wraps the script's `up` (parsing what it
//! prints) and takes the fleet `down` when dropped; [`crate::procs`] runs the hosts' agents inside them.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::procs::workspace_root;

/// One host of an engine-per-host fleet, as `deploy/fleet/hosts up` prints it.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// The script's name for it (`host-N`), not the API's host id.
    pub name: String,
    /// Where the machine and the other hosts reach it, and where its engine publishes ports.
    pub address: String,
    /// Its engine (`unix:///...docker.sock`).
    pub docker_host: String,
    /// Its network namespace, for `nsenter --net=`.
    pub netns: String,
}

/// An engine-per-host fleet made by `deploy/fleet/hosts` (network namespaces on a bridge of their own, a
/// dockerd each, the images loaded). `down` runs when it drops, so a failed or interrupted run leaves no
/// namespace, engine or firewall rule behind.
pub struct EngineFleet {
    name: String,
    /// The machine's address on the fleet's bridge: where the hosts reach the control plane.
    pub gateway: String,
    pub hosts: Vec<NetHost>,
}

impl EngineFleet {
    /// Brings up fleet `name` with `count` hosts on subnet `index` (10.213.INDEX.0/24) and empties its
    /// engines: `up` keeps what a killed earlier run left running, containers included.
    pub fn up(name: &str, count: usize, index: u8) -> Result<EngineFleet> {
        // The guard exists before `up` runs, so a half-made fleet is taken down too.
        let mut fleet = EngineFleet {
            name: name.to_string(),
            gateway: String::new(),
            hosts: Vec::new(),
        };
        let text = fleet_script(&["up", name, &count.to_string(), &index.to_string()])?;
        fleet_script(&["clean", name])?;
        for line in text.lines() {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["gateway", g] => fleet.gateway = g.to_string(),
                [name, address, docker_host, netns] => fleet.hosts.push(NetHost {
                    name: name.to_string(),
                    address: address.to_string(),
                    docker_host: docker_host.to_string(),
                    netns: netns.to_string(),
                }),
                _ => bail!("unexpected line from deploy/fleet/hosts up: {line:?}"),
            }
        }
        // Callers pick host N as `hosts[N - 1]`.
        let in_order = (1..=count).map(|n| format!("host-{n}"));
        if fleet.gateway.is_empty() || !fleet.hosts.iter().map(|h| h.name.clone()).eq(in_order) {
            bail!(
                "deploy/fleet/hosts up printed no gateway or not host-1..{count} in order:\n{text}"
            );
        }
        Ok(fleet)
    }
}

impl Drop for EngineFleet {
    fn drop(&mut self) {
        if let Err(e) = fleet_script(&["down", &self.name]) {
            eprintln!(
                "{e:#}; remove the fleet with: deploy/fleet/hosts down {}",
                self.name
            );
        }
    }
}

/// Runs `deploy/fleet/hosts`; its stdout. Its log lines (stderr) go to the bench's stderr.
fn fleet_script(args: &[&str]) -> Result<String> {
    let script = workspace_root().join("deploy/fleet/hosts");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/fleet/hosts {} failed ({})",
            args.join(" "),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
