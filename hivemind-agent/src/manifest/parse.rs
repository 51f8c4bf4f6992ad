//! Files to a [`Manifest`]: each file read as YAML documents, each document by its `kind`.
//! `NetworkPolicy` documents go to the policy parser (which validates them whole); the other
//! kinds are read into their document types here. Every problem of every file is collected.

use std::{collections::BTreeMap, fs, path::Path};

use serde::Deserialize as _;
use serde::de::DeserializeOwned;

use super::{
    API_VERSION, Kind, Located, Manifest, ManifestError, ManifestErrors, SecretDocument,
    VolumeDocument, app::AppDocument,
};
use crate::policy::{self, Location, PolicyError};

/// The most YAML one apply takes (all its files together).
pub const MAX_BYTES: usize = policy::MAX_YAML_BYTES;

/// Reads a file, every `*.yaml`/`*.yml` file directly in a directory (in name order), or
/// standard input for `-`: `(name, text)` pairs, to parse here and to send to the agent.
pub fn read_path(path: &Path) -> Result<Vec<(String, String)>, ManifestErrors> {
    let fail = |error: PolicyError| ManifestErrors {
        errors: vec![ManifestError::Document(error)],
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            fail(PolicyError::Read {
                path: path.to_owned(),
                source,
            })
        })?;
        return Ok(vec![("<stdin>".to_owned(), text)]);
    }
    let files = match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let files = policy::yaml_files(path).map_err(|source| {
                fail(PolicyError::Read {
                    path: path.to_owned(),
                    source,
                })
            })?;
            if files.is_empty() {
                return Err(fail(PolicyError::NoPolicyFiles {
                    path: path.to_owned(),
                }));
            }
            files
        }
        Ok(_) => vec![path.to_owned()],
        Err(source) => {
            return Err(fail(PolicyError::Read {
                path: path.to_owned(),
                source,
            }));
        }
    };
    files
        .into_iter()
        .map(|file| {
            fs::read_to_string(&file)
                .map(|text| (file.display().to_string(), text))
                .map_err(|source| fail(PolicyError::Read { path: file, source }))
        })
        .collect()
}

/// [`read_path`], then [`parse_sources`].
pub fn parse_path(path: &Path) -> Result<(Manifest, Vec<(String, String)>), ManifestErrors> {
    let sources = read_path(path)?;
    let manifest = parse_sources(sources.iter().map(|(n, t)| (n.as_str(), t.as_str())))?;
    Ok((manifest, sources))
}

