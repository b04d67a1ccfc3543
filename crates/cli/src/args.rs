//! The command line: global connection and output options, and one subcommand per operation.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Shown at the end of `berth --help`: what each exit code means.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done: the request was accepted, and a followed task completed
  1  a followed task failed (its failing step's message is printed)
  2  a followed task was canceled
  3  the API refused the request (a 4xx: its error name and every field path are printed),
     or the command line or the spec file is wrong
  4  the control plane could not be reached or failed (connection refused or closed,
     timeout, a 5xx, an answer that is not the API's)";

/// berth: create, change, follow and inspect Postgres databases and their services through
/// the control plane's API.
#[derive(Parser)]
#[command(name = "berth", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the process's arguments (as [`Cli::try_parse`] does) with [`command`]'s usage
/// lines.
pub fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os())
}

/// [`parse`] of the given arguments, the first being the program's name.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// The command line as clap describes it, each command's usage line fixed to the one its
/// help shows (`berth apply [OPTIONS] --file <FILE>`). clap's error messages otherwise
/// list every option given, from the command line or the environment, as if it were
/// required: `--url` (BERTH_URL) has a default and is never needed.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    fix_usage(cmd)
}

fn fix_usage(mut cmd: clap::Command) -> clap::Command {
    let usage = cmd.render_usage().to_string();
    let usage = usage
        .strip_prefix("Usage: ")
        .unwrap_or(&usage)
        .trim()
        .to_string();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, fix_usage);
    }
    cmd.override_usage(usage)
}

/// Options every subcommand takes.
#[derive(Args)]
pub struct Global {
    /// The control plane's API; by default the dev fleet's (`deploy/dev/up`).
    #[arg(
        long,
        env = "BERTH_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub url: String,
    /// A bearer token (`berth_<id>_<secret>`, made by `berth-control-plane token create`);
    /// needed when the API is not on a loopback address (ADR 012).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A PEM file of the CA to trust for an https URL: the fleet CA (`ca.pem` in a replica's
    /// data directory) when the API serves a certificate it issued.
    #[arg(long, env = "BERTH_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for an API that asks for one (--api-client-certs), with
    /// --client-key: what `berth-control-plane client-cert create` wrote.
    #[arg(
        long,
        env = "BERTH_CLIENT_CERT",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "BERTH_CLIENT_KEY",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<PathBuf>,
    /// Tables for people, or the API's JSON for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and progress lines.
    Table,
    /// The API's JSON; NDJSON for log entries.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a database, or update it if it exists, from a spec file.
    Apply(ApplyArgs),
    /// Show databases, hosts or tasks.
    #[command(subcommand)]
    Get(GetCommand),
    /// Print a task's log; with -f, follow it until the task ends.
    Logs(LogsArgs),
    /// Cancel a pending or running task.
    Cancel {
        /// The database id.
        id: String,
        /// The task id.
        task: String,
    },
    /// Delete a database: its instances, services, data and roles.
    Delete {
        /// The database id.
        id: String,
        /// Follow the delete task until it ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
    },
    #[command(flatten)]
    Operation(OperationCommand),
}

/// The high-availability operations on a running database's Postgres instances, each a
/// task of the database carried out through the instances' Patroni
/// ([`crate::commands::operations`]).
#[derive(Debug, Subcommand)]
pub enum OperationCommand {
    /// Hand a node's primary role over to a replica that has caught up (planned, no data lost).
    ///
    /// Patroni demotes the node's primary and promotes a replica that streams from it and has
    /// caught up: --candidate, or the one Patroni picks. The old primary rejoins as a replica;
    /// clients connected to it are disconnected. With --at, Patroni switches over at that
    /// time, and the task ends once it is scheduled. Refused (exit 3) when the node has no
    /// primary or no replica that has caught up: a lost primary is replaced by a failover.
    Switchover {
        #[command(flatten)]
        node: NodeArgs,
        /// The replica to promote (an instance id of the node); by default Patroni picks one.
        #[arg(long, value_name = "INSTANCE")]
        candidate: Option<String>,
        #[command(flatten)]
        at: AtArg,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Promote a replica of a node whose primary is lost.
    ///
    /// Patroni promotes --candidate, or the running replica that lags least, without the
    /// primary's consent: what the replica had not received yet is lost. Refused (exit 3)
    /// while the node's primary is healthy, which a switchover moves without loss, unless
    /// --skip-validation.
    Failover {
        #[command(flatten)]
        node: NodeArgs,
        /// The replica to promote (an instance id of the node); by default the running replica
        /// that lags least.
        #[arg(long, value_name = "INSTANCE")]
        candidate: Option<String>,
        /// Fail over even while the node's primary is healthy.
        #[arg(long)]
        skip_validation: bool,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Restart a Postgres instance's Postgres through its Patroni.
    ///
    /// Patroni restarts Postgres inside the instance's container (which stays), now or, with
    /// --at, at that time: the task then ends once the restart is scheduled.
    Restart {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(flatten)]
        at: AtArg,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Stop a Postgres instance: its container goes, its data directory stays.
    ///
    /// A primary first hands over to a replica that has caught up (a switchover). The instance
    /// stays stopped, data directory and host port kept, until `berth start`. Refused (exit 3)
    /// when it is its node's last running instance, or a primary no replica can take over
    /// from, unless --force.
    Stop {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Stop it even when that stops its node, or leaves the node without a primary.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Start a stopped Postgres instance again, on its kept data directory.
    ///
    /// Its Patroni rejoins the node, as a replica when another instance is the primary.
    /// Starting a running instance changes nothing.
    Start {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(flatten)]
        wait: WaitArg,
    },
}

/// A node of a database, as the operations on a node name it.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The database id.
    pub id: String,
    /// The node's name (`nodes[].name` in the spec).
    pub node: String,
}

/// A Postgres instance of a database.
#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// The database id.
    pub id: String,
    /// The Postgres instance's id (`berth get database ID` lists them).
    pub instance: String,
}

