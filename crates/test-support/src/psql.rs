//! psql inside one of berth's Postgres containers, as the superuser over the container's local
//! socket (the image's `pg_hba` trusts it, so no password is needed), through the docker CLI
//! against the machine's engine or one host's engine of an engine-per-host fleet. The e2e
//! tests and the benchmarks write and read through it, and tell a writable primary by an
//! `INSERT` it accepts.

use std::process::Command;

/// The docker CLI against `engine` (a `DOCKER_HOST` such as `unix:///run/.../docker.sock`),
/// or the machine's engine when None.
pub fn docker(engine: Option<&str>) -> Command {
    let mut c = Command::new("docker");
    if let Some(e) = engine {
        c.arg("-H").arg(e);
    }
    c
}

/// Runs `sql` with psql in `container` on `engine`, in database `database`, stopping at the
/// first error; connecting gives up after 2 s (a Postgres that is being stopped or promoted).
/// Returns whether psql succeeded, and its stdout then stderr, trimmed (unaligned, tuples
/// only: `SELECT 1` gives `"1"`). A docker CLI that cannot run counts as a failure, its error
/// as the text.
pub fn psql(engine: Option<&str>, container: &str, database: &str, sql: &str) -> (bool, String) {
    let out = docker(engine)
        .args(["exec", "-e", "PGCONNECT_TIMEOUT=2", container])
        .args(psql_argv(database))
        .args(["-c", sql])
        .output();
    match out {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text.trim().to_string())
        }
        Err(e) => (false, format!("run the docker CLI: {e}")),
    }
}

/// The command of one psql session in `container` on `engine`, in database `database`, that
/// reads its statements from stdin (`docker exec -i`), with [`psql`]'s output format and
/// stopping at the first error: for a steady stream of statements, one connection for all.
pub fn psql_session(engine: Option<&str>, container: &str, database: &str) -> Command {
    let mut c = docker(engine);
    c.args(["exec", "-i", container]).args(psql_argv(database));
    c
}

/// psql as the superuser on the container's local socket: unaligned tuples only, no psqlrc,
/// quiet, stopping at the first error.
fn psql_argv(database: &str) -> [&str; 10] {
    [
        "psql",
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "/var/run/postgresql",
        "-U",
        "postgres",
        "-d",
        database,
    ]
}
