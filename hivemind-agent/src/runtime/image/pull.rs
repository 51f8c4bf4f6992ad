//! One pull: resolve, fetch into the content store under a lease, unpack, record the image.
//!
//! Order matters for containerd's garbage collector: everything is written while the lease
//! holds it; the GC labels (manifest → config and layers, index → manifest, config → top
//! snapshot) are in place before the image record points at the top document; only then is
//! the lease deleted. On failure the pull removes the snapshots it committed, aborts its
//! half-written blobs and deletes the lease synchronously, so containerd collects at once
//! whatever nothing else references.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Status;

use super::{
    ImageError, Progress, PullProgress, PulledImage,
    containerd::{Containerd, WRITE_CHUNK},
    containerd_error,
    manifest::{self, Descriptor, Document, Manifest, ParsedConfig, labels},
    reference::ImageRef,
    registry::{RegistryClient, Session},
    unusable,
};

/// Largest manifest or config a registry may hand us.
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// What the registry said the image is, before anything is written.
struct Resolved {
    /// The index the reference named, with its raw bytes and the entry picked from it.
    index: Option<(Descriptor, Vec<u8>, Descriptor)>,
    manifest_descriptor: Descriptor,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    config_bytes: Vec<u8>,
    config: ParsedConfig,
    chain: Vec<String>,
}

impl Resolved {
    fn target(&self) -> &Descriptor {
        self.index
            .as_ref()
            .map_or(&self.manifest_descriptor, |(descriptor, _, _)| descriptor)
    }

    fn size(&self) -> u64 {
        self.index.as_ref().map_or(0, |(d, _, _)| d.bytes())
            + self.manifest_descriptor.bytes()
            + self.manifest.config.bytes()
            + self
                .manifest
                .layers
                .iter()
                .map(Descriptor::bytes)
                .sum::<u64>()
    }
}

pub(super) async fn pull(
    ctrd: &Containerd,
    registry: &RegistryClient,
    image: &ImageRef,
    progress: &Progress,
) -> Result<PulledImage, ImageError> {
    let started = Instant::now();
    let name = image.name();
    progress
        .milestone(PullProgress::Resolving {
            image: name.clone(),
        })
        .await;
    let session = registry.session(image).await?;
    let resolved = resolve(&session, image).await?;
    let target = resolved.target().clone();
    progress
        .milestone(PullProgress::Resolved {
            image: name.clone(),
            digest: target.digest.clone(),
            layers: resolved.manifest.layers.len(),
            total_bytes: resolved.manifest.layers.iter().map(Descriptor::bytes).sum(),
        })
        .await;

    let lease = lease_id();
    ctrd.create_lease(&lease)
        .await
        .map_err(|s| containerd_error(ctrd, &name, "Leases.Create", s))?;
    let mut pull = Pull {
        ctrd: ctrd.with_lease(&lease),
        lease: lease.clone(),
        session: &session,
        name: name.clone(),
        progress,
        undo: Undo::default(),
    };
    match pull.run(&resolved).await {
        Ok(()) => {
            if let Err(status) = ctrd.delete_lease(&lease, false).await {
                // The image is complete and referenced; the lease expires by itself.
                tracing::warn!(image = %name, %lease, "cannot delete the pull's lease: {}", status.message());
            }
            let chain_id = resolved.chain.last().cloned().unwrap_or_default();
            tracing::info!(image = %name, digest = %target.digest, elapsed = ?started.elapsed(), "image pulled");
            progress
                .milestone(PullProgress::Done {
                    image: name.clone(),
                    digest: target.digest.clone(),
                    pulled: true,
                })
                .await;
            Ok(PulledImage {
                name,
                digest: target.digest,
                manifest_digest: resolved.manifest_descriptor.digest.clone(),
                config: resolved.config.config.clone(),
                chain_id,
                size: resolved.size(),
            })
        }
        Err(err) => {
            pull.undo.run(&pull.ctrd).await;
            if let Err(status) = ctrd.delete_lease(&lease, true).await {
                tracing::warn!(image = %name, %lease, "cannot delete the failed pull's lease: {}", status.message());
            }
            tracing::warn!(image = %name, "pull failed: {err}");
            Err(err)
        }
    }
}

