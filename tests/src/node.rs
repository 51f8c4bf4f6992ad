//! A tokio runtime whose threads live inside a network namespace, for running the agent's
//! `net` modules in-process as if the test were the agent on that node.

use std::{future::Future, sync::mpsc, thread::JoinHandle};

use hivemind_agent::net::netns::NetnsGuard;

use crate::Netns;

/// A multi-thread runtime started from a thread that entered `netns`: its workers start in
/// that namespace too (a thread inherits its creator's), so tasks spawned on it act there.
#[derive(Debug)]
pub struct NodeRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NodeRuntime {
    pub fn new(netns: &Netns) -> Self {
        let path = std::path::PathBuf::from(netns.path());
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("node-runtime".into())
            .spawn(move || {
                let _inside = NetnsGuard::enter(&path).expect("enter the node namespace");
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("node runtime");
                handle_tx
                    .send(runtime.handle().clone())
                    .expect("send the runtime handle");
                let _ = stop_rx.recv();
                runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            })
            .expect("spawn the node runtime thread");
        let handle = handle_rx.recv().expect("node runtime started");
        Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `future` on the node's runtime (inside the namespace) and waits for its output.
    pub fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.handle.spawn(future);
        self.handle
            .block_on(task)
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
