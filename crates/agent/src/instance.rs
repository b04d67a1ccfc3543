//! One instance on disk and in the engine: naming, labels, the spec hash, the instance directory
//! (config files, data, chosen host ports) and the translation of a spec into a container config.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use agent_proto::v1::{InstanceKind, InstanceSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runtime::{BindMount, ContainerConfig, HealthCheckConfig, PortPublish};

pub const LABEL_HOST_ID: &str = "berth.host-id";
pub const LABEL_INSTANCE_ID: &str = "berth.instance-id";
pub const LABEL_DATABASE_ID: &str = "berth.database-id";
pub const LABEL_SERVICE_ID: &str = "berth.service-id";
pub const LABEL_KIND: &str = "berth.kind";
pub const LABEL_SPEC_HASH: &str = "berth.spec-hash";
pub const LABEL_MANAGED: &str = "berth.managed";
/// Labels only the agent sets.
pub fn is_reserved_label(key: &str) -> bool {
    [
        LABEL_HOST_ID,
        LABEL_INSTANCE_ID,
        LABEL_DATABASE_ID,
        LABEL_SERVICE_ID,
        LABEL_KIND,
        LABEL_SPEC_HASH,
        LABEL_MANAGED,
    ]
    .contains(&key)
        || key.starts_with(LABEL_PORT_PREFIX)
}

/// `berth.port.<name>` = container port: lets the state watcher name published ports from the container alone.
pub const LABEL_PORT_PREFIX: &str = "berth.port.";

const SPEC_FILE: &str = "spec.json";
const PORTS_FILE: &str = "ports.json";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Instance ids become container names and directory names, so they are restricted to a safe alphabet.
pub fn validate_instance_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "instance_id",
            "must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
        ))
    }
}

pub fn validate(spec: &InstanceSpec) -> Result<(), SpecError> {
    validate_instance_id(&spec.instance_id)?;
    if spec.image.is_empty() {
        return Err(invalid("image", "must not be empty"));
    }
    if !spec.files.is_empty() && !spec.config_mount_path.starts_with('/') {
        return Err(invalid(
            "config_mount_path",
            "must be an absolute path when files are given",
        ));
    }
    if let Some(p) = &spec.data_mount_path
        && !p.starts_with('/')
    {
        return Err(invalid("data_mount_path", "must be an absolute path"));
    }
    for (i, f) in spec.files.iter().enumerate() {
        let path = Path::new(&f.path);
        let safe =
            !f.path.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(invalid(
                format!("files[{i}].path"),
                "must be a relative path without '..'",
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                format!("ports[{i}].name"),
                "must be 1+ characters of [A-Za-z0-9_-]",
            ));
        }
        if !names.insert(p.name.as_str()) {
            return Err(invalid(format!("ports[{i}].name"), "duplicate port name"));
        }
        if p.container_port == 0 || p.container_port > u32::from(u16::MAX) {
            return Err(invalid(
                format!("ports[{i}].container_port"),
                "must be 1-65535",
            ));
        }
        if p.host_port.is_some_and(|h| h > u32::from(u16::MAX)) {
            return Err(invalid(format!("ports[{i}].host_port"), "must be 0-65535"));
        }
    }
    if !spec.user.is_empty() && parse_user(&spec.user).is_none() {
        return Err(invalid("user", "must be numeric uid:gid"));
    }
    if spec.nano_cpus < 0 || spec.memory_bytes < 0 {
        return Err(invalid("nano_cpus/memory_bytes", "must not be negative"));
    }
    if let Some(h) = &spec.health_check
        && h.test.is_empty()
    {
        return Err(invalid("health_check.test", "must not be empty"));
    }
    Ok(())
}

