//! containerd's Content, Leases, Images, Snapshots and Diff services, as the pull uses them.
//!
//! Every request carries the `containerd-namespace` header; requests made while a pull holds a
//! lease also carry `containerd-lease`, so what they create belongs to the lease until an image
//! record (through GC labels) references it. Every call is bounded by a timeout.

use std::{collections::HashMap, future::Future, path::PathBuf, time::Duration};

use containerd_client::{
    services::v1::{
        AbortRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, Info,
        ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
        content_client::ContentClient,
        diff_client::DiffClient,
        images_client::ImagesClient,
        leases_client::LeasesClient,
        snapshots::{
            CommitSnapshotRequest, Kind, PrepareSnapshotRequest, RemoveSnapshotRequest,
            StatSnapshotRequest, snapshots_client::SnapshotsClient,
        },
    },
    types::{Descriptor as ProtoDescriptor, Mount},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};

use super::manifest::{Descriptor, SNAPSHOTTER};

/// Bound on one ordinary containerd call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on applying one layer (decompress and write files).
const APPLY_TIMEOUT: Duration = Duration::from_mins(30);
/// How long a pull's lease lives if the agent dies before deleting it.
pub const LEASE_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Size of one Content.Write message (containerd accepts up to 16 MiB).
pub const WRITE_CHUNK: usize = 1 << 20;

/// A handle on one containerd namespace, optionally inside a lease.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    lease: Option<String>,
}

impl Containerd {
    pub fn new(channel: Channel, socket: PathBuf, namespace: String) -> Self {
        Self {
            channel,
            socket,
            namespace,
            lease: None,
        }
    }

    pub fn socket(&self) -> &PathBuf {
        &self.socket
    }

