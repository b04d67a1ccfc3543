//! Generated passwords of a database: its superuser, its replication role and the two
//! managed roles of each service. Kept in etcd with every password sealed; never returned
//! by the API, never logged, and handed to containers only through their config files.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseCredentials {
    pub superuser_password: String,
    pub replication_password: String,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceCredentials>,
    /// Each Postgres instance's TLS certificate and key, by instance id.
    #[serde(default)]
    pub postgres_certs: BTreeMap<String, crate::postgres_tls::PostgresCert>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceCredentials {
    pub ro_password: String,
    pub rw_password: String,
    /// Whether both roles were created on every node's primary.
    #[serde(default)]
    pub roles_created: bool,
    /// The service was removed but dropping its roles failed, at this spec generation and
    /// for this reason. The roles are kept and the drop is not retried until the spec
    /// changes again, so one failing cleanup cannot hold every later change back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_error: Option<(u64, String)>,
}

/// 32 characters from a 62-letter alphabet: about 190 bits, and nothing that needs quoting
/// in SQL, URLs or YAML.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl DatabaseCredentials {
    pub fn generate() -> Self {
        DatabaseCredentials {
            superuser_password: generate_password(),
            replication_password: generate_password(),
            services: BTreeMap::new(),
            postgres_certs: BTreeMap::new(),
        }
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
        "/var/run/postgresql",
        "-U",
        "postgres",
        "-d",
        database_name,
    ]
    .map(String::from)
    .to_vec()
}

/// SQL that creates (or updates) a service's two roles on a primary, idempotently.
/// `_ro` reads everything in the public schema; `_rw` also writes.
pub fn create_roles_sql(
    database_name: &str,
    service_id: &str,
    creds: &ServiceCredentials,
) -> String {
    let ro = role_name(service_id, "ro");
    let rw = role_name(service_id, "rw");
    let db = quote_ident(database_name);
    let mut sql = String::from("BEGIN;\n");
    for (role, password) in [(&ro, &creds.ro_password), (&rw, &creds.rw_password)] {
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
            pw = quote_literal(password),
        ));
    }
    let r = quote_ident(&rw);
    sql.push_str(&format!(
        "GRANT CREATE ON SCHEMA public TO {r};\n\
         GRANT INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {r};\n\
         GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {r};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {r};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, UPDATE ON SEQUENCES TO {r};\n"
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
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn ensure_services_adds_only_missing_ones() {
        let mut c = DatabaseCredentials::generate();
        assert!(c.ensure_services(["a", "b"]));
        let before = c.clone();
        assert!(!c.ensure_services(["a", "b"]));
        assert_eq!(c, before);
    }

    #[test]
    fn role_sql_quotes_what_it_embeds() {
        let creds = ServiceCredentials {
            ro_password: "p'1".into(),
            rw_password: "p2".into(),
            roles_created: false,
            drop_error: None,
        };
        let sql = create_roles_sql("my_db", "svc-1", &creds);
        assert!(sql.contains("PASSWORD 'p''1'"));
        assert!(sql.contains("\"svc_svc_1_rw\""));
        assert!(
            drop_roles_sql("svc-1", &[], "my_db").contains("DROP ROLE IF EXISTS \"svc_svc_1_ro\"")
        );
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
