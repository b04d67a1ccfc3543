//! etcd authentication (ADR 017): the control plane's own login to etcd, and the etcd user
//! each Postgres node's Patroni logs in as, whose role reaches that node's keys alone.
//!
//! With credentials ([`EtcdCredentials`]) the control plane manages one user and one role per
//! node, both named [`crate::Keys::patroni_user`], the role granting `readwrite` on the
//! node's prefix [`crate::Keys::patroni_node`] and nothing else: Patroni's etcd3 backend reads
//! its cluster as that prefix's range, watches it, and writes its keys (leader, members,
//! config, status, ...) below it, all under the node's scope. User management needs the
//! `root` role, so the control plane's user must hold it.

use std::collections::HashMap;
use std::sync::Mutex;

use etcd_client::{Client, ConnectOptions, Permission};
use secrecy::{ExposeSecret, SecretString};

use crate::{Result, Store, StoreError};

/// A login to etcd: a user and its password. `Debug` leaves the password out.
#[derive(Clone)]
pub struct EtcdCredentials {
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// What a store knows of etcd authentication, shared by its clones.
#[derive(Default)]
pub(crate) struct AuthState {
    /// The store was given credentials: it manages Patroni's users.
    manages_users: bool,
    /// The store's client logged in (credentials given and etcd's auth enabled).
    authenticated: bool,
    /// The Patroni users this process made sure of, with the leadership (its fence's create
    /// revision) and the password each was made under: a pass over a database then costs no
    /// etcd request. A new leadership makes sure of each once more, since another leader may
    /// have dropped users meanwhile.
    ensured: Mutex<HashMap<String, Ensured>>,
}

/// A user [`Store::ensure_patroni_user`] made sure of: under which fence, with which password.
type Ensured = (Option<i64>, SecretString);

impl AuthState {
    fn ensured(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ensured>> {
        self.ensured.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connect options every etcd client of the store uses: timeouts and keep-alives, and a
/// token refreshed whenever etcd says it expired (etcd's simple tokens live 5 minutes
/// unused, and die with the member that issued them).
pub(crate) fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(3))
        .with_timeout(std::time::Duration::from_secs(10))
        .with_keep_alive(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(5),
        )
        .with_keep_alive_while_idle(true)
        .with_auto_token_refresh(true)
}

/// Whether etcd answered that its authentication is off.
fn auth_not_enabled(e: &etcd_client::Error) -> bool {
    e.to_string().contains("authentication is not enabled")
}

/// Whether a user or role management request failed because the name is taken.
fn already_exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("already exists")
}

/// Whether a user or role management request failed because the name is unknown.
fn not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("not found")
}

/// Logs the client in as `credentials`, if any. Returns whether it did: etcd with its
/// authentication off answers so, and the client then goes on without a token (an operator
/// enabling auth restarts the replicas afterwards, ADR 017). Errors: a wrong user or password
/// (etcd's message names neither password), or etcd unreachable.
pub(crate) async fn log_in(
    client: &mut Client,
    credentials: Option<&EtcdCredentials>,
) -> Result<AuthState> {
    let Some(c) = credentials else {
        return Ok(AuthState::default());
    };
    let login = (c.username.clone(), c.password.expose_secret().to_string());
    let authenticated = match client.update_user(Some(login)).await {
        Ok(()) => true,
        Err(e) if auth_not_enabled(&e) => {
            tracing::warn!(
                user = %c.username,
                "etcd's authentication is not enabled: connected without logging in. Patroni's \
                 etcd users are made all the same; once auth is enabled, restart every replica"
            );
            false
        }
        Err(e) => return Err(e.into()),
    };
    Ok(AuthState {
        manages_users: true,
        authenticated,
        ensured: Mutex::default(),
    })
}

impl Store {
    /// Whether this store was given etcd credentials: then every Postgres node's Patroni
    /// gets an etcd user of its own ([`Store::ensure_patroni_user`]).
    pub fn manages_patroni_users(&self) -> bool {
        self.auth.manages_users
    }

    /// Whether the store's client is logged in to etcd (credentials given, auth enabled).
    pub fn is_authenticated(&self) -> bool {
        self.auth.authenticated
    }

