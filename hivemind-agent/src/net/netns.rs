//! Network namespaces. `setns(2)` switches only the calling thread, and tokio's workers are
//! shared, so namespace work runs on a dedicated OS thread ([`on_dedicated_thread`]) that
//! enters the namespace with a [`NetnsGuard`], which is `!Send` and switches back on drop.
//!
//! A thread starts in the namespace of the thread that spawned it: everything here acts in the
//! caller's current namespace (the node's, for the agent) unless it enters another one.

use std::{
    fs::File,
    io,
    marker::PhantomData,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use tokio::sync::oneshot;

/// The calling thread is inside another network namespace until this guard drops.
#[derive(Debug)]
pub struct NetnsGuard {
    original: File,
    entered: PathBuf,
    // `setns` is per thread: the guard must drop on the thread that entered.
    _not_send: PhantomData<*const ()>,
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: setns(2) with a namespace file descriptor that `file` keeps open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl NetnsGuard {
    /// Moves the calling thread into the network namespace at `path` (a `/run/netns/NAME`
    /// file, a bind mount, or `/proc/PID/ns/net`).
    pub fn enter(path: &Path) -> io::Result<Self> {
        let original = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(path)?;
        setns(&target)?;
        Ok(Self {
            original,
            entered: path.to_owned(),
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = setns(&self.original) {
            // A thread stuck in the wrong namespace would act on the wrong interfaces; these
            // threads are dedicated and end right after, but make it loud.
            tracing::error!(netns = %self.entered.display(), error = %err, "cannot leave network namespace");
        }
    }
}

/// The dedicated thread ended without an answer (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the network namespace worker thread died")]
pub struct WorkerDied;

/// Runs `work` on a new OS thread, which starts in the calling thread's network namespace,
/// and awaits its result without blocking the runtime.
pub async fn on_dedicated_thread<T, F>(name: &str, work: F) -> Result<T, WorkerDied>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|_| WorkerDied)?;
    rx.await.map_err(|_| WorkerDied)
}
