//! The one retry policy of the control plane: exponential backoff with jitter (backon), so
//! that many workers or streams failing together (etcd restarting, a host coming back) do
//! not retry in lockstep.

use std::time::Duration;

use backon::ExponentialBuilder;

/// First delay after a failure.
pub const MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// How many passes a task gets (the first and its retries) before it fails.
pub const TASK_ATTEMPTS: usize = 4;
/// A broken agent stream is dialled again sooner: nothing is planned on its host meanwhile.
pub const STREAM_MIN_DELAY: Duration = Duration::from_millis(200);
pub const STREAM_MAX_DELAY: Duration = Duration::from_secs(3);

/// Delays doubling from [`MIN_DELAY`] to [`MAX_DELAY`], each with up to as much again of
/// random jitter, without end.
pub fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// [`policy`] for the retries of one task: `TASK_ATTEMPTS - 1` delays, then none.
pub fn task_policy() -> ExponentialBuilder {
    policy().with_max_times(TASK_ATTEMPTS - 1)
}

/// [`policy`] for re-dialling an agent's stream.
pub fn stream_policy() -> ExponentialBuilder {
    policy()
        .with_min_delay(STREAM_MIN_DELAY)
        .with_max_delay(STREAM_MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn task_retries_are_bounded_and_jittered_within_the_limits() {
        let delays: Vec<Duration> = task_policy().build().collect();
        assert_eq!(delays.len(), TASK_ATTEMPTS - 1);
        for (i, d) in delays.iter().enumerate() {
            let base = MIN_DELAY * 2u32.pow(i as u32);
            assert!(*d >= base && *d <= base * 2, "{i}: {d:?}");
        }
        let endless: Vec<Duration> = policy().build().take(20).collect();
        assert_eq!(endless.len(), 20);
        assert!(endless.iter().all(|d| *d <= MAX_DELAY * 2));
    }
}
