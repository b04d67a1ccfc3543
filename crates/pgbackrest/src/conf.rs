//! A node's `pgbackrest.conf`, rendered whole from its effective `backup_config` (the
//! node's own, or else the database's; ADR 021). Pure: the same inputs give the same bytes.
//!
//! The file holds repository keys, so it is a secret file like `berth.conf`: the image
//! copies it to a private directory (mode 0600, owned by postgres) before anything reads it.

use std::fmt::Write;

use spec::backup::{Repository, RepositoryType};

use crate::STANZA;

/// Where Postgres runs inside the instance's container, as pgBackRest reaches it: over the
/// local socket, as the superuser (trusted locally, `patroni::config`'s pg_hba).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLocal<'a> {
    /// The data directory (`pg1-path`).
    pub data_dir: &'a str,
    /// The directory of the Unix socket (`pg1-socket-path`).
    pub socket_dir: &'a str,
    /// The port Postgres listens on inside the container (`pg1-port`).
    pub port: u16,
}

/// Where a node's backups and archived WAL live in a repository: the reference control
/// plane's layout, `{base_path}/databases/{database_id}/{repository_id}/{node}`, so that
/// nodes, databases and repositories sharing a bucket or a directory never share a stanza.
pub fn repository_path(
    base_path: Option<&str>,
    database_id: &str,
    repository_id: &str,
    node: &str,
) -> String {
    let base = base_path.unwrap_or("/").trim_end_matches('/');
    format!("{base}/databases/{database_id}/{repository_id}/{node}")
}

/// `host[:port]` of `s3_endpoint` as pgBackRest takes it: the host in `repoN-s3-endpoint`,
/// a port in `repoN-storage-port`.
fn endpoint_parts(endpoint: &str) -> (&str, Option<&str>) {
    match endpoint.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (host, Some(port))
        }
        _ => (endpoint, None),
    }
}

/// Which repositories of `repositories` the instances use, with pgBackRest's number for
/// each (its position plus one, so numbers stay put when the list's others change). Only
/// `s3` repositories: a `posix` one would be a directory inside one container (ADR 022).
pub fn usable(repositories: &[Repository]) -> Vec<(usize, &Repository)> {
    repositories
        .iter()
        .enumerate()
        .filter(|(_, r)| r.repository_type == RepositoryType::S3)
        .map(|(i, r)| (i + 1, r))
        .collect()
}

/// The whole `pgbackrest.conf` of node `node` of database `database_id`, or None when none
/// of `repositories` is [`usable`] (then nothing archives WAL: no `archive_mode` with
/// nowhere to archive).
///
/// `[global]` holds the repositories (`repoN-*`, with `custom_options` as `repoN-{name}`;
/// validated on the way in, ADR 021) and quiet logging (the console only: the output of a
/// backup goes to its task's log); `[db]` the local Postgres.
pub fn render_conf(
    database_id: &str,
    node: &str,
    repositories: &[Repository],
    pg: &PgLocal,
) -> Option<String> {
    let repos = usable(repositories);
    if repos.is_empty() {
        return None;
    }
    let mut out = format!(
        "# Written by berth's control plane for node {node} of database {database_id} \
         (ADR 022). Holds repository keys.\n[global]\nlog-level-console=info\n\
         log-level-stderr=off\nlog-level-file=off\nlog-timestamp=n\n"
    );
    for (n, r) in repos {
        let path = repository_path(r.base_path.as_deref(), database_id, &r.id, node);
        repository_lines(&mut out, n, r, &path, true);
    }
    stanza_section(&mut out, pg);
    Some(out)
}

