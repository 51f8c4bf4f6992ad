//! The OCI and Docker v2 documents a pull reads — manifests, indexes (manifest lists) and image
//! configs — and what follows from them: the platform to pick, layer chain ids, and the
//! garbage-collection labels containerd needs. Pure.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The manifest types a pull asks the registry for (the `Accept` header), preferred first.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// Layer types containerd's differ applies (tar, gzip and zstd; OCI and Docker spellings).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// The snapshotter images are unpacked with.
pub const SNAPSHOTTER: &str = "overlayfs";

/// GC labels, as containerd's own client sets them.
pub mod labels {
    pub const CONFIG: &str = "containerd.io/gc.ref.content.config";
    pub const LAYER_PREFIX: &str = "containerd.io/gc.ref.content.l.";
    pub const MANIFEST_PREFIX: &str = "containerd.io/gc.ref.content.m.";
    pub const SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";
    pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
    pub const EXPIRE: &str = "containerd.io/gc.expire";
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("{what} is not valid JSON: {message}")]
    Json { what: &'static str, message: String },
    #[error("unsupported manifest schema version {version} (only schema 2 is supported)")]
    SchemaVersion { version: u32 },
    #[error("unsupported manifest media type {media_type:?}")]
    MediaType { media_type: String },
    #[error("no image for {wanted} in the index (it has: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("the manifest has no layers")]
    NoLayers,
    #[error("unsupported layer media type {media_type:?} (layer {digest})")]
    LayerType { media_type: String, digest: String },
    #[error("unsupported config media type {media_type:?}")]
    ConfigType { media_type: String },
    #[error("the config lists {diff_ids} layer diff ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("invalid descriptor {digest:?}: {reason}")]
    Descriptor {
        digest: String,
        reason: &'static str,
    },
}

/// A content descriptor, as in manifests and indexes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: i64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            platform: None,
        }
    }

    /// Size as an unsigned byte count (validated non-negative by [`check_descriptor`]).
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.size).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// What a manifest-type document turned out to be.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest {
        media_type: String,
        manifest: Manifest,
    },
    Index {
        media_type: String,
        index: Index,
    },
}

/// Parses a manifest or index, telling them apart by `mediaType` (or by shape when a
/// document omits it, which OCI allows).
pub fn parse_document(bytes: &[u8]) -> Result<Document, ManifestError> {
    let versioned: Versioned = json("manifest", bytes)?;
    if versioned.schema_version != 2 {
        return Err(ManifestError::SchemaVersion {
            version: versioned.schema_version,
        });
    }
    let media_type = match versioned.media_type {
        Some(media_type) => media_type,
        None if versioned.manifests.is_some() => OCI_INDEX.to_owned(),
        None => OCI_MANIFEST.to_owned(),
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let index: Index = json("image index", bytes)?;
            for descriptor in &index.manifests {
                check_descriptor(descriptor)?;
            }
            Ok(Document::Index { media_type, index })
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let manifest: Manifest = json("image manifest", bytes)?;
            check_manifest(&manifest)?;
            Ok(Document::Manifest {
                media_type,
                manifest,
            })
        }
        _ => Err(ManifestError::MediaType { media_type }),
    }
}

fn check_manifest(manifest: &Manifest) -> Result<(), ManifestError> {
    check_descriptor(&manifest.config)?;
    if !manifest.config.media_type.is_empty()
        && manifest.config.media_type != OCI_CONFIG
        && manifest.config.media_type != DOCKER_CONFIG
    {
        return Err(ManifestError::ConfigType {
            media_type: manifest.config.media_type.clone(),
        });
    }
    if manifest.layers.is_empty() {
        return Err(ManifestError::NoLayers);
    }
    for layer in &manifest.layers {
        check_descriptor(layer)?;
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ManifestError::LayerType {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
            });
        }
    }
    Ok(())
}

/// Digests must be `sha256:<64 lowercase hex>` (they become file names and label values) and
/// sizes non-negative.
pub fn check_descriptor(descriptor: &Descriptor) -> Result<(), ManifestError> {
    let invalid = |reason| ManifestError::Descriptor {
        digest: descriptor.digest.clone(),
        reason,
    };
    let hex = descriptor
        .digest
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid("only sha256 digests are supported"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("malformed digest"));
    }
    if descriptor.size < 0 {
        return Err(invalid("negative size"));
    }
    Ok(())
}

