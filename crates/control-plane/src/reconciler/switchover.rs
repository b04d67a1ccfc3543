//! The steps that go to Patroni rather than to a container (ADR 016): a switchover through
//! the leader's REST API, and forgetting a node's keys; the guard that keeps a removal off a
//! node's leader; and what a pass says while it waits for Patroni.

use std::time::Duration;

use chrono::{DateTime, Utc};
use plan::InstanceKind;
use spec::DatabaseState;

use super::pass::Pass;
use super::task_log::fields;
use super::{ReconcileError, Reconciler, WorkerState};
use crate::desired::postgres_alias;
use crate::patroni::rest;

/// How often a step that waits for Patroni's keys reads them again.
const KEYS_READ_EVERY: Duration = Duration::from_millis(500);

impl Reconciler {
    /// Asks `leader`, the instance of `node` on `host_id` that holds the leader key, to hand
    /// the primary role to `candidate` (a healthy replica Patroni picks when None), now or
    /// at `scheduled_at`, through its Patroni REST API. A switchover for now returns the new
    /// leader once Patroni's keys name it; a scheduled one returns None once Patroni
    /// accepted it.
    ///
    /// Errors: the agent cannot run the request, Patroni refuses it (the status and its
    /// answer, which never holds a secret), or no new leader within twice the leader key's
    /// ttl.
    pub(crate) async fn switchover(
        &self,
        database_id: &str,
        node: &str,
        leader: &str,
        host_id: &str,
        candidate: Option<&str>,
        scheduled_at: Option<DateTime<Utc>>,
    ) -> Result<Option<String>, ReconcileError> {
        if let (Some(c), None) = (candidate, scheduled_at) {
            self.wait_streaming(leader, host_id, c).await?;
        }
        let body = rest::switchover_body(leader, candidate, scheduled_at);
        let (status, answer) = self
            .patroni_request(database_id, node, leader, host_id, "/switchover", &body)
            .await?;
        match status {
            200 => {}
            202 if scheduled_at.is_some() => return Ok(None),
            _ => {
                return Err(ReconcileError::Step(format!(
                    "Patroni refused the switchover of node {node} from {leader} (HTTP {status}): {answer}"
                )));
            }
        }
        self.wait_leader(
            database_id,
            node,
            Some(leader),
            candidate,
            "switchover",
            &answer,
        )
        .await
        .map(Some)
    }

