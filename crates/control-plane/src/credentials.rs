//! Generated passwords of a database: its superuser, its replication role, the user of its
//! instances' Patroni REST API, the etcd user of each node's Patroni (ADR 017) and the two
//! managed roles of each service. Kept in etcd with every password sealed; never returned
//! by the API, never logged, and handed to containers only through their config files.
//! Passwords are [`SecretString`]s: `Debug` prints `[REDACTED]`, and reading one takes an
//! explicit `expose_secret()`.

use std::collections::BTreeMap;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Serializes a secret as its plain value: for the store, which seals it (ADR 005).
fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatabaseCredentials {
    #[serde(serialize_with = "expose")]
    pub superuser_password: SecretString,
    #[serde(serialize_with = "expose")]
    pub replication_password: SecretString,
    /// The password of Patroni's REST API user ([`crate::patroni::config::REST_API_USER`]),
    /// which switchovers and restarts need. Empty in documents stored before Patroni ran the
    /// instances (ADR 016): [`DatabaseCredentials::ensure_patroni`] fills it.
    #[serde(default, serialize_with = "expose")]
    pub restapi_password: SecretString,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceCredentials>,
    /// Each Postgres instance's TLS certificate and key, by instance id.
    #[serde(default)]
    pub postgres_certs: BTreeMap<String, crate::postgres_tls::PostgresCert>,
    /// The etcd user each node's Patroni logs in as, by node name (ADR 017); only while the
    /// control plane holds etcd credentials. A removed node's entry stays until the
    /// database goes: its user is dropped, and made again with it if the node comes back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub etcd_users: BTreeMap<String, EtcdUserCredentials>,
    /// The nodes whose primaries were made one database with pglogical (ADR 019): each a
    /// pglogical node subscribed to every other one. Empty until the control plane has
    /// configured replication; the nodes of the spec from then on (ADR 020).
    #[serde(default)]
    pub replicated_nodes: std::collections::BTreeSet<String>,
    /// For each replicated node, the hosts of its instances that the other nodes'
    /// subscriptions list (`plan::PlanInput::replicated_hosts`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replicated_hosts: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// The password of a node's etcd user; the name is
/// [`store::Keys::patroni_user`](store::Keys::patroni_user).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdUserCredentials {
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceCredentials {
    #[serde(serialize_with = "expose")]
    pub ro_password: SecretString,
    #[serde(serialize_with = "expose")]
    pub rw_password: SecretString,
    /// Whether both roles were created on every node's primary.
    #[serde(default)]
    pub roles_created: bool,
    /// The nodes the roles were last created on (on each one's primary; they replicate to
    /// the node's other instances). A node added later is missing here, so the roles are
    /// created there too before a service is pointed at it. Documents stored before ADR 016
    /// hold primaries' instance ids instead, which only costs one more (idempotent) creation.
    #[serde(default)]
    pub roles_on: std::collections::BTreeSet<String>,
    /// The service was removed but dropping its roles failed, at this spec generation and
    /// for this reason. The roles are kept and the drop is not retried until the spec
    /// changes again, so one failing cleanup cannot hold every later change back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_error: Option<(u64, String)>,
}

/// 32 characters from a 62-letter alphabet: about 190 bits, and nothing that needs quoting
/// in SQL, URLs or YAML (and which SASLprep leaves as it is, see [`crate::scram`]).
pub fn generate_password() -> SecretString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let password: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    password.into()
}

impl DatabaseCredentials {
    pub fn generate() -> Self {
        DatabaseCredentials {
            superuser_password: generate_password(),
            replication_password: generate_password(),
            restapi_password: generate_password(),
            services: BTreeMap::new(),
            postgres_certs: BTreeMap::new(),
            etcd_users: BTreeMap::new(),
            replicated_nodes: Default::default(),
            replicated_hosts: Default::default(),
        }
    }

