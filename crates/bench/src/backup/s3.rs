//! The S3 service the backups go to: `berth-s3-server` (tests/s3-server, the s3s-fs crate served over HTTPS),
//! started as the e2e harness starts it (`s3_server::Launch`): on Docker's bridge address, where the
//! containers reach the machine, with a certificate for that address and a random key pair. The objects are
//! files under a temporary directory, removed with the server.
//!
//! pgBackRest speaks only HTTPS to S3; the certificate is self-signed and the image trusts no test CA, so the
//! repository sets `storage-verify-tls=n` (and `s3-uri-style=path`, the endpoint being an address).

use std::path::Path;

use anyhow::{Context, Result};
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
    server: s3_server::Running,
}

impl S3Server {
    /// Starts the server on Docker's bridge address (port chosen by the server) with one bucket.
    pub fn start() -> Result<S3Server> {
        let server = s3_server::Launch {
            binary: &binary("berth-s3-server"),
            ip: test_support::docker_bridge_address(),
            bucket: BUCKET,
            region: REGION,
            prefix: "berth-bench",
            log_filter: "warn,rustls=error",
        }
        .start()
        .context(
            "start berth-s3-server (built by `cargo build --release --bin berth-s3-server`)",
        )?;
        Ok(S3Server {
            endpoint: server.addr.to_string(),
            server,
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
            "s3_key": self.server.access_key,
            "s3_key_secret": self.server.secret_key,
            "custom_options": {
                "s3-uri-style": "path",
                "storage-verify-tls": "n",
                "storage-upload-chunk-size": UPLOAD_CHUNK,
            },
        })
    }

    /// Bytes of the files under the bucket (what the repository holds: backups and archived WAL).
    pub fn stored_bytes(&self) -> u64 {
        dir_bytes(&self.server.root.join(BUCKET))
    }

    /// The server's log (warnings and errors).
    pub fn log(&self) -> String {
        self.server.log()
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
