//! libpq's multi-host connection rules, done by hand because tokio-postgres only knows
//! `any` and `read-write`: try the hosts in order and keep the first whose role suits
//! `target_session_attrs`. With `sslmode=verify-full`, each host is dialled over TLS and must
//! prove it is that host, as libpq checks it (see [`Tls`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use service_config::ParsedConnection;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the fixture protects its connections, from the rendered `sslmode` (libpq docs, "SSL
/// Support", table "SSL Mode Descriptions").
#[derive(Clone)]
pub enum Tls {
    /// `disable`, `allow` and `prefer`: plain TCP. libpq would try TLS first for `prefer` (and
    /// after a refusal for `allow`) without checking the server; berth renders those only for
    /// servers without TLS, so the fixture does not imitate that.
    Off,
    /// `verify-full`: TLS only; the server's chain must lead to a CA of `sslrootcert`, and its
    /// certificate must name the host as dialled: a DNS SAN for a name, an IP-address SAN for
    /// an address (libpq does the latter since Postgres 14). rustls with webpki checks both.
    VerifyFull(MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Off => "Off",
            Tls::VerifyFull(_) => "VerifyFull",
        })
    }
}

/// Why the rendered TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode={0} is not supported by the test fixture (disable, allow, prefer, verify-full)"
    )]
    UnsupportedMode(String),
    /// libpq would fall back to ~/.postgresql/root.crt; the fixture wants it said.
    #[error("sslmode=verify-full needs sslrootcert")]
    NoRootCert,
    #[error("reading sslrootcert {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sslrootcert {path}: {message}")]
    BadCa { path: PathBuf, message: String },
}

impl Tls {
    /// The TLS `conn` asks for, with its CA read now (a new CA comes with a new container).
    /// `config_dir` is where the rendered files were read from; see [`local_path`].
    ///
    /// Errors: an `sslmode` other than `disable`, `allow`, `prefer` or `verify-full`;
    /// `verify-full` without `sslrootcert`, or with one that cannot be read or holds no
    /// usable certificate.
    pub fn from_connection(conn: &ParsedConnection, config_dir: &Path) -> Result<Tls, TlsError> {
        match conn.sslmode.as_str() {
            "disable" | "allow" | "prefer" => Ok(Tls::Off),
            "verify-full" => {
                let rootcert = conn.sslrootcert.as_deref().ok_or(TlsError::NoRootCert)?;
                let path = local_path(rootcert, config_dir);
                let pem = std::fs::read(&path).map_err(|source| TlsError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                let config = client_config(&pem).map_err(|message| TlsError::BadCa {
                    path: path.clone(),
                    message,
                })?;
                Ok(Tls::VerifyFull(MakeRustlsConnect::new(config)))
            }
            other => Err(TlsError::UnsupportedMode(other.to_owned())),
        }
    }
}

/// Where to read `sslrootcert` from. The rendered files name the CA where the service's
/// container sees it, in [`service_config::DEFAULT_CONFIG_DIR`]; a fixture reading its
/// config from another directory (tests, runs by hand) finds the file there instead.
/// Any other path is used as it is.
pub fn local_path(sslrootcert: &str, config_dir: &Path) -> PathBuf {
    let path = Path::new(sslrootcert);
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if dir == Path::new(service_config::DEFAULT_CONFIG_DIR) => {
            config_dir.join(name)
        }
        _ => path.to_path_buf(),
    }
}

/// A rustls client that trusts exactly the CA certificates in `ca_pem` (one or more PEM
/// certificates), with ring as its crypto provider and TLS 1.2 or 1.3 (Postgres accepts
/// nothing older by default either).
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in it".into());
    }
    // The provider is named rather than left to rustls's process default, which depends on
    // the features every crate in the build happened to turn on.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

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
    /// Whether the server says the session is TLS ([`ssl_of`]).
    pub ssl: bool,
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