    /// Generates a password for the etcd user of each of `nodes` that has none. Returns
    /// whether it did (then the document must be stored before any container is given it).
    pub fn ensure_etcd_users<'a>(&mut self, nodes: impl IntoIterator<Item = &'a str>) -> bool {
        let mut added = false;
        for node in nodes {
            self.etcd_users.entry(node.to_string()).or_insert_with(|| {
                added = true;
                EtcdUserCredentials {
                    password: generate_password(),
                }
            });
        }
        added
    }

    /// Generates the passwords Patroni needs that an older document lacks. Returns whether
    /// it did (then the document must be stored before any container is given them).
    pub fn ensure_patroni(&mut self) -> bool {
        if !self.restapi_password.expose_secret().is_empty() {
            return false;
        }
        self.restapi_password = generate_password();
        true
    }

    /// Adds passwords for services that have none yet. Returns whether anything was added
    /// (and so must be stored before any container is given the passwords).
    pub fn ensure_services<'a>(&mut self, service_ids: impl IntoIterator<Item = &'a str>) -> bool {
        let mut added = false;
        for id in service_ids {
            self.services.entry(id.to_string()).or_insert_with(|| {
                added = true;
                ServiceCredentials {
                    ro_password: generate_password(),
                    rw_password: generate_password(),
                    roles_created: false,
                    roles_on: Default::default(),
                    drop_error: None,
                }
            });
        }
        added
    }
}

/// The managed role of a service: `svc_{service_id}_{suffix}` with hyphens as underscores.
/// Postgres truncates identifiers at 63 bytes, which could make two services share a role,
/// so a longer name is cut and given a hash of the full name instead.
pub fn role_name(service_id: &str, suffix: &str) -> String {
    let full = format!("svc_{}_{suffix}", service_id.replace('-', "_"));
    if full.len() <= 63 {
        return full;
    }
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(full.as_bytes())[..4]);
    let keep = 63 - hash.len() - suffix.len() - 2;
    format!("{}_{hash}_{suffix}", &full[..keep])
}

/// How role SQL runs on a primary: psql as the superuser over the local socket, reading the
/// statements on stdin and stopping at the first error.
pub fn psql_argv(database_name: &str) -> Vec<String> {
    [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        crate::desired::POSTGRES_SOCKET_DIR,
        "-U",
        "postgres",
        "-d",
        database_name,
    ]
    .map(String::from)
    .to_vec()
}

/// The SCRAM-SHA-256 verifiers ([`crate::scram`]) of a service's two role passwords: what
/// Postgres is given instead of the passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleVerifiers {
    pub ro: String,
    pub rw: String,
}

impl RoleVerifiers {
    /// Fresh verifiers (new salts) of `creds`' passwords.
    pub fn of(creds: &ServiceCredentials) -> Self {
        RoleVerifiers {
            ro: crate::scram::verifier(creds.ro_password.expose_secret()),
            rw: crate::scram::verifier(creds.rw_password.expose_secret()),
        }
    }
}

/// SQL that creates (or updates) a service's two roles on a primary, idempotently.
/// `_ro` reads everything in the public schema; `_rw` also writes, and is a member of `_ro`:
/// PostgREST logs in as `_rw` and switches to its anonymous role, `_ro` by default, with
/// `SET LOCAL ROLE` for each anonymous request, which Postgres allows members only (a
/// repeated GRANT is a notice). Passwords are set as
/// SCRAM-SHA-256 verifiers, so the SQL holds no password: Postgres logs a failing
/// statement whole, and psql may echo it.
pub fn create_roles_sql(
    database_name: &str,
    service_id: &str,
    verifiers: &RoleVerifiers,
) -> String {
    let ro = role_name(service_id, "ro");
    let rw = role_name(service_id, "rw");
    let db = quote_ident(database_name);
    let mut sql = String::from("BEGIN;\n");
    for (role, verifier) in [(&ro, &verifiers.ro), (&rw, &verifiers.rw)] {
        let r = quote_ident(role);
        sql.push_str(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {r} LOGIN; END IF; END $$;\n\
             ALTER ROLE {r} WITH LOGIN PASSWORD {pw};\n\
             GRANT CONNECT ON DATABASE {db} TO {r};\n\
             GRANT USAGE ON SCHEMA public TO {r};\n\
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};\n\
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {r};\n\
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r};\n",
            lit = quote_literal(role),
            pw = quote_literal(verifier),
        ));
    }
    let r = quote_ident(&rw);
    sql.push_str(&format!(
        "GRANT CREATE ON SCHEMA public TO {r};\n\
         GRANT INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {r};\n\
         GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {r};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {r};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, UPDATE ON SEQUENCES TO {r};\n\
         GRANT {ro} TO {r};\n",
        ro = quote_ident(&ro),
    ));
    sql.push_str("COMMIT;\n");
    sql
}

