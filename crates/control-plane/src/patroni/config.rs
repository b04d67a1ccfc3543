//! Each Postgres instance's `patroni.yml`, rendered whole by a pure function: everything but
//! the two connect addresses and the passwords, which the image's entrypoint gives Patroni
//! in its environment (ADR 015). Keys suit Patroni 3.0 (bookworm, Postgres 15) and 4.0
//! (trixie, Postgres 17) alike.

use serde_json::json;

/// Where Postgres listens in the container.
pub const POSTGRES_PORT: u16 = 5432;
/// Where Patroni's REST API listens in the container.
pub const REST_API_PORT: u16 = 8008;
/// The image's run directory: the entrypoint copies the TLS files there, owned by postgres.
pub const RUN_DIR: &str = "/var/lib/postgresql/berth";
/// The REST API's user for the requests that change something (switchover, restart, ...).
pub const REST_API_USER: &str = "berth";
pub const REPLICATION_USER: &str = "replicator";

/// Seconds the leader key lives without renewal: how long a dead primary goes unnoticed.
/// Patroni's minimum (its default is 30). The default of `--patroni-ttl`
/// ([`PatroniTimings`]).
pub const TTL: u32 = 20;
/// Seconds between two runs of Patroni's loop (its default is 10). The default of
/// `--patroni-loop-wait`.
pub const LOOP_WAIT: u32 = 5;
/// Seconds Patroni retries the DCS and Postgres before it gives up a loop (default 10). The
/// default of `--patroni-retry-timeout`.
/// Patroni demotes a leader that cannot renew its key for this long, so `TTL` must exceed
/// `LOOP_WAIT + 2 * RETRY_TIMEOUT`: the key then never expires before its holder demoted,
/// and no two instances accept writes at once.
pub const RETRY_TIMEOUT: u32 = 5;

const _: () = assert!(TTL > LOOP_WAIT + 2 * RETRY_TIMEOUT);

/// The least `ttl` Patroni 4.0 accepts (its validator: `IntValidator(min=20)`); 3.0 checks none.
pub const MIN_TTL: u32 = 20;
/// The least `loop_wait` Patroni 4.0 accepts.
pub const MIN_LOOP_WAIT: u32 = 1;
/// The least `retry_timeout` Patroni 4.0 accepts.
pub const MIN_RETRY_TIMEOUT: u32 = 3;

/// Patroni's three timeouts, in seconds, as rendered into `bootstrap.dcs` of every
/// `patroni.yml` (the control-plane settings `--patroni-ttl`, `--patroni-loop-wait`,
/// `--patroni-retry-timeout`). Patroni reads `bootstrap.dcs` only when it initialises a node:
/// a node keeps the values it was initialised with in its DCS `config` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniTimings {
    /// Seconds the leader key lives without renewal: how long a dead primary goes unnoticed.
    pub ttl: u32,
    /// Seconds between two runs of Patroni's loop.
    pub loop_wait: u32,
    /// Seconds Patroni retries the DCS and Postgres before it gives up a loop.
    pub retry_timeout: u32,
}

impl Default for PatroniTimings {
    /// berth's: [`TTL`], [`LOOP_WAIT`], [`RETRY_TIMEOUT`].
    fn default() -> Self {
        PatroniTimings {
            ttl: TTL,
            loop_wait: LOOP_WAIT,
            retry_timeout: RETRY_TIMEOUT,
        }
    }
}

/// Why Patroni would not run with a [`PatroniTimings`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingsError {
    #[error("ttl {0} s is under {MIN_TTL} s, the least Patroni 4 accepts")]
    TtlTooShort(u32),
    #[error("loop_wait {0} s is under {MIN_LOOP_WAIT} s, the least Patroni 4 accepts")]
    LoopWaitTooShort(u32),
    #[error("retry_timeout {0} s is under {MIN_RETRY_TIMEOUT} s, the least Patroni 4 accepts")]
    RetryTimeoutTooShort(u32),
    /// Patroni's rule `loop_wait + 2 * retry_timeout <= ttl` (it would otherwise shrink
    /// `loop_wait` itself, with a warning).
    #[error(
        "ttl {ttl} s is under loop_wait + 2 x retry_timeout = {loop_wait} + 2 x {retry_timeout} s: \
         a leader cut off from etcd could still accept writes after its key expired and another \
         instance took over"
    )]
    TtlUnderLoop {
        ttl: u32,
        loop_wait: u32,
        retry_timeout: u32,
    },
}

