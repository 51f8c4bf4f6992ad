//! Talking to a registry with `oci-client`: resolve a reference to a manifest, fetch blobs,
//! and turn what goes wrong into an [`ImageError`] a person can act on.
//!
//! HTTPS everywhere except the registries named with `--insecure-registry`; anonymous access
//! only (a bearer-token challenge is answered anonymously, as for public Docker Hub images).

use std::{
    sync::{Arc, Once},
    time::Duration,
};

use oci_client::{
    Client, Reference, RegistryOperation,
    client::{ClientConfig, ClientProtocol, LayerDescriptor, SizedStream},
    errors::{DigestError, OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{ImageError, manifest::Descriptor, reference::ImageRef};

/// Registry settings the agent is configured with.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `HOST:PORT` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Bound on establishing a connection (DNS, TCP, TLS).
    pub connect_timeout: Duration,
    /// Bound on waiting for the next bytes of an answer; also bounds each whole manifest request.
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl RegistryOptions {
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.iter().any(|r| r == registry)
    }
}

/// A registry client shared by every pull of one agent.
#[derive(Clone)]
pub struct RegistryClient {
    client: Client,
    options: Arc<RegistryOptions>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(options: RegistryOptions) -> Self {
        install_crypto_provider();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            // We pick the platform ourselves and fetch raw documents.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        Self {
            client: Client::new(config),
            options: Arc::new(options),
        }
    }

    /// The registry end of one pull of `image`.
    pub fn session<'a>(&'a self, image: &'a ImageRef) -> Session<'a> {
        let reference = match (image.tag(), image.digest()) {
            (_, Some(digest)) => Reference::with_digest(
                image.registry().to_owned(),
                image.repository().to_owned(),
                digest.to_owned(),
            ),
            (tag, None) => Reference::with_tag(
                image.registry().to_owned(),
                image.repository().to_owned(),
                tag.unwrap_or(super::reference::DEFAULT_TAG).to_owned(),
            ),
        };
        Session {
            client: &self.client,
            options: &self.options,
            image,
            reference,
        }
    }
}

/// rustls needs a process-wide crypto provider before any TLS client is built.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another provider is installed already; that one works as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub struct Session<'a> {
    client: &'a Client,
    options: &'a RegistryOptions,
    image: &'a ImageRef,
    reference: Reference,
}

