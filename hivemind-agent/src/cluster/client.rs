//! Connections to other nodes' cluster endpoints.
//!
//! - [`ClusterClient`]: a node calling another node's services (Containers.Info, Logs, ...)
//!   over mutual TLS: it presents its own certificate and checks that the peer's is from the
//!   cluster CA *and* names the node it meant to reach.
//! - [`connect_pinned`]: a joiner (which has no certificate yet) reaching a node of the
//!   cluster: the node's certificate must chain to a CA whose SHA-256 is the one in the join
//!   token, or the connection is refused before anything is sent.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{nodes, pki};
use crate::store::{Store, StoreError};

/// How long connecting to another node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's certificate and key and the cluster CA, as PEM.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node {node} is not in the cluster")]
    UnknownNode { node: String },
    #[error("node {node} has no cluster endpoint")]
    NoEndpoint { node: String },
    #[error("this node is not in a cluster (no certificates)")]
    NotClustered,
    #[error("cannot connect to node {node} at {address}")]
    Connect {
        node: String,
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Channels to the other nodes' cluster endpoints, by node name. Cheap to clone; channels are
/// made on first use and reused (they reconnect by themselves).
#[derive(Clone, Debug)]
pub struct ClusterClient {
    store: Store,
    tls: Option<Arc<NodeTls>>,
    channels: Arc<Mutex<HashMap<String, (String, Channel)>>>,
}

impl ClusterClient {
    /// `tls` is `None` on a node outside a cluster: every connect then fails with
    /// [`ClientError::NotClustered`].
    pub fn new(store: Store, tls: Option<NodeTls>) -> Self {
        Self {
            store,
            tls: tls.map(Arc::new),
            channels: Arc::default(),
        }
    }

    /// A channel to `node`'s cluster endpoint (mutual TLS; the peer's certificate must name
    /// `node`). Use it with any generated client, e.g.
    /// `proto::containers_client::ContainersClient::new(channel)`.
    pub async fn connect(&self, node: &str) -> Result<Channel, ClientError> {
        let tls = self.tls.as_ref().ok_or(ClientError::NotClustered)?;
        let record =
            nodes::node(&self.store, node)
                .await?
                .ok_or_else(|| ClientError::UnknownNode {
                    node: node.to_owned(),
                })?;
        if record.cluster_address.is_empty() {
            return Err(ClientError::NoEndpoint {
                node: node.to_owned(),
            });
        }
        if let Ok(channels) = self.channels.lock()
            && let Some((address, channel)) = channels.get(node)
            && *address == record.cluster_address
        {
            return Ok(channel.clone());
        }
        let channel = connect_node(tls, node, &record.cluster_address).await?;
        if let Ok(mut channels) = self.channels.lock() {
            channels.insert(
                node.to_owned(),
                (record.cluster_address.clone(), channel.clone()),
            );
        }
        Ok(channel)
    }
}

/// Mutual TLS to `node` at `address`.
pub async fn connect_node(
    tls: &NodeTls,
    node: &str,
    address: &str,
) -> Result<Channel, ClientError> {
    let fail = |source| ClientError::Connect {
        node: node.to_owned(),
        address: address.to_owned(),
        source,
    };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .domain_name(node);
    Endpoint::from_shared(format!("https://{address}"))
        .map_err(fail)?
        .tls_config(config)
        .map_err(fail)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(fail)
}

/// Why a pinned connection failed, in words for the person running `hivemind join`.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("cannot reach {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error(
        "{address} is not a node of the cluster this token is for: its certificate is not from the CA the token names (a node of another cluster, or a wrong token)"
    )]
    OtherCa { address: String },
    #[error("{address} is not a Hivemind node: {reason}")]
    NotHivemind { address: String, reason: String },
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("cannot open a gRPC channel to {address}")]
    Channel {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// TLS to `address` (`HOST:PORT`) trusting only a CA whose certificate hashes to `ca_hash`
/// (the server sends it in its chain). The host name is not checked: the pinned CA is the
/// trust anchor, as with k3s's token. Returns a channel for one conversation (it does not
/// reconnect).
pub async fn connect_pinned(address: &str, ca_hash: &str) -> Result<Channel, PinnedError> {
    let unreachable = |reason: String| PinnedError::Unreachable {
        address: address.to_owned(),
        reason,
    };
    let tcp = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(address),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => return Err(unreachable(err.to_string())),
        Err(_) => return Err(unreachable("timed out after 10s".into())),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        ca_hash: ca_hash.to_ascii_lowercase(),
        provider: provider.clone(),
        mismatch: Mutex::new(false),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(PinnedError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    // The name only goes into SNI; the verifier does not check it.
    let name = ServerName::try_from(host.to_owned())
        .or_else(|_| ServerName::try_from("hivemind"))
        .map_err(|err| unreachable(format!("invalid host {host:?}: {err}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream =
        match tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                if verifier.mismatch.lock().is_ok_and(|m| *m) {
                    return Err(PinnedError::OtherCa {
                        address: address.to_owned(),
                    });
                }
                return Err(PinnedError::NotHivemind {
                    address: address.to_owned(),
                    reason: format!("the TLS handshake failed ({err})"),
                });
            }
            Err(_) => {
                return Err(PinnedError::NotHivemind {
                    address: address.to_owned(),
                    reason: "no TLS handshake within 10s".into(),
                });
            }
        };
    // Hand the established stream to tonic once; the URI is only used for HTTP/2 headers.
    let slot = Arc::new(Mutex::new(Some(TokioIo::new(stream))));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let slot = slot.clone();
        async move {
            slot.lock()
                .ok()
                .and_then(|mut s| s.take())
                .ok_or_else(|| std::io::Error::other("the join connection was closed"))
        }
    });
    Endpoint::from_static("http://hivemind-peer")
        .connect_with_connector(connector)
        .await
        .map_err(|source| PinnedError::Channel {
            address: address.to_owned(),
            source,
        })
}

/// `HOST` or `HOST:PORT` (IPv6 in brackets) with `default_port` when none is given.
pub fn with_port(host: &str, default_port: u16) -> String {
    let host = host.trim();
    if host.parse::<SocketAddr>().is_ok() {
        return host.to_owned();
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{host}]:{default_port}");
    }
    match host.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() && !host.ends_with(']') => host.to_owned(),
        _ => format!("{host}:{default_port}"),
    }
}

