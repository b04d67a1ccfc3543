//! Replication between the nodes of a database with pglogical (issue 16, ADR 019): the
//! Postgres settings every instance needs ([`dcs_parameters`], [`local_parameters`], which
//! [`super::config::render`] puts in `patroni.yml`), and the SQL the control plane runs on
//! each node's primary to make the nodes one database ([`node_sql`], [`subscribe_sql`]).
//!
//! Every node publishes its tables (replication sets `default`, `default_insert_only`,
//! `ddl_sql`) and subscribes to every other node with `forward_origins = '{}'`: a change is
//! applied once on each other node and goes no further, so nothing loops. Conflicts are
//! resolved `last_update_wins` on commit timestamps (`track_commit_timestamp = on`).

use serde_json::{Map, Value, json};

use super::config::RUN_DIR;

/// The most nodes a database's replication has room for: each node's primary keeps one
/// logical slot and one walsender per other node, and runs one apply worker per other node.
/// The settings are rendered into `bootstrap.dcs`, which Patroni reads once, when the node
/// is initialised, so they are sized for this many up front.
pub const MAX_NODES: u32 = 16;

/// Patroni's own physical slots and walsenders (one per other instance of a node), besides
/// pglogical's: what berth set before replication between nodes.
const PATRONI_SLOTS: u32 = 10;

/// The file of the provider password every subscription's connection reads (libpq's
/// `passfile`): in the data directory, so it outlives the container and follows a base
/// backup, and never in a DSN, which pglogical stores in its catalog and prints in errors.
pub const PASSFILE: &str = "/var/lib/postgresql/data/berth-pglogical.pgpass";

/// The DDL replication of ADR 019: a function that queues each DDL command for the other
/// nodes, and the event triggers that call it. Idempotent.
pub const DDL_SQL: &str = include_str!("pglogical_ddl.sql");

/// The session setting that keeps a session's DDL on its own node: berth's role
/// statements, which it runs on every node itself, set it.
pub const LOCAL_DDL: &str = "SET berth.ddl_replication = off;\n";

/// Parameters Patroni keeps equal on every member, which it takes from the DCS alone
/// (`bootstrap.dcs.postgresql.parameters`).
pub fn dcs_parameters() -> Map<String, Value> {
    let slots = PATRONI_SLOTS + MAX_NODES;
    json!({
        "wal_level": "logical",
        // Commit timestamps decide which of two conflicting updates wins.
        "track_commit_timestamp": "on",
        "max_replication_slots": slots,
        "max_wal_senders": slots,
        // pglogical's supervisor, a manager per database and an apply worker per
        // subscription, plus a sync worker now and then, beside Postgres's own (8 by default).
        "max_worker_processes": 8 + 2 + MAX_NODES + 4,
    })
    .as_object()
    .expect("an object")
    .clone()
}

/// Patroni's `ignore_slots` (in `bootstrap.dcs`): Patroni drops every inactive slot it
/// does not manage when it rereads the slots (its start, a restart, a demotion), on the
/// primary and on replicas alike; pglogical's slots, and the copies `pg_failover_slots`
/// keeps on replicas, are not Patroni's.
pub fn ignore_slots() -> Value {
    json!([{"type": "logical", "plugin": "pglogical_output"}])
}

/// How often, in milliseconds, a replica copies the primary's logical slots
/// (`pg_failover_slots.worker_nap_time`; the extension's default is a minute): a slot
/// created less than this long before a failover is not on the new primary yet.
pub const FAILOVER_SLOTS_NAP_MS: u32 = 5_000;

