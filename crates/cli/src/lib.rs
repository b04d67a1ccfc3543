//! `berth`, the command line client of the control plane's API.
//!
//! - [`args`]: the command line, and the exit codes `berth --help` lists.
//! - [`client`]: HTTP to the API (token, TLS, URLs) and answers turned into [`error::CliError`]s.
//! - [`spec_file`]: `apply -f`'s JSON or YAML file.
//! - [`follow`]: a task's log as a stream, reopened when it breaks, then the task's end.
//! - [`progress`]: the live display of a followed task, one line per step.
//! - [`table`]: tables for people; `-o json` prints the API's JSON instead.
//! - [`commands`]: one module per group of subcommands (`operations`: switchover, failover,
//!   restart, stop and start of Postgres instances).
//!
//! The API's types come from the `spec` crate, the same ones the control plane serves.

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod follow;
pub mod progress;
pub mod spec_file;
#[cfg(test)]
mod stand_in;
pub mod table;

use error::{Exit, render};

/// Runs a parsed command line to its end: prints results on stdout and errors on stderr,
/// and returns the exit code.
pub async fn main(cli: args::Cli) -> Exit {
    match commands::run(cli).await {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("{}", render(&e));
            e.exit()
        }
    }
}
