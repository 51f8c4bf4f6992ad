//! Service discovery and public access: every app is `<app>.<suffix>` (and its `--service`
//! domain) in the node's DNS server and its HTTP router, both answering from one table of
//! serving replicas that follows the store. See `docs/services.md`.

pub mod dns;
pub mod records;
pub mod router;

pub use records::{Service, ServiceTable, Services};

/// The default DNS suffix of app names: `web` is `web.hivemind`.
pub const DEFAULT_SUFFIX: &str = "hivemind";