/// `repo{n}-*` lines of repository `r` at `path`; `retention` for a repository backups go
/// to (a restore expires nothing).
fn repository_lines(out: &mut String, n: usize, r: &Repository, path: &str, retention: bool) {
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "repo{n}-{key}={value}");
    };
    line("type", r.repository_type.as_str());
    line("path", path);
    if let Some(bucket) = &r.s3_bucket {
        line("s3-bucket", bucket);
    }
    if let Some(region) = &r.s3_region {
        line("s3-region", region);
    }
    let default_endpoint = r
        .s3_region
        .as_ref()
        .map(|region| format!("s3.{region}.amazonaws.com"));
    if let Some(endpoint) = r.s3_endpoint.as_ref().or(default_endpoint.as_ref()) {
        let (host, port) = endpoint_parts(endpoint);
        line("s3-endpoint", host);
        if let Some(port) = port {
            line("storage-port", port);
        }
    }
    match (&r.s3_key, &r.s3_key_secret) {
        (Some(key), Some(secret)) => {
            line("s3-key", key);
            line("s3-key-secret", secret);
        }
        // Validation allows both or neither: neither means the host's own credentials.
        _ => line("s3-key-type", "auto"),
    }
    if retention {
        let (count, kind) = r.retention();
        line("retention-full", &count.to_string());
        line("retention-full-type", kind.as_str());
    }
    for (key, value) in &r.custom_options {
        line(key, value);
    }
}

/// The `[db]` section: the local Postgres.
fn stanza_section(out: &mut String, pg: &PgLocal) {
    let _ = write!(
        out,
        "\n[{STANZA}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\npg1-user=postgres\n",
        pg.data_dir, pg.socket_dir, pg.port
    );
}

/// The backup a node starts from (ADR 025): node `source_node` of database
/// `source_database_id`, in `repository`.
#[derive(Debug, Clone, Copy)]
pub struct RestoreSource<'a> {
    pub source_database_id: &'a str,
    pub source_node: &'a str,
    /// An `s3` repository (with its keys, if it has any).
    pub repository: &'a Repository,
}

/// The `pgbackrest-restore.conf` a node's first instance bootstraps from ([`RESTORE_CONF_FILE`]
/// in its config directory): `repo1` is the source's repository at the source node's path.
/// The restore's own options go on the command line ([`crate::restore_argv`]): pgBackRest
/// reads `type`, `target` and `set` from there only. Holds repository keys.
///
/// [`RESTORE_CONF_FILE`]: crate::RESTORE_CONF_FILE
pub fn render_restore_conf(node: &str, source: &RestoreSource, pg: &PgLocal) -> String {
    let mut out = format!(
        "# Written by berth's control plane: node {node} starts from a backup of node {} of \
         database {} (ADR 025). Holds repository keys.\n[global]\nlog-level-console=info\n\
         log-level-stderr=off\nlog-level-file=off\nlog-timestamp=n\n",
        source.source_node, source.source_database_id
    );
    let r = source.repository;
    let path = repository_path(
        r.base_path.as_deref(),
        source.source_database_id,
        &r.id,
        source.source_node,
    );
    repository_lines(&mut out, 1, r, &path, false);
    stanza_section(&mut out, pg);
    out
}

/// pgBackRest's repository options that hold credentials (its "secure" options), without
/// the `repoN-` prefix.
const SECRET_OPTIONS: &[&str] = &[
    "s3-key",
    "s3-key-secret",
    "s3-token",
    "cipher-pass",
    "azure-key",
    "sftp-private-key-passphrase",
];

