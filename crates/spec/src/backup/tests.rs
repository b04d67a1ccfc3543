use serde_json::{Value, json};

use super::*;
use crate::secrets::redact_spec;

const KEY: &str = "AKIA-PLAIN";
const SECRET: &str = "SECRET-PLAIN";

fn s3(id: &str) -> Value {
    json!({"id": id, "type": "s3", "s3_bucket": "b-1", "s3_region": "r",
           "s3_key": KEY, "s3_key_secret": SECRET})
}

/// Keys in every place a repository can be: the database's and a node's backup_config, and
/// the database's and a node's inline restore repository.
fn spec() -> DatabaseSpec {
    let restore = |repository: Value| {
        json!({"source_database_id": "a", "source_node_name": "n1",
               "source_database_name": "app", "repository": repository})
    };
    serde_json::from_value(json!({
        "database_name": "app",
        "backup_config": {"repositories": [s3("db"), {"id": "p", "type": "posix", "base_path": "/b"}]},
        "restore_config": restore(s3("old")),
        "nodes": [
            {"name": "n1", "host_ids": ["h1"], "backup_config": {"repositories": [s3("own")]},
             "restore_config": restore(s3("node-old"))},
            {"name": "n2", "host_ids": ["h2"], "restore_config": restore(json!("db"))}
        ]
    }))
    .unwrap()
}