impl Session<'_> {
    fn registry(&self) -> &str {
        self.image.registry()
    }

    fn scheme(&self) -> &'static str {
        if self.options.is_insecure(self.registry()) {
            "http"
        } else {
            "https"
        }
    }

    /// Checks that the registry answers and gets an anonymous token if it wants one.
    pub async fn login(&self) -> Result<(), ImageError> {
        let call = self.client.auth(
            &self.reference,
            &RegistryAuth::Anonymous,
            RegistryOperation::Pull,
        );
        match self.bounded(call).await? {
            Ok(_) => Ok(()),
            Err(err) => Err(self.classify(err, "the registry API").await),
        }
    }

    /// The manifest or index the reference names: raw bytes (what gets stored) and their digest.
    pub async fn manifest(&self, digest: Option<&str>) -> Result<(Vec<u8>, String), ImageError> {
        let reference = match digest {
            Some(digest) => self.reference.clone_with_digest(digest.to_owned()),
            None => self.reference.clone(),
        };
        let call = self.client.pull_manifest_raw(
            &reference,
            &RegistryAuth::Anonymous,
            super::manifest::ACCEPTED_MANIFESTS,
        );
        let (bytes, _) = match self.bounded(call).await? {
            Ok(found) => found,
            Err(err) => return Err(self.classify(err, "the manifest").await),
        };
        let actual = super::manifest::sha256_digest(&bytes);
        if let Some(expected) = reference.digest()
            && expected != actual
        {
            return Err(ImageError::DigestMismatch {
                image: self.image.name(),
                registry: self.registry().to_owned(),
                what: "the manifest".to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Starts downloading a blob. The stream checks the digest at its end (an `io::Error`
    /// wrapping [`DigestError`], which [`Session::stream_error`] turns into `DigestMismatch`).
    pub async fn blob(&self, descriptor: &Descriptor) -> Result<SizedStream, ImageError> {
        let urls = None;
        let layer = LayerDescriptor {
            digest: &descriptor.digest,
            urls: &urls,
        };
        let call = self.client.pull_blob_stream(&self.reference, &layer);
        match self.bounded(call).await? {
            Ok(stream) => Ok(stream),
            Err(err) => Err(self
                .classify(err, &format!("blob {}", descriptor.digest))
                .await),
        }
    }

    /// Downloads a small blob (a config) whole, checking size and digest.
    pub async fn small_blob(
        &self,
        descriptor: &Descriptor,
        what: &str,
    ) -> Result<Vec<u8>, ImageError> {
        use tokio_stream::StreamExt as _;
        let mut stream = self.blob(descriptor).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| self.stream_error(&err, what))?;
            out.extend_from_slice(&chunk);
            self.check_size(what, descriptor.bytes(), out.len() as u64, false)?;
        }
        self.check_size(what, descriptor.bytes(), out.len() as u64, true)?;
        let actual = super::manifest::sha256_digest(&out);
        if actual != descriptor.digest {
            return Err(self.digest_mismatch(what, &descriptor.digest, &actual));
        }
        Ok(out)
    }

    /// An error if `got` bytes already exceed `expected`, or (at the `end`) differ from it.
    pub fn check_size(
        &self,
        what: &str,
        expected: u64,
        got: u64,
        end: bool,
    ) -> Result<(), ImageError> {
        if got > expected || (end && got != expected) {
            return Err(ImageError::SizeMismatch {
                image: self.image.name(),
                registry: self.registry().to_owned(),
                what: what.to_owned(),
                expected,
                actual: got,
            });
        }
        Ok(())
    }

    pub fn digest_mismatch(&self, what: &str, expected: &str, actual: &str) -> ImageError {
        ImageError::DigestMismatch {
            image: self.image.name(),
            registry: self.registry().to_owned(),
            what: what.to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        }
    }

    /// An error while a blob streams in.
    pub fn stream_error(&self, err: &std::io::Error, what: &str) -> ImageError {
        if let Some(DigestError::VerificationError { expected, actual }) =
            err.get_ref().and_then(|e| e.downcast_ref::<DigestError>())
        {
            return self.digest_mismatch(what, expected, actual);
        }
        let text = chain(err);
        if text.to_ascii_lowercase().contains("timed out")
            || err.kind() == std::io::ErrorKind::TimedOut
        {
            return self.timeout(self.options.read_timeout);
        }
        ImageError::Unreachable {
            image: self.image.name(),
            registry: self.registry().to_owned(),
            reason: format!("the connection broke while downloading {what}: {text}"),
        }
    }

    fn timeout(&self, timeout: Duration) -> ImageError {
        ImageError::Timeout {
            image: self.image.name(),
            registry: self.registry().to_owned(),
            timeout,
        }
    }

    /// Bounds a whole request (reqwest's timeouts bound connecting and each read, not a
    /// server that trickles).
    async fn bounded<T>(&self, call: impl Future<Output = T>) -> Result<T, ImageError> {
        let limit = self.options.connect_timeout + self.options.read_timeout;
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| self.timeout(limit))
    }

    async fn classify(&self, err: OciDistributionError, what: &str) -> ImageError {
        let image = self.image.name();
        let registry = self.registry().to_owned();
        match err {
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    ImageError::NotFound { image, registry }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    ImageError::Unauthorized { image, registry }
                } else {
                    let message = envelope
                        .errors
                        .iter()
                        .map(|e| format!("{:?}: {}", e.code, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    ImageError::Registry {
                        image,
                        registry,
                        message: format!("{what}: {message}"),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => {
                ImageError::NotFound { image, registry }
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            }
            | OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                ImageError::Unauthorized { image, registry }
            }
            OciDistributionError::ServerError { code, message, .. } => ImageError::Registry {
                image,
                registry,
                message: format!("{what}: HTTP {code} {}", message.trim()),
            },
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => self.digest_mismatch(what, &expected, &actual),
            OciDistributionError::RequestError(err) => self.request_error(&err).await,
            OciDistributionError::IoError(err) => self.stream_error(&err, what),
            other => ImageError::Registry {
                image,
                registry,
                message: format!("{what}: {other}"),
            },
        }
    }

    async fn request_error(&self, err: &reqwest::Error) -> ImageError {
        let image = self.image.name();
        let registry = self.registry().to_owned();
        let text = chain(err);
        let lower = text.to_ascii_lowercase();
        if err.is_timeout() || lower.contains("timed out") {
            let timeout = if err.is_connect() {
                self.options.connect_timeout
            } else {
                self.options.read_timeout
            };
            return self.timeout(timeout);
        }
        if has_io_kind(err, std::io::ErrorKind::ConnectionRefused) {
            return ImageError::Unreachable {
                image,
                registry,
                reason: format!("connection refused by {}", self.host_port()),
            };
        }
        if lower.contains("dns error") || lower.contains("failed to lookup address") {
            return ImageError::Unreachable {
                image,
                registry,
                reason: format!("cannot resolve its host name: {}", innermost(err)),
            };
        }
        if self.scheme() == "https" && err.is_connect() {
            // A TLS handshake that fails at once is usually a plain-HTTP registry answering
            // our ClientHello with an HTTP 400. Ask it in HTTP to be sure.
            if speaks_plain_http(&self.host_port()).await {
                return ImageError::HttpsRequired { image, registry };
            }
            return ImageError::Tls {
                image,
                registry,
                reason: text,
            };
        }
        ImageError::Unreachable {
            image,
            registry,
            reason: text,
        }
    }

    /// `HOST:PORT` with the scheme's default port filled in.
    fn host_port(&self) -> String {
        let registry = match self.registry() {
            "docker.io" => "registry-1.docker.io",
            other => other,
        };
        let has_port = match registry.rfind(']') {
            Some(end) => registry[end..].contains(':'),
            None => registry.contains(':'),
        };
        if has_port {
            registry.to_owned()
        } else if self.scheme() == "https" {
            format!("{registry}:443")
        } else {
            format!("{registry}:80")
        }
    }
}

/// Whether `host_port` answers a plain HTTP request with an HTTP response (within 3 s).
async fn speaks_plain_http(host_port: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(host_port).await.ok()?;
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0_u8; 5];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/")
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// An error and its sources, joined the way people read them.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = next.source();
    }
    parts.join(": ")
}

/// The deepest source: for DNS failures, the resolver's own words.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Whether an `io::Error` of `kind` is somewhere in the chain (hyper wraps it deeply).
fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == kind {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && has_io_kind(inner, kind)
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}
