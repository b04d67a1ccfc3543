use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of one control-plane replica, from flags or `BERTH_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-control-plane",
    version,
    about = "Declarative control plane for Postgres databases and their services"
)]
pub struct Settings {
    /// Address of the HTTP API.
    #[arg(long, env = "BERTH_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Address of the gRPC registry agents register with.
    #[arg(long, env = "BERTH_GRPC_LISTEN", default_value = "127.0.0.1:3001")]
    pub grpc_listen: SocketAddr,
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "BERTH_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Every key this deployment writes starts with this prefix.
    #[arg(long, env = "BERTH_ETCD_PREFIX", default_value = "/berth")]
    pub etcd_prefix: String,
    /// The etcd user this replica logs in as, when etcd's authentication is on (ADR 017). It
    /// needs the `root` role: with it, every Postgres node's Patroni gets an etcd user whose
    /// role reaches only that node's keys. Without it, Patroni gets none.
    #[arg(long, env = "BERTH_ETCD_USERNAME", requires = "etcd_password_file")]
    pub etcd_username: Option<String>,
    /// A file holding the password of --etcd-username (its first line; never logged).
    #[arg(long, env = "BERTH_ETCD_PASSWORD_FILE", requires = "etcd_username")]
    pub etcd_password_file: Option<PathBuf>,
    /// etcd client URLs as containers on every host reach them, comma separated: Patroni's
    /// DCS in each Postgres container (ADR 016). Default: --etcd-endpoints, which only works
    /// when those are addresses containers can dial (not 127.0.0.1).
    #[arg(long, env = "BERTH_DCS_ENDPOINTS", value_delimiter = ',')]
    pub dcs_endpoints: Vec<String>,
    /// Where the replica keeps local files (the secret key file by default).
    #[arg(
        long,
        env = "BERTH_DATA_DIR",
        default_value = "/var/lib/berth/control-plane"
    )]
    pub data_dir: PathBuf,
    /// AES-256 key sealing secrets at rest; created with mode 0600 on first start.
    /// Every replica of a deployment must use the same key.
    #[arg(long, env = "BERTH_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Version manifest mapping service types and versions to images; default: the built-in one.
    #[arg(long, env = "BERTH_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// Serve the API only and never run reconciliation (an API-only replica).
    #[arg(long, env = "BERTH_NO_RECONCILE")]
    pub no_reconcile: bool,
    /// Seconds the leader's lease lives without renewal: how long a dead leader blocks others.
    #[arg(long, env = "BERTH_LEADER_LEASE_TTL", default_value_t = 5)]
    pub leader_lease_ttl: i64,
    /// This replica's name in the leader election; default: hostname and process id.
    #[arg(long, env = "BERTH_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// The token agents present once to get their certificate. Default: the stored one, or a
    /// new random one on the fleet's first start; either way it is written to DATA_DIR/join-token.
    #[arg(long, env = "BERTH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<secrecy::SecretString>,
    /// Seconds an agent's host lease lives without a heartbeat.
    #[arg(long, env = "BERTH_HOST_LEASE_TTL", default_value_t = 5)]
    pub host_lease_ttl: i64,
    /// Bearer-token authentication of the HTTP API (ADR 012): `auto` is on unless LISTEN is
    /// a loopback address. `/v1/version` and `/metrics` are always open.
    #[arg(long, env = "BERTH_API_AUTH", value_enum, default_value_t = ApiAuthMode::Auto)]
    pub api_auth: ApiAuthMode,
    /// Lets `--api-auth off` serve the API on a non-loopback address: anyone who reaches it
    /// can then read and change every database.
    #[arg(long, env = "BERTH_ALLOW_UNAUTHENTICATED_API")]
    pub allow_unauthenticated_api: bool,
    /// Serve the API over HTTPS with a certificate the fleet CA issues at every start for
    /// these names (DNS names or IP addresses, comma separated). Clients trust the fleet CA:
    /// DATA_DIR/ca.pem.
    #[arg(long, env = "BERTH_API_TLS_NAMES", value_delimiter = ',', conflicts_with_all = ["api_tls_cert", "api_tls_key"])]
    pub api_tls_names: Vec<String>,
    /// Serve the API over HTTPS with this certificate (PEM, chain first to last) instead.
    #[arg(long, env = "BERTH_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-tls-cert.
    #[arg(long, env = "BERTH_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Mutual TLS: the API accepts only clients presenting a certificate signed by the fleet
    /// CA (`berth-control-plane client-cert create`). Needs API TLS. Bearer tokens are still
    /// checked when authentication is on.
    #[arg(long, env = "BERTH_API_CLIENT_CERTS")]
    pub api_client_certs: bool,
    /// Tasks (with their logs) kept per database, newest first (ADR 014).
    #[arg(long, env = "BERTH_TASK_RETENTION_COUNT", default_value_t = 100)]
    pub task_retention_count: usize,
    /// Days an ended task is kept, even among the newest TASK_RETENTION_COUNT.
    #[arg(long, env = "BERTH_TASK_RETENTION_DAYS", default_value_t = 30)]
    pub task_retention_days: u64,
    /// Days a deleted database's tasks and logs stay readable after its last task ended.
    #[arg(long, env = "BERTH_DELETED_HISTORY_DAYS", default_value_t = 7)]
    pub deleted_history_days: u64,
    /// Seconds between the leader's retention sweeps.
    #[arg(long, env = "BERTH_RETENTION_SWEEP_SECONDS", default_value_t = 60)]
    pub retention_sweep_seconds: u64,
}

/// Whether the HTTP API asks for bearer tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiAuthMode {
    /// On, unless the API listens on a loopback address only.
    Auto,
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "the API would listen on {listen} without authentication; anyone who reaches it could read and \
         change every database. Use --api-auth on (or auto) and create a token with \
         `berth-control-plane token create`, or pass --allow-unauthenticated-api if that is really meant"
    )]
    OpenApiBeyondLoopback { listen: SocketAddr },
    #[error(
        "--api-client-certs needs the API to serve TLS: give --api-tls-names, or --api-tls-cert and --api-tls-key"
    )]
    ClientCertsWithoutTls,
    #[error("--etcd-password-file {path}: {error}")]
    EtcdPasswordFile { path: String, error: String },
    #[error("--dcs-endpoints: {0}")]
    Dcs(String),
}

impl Settings {
    /// The retention policy the flags make.
    pub fn retention(&self) -> crate::retention::Retention {
        let day = std::time::Duration::from_secs(24 * 3600);
        crate::retention::Retention {
            keep_tasks: self.task_retention_count,
            max_age: day * u32::try_from(self.task_retention_days).unwrap_or(u32::MAX),
            deleted_grace: day * u32::try_from(self.deleted_history_days).unwrap_or(u32::MAX),
            period: std::time::Duration::from_secs(self.retention_sweep_seconds.max(1)),
        }
    }

    /// Patroni's DCS as rendered into every `patroni.yml`: --dcs-endpoints, else
    /// --etcd-endpoints. Errors: endpoints of mixed schemes, or none.
    pub fn dcs(&self) -> Result<crate::patroni::config::Dcs, SettingsError> {
        let urls = if self.dcs_endpoints.iter().any(|e| !e.trim().is_empty()) {
            &self.dcs_endpoints
        } else {
            &self.etcd_endpoints
        };
        crate::patroni::config::Dcs::from_urls(urls, &self.etcd_prefix).map_err(SettingsError::Dcs)
    }

    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }

    /// The etcd login of --etcd-username and --etcd-password-file (the file's first line),
    /// or None without them. Errors: the file cannot be read, or its first line is empty.
    pub fn etcd_credentials(&self) -> Result<Option<store::EtcdCredentials>, SettingsError> {
        let (Some(username), Some(path)) = (&self.etcd_username, &self.etcd_password_file) else {
            return Ok(None);
        };
        let failed = |error: String| SettingsError::EtcdPasswordFile {
            path: path.display().to_string(),
            error,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        let password = text.lines().next().unwrap_or_default();
        if password.is_empty() {
            return Err(failed("its first line is empty".into()));
        }
        Ok(Some(store::EtcdCredentials {
            username: username.clone(),
            password: password.to_string().into(),
        }))
    }

    /// The names the fleet CA issues the API's certificate for (empty ones dropped: an empty
    /// `BERTH_API_TLS_NAMES` means none).
    pub fn api_tls_names(&self) -> Vec<String> {
        self.api_tls_names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// Whether the API serves TLS; refuses mutual TLS without it
    /// ([`SettingsError::ClientCertsWithoutTls`]).
    pub fn api_tls_enabled(&self) -> Result<bool, SettingsError> {
        let tls = self.api_tls_cert.is_some() || !self.api_tls_names().is_empty();
        if self.api_client_certs && !tls {
            return Err(SettingsError::ClientCertsWithoutTls);
        }
        Ok(tls)
    }

    /// Whether the API authenticates requests: always beyond loopback, unless the operator
    /// both turned it off and allowed an open API explicitly
    /// ([`SettingsError::OpenApiBeyondLoopback`] otherwise).
    pub fn api_auth_enabled(&self) -> Result<bool, SettingsError> {
        let loopback = self.listen.ip().is_loopback();
        match self.api_auth {
            ApiAuthMode::On => Ok(true),
            ApiAuthMode::Auto => Ok(!loopback),
            ApiAuthMode::Off if loopback || self.allow_unauthenticated_api => Ok(false),
            ApiAuthMode::Off => Err(SettingsError::OpenApiBeyondLoopback {
                listen: self.listen,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        Settings::parse_from(std::iter::once("berth-control-plane").chain(args.iter().copied()))
    }

    #[test]
    fn the_api_authenticates_whenever_it_listens_beyond_loopback() {
        assert!(!settings(&[]).api_auth_enabled().unwrap());
        assert!(
            !settings(&["--listen", "[::1]:3000"])
                .api_auth_enabled()
                .unwrap()
        );
        assert!(settings(&["--api-auth", "on"]).api_auth_enabled().unwrap());
        assert!(
            settings(&["--listen", "0.0.0.0:3000"])
                .api_auth_enabled()
                .unwrap()
        );
        assert!(
            settings(&["--listen", "10.0.0.5:3000"])
                .api_auth_enabled()
                .unwrap()
        );
        let refused = settings(&["--listen", "0.0.0.0:3000", "--api-auth", "off"])
            .api_auth_enabled()
            .unwrap_err();
        assert!(refused.to_string().contains("0.0.0.0:3000"), "{refused}");
        assert!(
            !settings(&[
                "--listen",
                "0.0.0.0:3000",
                "--api-auth",
                "off",
                "--allow-unauthenticated-api"
            ])
            .api_auth_enabled()
            .unwrap()
        );
    }

    #[test]
    fn retention_defaults_keep_100_tasks_and_30_days() {
        let r = settings(&[]).retention();
        assert_eq!(r, crate::retention::Retention::default());
        let r =
            settings(&["--task-retention-count", "5", "--task-retention-days", "1"]).retention();
        assert_eq!((r.keep_tasks, r.max_age.as_secs()), (5, 24 * 3600));
    }

    #[test]
    fn the_dcs_defaults_to_the_etcd_endpoints() {
        let d = settings(&["--etcd-endpoints", "http://10.0.0.5:2379"])
            .dcs()
            .unwrap();
        assert_eq!(d.hosts, ["10.0.0.5:2379"]);
        let d = settings(&[
            "--dcs-endpoints",
            "http://172.17.0.1:23790,http://172.17.0.1:23791",
        ])
        .dcs()
        .unwrap();
        assert_eq!(d.hosts, ["172.17.0.1:23790", "172.17.0.1:23791"]);
        assert_eq!((d.protocol.as_str(), d.prefix.as_str()), ("http", "/berth"));
    }

    #[test]
    fn etcd_credentials_come_from_a_file_and_are_never_printed() {
        assert!(settings(&[]).etcd_credentials().unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd-password");
        std::fs::write(&file, "s3cret-etcd-pw\n").unwrap();
        let s = settings(&[
            "--etcd-username",
            "root",
            "--etcd-password-file",
            file.to_str().unwrap(),
        ]);
        let c = s.etcd_credentials().unwrap().unwrap();
        assert_eq!(c.username, "root");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&c.password),
            "s3cret-etcd-pw"
        );
        for debug in [format!("{s:?}"), format!("{c:?}")] {
            assert!(!debug.contains("s3cret"), "{debug}");
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(s.etcd_credentials().is_err());
        let missing = settings(&[
            "--etcd-username",
            "root",
            "--etcd-password-file",
            "/nonexistent/etcd-password",
        ]);
        let e = missing.etcd_credentials().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/etcd-password"), "{e}");
        // One without the other is refused by the parser.
        let alone = Settings::try_parse_from(["berth-control-plane", "--etcd-username", "root"]);
        assert!(alone.is_err());
    }

    #[test]
    fn mutual_tls_needs_tls() {
        assert!(!settings(&[]).api_tls_enabled().unwrap());
        assert!(
            settings(&["--api-tls-names", "cp.example,10.0.0.5"])
                .api_tls_enabled()
                .unwrap()
        );
        assert!(matches!(
            settings(&["--api-client-certs"]).api_tls_enabled(),
            Err(SettingsError::ClientCertsWithoutTls)
        ));
        assert!(
            settings(&["--api-tls-names", "cp", "--api-client-certs"])
                .api_tls_enabled()
                .unwrap()
        );
    }
}