/// Whether the server sees this session as TLS, from `pg_stat_ssl` (Postgres docs, "The
/// Cumulative Statistics System"), which every role may read for its own backend.
pub async fn ssl_of(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

type Driver = JoinHandle<Result<(), tokio_postgres::Error>>;

/// Connects with `tls` and spawns the task that drives the socket.
async fn establish<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<(Client, Driver), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = config.connect(tls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn open(
    conn: &ParsedConnection,
    tls: &Tls,
    host: &str,
    port: u16,
) -> Result<Session, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&conn.username)
        .password(&conn.password)
        .dbname(&conn.dbname)
        .application_name("berth-fixture-service")
        .connect_timeout(CONNECT_TIMEOUT);
    // tokio-postgres's `require` with a verifying connector is libpq's `verify-full`: the
    // connector gets the host as dialled and checks it against the certificate.
    let connecting = async {
        match tls {
            Tls::Off => establish(config.ssl_mode(SslMode::Disable), NoTls).await,
            Tls::VerifyFull(make) => {
                establish(config.ssl_mode(SslMode::Require), make.clone()).await
            }
        }
    };
    let (client, driver) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| with_causes(&e))?;
    let asked =
        async { Ok::<_, tokio_postgres::Error>((role_of(&client).await?, ssl_of(&client).await?)) };
    match tokio::time::timeout(CONNECT_TIMEOUT, asked).await {
        Ok(Ok((role, ssl))) => Ok(Session {
            client,
            driver,
            host: host.to_owned(),
            port,
            role,
            ssl,
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
pub async fn connect(conn: &ParsedConnection, tls: &Tls) -> Result<Session, NoHost> {
    let tsa = conn.target_session_attrs.as_str();
    let mut fallback = None;
    let mut attempts = Vec::new();
    for (host, port) in &conn.hosts {
        let session = match open(conn, tls, host, *port).await {
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
                info!(host = %host, port, in_recovery = role.in_recovery, ssl = session.ssl, target_session_attrs = tsa, "connection attempt accepted");
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

    fn conn(sslmode: &str, sslrootcert: Option<&str>) -> ParsedConnection {
        ParsedConnection {
            hosts: vec![("db".into(), 5432)],
            dbname: "app".into(),
            username: "u".into(),
            password: "p".into(),
            target_session_attrs: "any".into(),
            sslmode: sslmode.into(),
            sslrootcert: sslrootcert.map(String::from),
            listen_port: 1,
        }
    }

    #[test]
    fn the_ca_is_read_from_the_config_dir_it_was_rendered_for() {
        let dir = Path::new("/tmp/rendered");
        let cases = [
            ("/etc/berth/service/ca.crt", "/tmp/rendered/ca.crt"),
            ("/etc/berth/service/other.pem", "/tmp/rendered/other.pem"),
            ("/etc/ssl/ca.crt", "/etc/ssl/ca.crt"),
            (
                "/etc/berth/service/sub/ca.crt",
                "/etc/berth/service/sub/ca.crt",
            ),
            ("ca.crt", "ca.crt"),
        ];
        for (rootcert, want) in cases {
            assert_eq!(local_path(rootcert, dir), Path::new(want), "{rootcert}");
        }
    }

    #[test]
    fn sslmodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(
            {
                let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                p
            },
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        std::fs::write(
            dir.path().join("garbage.crt"),
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let rendered = service_config::CA_PATH;
        let empty = dir.path().join("empty.crt");
        let garbage = dir.path().join("garbage.crt");
        let missing = dir.path().join("missing.crt");
        // (sslmode, sslrootcert, Ok(verifies) or the error's start)
        let cases: [(&str, Option<&str>, Result<bool, &str>); 9] = [
            ("disable", None, Ok(false)),
            ("prefer", None, Ok(false)),
            ("allow", Some(rendered), Ok(false)),
            ("verify-full", Some(rendered), Ok(true)),
            (
                "verify-full",
                None,
                Err("sslmode=verify-full needs sslrootcert"),
            ),
            (
                "verify-full",
                Some(missing.to_str().unwrap()),
                Err("reading sslrootcert"),
            ),
            (
                "verify-full",
                Some(empty.to_str().unwrap()),
                Err("sslrootcert"),
            ),
            (
                "verify-full",
                Some(garbage.to_str().unwrap()),
                Err("sslrootcert"),
            ),
            (
                "require",
                Some(rendered),
                Err("sslmode=require is not supported"),
            ),
        ];
        for (mode, rootcert, want) in cases {
            let got = Tls::from_connection(&conn(mode, rootcert), dir.path());
            match (got, want) {
                (Ok(tls), Ok(verifies)) => {
                    assert_eq!(
                        matches!(tls, Tls::VerifyFull(_)),
                        verifies,
                        "{mode} {rootcert:?}"
                    )
                }
                (Err(e), Err(start)) => {
                    assert!(e.to_string().starts_with(start), "{mode} {rootcert:?}: {e}")
                }
                (got, want) => panic!("{mode} {rootcert:?}: got {got:?}, want {want:?}"),
            }
        }
    }

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