#[test]
fn redacted_everywhere_and_nothing_else_changes() {
    let spec = spec();
    let redacted = redact_spec(&spec);
    let text = serde_json::to_string(&redacted).unwrap();
    assert!(!text.contains(KEY) && !text.contains(SECRET), "{text}");
    assert!(!text.contains("s3_key"), "removed, not masked: {text}");
    // Put the keys back where they were: the rest is untouched.
    let mut doc = serde_json::to_value(&redacted).unwrap();
    let mut visited = 0;
    for_each_repository_object(&mut doc, &mut |repository| {
        visited += 1;
        if repository["type"] == "s3" {
            repository.insert("s3_key".into(), json!(KEY));
            repository.insert("s3_key_secret".into(), json!(SECRET));
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(
        visited, 5,
        "db x2, db restore, n1 backup, n1 restore; n2's names an id"
    );
    assert_eq!(serde_json::from_value::<DatabaseSpec>(doc).unwrap(), spec);
}

#[test]
fn debug_shows_no_key() {
    let debug = format!("{:?}", spec());
    assert!(!debug.contains(KEY) && !debug.contains(SECRET), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn the_visit_stops_at_the_first_error() {
    let mut doc = serde_json::to_value(spec()).unwrap();
    let mut seen = Vec::new();
    let got = for_each_repository_object(&mut doc, &mut |repository| {
        seen.push(repository["id"].clone());
        if seen.len() == 2 { Err("stop") } else { Ok(()) }
    });
    assert_eq!(got, Err("stop"));
    assert_eq!(seen, [json!("db"), json!("p")]);
    assert_eq!(
        for_each_repository_object(&mut json!([1]), &mut |_| Err("x")),
        Ok(())
    );
}

#[test]
fn a_node_without_its_own_config_has_the_databases() {
    let spec = spec();
    let own = effective_backup_config(&spec, &spec.nodes[0]).unwrap();
    assert_eq!(own.repositories[0].id, "own");
    let inherited = effective_backup_config(&spec, &spec.nodes[1]).unwrap();
    assert_eq!(inherited.repositories[0].id, "db");
    let restore = effective_restore_config(&spec, &spec.nodes[1]).unwrap();
    assert_eq!(restore.repository, RestoreRepository::Id("db".into()));
}

#[test]
fn the_databases_restore_config_is_its_first_nodes_and_several_nodes_cannot_restore() {
    let mut spec = spec();
    for node in &mut spec.nodes {
        node.restore_config = None;
    }
    assert!(effective_restore_config(&spec, &spec.nodes[0]).is_some());
    assert!(effective_restore_config(&spec, &spec.nodes[1]).is_none());
    // Created with two nodes: refused; two nodes later on (the second copied from the
    // first): accepted.
    let refused = check_restores(&spec, true).unwrap_err();
    assert_eq!(refused.errors[0].path, "spec.restore_config");
    assert!(check_restores(&spec, false).is_ok());
    spec.nodes[1].restore_config = spec.restore_config.clone();
    let refused = check_restores(&spec, false).unwrap_err();
    assert_eq!(refused.errors[0].path, "spec.nodes[1].restore_config");
    spec.nodes.truncate(1);
    spec.nodes[0].restore_config = spec.restore_config.clone();
    assert!(check_restores(&spec, true).is_ok());
}

#[test]
fn cron_expressions_are_read_as_vixie_cron_in_utc() {
    use chrono::{TimeZone, Utc};
    let next = |expr: &str, from: chrono::DateTime<Utc>| {
        cron_schedule(expr)
            .unwrap()
            .find_next_occurrence(&from, false)
            .unwrap()
    };
    let monday = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    // Day of week 1 is Monday (Quartz-style parsers read it as Sunday).
    assert_eq!(
        next("0 6 * * 1", monday),
        Utc.with_ymd_and_hms(2026, 12, 7, 6, 0, 0).unwrap()
    );
    // `?` reads as `*`, as in the reference's example; nicknames work.
    assert_eq!(
        next("0 6 * * ?", monday),
        Utc.with_ymd_and_hms(2026, 12, 1, 6, 0, 0).unwrap()
    );
    assert_eq!(
        next("@daily", monday),
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    );
    // Day of month and day of week both restricted: either matches, as in Vixie cron.
    assert_eq!(
        next("0 0 13 * 5", monday),
        Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).unwrap()
    );
    let started = std::time::Instant::now();
    let never = cron_schedule("0 0 31 4 *").unwrap_err();
    println!("never-due check took {:?}", started.elapsed());
    assert!(never.contains("never comes due"), "{never}");
}

#[test]
fn posix_repositories_are_refused_where_nothing_would_happen() {
    let posix = |id: &str| json!({"id": id, "type": "posix", "base_path": "/b"});
    let restore = |repository: Value| {
        json!({"source_database_id": "a", "source_node_name": "n1",
               "source_database_name": "app", "repository": repository})
    };
    let schedule = json!([{"id": "daily", "type": "full", "cron_expression": "@daily"}]);
    let spec: DatabaseSpec = serde_json::from_value(json!({
        "database_name": "app",
        "backup_config": {"repositories": [posix("p")], "schedules": schedule},
        "restore_config": restore(json!("p")),
        "nodes": [
            {"name": "n1", "host_ids": ["h1"]},
            {"name": "n2", "host_ids": ["h2"], "restore_config": restore(posix("q")),
             "backup_config": {"repositories": [posix("p"), s3("s")], "schedules": schedule}}
        ]
    }))
    .unwrap();
    let paths = |creating| -> Vec<String> {
        check_repositories(&spec, creating)
            .map_err(|e| e.errors.into_iter().map(|e| e.path).collect())
            .unwrap_err()
    };
    // n1 inherits the database's posix-only schedules (said once), and starts from its
    // posix repository; n2 has an s3 repository for its schedules, and restores from an
    // inline posix one.
    assert_eq!(
        paths(true),
        [
            "spec.backup_config.schedules",
            "spec.restore_config.repository",
            "spec.nodes[1].restore_config.repository"
        ]
    );
    assert_eq!(
        paths(false),
        [
            "spec.backup_config.schedules",
            "spec.nodes[1].restore_config.repository"
        ]
    );
    let refused = check_repositories(&spec, true).unwrap_err();
    assert!(
        refused.errors[0]
            .message
            .contains("would never fire: berth backs up")
    );
    let mut fine = spec.clone();
    fine.backup_config = None;
    fine.restore_config = None;
    fine.nodes[1].restore_config = None;
    assert!(check_repositories(&fine, true).is_ok());
}
