//! Commands run as postgres inside a Postgres instance through its host's agent: psql,
//! curl to Patroni's REST API, pgBackRest, pglogical's helpers. One kind of error for all.

use std::time::Duration;

use agent_proto::ExecRequest;

use super::{ReconcileError, Reconciler};

impl Reconciler {
    /// Runs `argv` as postgres in `instance_id` on `host_id` with `stdin`, killed after
    /// `timeout`; its stdout, or an error naming `what` with the command's stderr (the end of
    /// its stdout when stderr is empty, where pgBackRest says why), never its stdin, each
    /// of `secrets` masked.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exec_postgres(
        &self,
        host_id: &str,
        instance_id: &str,
        argv: Vec<String>,
        stdin: &[u8],
        timeout: Duration,
        what: &str,
        secrets: &[String],
    ) -> Result<Vec<u8>, ReconcileError> {
        let out = self
            .agents
            .exec(
                host_id,
                ExecRequest {
                    instance_id: instance_id.to_string(),
                    argv,
                    stdin: stdin.to_vec(),
                    user: "postgres".into(),
                    timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                },
            )
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?;
        if out.exit_code != 0 {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            // psql says why on stderr; pgBackRest on stdout (its console log), with
            // stderr empty.
            let why = match stderr.trim() {
                "" => last_lines(&stdout, 5),
                said => said.to_string(),
            };
            let why = mask(why, secrets);
            return Err(ReconcileError::Step(format!(
                "{what} on {instance_id} exited {}: {why}",
                out.exit_code
            )));
        }
        Ok(out.stdout)
    }
}

/// `text` with each of `secrets` (the empty ones aside) replaced by `***`.
pub(super) fn mask(text: String, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text, |text, s| text.replace(s.as_str(), "***"))
}

/// The last `n` non-empty lines of `text`, joined by " | ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_the_last_lines_of_the_output() {
        let out = "P00 INFO: a\n\nP00 INFO: b\nP00 ERROR: [055]: c\n";
        assert_eq!(last_lines(out, 2), "P00 INFO: b | P00 ERROR: [055]: c");
        assert_eq!(last_lines("", 3), "");
    }
}
