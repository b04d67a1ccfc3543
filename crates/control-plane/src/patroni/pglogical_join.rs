//! Nodes joining and leaving a replicated database (issue 16, item 3; ADR 020): who joins
//! from which source ([`membership`]), and the SQL and commands the control plane runs on
//! the primaries for it.
//!
//! A joining node is copied from a source node by its subscription to it
//! ([`super::pglogical::Start::Seed`]), then subscribes to every node and every node to it,
//! then stops forwarding other nodes' changes from the source. A node that leaves is
//! unsubscribed everywhere, and every pglogical slot no subscription uses any more is
//! dropped ([`drop_unused_slots_sql`]).

use std::collections::BTreeSet;

use spec::NodeSpec;

use super::pglogical::literal;

/// What a [`plan::Step::Replicate`] does to the set of nodes replication was configured
/// for. Node names; each list in the spec's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// Nodes configured with no copy: each already holds what it must (nodes created
    /// together, or the one node of a database that ran alone), and they subscribe to
    /// each other as they are.
    pub founders: Vec<String>,
    /// Nodes already configured that stay.
    pub members: Vec<String>,
    /// `(node, source)`: a node that joins, copied from `source` (a founder, a member, or,
    /// when no node stays, a node that leaves after the copy).
    pub joins: Vec<(String, String)>,
    /// Nodes configured before that the spec no longer has.
    pub leaves: Vec<String>,
}

/// Who joins how, from the spec's `nodes` (their order and `source_node`), the nodes to
/// run (`wanted`, each with a running primary), the nodes replication was configured for
/// (`recorded`) and, when nothing was configured yet, the nodes whose database already
/// holds objects of its users (`holders`).
///
/// - Nothing configured, at most one node holding objects: that node, or every node when
///   none holds any (nodes created together), is a founder; the others join from it.
/// - Nothing configured, several nodes holding objects: all are founders. Unrelated
///   databases cannot be merged by a copy; they replicate what they write from then on.
/// - Configured before: the nodes that stay are members, the others leave; each new node
///   joins from its `source_node` when that node stays, else from the first node in the
///   spec that stays, else from the first that leaves (it still runs until after the
///   copy), else it is a founder.
pub fn membership(
    spec_nodes: &[NodeSpec],
    wanted: &[String],
    recorded: &BTreeSet<String>,
    holders: &BTreeSet<String>,
) -> Membership {
    let ordered: Vec<&NodeSpec> = spec_nodes
        .iter()
        .filter(|n| wanted.contains(&n.name))
        .collect();
    let mut m = Membership {
        leaves: recorded
            .iter()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect(),
        ..Membership::default()
    };
    if recorded.is_empty() {
        let holding: Vec<&str> = ordered
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| holders.contains(*n))
            .collect();
        match holding.as_slice() {
            [source] => {
                for n in &ordered {
                    if n.name == *source {
                        m.founders.push(n.name.clone());
                    } else {
                        m.joins.push((n.name.clone(), source.to_string()));
                    }
                }
            }
            _ => m.founders = ordered.iter().map(|n| n.name.clone()).collect(),
        }
        return m;
    }
    m.members = ordered
        .iter()
        .filter(|n| recorded.contains(&n.name))
        .map(|n| n.name.clone())
        .collect();
    for n in ordered.iter().filter(|n| !recorded.contains(&n.name)) {
        let source = n
            .source_node
            .clone()
            .filter(|s| m.members.contains(s))
            .or_else(|| m.members.first().cloned())
            .or_else(|| m.leaves.first().cloned());
        match source {
            Some(source) => m.joins.push((n.name.clone(), source)),
            None => m.founders.push(n.name.clone()),
        }
    }
    m
}

/// The SQL condition on a schema `s` (a `pg_namespace` row) that it is the users': not the
/// system's, pglogical's or berth's own, nor a toast or temporary one.
macro_rules! users_schema {
    () => {
        "s.nspname NOT IN ('pg_catalog', 'information_schema', 'pglogical', 'berth') \
         AND s.nspname NOT LIKE 'pg\\_%'"
    };
}

/// Prints `t` when the database holds an object of its users: a relation or a function in
/// a users' schema, or an extension but pglogical. A node that does is not configured as
/// if it were new.
pub const HOLDS_OBJECTS_SQL: &str = concat!(
    "\\pset format unaligned\n\\pset tuples_only on\n",
    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE ",
    users_schema!(),
    ") OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace WHERE ",
    users_schema!(),
    ") OR EXISTS (SELECT 1 FROM pg_extension WHERE extname NOT IN ('plpgsql', 'pglogical'));\n",
);

