//! Container images: pulled from OCI/Docker registries into containerd, client side.
//!
//! containerd's Transfer service (server-side pull) only exists from 2.0 on, so the agent pulls
//! the way `ctr` does, which works with containerd 1.6 through 2.x: resolve and fetch with
//! `oci-client` ([`registry`]), stream the blobs into the Content service under a lease, create
//! the Image record, and unpack every layer into overlayfs snapshots named by chain id
//! ([`pull`]). GC labels on the stored documents keep everything alive once the lease is gone.
//!
//! - [`Images::ensure_image`]: pull unless present (`force` asks the registry again);
//! - [`Images::local_image`]: what is stored, read from containerd only (after a restart);
//! - [`Images::remove_image`]: drop the record and let containerd collect what it held.

mod containerd;
pub mod credentials;
mod error;
pub mod manifest;
mod pull;
pub mod reference;
mod registry;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;
use tonic::{Status, transport::Channel};

pub use error::ImageError;
pub use manifest::{ImageConfig, ImageHealthcheck};
pub use reference::{ImageRef, ReferenceError};
pub use registry::RegistryOptions;

use self::{
    containerd::{Containerd, from_proto},
    manifest::{Descriptor, Document},
    registry::RegistryClient,
};

/// Largest manifest, index or config the agent reads back from containerd.
const MAX_DOCUMENT: u64 = 16 << 20;

/// What the container runtime needs from a pulled image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PulledImage {
    /// The normalised reference, which is also containerd's image name.
    pub name: String,
    /// What the reference resolved to, as `ctr images ls` and registries show it: the index
    /// digest for a multi-platform image, else the manifest digest.
    pub digest: String,
    /// The manifest of this node's platform (equal to `digest` for single-platform images).
    pub manifest_digest: String,
    pub config: ImageConfig,
    /// The committed snapshot of the top layer: the parent of a container's rootfs.
    pub chain_id: String,
    /// Bytes in the content store (index, manifest, config and compressed layers).
    pub size: u64,
}

/// Progress of a pull, for a progress bar. Milestones are always delivered; byte counts are
/// dropped when the receiver lags (the channel is full), never blocking the pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// Asking the registry what the reference points to.
    Resolving { image: String },
    /// The manifest is known: `layers` layers of `total_bytes` (compressed) in all.
    Resolved {
        image: String,
        digest: String,
        layers: usize,
        total_bytes: u64,
    },
    /// Layer `index` (from the bottom): `done` of `total` bytes fetched. `cached` when
    /// containerd already had it, so nothing was downloaded.
    Layer {
        index: usize,
        digest: String,
        done: u64,
        total: u64,
        cached: bool,
    },
    /// Unpacking layer `index` of `layers` into snapshot `chain_id`; `cached` when that
    /// snapshot already existed.
    Unpacking {
        index: usize,
        layers: usize,
        chain_id: String,
        cached: bool,
    },
    /// Finished; `pulled` is false when the image was already present.
    Done {
        image: String,
        digest: String,
        pulled: bool,
    },
}

/// Where progress goes, if anywhere.
#[derive(Debug, Clone, Default)]
struct Progress(Option<mpsc::Sender<PullProgress>>);

impl Progress {
    async fn milestone(&self, event: PullProgress) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event).await;
        }
    }

    fn update(&self, event: PullProgress) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(event);
        }
    }
}