    /// Makes sure node `node` of `db` has its etcd user ([`crate::Keys::patroni_user`]) with
    /// `password`, holding only the role of the same name, which grants `readwrite` on the
    /// node's keys ([`crate::Keys::patroni_node`]) and nothing else. Idempotent; a user this
    /// handle's leadership (its fence) already made sure of with the same password costs no
    /// request.
    ///
    /// Errors: etcd refuses (the store's user lacks the `root` role), or is unreachable.
    pub async fn ensure_patroni_user(
        &self,
        db: &str,
        node: &str,
        password: &SecretString,
    ) -> Result<()> {
        let name = self.keys.patroni_user(db, node);
        let leadership = self.fence.as_ref().map(|f| f.create_revision);
        if self
            .auth
            .ensured()
            .get(&name)
            .is_some_and(|(l, p)| *l == leadership && p.expose_secret() == password.expose_secret())
        {
            return Ok(());
        }
        let prefix = self.keys.patroni_node(db, node);
        let wanted = Permission::read_write(prefix.as_str())
            .with_range_end(crate::keys::prefix_end(&prefix));
        let mut auth = self.client.auth_client();
        match auth.role_add(name.as_str()).await {
            Err(e) if !already_exists(&e) => return Err(e.into()),
            _ => {}
        }
        // A role that was there already may grant more: every other range goes (granting the
        // wanted one again sets its type).
        let role = auth.role_get(name.as_str()).await?;
        for p in role.permissions() {
            if p.key() != wanted.key() || p.range_end() != wanted.range_end() {
                let range_end = etcd_client::RoleRevokePermissionOptions::new()
                    .with_range_end(p.range_end().to_vec());
                auth.role_revoke_permission(name.as_str(), p.key().to_vec(), Some(range_end))
                    .await?;
            }
        }
        auth.role_grant_permission(name.as_str(), wanted).await?;
        match auth
            .user_add(name.as_str(), password.expose_secret(), None)
            .await
        {
            Ok(_) => {}
            Err(e) if already_exists(&e) => {
                auth.user_change_password(name.as_str(), password.expose_secret())
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        let user = auth.user_get(name.as_str()).await?;
        for other in user.roles().iter().filter(|r| **r != name) {
            auth.user_revoke_role(name.as_str(), other.as_str()).await?;
        }
        if !user.roles().contains(&name) {
            auth.user_grant_role(name.as_str(), name.as_str()).await?;
        }
        self.auth
            .ensured()
            .insert(name, (leadership, password.clone()));
        Ok(())
    }

    /// Deletes the etcd user and role of node `node` of `db`, or of every node of `db` when
    /// None; absent ones are fine. Does nothing for a store without credentials (it manages
    /// no user, and etcd with auth on would refuse it the listing).
    ///
    /// Errors: etcd refuses, or is unreachable.
    pub async fn drop_patroni_users(&self, db: &str, node: Option<&str>) -> Result<()> {
        if !self.auth.manages_users {
            return Ok(());
        }
        let mut auth = self.client.auth_client();
        let names: Vec<String> = match node {
            Some(node) => vec![self.keys.patroni_user(db, node)],
            None => {
                // Roles too: a user whose making failed half-way may have left its role alone.
                let users = auth.user_list().await?;
                let roles = auth.role_list().await?;
                let mut names: Vec<String> = users
                    .users()
                    .iter()
                    .chain(roles.roles())
                    .filter(|n| self.keys.is_patroni_user_of(n, db))
                    .cloned()
                    .collect();
                names.sort();
                names.dedup();
                names
            }
        };
        for name in names {
            for result in [
                auth.user_delete(name.as_str()).await.map(drop),
                auth.role_delete(name.as_str()).await.map(drop),
            ] {
                match result {
                    Err(e) if !not_found(&e) => return Err(StoreError::from(e)),
                    _ => {}
                }
            }
            self.auth.ensured().remove(&name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_password() {
        let c = EtcdCredentials {
            username: "root".into(),
            password: "hunter2-etcd".into(),
        };
        let debug = format!("{c:?}");
        assert!(
            debug.contains("root") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn user_names_are_the_nodes_and_no_other_databases() {
        let k = crate::Keys::new("/berth");
        assert_eq!(k.patroni_user("app", "n1"), "berth-patroni-app-n1");
        assert_eq!(k.patroni_node("app", "n1"), "/berth/patroni/app/n1/");
        assert!(k.is_patroni_user_of("berth-patroni-app-n12", "app"));
        // A database whose id starts like another's does not own its users.
        assert!(!k.is_patroni_user_of("berth-patroni-app-x-n1", "app"));
        assert!(k.is_patroni_user_of("berth-patroni-app-x-n1", "app-x"));
        assert!(!k.is_patroni_user_of("berth-patroni-app-n1x", "app"));
        assert!(!k.is_patroni_user_of("root", "app"));
        let other = crate::Keys::new("/fleet-b/");
        assert_eq!(other.patroni_user("app", "n1"), "fleet-b-patroni-app-n1");
        assert!(!other.is_patroni_user_of("berth-patroni-app-n1", "app"));
    }
}