    /// The same handle, with every request inside `lease`.
    pub fn with_lease(&self, lease: &str) -> Self {
        Self {
            lease: Some(lease.to_owned()),
            ..self.clone()
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(value) = MetadataValue::try_from(self.namespace.as_str()) {
            metadata.insert("containerd-namespace", value);
        }
        if let Some(lease) = &self.lease
            && let Ok(value) = MetadataValue::try_from(lease.as_str())
        {
            metadata.insert("containerd-lease", value);
        }
        request
    }

    // ---- leases ----

    /// Creates a lease that expires by itself after [`LEASE_EXPIRY`] (should the agent die
    /// mid-pull) and returns its id.
    pub async fn create_lease(&self, id: &str) -> Result<String, Status> {
        let expires =
            (chrono::Utc::now() + LEASE_EXPIRY).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([(super::manifest::labels::EXPIRE.to_owned(), expires)]);
        let request = self.request(containerd_client::services::v1::CreateRequest {
            id: id.to_owned(),
            labels,
        });
        let reply = bounded(LeasesClient::new(self.channel.clone()).create(request)).await?;
        Ok(reply.lease.map_or_else(|| id.to_owned(), |l| l.id))
    }

    /// Deletes a lease; with `sync`, containerd collects what only the lease held before
    /// answering.
    pub async fn delete_lease(&self, id: &str, sync: bool) -> Result<(), Status> {
        let request = self.request(containerd_client::services::v1::DeleteRequest {
            id: id.to_owned(),
            sync,
        });
        bounded(LeasesClient::new(self.channel.clone()).delete(request)).await?;
        Ok(())
    }

    /// Puts an existing snapshot under the lease, so nothing collects it while we build on it.
    pub async fn lease_snapshot(&self, lease: &str, key: &str) -> Result<(), Status> {
        let request = self.request(containerd_client::services::v1::AddResourceRequest {
            id: lease.to_owned(),
            resource: Some(containerd_client::services::v1::Resource {
                id: key.to_owned(),
                r#type: format!("snapshots/{SNAPSHOTTER}"),
            }),
        });
        bounded(LeasesClient::new(self.channel.clone()).add_resource(request)).await?;
        Ok(())
    }

    // ---- content ----

    /// Reads a whole blob (manifests and configs: small documents), refusing more than `limit`.
    pub async fn read_blob(&self, digest: &str, limit: u64) -> Result<Vec<u8>, Status> {
        let request = self.request(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        });
        let mut stream = bounded(ContentClient::new(self.channel.clone()).read(request)).await?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(CALL_TIMEOUT, stream.message())
                .await
                .map_err(|_| Status::deadline_exceeded("reading content"))??;
            let Some(chunk) = next else { break };
            out.extend_from_slice(&chunk.data);
            if out.len() as u64 > limit {
                return Err(Status::out_of_range(format!(
                    "blob {digest} is larger than {limit} bytes"
                )));
            }
        }
        Ok(out)
    }

    /// Sets `labels` on a blob, leaving its other labels alone.
    pub async fn set_content_labels(
        &self,
        digest: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), Status> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = self.request(UpdateRequest {
            info: Some(Info {
                digest: digest.to_owned(),
                labels: labels.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        bounded(ContentClient::new(self.channel.clone()).update(request)).await?;
        Ok(())
    }

    /// Drops a half-written blob.
    pub async fn abort_write(&self, write_ref: &str) -> Result<(), Status> {
        let request = self.request(AbortRequest {
            r#ref: write_ref.to_owned(),
        });
        bounded(ContentClient::new(self.channel.clone()).abort(request)).await?;
        Ok(())
    }

    /// Opens a streaming write of `descriptor` under `write_ref`. `Ok(None)` when containerd
    /// already has the blob (it then adds the blob to the lease and writes nothing).
    pub async fn open_writer(
        &self,
        write_ref: &str,
        descriptor: &Descriptor,
    ) -> Result<Option<BlobWriter>, Status> {
        let (tx, rx) = mpsc::channel(2);
        let first = WriteContentRequest {
            action: WriteAction::Stat.into(),
            r#ref: write_ref.to_owned(),
            total: descriptor.size,
            expected: descriptor.digest.clone(),
            ..Default::default()
        };
        // The server answers only after it has read the first message: queue it before the call.
        tx.send(first)
            .await
            .map_err(|_| Status::internal("write stream closed"))?;
        let request = self.request(ReceiverStream::new(rx));
        let opened = bounded(ContentClient::new(self.channel.clone()).write(request)).await;
        let mut responses = match opened {
            Ok(responses) => responses,
            Err(status) if status.code() == Code::AlreadyExists => return Ok(None),
            Err(status) => return Err(status),
        };
        match next_reply(&mut responses).await {
            Ok(()) => {}
            Err(status) if status.code() == Code::AlreadyExists => return Ok(None),
            Err(status) => return Err(status),
        }
        Ok(Some(BlobWriter {
            tx,
            responses,
            offset: 0,
            total: descriptor.size,
            expected: descriptor.digest.clone(),
        }))
    }

    // ---- images ----

    pub async fn get_image(&self, name: &str) -> Result<Option<Image>, Status> {
        let request = self.request(GetImageRequest {
            name: name.to_owned(),
        });
        match bounded(ImagesClient::new(self.channel.clone()).get(request)).await {
            Ok(reply) => Ok(reply.image),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Creates the image record, or points an existing one at `target`. Returns whether it
    /// existed before.
    pub async fn put_image(&self, name: &str, target: &Descriptor) -> Result<bool, Status> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(to_proto(target)),
            created_at: None,
            updated_at: None,
        };
        let request = self.request(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        });
        match bounded(ImagesClient::new(self.channel.clone()).create(request)).await {
            Ok(_) => Ok(false),
            Err(status) if status.code() == Code::AlreadyExists => {
                let request = self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".to_owned()],
                    }),
                    source_date_epoch: None,
                });
                bounded(ImagesClient::new(self.channel.clone()).update(request)).await?;
                Ok(true)
            }
            Err(status) => Err(status),
        }
    }

    /// Deletes an image record. With `sync`, containerd collects what only the image held
    /// before answering. `Ok(false)` when there was no such image.
    pub async fn delete_image(&self, name: &str, sync: bool) -> Result<bool, Status> {
        let request = self.request(DeleteImageRequest {
            name: name.to_owned(),
            sync,
            target: None,
        });
        match bounded(ImagesClient::new(self.channel.clone()).delete(request)).await {
            Ok(()) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }

    // ---- snapshots and diff ----

    /// Whether a committed snapshot named `name` exists.
    pub async fn snapshot_committed(&self, name: &str) -> Result<bool, Status> {
        let request = self.request(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: name.to_owned(),
        });
        match bounded(SnapshotsClient::new(self.channel.clone()).stat(request)).await {
            Ok(reply) => Ok(reply
                .info
                .is_some_and(|info| info.kind == i32::from(Kind::Committed))),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }

    /// An active snapshot `key` on top of `parent` (empty: none); returns its mounts.
    pub async fn prepare(&self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
        let request = self.request(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        });
        let reply = bounded(SnapshotsClient::new(self.channel.clone()).prepare(request)).await?;
        Ok(reply.mounts)
    }

    pub async fn commit(&self, name: &str, key: &str) -> Result<(), Status> {
        let request = self.request(CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels: HashMap::new(),
        });
        bounded(SnapshotsClient::new(self.channel.clone()).commit(request)).await?;
        Ok(())
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<(), Status> {
        let request = self.request(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
        });
        bounded(SnapshotsClient::new(self.channel.clone()).remove(request)).await?;
        Ok(())
    }

    /// Applies a layer blob onto `mounts`; returns the digest of the uncompressed tar.
    pub async fn apply(&self, layer: &Descriptor, mounts: Vec<Mount>) -> Result<String, Status> {
        let request = self.request(containerd_client::services::v1::ApplyRequest {
            diff: Some(to_proto(layer)),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        });
        let reply = tokio::time::timeout(
            APPLY_TIMEOUT,
            DiffClient::new(self.channel.clone()).apply(request),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("applying a layer"))??
        .into_inner();
        reply
            .applied
            .map(|d| d.digest)
            .ok_or_else(|| Status::internal("Diff.Apply returned no descriptor"))
    }
}