/// Asks the registry for the manifest (through the index, for this node's platform) and the
/// config, and checks them: all in memory, nothing stored yet.
async fn resolve(session: &Session<'_>, image: &ImageRef) -> Result<Resolved, ImageError> {
    session.login().await?;
    let (top_bytes, top_digest) = session.manifest(None).await?;
    let top = manifest::parse_document(&top_bytes).map_err(|r| unusable(image, r))?;
    let (index, manifest_descriptor, manifest_bytes, manifest) = match top {
        Document::Manifest {
            media_type,
            manifest,
        } => {
            let descriptor = Descriptor::new(&media_type, &top_digest, len(&top_bytes));
            (None, descriptor, top_bytes, manifest)
        }
        Document::Index { media_type, index } => {
            let chosen = manifest::select_platform(&index, &manifest::host_platform())
                .map_err(|r| unusable(image, r))?
                .clone();
            let (bytes, digest) = session.manifest(Some(&chosen.digest)).await?;
            session.check_size(
                "the platform manifest",
                chosen.bytes(),
                len_u64(&bytes),
                true,
            )?;
            let Document::Manifest {
                media_type: manifest_type,
                manifest,
            } = manifest::parse_document(&bytes).map_err(|r| unusable(image, r))?
            else {
                return Err(ImageError::Registry {
                    image: image.name(),
                    registry: image.registry().to_owned(),
                    message: format!("index entry {digest} is another index, not a manifest"),
                });
            };
            let index_descriptor = Descriptor::new(&media_type, &top_digest, len(&top_bytes));
            let manifest_descriptor = Descriptor::new(&manifest_type, &digest, len(&bytes));
            (
                Some((index_descriptor, top_bytes, chosen)),
                manifest_descriptor,
                bytes,
                manifest,
            )
        }
    };
    if manifest.config.bytes() > MAX_DOCUMENT_BYTES {
        return Err(ImageError::Registry {
            image: image.name(),
            registry: image.registry().to_owned(),
            message: format!(
                "the image config is {} bytes, more than the {MAX_DOCUMENT_BYTES} accepted",
                manifest.config.bytes()
            ),
        });
    }
    let config_bytes = session
        .small_blob(&manifest.config, "the image config")
        .await?;
    let config = manifest::parse_config(&config_bytes, manifest.layers.len())
        .map_err(|r| unusable(image, r))?;
    let chain = manifest::chain_ids(&config.diff_ids);
    Ok(Resolved {
        index,
        manifest_descriptor,
        manifest_bytes,
        manifest,
        config_bytes,
        config,
        chain,
    })
}

struct Pull<'a> {
    /// containerd inside the pull's lease.
    ctrd: Containerd,
    lease: String,
    session: &'a Session<'a>,
    name: String,
    progress: &'a Progress,
    undo: Undo,
}