/// Parameters of each instance's own `postgresql.parameters`, for the image of
/// `postgres_version` (the manifest's version: `15`, `17`).
///
/// On 17, `pg_failover_slots` (trixie's `postgresql-17-pg-failover-slots`) copies every
/// logical slot of the primary to its replicas, so that after a failover inside a node the
/// other nodes' subscriptions resume on the new primary where they stopped (issue 16,
/// item 4). It needs `hot_standby_feedback` (the primary keeps the catalog rows the
/// copies still decode) and a `primary_slot_name`, which Patroni's `use_slots` sets.
/// Bookworm packages no `pg_failover_slots` for 15: there a failover inside a node loses
/// the slots (ADR 020).
pub fn local_parameters(postgres_version: &str) -> Map<String, Value> {
    let modern = major(postgres_version).is_some_and(|m| m >= 17);
    let libraries = if modern {
        "pglogical,pg_failover_slots"
    } else {
        "pglogical"
    };
    let mut p = json!({
        "shared_preload_libraries": libraries,
        "pglogical.conflict_resolution": "last_update_wins",
    })
    .as_object()
    .expect("an object")
    .clone();
    // Postgres 17.11 (and 15.19) allow only the output plugins this lists; 15.18, in the
    // bookworm image, does not know the parameter and would not start with it.
    if modern {
        p.insert(
            "output_plugin_libraries".into(),
            json!("pgoutput, test_decoding, pglogical_output"),
        );
        p.insert("hot_standby_feedback".into(), json!("on"));
        p.insert(
            "pg_failover_slots.worker_nap_time".into(),
            json!(FAILOVER_SLOTS_NAP_MS),
        );
    }
    p
}

fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// pglogical's name of `subscriber`'s subscription to `provider` (node names). Unique
/// across the database, not just on the subscriber: pglogical names the provider's slot
/// after the provider and the subscription alone, so two subscribers of one provider need
/// two names.
pub fn subscription_name(provider: &str, subscriber: &str) -> String {
    format!("berth_{subscriber}_from_{provider}")
}

/// What a subscriber dials a provider node at: every instance of the node, as
/// [`plan::routing::reach`] says the subscriber reaches it, and libpq keeps the one that
/// accepts writes (`target_session_attrs=read-write`): after a failover inside the provider
/// node its subscribers find the new primary without a change to the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider<'a> {
    /// The provider's node name (its pglogical node name).
    pub node: &'a str,
    /// The subscribing node's name.
    pub subscriber: &'a str,
    /// `(address, port)` of each instance of the provider node; at least one.
    pub hosts: &'a [(String, u16)],
}

