//! The agent's two front doors over one set of operations: [`service::AgentService`] does the
//! work; [`grpc`] serves it to the CLI and [`rest`] to browsers and scripts.
pub mod error;
pub mod grpc;
mod progress;
pub mod rest;
pub mod service;