    /// Waits until Patroni's leader key of `node` names an instance other than `old`
    /// (`candidate` when given), after Patroni accepted a `what` (switchover or failover)
    /// with `answer`; returns the new leader.
    ///
    /// Errors: not within twice the leader key's ttl.
    pub(crate) async fn wait_leader(
        &self,
        database_id: &str,
        node: &str,
        old: Option<&str>,
        candidate: Option<&str>,
        what: &str,
        answer: &str,
    ) -> Result<String, ReconcileError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(2 * u64::from(self.dcs.timings.ttl));
        loop {
            let now_leader = crate::patroni::read(&*self.store, database_id)
                .await?
                .remove(node)
                .and_then(|n| n.leader);
            match now_leader {
                Some(l) if Some(l.as_str()) != old && candidate.is_none_or(|c| c == l) => {
                    return Ok(l);
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ReconcileError::Step(format!(
                        "Patroni accepted the {what} of node {node} ({answer}), but its leader key \
                         still names {} after {}s",
                        now_leader.as_deref().unwrap_or("no instance"),
                        2 * self.dcs.timings.ttl
                    )));
                }
                _ => tokio::time::sleep(KEYS_READ_EVERY).await,
            }
        }
    }

    /// POSTs `body` to `path` of the Patroni REST API of `instance_id` (of `node`, on
    /// `host_id`), inside its own container (see [`rest`]); returns the HTTP status and
    /// Patroni's answer, which never holds a secret.
    ///
    /// Errors: the agent cannot run the request, or curl got no answer.
    pub(crate) async fn patroni_request(
        &self,
        database_id: &str,
        node: &str,
        instance_id: &str,
        host_id: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, String), ReconcileError> {
        let creds = self.credentials(database_id).await?;
        let request = rest::request(
            &postgres_alias(node, host_id),
            "POST",
            path,
            Some(body),
            &creds.restapi_password,
        );
        let out = self
            .exec_postgres(
                host_id,
                instance_id,
                request.argv,
                &request.stdin,
                std::time::Duration::from_secs(u64::from(rest::REQUEST_TIMEOUT_SECONDS) + 10),
                "the request to Patroni's REST API (curl)",
                &[],
            )
            .await?;
        rest::response(&out).map_err(ReconcileError::Step)
    }

    /// Waits until `candidate` streams from `leader` (on `host_id`) and is at most
    /// [`plan::MAX_TAKEOVER_LAG_BYTES`] behind, as the leader's `pg_stat_replication` says.
    /// A switchover demotes the leader with a clean shutdown, which sends every last WAL
    /// record to the standbys connected at that moment: a replica that runs but does not
    /// stream yet (it just started, or lost its connection) would be promoted without them.
    /// Patroni 3.0 only checks the lag its member keys report, so berth checks this itself.
    ///
    /// Errors: not streaming after twice the leader key's ttl (the step fails and is tried
    /// again by a later pass).
    async fn wait_streaming(
        &self,
        leader: &str,
        host_id: &str,
        candidate: &str,
    ) -> Result<(), ReconcileError> {
        let sql = format!(
            "\\pset format unaligned\n\\pset tuples_only on\n\
             SELECT state || ' ' || coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn), -1)::bigint \
             FROM pg_stat_replication WHERE application_name = '{}';\n",
            candidate.replace('\'', "''")
        );
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(2 * u64::from(self.dcs.timings.ttl));
        loop {
            let out = self
                .psql(host_id, leader, "postgres", sql.clone(), &[])
                .await?;
            let seen = out.trim().to_string();
            let streaming = seen.split_once(' ').is_some_and(|(state, lag)| {
                state == "streaming"
                    && lag
                        .parse::<i64>()
                        .is_ok_and(|l| (0..=plan::MAX_TAKEOVER_LAG_BYTES as i64).contains(&l))
            });
            if streaming {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReconcileError::Step(format!(
                    "{candidate} does not stream from the primary {leader} with a small enough lag \
                     (pg_stat_replication: {:?}); no switchover to it",
                    if seen.is_empty() {
                        "no connection"
                    } else {
                        seen.as_str()
                    }
                )));
            }
            tokio::time::sleep(KEYS_READ_EVERY).await;
        }
    }

    /// The planner's switchover before a leader's removal, said on the task.
    pub(crate) async fn switchover_step(
        &self,
        pass: &Pass,
        node: &str,
        leader: &str,
        host_id: &str,
        candidate: &str,
    ) -> Result<(), ReconcileError> {
        let id = &pass.db.record.id;
        let new = self
            .switchover(id, node, leader, host_id, Some(candidate), None)
            .await?;
        pass.log
            .line(
                format!(
                    "node {node}: Patroni names {} the primary",
                    new.as_deref().unwrap_or(candidate)
                ),
                fields(&[("node", node), ("instance_id", candidate)]),
            )
            .await?;
        Ok(())
    }

    /// Refuses to remove the instance that holds its node's leader key while the node stays
    /// (the planner hands over first; this reads Patroni's keys afresh in case they moved
    /// since the plan). A removed node's leader, or any instance while the database is
    /// deleted, goes with its data.
    pub(crate) async fn guard_leader(
        &self,
        pass: &Pass,
        instance_id: &str,
    ) -> Result<(), ReconcileError> {
        let kind = pass
            .records
            .get(instance_id)
            .map(|r| r.kind.clone())
            .or_else(|| pass.desired.get(instance_id).map(|d| d.plan.kind.clone()));
        let Some(InstanceKind::Postgres { node }) = kind else {
            return Ok(());
        };
        let kept = pass.db.record.state != DatabaseState::Deleting
            && pass.db.spec.nodes.iter().any(|n| n.name == node);
        if !kept {
            return Ok(());
        }
        let leader = crate::patroni::read(&*self.store, &pass.db.record.id)
            .await?
            .remove(&node)
            .and_then(|n| n.leader);
        if leader.as_deref() == Some(instance_id) {
            return Err(ReconcileError::Step(format!(
                "refusing to remove {instance_id}: it is the primary of node {node} (Patroni's \
                 leader), and its data directory would go with it; it hands over to a replica first"
            )));
        }
        Ok(())
    }

    /// Says each new thing the pass waits for on Patroni, once; when one of them is a
    /// replica catching up (nothing watched changes when it has), looks again after one of
    /// Patroni's loops.
    pub(crate) async fn note_patroni_waits(
        &self,
        pass: &Pass,
        waiting: &[plan::Wait],
        state: &mut WorkerState,
    ) -> Result<(), ReconcileError> {
        for w in waiting.iter().filter(|w| !state.waits_noted.contains(w)) {
            pass.log
                .note(w.reason.clone(), fields(&[("waiting_for", "patroni")]))
                .await?;
        }
        state.waits_noted = waiting.to_vec();
        if waiting.iter().any(|w| w.recheck) {
            let pokes = self.pokes.clone();
            let db = pass.db.record.id.clone();
            let loop_wait = Duration::from_secs(u64::from(self.dcs.timings.loop_wait));
            tokio::spawn(async move {
                tokio::time::sleep(loop_wait).await;
                let _ = pokes.send(Some(db));
            });
        }
        Ok(())
    }
}
