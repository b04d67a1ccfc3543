//! Blocking filesystem work (fsync per file, recursive delete or chown of a data directory)
//! belongs on tokio's blocking pool: the async threads also carry every gRPC call and the
//! heartbeats, and on a 2-core host one large delete there stalls them all.
//!
//! [`run`] is the one way in; [`assert_allowed`] makes a call that bypasses it fail loudly in
//! debug builds (every test), instead of showing up as a heartbeat gap under load.

use std::cell::Cell;

thread_local! {
    /// Set while [`run`] executes work on a blocking-pool thread.
    static ALLOWED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` on the blocking pool and waits for it.
///
/// Errors: those of `work`, or `io::ErrorKind::Other` when the work panicked or the runtime
/// is shutting down.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(move || {
        ALLOWED.set(true);
        let out = work();
        ALLOWED.set(false);
        out
    })
    .await
    .map_err(std::io::Error::other)?
}

/// In debug builds, panics when `what` (blocking filesystem work) runs on a thread that
/// drives async tasks rather than through [`run`]. Plain threads (no tokio runtime in
/// context, as in synchronous unit tests) may do blocking work.
pub fn assert_allowed(what: &str) {
    if cfg!(debug_assertions) && tokio::runtime::Handle::try_current().is_ok() && !ALLOWED.get() {
        panic!("{what}: blocking filesystem work on an async thread; use agent::blocking::run");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_threads_may_block() {
        assert_allowed("a test outside any runtime");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_through_run_is_allowed_and_leaves_the_async_thread() {
        let async_thread = std::thread::current().id();
        let worker = run(|| {
            assert_allowed("work in run");
            Ok(std::thread::current().id())
        })
        .await
        .unwrap();
        assert_ne!(worker, async_thread);
    }

    #[tokio::test(flavor = "current_thread")]
    #[should_panic(expected = "blocking filesystem work on an async thread")]
    async fn work_on_an_async_thread_panics() {
        assert_allowed("inline work");
    }
}
