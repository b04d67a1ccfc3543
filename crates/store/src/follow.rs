//! Following a task's log as it is written: what is there first, then every entry appended
//! later, until the task ends. Fed by an etcd watch, not by polling.
//!
//! No gap and no duplicate between the first read and the watch: the task record and the
//! first page of entries are read in one transaction at revision `R`, and the watch starts at
//! `R + 1`. Entries go out in key order (entry ids are UUIDv7, and one process appends a
//! task's lines one write at a time in id order, see [`Store::append_logs`]), so the last id
//! sent is a cursor a reconnect resumes from (`after_entry_id`).
//!
//! The end: when the watch shows the task record in a terminal status (or deleted), the log
//! is read once more from the last entry sent, so every entry written up to then goes out
//! even if the log's watcher has not delivered it yet (etcd orders events per watcher, not
//! across the two watchers of one stream).

use std::collections::VecDeque;

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions};
use spec::{Task, TaskLogEntry};

use crate::{Result, Store, StoreError, decode, keys};

/// Entries read per range request while catching up (each about 200-500 bytes, so a page
/// stays far below gRPC's 4 MiB message limit).
const PAGE: i64 = 500;

const LOG_WATCH: i64 = 1;
const TASK_WATCH: i64 = 2;

/// A follower of one task's log. Dropping it cancels its watch (the gRPC stream closes).
pub struct LogFollower {
    store: Store,
    log_prefix: String,
    task_key: String,
    /// Entries read or watched and not yet handed out, in key order.
    pending: VecDeque<TaskLogEntry>,
    /// The key of the last entry queued: the cursor of the final read, and the filter that
    /// keeps an entry from going out twice.
    last_key: Option<String>,
    /// The cursor the caller gave, used while nothing was queued yet.
    start_key: Vec<u8>,
    watch: Option<etcd_client::WatchStream>,
    /// The watch showed the task ended (or gone): a final read, then the end.
    ending: bool,
    done: bool,
}

impl std::fmt::Debug for LogFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFollower")
            .field("task_key", &self.task_key)
            .field("last_key", &self.last_key)
            .field("ending", &self.ending)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts following the log of task `task_id` of `db` after `after_entry_id` (exclusive;
    /// from the first entry when `None`). `Ok(None)` when the task does not exist.
    ///
    /// Errors: etcd unreachable, or the history the watch needs was compacted away in the
    /// moment between the read and the watch ([`StoreError::Etcd`]).
    pub async fn follow_log(
        &self,
        db: &str,
        task_id: &str,
        after_entry_id: Option<&str>,
    ) -> Result<Option<LogFollower>> {
        let log_prefix = self.keys.task_logs(db, task_id);
        let task_key = self.keys.task(db, task_id);
        let start_key = match after_entry_id {
            Some(id) => keys::key_after(&self.keys.task_log_entry(db, task_id, id)),
            None => log_prefix.clone().into_bytes(),
        };
        let txn = Txn::new().and_then([
            TxnOp::get(task_key.as_str(), None),
            TxnOp::get(start_key.clone(), Some(page_options(&log_prefix, None))),
        ]);
        let resp = self.client.kv_client().txn(txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut task: Option<Task> = None;
        let mut first_page = Vec::new();
        let mut more = false;
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let etcd_client::TxnOpResponse::Get(get) = op else {
                continue;
            };
            if i == 0 {
                if let Some(kv) = get.kvs().first() {
                    task = Some(decode(kv.key(), kv.value())?);
                }
            } else {
                more = get.more();
                for kv in get.kvs() {
                    first_page.push((kv.key().to_vec(), decode(kv.key(), kv.value())?));
                }
            }
        }
        let Some(task) = task else {
            return Ok(None);
        };
        let mut follower = LogFollower {
            store: self.clone(),
            log_prefix,
            task_key,
            pending: VecDeque::new(),
            last_key: None,
            start_key,
            watch: None,
            ending: false,
            done: false,
        };
        follower.queue(first_page);
        // The rest of a long log, at the same revision, so the watch continues it exactly.
        while more {
            let (page, has_more) = follower.read_page(Some(revision)).await?;
            more = has_more;
            follower.queue(page);
        }
        if task.status.is_terminal() {
            // Everything written up to the end was read; nothing to watch.
            follower.done = true;
            return Ok(Some(follower));
        }
        let mut client = self.client.clone();
        let mut watch = client
            .watch(
                follower.log_prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1)
                        .with_watch_id(LOG_WATCH),
                ),
            )
            .await?;
        watch
            .watch(
                follower.task_key.as_str(),
                Some(
                    WatchOptions::new()
                        .with_start_revision(revision + 1)
                        .with_watch_id(TASK_WATCH),
                ),
            )
            .await?;
        follower.watch = Some(watch);
        Ok(Some(follower))
    }
}

