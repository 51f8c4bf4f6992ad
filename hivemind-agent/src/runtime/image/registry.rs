//! Talking to a registry with `oci-client`: resolve a reference to a manifest, fetch blobs,
//! and turn what goes wrong into an [`ImageError`] a person can act on.
//!
//! HTTPS, trusting the system roots plus the `--registry-ca` of that registry, except for
//! registries named with `--insecure-registry` and, as Docker does, registries on
//! `localhost` or a loopback address without a `--registry-ca`, which may speak plain HTTP:
//! HTTP when they answer it, else HTTPS.
//! Credentials come from [`Credentials`]; anonymous when there are none.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Once},
    time::Duration,
};

use oci_client::{
    Client, Reference, RegistryOperation,
    client::{
        Certificate, CertificateEncoding, ClientConfig, ClientProtocol, LayerDescriptor,
        SizedStream,
    },
    errors::{DigestError, OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    ImageError,
    credentials::{Credential, Credentials},
    manifest::Descriptor,
    reference::ImageRef,
};

/// Registry settings the agent is configured with.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `HOST:PORT` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// `--registry-ca HOST=FILE`: PEM certificates trusted for that registry (beside the
    /// system roots).
    pub ca: BTreeMap<String, Vec<u8>>,
    pub credentials: Credentials,
    /// Bound on establishing a connection (DNS, TCP, TLS).
    pub connect_timeout: Duration,
    /// Bound on waiting for the next bytes of an answer; also bounds each whole manifest request.
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca: BTreeMap::new(),
            credentials: Credentials::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl RegistryOptions {
    /// Plain HTTP: named with `--insecure-registry`, or on loopback without a CA of its own
    /// and answering plain HTTP (Docker's rule for local registries).
    async fn is_plain_http(&self, registry: &str) -> bool {
        if self.insecure.iter().any(|r| r == registry) {
            return true;
        }
        is_loopback(registry)
            && !self.ca.contains_key(registry)
            && speaks_plain_http(&host_port(registry, false)).await
    }
}

/// `localhost[:port]`, `127.x.y.z[:port]`, `[::1][:port]`.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(host, _)| host),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Makes the registry sessions of one agent.
#[derive(Clone)]
pub struct RegistryClient {
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
        Self {
            options: Arc::new(options),
        }
    }

    /// An oci-client for `registry`: its scheme and CA. One per session, so tokens and
    /// credentials never outlive a login or logout.
    fn client_for(&self, registry: &str, plain_http: bool) -> Client {
        let options = &self.options;
        let protocol = if plain_http {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = options
            .ca
            .get(registry)
            .map(|pem| {
                vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                }]
            })
            .unwrap_or_default();
        Client::new(ClientConfig {
            protocol,
            extra_root_certificates,
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            // We pick the platform ourselves and fetch raw documents.
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }

    /// The registry end of one pull of `image`, with the credentials the agent has for its
    /// registry.
    pub async fn session<'a>(&'a self, image: &'a ImageRef) -> Result<Session<'a>, ImageError> {
        let credential = self
            .options
            .credentials
            .lookup(image.registry())
            .await
            .map_err(|reason| ImageError::Credentials {
                image: image.name(),
                registry: image.registry().to_owned(),
                reason,
            })?;
        Ok(self.session_as(image, credential).await)
    }

    async fn session_as<'a>(
        &'a self,
        image: &'a ImageRef,
        credential: Option<Credential>,
    ) -> Session<'a> {
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
        let plain_http = self.options.is_plain_http(image.registry()).await;
        Session {
            client: self.client_for(image.registry(), plain_http),
            plain_http,
            options: &self.options,
            image,
            reference,
            auth: credential
                .as_ref()
                .map_or(RegistryAuth::Anonymous, Credential::auth),
            credential,
        }
    }

    /// Whether `registry` accepts `credential` (`hivemind registry login`): a token from its
    /// token service (which refuses wrong credentials), or, for a registry that asks for HTTP
    /// basic, a request that needs them (a repository it does not have answers 404 to
    /// accepted credentials, 401 to refused ones).
    pub async fn check_login(
        &self,
        registry: &str,
        credential: Credential,
    ) -> Result<(), ImageError> {
        // Any repository will do: the question is who we are, not what we may pull.
        let image = ImageRef::parse(&format!("{registry}/hivemind/login-check"))?;
        let session = self.session_as(&image, Some(credential)).await;
        let call = session
            .client
            .auth(&session.reference, &session.auth, RegistryOperation::Pull);
        match session.bounded(call).await? {
            // The registry's token service took the credentials.
            Ok(Some(_token)) => return Ok(()),
            // HTTP basic (oci-client does not try it here), or no auth at all: ask for
            // something that needs it.
            Ok(None) => {}
            Err(err) => return Err(session.classify(err, "the token service").await),
        }
        let call = session
            .client
            .list_tags(&session.reference, &session.auth, Some(1), None);
        match session.bounded(call).await? {
            Ok(_) => Ok(()),
            Err(err) => match session.classify(err, "the registry API").await {
                // Known to it, or unknown: either way the credentials were accepted.
                ImageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
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
    client: Client,
    plain_http: bool,
    options: &'a RegistryOptions,
    image: &'a ImageRef,
    reference: Reference,
    auth: RegistryAuth,
    credential: Option<Credential>,
}

impl Session<'_> {
    fn registry(&self) -> &str {
        self.image.registry()
    }

    fn scheme(&self) -> &'static str {
        if self.plain_http { "http" } else { "https" }
    }

    /// Checks that the registry answers and gets a token if it wants one.
    pub async fn login(&self) -> Result<(), ImageError> {
        let call = self
            .client
            .auth(&self.reference, &self.auth, RegistryOperation::Pull);
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
            &self.auth,
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
                    self.unauthorized()
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
            | OciDistributionError::AuthenticationFailure(_) => self.unauthorized(),
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

    /// The registry said no: to these credentials, or to anonymous access.
    fn unauthorized(&self) -> ImageError {
        let image = self.image.name();
        let registry = self.registry().to_owned();
        match &self.credential {
            Some(credential) => ImageError::Refused {
                image,
                registry,
                who: credential.who(),
            },
            None => ImageError::Unauthorized { image, registry },
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

    fn host_port(&self) -> String {
        host_port(self.registry(), self.scheme() == "https")
    }
}

/// `HOST:PORT` of `registry`, with the scheme's default port filled in.
fn host_port(registry: &str, https: bool) -> String {
    let registry = match registry {
        "docker.io" => "registry-1.docker.io",
        other => other,
    };
    let has_port = match registry.rfind(']') {
        Some(end) => registry[end..].contains(':'),
        None => registry.contains(':'),
    };
    if has_port {
        registry.to_owned()
    } else if https {
        format!("{registry}:443")
    } else {
        format!("{registry}:80")
    }
}

/// Whether `host_port` answers a plain HTTP request as a plain HTTP server (within 3 s).
async fn speaks_plain_http(host_port: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(host_port).await.ok()?;
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // "HTTP/1.x NNN": an HTTPS server answers a plain request too, with a 400.
        let mut head = [0_u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/") && &head[9..12] != b"400")
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
