//! The Hivemind node agent and its CLI, in one binary.
//!
//! `hivemind agent` runs [`daemon`]; every other subcommand is a client in [`cli`] that talks to
//! a running agent over gRPC. Inside the daemon each subsystem owns its state:
//! [`store`] (desired state), [`runtime`] (containerd), [`net::dataplane`] (the eBPF programs and
//! maps), [`policy`] (network policy YAML compiled to map entries), and [`api`] serves them to
//! the CLI (gRPC) and to browsers and scripts (REST).

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crashpoint;
pub mod daemon;
pub mod events;
pub mod healthcheck;
pub mod lb;
pub mod manifest;
pub mod model;
pub mod net;
pub mod paths;
pub mod policy;
pub mod reconcile;
pub mod runtime;
pub mod sealed;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod unix_channel;
pub mod validate;
pub mod vault;
pub mod volumes;

/// The agent's gRPC API, generated from `proto/hivemind.proto`.
#[allow(clippy::pedantic, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("hivemind.v1");
}

/// The version every component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and its sources on one line (`a: b: c`), for logs: `thiserror` messages name only
/// their own layer.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
