//! The engine-per-host fleet `deploy/fleet/hosts` makes: hosts as network namespaces on a bridge of their own,
//! each with its own address and dockerd, the images loaded. This wraps the script's `up` (parsing what it
//! prints) and takes the fleet `down` when dropped; [`crate::procs`] runs the hosts' agents inside them.

use anyhow::{Result, anyhow};
pub use test_support::net_fleet::NetHost;
use test_support::net_fleet::{NetFleet, fleet_hosts};

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
        let NetFleet { gateway, hosts } = NetFleet::parse(&text, count).map_err(|e| anyhow!(e))?;
        fleet.gateway = gateway;
        fleet.hosts = hosts;
        Ok(fleet)
    }
}

impl EngineFleet {
    /// Takes host `index`'s (0-based) link down: the host, its agent and its containers lose the network,
    /// while its engine stays reachable from the machine over its unix socket.
    pub fn cut(&self, index: usize) -> Result<()> {
        fleet_script(&["cut", &self.name, &self.hosts[index].name]).map(drop)
    }

    /// Brings host `index`'s link back up (undoes [`EngineFleet::cut`]).
    pub fn heal(&self, index: usize) -> Result<()> {
        fleet_script(&["heal", &self.name, &self.hosts[index].name]).map(drop)
    }

    /// Removes every container and berth network from the hosts' engines; engines and images stay.
    pub fn clean(&self) -> Result<()> {
        fleet_script(&["clean", &self.name]).map(drop)
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

fn fleet_script(args: &[&str]) -> Result<String> {
    fleet_hosts(args).map_err(|e| anyhow!(e))
}