fn page_options(prefix: &str, revision: Option<i64>) -> GetOptions {
    let options = GetOptions::new()
        .with_range(keys::prefix_end(prefix))
        .with_sort(SortTarget::Key, SortOrder::Ascend)
        .with_limit(PAGE);
    match revision {
        Some(r) => options.with_revision(r),
        None => options,
    }
}

impl LogFollower {
    /// The next entry; `Ok(None)` once the task has ended and every entry up to then was
    /// handed out. Cancel-safe: a call dropped while waiting loses nothing, so a caller may
    /// race it against a keep-alive timer.
    pub async fn next(&mut self) -> Result<Option<TaskLogEntry>> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Ok(Some(entry));
            }
            if self.done {
                return Ok(None);
            }
            if self.ending {
                // Whatever the log's watcher had not delivered when the task ended.
                loop {
                    let (page, more) = self.read_page(None).await?;
                    self.queue(page);
                    if !more {
                        break;
                    }
                }
                self.done = true;
                self.watch = None;
                continue;
            }
            let watch = self
                .watch
                .as_mut()
                .expect("a follower that is not done watches");
            let Some(response) = watch.message().await? else {
                return Err(StoreError::WatchEnded(
                    "etcd closed the watch of the task log".into(),
                ));
            };
            if response.canceled() {
                return Err(StoreError::WatchEnded(format!(
                    "etcd canceled the watch of the task log (compacted at revision {}): {}",
                    response.compact_revision(),
                    response.cancel_reason()
                )));
            }
            let mut entries = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match (response.watch_id(), event.event_type()) {
                    (LOG_WATCH, EventType::Put) => {
                        entries.push((kv.key().to_vec(), decode(kv.key(), kv.value())?));
                    }
                    (TASK_WATCH, EventType::Put) => {
                        let task: Task = decode(kv.key(), kv.value())?;
                        self.ending |= task.status.is_terminal();
                    }
                    // The task was deleted (retention, or its database re-created).
                    (TASK_WATCH, EventType::Delete) => self.ending = true,
                    _ => {}
                }
            }
            self.queue(entries);
        }
    }

    /// Queues entries whose key is past the last one queued, in the order given.
    fn queue(&mut self, entries: Vec<(Vec<u8>, TaskLogEntry)>) {
        for (key, entry) in entries {
            let key = String::from_utf8_lossy(&key).into_owned();
            if self.last_key.as_ref().is_some_and(|last| &key <= last) {
                continue;
            }
            self.last_key = Some(key);
            self.pending.push_back(entry);
        }
    }

    /// One page of entries after the last one queued (or the caller's cursor).
    async fn read_page(
        &self,
        revision: Option<i64>,
    ) -> Result<(Vec<(Vec<u8>, TaskLogEntry)>, bool)> {
        let start = match &self.last_key {
            Some(k) => keys::key_after(k),
            None => self.start_key.clone(),
        };
        let resp = self
            .store
            .client
            .kv_client()
            .get(start, Some(page_options(&self.log_prefix, revision)))
            .await?;
        let page = resp
            .kvs()
            .iter()
            .map(|kv| Ok((kv.key().to_vec(), decode(kv.key(), kv.value())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((page, resp.more()))
    }
}
