//! YAML files, directories and API bodies to validated policies.
//!
//! YAML library: `serde_norway`, the maintained fork of the deprecated `serde_yaml` (same API,
//! libyaml-based, alias/recursion limits against billion-laughs input, and a line and column on
//! every error). `serde_yml` is unmaintained with an unsoundness advisory, and the pure-Rust
//! `saphyr` would need a hand-written mapping to our types that `deny_unknown_fields` gives us
//! for free. `serde_path_to_error` supplies the field path of shape errors.
//!
//! Each file is read twice by the YAML parser, which costs nothing at policy sizes: first as
//! untyped values, to find malformed YAML (after which libyaml cannot go on, so the rest of that
//! file is skipped), empty documents, and each document's `metadata.name` for the messages; then
//! into [`PolicyDocument`], then through validation. Every error of every file is collected.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize as _;

use super::{
    Location, PolicyError, PolicyErrors,
    model::{NO_VALUE, Policy, PolicyDocument},
    validate::{closest, validate},
};

/// Parses a policy file, or every `*.yaml` and `*.yml` file directly in a directory (not
/// recursively; names starting with `.` are skipped), in file-name order.
pub fn parse_path(path: &Path) -> Result<Vec<Policy>, PolicyErrors> {
    let mut set = PolicySet::default();
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => match yaml_files(path) {
            Ok(files) if files.is_empty() => set.errors.push(PolicyError::NoPolicyFiles {
                path: path.to_owned(),
            }),
            Ok(files) => {
                for file in files {
                    set.add_file(&file);
                }
            }
            Err(source) => set.errors.push(PolicyError::Read {
                path: path.to_owned(),
                source,
            }),
        },
        Ok(_) => set.add_file(path),
        Err(source) => set.errors.push(PolicyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
    set.finish()
}

/// Parses one input, named `file` in messages (an API caller passes the file name its user gave).
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Policy>, PolicyErrors> {
    parse_sources([(file, text)])
}

/// Parses several inputs as one set: `(name, text)` pairs; names must be unique across the set.
pub fn parse_sources<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Policy>, PolicyErrors> {
    let mut set = PolicySet::default();
    for (file, text) in sources {
        set.add_text(file, text);
    }
    set.finish()
}

/// The `NetworkPolicy` documents of inputs that hold other kinds too (`hivemind apply -f`):
/// documents of another `kind` are left to their reader, and an input without policies is
/// not an error.
pub fn parse_policy_documents<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Policy>, PolicyErrors> {
    let mut set = PolicySet {
        among_other_kinds: true,
        ..PolicySet::default()
    };
    for (file, text) in sources {
        set.add_text(file, text);
    }
    set.finish()
}

pub(crate) fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Default)]
struct PolicySet {
    policies: Vec<(Policy, Location)>,
    errors: Vec<PolicyError>,
    /// Skip documents of other kinds instead of reporting them (see [`parse_policy_documents`]).
    among_other_kinds: bool,
}

impl PolicySet {
    fn add_file(&mut self, path: &Path) {
        match fs::read_to_string(path) {
            Ok(text) => self.add_text(&path.display().to_string(), &text),
            Err(source) => self.errors.push(PolicyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn add_text(&mut self, file: &str, text: &str) {
        let file_location = Location {
            file: file.to_owned(),
            ..Location::default()
        };
        // Pass 1: untyped, for syntax errors, empty documents and names.
        // Per document: `None` if empty, else `Some(its metadata.name if readable)`.
        let mut documents: Vec<Option<Option<String>>> = Vec::new();
        let mut syntax_error = None;
        for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
            match Option::<serde_norway::Value>::deserialize(de) {
                Ok(Some(value)) if self.among_other_kinds && !is_policy(&value) => {
                    documents.push(None);
                }
                Ok(value) => documents.push(value.map(|v| document_name(&v))),
                Err(e) => {
                    let message = bare_message(&e, "");
                    // libyaml reports a duplicate key at the start of its mapping; find the key.
                    let line_column = duplicated_key(&message)
                        .and_then(|key| second_key_position(text, i, key))
                        .or_else(|| e.location().map(|l| (l.line(), l.column())));
                    syntax_error = Some(PolicyError::Syntax {
                        at: Location {
                            document: Some(i + 1),
                            line_column,
                            ..file_location.clone()
                        },
                        message,
                    });
                    // libyaml cannot resume after an error; the iterator would repeat it forever.
                    break;
                }
            }
        }
        if syntax_error.is_none()
            && !self.among_other_kinds
            && documents.iter().all(Option::is_none)
        {
            self.errors
                .push(PolicyError::NoDocuments { at: file_location });
            return;
        }
        // Pass 2: typed, then validated.
        let typed = serde_norway::Deserializer::from_str(text).zip(&documents);
        for (i, (de, name)) in typed.enumerate() {
            let Some(name) = name else { continue };
            let base = Location {
                document: Some(i + 1),
                name: name.clone(),
                ..file_location.clone()
            };
            match serde_path_to_error::deserialize::<_, PolicyDocument>(de) {
                Ok(doc) => match validate(&doc, &base) {
                    Ok(policy) => self.policies.push((policy, base)),
                    Err(errors) => self.errors.extend(errors),
                },
                Err(e) => self.errors.push(shape_error(base, e)),
            }
        }
        self.errors.extend(syntax_error);
    }

    fn finish(mut self) -> Result<Vec<Policy>, PolicyErrors> {
        // Duplicate names, reported at every later definition.
        let mut first: std::collections::BTreeMap<&str, &Location> =
            std::collections::BTreeMap::new();
        for (policy, at) in &self.policies {
            if let Some(prev) = first.get(policy.name.as_str()) {
                self.errors.push(PolicyError::DuplicateName {
                    at: at.clone(),
                    name: policy.name.clone(),
                    first: (*prev).clone(),
                });
            } else {
                first.insert(&policy.name, at);
            }
        }
        if !self.errors.is_empty() {
            return Err(PolicyErrors {
                errors: self.errors,
            });
        }
        let mut policies: Vec<Policy> = self.policies.into_iter().map(|(p, _)| p).collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(policies)
    }
}

/// The key of serde's "duplicate entry with key \"K\"" message.
pub(crate) fn duplicated_key(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("duplicate entry with key \"")?;
    rest.split_once('"').map(|(key, _)| key)
}

/// Line and column (1-based) of the second `key:` of one block mapping in document
/// `document` (0-based) of `text`. Follows indentation only, which is what block-style YAML
/// nests by; `None` for anything it cannot follow (flow mappings, quoted multi-line keys).
pub(crate) fn second_key_position(
    text: &str,
    document: usize,
    key: &str,
) -> Option<(usize, usize)> {
    let mut current = 0;
    // Open mappings: the column of their keys and the keys seen so far.
    let mut open: Vec<(usize, Vec<String>)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            if number > 0 || current > 0 {
                current += 1;
            }
            open.clear();
            continue;
        }
        if current != document || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut column = line.len() - trimmed.len();
        let mut rest = trimmed;
        let mut item = false;
        while let Some(after) = rest.strip_prefix("- ") {
            let inner = after.trim_start();
            column += rest.len() - inner.len();
            rest = inner;
            item = true;
        }
        let Some((name, _)) = rest
            .split_once(": ")
            .or_else(|| rest.strip_suffix(':').map(|n| (n, "")))
        else {
            continue;
        };
        let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
        while open
            .last()
            .is_some_and(|(c, _)| *c > column || (item && *c == column))
        {
            open.pop();
        }
        match open.last_mut() {
            Some((c, keys)) if *c == column => {
                if name == key && keys.iter().any(|k| k == key) {
                    return Some((number + 1, column + 1));
                }
                keys.push(name.to_owned());
            }
            _ => open.push((column, vec![name.to_owned()])),
        }
    }
    None
}