/// A psql script that prints the name of every database of an instance that accepts
/// connections, one per line.
pub fn list_databases_sql() -> String {
    "\\pset format unaligned\n\\pset tuples_only on\n\
     SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1;\n"
        .to_string()
}

/// A psql script that revokes and drops a service's roles, idempotently. In each of
/// `databases` (every database of the instance: `REASSIGN OWNED` and `DROP OWNED` act on
/// the current database only), objects the roles own are handed to the superuser, so
/// dropping a service never destroys user data, and privileges granted to them are revoked;
/// then the roles are dropped from `home`, the database's own.
pub fn drop_roles_sql(service_id: &str, databases: &[String], home: &str) -> String {
    let roles = ["ro", "rw"].map(|suffix| role_name(service_id, suffix));
    let mut sql = String::new();
    for database in databases {
        sql.push_str(&format!("\\connect {}\n", quote_ident(database)));
        for role in &roles {
            let r = quote_ident(role);
            sql.push_str(&format!(
                "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN \
                 EXECUTE 'REASSIGN OWNED BY {esc} TO postgres'; EXECUTE 'DROP OWNED BY {esc}'; END IF; END $$;\n",
                lit = quote_literal(role),
                esc = r.replace('\'', "''"),
            ));
        }
    }
    sql.push_str(&format!("\\connect {}\n", quote_ident(home)));
    for role in &roles {
        sql.push_str(&format!("DROP ROLE IF EXISTS {};\n", quote_ident(role)));
    }
    sql
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_follow_the_seed_convention_and_stay_within_63_bytes() {
        assert_eq!(role_name("mcp-server", "ro"), "svc_mcp_server_ro");
        assert_eq!(role_name("mcp-server", "rw"), "svc_mcp_server_rw");
        let long = "a".repeat(70);
        let (ro, rw) = (role_name(&long, "ro"), role_name(&long, "rw"));
        assert!(ro.len() <= 63 && rw.len() <= 63, "{ro} {rw}");
        assert!(ro.ends_with("_ro") && rw.ends_with("_rw"));
        assert_ne!(
            role_name(&format!("{long}x"), "ro"),
            ro,
            "different ids must not collide"
        );
    }

    #[test]
    fn passwords_are_long_and_distinct() {
        let (a, b) = (generate_password(), generate_password());
        let (a, b) = (a.expose_secret(), b.expose_secret());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    /// A document stored before Patroni has no REST API password: one is generated once.
    #[test]
    fn an_older_document_gets_a_rest_api_password_once() {
        let c = DatabaseCredentials::generate();
        let mut stored = serde_json::to_value(&c).unwrap();
        stored.as_object_mut().unwrap().remove("restapi_password");
        let mut old: DatabaseCredentials = serde_json::from_value(stored).unwrap();
        assert!(old.restapi_password.expose_secret().is_empty());
        assert!(old.ensure_patroni());
        assert_eq!(old.restapi_password.expose_secret().len(), 32);
        let kept = old.restapi_password.expose_secret().to_string();
        assert!(!old.ensure_patroni());
        assert_eq!(old.restapi_password.expose_secret(), kept);
    }

    /// A node's etcd password is made once, is never in `Debug`, and is sealed at rest like
    /// the others (its key says `password`).
    #[test]
    fn etcd_users_are_made_once_and_sealed() {
        let mut c = DatabaseCredentials::generate();
        assert!(c.ensure_etcd_users(["n1", "n2"]));
        let n1 = c.etcd_users["n1"].password.expose_secret().to_string();
        assert!(!c.ensure_etcd_users(["n1"]));
        assert_eq!(c.etcd_users["n1"].password.expose_secret(), n1);
        assert!(!format!("{c:?}").contains(&n1));
        let serde_json::Value::Object(mut doc) = serde_json::to_value(&c).unwrap() else {
            panic!("an object")
        };
        store::SecretBox::from_key([3; 32]).seal(&mut doc, &spec::catalog::is_secret_key);
        let sealed = serde_json::to_string(&doc).unwrap();
        assert!(!sealed.contains(&n1), "{sealed}");
        // A document without etcd users (the default) stores none.
        let plain = serde_json::to_value(DatabaseCredentials::generate()).unwrap();
        assert!(plain.get("etcd_users").is_none());
    }

    #[test]
    fn ensure_services_adds_only_missing_ones() {
        let mut c = DatabaseCredentials::generate();
        assert!(c.ensure_services(["a", "b"]));
        let before = serde_json::to_value(&c).unwrap();
        assert!(!c.ensure_services(["a", "b"]));
        assert_eq!(serde_json::to_value(&c).unwrap(), before);
    }

    #[test]
    fn role_sql_quotes_what_it_embeds() {
        let creds = ServiceCredentials {
            ro_password: "p'1".into(),
            rw_password: "p2".into(),
            roles_created: false,
            roles_on: Default::default(),
            drop_error: None,
        };
        let sql = create_roles_sql("my_db", "svc-1", &RoleVerifiers::of(&creds));
        assert_eq!(
            sql.matches("PASSWORD 'SCRAM-SHA-256$4096:").count(),
            2,
            "{sql}"
        );
        assert!(!sql.contains("p''1") && !sql.contains("'p2'"), "{sql}");
        assert!(sql.contains("\"svc_svc_1_rw\""));
        assert!(
            sql.contains("GRANT \"svc_svc_1_ro\" TO \"svc_svc_1_rw\";"),
            "{sql}"
        );
        assert!(
            drop_roles_sql("svc-1", &[], "my_db").contains("DROP ROLE IF EXISTS \"svc_svc_1_ro\"")
        );
    }

    #[test]
    fn debug_shows_no_password() {
        let mut c = DatabaseCredentials::generate();
        c.ensure_services(["mcp"]);
        let debug = format!("{c:?}");
        let svc = &c.services["mcp"];
        for secret in [
            &c.superuser_password,
            &c.replication_password,
            &c.restapi_password,
            &svc.ro_password,
            &svc.rw_password,
        ] {
            assert!(!debug.contains(secret.expose_secret()), "{debug}");
        }
        // The store still gets the values, to seal them.
        let stored = serde_json::to_string(&c).unwrap();
        assert!(stored.contains(c.superuser_password.expose_secret()));
    }

    /// What the roles own or were granted is cleared in every database, not only the
    /// service's own: a grant in `postgres` would otherwise keep the role from being dropped.
    #[test]
    fn dropping_clears_every_database_before_the_roles_go() {
        let dbs = ["app".to_string(), "postgres".to_string()];
        let sql = drop_roles_sql("gx", &dbs, "app");
        let at = |needle: &str| {
            sql.find(needle)
                .unwrap_or_else(|| panic!("{needle} in {sql}"))
        };
        let in_postgres = at("\\connect \"postgres\"");
        assert!(at("\\connect \"app\"") < in_postgres);
        let cleared_there = sql[in_postgres..].find("DROP OWNED BY \"svc_gx_ro\"");
        assert!(cleared_there.is_some(), "{sql}");
        let drop = sql.rfind("DROP ROLE IF EXISTS \"svc_gx_ro\"").unwrap();
        assert!(
            drop > in_postgres && sql.rfind("\\connect \"app\"").unwrap() < drop,
            "{sql}"
        );
    }
}
