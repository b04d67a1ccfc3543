//! The S3 test server (tests/s3-server, through `Fleet::start_s3`) against the real client
//! berth's backups use: pgBackRest from berth's Postgres image, in a container on a host's
//! engine and on a network of its own as berth's Postgres containers are, with the options a
//! berth repository on this server gets. It writes, lists and reads an object back, and is
//! refused with a wrong secret or region, so the server checks signatures as S3 does.

use std::io::Write;
use std::process::Stdio;

use e2e::test_support::psql::docker;
use e2e::{Fleet, S3Server};

/// Runs `pgbackrest ARGS` in a throwaway container of berth's Postgres 17 image on `engine`,
/// attached to `network`, with `env` (pgBackRest's options) in its environment and `stdin`
/// as its input; (succeeded, stdout, stderr).
fn pgbackrest(
    engine: Option<&str>,
    network: &str,
    env: &[(String, String)],
    args: &[&str],
    stdin: &[u8],
) -> (bool, String, String) {
    let mut command = docker(engine);
    command.args(["run", "--rm", "-i", "--network", network]);
    for (name, value) in env {
        // `-e NAME` passes the docker CLI's own value: the secret stays out of every argv.
        command.args(["-e", name]).env(name, value);
    }
    let mut child = command
        .args(["--entrypoint", "pgbackrest", "berth/postgres:17"])
        // Console only: the image's log directory is for the node's own pgBackRest.
        .args(["--log-level-file=off", "--log-level-console=warn"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker CLI");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write to pgbackrest");
    let out = child.wait_with_output().expect("docker run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// pgBackRest in a container on `host`'s engine puts an object under its own repository
/// path on `s3`, lists it and reads it back, and is refused with a wrong secret or region.
fn check_from(fleet: &Fleet, s3: &S3Server, host: &str) {
    let engine = fleet.engine(host);
    // A bridge network of the fleet's own, as each database gets: the fleet removes networks
    // named after its databases when dropped.
    let network = format!("berth-{}", fleet.db_id(&format!("s3-{host}")));
    fleet.docker_on(
        host,
        &[
            "network",
            "create",
            "--label",
            "berth.managed=true",
            &network,
        ],
    );

    let repo = s3.pgbackrest_env(&format!("/{host}"));
    let content = format!("written by pgBackRest on {host}\n").into_bytes();
    let (ok, out, err) = pgbackrest(
        engine.as_deref(),
        &network,
        &repo,
        &["repo-put", "probe/object.txt"],
        &content,
    );
    assert!(
        ok,
        "repo-put on {host} failed:\n{out}{err}\nserver log:\n{}",
        s3.log()
    );

    // s3s-fs keeps an object as a file under its bucket's directory.
    let file = s3.root.join(&s3.bucket).join(host).join("probe/object.txt");
    assert_eq!(
        std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
        content
    );

    let (ok, out, err) = pgbackrest(
        engine.as_deref(),
        &network,
        &repo,
        &["repo-ls", "--recurse"],
        b"",
    );
    assert!(
        ok,
        "repo-ls on {host} failed:\n{out}{err}\nserver log:\n{}",
        s3.log()
    );
    assert!(
        out.lines().any(|l| l.trim() == "probe/object.txt"),
        "repo-ls on {host} does not list the object:\n{out}"
    );

    let (ok, out, err) = pgbackrest(
        engine.as_deref(),
        &network,
        &repo,
        &["repo-get", "probe/object.txt"],
        b"",
    );
    assert!(
        ok,
        "repo-get on {host} failed:\n{out}{err}\nserver log:\n{}",
        s3.log()
    );
    assert_eq!(out.as_bytes(), content);

    // pgBackRest names the HTTP status it got (repo-ls starts with a HEAD, whose answer has
    // no body to show S3's error code): 403 SignatureDoesNotMatch, 400
    // AuthorizationHeaderMalformed.
    for (what, option, wrong, code) in [
        (
            "secret key",
            "PGBACKREST_REPO1_S3_KEY_SECRET",
            "not-the-secret",
            "failed with 403",
        ),
        (
            "region",
            "PGBACKREST_REPO1_S3_REGION",
            "us-west-2",
            "failed with 400",
        ),
    ] {
        let env: Vec<(String, String)> = repo
            .iter()
            .map(|(name, value)| {
                let value = if name == option { wrong } else { value };
                (name.clone(), value.to_string())
            })
            .collect();
        let (ok, out, err) = pgbackrest(engine.as_deref(), &network, &env, &["repo-ls"], b"");
        assert!(!ok, "repo-ls with a wrong {what} succeeded:\n{out}");
        assert!(
            format!("{out}{err}").contains(code),
            "repo-ls with a wrong {what} did not fail with {code}:\n{out}{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_writes_lists_and_reads_an_object_on_the_s3_test_server() {
    let fleet = Fleet::start(1).await;
    let s3 = fleet.start_s3();
    println!("S3 test server at {} (region {})", s3.endpoint, s3.region);
    check_from(&fleet, &s3, &fleet.host(1));
}

/// On an engine-per-host fleet each host's containers are behind its own engine and
/// namespace; one server serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_of_an_engine_per_host_fleet_reaches_the_s3_test_server() {
    let fleet = Fleet::start_engine_per_host(2).await;
    let s3 = fleet.start_s3();
    println!("S3 test server at {} (region {})", s3.endpoint, s3.region);
    for i in 1..=2 {
        check_from(&fleet, &s3, &fleet.host(i));
    }
}
