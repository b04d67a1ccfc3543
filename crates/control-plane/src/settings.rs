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
    pub join_token: Option<String>,
    /// Seconds an agent's host lease lives without a heartbeat.
    #[arg(long, env = "BERTH_HOST_LEASE_TTL", default_value_t = 5)]
    pub host_lease_ttl: i64,
}

impl Settings {
    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }
}