/// Parses `(name, text)` inputs as one set.
pub fn parse_sources<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<Manifest, ManifestErrors> {
    let mut manifest = Manifest::default();
    let mut errors = Vec::new();
    let mut total = 0;
    for (file, text) in sources.clone() {
        total += text.len();
        read_text(file, text, &mut manifest, &mut errors);
    }
    if total > MAX_BYTES {
        errors.push(ManifestError::Invalid {
            at: Location::default(),
            message: format!("{total} bytes of YAML; at most {MAX_BYTES} are taken at once"),
        });
    }
    match policy::parse_policy_documents(sources) {
        Ok(policies) => manifest.policies = policies,
        Err(policy_errors) => errors.extend(
            policy_errors
                .errors
                .into_iter()
                // Syntax errors are reported once, by the pass below.
                .filter(|e| !matches!(e, PolicyError::Syntax { .. }))
                .map(ManifestError::Document),
        ),
    }
    duplicates(&manifest, &mut errors);
    if manifest.is_empty() && errors.is_empty() {
        errors.push(ManifestError::Invalid {
            at: Location::default(),
            message: "no documents (App, Volume, Secret or NetworkPolicy) given".to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(manifest)
    } else {
        Err(ManifestErrors { errors })
    }
}

/// One input's documents into `manifest` (policies aside), problems into `errors`.
fn read_text(file: &str, text: &str, manifest: &mut Manifest, errors: &mut Vec<ManifestError>) {
    let file_at = Location {
        file: file.to_owned(),
        ..Location::default()
    };
    // Pass 1, untyped: syntax errors, and each document's kind and name.
    let mut kinds: Vec<Option<Kind>> = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = match Option::<serde_norway::Value>::deserialize(de) {
            Ok(value) => value,
            Err(e) => {
                let message = policy::bare_message(&e, "");
                let line_column = policy::duplicated_key(&message)
                    .and_then(|key| policy::second_key_position(text, i, key))
                    .or_else(|| e.location().map(|l| (l.line(), l.column())));
                errors.push(ManifestError::Document(PolicyError::Syntax {
                    at: Location {
                        document: Some(i + 1),
                        line_column,
                        ..file_at.clone()
                    },
                    message,
                }));
                // libyaml cannot resume after an error.
                break;
            }
        };
        let Some(value) = value else {
            kinds.push(None);
            continue;
        };
        let at = Location {
            document: Some(i + 1),
            name: policy::document_name(&value),
            ..file_at.clone()
        };
        let field = |key: &str| value.get(key).and_then(serde_norway::Value::as_str);
        let at_key = |key: &str| Location {
            line_column: top_level_key_line(text, i, key).map(|line| (line, 1)),
            path: key.to_owned(),
            ..at.clone()
        };
        match (field("kind"), field("apiVersion")) {
            (None, _) => {
                errors.push(ManifestError::Invalid {
                    at: at.clone(),
                    message: "missing `kind` (App, Volume, Secret or NetworkPolicy)".to_owned(),
                });
                kinds.push(None);
            }
            (Some(found), _) if Kind::from_kind(found).is_none() => {
                errors.push(ManifestError::Kind {
                    at: at_key("kind"),
                    found: found.to_owned(),
                });
                kinds.push(None);
            }
            (Some(_), found) if found != Some(API_VERSION) => {
                errors.push(ManifestError::ApiVersion {
                    at: at_key("apiVersion"),
                    found: found.unwrap_or_default().to_owned(),
                });
                kinds.push(None);
            }
            (Some(kind), _) => kinds.push(Kind::from_kind(kind)),
        }
    }
    // Pass 2, typed (policies are the policy parser's).
    for (i, (de, kind)) in serde_norway::Deserializer::from_str(text)
        .zip(kinds)
        .enumerate()
    {
        let at = Location {
            document: Some(i + 1),
            ..file_at.clone()
        };
        match kind {
            Some(Kind::App) => {
                if let Some(app) = typed::<AppDocument>(de, at, errors) {
                    if let Err(message) = app.document.to_request() {
                        errors.push(ManifestError::Invalid {
                            at: app.at.clone(),
                            message,
                        });
                    }
                    manifest.apps.push(app);
                }
            }
            Some(Kind::Volume) => manifest
                .volumes
                .extend(typed::<VolumeDocument>(de, at, errors)),
            Some(Kind::Secret) => manifest
                .secrets
                .extend(typed::<SecretDocument>(de, at, errors)),
            Some(Kind::NetworkPolicy) | None => {}
        }
    }
}

/// One document as `T`; shape errors (unknown fields with suggestions, wrong types) with
/// their line and path.
fn typed<T: DeserializeOwned + Named>(
    de: serde_norway::Deserializer<'_>,
    mut at: Location,
    errors: &mut Vec<ManifestError>,
) -> Option<Located<T>> {
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(document) => {
            at.name = Some(document.name().to_owned());
            let name_ok = crate::validate::name("name", document.name());
            if let Err(err) = name_ok {
                errors.push(ManifestError::Invalid {
                    at: Location {
                        path: "metadata.name".to_owned(),
                        ..at
                    },
                    message: err.to_string(),
                });
                return None;
            }
            Some(Located { document, at })
        }
        Err(e) => {
            errors.push(ManifestError::Document(policy::shape_error(at, e)));
            None
        }
    }
}

/// The resource name of a document type.
pub trait Named {
    fn name(&self) -> &str;
}