impl PatroniTimings {
    /// Checks Patroni 4's minimums and its rule `loop_wait + 2 * retry_timeout <= ttl`, the
    /// one that keeps a leader that cannot renew its key from outliving it. Patroni's own
    /// defaults (30, 10, 10) sit exactly on that bound; berth's keep a margin.
    pub fn validate(&self) -> Result<(), TimingsError> {
        let PatroniTimings {
            ttl,
            loop_wait,
            retry_timeout,
        } = *self;
        if ttl < MIN_TTL {
            return Err(TimingsError::TtlTooShort(ttl));
        }
        if loop_wait < MIN_LOOP_WAIT {
            return Err(TimingsError::LoopWaitTooShort(loop_wait));
        }
        if retry_timeout < MIN_RETRY_TIMEOUT {
            return Err(TimingsError::RetryTimeoutTooShort(retry_timeout));
        }
        if u64::from(loop_wait) + 2 * u64::from(retry_timeout) > u64::from(ttl) {
            return Err(TimingsError::TtlUnderLoop {
                ttl,
                loop_wait,
                retry_timeout,
            });
        }
        Ok(())
    }
}

/// Patroni's DCS: the fleet's etcd, as containers reach it, and the timeouts Patroni runs
/// its loop and leader key with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dcs {
    /// Each node's Patroni logs in to etcd as the node's own user, whose role reaches only
    /// the node's keys (ADR 017): the control plane holds etcd credentials. The user and
    /// password go in `berth.conf`, never in `patroni.yml`.
    pub node_users: bool,
    /// `host:port` of each etcd member, as reachable from containers on every host.
    pub hosts: Vec<String>,
    /// `http` or `https`.
    pub protocol: String,
    /// berth's etcd prefix (`/berth`): Patroni's keys go under `{prefix}/patroni/`.
    pub prefix: String,
    /// `bootstrap.dcs`'s `ttl`, `loop_wait`, `retry_timeout` (berth's defaults from
    /// [`Dcs::from_urls`]).
    pub timings: PatroniTimings,
}

impl Dcs {
    /// The DCS from etcd client URLs (`http://10.0.0.1:2379`), with berth's default timings;
    /// a URL without a scheme is taken as `http`. Errors: URLs of mixed schemes, or none.
    pub fn from_urls(urls: &[String], prefix: &str) -> Result<Dcs, String> {
        let mut protocol = None;
        let mut hosts = Vec::new();
        for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
            if *protocol.get_or_insert(scheme) != scheme {
                return Err(format!(
                    "DCS endpoints mix schemes: {} (Patroni takes one protocol)",
                    urls.join(",")
                ));
            }
            hosts.push(rest.trim_end_matches('/').to_string());
        }
        let protocol = protocol.ok_or("no DCS endpoint given")?;
        Ok(Dcs {
            node_users: false,
            hosts,
            protocol: protocol.to_string(),
            prefix: prefix.to_string(),
            timings: PatroniTimings::default(),
        })
    }

    /// Patroni's `namespace` for a database: `/{prefix}/patroni/{database_id}`, with one
    /// leading slash as Patroni writes it (it joins `/`, namespace and scope and squeezes
    /// repeated slashes). A node's keys are under `{namespace}/{node}/`.
    pub fn namespace(&self, database_id: &str) -> String {
        format!("/{}/patroni/{database_id}", self.prefix.trim_matches('/')).replace("//", "/")
    }
}

/// One instance as Patroni knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub database_id: &'a str,
    /// The node: Patroni's `scope`, one cluster per node.
    pub node: &'a str,
    /// Patroni's member `name`, the key of its member entry in the DCS.
    pub instance_id: &'a str,
    /// The spec's database, created on the node's first primary once initialised.
    pub database_name: &'a str,
    /// The manifest's Postgres version of the image (`15`, `17`): which settings it knows.
    pub postgres_version: &'a str,
    /// The node has a `pgbackrest.conf`: its primary archives WAL there
    /// ([`super::archiving`]).
    pub archiving: bool,
    /// The node starts from a backup ([`super::restore`]) instead of `initdb`.
    pub restore: Option<super::restore::Restore<'a>>,
}

fn run_file(name: &str) -> String {
    format!("{RUN_DIR}/{name}")
}