/// The platform this node runs: `linux/<GOARCH-style arch>`.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant: None,
    }
}

/// The index entry for `wanted`: same OS and architecture; among several, the one whose
/// variant matches (or has none).
pub fn select_platform<'a>(
    index: &'a Index,
    wanted: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == wanted.os && p.architecture == wanted.architecture)
        })
        .collect();
    let exact = candidates
        .iter()
        .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == wanted.variant.as_ref());
    exact
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: format!("{}/{}", wanted.os, wanted.architecture),
            available: index
                .manifests
                .iter()
                .map(|d| match &d.platform {
                    Some(p) => match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    },
                    None => "unknown".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What the container runtime needs from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `PORT/PROTO`, sorted.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `HEALTHCHECK`, if the image has one.
    pub healthcheck: Option<ImageHealthcheck>,
    /// `STOPSIGNAL` ("" if none).
    pub stop_signal: String,
}

/// An image's `HEALTHCHECK`, as its config stores it (durations in nanoseconds, 0 = the
/// default).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageHealthcheck {
    /// `["CMD-SHELL", "cmd"]`, `["CMD", "prog", "arg"...]`, or `["NONE"]` (checks disabled).
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: u64,
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub start_period: u64,
    #[serde(default)]
    pub retries: u32,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    healthcheck: Option<ImageHealthcheck>,
    #[serde(default)]
    stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// An image config, parsed and checked against its manifest.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    pub config: ImageConfig,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
}

pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ParsedConfig, ManifestError> {
    let file: ConfigFile = json("image config", bytes)?;
    if file.rootfs.diff_ids.len() != layers {
        return Err(ManifestError::LayerCount {
            diff_ids: file.rootfs.diff_ids.len(),
            layers,
        });
    }
    for diff_id in &file.rootfs.diff_ids {
        check_descriptor(&Descriptor::new("", diff_id, 0))?;
    }
    let c = file.config.unwrap_or_default();
    Ok(ParsedConfig {
        config: ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
            healthcheck: c.healthcheck,
            stop_signal: c.stop_signal.unwrap_or_default(),
        },
        diff_ids: file.rootfs.diff_ids,
    })
}

/// Chain ids of a layer stack (OCI image spec): the first is the first diff id, each next one
/// is `sha256(previous + " " + diff_id)`. The last one names the image's top snapshot.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Labels on a manifest: its config and every layer, so GC keeps them while the manifest lives.
pub fn manifest_labels(manifest: &Manifest) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(labels::CONFIG.to_owned(), manifest.config.digest.clone());
    for (i, layer) in manifest.layers.iter().enumerate() {
        out.insert(format!("{}{i}", labels::LAYER_PREFIX), layer.digest.clone());
    }
    out
}

/// Labels on an index: the platform manifests it was pulled for.
pub fn index_labels(manifests: &[&Descriptor]) -> BTreeMap<String, String> {
    manifests
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{}{i}", labels::MANIFEST_PREFIX), d.digest.clone()))
        .collect()
}

/// The label on a config that keeps the image's unpacked snapshot chain.
pub fn snapshot_label() -> String {
    format!("{}{SNAPSHOTTER}", labels::SNAPSHOT_PREFIX)
}