/// The agent's images: a cheap, cloneable handle.
#[derive(Clone, Debug)]
pub struct Images {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    containerd: Containerd,
    registry: RegistryClient,
    /// One pull per image name at a time; a second caller waits and then finds it present.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    /// Images in containerd `namespace`, reached over `channel` (connected to `socket`, which
    /// errors name).
    pub fn new(
        channel: Channel,
        socket: PathBuf,
        namespace: String,
        options: RegistryOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                containerd: Containerd::new(channel, socket, namespace),
                registry: RegistryClient::new(options),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `registry` accepts `credential` (for `hivemind registry login`).
    pub async fn check_login(
        &self,
        registry: &str,
        credential: credentials::Credential,
    ) -> Result<(), ImageError> {
        self.inner.registry.check_login(registry, credential).await
    }

    /// Makes `reference` available to containers: returns at once, without the network, when
    /// it is already pulled and unpacked; otherwise (or with `force`, which asks the registry
    /// again, e.g. for a moved tag) pulls it. On failure nothing of this pull is left behind.
    pub async fn ensure_image(
        &self,
        reference: &str,
        force: bool,
        progress: Option<mpsc::Sender<PullProgress>>,
    ) -> Result<PulledImage, ImageError> {
        let image = ImageRef::parse(reference)?;
        let progress = Progress(progress);
        let guard = self.pull_lock(&image.name()).lock_owned().await;
        match self.local(&image).await {
            Ok(found) if !force => {
                tracing::debug!(image = %found.name, digest = %found.digest, "image present");
                progress
                    .milestone(PullProgress::Done {
                        image: found.name.clone(),
                        digest: found.digest.clone(),
                        pulled: false,
                    })
                    .await;
                return Ok(found);
            }
            // containerd itself failing: a pull would fail the same way.
            Err(
                err @ (ImageError::ContainerdUnreachable { .. } | ImageError::Containerd { .. }),
            ) => {
                return Err(err);
            }
            // Forced, absent, incomplete or unreadable: pull it (again).
            Ok(_) | Err(_) => {}
        }
        // The pull runs as its own task, holding the per-image lock: a caller that gives up
        // (a cancelled request) does not cut it short and leave its lease and snapshots behind.
        let name = image.name();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let inner = &this.inner;
            pull::pull(&inner.containerd, &inner.registry, &image, &progress).await
        });
        match task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(ImageError::Interrupted { image: name }),
        }
    }

    /// The stored image `reference`, read from containerd alone (no network): what a restarted
    /// agent uses. `NotPresent` if there is no such image, `Incomplete` if its content or
    /// snapshots are missing.
    pub async fn local_image(&self, reference: &str) -> Result<PulledImage, ImageError> {
        let image = ImageRef::parse(reference)?;
        self.local(&image).await
    }

    /// Deletes the image record; containerd then collects the content and snapshots nothing
    /// else uses (a running container keeps its own). `Ok(false)` if there was no such image.
    pub async fn remove_image(&self, reference: &str) -> Result<bool, ImageError> {
        let image = ImageRef::parse(reference)?;
        let name = image.name();
        let lock = self.pull_lock(&name);
        let _guard = lock.lock().await;
        let ctrd = &self.inner.containerd;
        let removed = ctrd
            .delete_image(&name, true)
            .await
            .map_err(|s| containerd_error(ctrd, &name, "Images.Delete", s))?;
        if removed {
            tracing::info!(image = %name, "image removed");
        }
        Ok(removed)
    }

    fn pull_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(name.to_owned()).or_default().clone()
    }

    async fn local(&self, image: &ImageRef) -> Result<PulledImage, ImageError> {
        let ctrd = &self.inner.containerd;
        let name = image.name();
        let name = name.as_str();
        let fail = |op| move |s| containerd_error(ctrd, name, op, s);
        let record = ctrd
            .get_image(&image.name())
            .await
            .map_err(fail("Images.Get"))?
            .ok_or_else(|| ImageError::NotPresent {
                image: image.name(),
            })?;
        let target = record
            .target
            .as_ref()
            .map(from_proto)
            .ok_or_else(|| incomplete(image, "it has no target"))?;

        let mut size = target.bytes();
        let top = self.read_document(image, &target).await?;
        let (manifest_descriptor, manifest) = match manifest::parse_document(&top)
            .map_err(|reason| unusable(image, reason))?
        {
            Document::Manifest { manifest, .. } => (target.clone(), manifest),
            Document::Index { index, .. } => {
                let chosen = manifest::select_platform(&index, &manifest::host_platform())
                    .map_err(|reason| unusable(image, reason))?
                    .clone();
                let bytes = self.read_document(image, &chosen).await?;
                size += chosen.bytes();
                match manifest::parse_document(&bytes).map_err(|reason| unusable(image, reason))? {
                    Document::Manifest { manifest, .. } => (chosen, manifest),
                    Document::Index { .. } => {
                        return Err(incomplete(image, "its index points to another index"));
                    }
                }
            }
        };
        let config_bytes = self.read_document(image, &manifest.config).await?;
        let parsed = manifest::parse_config(&config_bytes, manifest.layers.len())
            .map_err(|reason| unusable(image, reason))?;
        let chain = manifest::chain_ids(&parsed.diff_ids);
        let top_chain = chain.last().cloned().unwrap_or_default();
        let unpacked = ctrd
            .snapshot_committed(&top_chain)
            .await
            .map_err(fail("Snapshots.Stat"))?;
        if !unpacked {
            return Err(incomplete(image, "its layers are not unpacked"));
        }
        size +=
            manifest.config.bytes() + manifest.layers.iter().map(Descriptor::bytes).sum::<u64>();
        Ok(PulledImage {
            name: image.name(),
            digest: target.digest,
            manifest_digest: manifest_descriptor.digest,
            config: parsed.config,
            chain_id: top_chain,
            size,
        })
    }

    /// A stored manifest, index or config, checked against its digest.
    async fn read_document(
        &self,
        image: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Vec<u8>, ImageError> {
        let ctrd = &self.inner.containerd;
        manifest::check_descriptor(descriptor).map_err(|reason| unusable(image, reason))?;
        let bytes = match ctrd.read_blob(&descriptor.digest, MAX_DOCUMENT).await {
            Ok(bytes) => bytes,
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(incomplete(
                    image,
                    &format!(
                        "blob {} is missing from the content store",
                        descriptor.digest
                    ),
                ));
            }
            Err(status) => {
                return Err(containerd_error(
                    ctrd,
                    &image.name(),
                    "Content.Read",
                    status,
                ));
            }
        };
        if manifest::sha256_digest(&bytes) != descriptor.digest {
            return Err(incomplete(
                image,
                &format!("blob {} in the content store is corrupt", descriptor.digest),
            ));
        }
        Ok(bytes)
    }
}

fn incomplete(image: &ImageRef, missing: &str) -> ImageError {
    ImageError::Incomplete {
        image: image.name(),
        missing: missing.to_owned(),
    }
}

fn unusable(image: &ImageRef, reason: manifest::ManifestError) -> ImageError {
    ImageError::Unusable {
        image: image.name(),
        registry: image.registry().to_owned(),
        reason,
    }
}

/// A failed containerd call: unreachable (socket gone, daemon down) or the operation's error.
#[allow(clippy::needless_pass_by_value)] // by value to fit `map_err`
fn containerd_error(
    ctrd: &Containerd,
    image: &str,
    operation: &'static str,
    status: Status,
) -> ImageError {
    if status.code() == tonic::Code::Unavailable {
        return ImageError::ContainerdUnreachable {
            image: image.to_owned(),
            socket: ctrd.socket().clone(),
            message: super::status_message(&status),
        };
    }
    ImageError::Containerd {
        image: image.to_owned(),
        operation,
        code: status.code(),
        message: status.message().to_owned(),
    }
}
