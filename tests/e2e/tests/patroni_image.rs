//! berth's Postgres images in Patroni mode (ADR 015), as the control plane will run them: two
//! containers of `berth/postgres:15` (Patroni 3.0) or of `berth/postgres:17` (Patroni 4.0),
//! with the same patroni.yml, against a real etcd, each reached only through its
//! host address (the Docker network's gateway) and the ports the engine published, read from
//! the published-ports file; TLS everywhere (Postgres, replication, rewind, REST API) with a
//! certificate from berth's own CA. One member becomes leader and takes writes, the other
//! streams from it; a switchover through the REST API moves the leadership with every row;
//! the leader killed, the other takes over, and the killed one, started again, rejoins as a
//! replica; `docker stop` leaves cleanly shut-down clusters. Needs `deploy/images/build postgres`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::serde_json::{Value, json};
use test_support::{EtcdServer, free_port};

const SUPERUSER_PASSWORD: &str = "su-pw-patroni-test";
const REPLICATION_PASSWORD: &str = "repl-pw-patroni-test";
const REWIND_PASSWORD: &str = "rewind-pw-patroni-test";
const RESTAPI_PASSWORD: &str = "api-pw-patroni-test";
/// Generous: a 2-core machine shared with other builds; the loops end as soon as the state holds.
const DEADLINE: Duration = Duration::from_secs(180);
/// Where the image copies the TLS files (the entrypoint's fixed run-dir paths).
const RUN_DIR: &str = "/var/lib/postgresql/berth";

/// Polls `check` every `every` until it gives a value; after [`DEADLINE`] the test gives up
/// with `what` and the last thing `check` saw (a hang bound, not a measurement).
async fn eventually<T, S: std::fmt::Debug>(
    what: impl Fn(&Option<S>) -> String,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, Option<S>>,
) -> T {
    let start = Instant::now();
    let mut last = None;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => last = seen.or(last),
        }
        if start.elapsed() >= DEADLINE {
            panic!("{}", what(&last));
        }
        tokio::time::sleep(every).await;
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A container's log, stdout and stderr (Patroni and Postgres log to stderr).
fn container_logs(container: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", container])
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned()
}

/// A Docker network of the test's own, with the gateway the containers reach the host at.
struct Network {
    name: String,
    gateway: IpAddr,
}

