//! Fixtures for Hivemind's integration tests. Each is an RAII guard that tears down what it
//! made when dropped — also when the test panics:
//!
//! - [`Netns`]: a network-namespace "host", and [`veth`] links between hosts;
//! - [`Containerd`]: a private containerd with its own root, state and socket;
//! - [`Registry`]: a private OCI registry (docker-registry) on a loopback address;
//! - [`image`]: the busybox test image, built by the tests themselves and pushed to a registry;
//! - [`Agent`]: a `hivemind agent` running inside a namespace with its own data dir and socket;
//! - [`apps`]: deploying, listing, waiting for and exec-ing into an agent's containers;
//! - [`cluster`]: node namespaces on a bridged underlay, each with containerd and an agent;
//! - [`http`]: requests to an agent's REST API with real `curl` inside its namespace;
//! - [`maps`]: the agent's pinned BPF maps as `bpftool` dumps them;
//! - [`Etcd`]: an etcd member with its own data dir, in the root namespace or in a [`Netns`];
//! - [`overlay::Cluster`]: node namespaces on an underlay, each running the dataplane
//!   in-process, with the overlay between them (the overlay tests and its benchmark).
//!
//! [`bench_overlay`] is the overlay benchmark (`cargo xtask bench overlay`).
//!
//! Tests need root; run them with `cargo xtask test`.
#![allow(clippy::missing_panics_doc)] // fixtures panic with a message by design

mod agent;
pub mod apps;
pub mod bench_api;
pub mod bench_overlay;
pub mod bench_service;
pub mod cluster;
mod containerd;
mod etcd;
pub mod http;
pub mod image;
pub mod maps;
mod netns;
pub mod node;
pub mod openapi;
pub mod overlay;
pub mod packet;
mod process;
mod registry;
mod single_node;
mod token_server;
pub mod util;

pub use agent::{Agent, AgentOptions};
pub use containerd::{Containerd, OTHER_RELEASES as OTHER_CONTAINERD_RELEASES};
pub use etcd::{Etcd, EtcdOptions};
pub use netns::{Netns, list as netns_list, veth};
pub use process::Process;
pub use registry::{Registry, SecureRegistry};
pub use single_node::{NODE_IP, REGISTRY_ADDR, SingleNode, WORLD_IP, World};
pub use token_server::TokenServer;
