//! The published-ports file: how a container learns the host ports the engine published for
//! it, which it cannot see from inside (ADR 015). Patroni, for one, must advertise the address
//! other hosts dial: the host's address and these ports.
//!
//! The file is `<instance dir>/runtime/published-ports`, one `NAME=PORT` line per published
//! port of the spec (`NAME` the spec's port name, `PORT` the host port, lines sorted by name),
//! world-readable (ports are no secret, and the container may run as any user). The
//! `runtime` directory is bind-mounted read-only at [`MOUNT_PATH`] into every container whose
//! spec publishes a port. Writes go through a temporary name and a rename in that directory,
//! so a reader in the container sees either no file or a whole one.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use agent_proto::v1::InstanceSpec;

use crate::instance::ChosenPorts;

/// Where a container sees its instance's `runtime` directory (read-only).
pub const MOUNT_PATH: &str = "/var/lib/berth/runtime";
/// The file's name in that directory.
pub const FILE_NAME: &str = "published-ports";

/// Host ports by port name.
pub type PublishedPorts = BTreeMap<String, u16>;

/// True when the spec publishes at least one port: only then is the directory mounted.
pub fn publishes_ports(spec: &InstanceSpec) -> bool {
    spec.ports.iter().any(|p| p.host_port.is_some())
}

/// Every published port's host port when all are known before the container starts: fixed
/// in the spec, or chosen by an earlier container of the instance (`chosen`). None when one
/// is left for the engine to pick.
pub fn known_before_start(spec: &InstanceSpec, chosen: &ChosenPorts) -> Option<PublishedPorts> {
    spec.ports
        .iter()
        .filter(|p| p.host_port.is_some())
        .map(|p| {
            let host = match p.host_port? {
                0 => chosen.0.get(&p.name).copied()?,
                n => u16::try_from(n).ok()?,
            };
            Some((p.name.clone(), host))
        })
        .collect()
}

/// The published ports as the engine reports them for a started container (`bound`:
/// container port, host port; 0 when not bound). Ports the engine has not bound are left out.
pub fn from_engine(spec: &InstanceSpec, bound: &[(u16, u16)]) -> PublishedPorts {
    spec.ports
        .iter()
        .filter(|p| p.host_port.is_some())
        .filter_map(|p| {
            let (_, host) = bound
                .iter()
                .find(|(c, h)| u32::from(*c) == p.container_port && *h != 0)?;
            Some((p.name.clone(), *host))
        })
        .collect()
}

/// The file's content: `NAME=PORT\n` per port, sorted by name.
pub fn render(ports: &PublishedPorts) -> String {
    ports.iter().map(|(n, p)| format!("{n}={p}\n")).collect()
}

/// Makes `dir` (the instance's runtime directory, mode 0755) and writes the file into it
/// atomically (mode 0644).
///
/// Errors: creating the directory, writing, syncing or renaming the file.
pub fn write(dir: &Path, ports: &PublishedPorts) -> std::io::Result<()> {
    crate::blocking::assert_allowed("writing the published-ports file");
    ensure_dir(dir)?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(render(ports).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE_NAME))
}

/// Makes `dir` and removes a file an earlier container left there, so a new container never
/// reads ports that are not its own.
///
/// Errors: creating the directory or removing the file.
pub fn clear(dir: &Path) -> std::io::Result<()> {
    crate::blocking::assert_allowed("clearing the published-ports file");
    ensure_dir(dir)?;
    match std::fs::remove_file(dir.join(FILE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The file's ports, or None when there is no file (for the agent's own checks and tests).
///
/// Errors: reading the file; a line that is not `NAME=PORT` is `InvalidData`.
pub fn read(dir: &Path) -> std::io::Result<Option<PublishedPorts>> {
    let text = match std::fs::read_to_string(dir.join(FILE_NAME)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    text.lines()
        .map(|line| {
            let (name, port) = line.split_once('=')?;
            Some((name.to_string(), port.parse().ok()?))
        })
        .collect::<Option<PublishedPorts>>()
        .map(Some)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not NAME=PORT"))
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::v1::PortSpec;

    fn spec(ports: &[(&str, u32, Option<u32>)]) -> InstanceSpec {
        InstanceSpec {
            ports: ports
                .iter()
                .map(|(name, container_port, host_port)| PortSpec {
                    name: name.to_string(),
                    container_port: *container_port,
                    host_port: *host_port,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ports_are_known_before_start_only_when_none_is_left_to_the_engine() {
        let s = spec(&[
            ("postgres", 5432, Some(0)),
            ("patroni", 8008, Some(18008)),
            ("internal", 9000, None),
        ]);
        assert!(publishes_ports(&s));
        assert_eq!(known_before_start(&s, &ChosenPorts::default()), None);
        let chosen = ChosenPorts(BTreeMap::from([("postgres".to_string(), 40001)]));
        assert_eq!(
            known_before_start(&s, &chosen),
            Some(BTreeMap::from([
                ("patroni".to_string(), 18008),
                ("postgres".to_string(), 40001)
            ]))
        );
        assert!(!publishes_ports(&spec(&[("internal", 9000, None)])));
    }

    #[test]
    fn the_engines_answer_names_the_bound_ports() {
        let s = spec(&[("postgres", 5432, Some(0)), ("patroni", 8008, Some(0))]);
        let ports = from_engine(&s, &[(5432, 40001), (8008, 0)]);
        assert_eq!(ports, BTreeMap::from([("postgres".to_string(), 40001)]));
    }

    #[test]
    fn the_file_is_whole_readable_and_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runtime");
        let ports = BTreeMap::from([
            ("postgres".to_string(), 40001),
            ("patroni".to_string(), 40002),
        ]);
        write(&dir, &ports).unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text, "patroni=40002\npostgres=40001\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o644);
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(read(&dir).unwrap(), Some(ports));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        clear(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        clear(&dir).unwrap();
    }
}