/// `--at TIME` of an operation Patroni can schedule.
#[derive(Debug, Args)]
pub struct AtArg {
    /// When Patroni carries it out: an RFC 3339 time in the future, such as
    /// 2030-01-01T22:00:00Z; by default now.
    #[arg(long = "at", value_name = "TIME", value_parser = rfc3339)]
    pub time: Option<DateTime<Utc>>,
}

/// `--wait` of a command that starts a task.
#[derive(Debug, Args)]
pub struct WaitArg {
    /// Follow the task until it ends, one line per step; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
}

/// Reads `--at`: RFC 3339, any offset, kept in UTC.
fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}: expected an RFC 3339 time such as 2030-01-01T22:00:00Z"))
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The spec file, JSON (`.json`) or YAML (`.yaml`, `.yml`), or `-` for standard input:
    /// either the create body `{id, spec}` or the spec alone (with --id).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// The database id; overrides nothing: if the file names one too, both must agree.
    #[arg(long)]
    pub id: Option<String>,
    /// Follow the task until it ends, one line per step; the exit code says how it ended.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Print the steps the change would take instead of making it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Every database, with its state and instances.
    Databases,
    /// One database: its spec, Postgres instances and service instances.
    Database {
        /// The database id.
        id: String,
    },
    /// Every host of the fleet.
    Hosts,
    /// One host.
    Host {
        /// The host id.
        id: String,
    },
    /// A database's tasks, newest first.
    Tasks {
        /// The database id.
        id: String,
        /// At most this many (1..=1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One task.
    Task {
        /// The database id.
        id: String,
        /// The task id.
        task: String,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The database id.
    pub id: String,
    /// The task id.
    pub task: String,
    /// Follow the log until the task ends; the exit code then says how it ended.
    #[arg(short, long)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    #[test]
    fn usage_lines_never_show_the_url_as_required() {
        let e = parse(&["apply", "--url", "http://cp:3000"]).err().unwrap();
        let text = e.render().to_string();
        assert!(
            text.contains("Usage: berth apply [OPTIONS] --file <FILE>\n"),
            "{text}"
        );
        assert!(!text.contains("--url <URL>"), "{text}");
        let e = parse(&[
            "apply",
            "-f",
            "x",
            "--wait",
            "--dry-run",
            "--url",
            "http://cp",
        ])
        .err()
        .unwrap();
        assert!(
            !e.render().to_string().contains("--url <URL>"),
            "{}",
            e.render()
        );
        let e = parse(&["get", "task", "example", "--url", "http://cp"])
            .err()
            .unwrap();
        assert!(
            e.render()
                .to_string()
                .contains("Usage: berth get task [OPTIONS] <ID> <TASK>\n"),
            "{}",
            e.render()
        );
        let help = command().render_help().to_string();
        assert!(help.contains("[default: http://127.0.0.1:3000]"), "{help}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn apply_takes_a_file_an_id_and_wait() {
        let cli = parse(&["apply", "-f", "db.yaml", "--id", "example", "--wait"]).unwrap();
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.file, PathBuf::from("db.yaml"));
        assert_eq!(a.id.as_deref(), Some("example"));
        assert!(a.wait && !a.dry_run);
    }

    #[test]
    fn apply_needs_a_file_and_refuses_wait_with_dry_run() {
        assert!(parse(&["apply"]).is_err());
        assert!(parse(&["apply", "-f", "x.json", "--wait", "--dry-run"]).is_err());
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = parse(&["get", "hosts", "-o", "json", "--url", "http://cp:3000"]).unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.url, "http://cp:3000");
        let cli = parse(&["--output", "json", "get", "databases"]).unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert!(matches!(cli.command, Command::Get(GetCommand::Databases)));
    }

    #[test]
    fn get_logs_cancel_and_delete_take_their_ids() {
        let cli = parse(&["get", "tasks", "example", "--limit", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Get(GetCommand::Tasks { ref id, limit: 5 }) if id == "example"
        ));
        let cli = parse(&["logs", "example", "t1", "-f"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Logs(LogsArgs { follow: true, .. })
        ));
        let cli = parse(&["cancel", "example", "t1"]).unwrap();
        assert!(matches!(cli.command, Command::Cancel { ref task, .. } if task == "t1"));
        let cli = parse(&["delete", "example", "--wait"]).unwrap();
        assert!(matches!(cli.command, Command::Delete { wait: true, .. }));
        assert!(parse(&["logs", "example"]).is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        assert!(parse(&["get", "hosts", "--client-cert", "a.pem"]).is_err());
        assert!(
            parse(&[
                "get",
                "hosts",
                "--client-cert",
                "a.pem",
                "--client-key",
                "k.pem"
            ])
            .is_ok()
        );
    }

    #[test]
    fn help_lists_the_exit_codes_and_never_the_token_s_value() {
        let command = command();
        let help = command.clone().render_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("3  the API refused the request"), "{help}");
        let token = command
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .expect("a --token option");
        assert!(
            token.is_hide_env_values_set(),
            "help would print BERTH_TOKEN's value"
        );
    }
}