impl Network {
    fn create(name: &str) -> Network {
        docker(&["network", "create", "--label", "berth.test=patroni", name]);
        let gateway = docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            name,
        ]);
        Network {
            name: name.to_string(),
            gateway: gateway.parse().expect("gateway address"),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// Whether a replica's state in `GET /cluster` says its Postgres runs: Patroni 3.0 says
/// `running`, 4.0 says `streaming` once its WAL receiver streams from the leader.
fn replica_up(state: &str) -> bool {
    matches!(state, "running" | "streaming")
}

/// One Patroni member: its container, config, data and runtime directories, and the host
/// ports published for its Postgres and REST API.
struct Member {
    name: String,
    container: String,
    image: &'static str,
    dir: PathBuf,
    pg_port: u16,
    api_port: u16,
}

impl Member {
    fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.join("runtime")
    }

    fn psql(&self, sql: &str) -> String {
        docker(&[
            "exec",
            &self.container,
            "psql",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "/var/run/postgresql",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
    }

    /// psql that may fail while the member restarts or changes role.
    fn try_psql(&self, sql: &str) -> Option<String> {
        let out = Command::new("docker")
            .args([
                "exec",
                &self.container,
                "psql",
                "-XAtq",
                "-h",
                "/var/run/postgresql",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// pg_controldata's "Database cluster state", read by a throwaway container from the
    /// stopped member's data directory.
    fn cluster_state(&self) -> String {
        let mount = format!("{}:/data", self.data_dir().display());
        let text = docker(&[
            "run",
            "--rm",
            "-v",
            &mount,
            self.image,
            "pg_controldata",
            "/data",
        ]);
        text.lines()
            .find_map(|l| l.strip_prefix("Database cluster state:"))
            .expect("pg_controldata names the cluster state")
            .trim()
            .to_string()
    }
}

/// The patroni.yml the control plane is to render (ADR 015): complete but for the connect
/// addresses, the passwords and `postgresql.bin_dir` (the image's own), so one file serves
/// every Postgres version's image.
fn patroni_yml(scope: &str, member: &str, etcd: &str) -> String {
    let tls = format!("sslmode: verify-full\n      sslrootcert: {RUN_DIR}/ca.crt");
    format!(
        r#"scope: {scope}
namespace: /berth-test/patroni/
name: {member}
etcd3:
  hosts: [{etcd}]
restapi:
  listen: 0.0.0.0:8008
  certfile: {RUN_DIR}/server.crt
  keyfile: {RUN_DIR}/server.key
  cafile: {RUN_DIR}/ca.crt
  authentication:
    username: patroni
watchdog:
  mode: "off"
bootstrap:
  dcs:
    # Patroni 4.0's least (3.0 took less); loop_wait + 2 * retry_timeout must not exceed it.
    ttl: 20
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_keep_size: 256MB
  initdb: [{{encoding: UTF8}}, {{locale: C.UTF-8}}]
  # Unused (postgresql.pg_hba wins), but Patroni 3.0's --validate-config demands it.
  pg_hba: [local all all trust]
postgresql:
  listen: 0.0.0.0:5432
  data_dir: /var/lib/postgresql/data
  use_unix_socket: true
  use_unix_socket_repl: true
  pg_hba:
    - local all all trust
    - local replication all trust
    - hostnossl all all 0.0.0.0/0 reject
    - hostnossl replication all 0.0.0.0/0 reject
    - hostssl all all 0.0.0.0/0 scram-sha-256
    - hostssl replication all 0.0.0.0/0 scram-sha-256
  parameters:
    unix_socket_directories: /var/run/postgresql
    password_encryption: scram-sha-256
    ssl: "on"
    ssl_cert_file: {RUN_DIR}/server.crt
    ssl_key_file: {RUN_DIR}/server.key
    ssl_ca_file: {RUN_DIR}/ca.crt
    ssl_min_protocol_version: TLSv1.2
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
      {tls}
    rewind:
      username: rewinder
      {tls}
"#
    )
}

fn write_private(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Cluster {
    members: Vec<Member>,
    http: reqwest::Client,
    gateway: IpAddr,
    _tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &self.members {
            let _ = Command::new("docker")
                .args(["rm", "-f", &m.container])
                .output();
        }
    }
}

impl Cluster {
    fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    fn api(&self, member: &str, path: &str) -> String {
        let m = self.member(member);
        format!("https://{}:{}{path}", self.gateway, m.api_port)
    }

    /// The cluster as a member's REST API sees it: member name -> (role, state, timeline).
    async fn view(&self, asked: &str) -> Option<Vec<(String, String, String, Option<u64>)>> {
        let resp = self
            .http
            .get(self.api(asked, "/cluster"))
            .send()
            .await
            .ok()?;
        let v: Value = resp.json().await.ok()?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["role"].as_str().unwrap_or_default().to_string(),
                        m["state"].as_str().unwrap_or_default().to_string(),
                        m["timeline"].as_u64(),
                    )
                })
                .collect(),
        )
    }

    /// Waits until `asked`'s REST API shows `leader` leading and running, and every other
    /// listed member a running replica on the leader's timeline.
    async fn wait_roles(&self, asked: &str, leader: &str, replicas: &[&str]) {
        eventually(
            |last| {
                format!(
                    "{leader} never led with {replicas:?} as running replicas; last view from {asked}: {last:?}\n{}",
                    self.logs()
                )
            },
            Duration::from_millis(500),
            async || {
                let view = self.view(asked).await.ok_or(None)?;
                let find = |n: &str| view.iter().find(|m| m.0 == n).cloned();
                let ok = match find(leader) {
                    Some((_, role, state, timeline)) if role == "leader" && state == "running" => {
                        replicas.iter().all(|r| {
                            matches!(find(r), Some((_, role, state, tl))
                                if role == "replica" && replica_up(&state) && tl == timeline)
                        })
                    }
                    _ => false,
                };
                if ok { Ok(()) } else { Err(Some(view)) }
            },
        )
        .await
    }

    /// Waits until `sql` answers `want` on `member`.
    async fn wait_sql(&self, member: &str, sql: &str, want: &str) {
        let m = self.member(member);
        eventually(
            |last| {
                format!(
                    "{member}: `{sql}` never answered {want:?} (last: {last:?})\n{}",
                    self.logs()
                )
            },
            Duration::from_millis(300),
            async || match m.try_psql(sql) {
                Some(got) if got == want => Ok(()),
                got => Err(got),
            },
        )
        .await
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let logs = container_logs(&m.container);
                let lines: Vec<&str> = logs.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- {} ---\n{tail}\n", m.container)
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_15_two_patroni_members_elect_replicate_switch_over_fail_over_and_rejoin() {
    two_members_elect_replicate_switch_over_fail_over_and_rejoin("berth/postgres:15", "15").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_17_two_patroni_members_elect_replicate_switch_over_fail_over_and_rejoin() {
    two_members_elect_replicate_switch_over_fail_over_and_rejoin("berth/postgres:17", "17").await;
}

/// The whole story on `image`, whose Postgres is `major` (server_version_num's first digits).
async fn two_members_elect_replicate_switch_over_fail_over_and_rejoin(
    image: &'static str,
    major: &str,
) {
    assert!(
        Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|o| o.status.success()),
        "{image} is missing: build it with deploy/images/build postgres"
    );
    let id = format!("{:08x}", rand::random::<u32>());
    let network = Network::create(&format!("berth-patroni-{id}"));
    let etcd = EtcdServer::start_also_on(network.gateway);
    let etcd_endpoint = etcd.endpoint_on(network.gateway);
    let etcd_host = etcd_endpoint.trim_start_matches("http://");

    // One certificate naming the host address both members advertise (and 127.0.0.1).
    let ca = pki::Authority::generate().unwrap();
    let server = ca
        .issue_server(
            &[network.gateway.to_string(), "127.0.0.1".to_string()],
            Duration::from_secs(86_400),
        )
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let scope = format!("pt-{id}");
    let mut members = Vec::new();
    for name in ["m1", "m2"] {
        let m = Member {
            name: name.to_string(),
            container: format!("berth-patroni-{id}-{name}"),
            image,
            dir: tmp.path().join(name),
            pg_port: free_port(),
            api_port: free_port(),
        };
        for d in [m.config_dir(), m.data_dir(), m.runtime_dir()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let c = m.config_dir();
        write_private(
            &c.join("patroni.yml"),
            &patroni_yml(&scope, name, etcd_host),
        );
        write_private(
            &c.join("berth.conf"),
            &format!(
                "superuser_password={SUPERUSER_PASSWORD}\nreplication_password={REPLICATION_PASSWORD}\n\
                 rewind_password={REWIND_PASSWORD}\nrestapi_password={RESTAPI_PASSWORD}\n\
                 connect_host={}\nconnect_ports=published\n",
                network.gateway
            ),
        );
        write_private(&c.join("server.crt"), &server.cert_pem);
        write_private(&c.join("server.key"), &server.key_pem);
        write_private(&c.join("ca.crt"), ca.cert_pem());
        members.push(m);
    }
    let cluster = Cluster {
        members,
        http: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        gateway: network.gateway,
        _tmp: tmp,
    };

    // Patroni's own validator accepts the rendered config (with the addresses, passwords and
    // bin_dir the entrypoint gives it), in a throwaway container of the image. The passwords
    // reach docker through its environment (`-e NAME`), not its arguments.
    let m1 = cluster.member("m1");
    let validated = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            &network.name,
            "--entrypoint",
            "sh",
        ])
        .envs([
            ("PATRONI_SUPERUSER_PASSWORD", SUPERUSER_PASSWORD),
            ("PATRONI_REPLICATION_PASSWORD", REPLICATION_PASSWORD),
            ("PATRONI_REWIND_PASSWORD", REWIND_PASSWORD),
            ("PATRONI_RESTAPI_PASSWORD", RESTAPI_PASSWORD),
        ])
        .args(["-e", "PATRONI_SUPERUSER_PASSWORD"])
        .args(["-e", "PATRONI_REPLICATION_PASSWORD"])
        .args(["-e", "PATRONI_REWIND_PASSWORD"])
        .args(["-e", "PATRONI_RESTAPI_PASSWORD"])
        .args([
            "-e",
            &format!(
                "PATRONI_POSTGRESQL_CONNECT_ADDRESS={}:{}",
                network.gateway, m1.pg_port
            ),
        ])
        .args([
            "-e",
            &format!(
                "PATRONI_RESTAPI_CONNECT_ADDRESS={}:{}",
                network.gateway, m1.api_port
            ),
        ])
        .args(["-v", &format!("{}:/c:ro", m1.config_dir().display()), image])
        .args([
            "-c",
            "PATRONI_POSTGRESQL_BIN_DIR=$BERTH_PG_BIN_DIR exec patroni --validate-config /c/patroni.yml",
        ])
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "patroni --validate-config: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let run = |m: &Member| {
        docker(&[
            "run",
            "-d",
            "--name",
            &m.container,
            "--network",
            &network.name,
            "-p",
            &format!("{}:5432", m.pg_port),
            "-p",
            &format!("{}:8008", m.api_port),
            "-v",
            &format!("{}:/etc/berth/postgres:ro", m.config_dir().display()),
            "-v",
            &format!("{}:/var/lib/postgresql/data", m.data_dir().display()),
            "-v",
            &format!("{}:/var/lib/berth/runtime:ro", m.runtime_dir().display()),
            image,
        ]);
        // As the agent does: the ports are told once the container runs, and it waits for them.
        std::fs::write(
            m.runtime_dir().join("published-ports"),
            format!("patroni={}\npostgres={}\n", m.api_port, m.pg_port),
        )
        .unwrap();
    };

    // m1 alone bootstraps the cluster and leads; it takes writes.
    run(cluster.member("m1"));
    cluster.wait_roles("m1", "m1", &[]).await;
    let (m1, m2) = (cluster.member("m1"), cluster.member("m2"));
    // Patroni ran the image's own Postgres, though patroni.yml names no bin_dir.
    assert_eq!(
        m1.psql("SELECT current_setting('server_version_num')::int / 10000"),
        major
    );
    m1.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)");

    // m2 clones it and streams from it over TLS, as the leader's pg_stat_replication shows.
    run(m2);
    cluster.wait_roles("m1", "m1", &["m2"]).await;
    cluster
        .wait_sql(
            "m1",
            "SELECT r.application_name || ':' || r.state || ':' || s.ssl \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
            "m2:streaming:true",
        )
        .await;
    cluster.wait_sql("m2", "SELECT count(*) FROM t", "3").await;
    assert_eq!(m2.psql("SELECT pg_is_in_recovery()"), "t");

    // The docker health check (berth-postgres-health: https /health) passes on both.
    for m in [m1, m2] {
        eventually(
            |last| format!("{} never turned healthy (last: {last:?})", m.container),
            Duration::from_millis(500),
            async || {
                let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &m.container]);
                if health == "healthy" {
                    Ok(())
                } else {
                    Err(Some(health))
                }
            },
        )
        .await;
    }

    // A switchover through m1's REST API (basic auth) makes m2 the leader with every row.
    let unauthenticated = cluster
        .http
        .post(cluster.api("m1", "/switchover"))
        .json(&json!({"leader": "m1", "candidate": "m2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unauthenticated.status(),
        401,
        "switchover needs the REST API password"
    );
    let switched = cluster
        .http
        .post(cluster.api("m1", "/switchover"))
        .basic_auth("patroni", Some(RESTAPI_PASSWORD))
        .json(&json!({"leader": "m1", "candidate": "m2"}))
        .send()
        .await
        .unwrap();
    let status = switched.status();
    let body = switched.text().await.unwrap();
    assert!(status.is_success(), "switchover: {status} {body}");
    cluster.wait_roles("m2", "m2", &["m1"]).await;
    assert_eq!(m2.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        m2.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3"
    );
    m2.psql("INSERT INTO t VALUES (4)");
    cluster.wait_sql("m1", "SELECT count(*) FROM t", "4").await;

    // The leader killed, m1 takes over within the ttl and takes writes. First m1 is cut off
    // from m2's WAL (its replication role may not log in, its stream ended) and m2 commits one
    // more row: m2's WAL goes past the point m1 is promoted at, as after a crash under
    // asynchronous replication, so m2 must be rewound to rejoin.
    m2.psql("ALTER ROLE replicator NOLOGIN");
    m2.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
    cluster
        .wait_sql("m2", "SELECT count(*) FROM pg_stat_replication", "0")
        .await;
    m2.psql("INSERT INTO t VALUES (99)");
    docker(&["kill", &m2.container]);
    cluster.wait_roles("m1", "m1", &[]).await;
    cluster
        .wait_sql("m1", "SELECT pg_is_in_recovery()", "f")
        .await;
    m1.psql("ALTER ROLE replicator LOGIN");
    m1.psql("INSERT INTO t VALUES (5)");

    // m2, started again, rejoins as m1's replica through pg_rewind, with m1's history.
    docker(&["start", &m2.container]);
    cluster.wait_roles("m1", "m1", &["m2"]).await;
    cluster
        .wait_sql(
            "m2",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
            "1,2,3,4,5",
        )
        .await;
    assert_eq!(m2.psql("SELECT pg_is_in_recovery()"), "t");
    cluster
        .wait_sql(
            "m1",
            "SELECT application_name || ':' || state FROM pg_stat_replication",
            "m2:streaming",
        )
        .await;
    assert!(
        container_logs(&m2.container).contains("running pg_rewind from m1"),
        "m2 rejoined without pg_rewind:\n{}",
        cluster.logs()
    );

    // docker stop (the image's SIGINT, made Patroni's SIGTERM) shuts both down cleanly.
    docker(&["stop", "-t", "60", &m2.container]);
    assert_eq!(m2.cluster_state(), "shut down in recovery");
    docker(&["stop", "-t", "60", &m1.container]);
    assert_eq!(m1.cluster_state(), "shut down");
    for m in [m1, m2] {
        let logs = container_logs(&m.container);
        for secret in [
            SUPERUSER_PASSWORD,
            REPLICATION_PASSWORD,
            REWIND_PASSWORD,
            RESTAPI_PASSWORD,
        ] {
            assert!(
                !logs.contains(secret),
                "a password reached {}'s log",
                m.container
            );
        }
    }
}