/// The credentials `conf` (a rendered `pgbackrest.conf`) holds: the values of its
/// `repoN-s3-key`, `repoN-s3-key-secret` and other secret options, so that what a command
/// run with it prints can be masked before it is logged or returned.
pub fn secrets(conf: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(key, value)| {
            !value.is_empty()
                && key
                    .strip_prefix("repo")
                    .map(|k| k.trim_start_matches(|c: char| c.is_ascii_digit()))
                    .and_then(|k| k.strip_prefix('-'))
                    .is_some_and(|k| SECRET_OPTIONS.contains(&k))
        })
        .map(|(_, value)| value.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn s3(id: &str) -> Repository {
        Repository {
            id: id.into(),
            repository_type: RepositoryType::S3,
            base_path: Some("/backups/".into()),
            s3_bucket: Some("bucket-1".into()),
            s3_region: Some("eu-west-1".into()),
            s3_endpoint: Some("10.0.0.5:9443".into()),
            s3_key: Some("AKIA".into()),
            s3_key_secret: Some("s3cr3t".into()),
            retention_full: Some(3),
            retention_full_type: Some(spec::backup::RetentionFullType::Count),
            custom_options: BTreeMap::from([("s3-uri-style".into(), "path".into())]),
        }
    }

    const PG: PgLocal = PgLocal {
        data_dir: "/var/lib/postgresql/data",
        socket_dir: "/var/run/postgresql",
        port: 5432,
    };

    #[test]
    fn an_s3_repository_becomes_numbered_options_and_the_node_a_stanza() {
        let posix = Repository {
            id: "local".into(),
            repository_type: RepositoryType::Posix,
            base_path: Some("/srv".into()),
            s3_bucket: None,
            s3_region: None,
            s3_endpoint: None,
            s3_key: None,
            s3_key_secret: None,
            retention_full: None,
            retention_full_type: None,
            custom_options: BTreeMap::new(),
        };
        let mut aws = s3("aws");
        aws.s3_endpoint = None;
        aws.base_path = None;
        aws.s3_key = None;
        aws.s3_key_secret = None;
        aws.retention_full = None;
        aws.retention_full_type = None;
        aws.custom_options.clear();
        let conf = render_conf("db1", "n1", &[s3("main"), posix, aws], &PG).unwrap();
        let lines: Vec<&str> = conf.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "[global]",
                "log-level-console=info",
                "log-level-stderr=off",
                "log-level-file=off",
                "log-timestamp=n",
                "repo1-type=s3",
                "repo1-path=/backups/databases/db1/main/n1",
                "repo1-s3-bucket=bucket-1",
                "repo1-s3-region=eu-west-1",
                "repo1-s3-endpoint=10.0.0.5",
                "repo1-storage-port=9443",
                "repo1-s3-key=AKIA",
                "repo1-s3-key-secret=s3cr3t",
                "repo1-retention-full=3",
                "repo1-retention-full-type=count",
                "repo1-s3-uri-style=path",
                // The posix repository (number 2) is left out; numbers keep their places.
                "repo3-type=s3",
                "repo3-path=/databases/db1/aws/n1",
                "repo3-s3-bucket=bucket-1",
                "repo3-s3-region=eu-west-1",
                "repo3-s3-endpoint=s3.eu-west-1.amazonaws.com",
                "repo3-s3-key-type=auto",
                "repo3-retention-full=7",
                "repo3-retention-full-type=time",
                "",
                "[db]",
                "pg1-path=/var/lib/postgresql/data",
                "pg1-socket-path=/var/run/postgresql",
                "pg1-port=5432",
                "pg1-user=postgres",
            ]
        );
    }

    #[test]
    fn the_secrets_of_a_conf_are_its_keys() {
        let conf = render_conf("db1", "n1", &[s3("main")], &PG).unwrap();
        assert_eq!(secrets(&conf), ["AKIA", "s3cr3t"]);
        let mut auto = s3("main");
        auto.s3_key = None;
        auto.s3_key_secret = None;
        let conf = render_conf("db1", "n1", &[auto], &PG).unwrap();
        assert!(secrets(&conf).is_empty(), "{conf}");
        assert_eq!(
            secrets("repo2-cipher-pass=x\nrepo12-s3-token=t\nrepo1-path=/p\n"),
            ["x", "t"]
        );
    }

    #[test]
    fn nothing_usable_renders_no_file() {
        let mut posix = s3("p");
        posix.repository_type = RepositoryType::Posix;
        assert_eq!(render_conf("db1", "n1", &[posix], &PG), None);
        assert_eq!(render_conf("db1", "n1", &[], &PG), None);
    }

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(endpoint_parts("s3.example.com"), ("s3.example.com", None));
        assert_eq!(endpoint_parts("10.1.2.3:9000"), ("10.1.2.3", Some("9000")));
        assert_eq!(endpoint_parts("host:"), ("host:", None));
    }

    #[test]
    fn a_restore_reads_the_source_nodes_path_and_expires_nothing() {
        let repository = s3("main");
        let source = RestoreSource {
            source_database_id: "old",
            source_node: "n2",
            repository: &repository,
        };
        let conf = render_restore_conf("n1", &source, &PG);
        assert!(
            conf.contains("repo1-path=/backups/databases/old/main/n2\n"),
            "{conf}"
        );
        assert!(
            !conf.contains("retention"),
            "a restore expires nothing: {conf}"
        );
        assert!(
            conf.contains("[db]\npg1-path=/var/lib/postgresql/data\n"),
            "{conf}"
        );
    }
}