fn is_policy(value: &serde_norway::Value) -> bool {
    value.get("kind").and_then(serde_norway::Value::as_str) == Some(super::KIND)
}

pub(crate) fn document_name(value: &serde_norway::Value) -> Option<String> {
    value
        .get("metadata")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// A serde error (wrong type, unknown or missing field) as a [`PolicyError`].
pub(crate) fn shape_error(
    base: Location,
    error: serde_path_to_error::Error<serde_norway::Error>,
) -> PolicyError {
    let path = match error.path().to_string() {
        p if p == "." || p == "?" => String::new(),
        p => p,
    };
    let inner = error.into_inner();
    let at = Location {
        line_column: inner.location().map(|l| (l.line(), l.column())),
        path,
        ..base
    };
    let message = bare_message(&inner, &at.path);
    if message == NO_VALUE {
        // Raised after the parser moved on, so the position it carries is the enclosing
        // mapping's, not the key's; the path is exact.
        return PolicyError::Structure {
            at: Location {
                line_column: None,
                ..at
            },
            message,
        };
    }
    match parse_unknown_field(&message) {
        Some((field, expected)) => {
            // serde_path_to_error ends the path with the unknown field; point at its parent.
            let parent = at.path.strip_suffix(field.as_str()).map_or_else(
                || at.path.clone(),
                |p| p.strip_suffix('.').unwrap_or(p).to_owned(),
            );
            let candidates: Vec<&str> = expected.iter().map(String::as_str).collect();
            let suggestion = known_confusion(&field, &candidates)
                .or_else(|| closest(&field, &candidates))
                .map(str::to_owned);
            PolicyError::UnknownField {
                at: Location { path: parent, ..at },
                field,
                expected,
                suggestion,
            }
        }
        None => PolicyError::Structure { at, message },
    }
}

/// Names people bring from Kubernetes or from the other direction.
fn known_confusion<'a>(field: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let meant = match field {
        "to" => "from",
        "from" => "to",
        "podSelector" => "selector",
        "ipBlock" => "cidr",
        _ => return None,
    };
    candidates.iter().copied().find(|c| *c == meant)
}

/// serde's message for `deny_unknown_fields`: "unknown field `x`, expected `a` or `b`",
/// "... expected one of `a`, `b`, `c`", or "... there are no fields".
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

/// The error's message without the location and path that `serde_norway` writes into it (we
/// report those as structured fields).
pub(crate) fn bare_message(error: &serde_norway::Error, path: &str) -> String {
    let mut message = error.to_string();
    if let Some(location) = error.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(at) = message.find(&suffix) {
            message.replace_range(at..at + suffix.len(), "");
        }
    }
    // serde_norway prefixes "PATH: " with the path of the node it was at, which is `path` or one
    // of its ancestors.
    let mut cut = path.len();
    loop {
        if cut > 0
            && let Some(rest) = message.strip_prefix(&format!("{}: ", &path[..cut]))
        {
            return rest.to_owned();
        }
        match path[..cut].rfind(['.', '[']) {
            Some(i) => cut = i,
            None => return message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_messages() {
        assert_eq!(
            parse_unknown_field("unknown field `prots`, expected `from` or `ports`"),
            Some((
                "prots".to_owned(),
                vec!["from".to_owned(), "ports".to_owned()]
            ))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, expected one of `port`, `endPort`, `protocol`"),
            Some((
                "x".to_owned(),
                vec![
                    "port".to_owned(),
                    "endPort".to_owned(),
                    "protocol".to_owned()
                ]
            ))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, there are no fields"),
            Some(("x".to_owned(), vec![]))
        );
        assert_eq!(parse_unknown_field("missing field `spec`"), None);
    }
}