fn json<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, ManifestError> {
    serde_json::from_slice(bytes).map_err(|err| ManifestError::Json {
        what,
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn manifest_json(layers: &[(String, &str)]) -> String {
        let layers: Vec<String> = layers
            .iter()
            .map(|(d, t)| format!(r#"{{"mediaType":"{t}","digest":"{d}","size":10}}"#))
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":5}},"layers":[{}]}}"#,
            digest(1),
            layers.join(",")
        )
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let doc = parse_document(manifest_json(&[(digest(2), LAYER_TYPES[1])]).as_bytes())
            .expect("manifest");
        let Document::Manifest {
            manifest,
            media_type,
        } = doc
        else {
            panic!("not a manifest")
        };
        assert_eq!(media_type, OCI_MANIFEST);
        assert_eq!(manifest.layers.len(), 1);

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":3,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":3,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            digest(3),
            digest(4)
        );
        let Document::Index { index, media_type } =
            parse_document(index.as_bytes()).expect("index")
        else {
            panic!("not an index")
        };
        assert_eq!(media_type, OCI_INDEX);
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&index, &amd64).expect("amd64").digest,
            digest(4)
        );
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&index, &arm64).expect("arm64").digest,
            digest(3)
        );
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        let err = select_platform(&index, &s390).expect_err("no s390x");
        assert_eq!(
            err.to_string(),
            "no image for linux/s390x in the index (it has: linux/arm64/v8, linux/amd64)"
        );
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(matches!(
            parse_document(br#"{"schemaVersion":1,"name":"x"}"#),
            Err(ManifestError::SchemaVersion { version: 1 })
        ));
        assert!(matches!(
            parse_document(b"not json"),
            Err(ManifestError::Json { .. })
        ));
        assert!(matches!(
            parse_document(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#),
            Err(ManifestError::MediaType { .. })
        ));
        assert!(matches!(
            parse_document(manifest_json(&[]).as_bytes()),
            Err(ManifestError::NoLayers)
        ));
        assert!(matches!(
            parse_document(manifest_json(&[(digest(2), "application/wasm")]).as_bytes()),
            Err(ManifestError::LayerType { .. })
        ));
        assert!(matches!(
            parse_document(
                manifest_json(&[("sha256:../../etc".into(), LAYER_TYPES[0])]).as_bytes()
            ),
            Err(ManifestError::Descriptor { .. })
        ));
    }

    #[test]
    fn config_gives_the_runtime_settings() {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Entrypoint":["/init"],"Cmd":["httpd","-f"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{{"80/tcp":{{}},"53/udp":{{}}}},"Labels":{{"a":"b"}}}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            digest(5),
            digest(6)
        );
        let parsed = parse_config(config.as_bytes(), 2).expect("config");
        assert_eq!(parsed.config.entrypoint, ["/init"]);
        assert_eq!(parsed.config.cmd, ["httpd", "-f"]);
        assert_eq!(parsed.config.env, ["PATH=/bin"]);
        assert_eq!(parsed.config.working_dir, "/srv");
        assert_eq!(parsed.config.user, "1000:1000");
        assert_eq!(parsed.config.exposed_ports, ["53/udp", "80/tcp"]);
        assert_eq!(parsed.config.labels["a"], "b");
        assert_eq!(parsed.diff_ids, [digest(5), digest(6)]);
        assert!(matches!(
            parse_config(config.as_bytes(), 1),
            Err(ManifestError::LayerCount {
                diff_ids: 2,
                layers: 1
            })
        ));
        // A config without a `config` section is valid (no defaults).
        let bare = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            digest(5)
        );
        assert_eq!(
            parse_config(bare.as_bytes(), 1).expect("bare").config,
            ImageConfig::default()
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let diff_ids = [digest(7), digest(8), digest(9)];
        let chain = chain_ids(&diff_ids);
        assert_eq!(chain[0], digest(7));
        assert_eq!(
            chain[1],
            sha256_digest(format!("{} {}", digest(7), digest(8)).as_bytes())
        );
        assert_eq!(
            chain[2],
            sha256_digest(format!("{} {}", chain[1], digest(9)).as_bytes())
        );
        // Known value: sha256 of the empty string.
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn gc_labels_match_containerd() {
        let Document::Manifest { manifest, .. } = parse_document(
            manifest_json(&[(digest(2), LAYER_TYPES[1]), (digest(3), LAYER_TYPES[4])]).as_bytes(),
        )
        .expect("manifest") else {
            panic!("not a manifest")
        };
        let labels = manifest_labels(&manifest);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], digest(1));
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], digest(2));
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], digest(3));
        let chosen = Descriptor::new(OCI_MANIFEST, &digest(4), 1);
        assert_eq!(
            index_labels(&[&chosen])["containerd.io/gc.ref.content.m.0"],
            digest(4)
        );
        assert_eq!(snapshot_label(), "containerd.io/gc.ref.snapshot.overlayfs");
    }
}
