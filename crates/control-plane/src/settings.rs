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
    /// Seconds Patroni's leader key lives without renewal (`ttl`, ADR 016): how long a lost
    /// primary goes unnoticed. At least 20 (Patroni 4), and at least
    /// --patroni-loop-wait + 2 x --patroni-retry-timeout. Taken by nodes initialised after it
    /// is set; a node keeps the values it started with.
    #[arg(long, env = "BERTH_PATRONI_TTL", default_value_t = crate::patroni::config::TTL)]
    pub patroni_ttl: u32,
    /// Seconds between two runs of Patroni's loop (`loop_wait`), at least 1.
    #[arg(long, env = "BERTH_PATRONI_LOOP_WAIT", default_value_t = crate::patroni::config::LOOP_WAIT)]
    pub patroni_loop_wait: u32,
    /// Seconds Patroni retries etcd and Postgres before it gives up a loop and a leader that
    /// cannot renew its key demotes (`retry_timeout`), at least 3.
    #[arg(long, env = "BERTH_PATRONI_RETRY_TIMEOUT", default_value_t = crate::patroni::config::RETRY_TIMEOUT)]
    pub patroni_retry_timeout: u32,
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
    /// Seconds between two reads of every running Postgres instance's WAL health and
    /// pglogical subscriptions, which `GET /v1/databases/{id}` shows (at least 1).
    #[arg(long, env = "BERTH_INSTANCE_CHECK_SECONDS", default_value_t = crate::reconciler::WAL_CHECK_PERIOD.as_secs())]
    pub instance_check_seconds: u64,
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
    /// Patroni's timeouts as given would be refused by Patroni, or let two instances accept
    /// writes; the message names the flag to change.
    #[error("{flag}: {error}")]
    PatroniTimings {
        flag: &'static str,
        error: crate::patroni::config::TimingsError,
    },
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
    /// --etcd-endpoints, with the --patroni-* timings. Errors: endpoints of mixed schemes, or
    /// none; timings Patroni would refuse ([`Settings::patroni_timings`]).
    pub fn dcs(&self) -> Result<crate::patroni::config::Dcs, SettingsError> {
        let urls = if self.dcs_endpoints.iter().any(|e| !e.trim().is_empty()) {
            &self.dcs_endpoints
        } else {
            &self.etcd_endpoints
        };
        let timings = self.patroni_timings()?;
        let dcs = crate::patroni::config::Dcs::from_urls(urls, &self.etcd_prefix)
            .map_err(SettingsError::Dcs)?;
        Ok(crate::patroni::config::Dcs { timings, ..dcs })
    }

    /// --patroni-ttl, --patroni-loop-wait and --patroni-retry-timeout, checked as Patroni 4
    /// would ([`crate::patroni::config::PatroniTimings::validate`]). Errors: the first flag
    /// out of bounds, named, with the bound; the rule between the three names --patroni-ttl.
    pub fn patroni_timings(&self) -> Result<crate::patroni::config::PatroniTimings, SettingsError> {
        use crate::patroni::config::{PatroniTimings, TimingsError};
        let timings = PatroniTimings {
            ttl: self.patroni_ttl,
            loop_wait: self.patroni_loop_wait,
            retry_timeout: self.patroni_retry_timeout,
        };
        timings
            .validate()
            .map_err(|error| SettingsError::PatroniTimings {
                flag: match error {
                    TimingsError::TtlTooShort(_) | TimingsError::TtlUnderLoop { .. } => {
                        "--patroni-ttl"
                    }
                    TimingsError::LoopWaitTooShort(_) => "--patroni-loop-wait",
                    TimingsError::RetryTimeoutTooShort(_) => "--patroni-retry-timeout",
                },
                error,
            })?;
        Ok(timings)
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
    fn patroni_timings_default_to_berths_and_are_checked_naming_the_flag() {
        let d = settings(&[]).dcs().unwrap();
        assert_eq!(d.timings, crate::patroni::config::PatroniTimings::default());
        // The flags, and the timings they make or the start of the error they are refused with.
        type Case<'a> = (&'a [&'a str], Result<(u32, u32, u32), &'a str>);
        let table: [Case; 7] = [
            (&[], Ok((20, 5, 5))),
            // Patroni's own defaults.
            (
                &[
                    "--patroni-ttl=30",
                    "--patroni-loop-wait=10",
                    "--patroni-retry-timeout=10",
                ],
                Ok((30, 10, 10)),
            ),
            (
                &["--patroni-ttl=15"],
                Err("--patroni-ttl: ttl 15 s is under 20 s"),
            ),
            (
                &["--patroni-loop-wait=0"],
                Err("--patroni-loop-wait: loop_wait 0 s is under 1 s"),
            ),
            (
                &["--patroni-retry-timeout=2"],
                Err("--patroni-retry-timeout: retry_timeout 2 s is under 3 s"),
            ),
            (
                &["--patroni-loop-wait=10", "--patroni-retry-timeout=6"],
                Err(
                    "--patroni-ttl: ttl 20 s is under loop_wait + 2 x retry_timeout = 10 + 2 x 6 s",
                ),
            ),
            (
                &[
                    "--patroni-ttl=40",
                    "--patroni-loop-wait=10",
                    "--patroni-retry-timeout=6",
                ],
                Ok((40, 10, 6)),
            ),
        ];
        for (args, want) in table {
            let got = settings(args)
                .dcs()
                .map(|d| (d.timings.ttl, d.timings.loop_wait, d.timings.retry_timeout));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{args:?}"),
                (Err(e), Err(start)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(start), "{args:?}: {e}");
                }
                (got, want) => panic!("{args:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn patroni_timings_come_from_the_environment_too() {
        // The variables' names; setting them in the process would race the other tests.
        let cmd = <Settings as clap::CommandFactory>::command();
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("patroni_ttl").as_deref(), Some("BERTH_PATRONI_TTL"));
        assert_eq!(
            env("patroni_loop_wait").as_deref(),
            Some("BERTH_PATRONI_LOOP_WAIT")
        );
        assert_eq!(
            env("patroni_retry_timeout").as_deref(),
            Some("BERTH_PATRONI_RETRY_TIMEOUT")
        );
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
