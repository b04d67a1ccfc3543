//! The S3 service the backups go to: `berth-s3-server` (tests/s3-server, the s3s-fs crate served over HTTPS),
//! started the way the e2e harness starts it (`tests/e2e/src/s3.rs`): on Docker's bridge address, where the
//! containers reach the machine, with a certificate made here for that address and a random key pair. The
//! objects are files under a temporary directory, removed with the server.
//!
//! pgBackRest speaks only HTTPS to S3; the certificate is self-signed and the image trusts no test CA, so the
//! repository sets `storage-verify-tls=n` (and `s3-uri-style=path`, the endpoint being an address).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::procs::binary;

const BUCKET: &str = "berth-bench";
/// Not AWS's default, so a client that forgets the region is refused rather than passing by luck.
const REGION: &str = "eu-central-1";

/// pgBackRest's `repo1-storage-upload-chunk-size`: a file larger than its chunk goes up as a multipart
/// upload, and berth-s3-server (s3s-fs 0.14) answers those with a 500 (seen on 16 MiB WAL segments of hex
/// data, whose gzip exceeds the default 5 MiB chunk: archiving stalled). Above the largest file (a 1 GiB
/// segment of a table, compressed), every file is one PUT, which this server takes.
const UPLOAD_CHUNK: &str = "1GiB";

/// One `berth-s3-server`, killed on drop; its data goes with its directory.
pub struct S3Server {
    /// `IP:PORT` where the containers reach it.
    pub endpoint: String,
    access_key: String,
    secret_key: String,
    /// Bucket `B`'s object `K` is the file `root/B/K`.
    root: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server on Docker's bridge address (port chosen by the server) with one bucket.
    pub fn start() -> Result<S3Server> {
        let ip = test_support::docker_bridge_address();
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-s3-")
            .tempdir()?;
        let cert = rcgen::generate_simple_self_signed(vec![ip.to_string()])?;
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.cert.pem())?;
        std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
        let root = dir.path().join("data");
        let log = dir.path().join("s3-server.log");
        let access_key = format!("berth-bench-{:08x}", random_u64()? as u32);
        let secret_key = format!("{:016x}{:016x}", random_u64()?, random_u64()?);
        let mut child = Command::new(binary("berth-s3-server"))
            .arg(format!("--root={}", root.display()))
            .arg(format!("--listen={ip}:0"))
            .arg(format!("--cert={}", cert_file.display()))
            .arg(format!("--key={}", key_file.display()))
            .arg(format!("--access-key={access_key}"))
            .arg(format!("--region={REGION}"))
            .arg(format!("--bucket={BUCKET}"))
            // Never an argument: arguments show in `ps`.
            .env("BERTH_S3_SECRET_KEY", &secret_key)
            .env("BERTH_LOG", "warn,rustls=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context(
                "start berth-s3-server (built by `cargo build --release --bin berth-s3-server`)",
            )?;
        // The one line it prints once bound, read on a thread so that a hung server fails the run.
        let stdout = child.stdout.take().context("the server's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(bound) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "berth-s3-server did not start (stdout {line:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Ok(S3Server {
            endpoint: bound.to_string(),
            access_key,
            secret_key,
            root,
            child,
            dir,
        })
    }

    /// Repository `id` of berth's API on this server, keys included, under `base_path` in the bucket.
    pub fn repository(&self, id: &str, base_path: &str) -> Value {
        json!({
            "id": id,
            "type": "s3",
            "base_path": base_path,
            "s3_bucket": BUCKET,
            "s3_region": REGION,
            "s3_endpoint": self.endpoint,
            "s3_key": self.access_key,
            "s3_key_secret": self.secret_key,
            "custom_options": {
                "s3-uri-style": "path",
                "storage-verify-tls": "n",
                "storage-upload-chunk-size": UPLOAD_CHUNK,
            },
        })
    }

    /// Bytes of the files under the bucket (what the repository holds: backups and archived WAL).
    pub fn stored_bytes(&self) -> u64 {
        dir_bytes(&self.root.join(BUCKET))
    }

    /// The server's log (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3-server.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}