impl Pull<'_> {
    async fn run(&mut self, resolved: &Resolved) -> Result<(), ImageError> {
        let manifest = &resolved.manifest;
        for (index, layer) in manifest.layers.iter().enumerate() {
            let labels = HashMap::from([(
                labels::UNCOMPRESSED.to_owned(),
                resolved.config.diff_ids[index].clone(),
            )]);
            self.fetch_layer(index, layer, labels).await?;
        }
        self.store(&manifest.config, &resolved.config_bytes, HashMap::new())
            .await?;
        self.store(
            &resolved.manifest_descriptor,
            &resolved.manifest_bytes,
            manifest::manifest_labels(manifest).into_iter().collect(),
        )
        .await?;
        if let Some((descriptor, bytes, chosen)) = &resolved.index {
            self.store(
                descriptor,
                bytes,
                manifest::index_labels(&[chosen]).into_iter().collect(),
            )
            .await?;
        }

        self.unpack(manifest, &resolved.config.diff_ids, &resolved.chain)
            .await?;
        let top = resolved.chain.last().cloned().unwrap_or_default();
        let snapshot_label = HashMap::from([(manifest::snapshot_label(), top)]);
        self.ctrd
            .set_content_labels(&manifest.config.digest, &snapshot_label)
            .await
            .map_err(|s| self.fail("Content.Update", s))?;

        self.ctrd
            .put_image(&self.name, resolved.target())
            .await
            .map_err(|s| self.fail("Images.Create", s))?;
        Ok(())
    }

    fn fail(&self, operation: &'static str, status: Status) -> ImageError {
        containerd_error(&self.ctrd, &self.name, operation, status)
    }

    fn write_ref(&self, digest: &str) -> String {
        format!("{}-{digest}", self.lease)
    }

    /// Streams one layer from the registry into the content store, unless containerd has it.
    async fn fetch_layer(
        &mut self,
        index: usize,
        layer: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), ImageError> {
        let what = format!("layer {index}");
        let total = layer.bytes();
        let write_ref = self.write_ref(&layer.digest);
        let Some(mut writer) = self
            .ctrd
            .open_writer(&write_ref, layer)
            .await
            .map_err(|s| self.fail("Content.Write", s))?
        else {
            self.ctrd
                .set_content_labels(&layer.digest, &labels)
                .await
                .map_err(|s| self.fail("Content.Update", s))?;
            self.progress.update(PullProgress::Layer {
                index,
                digest: layer.digest.clone(),
                done: total,
                total,
                cached: true,
            });
            return Ok(());
        };
        self.undo.ingests.push(write_ref);

        let mut stream = self.session.blob(layer).await?;
        let mut hasher = Sha256::new();
        let mut done = 0_u64;
        let mut buffer = Vec::with_capacity(WRITE_CHUNK);
        let report = |done| {
            self.progress.update(PullProgress::Layer {
                index,
                digest: layer.digest.clone(),
                done,
                total,
                cached: false,
            });
        };
        report(0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| self.session.stream_error(&err, &what))?;
            done += len_u64(&chunk);
            self.session.check_size(&what, total, done, false)?;
            hasher.update(&chunk);
            buffer.extend_from_slice(&chunk);
            if buffer.len() >= WRITE_CHUNK {
                writer
                    .write(std::mem::take(&mut buffer))
                    .await
                    .map_err(|s| containerd_error(&self.ctrd, &self.name, "Content.Write", s))?;
                report(done);
            }
        }
        self.session.check_size(&what, total, done, true)?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest {
            return Err(self.session.digest_mismatch(&what, &layer.digest, &actual));
        }
        if !buffer.is_empty() {
            writer
                .write(buffer)
                .await
                .map_err(|s| self.fail("Content.Write", s))?;
        }
        writer
            .commit(labels)
            .await
            .map_err(|s| self.fail("Content.Write", s))?;
        self.undo.ingests.pop();
        report(done);
        Ok(())
    }

    /// Stores a document we already hold in memory (config, manifest, index) with `labels`.
    async fn store(
        &mut self,
        descriptor: &Descriptor,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), ImageError> {
        let write_ref = self.write_ref(&descriptor.digest);
        let Some(mut writer) = self
            .ctrd
            .open_writer(&write_ref, descriptor)
            .await
            .map_err(|s| self.fail("Content.Write", s))?
        else {
            return self
                .ctrd
                .set_content_labels(&descriptor.digest, &labels)
                .await
                .map_err(|s| self.fail("Content.Update", s));
        };
        self.undo.ingests.push(write_ref);
        for chunk in bytes.chunks(WRITE_CHUNK) {
            writer
                .write(chunk.to_vec())
                .await
                .map_err(|s| self.fail("Content.Write", s))?;
        }
        writer
            .commit(labels)
            .await
            .map_err(|s| self.fail("Content.Write", s))?;
        self.undo.ingests.pop();
        Ok(())
    }

    /// Prepare → Apply → Commit for every layer whose chain id is not a snapshot yet.
    async fn unpack(
        &mut self,
        manifest: &Manifest,
        diff_ids: &[String],
        chain: &[String],
    ) -> Result<(), ImageError> {
        let layers = manifest.layers.len();
        for (index, layer) in manifest.layers.iter().enumerate() {
            let chain_id = &chain[index];
            let parent = if index == 0 {
                ""
            } else {
                chain[index - 1].as_str()
            };
            let exists = self
                .ctrd
                .snapshot_committed(chain_id)
                .await
                .map_err(|s| self.fail("Snapshots.Stat", s))?;
            self.progress
                .milestone(PullProgress::Unpacking {
                    index,
                    layers,
                    chain_id: chain_id.clone(),
                    cached: exists,
                })
                .await;
            if exists {
                // Hold it in the lease: another image's removal must not collect it under us.
                self.ctrd
                    .lease_snapshot(&self.lease, chain_id)
                    .await
                    .map_err(|s| self.fail("Leases.AddResource", s))?;
                continue;
            }
            let key = format!("hivemind-extract-{}-{index} {chain_id}", self.lease);
            let mounts = self
                .ctrd
                .prepare(&key, parent)
                .await
                .map_err(|s| self.fail("Snapshots.Prepare", s))?;
            self.undo.active.push(key.clone());
            let applied = self
                .ctrd
                .apply(layer, mounts)
                .await
                .map_err(|s| self.fail("Diff.Apply", s))?;
            if applied != diff_ids[index] {
                return Err(ImageError::DiffIdMismatch {
                    image: self.name.clone(),
                    layer: index,
                    digest: layer.digest.clone(),
                    expected: diff_ids[index].clone(),
                    actual: applied,
                });
            }
            match self.ctrd.commit(chain_id, &key).await {
                Ok(()) => {
                    self.undo.active.pop();
                    self.undo.committed.push(chain_id.clone());
                }
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    // Someone unpacked the same layer meanwhile; use theirs.
                    let _ = self.ctrd.remove_snapshot(&key).await;
                    self.undo.active.pop();
                    self.ctrd
                        .lease_snapshot(&self.lease, chain_id)
                        .await
                        .map_err(|s| self.fail("Leases.AddResource", s))?;
                }
                Err(status) => return Err(self.fail("Snapshots.Commit", status)),
            }
        }
        Ok(())
    }
}

/// What a failing pull has to take back (content goes with the lease).
#[derive(Debug, Default)]
struct Undo {
    ingests: Vec<String>,
    active: Vec<String>,
    committed: Vec<String>,
}

impl Undo {
    async fn run(&mut self, ctrd: &Containerd) {
        for write_ref in self.ingests.drain(..) {
            if let Err(status) = ctrd.abort_write(&write_ref).await
                && status.code() != tonic::Code::NotFound
            {
                tracing::warn!(%write_ref, "cannot abort a half-written blob: {}", status.message());
            }
        }
        // Newest first: a snapshot with children cannot be removed.
        for key in self
            .active
            .drain(..)
            .rev()
            .chain(self.committed.drain(..).rev())
        {
            if let Err(status) = ctrd.remove_snapshot(&key).await {
                // FailedPrecondition: a concurrent pull built on it; GC takes it with that one.
                tracing::warn!(%key, "cannot remove a snapshot of the failed pull: {}", status.message());
            }
        }
    }
}

/// A lease id unique to this pull.
fn lease_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "hivemind-pull-{nanos}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn len(bytes: &[u8]) -> i64 {
    i64::try_from(bytes.len()).unwrap_or(i64::MAX)
}

fn len_u64(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}