impl Named for AppDocument {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for VolumeDocument {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for SecretDocument {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Names defined twice in the set, per kind (policies are checked by their parser).
fn duplicates(manifest: &Manifest, errors: &mut Vec<ManifestError>) {
    fn check<T: Named>(kind: Kind, items: &[Located<T>], errors: &mut Vec<ManifestError>) {
        let mut first: BTreeMap<&str, &Location> = BTreeMap::new();
        for item in items {
            let name = item.document.name();
            if let Some(prev) = first.get(name) {
                errors.push(ManifestError::Duplicate {
                    at: item.at.clone(),
                    kind,
                    name: name.to_owned(),
                    first: (*prev).clone(),
                });
            } else {
                first.insert(name, &item.at);
            }
        }
    }
    check(Kind::App, &manifest.apps, errors);
    check(Kind::Volume, &manifest.volumes, errors);
    check(Kind::Secret, &manifest.secrets, errors);
}

/// The 1-based line of `key:` at the start of a line in document `document` (0-based).
fn top_level_key_line(text: &str, document: usize, key: &str) -> Option<usize> {
    let mut current = 0;
    let mut seen_content = false;
    for (number, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            if seen_content || number > 0 {
                current += 1;
            }
            continue;
        }
        seen_content |= !line.trim().is_empty() && !line.starts_with('#');
        if current == document && line.strip_prefix(key).is_some_and(|r| r.starts_with(':')) {
            return Some(number + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "\
apiVersion: hivemind/v1
kind: Volume
metadata: {name: data}
---
apiVersion: hivemind/v1
kind: App
metadata:
  name: web
  labels: {tier: front}
spec:
  image: localhost:5000/web:1
  replicas: 2
  env: {PORT: 8080, DEBUG: true}
  ports: [\"8080:80\"]
  volumes: [\"data:/data\"]
  healthCheck: {http: 80/healthz, interval: 2s}
---
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata: {name: web-in}
spec:
  selector: {app: web}
  ingress: [{from: [{app: api}]}]
";

    #[test]
    fn a_set_of_every_kind_parses() {
        let manifest = parse_sources([("set.yaml", SET)]).expect("valid");
        assert_eq!(manifest.volumes.len(), 1);
        assert_eq!(manifest.policies.len(), 1);
        let app = &manifest.apps[0];
        assert_eq!(app.at.to_string(), "set.yaml: document 2 (web)");
        let request = app.document.to_request().expect("a request");
        assert_eq!(request.env, ["DEBUG=true", "PORT=8080"]);
        assert_eq!(request.replicas, Some(2));
        assert_eq!(request.health_http, "80/healthz");
        assert_eq!(request.labels, ["tier=front"]);
    }

    #[test]
    fn every_bad_document_is_named_with_its_line() {
        let text = "\
apiVersion: hivemind/v1
kind: App
metadata: {name: web}
spec:
  image: web:1
  replica: 2
---
apiVersion: hivemind/v1
kind: Deployment
metadata: {name: x}
---
apiVersion: hivemind/v2
kind: Volume
metadata: {name: data}
";
        let errors = parse_sources([("bad.yaml", text)])
            .expect_err("invalid")
            .to_string();
        assert!(
            errors.contains(
                "bad.yaml:6:3: document 1: spec: unknown field `replica` (did you mean `replicas`?)"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("bad.yaml:9:1: document 2 (x): kind: kind must be one of"),
            "{errors}"
        );
        assert!(
            errors.contains("bad.yaml:12:1: document 3 (data): apiVersion"),
            "{errors}"
        );
    }

    #[test]
    fn duplicates_and_empty_sets_are_refused() {
        let text = "kind: Volume\napiVersion: hivemind/v1\nmetadata: {name: a}\n---\nkind: Volume\napiVersion: hivemind/v1\nmetadata: {name: a}\n";
        let errors = parse_sources([("d.yaml", text)])
            .expect_err("dup")
            .to_string();
        assert!(errors.contains("volume a is defined twice"), "{errors}");
        let errors = parse_sources([("e.yaml", "# nothing\n")])
            .expect_err("empty")
            .to_string();
        assert!(errors.contains("no documents"), "{errors}");
    }
}
