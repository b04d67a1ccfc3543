//! Operator commands of `berth-control-plane` that work on the deployment's etcd directly
//! rather than through the API: minting and revoking the API's bearer tokens (ADR 012). They
//! need what a replica needs to reach etcd (`--etcd-endpoints`, `--etcd-prefix`, or the same
//! `BERTH_*` environment) and nothing else: token records are not sealed, so no key file is
//! read or created.

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

async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    // Nothing this command reads or writes is sealed: a throwaway key keeps it from touching
    // (or creating) the replicas' key file.
    let unused = SecretBox::from_key(rand::random());
    Store::connect(
        &settings.etcd_endpoints,
        &settings.etcd_prefix,
        unused,
        spec::catalog::is_secret_key,
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
    let store = connect(settings).await?;
    match command {
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
