//! Real dependencies for tests, started on free ports and torn down on drop.
//!
//! Tests talk to a real etcd, never an in-memory imitation, so they exercise the same
//! transactions, leases and watches production does.

pub mod net_fleet;
pub mod psql;
pub mod records;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, from 20000-32767: below the kernel's ephemeral range
/// (32768 and up), where Docker picks the host ports it chooses for containers. A test
/// process taking a port there could grab one an agent chose and keeps for a container that
/// is down for a moment, and the container's re-creation would then fail with "port is
/// already allocated".
pub fn free_port() -> u16 {
    use rand_free::next;
    for _ in 0..1000 {
        let port = 20_000 + (next() % 12_768) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in 20000-32767 on 127.0.0.1")
}

/// A small generator for [`free_port`]: a test binary's tests run in threads of one process
/// and nextest runs many processes, so each draw mixes the time, the pid and a counter.
mod rand_free {
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNTER: AtomicU64 = AtomicU64::new(0);

    pub fn next() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        // splitmix64's finaliser: neighbouring inputs give unrelated outputs.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
}

/// The machine's address on Docker's default bridge (`docker0`): containers of the
/// machine's engine, on any of its networks, reach processes on the machine there (Patroni in
/// a test's Postgres containers reaches the test's etcd, ADR 016). Panics, saying why,
/// without a `docker0` with an IPv4 address.
pub fn docker_bridge_address() -> std::net::IpAddr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .expect("run `ip` (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // `4: docker0    inet 172.17.0.1/16 brd ... scope global docker0`
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no IPv4 address on docker0 (`ip -4 addr show dev docker0`: {text:?}): is Docker running?"
            )
        })
}

/// Path of the etcd binary, or a panic that tells the reader how to get one.
pub fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "etcd is not installed: these tests need a real etcd server. Install Debian's \
         etcd-server (`apt-get install -y etcd-server`), run `.ci/run` which installs it, \
         or point ETCD_BIN at an etcd binary"
    );
}

/// One etcd member in a temp dir. Killed, and its data removed, on drop.
pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Flags after the defaults (`--quota-backend-bytes=...`, or `--auto-compaction-*`,
    /// which then replace the default compaction).
    extra_args: Vec<String>,
    /// Addresses served besides 127.0.0.1, on the same client port.
    also_on: Vec<std::net::IpAddr>,
    /// The `root` user's password once [`EtcdServer::enable_auth`] turned auth on.
    root_password: Option<String>,
}

impl EtcdServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A member started with more flags, e.g. a small `--quota-backend-bytes` to reach
    /// etcd's space alarm, or a faster `--auto-compaction-*` for a benchmark.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_inner(extra_args, Vec::new())
    }

    /// A member that also serves clients on `address` (same port), e.g. a Docker network's
    /// gateway, so that containers on that network reach it at [`EtcdServer::endpoint_on`].
    pub fn start_also_on(address: std::net::IpAddr) -> Self {
        Self::start_inner(&[], vec![address])
    }

    /// [`EtcdServer::start_with`]'s flags and [`EtcdServer::start_also_on`]'s addresses.
    pub fn start_with_also_on(extra_args: &[&str], also_on: &[std::net::IpAddr]) -> Self {
        Self::start_inner(extra_args, also_on.to_vec())
    }

    fn start_inner(extra_args: &[&str], also_on: Vec<std::net::IpAddr>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-etcd-")
            .tempdir()
            .expect("temp dir");
        let mut server = EtcdServer {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            also_on,
            root_password: None,
        };
        server.spawn();
        server
    }

    /// `http://ADDRESS:PORT`, for clients that reach this member at another address it
    /// serves ([`EtcdServer::start_also_on`]).
    pub fn endpoint_on(&self, address: std::net::IpAddr) -> String {
        format!(
            "http://{}",
            std::net::SocketAddr::new(address, self.client_port)
        )
    }

    /// `http://127.0.0.1:PORT`, for etcd clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Turns etcd's authentication on, as an operator would (`etcdctl user add root`,
    /// `etcdctl auth enable`): a `root` user with `root_password` and the `root` role, then
    /// auth. From then on every request needs a user's token; the member stays so across
    /// [`EtcdServer::restart`] (auth lives in its data). Through etcd's JSON gateway, so no
    /// etcdctl is needed. Panics, with etcd's answer, when a step is refused.
    pub fn enable_auth(&mut self, root_password: &str) {
        let password = json_string(root_password);
        for (path, body) in [
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"root","password":{password}}}"#),
            ),
            ("/v3/auth/role/add", r#"{"name":"root"}"#.to_string()),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.to_string(),
            ),
            ("/v3/auth/enable", "{}".to_string()),
        ] {
            let (status, answer) = self.gateway(path, &body, None);
            assert_eq!(status, 200, "etcd refused {path}: {answer}");
        }
        self.root_password = Some(root_password.to_string());
    }

    /// The `root` user's password, once [`EtcdServer::enable_auth`] turned auth on.
    pub fn root_password(&self) -> Option<&str> {
        self.root_password.as_deref()
    }

    /// A token of the `root` user, for requests through the JSON gateway
    /// ([`EtcdServer::gateway`]); None while auth is off.
    pub fn root_token(&self) -> Option<String> {
        let password = self.root_password.as_deref()?;
        let body = format!(r#"{{"name":"root","password":{}}}"#, json_string(password));
        let (status, answer) = self.gateway("/v3/auth/authenticate", &body, None);
        assert_eq!(status, 200, "etcd refused root's login: {answer}");
        let token = answer
            .split(r#""token":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no token in {answer}"));
        Some(token.to_string())
    }

    /// POSTs `body` (JSON) to etcd's JSON gateway at `path` (`/v3/kv/range`, ...), with
    /// `token` as its `Authorization` when given; returns the HTTP status and the body.
    pub fn gateway(&self, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = format!("127.0.0.1:{}", self.client_port);
        let mut s = TcpStream::connect(&addr).expect("connect to etcd");
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let auth = token
            .map(|t| format!("Authorization: {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).expect("write to etcd");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read etcd's answer");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kill -9 the member, keeping its data dir, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same ports and data, after [`EtcdServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let client = std::iter::once(self.endpoint())
            .chain(self.also_on.iter().map(|a| self.endpoint_on(*a)))
            .collect::<Vec<_>>()
            .join(",");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("etcd log file");
        let overridden = self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--auto-compaction"));
        let compaction = if overridden {
            &[][..]
        } else {
            &[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=10000",
            ][..]
        };
        let child = Command::new(etcd_binary())
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            // Tests churn many small keys; a short snapshot interval keeps restarts fast.
            .arg("--snapshot-count=10000")
            // As every deployment runs it (ADR 014): without compaction etcd keeps every
            // revision of every key.
            .args(compaction)
            .args(&self.extra_args)
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        self.wait_ready(&log_path);
    }

    fn wait_ready(&mut self, log_path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let health = format!("127.0.0.1:{}", self.client_port);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "etcd exited with {status} at start; its log:\n{}",
                    tail(log_path)
                );
            }
            if TcpStream::connect(&health).is_ok() && http_health_ok(&health) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd did not become healthy within 20s; its log:\n{}",
            tail(log_path)
        );
    }
}

fn http_health_ok(addr: &str) -> bool {
    use std::io::Write;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        body.push_str(&line);
    }
    body.contains("\"health\":\"true\"")
}

/// `s` as a JSON string literal (quotes and backslashes escaped; test passwords have no
/// control characters).
fn json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
