//! Network policies: the YAML model, parsing and validation, and a pure compiler to the map
//! entries of `hivemind_common::policy`.
//!
//! ```text
//!  files / dirs / API bodies ──parse──► Vec<Policy> ──compile(+ ids, + app identities)──► Compiled
//!        (all errors of the set, or nothing)              (map entries, CIDR identities, warnings)
//! ```
//!
//! - [`parse_path`], [`parse_str`], [`parse_sources`]: YAML (one or more documents per file) to
//!   validated [`Policy`] values, sorted by name. Every problem of the whole input set is
//!   collected; a set with any error is rejected as a whole ([`PolicyErrors`]).
//! - [`compile`]: policies + app identities → [`Compiled`]: the inner policy map, the CIDR → identity
//!   table for the LPM trie, and warnings. Deterministic, no I/O.
//! - [`eval::verdict`]: the datapath's lookup order over a compiled map, in plain Rust — the
//!   reference the eBPF program is tested against.
//! - [`synthetic`]: generated policy sets of any size for benchmarks.
//!
//! The format and its semantics are documented for operators in `docs/policy.md`.

mod compile;
pub mod eval;
mod model;
mod parse;
mod synthetic;
mod validate;

#[cfg(test)]
mod tests;

use std::{fmt, io, path::PathBuf};

use ipnet::Ipv4Net;

pub use compile::{AppIdentity, Compiled, PolicyRef, compile};
pub use model::{
    API_VERSION, DenyRule, DenyRuleDoc, Direction, EgressRuleDoc, IngressRuleDoc, KIND,
    MAX_PORT_RANGE, Metadata, Peer, PeerDoc, Policy, PolicyDocument, PortDoc, PortRule, Protocol,
    Rule, Spec, display_labels,
};
pub(crate) use parse::{
    bare_message, document_name, duplicated_key, second_key_position, shape_error, yaml_files,
};
pub use parse::{parse_path, parse_policy_documents, parse_sources, parse_str};

/// The most YAML one apply takes, over REST (one body) and gRPC (all files of a
/// `policy apply -f`). A policy set that needs more is far past the datapath's map sizes.
pub const MAX_YAML_BYTES: usize = 4 << 20;
pub use synthetic::{synthetic, synthetic_apps};

/// Where a problem is: the file (or the name an API caller gave its input), the YAML document
/// (1-based) and its `metadata.name` when known, the field path inside the document, and the
/// line and column when the YAML parser knows them.
///
/// Displays as `FILE[:LINE:COL][: document N[ (NAME)]][: PATH]`, for example
/// `web.yaml: document 2 (api-from-web): spec.ingress[0].ports[1].port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based index of the document in its file; `None` for problems with the file itself.
    pub document: Option<usize>,
    /// `metadata.name`, when the document has one.
    pub name: Option<String>,
    /// Field path such as `spec.ingress[0].ports[1].port`; empty for the document as a whole.
    pub path: String,
    /// 1-based line and column.
    pub line_column: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, column)) = self.line_column {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
            if let Some(name) = &self.name {
                write!(f, " ({name})")?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        Ok(())
    }
}

