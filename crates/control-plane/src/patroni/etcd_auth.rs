//! Each Postgres node's etcd user (ADR 017): while the control plane holds etcd credentials
//! ([`super::config::Dcs::node_users`]), a node's Patroni logs in as a user whose role
//! reaches the node's keys alone (`/{prefix}/patroni/{database}/{node}/`), so a Postgres
//! container taken over (a superuser's `COPY ... TO PROGRAM`) reaches no other node's keys
//! and none of the control plane's. The reconciler makes the users before any container is
//! given them, and drops them with the node's keys.

use store::{StateStore, StoreError, StoredDatabase};

use super::config::Dcs;
use crate::credentials::DatabaseCredentials;

/// Makes sure every node of `db`'s spec has its etcd user, with the password `creds` hold
/// for it (stored before this runs). Nothing without node users, or while the database is
/// being deleted. Cheap when nothing changed: the store remembers the users it made.
///
/// Errors: etcd refuses (the control plane's user lacks the `root` role) or is unreachable.
pub(crate) async fn ensure_users(
    store: &dyn StateStore,
    dcs: &Dcs,
    db: &StoredDatabase,
    creds: &DatabaseCredentials,
) -> Result<(), StoreError> {
    if !dcs.node_users || db.record.state == spec::DatabaseState::Deleting {
        return Ok(());
    }
    for node in &db.spec.nodes {
        if let Some(user) = creds.etcd_users.get(&node.name) {
            store
                .ensure_patroni_user(&db.record.id, &node.name, &user.password)
                .await?;
        }
    }
    Ok(())
}

/// Drops the etcd user of `node` (every node's when None) once its keys are forgotten, unless
/// the spec still has that node: forgetting a new node's stale keys before it is initialised
/// keeps the user its first instance is about to log in with. Nothing without node users.
///
/// Errors: etcd refuses or is unreachable.
pub(crate) async fn drop_users(
    store: &dyn StateStore,
    dcs: &Dcs,
    db: &StoredDatabase,
    node: Option<&str>,
) -> Result<(), StoreError> {
    if !dcs.node_users {
        return Ok(());
    }
    let deleting = db.record.state == spec::DatabaseState::Deleting;
    if let Some(node) = node
        && !deleting
        && db.spec.nodes.iter().any(|n| n.name == node)
    {
        return Ok(());
    }
    store.drop_patroni_users(&db.record.id, node).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::MemoryStore;

    fn db(nodes: &[&str], state: spec::DatabaseState) -> StoredDatabase {
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| serde_json::json!({"name": n, "host_ids": ["host-1"]}))
            .collect();
        StoredDatabase {
            record: serde_json::from_value(serde_json::json!({
                "id": "app", "state": state, "created_at": chrono::Utc::now(),
                "updated_at": chrono::Utc::now(), "generation": 1
            }))
            .unwrap(),
            spec: serde_json::from_value(
                serde_json::json!({"database_name": "app", "nodes": nodes}),
            )
            .unwrap(),
            spec_revision: 1,
        }
    }

    fn dcs(node_users: bool) -> Dcs {
        Dcs {
            node_users,
            ..Dcs::from_urls(&["http://10.0.0.1:2379".into()], "/berth").unwrap()
        }
    }

    fn nodes_with_users(store: &MemoryStore) -> Vec<String> {
        store
            .patroni_users()
            .into_iter()
            .map(|(_, n, _)| n)
            .collect()
    }

    #[tokio::test]
    async fn users_follow_the_spec_nodes_and_go_with_them() {
        let store = MemoryStore::new();
        let mut creds = DatabaseCredentials::generate();
        creds.ensure_etcd_users(["n1", "n2"]);
        let live = db(&["n1", "n2"], spec::DatabaseState::Available);
        ensure_users(&store, &dcs(false), &live, &creds)
            .await
            .unwrap();
        assert!(store.patroni_users().is_empty(), "no credentials, no users");
        ensure_users(&store, &dcs(true), &live, &creds)
            .await
            .unwrap();
        assert_eq!(nodes_with_users(&store), ["n1", "n2"]);

        // A node still in the spec keeps its user when its stale keys are forgotten.
        drop_users(&store, &dcs(true), &live, Some("n2"))
            .await
            .unwrap();
        assert_eq!(nodes_with_users(&store), ["n1", "n2"]);
        // A node gone from the spec loses it.
        let shrunk = db(&["n1"], spec::DatabaseState::Available);
        drop_users(&store, &dcs(true), &shrunk, Some("n2"))
            .await
            .unwrap();
        assert_eq!(nodes_with_users(&store), ["n1"]);
        // A database being deleted makes none, and loses them all.
        let deleting = db(&["n1"], spec::DatabaseState::Deleting);
        ensure_users(
            &store,
            &dcs(true),
            &db(&["n1", "n2"], deleting.record.state),
            &creds,
        )
        .await
        .unwrap();
        assert_eq!(nodes_with_users(&store), ["n1"]);
        drop_users(&store, &dcs(true), &deleting, None)
            .await
            .unwrap();
        assert!(store.patroni_users().is_empty());
    }
}