/// `patroni.yml` for `member`, as YAML text (in its JSON form). Pure: the same inputs give
/// the same bytes.
pub fn render(member: &Member, dcs: &Dcs) -> String {
    let ca = run_file("ca.crt");
    // Every network login is a password over TLS, checked against the fleet CA; the local
    // socket (Patroni's own connections, psql of the control plane through the agent) trusts.
    let hba = [
        "local all all trust",
        "local replication all trust",
        "hostnossl all all 0.0.0.0/0 reject",
        "hostnossl all all ::/0 reject",
        "hostnossl replication all 0.0.0.0/0 reject",
        "hostnossl replication all ::/0 reject",
        "hostssl all all 0.0.0.0/0 scram-sha-256",
        "hostssl all all ::/0 scram-sha-256",
        "hostssl replication all 0.0.0.0/0 scram-sha-256",
        "hostssl replication all ::/0 scram-sha-256",
    ];
    // Patroni appends the connection string of the new cluster's local socket.
    let create_database = format!(
        "psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE DATABASE \"{}\"'",
        member.database_name
    );
    let tls_client = json!({"sslmode": "verify-full", "sslrootcert": ca});
    let mut superuser = json!({"username": "postgres"});
    let mut replication = json!({"username": REPLICATION_USER});
    for auth in [&mut superuser, &mut replication] {
        auth.as_object_mut()
            .expect("an object")
            .extend(tls_client.as_object().expect("an object").clone());
    }
    let doc = json!({
        "scope": member.node,
        "namespace": dcs.namespace(member.database_id),
        "name": member.instance_id,
        "etcd3": {
            "hosts": dcs.hosts,
            "protocol": dcs.protocol,
            // The hosts are all there is: etcd's advertised client URLs may be addresses
            // containers cannot reach (127.0.0.1).
            "use_proxies": true,
        },
        "restapi": {
            "listen": format!("0.0.0.0:{REST_API_PORT}"),
            "certfile": run_file("server.crt"),
            "keyfile": run_file("server.key"),
            "cafile": ca,
            "authentication": {"username": REST_API_USER},
        },
        // Patroni's own requests to other members' REST API check their certificate too.
        "ctl": {"cacert": ca},
        "bootstrap": {
            "dcs": {
                "ttl": dcs.timings.ttl,
                "loop_wait": dcs.timings.loop_wait,
                "retry_timeout": dcs.timings.retry_timeout,
                "maximum_lag_on_failover": plan::MAX_TAKEOVER_LAG_BYTES,
                "postgresql": {
                    "use_pg_rewind": true,
                    "use_slots": true,
                    // Parameters Patroni keeps equal on every member come from the DCS.
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        // A replica that fell behind catches up without a new base backup.
                        "wal_keep_size": "256MB",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            "post_bootstrap": create_database,
        },
        "postgresql": {
            "listen": format!("0.0.0.0:{POSTGRES_PORT}"),
            "data_dir": crate::desired::POSTGRES_DATA_DIR,
            // No bin_dir: the image knows its Postgres version and gives Patroni its own
            // (ADR 015), so one file suits every version.
            "use_unix_socket": true,
            "use_unix_socket_repl": true,
            "authentication": {
                "superuser": superuser,
                "replication": replication,
            },
            "pg_hba": hba,
            // A new replica's base backup starts at once instead of waiting for the
            // leader's next (spread) checkpoint, which takes minutes on an idle database.
            "basebackup": [{"checkpoint": "fast"}],
            "parameters": {
                "unix_socket_directories": crate::desired::POSTGRES_SOCKET_DIR,
                "password_encryption": "scram-sha-256",
                "ssl": "on",
                "ssl_cert_file": run_file("server.crt"),
                "ssl_key_file": run_file("server.key"),
                "ssl_ca_file": ca,
                "ssl_min_protocol_version": "TLSv1.2",
            },
        },
        "watchdog": {"mode": "off"},
    });
    // Replication between nodes (ADR 019) overrides the level and sizes above.
    let mut doc = doc;
    doc["bootstrap"]["dcs"]["postgresql"]["parameters"]
        .as_object_mut()
        .expect("an object")
        .extend(super::pglogical::dcs_parameters());
    doc["bootstrap"]["dcs"]["ignore_slots"] = super::pglogical::ignore_slots();
    doc["postgresql"]["parameters"]
        .as_object_mut()
        .expect("an object")
        .extend(super::pglogical::local_parameters(member.postgres_version));
    if member.archiving {
        super::archiving::apply(&mut doc);
    }
    if let Some(restore) = &member.restore {
        super::restore::apply(&mut doc, restore, member.database_name);
    }
    // JSON is YAML, and every string in it is quoted: Patroni's YAML 1.1 reader would take
    // a bare `on` or `off` for a boolean.
    let body = serde_json::to_string_pretty(&doc).expect("a JSON value serialises");
    format!(
        "# Written by berth's control plane for instance {}; the connect addresses and the\n\
         # passwords come from the entrypoint (ADR 015, ADR 016). YAML in its JSON form.\n{body}\n",
        member.instance_id
    )
}

/// The Docker health check of a Patroni instance: its REST API's `GET /liveness`, 200 while
/// Patroni's loop runs, whatever Postgres does meanwhile. Not `/health` (Postgres runs): the
/// agent replaces a container that turns unhealthy, and Patroni stops Postgres on purpose
/// (a rewind, a demotion, a restart), which must not cost the container. `alias` is a name
/// the instance's certificate carries; the request goes to the local port.
pub fn health_check(alias: &str) -> Vec<String> {
    let url = format!("https://{alias}:{REST_API_PORT}/liveness");
    [
        "CMD",
        "curl",
        "--silent",
        "--fail",
        "--max-time",
        "2",
        "--output",
        "/dev/null",
        "--cacert",
        &run_file("ca.crt"),
        "--resolve",
        &format!("{alias}:{REST_API_PORT}:127.0.0.1"),
        &url,
    ]
    .map(String::from)
    .to_vec()
}

/// Whether the value at `path` (keys separated by `.`) of a rendered file is `expected`;
/// for tests.
#[cfg(test)]
fn at<'a>(doc: &'a serde_yaml::Value, path: &str) -> &'a serde_yaml::Value {
    path.split('.').fold(doc, |v, k| &v[k])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcs() -> Dcs {
        Dcs::from_urls(
            &["http://10.213.3.1:2379".into(), "10.213.3.2:2379".into()],
            "/berth",
        )
        .unwrap()
    }

    fn member() -> Member<'static> {
        Member {
            database_id: "db1",
            node: "n1",
            instance_id: "db1-n1-host-1",
            database_name: "app",
            postgres_version: "17",
            archiving: false,
            restore: None,
        }
    }

    fn parsed() -> serde_yaml::Value {
        serde_yaml::from_str(&render(&member(), &dcs())).unwrap()
    }

    #[test]
    fn dcs_endpoints_and_namespace() {
        let d = dcs();
        assert_eq!(d.hosts, ["10.213.3.1:2379", "10.213.3.2:2379"]);
        assert_eq!(d.protocol, "http");
        assert_eq!(d.namespace("db1"), "/berth/patroni/db1");
        let bare = Dcs {
            prefix: "berth/".into(),
            ..d
        };
        assert_eq!(bare.namespace("db1"), "/berth/patroni/db1");
        assert!(Dcs::from_urls(&["http://a:1".into(), "https://b:1".into()], "/b").is_err());
        assert!(Dcs::from_urls(&[], "/b").is_err());
    }

    /// The contract of ADR 015: what the image expects in the file, and nothing it supplies.
    #[test]
    fn the_file_holds_what_the_image_expects_and_no_secret() {
        let doc = parsed();
        let s = |path: &str| {
            at(&doc, path)
                .as_str()
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(s("scope"), "n1");
        assert_eq!(s("name"), "db1-n1-host-1");
        assert_eq!(s("namespace"), "/berth/patroni/db1");
        assert_eq!(s("postgresql.listen"), "0.0.0.0:5432");
        assert_eq!(s("postgresql.data_dir"), "/var/lib/postgresql/data");
        assert!(
            at(&doc, "postgresql.bin_dir").is_null(),
            "the image names its own"
        );
        assert_eq!(s("restapi.listen"), "0.0.0.0:8008");
        assert_eq!(s("restapi.authentication.username"), "berth");
        assert_eq!(
            s("restapi.certfile"),
            "/var/lib/postgresql/berth/server.crt"
        );
        assert_eq!(
            s("postgresql.authentication.replication.sslmode"),
            "verify-full"
        );
        assert_eq!(s("postgresql.parameters.ssl"), "on");
        assert_eq!(s("watchdog.mode"), "off");
        assert_eq!(
            at(&doc, "postgresql.basebackup")[0]["checkpoint"].as_str(),
            Some("fast")
        );
        assert_eq!(at(&doc, "etcd3.use_proxies").as_bool(), Some(true));
        assert_eq!(
            at(&doc, "bootstrap.dcs.postgresql.use_pg_rewind").as_bool(),
            Some(true)
        );
        assert_eq!(
            at(&doc, "bootstrap.dcs.postgresql.parameters.wal_log_hints").as_str(),
            Some("on")
        );
        assert!(s("bootstrap.post_bootstrap").contains("CREATE DATABASE \"app\""));
        // Patroni's keys that the entrypoint sets are absent, not empty.
        let text = render(&member(), &dcs());
        for absent in ["connect_address\"", "password\""] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        let hba: Vec<&str> = at(&doc, "postgresql.pg_hba")
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|l| l.as_str())
            .collect();
        assert!(
            hba.iter().all(|l| l.starts_with("local")
                || l.starts_with("hostssl")
                || l.ends_with("reject"))
        );
    }

    #[test]
    fn timeouts_leave_no_two_leaders() {
        let doc = parsed();
        let n = |k: &str| at(&doc, &format!("bootstrap.dcs.{k}")).as_u64().unwrap();
        assert!(n("ttl") > n("loop_wait") + 2 * n("retry_timeout"));
        assert_eq!(n("maximum_lag_on_failover"), plan::MAX_TAKEOVER_LAG_BYTES);
    }

    #[test]
    fn the_timings_are_rendered_as_set() {
        let slow = Dcs {
            timings: PatroniTimings {
                ttl: 30,
                loop_wait: 10,
                retry_timeout: 10,
            },
            ..dcs()
        };
        let doc: serde_yaml::Value = serde_yaml::from_str(&render(&member(), &slow)).unwrap();
        let n = |k: &str| at(&doc, &format!("bootstrap.dcs.{k}")).as_u64().unwrap();
        assert_eq!((n("ttl"), n("loop_wait"), n("retry_timeout")), (30, 10, 10));
        assert_eq!(dcs().timings, PatroniTimings::default());
    }

    #[test]
    fn timings_patroni_would_refuse_are_refused() {
        let t = |ttl, loop_wait, retry_timeout| {
            PatroniTimings {
                ttl,
                loop_wait,
                retry_timeout,
            }
            .validate()
        };
        use TimingsError::*;
        let table = [
            ((TTL, LOOP_WAIT, RETRY_TIMEOUT), Ok(())),
            // Patroni's defaults: exactly on its bound.
            ((30, 10, 10), Ok(())),
            ((20, 1, 3), Ok(())),
            ((60, 10, 25), Ok(())),
            ((19, 1, 3), Err(TtlTooShort(19))),
            ((0, 0, 0), Err(TtlTooShort(0))),
            ((20, 0, 5), Err(LoopWaitTooShort(0))),
            ((20, 5, 2), Err(RetryTimeoutTooShort(2))),
            (
                (20, 10, 6),
                Err(TtlUnderLoop {
                    ttl: 20,
                    loop_wait: 10,
                    retry_timeout: 6,
                }),
            ),
            (
                (30, 11, 10),
                Err(TtlUnderLoop {
                    ttl: 30,
                    loop_wait: 11,
                    retry_timeout: 10,
                }),
            ),
            // No overflow at the extremes.
            (
                (u32::MAX, u32::MAX, u32::MAX),
                Err(TtlUnderLoop {
                    ttl: u32::MAX,
                    loop_wait: u32::MAX,
                    retry_timeout: u32::MAX,
                }),
            ),
        ];
        for ((ttl, loop_wait, retry_timeout), want) in table {
            assert_eq!(
                t(ttl, loop_wait, retry_timeout),
                want,
                "ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout}"
            );
        }
    }

    #[test]
    fn rendering_is_stable() {
        assert_eq!(render(&member(), &dcs()), render(&member(), &dcs()));
        let other = Member {
            node: "n2",
            ..member()
        };
        assert_ne!(render(&member(), &dcs()), render(&other, &dcs()));
    }

    #[test]
    fn the_health_check_asks_patroni_for_liveness_over_tls() {
        let check = health_check("n1-host-1");
        assert_eq!(check[0], "CMD");
        assert!(check.contains(&"https://n1-host-1:8008/liveness".to_string()));
        assert!(check.contains(&"n1-host-1:8008:127.0.0.1".to_string()));
    }
}
