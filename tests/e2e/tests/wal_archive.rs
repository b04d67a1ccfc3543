//! WAL archiving's state on the instance (issue 17: "archive failures show on the instance
//! rather than filling the disk silently"), against a real S3 server (`berth-s3-server`):
//! a segment archived after `pg_switch_wal()` shows as `wal_archive.last_archived_wal`; with
//! the bucket gone from the server (its directory moved away: every request for it is a
//! `NoSuchBucket`, as after a deleted bucket or a revoked key), the next segment fails, and
//! the instance shows `wal_archive.failing`, an `error` naming the segment and the failures,
//! and the `archive_failing` warning; with the bucket back, archiving catches up and all of
//! that clears.
//!
//! Not a stopped server: pgBackRest retries a connection refused for minutes (about nine for
//! one `repo-ls` with its default `io-timeout`) before archive-push fails, and Postgres
//! records a failure only when archive_command returns; a refused bucket fails at once.

use e2e::serde_json::{Value, json};
use e2e::{Fleet, S3Server};

/// The database's one Postgres instance.
fn postgres(d: &Value) -> Value {
    d["instances"][0].clone()
}

fn warning_codes(i: &Value) -> Vec<String> {
    i["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| w["code"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A WAL file name sorts with the WAL position on one timeline: `a` is `b` or later.
fn at_or_after(a: &Value, b: &str) -> bool {
    a.as_str().is_some_and(|a| a >= b)
}

/// Moves the bucket's directory of the S3 server to `to` (the server serves bucket `B` from
/// `root/B`): from then on every request for the bucket is a `NoSuchBucket`, as if the bucket
/// were deleted or the key's access to it revoked.
fn move_bucket(s3: &S3Server, from: &str, to: &str) {
    std::fs::rename(s3.root.join(from), s3.root.join(to)).expect("move the bucket's directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_archive_shows_on_the_instance_until_it_recovers() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let s3 = fleet.start_s3();
    let db = fleet.db_id("walarchive");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1]}],
                "backup_config": {"repositories": [s3.repository("main", "/berth")]}}}),
        )
        .await;
    let c = Fleet::container_name(&h1, &format!("{db}-n1-{h1}"));
    fleet
        .wait_for("the primary available", || async {
            (postgres(&fleet.database(&db).await)["state"] == "available").then_some(())
        })
        .await;
    fleet.psql(&c, "app", "CREATE TABLE t (id serial PRIMARY KEY, v text)");

    // A segment archived: the instance shows it, and archiving is not failing.
    let segment = fleet.psql(&c, "app", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    fleet.psql(&c, "app", "INSERT INTO t (v) VALUES ('first')");
    fleet.psql(&c, "app", "SELECT pg_switch_wal()");
    let (i, took) = fleet
        .wait_for("the switched segment shown as archived", || async {
            let i = postgres(&fleet.database(&db).await);
            let a = &i["wal_archive"];
            (at_or_after(&a["last_archived_wal"], &segment) && a["failing"] == false).then_some(i)
        })
        .await;
    println!(
        "{segment} shown archived {took:?} after pg_switch_wal: {}",
        i["wal_archive"]
    );
    assert!(i["wal_archive"]["last_archived_at"].is_string(), "{i}");
    assert!(i["error"].is_null(), "{i}");
    assert!(
        !warning_codes(&i).contains(&"archive_failing".into()),
        "{i}"
    );
    assert_eq!(
        i["wal"]["archive_mode"], "on",
        "`wal` is kept as it was: {i}"
    );
    let list = fleet.get("/v1/databases").await;
    let listed = list["databases"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == db.as_str()))
        .map(postgres)
        .expect("the database in the list");
    assert!(
        listed["wal_archive"].is_object(),
        "the list shows it too: {listed}"
    );

    // The bucket goes: the next segment cannot be archived. Nothing waits to be archived
    // before, so the first failure is of the segment switched below.
    fleet
        .wait_for("no segment waiting to be archived", || async {
            let ready = fleet.psql(
                &c,
                "app",
                "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
            );
            (ready == "0").then_some(())
        })
        .await;
    let away = format!("{}.away", s3.bucket);
    move_bucket(&s3, &s3.bucket, &away);
    let broken = std::time::Instant::now();
    let failed = fleet.psql(&c, "app", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    fleet.psql(&c, "app", "INSERT INTO t (v) VALUES ('during the outage')");
    fleet.psql(&c, "app", "SELECT pg_switch_wal()");
    let (i, took) = fleet
        .wait_for("the instance showing the archive failing", || async {
            let i = postgres(&fleet.database(&db).await);
            let failing = i["wal_archive"]["failing"] == true
                && i["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("WAL archiving is failing"))
                && warning_codes(&i).contains(&"archive_failing".into());
            failing.then_some(i)
        })
        .await;
    println!(
        "failing shown {took:?} after the bucket went: {}\n  error: {}",
        i["wal_archive"], i["error"]
    );
    let a = &i["wal_archive"];
    assert_eq!(a["last_failed_wal"], failed.as_str(), "{i}");
    let failures = a["failed_count"].as_u64().expect("a failure count");
    assert!(failures > 0, "{i}");
    let error = i["error"].as_str().unwrap();
    assert!(
        error.contains(&failed),
        "the error names the segment: {error}"
    );
    assert!(
        error.contains(&format!("({failures} failure")),
        "the error counts the failures: {error}"
    );
    assert!(a["ready_segments"].as_u64().unwrap() >= 1, "{i}");
    assert!(
        !at_or_after(&a["last_archived_wal"], &failed),
        "nothing archived since: {i}"
    );

    // The bucket back: archiving catches up.
    move_bucket(&s3, &away, &s3.bucket);
    println!("bucket away for {:?}", broken.elapsed());
    fleet.psql(&c, "app", "INSERT INTO t (v) VALUES ('after the outage')");
    // Wakes the archiver, which otherwise waits up to a minute after its failures.
    fleet.psql(&c, "app", "SELECT pg_switch_wal()");
    let (i, took) = fleet
        .wait_for("archiving recovered", || async {
            let i = postgres(&fleet.database(&db).await);
            let a = &i["wal_archive"];
            (a["failing"] == false && at_or_after(&a["last_archived_wal"], &failed)).then_some(i)
        })
        .await;
    println!(
        "recovered {took:?} after the bucket came back: {}",
        i["wal_archive"]
    );
    assert!(i["error"].is_null(), "{i}");
    assert!(
        !warning_codes(&i).contains(&"archive_failing".into()),
        "{i}"
    );
    assert_eq!(
        i["wal_archive"]["last_failed_wal"],
        failed.as_str(),
        "the failure is kept: {i}"
    );
    assert_eq!(i["state"], "available", "{i}");
}