fn parse_user(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

pub fn container_name(host_id: &str, instance_id: &str) -> String {
    format!("berth-{host_id}-{instance_id}")
}

/// The parts of a spec that cannot change without a new container, in a canonical form. cpus and memory are
/// deliberately absent: they change in place.
#[derive(Serialize)]
struct HashInput<'a> {
    instance_id: &'a str,
    database_id: &'a str,
    service_id: &'a str,
    kind: i32,
    image: &'a str,
    command: &'a [String],
    env: BTreeMap<&'a str, &'a str>,
    files: BTreeMap<&'a str, String>,
    config_mount_path: &'a str,
    data_mount_path: Option<&'a str>,
    labels: BTreeMap<&'a str, &'a str>,
    network: Option<(&'a str, &'a [String])>,
    ports: Vec<(&'a str, u32, Option<u32>)>,
    health_check: Option<(&'a [String], u64, u64, u32, u64)>,
    user: &'a str,
    stop_timeout_seconds: u32,
}

/// A stable hash of everything that needs a new container when it changes.
pub fn spec_hash(spec: &InstanceSpec) -> String {
    let input = HashInput {
        instance_id: &spec.instance_id,
        database_id: &spec.database_id,
        service_id: &spec.service_id,
        kind: spec.kind,
        image: &spec.image,
        command: &spec.command,
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        files: spec
            .files
            .iter()
            .map(|f| (f.path.as_str(), hex::encode(Sha256::digest(&f.content))))
            .collect(),
        config_mount_path: &spec.config_mount_path,
        data_mount_path: spec.data_mount_path.as_deref(),
        labels: spec
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        network: spec
            .network
            .as_ref()
            .filter(|n| !n.name.is_empty())
            .map(|n| (n.name.as_str(), n.aliases.as_slice())),
        ports: {
            let mut p: Vec<_> = spec
                .ports
                .iter()
                .map(|p| (p.name.as_str(), p.container_port, p.host_port))
                .collect();
            p.sort_unstable();
            p
        },
        health_check: spec.health_check.as_ref().map(|h| {
            (
                h.test.as_slice(),
                h.interval_ms,
                h.timeout_ms,
                h.retries,
                h.start_period_ms,
            )
        }),
        user: &spec.user,
        stop_timeout_seconds: spec.stop_timeout_seconds,
    };
    // serde_json over BTreeMaps and tuples is deterministic, which is all a content hash needs.
    let bytes = serde_json::to_vec(&input).expect("hash input serializes");
    hex::encode(&Sha256::digest(&bytes)[..16])
}

pub fn kind_label(kind: i32) -> &'static str {
    match InstanceKind::try_from(kind) {
        Ok(InstanceKind::Postgres) => "postgres",
        Ok(InstanceKind::Service) => "service",
        _ => "unspecified",
    }
}

/// Host ports chosen for `host_port: 0`, by port name, kept for the instance's whole life.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenPorts(pub BTreeMap<String, u16>);

/// The last applied spec, enough to rebuild state after an agent restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSpec {
    pub instance_id: String,
    pub spec_hash: String,
    pub labels: BTreeMap<String, String>,
}

/// `<data-dir>/instances/<instance_id>/{config/, data/, runtime/, spec.json, ports.json}`.
#[derive(Debug, Clone)]
pub struct InstanceDir {
    root: PathBuf,
}