/// The libpq connection string to `provider`'s database `database_name`: the superuser,
/// its password from [`PASSFILE`], TLS checked against the fleet CA by the name the
/// instance's certificate carries (its alias, or its host's address), every instance of
/// the node listed and the writable one kept.
pub fn provider_dsn(provider: &Provider, database_name: &str) -> String {
    let list = |f: &dyn Fn(&(String, u16)) -> String| {
        provider.hosts.iter().map(f).collect::<Vec<_>>().join(",")
    };
    [
        ("host", list(&|(h, _)| h.clone())),
        ("port", list(&|(_, p)| p.to_string())),
        ("dbname", database_name.to_string()),
        ("user", "postgres".to_string()),
        ("passfile", PASSFILE.to_string()),
        ("sslmode", "verify-full".to_string()),
        ("sslrootcert", format!("{RUN_DIR}/ca.crt")),
        ("connect_timeout", "10".to_string()),
        ("target_session_attrs", "read-write".to_string()),
        ("application_name", "berth_pglogical".to_string()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// The content of [`PASSFILE`]: the superuser's password for every host, port and database.
pub fn passfile(superuser_password: &str) -> String {
    let escaped = superuser_password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:postgres:{escaped}\n")
}

/// The argv of the command (run as `postgres` in the instance) that writes [`PASSFILE`]
/// from its stdin, readable by `postgres` alone as libpq requires.
pub fn passfile_argv() -> Vec<String> {
    [
        "sh",
        "-c",
        &format!("umask 077 && cat > {PASSFILE}.new && mv {PASSFILE}.new {PASSFILE}"),
    ]
    .map(String::from)
    .to_vec()
}

/// The SQL that makes `node`'s primary a pglogical node (the spec's database, psql, as
/// the superuser): the extension, the node (its own interface is the local socket, which
/// only this instance uses), and the DDL replication. Idempotent.
pub fn node_sql(node: &str, database_name: &str) -> String {
    format!("{}{DDL_SQL}", local_node_sql(node, database_name))
}

/// The extension and the pglogical node alone, without the DDL replication: what a node
/// that joins a live database needs before its copy, which brings the DDL replication's
/// functions and triggers with the rest of the structure. Idempotent.
pub fn local_node_sql(node: &str, database_name: &str) -> String {
    let local = format!(
        "host=/var/run/postgresql port={} dbname={} user=postgres",
        super::config::POSTGRES_PORT,
        conninfo_value(database_name)
    );
    format!(
        "CREATE EXTENSION IF NOT EXISTS pglogical;\n\
         DO $berth$ BEGIN\n\
           IF NOT EXISTS (SELECT 1 FROM pglogical.local_node) THEN\n\
             PERFORM pglogical.create_node(node_name := {node}, dsn := {local});\n\
           END IF;\n\
         END $berth$;\n",
        node = literal(node),
        local = literal(&local),
    )
}

/// What a subscription copies when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nothing: the subscriber already holds what the provider held (nodes created
    /// together, which start empty, or a node already copied). Forwards no origin but the
    /// provider's own: no loops.
    Empty,
    /// The provider's structure and data (pglogical's `pg_dump`/`pg_restore` and `COPY`
    /// from one snapshot), and every change the provider applies from then on, whatever
    /// its origin: changes of the other nodes that reach the provider after its snapshot
    /// reach the new node too, until [`stop_forwarding_sql`] once the new node subscribes
    /// to each of them.
    Seed,
}

/// The SQL that subscribes the node it runs on to `provider`, idempotently: a
/// subscription that exists is not made again (a [`Start::Seed`] that copied stays as it
/// is; a copy into a node that holds the data would fail on the first object). An existing
/// subscription with another connection string (the provider node's instances changed) is
/// moved to a new interface of the provider with this one
/// (`pglogical.alter_node_add_interface`, `alter_subscription_interface`), which restarts
/// it where it stopped.
pub fn subscribe_sql(provider: &Provider, database_name: &str, start: Start) -> String {
    let name = subscription_name(provider.node, provider.subscriber);
    let dsn = provider_dsn(provider, database_name);
    // Named after its connection string, so that each string has one interface.
    let interface = format!("berth_{:016x}", fnv1a(dsn.as_bytes()));
    let (copy, forward) = match start {
        Start::Empty => ("false", "'{}'"),
        Start::Seed => ("true", "'{all}'"),
    };
    format!(
        "DO $berth$ BEGIN\n\
           IF NOT EXISTS (SELECT 1 FROM pglogical.subscription WHERE sub_name = {name}) THEN\n\
             PERFORM pglogical.create_subscription(\n\
               subscription_name := {name},\n\
               provider_dsn := {dsn},\n\
               replication_sets := ARRAY['default', 'default_insert_only', 'ddl_sql'],\n\
               synchronize_structure := {copy},\n\
               synchronize_data := {copy},\n\
               forward_origins := {forward});\n\
           ELSIF (SELECT i.if_dsn FROM pglogical.subscription s \
               JOIN pglogical.node_interface i ON i.if_id = s.sub_origin_if \
               WHERE s.sub_name = {name}) IS DISTINCT FROM {dsn} THEN\n\
             IF NOT EXISTS (SELECT 1 FROM pglogical.node_interface i \
                 JOIN pglogical.node n ON n.node_id = i.if_nodeid \
                 WHERE n.node_name = {node} AND i.if_name = {interface}) THEN\n\
               PERFORM pglogical.alter_node_add_interface({node}, {interface}, {dsn});\n\
             END IF;\n\
             PERFORM pglogical.alter_subscription_interface({name}, {interface});\n\
           END IF;\n\
         END $berth$;\n",
        name = literal(&name),
        dsn = literal(&dsn),
        node = literal(provider.node),
        interface = literal(&interface),
    )
}

/// The SQL that makes the local node's subscription to `provider` forward the provider's
/// own changes alone, as every subscription but a [`Start::Seed`] does, and restarts it
/// (from where it stopped) so that its walsender decodes with the new setting. pglogical
/// has no function for it: its `sub_forward_origins` column (NULL for none, as
/// `create_subscription` stores an empty list) is what its apply worker reads when it
/// starts. Idempotent.
pub fn stop_forwarding_sql(provider: &str, subscriber: &str) -> String {
    let name = literal(&subscription_name(provider, subscriber));
    format!(
        "DO $berth$ BEGIN\n\
           IF EXISTS (SELECT 1 FROM pglogical.subscription WHERE sub_name = {name} \
               AND coalesce(cardinality(sub_forward_origins), 0) > 0) THEN\n\
             UPDATE pglogical.subscription SET sub_forward_origins = NULL WHERE sub_name = {name};\n\
             PERFORM pglogical.alter_subscription_disable({name}, true);\n\
             PERFORM pglogical.alter_subscription_enable({name}, true);\n\
           END IF;\n\
         END $berth$;\n"
    )
}

/// FNV-1a, 64 bits: a stable name for a string, not a secret (`std`'s hasher is seeded
/// per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A libpq conninfo value: quoted, with `\` and `'` escaped, when it is empty or holds a
/// space or either of those.
pub(crate) fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_leave_room_for_every_peer() {
        let p = dcs_parameters();
        assert_eq!(p["wal_level"], "logical");
        assert_eq!(p["track_commit_timestamp"], "on");
        let n = |k: &str| p[k].as_u64().unwrap();
        // Patroni's slots and walsenders, plus one per other node.
        assert!(n("max_replication_slots") >= u64::from(PATRONI_SLOTS + MAX_NODES - 1));
        assert_eq!(n("max_wal_senders"), n("max_replication_slots"));
        assert!(n("max_worker_processes") >= u64::from(8 + 2 + MAX_NODES - 1));
    }

    #[test]
    fn output_plugins_are_allowed_only_where_postgres_knows_the_setting() {
        let table = [
            ("17", true),
            ("17.12", true),
            ("18", true),
            ("15", false),
            ("", false),
        ];
        for (version, listed) in table {
            let p = local_parameters(version);
            assert!(
                p["shared_preload_libraries"]
                    .as_str()
                    .unwrap()
                    .starts_with("pglogical"),
                "{version}"
            );
            // Failover slots where the image has them (17), with what they need.
            assert_eq!(
                p["shared_preload_libraries"]
                    .as_str()
                    .unwrap()
                    .contains("pg_failover_slots"),
                listed,
                "{version}"
            );
            assert_eq!(p.get("hot_standby_feedback").is_some(), listed, "{version}");
            assert_eq!(
                p["pglogical.conflict_resolution"], "last_update_wins",
                "{version}"
            );
            assert_eq!(
                p.get("output_plugin_libraries")
                    .and_then(Value::as_str)
                    .is_some_and(|l| l.contains("pglogical_output") && l.contains("pgoutput")),
                listed,
                "{version}"
            );
        }
    }

    /// What `patroni.yml` says, per image: the level and sizes in `bootstrap.dcs`, the
    /// library and the conflict rule in each instance's own parameters.
    #[test]
    fn patroni_yml_carries_the_settings_for_each_version() {
        use crate::patroni::config::{Dcs, Member, render};
        let dcs = Dcs::from_urls(&["http://10.0.0.1:2379".into()], "/berth").unwrap();
        for (version, plugins) in [("17", true), ("15", false)] {
            let member = Member {
                database_id: "db1",
                node: "n1",
                instance_id: "db1-n1-host-1",
                database_name: "app",
                postgres_version: version,
                archiving: false,
                restore: None,
            };
            let doc: serde_yaml::Value = serde_yaml::from_str(&render(&member, &dcs)).unwrap();
            let global = &doc["bootstrap"]["dcs"]["postgresql"]["parameters"];
            let local = &doc["postgresql"]["parameters"];
            assert_eq!(global["wal_level"].as_str(), Some("logical"), "{version}");
            assert_eq!(global["track_commit_timestamp"].as_str(), Some("on"));
            assert_eq!(
                global["max_replication_slots"].as_u64(),
                Some(u64::from(PATRONI_SLOTS + MAX_NODES))
            );
            // Patroni's own settings stay.
            assert_eq!(global["wal_log_hints"].as_str(), Some("on"));
            assert_eq!(
                local["shared_preload_libraries"].as_str(),
                Some(if plugins {
                    "pglogical,pg_failover_slots"
                } else {
                    "pglogical"
                })
            );
            assert_eq!(
                doc["bootstrap"]["dcs"]["ignore_slots"][0]["plugin"].as_str(),
                Some("pglogical_output")
            );
            assert_eq!(
                local["pglogical.conflict_resolution"].as_str(),
                Some("last_update_wins")
            );
            assert_eq!(local["ssl"].as_str(), Some("on"));
            assert_eq!(
                !local["output_plugin_libraries"].is_null(),
                plugins,
                "{version}"
            );
        }
    }

    #[test]
    fn the_provider_dsn_checks_tls_and_holds_no_password() {
        let hosts = [
            ("10.213.3.1".to_string(), 32768),
            ("10.213.3.2".to_string(), 32769),
        ];
        let p = Provider {
            node: "n1",
            subscriber: "n2",
            hosts: &hosts,
        };
        assert_eq!(
            provider_dsn(&p, "app"),
            "host=10.213.3.1,10.213.3.2 port=32768,32769 dbname=app user=postgres \
             passfile=/var/lib/postgresql/data/berth-pglogical.pgpass sslmode=verify-full \
             sslrootcert=/var/lib/postgresql/berth/ca.crt connect_timeout=10 \
             target_session_attrs=read-write application_name=berth_pglogical"
        );
        assert!(provider_dsn(&p, "my app").contains("dbname='my app'"));
        assert!(provider_dsn(&p, "o'k").contains(r"dbname='o\'k'"));
    }

    #[test]
    fn the_passfile_escapes_its_separators() {
        assert_eq!(passfile("abc"), "*:*:*:postgres:abc\n");
        assert_eq!(passfile(r"a:b\c"), "*:*:*:postgres:a\\:b\\\\c\n");
        assert!(passfile_argv()[2].contains("umask 077"));
    }

    #[test]
    fn subscriptions_forward_no_origin_and_copy_nothing() {
        let hosts = [("n2-host-2".to_string(), 5432)];
        let p = Provider {
            node: "n2",
            subscriber: "n1",
            hosts: &hosts,
        };
        let sql = subscribe_sql(&p, "app", Start::Empty);
        for want in [
            "sub_name = 'berth_n1_from_n2'",
            "subscription_name := 'berth_n1_from_n2'",
            "forward_origins := '{}'",
            "synchronize_structure := false",
            "synchronize_data := false",
            "'ddl_sql'",
            "host=n2-host-2 port=5432",
            "ELSIF (SELECT i.if_dsn",
            "alter_subscription_interface('berth_n1_from_n2', 'berth_",
        ] {
            assert!(sql.contains(want), "{want} in {sql}");
        }
    }

    /// A joining node's subscription to its source copies and forwards everything, until
    /// it forwards the source's own changes alone.
    #[test]
    fn a_seed_copies_and_forwards_until_told_not_to() {
        let hosts = [("10.0.0.1".to_string(), 40000)];
        let p = Provider {
            node: "n1",
            subscriber: "n4",
            hosts: &hosts,
        };
        let sql = subscribe_sql(&p, "app", Start::Seed);
        for want in [
            "subscription_name := 'berth_n4_from_n1'",
            "forward_origins := '{all}'",
            "synchronize_structure := true",
            "synchronize_data := true",
        ] {
            assert!(sql.contains(want), "{want} in {sql}");
        }
        let stop = stop_forwarding_sql("n1", "n4");
        for want in [
            "sub_name = 'berth_n4_from_n1' AND coalesce(cardinality(sub_forward_origins), 0) > 0",
            "SET sub_forward_origins = NULL",
            "alter_subscription_disable('berth_n4_from_n1', true)",
            "alter_subscription_enable('berth_n4_from_n1', true)",
        ] {
            assert!(stop.contains(want), "{want} in {stop}");
        }
    }

    #[test]
    fn the_node_sql_is_idempotent_and_quotes_its_names() {
        let sql = node_sql("n'1", "app");
        assert!(sql.starts_with("CREATE EXTENSION IF NOT EXISTS pglogical;"));
        assert!(sql.contains("node_name := 'n''1'"));
        assert!(sql.contains("IF NOT EXISTS (SELECT 1 FROM pglogical.local_node)"));
        assert!(sql.contains("CREATE EVENT TRIGGER berth_ddl_command_end"));
        assert!(LOCAL_DDL.contains("berth.ddl_replication = off"));
        assert!(DDL_SQL.contains("current_setting('berth.ddl_replication', true)"));
    }
}
