//! One module per group of subcommands; each returns how the command ended.

mod apply;
mod get;
pub mod operations;
mod tasks;

use std::io::Write;

use serde_json::Value;

use crate::args::{Cli, Command, Global, Output};
use crate::client::Client;
use crate::error::{CliError, Exit};

/// What every command works with.
pub struct Ctx {
    pub client: Client,
    pub output: Output,
}

impl Ctx {
    /// The client and output format the global options ask for. Errors: a CA or client
    /// certificate that cannot be read.
    pub fn new(global: &Global) -> Result<Ctx, CliError> {
        Ok(Ctx {
            client: Client::new(global)?,
            output: global.output,
        })
    }
}

/// Runs the command line's subcommand. Errors are returned, not printed.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Apply(a) => apply::apply(&ctx, a).await,
        Command::Get(g) => get::get(&ctx, g).await,
        Command::Logs(l) => tasks::logs(&ctx, l).await,
        Command::Cancel { id, task } => tasks::cancel(&ctx, &id, &task).await,
        Command::Delete { id, wait } => tasks::delete(&ctx, &id, wait).await,
        Command::Operation(op) => operations::run(&ctx, op).await,
    }
}

/// Prints text on stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

/// Prints the API's JSON as it came, indented.
pub fn out_json(v: &Value) {
    out(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}