impl InstanceDir {
    pub fn new(data_dir: &Path, instance_id: &str) -> Self {
        Self {
            root: instances_root(data_dir).join(instance_id),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// What the agent tells the container at run time ([`crate::ports_file`]), mounted
    /// read-only at [`crate::ports_file::MOUNT_PATH`].
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("runtime")
    }

    pub fn exists(&self) -> bool {
        self.root.join(SPEC_FILE).exists()
    }

    pub fn ensure(&self) -> std::io::Result<()> {
        crate::blocking::assert_allowed("creating an instance directory");
        create_private_dir(&self.root)
    }

    /// Writes the config files into a fresh directory and swaps it in, so files dropped from the spec disappear
    /// and a half-written set is never mounted.
    pub fn write_config(&self, spec: &InstanceSpec) -> std::io::Result<()> {
        crate::blocking::assert_allowed("writing config files");
        let staging = self.root.join("config.new");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        create_private_dir(&staging)?;
        for f in &spec.files {
            let path = staging.join(&f.path);
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&f.content)?;
            file.sync_all()?;
        }
        let target = self.config_dir();
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&staging, &target)?;
        if let Some((uid, gid)) = parse_user(&spec.user) {
            chown_recursive(&target, uid, gid)?;
        }
        Ok(())
    }

    pub fn ensure_data_dir(&self, user: &str) -> std::io::Result<PathBuf> {
        crate::blocking::assert_allowed("preparing a data directory");
        let dir = self.data_dir();
        create_private_dir(&dir)?;
        if let Some((uid, gid)) = parse_user(user) {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    pub fn read_ports(&self) -> std::io::Result<ChosenPorts> {
        match std::fs::read(self.root.join(PORTS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ChosenPorts::default()),
            Err(e) => Err(e),
        }
    }

    pub fn write_ports(&self, ports: &ChosenPorts) -> std::io::Result<()> {
        crate::blocking::assert_allowed("writing chosen ports");
        write_atomic(
            &self.root.join(PORTS_FILE),
            &serde_json::to_vec_pretty(ports).map_err(std::io::Error::other)?,
        )
    }

    pub fn write_spec(&self, stored: &StoredSpec) -> std::io::Result<()> {
        crate::blocking::assert_allowed("writing the stored spec");
        write_atomic(
            &self.root.join(SPEC_FILE),
            &serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?,
        )
    }

    pub fn read_spec(&self) -> Option<StoredSpec> {
        let bytes = std::fs::read(self.root.join(SPEC_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes what RemoveInstance removes: everything, or everything but the data and the chosen ports.
    pub fn remove(&self, delete_data: bool) -> std::io::Result<bool> {
        crate::blocking::assert_allowed("removing an instance directory");
        if !self.root.exists() {
            return Ok(false);
        }
        if delete_data {
            std::fs::remove_dir_all(&self.root)?;
            return Ok(true);
        }
        for dir in [
            self.config_dir(),
            self.root.join("config.new"),
            self.runtime_dir(),
        ] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
        }
        match std::fs::remove_file(self.root.join(SPEC_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(false)
    }
}

pub fn instances_root(data_dir: &Path) -> PathBuf {
    data_dir.join("instances")
}

/// Instance ids with a stored spec under the data dir: the instances this agent manages even without a container.
pub fn stored_instances(data_dir: &Path) -> Vec<StoredSpec> {
    let Ok(entries) = std::fs::read_dir(instances_root(data_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<StoredSpec> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            InstanceDir::new(data_dir, &id).read_spec()
        })
        .collect();
    out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    out
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    // `recursive` leaves an existing directory's mode alone; enforce it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Writes a 0600 file through a temporary name, so a reader never sees half of it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The agent's own labels plus the request's; the agent's win so ownership can never be spoofed by a spec.
pub fn container_labels(
    host_id: &str,
    spec: &InstanceSpec,
    hash: &str,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The agent's own labels cannot be forged by a request; other labels, the control
    // plane's `berth.desired-hash` among them, pass through.
    labels.retain(|k, _| !is_reserved_label(k));
    labels.insert(LABEL_HOST_ID.into(), host_id.into());
    labels.insert(LABEL_INSTANCE_ID.into(), spec.instance_id.clone());
    labels.insert(LABEL_DATABASE_ID.into(), spec.database_id.clone());
    labels.insert(LABEL_SERVICE_ID.into(), spec.service_id.clone());
    labels.insert(LABEL_KIND.into(), kind_label(spec.kind).into());
    labels.insert(LABEL_SPEC_HASH.into(), hash.into());
    for p in &spec.ports {
        labels.insert(
            format!("{LABEL_PORT_PREFIX}{}", p.name),
            p.container_port.to_string(),
        );
    }
    labels
}

/// Port names by container port, from a container's labels.
pub fn port_names(labels: &BTreeMap<String, String>) -> BTreeMap<u16, String> {
    labels
        .iter()
        .filter_map(|(k, v)| {
            Some((
                v.parse().ok()?,
                k.strip_prefix(LABEL_PORT_PREFIX)?.to_string(),
            ))
        })
        .collect()
}

pub fn container_config(
    host_id: &str,
    spec: &InstanceSpec,
    hash: &str,
    dir: &InstanceDir,
    chosen: &ChosenPorts,
) -> ContainerConfig {
    let mut mounts = Vec::new();
    if !spec.config_mount_path.is_empty() {
        mounts.push(BindMount {
            source: dir.config_dir().to_string_lossy().into_owned(),
            target: spec.config_mount_path.clone(),
            read_only: true,
        });
    }
    if let Some(target) = &spec.data_mount_path {
        mounts.push(BindMount {
            source: dir.data_dir().to_string_lossy().into_owned(),
            target: target.clone(),
            read_only: false,
        });
    }
    if crate::ports_file::publishes_ports(spec) {
        mounts.push(BindMount {
            source: dir.runtime_dir().to_string_lossy().into_owned(),
            target: crate::ports_file::MOUNT_PATH.into(),
            read_only: true,
        });
    }
    let ports = spec
        .ports
        .iter()
        .filter_map(|p| {
            let container_port = u16::try_from(p.container_port).ok()?;
            let host_port = match p.host_port? {
                0 => chosen.0.get(&p.name).copied(),
                n => Some(u16::try_from(n).ok()?),
            };
            Some(PortPublish {
                container_port,
                host_port,
            })
        })
        .collect();
    ContainerConfig {
        name: container_name(host_id, &spec.instance_id),
        image: spec.image.clone(),
        command: spec.command.clone(),
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        labels: container_labels(host_id, spec, hash),
        mounts,
        ports,
        network: spec
            .network
            .as_ref()
            .filter(|n| !n.name.is_empty())
            .map(|n| (n.name.clone(), n.aliases.clone())),
        nano_cpus: spec.nano_cpus,
        memory_bytes: spec.memory_bytes,
        health_check: spec.health_check.as_ref().map(|h| HealthCheckConfig {
            test: h.test.clone(),
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            retries: h.retries,
            start_period: Duration::from_millis(h.start_period_ms),
        }),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        stop_timeout_seconds: (spec.stop_timeout_seconds > 0).then_some(spec.stop_timeout_seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::v1::{ConfigFile, PortSpec};

    fn spec() -> InstanceSpec {
        InstanceSpec {
            instance_id: "db1-n1".into(),
            database_id: "db1".into(),
            kind: InstanceKind::Postgres as i32,
            image: "postgres:17".into(),
            env: [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string()),
            ]
            .into(),
            files: vec![ConfigFile {
                path: "pg.conf".into(),
                content: b"x=1".to_vec(),
            }],
            config_mount_path: "/etc/berth".into(),
            ports: vec![PortSpec {
                name: "pg".into(),
                container_port: 5432,
                host_port: Some(0),
            }],
            nano_cpus: 1_000_000_000,
            memory_bytes: 1 << 30,
            ..Default::default()
        }
    }

    #[test]
    fn hash_ignores_resources_but_not_config() {
        let base = spec_hash(&spec());
        let mut resized = spec();
        resized.nano_cpus = 2;
        resized.memory_bytes = 5;
        assert_eq!(spec_hash(&resized), base);
        let mut changed = spec();
        changed.files[0].content = b"x=2".to_vec();
        assert_ne!(spec_hash(&changed), base);
        let mut unpublished = spec();
        unpublished.ports[0].host_port = None;
        assert_ne!(spec_hash(&unpublished), base);
    }

    #[test]
    fn hash_is_independent_of_map_order() {
        let a = spec();
        let mut b = spec();
        b.env = [
            ("B".to_string(), "2".to_string()),
            ("A".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn rejects_escaping_paths_and_bad_ids() {
        let mut s = spec();
        s.files[0].path = "../etc/passwd".into();
        assert!(validate(&s).is_err());
        s.files[0].path = "/abs".into();
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.instance_id = "a/b".into();
        assert!(validate(&s).is_err());
        assert!(validate(&spec()).is_ok());
    }

    #[test]
    fn request_labels_cannot_override_ownership() {
        let mut s = spec();
        s.labels.insert(LABEL_HOST_ID.into(), "someone-else".into());
        s.labels.insert("team".into(), "a".into());
        s.labels.insert("berth.desired-hash".into(), "d".into());
        s.labels.insert(format!("{LABEL_PORT_PREFIX}x"), "1".into());
        let labels = container_labels("h1", &s, "hash");
        assert_eq!(labels[LABEL_HOST_ID], "h1");
        assert_eq!(labels["team"], "a");
        assert_eq!(
            labels["berth.desired-hash"], "d",
            "the control plane's labels pass through"
        );
        assert!(
            !labels.contains_key(&format!("{LABEL_PORT_PREFIX}x")),
            "port labels are the agent's"
        );
        assert_eq!(
            port_names(&labels),
            BTreeMap::from([(5432, "pg".to_string())])
        );
    }

    #[test]
    fn the_runtime_dir_is_mounted_read_only_where_ports_are_published() {
        let dir = InstanceDir::new(Path::new("/agent"), "db1-n1");
        let runtime = |s: &InstanceSpec| {
            container_config("h1", s, "hash", &dir, &ChosenPorts::default())
                .mounts
                .into_iter()
                .find(|m| m.target == crate::ports_file::MOUNT_PATH)
        };
        let mount = runtime(&spec()).expect("runtime mount");
        assert_eq!(mount.source, "/agent/instances/db1-n1/runtime");
        assert!(mount.read_only);
        let mut unpublished = spec();
        unpublished.ports[0].host_port = None;
        assert!(runtime(&unpublished).is_none());
    }

    #[test]
    fn config_files_are_private_and_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(tmp.path(), "i1");
        dir.ensure().unwrap();
        let mut s = spec();
        s.files.push(ConfigFile {
            path: "sub/extra.conf".into(),
            content: b"y".to_vec(),
        });
        dir.write_config(&s).unwrap();
        let meta = std::fs::metadata(dir.config_dir().join("pg.conf")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let meta = std::fs::metadata(dir.config_dir().join("sub")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        dir.write_config(&spec()).unwrap();
        assert!(!dir.config_dir().join("sub/extra.conf").exists());
        assert_eq!(
            std::fs::read(dir.config_dir().join("pg.conf")).unwrap(),
            b"x=1"
        );
    }

    #[test]
    fn chosen_ports_survive_a_reload_and_keep_data_on_soft_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(tmp.path(), "i1");
        dir.ensure().unwrap();
        dir.ensure_data_dir("").unwrap();
        dir.write_spec(&StoredSpec {
            instance_id: "i1".into(),
            spec_hash: "h".into(),
            labels: BTreeMap::new(),
        })
        .unwrap();
        let ports = ChosenPorts(BTreeMap::from([("pg".to_string(), 40001)]));
        dir.write_ports(&ports).unwrap();
        assert_eq!(stored_instances(tmp.path()).len(), 1);
        assert!(!dir.remove(false).unwrap());
        assert_eq!(dir.read_ports().unwrap(), ports);
        assert!(dir.data_dir().exists());
        assert!(stored_instances(tmp.path()).is_empty());
        assert!(dir.remove(true).unwrap());
        assert!(!dir.root().exists());
    }
}