/// A blob being streamed into the content store: [`BlobWriter::write`] chunks, then
/// [`BlobWriter::commit`], which checks size and digest on containerd's side.
#[derive(Debug)]
pub struct BlobWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    responses: tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
    offset: i64,
    total: i64,
    expected: String,
}

impl BlobWriter {
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), Status> {
        let len = i64::try_from(data.len()).map_err(|_| Status::out_of_range("chunk too large"))?;
        self.send(WriteContentRequest {
            action: WriteAction::Write.into(),
            offset: self.offset,
            data,
            ..Default::default()
        })
        .await?;
        self.offset += len;
        Ok(())
    }

    /// Commits with the expected size and digest, and `labels` on the new blob.
    /// A concurrent writer that got there first is not an error.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), Status> {
        let result = self
            .send(WriteContentRequest {
                action: WriteAction::Commit.into(),
                offset: self.offset,
                total: self.total,
                expected: self.expected.clone(),
                labels,
                ..Default::default()
            })
            .await;
        match result {
            Err(status) if status.code() != Code::AlreadyExists => Err(status),
            _ => Ok(()),
        }
    }

    async fn send(&mut self, request: WriteContentRequest) -> Result<(), Status> {
        if self.tx.send(request).await.is_err() {
            // The server ended the stream; its status says why.
            return Err(match next_reply(&mut self.responses).await {
                Err(status) => status,
                Ok(()) => Status::aborted("containerd closed the write stream"),
            });
        }
        next_reply(&mut self.responses).await
    }
}

async fn next_reply(
    responses: &mut tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
) -> Result<(), Status> {
    match tokio::time::timeout(CALL_TIMEOUT, responses.message()).await {
        Err(_) => Err(Status::deadline_exceeded(
            "containerd did not answer a write",
        )),
        Ok(Err(status)) => Err(status),
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(Status::aborted("containerd closed the write stream")),
    }
}

fn to_proto(descriptor: &Descriptor) -> ProtoDescriptor {
    ProtoDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        annotations: HashMap::new(),
    }
}

pub fn from_proto(descriptor: &ProtoDescriptor) -> Descriptor {
    Descriptor::new(&descriptor.media_type, &descriptor.digest, descriptor.size)
}

/// Awaits a unary call within [`CALL_TIMEOUT`], unwrapping the response.
async fn bounded<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("containerd did not answer within {CALL_TIMEOUT:?}"))
        })?
        .map(tonic::Response::into_inner)
}