/// Puts every table of the users' schemas that is in no replication set into one, as the
/// DDL replication does for a new table (`berth.replicate_table`: `default` with a primary
/// key, else `default_insert_only`). A copied node's tables arrive by `pg_restore`, which
/// does not carry pglogical's own catalog. Idempotent.
pub const REPLICATE_EXISTING_TABLES_SQL: &str = concat!(
    "DO $berth$ DECLARE t regclass; BEGIN\n",
    "FOR t IN SELECT c.oid FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace ",
    "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND ",
    users_schema!(),
    " AND c.oid NOT IN (SELECT set_reloid FROM pglogical.replication_set_table) LOOP\n",
    "  PERFORM berth.replicate_table(t);\n",
    "END LOOP;\n",
    "END $berth$;\n",
);

/// The argv (run as `postgres` in the joining node's primary) that copies the roles of
/// the source node (`source_dsn`, its [`super::pglogical::provider_dsn`]) into the local
/// instance before the copy of the structure, whose owners and grants name them: roles are
/// global objects, which neither pglogical nor `pg_dump` of one database copies. Roles
/// that exist stay; their attributes and passwords are set to the source's (berth's own
/// roles have the same passwords on every node). The dump, which holds password hashes,
/// lives in a file readable by `postgres` alone and is removed at once.
pub fn copy_roles_argv(source_dsn: &str) -> Vec<String> {
    let script = "umask 077; f=$(mktemp) || exit 1; \
        pg_dumpall --roles-only --dbname=\"$1\" > \"$f\" || { rm -f \"$f\"; exit 1; }; \
        psql -X -q -d \"$2\" -f \"$f\" > /dev/null 2>&1; rm -f \"$f\"; exit 0";
    vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        source_dsn.into(),
        "host=/var/run/postgresql dbname=postgres user=postgres".into(),
    ]
}

/// Drops the named subscriptions of the local node where they exist. pglogical also drops
/// each one's slot on its provider when the provider answers; [`drop_unused_slots_sql`]
/// catches those it could not reach.
pub fn drop_subscriptions_sql(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "SELECT pglogical.drop_subscription({}, ifexists := true);\n",
                literal(n)
            )
        })
        .collect()
}

/// Prints the slot name (on its provider) of every subscription of the local node, one
/// per line.
pub const SUBSCRIPTION_SLOTS_SQL: &str = "\\pset format unaligned\n\\pset tuples_only on\n\
    SELECT sub_slot_name FROM pglogical.subscription;\n";

