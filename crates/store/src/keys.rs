//! The etcd key layout. Every key lives under one prefix (default `/berth`), so several
//! deployments can share an etcd cluster and a test can use a fresh prefix.
//!
//! | key | value | notes |
//! |---|---|---|
//! | `{p}/databases/{db}/spec` | [`crate::StoredSpec`] | desired state; secret config values sealed |
//! | `{p}/databases/{db}/record` | [`crate::DatabaseRecord`] | state, timestamps, the current task |
//! | `{p}/tasks/{db}/{task}` | [`spec::Task`] | task ids are UUIDv7, so key order is creation order |
//! | `{p}/task-logs/{db}/{task}/{entry}` | [`spec::TaskLogEntry`] | one key per line; entry ids are UUIDv7 |
//! | `{p}/host-tasks/{host}/{task}` | [`spec::Task`] | tasks of scope `host` (a host's removal); kept after the host goes |
//! | `{p}/host-task-logs/{host}/{task}/{entry}` | [`spec::TaskLogEntry`] | their logs |
//! | `{p}/instances/{db}/{instance}` | instance record | what was applied where, and its last observed status |
//! | `{p}/backups/{db}/{node}` | backup list | the node's backups as last listed (ADR 022); kept after a delete |
//! | `{p}/backup-schedules/{db}/{node}/{schedule}` | schedule mark | the last due time the leader fired (ADR 024) |
//! | `{p}/credentials/{db}` | credentials | generated passwords, sealed |
//! | `{p}/pki` | CA and join token | sealed whole |
//! | `{p}/leader` | replica id | under the leader's lease; its create revision fences leader writes |
//! | `{p}/hosts/{host}` | [`spec::Host`] | written at registration, kept while the host is unreachable |
//! | `{p}/host-alive/{host}` | liveness | attached to the host's lease: gone = unreachable |
//! | `{p}/host-dial/{host}` | [`crate::HostDialFailure`] | written by the leader while it cannot dial the host's agent |
//! | `{p}/host-certs/{host}` | [`crate::HostCertificate`] | the serial of the host's one valid certificate; claimed by its join |
//! | `{p}/revoked-certs/{serial}` | [`crate::RevokedCertificate`] | the deny list |
//! | `{p}/rejoin-tokens/{host}` | [`crate::RejoinToken`] | SHA-256 only; deleted when used |
//! | `{p}/api-tokens/{id}` | [`crate::ApiTokenRecord`] | API bearer tokens: SHA-256 of the secret, scope |
//! | `/{p}/patroni/{db}/{node}/...` | Patroni's | each node's DCS keys, written by Patroni (ADR 016) |
//!
//! With etcd credentials, each node's Patroni logs in as the etcd user
//! [`Keys::patroni_user`], whose role of the same name reaches [`Keys::patroni_node`] alone
//! (ADR 017).
//!
//! The spec, the record and the task of one request are written in one transaction.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Every key of this deployment starts with this.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub fn all_tasks(&self) -> String {
        format!("{}/tasks/", self.prefix)
    }
    pub fn databases(&self) -> String {
        format!("{}/databases/", self.prefix)
    }
    pub fn database_spec(&self, db: &str) -> String {
        format!("{}/databases/{db}/spec", self.prefix)
    }
    pub fn database_record(&self, db: &str) -> String {
        format!("{}/databases/{db}/record", self.prefix)
    }
    pub fn tasks(&self, db: &str) -> String {
        format!("{}/tasks/{db}/", self.prefix)
    }
    pub fn task(&self, db: &str, task: &str) -> String {
        format!("{}/tasks/{db}/{task}", self.prefix)
    }
    /// Every task log of one database.
    pub fn database_task_logs(&self, db: &str) -> String {
        format!("{}/task-logs/{db}/", self.prefix)
    }
    pub fn task_logs(&self, db: &str, task: &str) -> String {
        format!("{}/task-logs/{db}/{task}/", self.prefix)
    }
    pub fn task_log_entry(&self, db: &str, task: &str, entry: &str) -> String {
        format!("{}/task-logs/{db}/{task}/{entry}", self.prefix)
    }
    /// Every task of scope `host`.
    pub fn all_host_tasks(&self) -> String {
        format!("{}/host-tasks/", self.prefix)
    }
    pub fn host_tasks(&self, host: &str) -> String {
        format!("{}/host-tasks/{host}/", self.prefix)
    }
    pub fn host_task(&self, host: &str, task: &str) -> String {
        format!("{}/host-tasks/{host}/{task}", self.prefix)
    }
    pub fn host_task_logs(&self, host: &str, task: &str) -> String {
        format!("{}/host-task-logs/{host}/{task}/", self.prefix)
    }
    pub fn host_task_log_entry(&self, host: &str, task: &str, entry: &str) -> String {
        format!("{}/host-task-logs/{host}/{task}/{entry}", self.prefix)
    }
    pub fn all_instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }
    pub fn instances(&self, db: &str) -> String {
        format!("{}/instances/{db}/", self.prefix)
    }
    pub fn instance(&self, db: &str, instance: &str) -> String {
        format!("{}/instances/{db}/{instance}", self.prefix)
    }
    /// The backups of a node's pgBackRest stanza as last listed (ADR 022).
    pub fn backups(&self, db: &str, node: &str) -> String {
        format!("{}/backups/{db}/{node}", self.prefix)
    }
    /// Every backup schedule's mark (ADR 024).
    pub fn schedule_marks(&self) -> String {
        format!("{}/backup-schedules/", self.prefix)
    }
    /// The mark of one backup schedule of a node: the last due time the leader fired.
    pub fn schedule_mark(&self, db: &str, node: &str, schedule: &str) -> String {
        format!("{}/backup-schedules/{db}/{node}/{schedule}", self.prefix)
    }
    pub fn credentials(&self, db: &str) -> String {
        format!("{}/credentials/{db}", self.prefix)
    }
    /// The fleet CA and the join token, sealed as one document.
    pub fn pki(&self) -> String {
        format!("{}/pki", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }
    pub fn host(&self, host: &str) -> String {
        format!("{}/hosts/{host}", self.prefix)
    }
    pub fn host_alive_prefix(&self) -> String {
        format!("{}/host-alive/", self.prefix)
    }
    pub fn host_alive(&self, host: &str) -> String {
        format!("{}/host-alive/{host}", self.prefix)
    }
    pub fn host_dial_prefix(&self) -> String {
        format!("{}/host-dial/", self.prefix)
    }
    pub fn host_dial(&self, host: &str) -> String {
        format!("{}/host-dial/{host}", self.prefix)
    }
    pub fn host_cert(&self, host: &str) -> String {
        format!("{}/host-certs/{host}", self.prefix)
    }
    pub fn revoked_certs(&self) -> String {
        format!("{}/revoked-certs/", self.prefix)
    }
    pub fn revoked_cert(&self, serial: &str) -> String {
        format!("{}/revoked-certs/{serial}", self.prefix)
    }
    pub fn rejoin_token(&self, host: &str) -> String {
        format!("{}/rejoin-tokens/{host}", self.prefix)
    }
    pub fn api_tokens(&self) -> String {
        format!("{}/api-tokens/", self.prefix)
    }
    pub fn api_token(&self, id: &str) -> String {
        format!("{}/api-tokens/{id}", self.prefix)
    }
    /// Patroni's namespace of a database, with a trailing `/`: `/{p}/patroni/{db}/`, one
    /// leading slash whatever the prefix, as Patroni writes its keys (ADR 016).
    pub fn patroni(&self, db: &str) -> String {
        format!("/{}/patroni/{db}/", self.prefix.trim_start_matches('/')).replace("//", "/")
    }
    /// The keys of one Postgres node's Patroni: `/{p}/patroni/{db}/{node}/`, everything its
    /// etcd user may read and write (ADR 017).
    pub fn patroni_node(&self, db: &str, node: &str) -> String {
        format!("{}{node}/", self.patroni(db))
    }
    /// The etcd user (and role) of one Postgres node's Patroni: `{p}-patroni-{db}-{node}`
    /// with the prefix's outer slashes trimmed (`berth-patroni-app-n1`). etcd users are not
    /// under a prefix, so the prefix keeps two deployments sharing an etcd apart; a node
    /// name is `n` and digits, so the last `-` always starts it.
    pub fn patroni_user(&self, db: &str, node: &str) -> String {
        format!("{}-patroni-{db}-{node}", self.prefix.trim_matches('/'))
    }
    /// Whether `name` is a Patroni user ([`Keys::patroni_user`]) of `db`, of any node.
    pub fn is_patroni_user_of(&self, name: &str, db: &str) -> bool {
        let start = format!("{}-patroni-{db}-", self.prefix.trim_matches('/'));
        name.strip_prefix(&start).is_some_and(|node| {
            node.strip_prefix('n')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The smallest key strictly greater than `key`.
pub fn key_after(key: &str) -> Vec<u8> {
    let mut k = key.as_bytes().to_vec();
    k.push(0);
    k
}
