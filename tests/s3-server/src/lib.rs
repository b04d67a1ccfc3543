//! Starting `berth-s3-server` (this package's binary) from a test or a benchmark: one
//! place that knows its arguments, how its secret key is passed and how it says it is ready.
//!
//! [`Launch::start`] makes a temporary directory, a self-signed certificate for the address
//! the server listens on and a random key pair, starts the server with port 0 and waits for
//! the one line it prints once bound (`listening on ADDR:PORT`). The [`Running`] server is
//! killed on drop, its data and log removed with its directory.
//!
//! pgBackRest speaks only HTTPS to S3, and the certificate is self-signed: a repository on
//! this server needs pgBackRest's `storage-verify-tls=n` (and `s3-uri-style=path`, since the
//! endpoint is an address, not a domain with buckets as subdomains).
//!
//! The library needs none of the server's dependencies: they sit behind the default feature
//! `server`, so a dependent that only starts the server takes this package with
//! `default-features = false`.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The environment variable the server reads its secret key from: never an argument, which
/// `ps` shows.
pub const SECRET_ENV: &str = "BERTH_S3_SECRET_KEY";

/// How long the server gets to bind and say so: it only reads two small files first. Long
/// enough for a machine busy with builds.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Launch::start`] starts: one server with one bucket, on `ip` at a port it picks.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The `berth-s3-server` binary (the caller knows which profile it built).
    pub binary: &'a Path,
    /// The address to listen on, which the certificate names: where the clients (containers
    /// on a fleet's hosts) reach this machine.
    pub ip: IpAddr,
    /// The bucket made at start.
    pub bucket: &'a str,
    /// The region requests must be signed for (the server refuses others, as S3 does).
    pub region: &'a str,
    /// Starts the access key (`PREFIX-` and eight hex digits) and the temporary directory's
    /// name, so that a leftover says whose it is: `berth-e2e`, `berth-bench`.
    pub prefix: &'a str,
    /// The server's `BERTH_LOG` filter (`info,rustls=error` logs every request).
    pub log_filter: &'a str,
}

/// Why [`Launch::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The temporary directory, the certificate or the key could not be written.
    #[error("prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rcgen could not make the certificate.
    #[error("make a self-signed certificate for {ip}: {source}")]
    Certificate { ip: IpAddr, source: rcgen::Error },
    /// The binary could not be run (not built?).
    #[error("run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    /// The server exited or said nothing usable within [`START_TIMEOUT`]; it was killed.
    #[error("berth-s3-server did not start (stdout {stdout:?}); its log:\n{log}")]
    NotStarted { stdout: String, log: String },
}

/// A started server. Killed (and reaped) on drop, its directory removed.
pub struct Running {
    /// Where it listens: `Launch::ip` and the port it picked.
    pub addr: SocketAddr,
    /// The one access key it accepts.
    pub access_key: String,
    /// Its secret key. Not shown by Debug.
    pub secret_key: String,
    /// Its data: bucket `B`'s object `K` is the file `root/B/K`.
    pub root: PathBuf,
    /// The certificate it presents (PEM), self-signed for `Launch::ip`.
    pub cert_pem: String,
    log: PathBuf,
    child: Child,
    // Dropped after `child` is killed (see Drop): the server's files go with it.
    _dir: tempfile::TempDir,
}

impl Launch<'_> {
    /// Starts the server and waits until it listens (at most [`START_TIMEOUT`]).
    pub fn start(&self) -> Result<Running, LaunchError> {
        let prepare = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LaunchError::Prepare { path, source }
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-s3-", self.prefix))
            .tempdir()
            .map_err(prepare(&std::env::temp_dir()))?;
        let cert =
            rcgen::generate_simple_self_signed(vec![self.ip.to_string()]).map_err(|source| {
                LaunchError::Certificate {
                    ip: self.ip,
                    source,
                }
            })?;
        let cert_pem = cert.cert.pem();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, &cert_pem).map_err(prepare(&cert_file))?;
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).map_err(prepare(&key_file))?;
        let root = dir.path().join("data");
        let log = dir.path().join("s3-server.log");
        let log_file = std::fs::File::create(&log).map_err(prepare(&log))?;
        let access_key = format!("{}-{:08x}", self.prefix, rand::random::<u32>());
        let secret_key = format!("{:032x}", rand::random::<u128>());

        let mut child = Command::new(self.binary)
            .arg(format!("--root={}", root.display()))
            .arg(format!("--listen={}:0", self.ip))
            .arg(format!("--cert={}", cert_file.display()))
            .arg(format!("--key={}", key_file.display()))
            .arg(format!("--access-key={access_key}"))
            .arg(format!("--region={}", self.region))
            .arg(format!("--bucket={}", self.bucket))
            .env(SECRET_ENV, &secret_key)
            .env("BERTH_LOG", self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                binary: self.binary.to_path_buf(),
                source,
            })?;

        // Read on a thread, so that a server that hangs fails its caller instead of blocking it.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let Some(addr) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::NotStarted {
                stdout: line,
                log: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        };
        Ok(Running {
            addr,
            access_key,
            secret_key,
            root,
            cert_pem,
            log,
            child,
            _dir: dir,
        })
    }
}

impl Running {
    /// The server's log so far (its stderr, at the launch's `log_filter`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Everything but the secret key.
impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("root", &self.root)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