/// Trusts a server whose chain holds a CA with the pinned hash and whose certificate that CA
/// signed.
#[derive(Debug)]
struct PinnedCa {
    ca_hash: String,
    provider: Arc<CryptoProvider>,
    /// Set when the server's chain holds no CA with the pinned hash.
    mismatch: Mutex<bool>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| pki::cert_hash(cert) == self.ca_hash)
        else {
            if let Ok(mut mismatch) = self.mismatch.lock() {
                *mismatch = true;
            }
            return Err(rustls::Error::General(
                "the server's certificate is not from the pinned cluster CA".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|err| rustls::Error::General(err.to_string()))?;
        // The chain is what is checked; a name mismatch below is expected and accepted.
        let name = ServerName::try_from("hivemind")
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        match verifier.verify_server_cert(end_entity, &[], &name, ocsp_response, now) {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(err) => {
                if let Ok(mut mismatch) = self.mismatch.lock() {
                    *mismatch = true;
                }
                Err(err)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_default_only_when_missing() {
        assert_eq!(with_port("192.0.2.1", 7443), "192.0.2.1:7443");
        assert_eq!(with_port("192.0.2.1:9000", 7443), "192.0.2.1:9000");
        assert_eq!(with_port("node-1", 7443), "node-1:7443");
        assert_eq!(with_port("node-1:80", 7443), "node-1:80");
        assert_eq!(with_port("2001:db8::1", 7443), "[2001:db8::1]:7443");
        assert_eq!(with_port("[2001:db8::1]:1", 7443), "[2001:db8::1]:1");
    }
}
