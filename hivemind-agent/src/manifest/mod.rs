//! The documents `hivemind apply -f` takes and `hivemind get` prints: `App`, `Volume`,
//! `Secret` and `NetworkPolicy`, `apiVersion: hivemind/v1`, as many per file as needed.
//!
//! ```text
//!  files ──parse──► Manifest (typed documents + validated policies, every error of the set)
//!                      │
//!   App document ◄──app──► DeployRequest ──validate_deploy──► AppSpec ──app::document──► YAML
//! ```
//!
//! Reading is shared with the policy parser (`serde_norway`, positions on every error,
//! `deny_unknown_fields` with suggestions); the format is documented in `docs/apply.md`.

pub mod app;
pub mod compose;
mod parse;

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

pub use app::{AppDocument, AppSpecDocument};
pub use parse::{parse_path, parse_sources, read_path};

use crate::policy::{Location, Policy, PolicyError};

pub const API_VERSION: &str = crate::policy::API_VERSION;

/// The kinds a manifest holds, in the order `apply` creates them (and removes them in reverse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Volume,
    Secret,
    NetworkPolicy,
    App,
}

impl Kind {
    pub const ALL: [Self; 4] = [Self::Volume, Self::Secret, Self::NetworkPolicy, Self::App];

    /// As written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Volume => "Volume",
            Self::Secret => "Secret",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::App => "App",
        }
    }

    /// As people say it in plans and on the command line (`app`, `policy`, ...).
    pub fn noun(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Secret => "secret",
            Self::NetworkPolicy => "policy",
            Self::App => "app",
        }
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// `app`, `apps`, `policy`, `policies`, `networkpolicy`, ... (for `hivemind get`).
    pub fn from_noun(noun: &str) -> Option<Self> {
        let noun = noun.to_ascii_lowercase();
        let singular = noun
            .strip_suffix("ies")
            .map(|s| format!("{s}y"))
            .or_else(|| noun.strip_suffix('s').map(str::to_owned))
            .unwrap_or(noun);
        Self::ALL
            .into_iter()
            .find(|k| k.noun() == singular || k.as_str().eq_ignore_ascii_case(&singular))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// `metadata` of every kind but `App` (whose labels live there too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

/// `kind: Volume`: a named volume (created if missing; its data is never touched by apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
}

/// `kind: Secret`: a reference to a secret, never its value. With `spec.valueFrom.file` the
/// CLI reads the value from that file (relative to the manifest) and the secret is created if
/// missing; without it, the secret must exist already (`hivemind secret create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SecretSpecDocument>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpecDocument {
    pub value_from: ValueFrom,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueFrom {
    /// A file on the machine running the CLI; relative paths are relative to the manifest.
    pub file: String,
}

/// A document and where it was read.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub document: T,
    pub at: Location,
}

/// A parsed set of documents: every name unique per kind.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub apps: Vec<Located<AppDocument>>,
    pub volumes: Vec<Located<VolumeDocument>>,
    pub secrets: Vec<Located<SecretDocument>>,
    pub policies: Vec<Policy>,
}

impl Manifest {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
            && self.volumes.is_empty()
            && self.secrets.is_empty()
            && self.policies.is_empty()
    }

    /// Every resource's kind and name, in apply order.
    pub fn names(&self) -> BTreeMap<Kind, Vec<String>> {
        let mut names = BTreeMap::new();
        let of = |n: &Metadata| n.name.clone();
        names.insert(
            Kind::Volume,
            self.volumes
                .iter()
                .map(|v| of(&v.document.metadata))
                .collect(),
        );
        names.insert(
            Kind::Secret,
            self.secrets
                .iter()
                .map(|s| of(&s.document.metadata))
                .collect(),
        );
        names.insert(
            Kind::NetworkPolicy,
            self.policies.iter().map(|p| p.name.clone()).collect(),
        );
        names.insert(
            Kind::App,
            self.apps
                .iter()
                .map(|a| a.document.metadata.name.clone())
                .collect(),
        );
        names
    }
}

/// Everything wrong with a manifest set, one problem per line.
#[derive(Debug, Default)]
pub struct ManifestErrors {
    pub errors: Vec<ManifestError>,
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading, YAML syntax, document shape, and everything about policies.
    #[error(transparent)]
    Document(#[from] PolicyError),
    #[error("{at}: kind must be one of App, Volume, Secret, NetworkPolicy; found `{found}`")]
    Kind { at: Location, found: String },
    #[error("{at}: apiVersion must be `{API_VERSION}`, found `{found}`")]
    ApiVersion { at: Location, found: String },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    #[error("{at}: {kind} {name} is defined twice (first at {first})")]
    Duplicate {
        at: Location,
        kind: Kind,
        name: String,
        first: Location,
    },
}
