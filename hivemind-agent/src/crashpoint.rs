//! Crash points for fault-injection tests: the agent kills itself (SIGKILL, as `kill -9` would)
//! at the N-th step of a container's lifecycle when `HIVEMIND_CRASH_AFTER_STEPS=N` is set. A
//! step is a store write or a side effect (namespace, link, containerd object, task) that
//! [`step`] is called after, so a sweep over N crashes the agent between every pair of them.
//!
//! Unset (the normal case) a step costs one relaxed atomic load.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

/// The variable that arms the crash.
pub const ENV: &str = "HIVEMIND_CRASH_AFTER_STEPS";

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static TAKEN: AtomicU64 = AtomicU64::new(0);

fn limit() -> Option<u64> {
    *LIMIT.get_or_init(|| std::env::var(ENV).ok().and_then(|v| v.trim().parse().ok()))
}

/// Marks one finished lifecycle step (`what` names it in the log line printed before dying).
pub fn step(what: &str) {
    let Some(limit) = limit() else { return };
    let taken = TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
    if taken == limit {
        eprintln!("hivemind: {ENV}={limit}: killing the agent after step {taken} ({what})");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