/// Everything that can be wrong with a policy set. Every variant but the capacity checks names
/// its [`Location`]; parsing collects them into [`PolicyErrors`].
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no .yaml or .yml files in this directory")]
    NoPolicyFiles { path: PathBuf },
    #[error("{at}: contains no policy document")]
    NoDocuments { at: Location },
    #[error("{at}: malformed YAML: {message}")]
    Syntax { at: Location, message: String },
    #[error("{at}: {message}")]
    Structure { at: Location, message: String },
    #[error("{at}: unknown field `{field}`{}; expected {}", suggestion_text(suggestion.as_deref()), expected_text(expected))]
    UnknownField {
        at: Location,
        field: String,
        /// The names valid at this place.
        expected: Vec<String>,
        /// The closest valid name, when one is close.
        suggestion: Option<String>,
    },
    #[error("{at}: apiVersion must be `{API_VERSION}`, found `{found}`")]
    ApiVersion { at: Location, found: String },
    #[error("{at}: kind must be `{KIND}`, found `{found}`")]
    Kind { at: Location, found: String },
    #[error("{at}: {value:?} is not a valid name: {reason}")]
    InvalidName {
        at: Location,
        value: String,
        reason: &'static str,
    },
    #[error("{at}: {value:?} is not a valid label {part}: {reason}")]
    InvalidLabel {
        at: Location,
        /// `key` or `value`.
        part: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{at}: {field} is an empty list; {hint}")]
    EmptyList {
        at: Location,
        field: &'static str,
        hint: &'static str,
    },
    #[error(
        "{at}: a peer needs exactly one of `app`, `labels`, `cidr`, `entity`; {}",
        peer_found_text(found)
    )]
    PeerShape {
        at: Location,
        /// The fields that were set.
        found: Vec<&'static str>,
    },
    #[error("{at}: {value:?} is not an IPv4 CIDR (A.B.C.D/N): {reason}")]
    InvalidCidr {
        at: Location,
        value: String,
        reason: String,
    },
    #[error(
        "{at}: {value} has host bits set; did you mean {network} (the network) or {address}/32 (the one address)?"
    )]
    CidrHostBits {
        at: Location,
        value: Ipv4Net,
        network: Ipv4Net,
        address: std::net::Ipv4Addr,
    },
    #[error("{at}: unknown entity {value:?}; expected `host` or `world`{}", suggestion_text(suggestion.as_deref()))]
    UnknownEntity {
        at: Location,
        value: String,
        suggestion: Option<String>,
    },
    #[error("{at}: port {value} is out of range 1-65535")]
    PortOutOfRange { at: Location, value: i64 },
    #[error("{at}: endPort {end} {reason}")]
    InvalidEndPort {
        at: Location,
        end: i64,
        reason: String,
    },
    #[error("{at}: unknown protocol {value:?}; expected TCP, UDP or ICMP")]
    UnknownProtocol { at: Location, value: String },
    #[error("{at}: ICMP has no ports; remove `port`/`endPort` to allow all ICMP")]
    IcmpPort { at: Location },
    #[error("{at}: empty port entry; give `port` (TCP by default) and/or `protocol`")]
    EmptyPort { at: Location },
    #[error("{at}: a deny rule needs exactly one of `from` (ingress) and `to` (egress){}", if *both { "; split it into two rules" } else { "" })]
    DenyDirection { at: Location, both: bool },
    #[error("{at}: a policy named `{name}` is already defined at {first}")]
    DuplicateName {
        at: Location,
        name: String,
        first: Location,
    },
    #[error("the compiled rule set needs {count} {what}, more than the datapath's {max}")]
    Capacity {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

fn suggestion_text(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

fn expected_text(expected: &[String]) -> String {
    match expected {
        [] => "no fields here".to_owned(),
        [one] => format!("`{one}`"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|e| format!("`{e}`")).collect();
            format!("{} or `{last}`", init.join(", "))
        }
    }
}

fn peer_found_text(found: &[&str]) -> String {
    if found.is_empty() {
        "found none".to_owned()
    } else {
        format!(
            "found {} (list them as separate peers)",
            found
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }
}

impl PolicyError {
    /// Where the problem is, when it is in the input.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Read { .. } | Self::NoPolicyFiles { .. } | Self::Capacity { .. } => None,
            Self::NoDocuments { at }
            | Self::Syntax { at, .. }
            | Self::Structure { at, .. }
            | Self::UnknownField { at, .. }
            | Self::ApiVersion { at, .. }
            | Self::Kind { at, .. }
            | Self::InvalidName { at, .. }
            | Self::InvalidLabel { at, .. }
            | Self::EmptyList { at, .. }
            | Self::PeerShape { at, .. }
            | Self::InvalidCidr { at, .. }
            | Self::CidrHostBits { at, .. }
            | Self::UnknownEntity { at, .. }
            | Self::PortOutOfRange { at, .. }
            | Self::InvalidEndPort { at, .. }
            | Self::UnknownProtocol { at, .. }
            | Self::IcmpPort { at }
            | Self::EmptyPort { at }
            | Self::DenyDirection { at, .. }
            | Self::DuplicateName { at, .. } => Some(at),
        }
    }
}

/// A rejected policy set: every problem found, in input order (file, document, field), then
/// duplicate names. Nothing of a rejected set may be applied. Displays as one problem per line.
#[derive(Debug)]
pub struct PolicyErrors {
    pub errors: Vec<PolicyError>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
            let mut source = std::error::Error::source(error);
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}
