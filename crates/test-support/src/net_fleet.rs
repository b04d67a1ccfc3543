//! The engine-per-host fleets `deploy/fleet/hosts` makes (hosts as network namespaces, a
//! dockerd each): running the script and reading what `up` and `env` print. Shared by the
//! e2e harness and the benchmarks, which decide themselves when a fleet goes down.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One host, as `deploy/fleet/hosts up` prints it: `HOST ADDRESS DOCKER_HOST NETNS`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A fleet that is up: the machine's address on its bridge, and host-1..N in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFleet {
    /// Where the hosts reach processes on the machine (the control plane's registry).
    pub gateway: String,
    /// `hosts[N - 1]` is host-N.
    pub hosts: Vec<NetHost>,
}

/// Runs `deploy/fleet/hosts ARGS`; its stdout. Its log (stderr) goes to ours.
///
/// Errors: the script could not run or exited non-zero, as a sentence.
pub fn fleet_hosts(args: &[&str]) -> Result<String, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/fleet/hosts");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "deploy/fleet/hosts {} failed ({})",
            args.join(" "),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetFleet {
    /// Reads what `up` or `env` printed for a fleet of at least `count` hosts.
    ///
    /// Errors: a line of another form, no gateway, or hosts not host-1..N in order.
    pub fn parse(text: &str, count: usize) -> Result<NetFleet, String> {
        let mut gateway = None;
        let mut hosts = Vec::new();
        for line in text.lines() {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["gateway", g] => gateway = Some(g.to_string()),
                [name, address, docker_host, netns] => hosts.push(NetHost {
                    name: name.to_string(),
                    address: address.to_string(),
                    docker_host: docker_host.to_string(),
                    netns: netns.to_string(),
                }),
                _ => return Err(format!("unexpected line from deploy/fleet/hosts: {line:?}")),
            }
        }
        let in_order = (1..=hosts.len()).map(|n| format!("host-{n}"));
        match gateway {
            Some(gateway)
                if hosts.len() >= count && hosts.iter().map(|h| h.name.clone()).eq(in_order) =>
            {
                Ok(NetFleet { gateway, hosts })
            }
            _ => Err(format!(
                "deploy/fleet/hosts printed no gateway or not host-1..{count} in order:\n{text}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateway_and_the_hosts_in_order() {
        let text = "gateway 10.213.1.1\nhost-1 10.213.1.11 unix:///s1 /run/netns/a\nhost-2 10.213.1.12 unix:///s2 /run/netns/b\n";
        let f = NetFleet::parse(text, 2).unwrap();
        assert_eq!(f.gateway, "10.213.1.1");
        assert_eq!(f.hosts[1].address, "10.213.1.12");
        assert!(NetFleet::parse(text, 3).is_err(), "too few hosts");
        assert!(
            NetFleet::parse("host-2 a b c\n", 1).is_err(),
            "no gateway, out of order"
        );
        assert!(NetFleet::parse("gateway x\nnonsense\n", 0).is_err());
    }
}
