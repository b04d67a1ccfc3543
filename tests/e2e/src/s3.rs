//! A real S3 service for a fleet's backups: `berth-s3-server` (tests/s3-server, the s3s-fs
//! crate served over HTTPS) as a process of the test, listening where the containers on the
//! fleet's hosts reach the machine, the same address their Patroni reaches etcd at:
//! Docker's bridge (`docker0`) for [`Fleet::start`], whose containers on berth's own
//! networks still reach the machine's addresses; the fleet's gateway on its bridge for
//! [`Fleet::start_engine_per_host`], which every host's namespace routes to.
//!
//! pgBackRest speaks only HTTPS to S3, so the server gets a certificate for that address
//! ([`s3_server::Launch`] makes it). It is self-signed and the Postgres image trusts no test CA, so pgBackRest must
//! be told not to verify it: `storage-verify-tls=n` in the repository's custom options (and
//! `s3-uri-style=path`, since the endpoint is an address, not a domain with buckets as
//! subdomains). [`S3Server::repository`] and [`S3Server::pgbackrest_env`] include both.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::{Fleet, binary, dcs_address};

/// One `berth-s3-server` with one bucket, started by [`Fleet::start_s3`] through
/// [`s3_server::Launch`]. Killed on drop, its data removed with it.
pub struct S3Server {
    /// `IP:PORT` where containers on the fleet's hosts reach it (berth's `s3_endpoint`;
    /// pgBackRest's `repo1-s3-endpoint` is the IP, `repo1-storage-port` the port).
    pub endpoint: String,
    /// The IP of `endpoint`, which the certificate names.
    pub ip: std::net::IpAddr,
    /// The port of `endpoint`.
    pub port: u16,
    /// The bucket made at start.
    pub bucket: String,
    /// The region requests must be signed for (the server refuses others, as S3 does).
    pub region: String,
    /// The one access key the server accepts.
    pub access_key: String,
    /// Its secret key.
    pub secret_key: String,
    /// The server's data: bucket `B`'s object `K` is the file `root/B/K` (so `repo1-path=/x`
    /// puts pgBackRest's files under `root/BUCKET/x/`).
    pub root: PathBuf,
    /// The certificate the server presents (PEM), self-signed for `ip`.
    pub cert_pem: String,
    server: s3_server::Running,
}

/// The region [`Fleet::start_s3`] gives its server: not AWS's default `us-east-1`, so that a
/// client that forgets to pass the region is refused instead of passing by luck.
pub const S3_REGION: &str = "eu-central-1";

/// The bucket [`Fleet::start_s3`] makes.
pub const S3_BUCKET: &str = "berth-backups";

impl Fleet {
    /// Starts an S3 server ([`S3Server`]) reachable from the containers on every host of
    /// this fleet, with bucket [`S3_BUCKET`] in region [`S3_REGION`] and a random key pair.
    /// Builds `berth-s3-server` first if needed (with the fleet's binaries).
    ///
    /// Panics when the server does not start, with its log.
    pub fn start_s3(&self) -> S3Server {
        self.start_s3_with(S3_BUCKET, S3_REGION)
    }

    /// Like [`Fleet::start_s3`] with another bucket name and region.
    pub fn start_s3_with(&self, bucket: &str, region: &str) -> S3Server {
        let server = s3_server::Launch {
            binary: &binary("berth-s3-server"),
            ip: dcs_address(self.net.as_ref()),
            bucket,
            region,
            prefix: "berth-e2e",
            log_filter: "info,rustls=error",
        }
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
        S3Server {
            endpoint: server.addr.to_string(),
            ip: server.addr.ip(),
            port: server.addr.port(),
            bucket: bucket.to_string(),
            region: region.to_string(),
            access_key: server.access_key.clone(),
            secret_key: server.secret_key.clone(),
            root: server.root.clone(),
            cert_pem: server.cert_pem.clone(),
            server,
        }
    }
}

impl S3Server {
    /// The custom options every berth repository on this server needs: path-style URLs
    /// (the endpoint is an IP) and no certificate check (self-signed; see the module doc).
    pub fn custom_options(&self) -> Value {
        json!({"s3-uri-style": "path", "storage-verify-tls": "n"})
    }

    /// A repository of berth's API (`backup_config.repositories[]`, or a restore's
    /// `repository`) on this server: type `s3`, with its bucket, region, endpoint, keys and
    /// [`S3Server::custom_options`]; `base_path` the key prefix in the bucket.
    pub fn repository(&self, id: &str, base_path: &str) -> Value {
        json!({
            "id": id,
            "type": "s3",
            "base_path": base_path,
            "s3_bucket": self.bucket,
            "s3_region": self.region,
            "s3_endpoint": self.endpoint,
            "s3_key": self.access_key,
            "s3_key_secret": self.secret_key,
            "custom_options": self.custom_options(),
        })
    }

    /// pgBackRest options, as the environment variables pgBackRest reads them
    /// (`PGBACKREST_REPO1_S3_BUCKET`, ...), that make this server its `repo1`, under
    /// `repo_path` in the bucket: for running pgBackRest by hand in a container
    /// (`docker run -e NAME`, the values in the docker CLI's environment). Not arguments:
    /// pgBackRest refuses `repo1-s3-key` and its secret on the command line.
    pub fn pgbackrest_env(&self, repo_path: &str) -> Vec<(String, String)> {
        [
            ("REPO1_TYPE", "s3".to_string()),
            ("REPO1_PATH", repo_path.to_string()),
            ("REPO1_S3_BUCKET", self.bucket.clone()),
            ("REPO1_S3_ENDPOINT", self.ip.to_string()),
            ("REPO1_STORAGE_PORT", self.port.to_string()),
            ("REPO1_S3_REGION", self.region.clone()),
            ("REPO1_S3_KEY", self.access_key.clone()),
            ("REPO1_S3_KEY_SECRET", self.secret_key.clone()),
            ("REPO1_S3_URI_STYLE", "path".to_string()),
            ("REPO1_STORAGE_VERIFY_TLS", "n".to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (format!("PGBACKREST_{name}"), value))
        .collect()
    }

    /// The server's log so far (requests at `info`, errors at `warn`).
    pub fn log(&self) -> String {
        self.server.log()
    }
}
