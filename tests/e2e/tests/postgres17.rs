//! The spec's `postgres_version` picks the Postgres image through the manifest (issue 16):
//! `"17"` runs `berth/postgres:17` (Debian trixie), where pgvector is installed, so a database
//! stores and searches embeddings; its replica streams them. `"15"` runs the bookworm image as
//! before. Without a version a database gets the default, 17, and keeps it (the stored spec
//! names it). A version the manifest lacks is a 400 naming `spec.postgres_version` and the
//! versions there are, and nothing is stored. Needs `deploy/images/build`.

use e2e::Fleet;
use e2e::reqwest::StatusCode;
use e2e::serde_json::{Value, json};

fn spec(version: &str, hosts: &[&str]) -> Value {
    json!({"database_name": "app", "postgres_version": version,
           "nodes": [{"name": "n1", "host_ids": hosts}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_version_picks_the_image_and_17_has_pgvector() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));

    // A version the manifest lacks: a 400 naming the field and the listed versions.
    let refused = fleet.db_id("pg13");
    let (status, body) = fleet
        .call(
            "POST",
            "/v1/databases",
            Some(&json!({"id": refused, "spec": spec("13", &[&h1])})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["path"], "spec.postgres_version", "{body}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.contains("\"13\"") && message.contains("15, 17"),
        "{body}"
    );
    let (status, body) = fleet
        .call("GET", &format!("/v1/databases/{refused}"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused create stored {body}"
    );

    // "17": a primary and a streaming replica of berth/postgres:17.
    let db17 = fleet.db_id("pg17");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db17, "spec": spec("17", &[&h1, &h2])}),
        )
        .await;
    let d = fleet.database(&db17).await;
    assert_eq!(d["state"], "available", "{d}");
    assert_eq!(d["spec"]["postgres_version"], "17", "{d}");
    let primary = Fleet::container_name(&h1, &format!("{db17}-n1-{h1}"));
    let replica = Fleet::container_name(&h2, &format!("{db17}-n1-{h2}"));
    for c in [&primary, &replica] {
        assert_eq!(fleet.inspect(c)["Config"]["Image"], "berth/postgres:17");
        assert_eq!(
            fleet.psql(
                c,
                "app",
                "SELECT current_setting('server_version_num')::int / 10000"
            ),
            "17"
        );
    }

    // pgvector: the extension, a table of embeddings with an HNSW index, a nearest-neighbour
    // search, on the primary and (streamed) on the replica.
    fleet.psql(
        &primary,
        "app",
        "CREATE EXTENSION vector; \
         CREATE TABLE docs (id int PRIMARY KEY, embedding vector(3)); \
         INSERT INTO docs VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]'), (4, '[0.9,0.1,0]'); \
         CREATE INDEX ON docs USING hnsw (embedding vector_l2_ops)",
    );
    let nearest = "SELECT string_agg(id::text, ',') FROM \
                   (SELECT id FROM docs ORDER BY embedding <-> '[1,0.05,0]' LIMIT 2) n";
    assert_eq!(fleet.psql(&primary, "app", nearest), "1,4");
    let (on_replica, _) = fleet
        .wait_for("the embeddings on the replica", || async {
            let rows = fleet.psql(
                &replica,
                "app",
                "SELECT count(*) FROM pg_tables WHERE tablename = 'docs'",
            );
            (rows == "1").then(|| fleet.psql(&replica, "app", nearest))
        })
        .await;
    assert_eq!(on_replica, "1,4");
    assert_eq!(
        fleet.psql(
            &primary,
            "app",
            "SELECT embedding <-> '[0,0,0]' FROM docs WHERE id = 3"
        ),
        "1"
    );

    // "15": the bookworm image, as before.
    let db15 = fleet.db_id("pg15");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db15, "spec": spec("15", &[&h1])}),
        )
        .await;
    let pg15 = Fleet::container_name(&h1, &format!("{db15}-n1-{h1}"));
    assert_eq!(fleet.inspect(&pg15)["Config"]["Image"], "berth/postgres:15");
    assert_eq!(
        fleet.psql(
            &pg15,
            "app",
            "SELECT current_setting('server_version_num')::int / 10000"
        ),
        "15"
    );
    fleet.psql(
        &pg15,
        "app",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    );
    assert_eq!(fleet.psql(&pg15, "app", "SELECT count(*) FROM t"), "1");
    // No version: the default, 17, stored with the spec. An update cannot move the database
    // to another major version.
    let dflt = fleet.db_id("default");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": dflt, "spec": {"database_name": "app",
                                         "nodes": [{"name": "n1", "host_ids": [h2]}]}}),
        )
        .await;
    let d = fleet.database(&dflt).await;
    assert_eq!(d["spec"]["postgres_version"], "17", "{d}");
    let pg_default = Fleet::container_name(&h2, &format!("{dflt}-n1-{h2}"));
    assert_eq!(
        fleet.inspect(&pg_default)["Config"]["Image"],
        "berth/postgres:17"
    );
    let (status, body) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{dflt}"),
            Some(&json!({"spec": spec("15", &[&h2])})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["path"], "spec.postgres_version", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot change"),
        "{body}"
    );

    // pglogical, for replication between nodes, is in both images.
    for c in [&primary, &pg15] {
        assert_eq!(
            fleet.psql(
                c,
                "app",
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pglogical'"
            ),
            "1"
        );
    }
}