/// Drops every inactive pglogical slot of the local database that no subscription uses
/// (`in_use`: the slot names every node's subscriptions read, from
/// [`SUBSCRIPTION_SLOTS_SQL`]), and prints their names. A slot no one reads retains WAL
/// until the disk fills. Only pglogical's slots of this database for berth's subscriptions
/// (pglogical names a slot `pgl_{database}_{provider}_{subscription}`, each part cut to 16
/// characters) are touched: Patroni's physical slots, other plugins' slots and the slots
/// of subscribers outside berth stay.
pub fn drop_unused_slots_sql(in_use: &BTreeSet<String>) -> String {
    let keep = if in_use.is_empty() {
        "ARRAY[]::text[]".to_string()
    } else {
        format!(
            "ARRAY[{}]",
            in_use
                .iter()
                .map(|s| literal(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "\\pset format unaligned\n\\pset tuples_only on\n\
         SELECT slot_name, pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE plugin = 'pglogical_output' AND database = current_database() AND NOT active \
         AND slot_name LIKE 'pgl\\_%berth\\_%' AND slot_name <> ALL ({keep});\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[(&str, Option<&str>)]) -> Vec<NodeSpec> {
        names
            .iter()
            .enumerate()
            .map(|(i, (n, source))| NodeSpec {
                name: n.to_string(),
                host_ids: vec![format!("host-{i}")],
                source_node: source.map(String::from),
                backup_config: None,
                restore_config: None,
            })
            .collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn joins(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn who_joins_from_where() {
        let spec3 = nodes(&[("n1", None), ("n2", None), ("n3", None)]);
        let with_source = nodes(&[("n1", None), ("n2", None), ("n3", Some("n2"))]);
        type Case<'a> = (
            &'a str,
            &'a [NodeSpec],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            Membership,
        );
        let cases: Vec<Case> = vec![
            (
                "created together: every node is a founder",
                &spec3,
                &["n1", "n2", "n3"],
                &[],
                &[],
                Membership {
                    founders: strings(&["n1", "n2", "n3"]),
                    ..Default::default()
                },
            ),
            (
                "a database that ran alone: the others copy its one node",
                &spec3,
                &["n1", "n2", "n3"],
                &[],
                &["n2"],
                Membership {
                    founders: strings(&["n2"]),
                    joins: joins(&[("n1", "n2"), ("n3", "n2")]),
                    ..Default::default()
                },
            ),
            (
                "unrelated databases are not merged by a copy",
                &spec3,
                &["n1", "n2", "n3"],
                &[],
                &["n1", "n3"],
                Membership {
                    founders: strings(&["n1", "n2", "n3"]),
                    ..Default::default()
                },
            ),
            (
                "a node added joins from the first node that stays",
                &spec3,
                &["n1", "n2", "n3"],
                &["n1", "n2"],
                &["n1", "n2"],
                Membership {
                    members: strings(&["n1", "n2"]),
                    joins: joins(&[("n3", "n1")]),
                    ..Default::default()
                },
            ),
            (
                "source_node chooses the source",
                &with_source,
                &["n1", "n2", "n3"],
                &["n1", "n2"],
                &[],
                Membership {
                    members: strings(&["n1", "n2"]),
                    joins: joins(&[("n3", "n2")]),
                    ..Default::default()
                },
            ),
            (
                "a source_node that joins too is not a source",
                &with_source,
                &["n1", "n2", "n3"],
                &["n1"],
                &[],
                Membership {
                    members: strings(&["n1"]),
                    joins: joins(&[("n2", "n1"), ("n3", "n1")]),
                    ..Default::default()
                },
            ),
            (
                "a node removed leaves",
                &spec3[..2],
                &["n1", "n2"],
                &["n1", "n2", "n3"],
                &[],
                Membership {
                    members: strings(&["n1", "n2"]),
                    leaves: strings(&["n3"]),
                    ..Default::default()
                },
            ),
            (
                "every node replaced: the new ones copy a node on its way out",
                &spec3[2..],
                &["n3"],
                &["n1", "n2"],
                &[],
                Membership {
                    joins: joins(&[("n3", "n1")]),
                    leaves: strings(&["n1", "n2"]),
                    ..Default::default()
                },
            ),
        ];
        for (name, spec, wanted, recorded, holders, want) in cases {
            let got = membership(spec, &strings(wanted), &set(recorded), &set(holders));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn the_users_schemas_leave_out_the_system_pglogical_and_berth() {
        for sql in [HOLDS_OBJECTS_SQL, REPLICATE_EXISTING_TABLES_SQL] {
            assert!(
                sql.contains("NOT IN ('pg_catalog', 'information_schema', 'pglogical', 'berth')"),
                "{sql}"
            );
            assert!(sql.contains(r"NOT LIKE 'pg\_%'"), "{sql}");
        }
        assert_eq!(HOLDS_OBJECTS_SQL.matches("NOT LIKE").count(), 2);
        assert!(REPLICATE_EXISTING_TABLES_SQL.contains("PERFORM berth.replicate_table(t)"));
    }

    #[test]
    fn unused_slots_are_pglogicals_inactive_and_unnamed_by_any_subscription() {
        let sql = drop_unused_slots_sql(&set(&["pgl_app_n1_berth_n2_from_n1"]));
        for want in [
            "plugin = 'pglogical_output'",
            "database = current_database()",
            "NOT active",
            "slot_name <> ALL (ARRAY['pgl_app_n1_berth_n2_from_n1'])",
        ] {
            assert!(sql.contains(want), "{want} in {sql}");
        }
        assert!(drop_unused_slots_sql(&BTreeSet::new()).contains("ARRAY[]::text[]"));
    }

    #[test]
    fn subscriptions_are_dropped_only_where_they_exist() {
        let sql = drop_subscriptions_sql(&strings(&["berth_n1_from_n3", "o'k"]));
        assert!(sql.contains("drop_subscription('berth_n1_from_n3', ifexists := true)"));
        assert!(sql.contains("'o''k'"));
    }

    #[test]
    fn the_roles_copy_never_puts_the_dump_anywhere_but_a_private_file() {
        let argv = copy_roles_argv("host=h port=1 passfile=/p");
        assert_eq!(argv[4], "host=h port=1 passfile=/p");
        assert!(argv[2].starts_with("umask 077;"));
        assert!(argv[2].contains("rm -f \"$f\""));
    }
}
