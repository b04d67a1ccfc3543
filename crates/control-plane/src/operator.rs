//! Operator commands of `berth-control-plane` that work on the deployment's etcd directly
//! rather than through the API: minting and revoking the API's bearer tokens and issuing
//! client certificates for the API's mutual TLS (ADR 012). They need what a replica needs to
//! reach etcd (`--etcd-endpoints`, `--etcd-prefix`, or the same `BERTH_*` environment). Token
//! records are not sealed, so `token` reads no key file; `client-cert` unseals the fleet CA
//! and needs the replicas' key file (`--key-file` or DATA_DIR/secret.key), never creating one.

use std::io::Write;

use anyhow::Context;
use store::{SecretBox, Store, TokenScope};

use crate::api::auth;
use crate::settings::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// API bearer tokens: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Client certificates for the API's mutual TLS (--api-client-certs).
    #[command(subcommand)]
    ClientCert(ClientCertCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCertCommand {
    /// Issues a client certificate signed by the fleet CA, valid until 2036: writes
    /// OUT/NAME.pem, OUT/NAME-key.pem (mode 0600) and OUT/ca.pem (the CA to trust the API with).
    Create {
        /// The client's name, a DNS label ("alice", "ci"); the certificate names
        /// NAME.clients.berth.
        #[arg(long)]
        name: String,
        /// Directory to write the files to.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it on stdout, once: only its SHA-256 is kept.
    Create {
        /// A label for the token, shown by `list` and in logs ("ci", "alice").
        #[arg(long)]
        name: String,
        /// What the token may do.
        #[arg(long, value_enum, default_value_t = Scope::ReadOnly)]
        scope: Scope,
    },
    /// Lists tokens: id, scope, name, creation time (never the tokens themselves).
    List,
    /// Revokes a token by its id (the 12 hex digits after `berth_`); refused from the next
    /// request on, on every replica.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Scope {
    /// GET and HEAD only.
    ReadOnly,
    /// Every call.
    ReadWrite,
}

impl From<Scope> for TokenScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::ReadOnly => TokenScope::ReadOnly,
            Scope::ReadWrite => TokenScope::ReadWrite,
        }
    }
}

/// Issues a client certificate for `name` into `dir` (see [`ClientCertCommand::Create`]).
async fn client_cert(settings: &Settings, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let key_file = settings.key_file();
    // load_or_create would make a new key that unseals nothing; refuse instead.
    anyhow::ensure!(
        key_file.is_file(),
        "{} is missing: client-cert needs the replicas' key file (--key-file) to unseal the fleet CA",
        key_file.display()
    );
    let secrets = SecretBox::load_or_create(&key_file)
        .with_context(|| format!("secret key {}", key_file.display()))?;
    let store = Store::connect_as(
        &settings.etcd_endpoints,
        &settings.etcd_prefix,
        secrets,
        spec::catalog::is_secret_key,
        settings.etcd_credentials()?.as_ref(),
    )
    .await
    .with_context(|| format!("etcd at {}", settings.etcd_endpoints.join(",")))?;
    let authority = crate::tls::FleetTls::authority_of(&store)
        .await
        .context("fleet CA")?;
    let issued = authority.issue_api_client(name)?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    crate::tls::write_file(&cert, &issued.cert_pem, 0o644)?;
    crate::tls::write_file(&key, &issued.key_pem, 0o600)?;
    crate::tls::write_file(&dir.join("ca.pem"), authority.cert_pem(), 0o644)?;
    eprintln!(
        "issued client certificate {name}.clients.berth: {} and {} (keep the key secret)",
        cert.display(),
        key.display()
    );
    Ok(())
}

async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    // Nothing this command reads or writes is sealed: a throwaway key keeps it from touching
    // (or creating) the replicas' key file.
    let unused = SecretBox::from_key(rand::random());
    Store::connect_as(
        &settings.etcd_endpoints,
        &settings.etcd_prefix,
        unused,
        spec::catalog::is_secret_key,
        settings.etcd_credentials()?.as_ref(),
    )
    .await
    .with_context(|| format!("etcd at {}", settings.etcd_endpoints.join(",")))
}

/// Runs an operator command, writing its answer to `out`.
pub async fn run(
    settings: &Settings,
    command: Command,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if let Command::ClientCert(ClientCertCommand::Create { name, out: dir }) = command {
        return client_cert(settings, &name, &dir).await;
    }
    let store = connect(settings).await?;
    match command {
        Command::ClientCert(_) => unreachable!("handled above"),
        Command::Token(TokenCommand::Create { name, scope }) => {
            let minted = auth::mint(&name, scope.into());
            store
                .create_api_token(&minted.record)
                .await
                .context("store the token")?;
            writeln!(out, "{}", minted.token)?;
            eprintln!(
                "created token {} ({name}, {}); it is shown only this once",
                minted.record.id,
                minted.record.scope.as_str()
            );
        }
        Command::Token(TokenCommand::List) => {
            for t in store.list_api_tokens().await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    t.id,
                    t.scope.as_str(),
                    t.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    t.name
                )?;
            }
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            if !store.revoke_api_token(&id).await? {
                anyhow::bail!("no token with id {id:?}");
            }
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}
