//! libpq's multi-host connection rules, done by hand because tokio-postgres only knows
//! `any` and `read-write`: try the hosts in order and keep the first whose role suits
//! `target_session_attrs`.

use std::time::Duration;

use service_config::ParsedConnection;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a server said about its role when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    pub in_recovery: bool,
    /// `transaction_read_only`, which is what libpq's `read-write` actually checks.
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Acceptable only if no host gives an `Accept` (prefer-standby's fallback to a primary).
    Fallback,
    Reject,
}

/// libpq's rule for one server. Unknown spellings are treated as `any`, as the catalog only
/// lets through the five libpq spellings.
pub fn verdict(target_session_attrs: &str, role: Role) -> Verdict {
    match target_session_attrs {
        "primary" if role.in_recovery => Verdict::Reject,
        "read-write" if role.read_only => Verdict::Reject,
        "standby" if !role.in_recovery => Verdict::Reject,
        "prefer-standby" if !role.in_recovery => Verdict::Fallback,
        _ => Verdict::Accept,
    }
}

/// An open session and the task driving its socket; the task ends when the connection does.
pub struct Session {
    pub client: Client,
    pub driver: JoinHandle<Result<(), tokio_postgres::Error>>,
    pub host: String,
    pub port: u16,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
#[error("no host suits target_session_attrs={target_session_attrs}: {}", .attempts.join("; "))]
pub struct NoHost {
    pub target_session_attrs: String,
    pub attempts: Vec<String>,
}

pub async fn role_of(client: &Client) -> Result<Role, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await?;
    Ok(Role {
        in_recovery: row.get(0),
        read_only: row.get(1),
    })
}

async fn open(conn: &ParsedConnection, host: &str, port: u16) -> Result<Session, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&conn.username)
        .password(&conn.password)
        .dbname(&conn.dbname)
        .application_name("berth-fixture-service")
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| with_causes(&e))?;
    let driver = tokio::spawn(connection);
    match tokio::time::timeout(CONNECT_TIMEOUT, role_of(&client)).await {
        Ok(Ok(role)) => Ok(Session {
            client,
            driver,
            host: host.to_owned(),
            port,
            role,
        }),
        Ok(Err(e)) => Err(format!("asking its role: {}", with_causes(&e))),
        Err(_) => Err("asking its role: no answer".into()),
    }
}

/// tokio-postgres's errors say "error connecting to server" and keep the reason (refused,
/// bad password, unknown host) in their sources.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Tries every host in order, logging one line per attempt.
pub async fn connect(conn: &ParsedConnection) -> Result<Session, NoHost> {
    let tsa = conn.target_session_attrs.as_str();
    let mut fallback = None;
    let mut attempts = Vec::new();
    for (host, port) in &conn.hosts {
        let session = match open(conn, host, *port).await {
            Ok(s) => s,
            Err(e) => {
                warn!(host = %host, port, user = %conn.username, error = %e, "connection attempt failed");
                attempts.push(format!("{host}:{port}: {e}"));
                continue;
            }
        };
        let role = session.role;
        match verdict(tsa, role) {
            Verdict::Accept => {
                info!(host = %host, port, in_recovery = role.in_recovery, target_session_attrs = tsa, "connection attempt accepted");
                return Ok(session);
            }
            Verdict::Fallback => {
                info!(host = %host, port, in_recovery = role.in_recovery, target_session_attrs = tsa, "connection attempt kept as fallback; looking for a standby");
                attempts.push(format!("{host}:{port}: not a standby"));
                fallback.get_or_insert(session);
            }
            Verdict::Reject => {
                info!(host = %host, port, in_recovery = role.in_recovery, read_only = role.read_only, target_session_attrs = tsa, "connection attempt rejected: wrong role");
                attempts.push(format!(
                    "{host}:{port}: in_recovery={} read_only={}",
                    role.in_recovery, role.read_only
                ));
            }
        }
    }
    if let Some(session) = fallback {
        info!(host = %session.host, port = session.port, "no standby answered; using the primary");
        return Ok(session);
    }
    Err(NoHost {
        target_session_attrs: tsa.to_owned(),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: Role = Role {
        in_recovery: false,
        read_only: false,
    };
    const STANDBY: Role = Role {
        in_recovery: true,
        read_only: true,
    };
    const READ_ONLY_PRIMARY: Role = Role {
        in_recovery: false,
        read_only: true,
    };

    #[test]
    fn libpq_rules() {
        use Verdict::*;
        let cases = [
            ("any", PRIMARY, Accept),
            ("any", STANDBY, Accept),
            ("primary", PRIMARY, Accept),
            ("primary", STANDBY, Reject),
            ("primary", READ_ONLY_PRIMARY, Accept),
            ("read-write", PRIMARY, Accept),
            ("read-write", STANDBY, Reject),
            ("read-write", READ_ONLY_PRIMARY, Reject),
            ("standby", STANDBY, Accept),
            ("standby", PRIMARY, Reject),
            ("prefer-standby", STANDBY, Accept),
            ("prefer-standby", PRIMARY, Fallback),
        ];
        for (tsa, role, want) in cases {
            assert_eq!(verdict(tsa, role), want, "{tsa} {role:?}");
        }
    }
}
