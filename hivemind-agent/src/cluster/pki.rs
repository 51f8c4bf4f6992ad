//! The cluster's certificates and the join token.
//!
//! `--cluster-init` creates a CA (ECDSA P-256). Every node gets one certificate from it, valid
//! for both ends of TLS (server and client auth), naming the node (DNS), its underlay address,
//! `localhost` and 127.0.0.1. That one certificate serves the node's etcd member (client and
//! peer traffic, both with client-certificate authentication), its etcd client, and the
//! node-to-node gRPC endpoint (mutual TLS).
//!
//! A joining node makes its key pair itself and sends only the public key; the node it joins
//! through signs a certificate for it. The join token (`HM10<ca-hash>::<secret>`, after k3s's
//! `K10<hash>::...`) carries the SHA-256 of the CA certificate, which the joiner pins before it
//! sends the secret, and the secret, which authenticates the joiner.

use std::{fmt, net::IpAddr};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SignatureAlgorithm,
};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {what}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("no certificate in {what}")]
    NoPem { what: &'static str },
    #[error("the system's random generator failed")]
    Random,
    #[error("the public key is not an uncompressed P-256 point ({len} bytes)")]
    PublicKey { len: usize },
    #[error(
        "not a Hivemind join token (expected HM10<ca-hash>::<secret>; get one with `hivemind cluster token` on a node of the cluster)"
    )]
    TokenFormat,
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// How long certificates are valid. There is no rotation yet; see docs/cluster.md.
const CA_YEARS: i32 = 20;
const NODE_YEARS: i32 = 10;

/// `n` random bytes from the OS (through rustls's ring provider), hex-encoded.
pub fn random_hex(n: usize) -> Result<String, PkiError> {
    let mut bytes = vec![0u8; n];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(hex::encode(bytes))
}

/// SHA-256 of a DER certificate, hex: what the join token pins.
pub fn cert_hash(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER bytes of the first certificate in `pem`.
pub fn first_cert_der(pem: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    pem_blocks(pem, "CERTIFICATE")
        .into_iter()
        .next()
        .ok_or(PkiError::NoPem { what })
}

/// The base64 bodies of every `-----BEGIN <label>-----` block, decoded.
fn pem_blocks(pem: &str, label: &str) -> Vec<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(&begin) {
        let body_start = start + begin.len();
        let Some(len) = rest[body_start..].find(&end) else {
            break;
        };
        let body: String = rest[body_start..body_start + len]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Some(der) = base64_decode(&body) {
            blocks.push(der);
        }
        rest = &rest[body_start + len + end.len()..];
    }
    blocks
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in bytes {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// Valid from yesterday (a peer whose clock is a little behind still accepts a fresh
/// certificate) for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike as _;
    let ymd = |date: chrono::NaiveDate| {
        (
            date.year(),
            u8::try_from(date.month()).unwrap_or(1),
            // Day 28 exists in every month (and in every year's February).
            u8::try_from(date.day().min(28)).unwrap_or(28),
        )
    };
    let today = chrono::Utc::now().date_naive();
    let (y, m, d) = ymd(today - chrono::Days::new(1));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(today);
    params.not_after = rcgen::date_time_ymd(y + years, m, d);
}

/// The cluster CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

/// The CA's fixed parameters. Signing needs only its name, key usages and key-id method,
/// so a stored CA is rebuilt from these and its key (no certificate parser needed).
fn ca_params(cluster_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Hivemind");
    name.push(DnType::CommonName, format!("hivemind-ca-{cluster_id}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    /// A new CA for the cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen("make a key"))?;
        let mut params = ca_params(cluster_id);
        set_validity(&mut params, CA_YEARS);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen("sign the CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(ca_params(cluster_id), key),
        })
    }

    /// The CA as stored: its certificate and key (PEM).
    pub fn load(cluster_id: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen("read the CA key"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der: first_cert_der(cert_pem, "the CA certificate")?,
            issuer: Issuer::new(ca_params(cluster_id), key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 of the CA certificate (DER), hex.
    pub fn hash(&self) -> String {
        cert_hash(&self.cert_der)
    }

    /// A certificate for node `name` at `ips`, for `public_key`: server and client auth.
    pub fn issue_node(
        &self,
        name: &str,
        ips: &[IpAddr],
        public_key: &NodePublicKey,
    ) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Hivemind");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let mut sans = vec![
            SanType::DnsName(name.try_into().map_err(rcgen("use the node name"))?),
            SanType::DnsName("localhost".try_into().map_err(rcgen("name localhost"))?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        ];
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        sans.dedup();
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_YEARS);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(rcgen("sign the node certificate"))?;
        Ok(cert.pem())
    }
}

/// A node's key pair, made where it is used.
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen("make a key"))?,
        })
    }

    /// The public key to send to the CA's holder: the raw (uncompressed) P-256 point.
    pub fn public_key(&self) -> NodePublicKey {
        NodePublicKey {
            raw: self.key.public_key_raw().to_vec(),
        }
    }

    /// PKCS#8 PEM, for the key file.
    pub fn pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// A node's public key as it travels in a join request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePublicKey {
    raw: Vec<u8>,
}

impl NodePublicKey {
    /// The raw uncompressed P-256 point (65 bytes, starting with 0x04).
    pub fn from_raw(raw: Vec<u8>) -> Result<Self, PkiError> {
        if raw.len() == 65 && raw[0] == 4 {
            Ok(Self { raw })
        } else {
            Err(PkiError::PublicKey { len: raw.len() })
        }
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

impl PublicKeyData for NodePublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// The join token: the CA's hash (pinned by the joiner) and the secret (checked by the node
/// joined through).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

const TOKEN_PREFIX: &str = "HM10";

impl JoinToken {
    /// A new token for the CA with `ca_hash`: 32 random bytes of secret.
    pub fn generate(ca_hash: &str) -> Result<Self, PkiError> {
        Ok(Self {
            ca_hash: ca_hash.to_owned(),
            secret: random_hex(32)?,
        })
    }

    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(PkiError::TokenFormat)?;
        let (hash, secret) = rest.split_once("::").ok_or(PkiError::TokenFormat)?;
        let hex_of =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(hash, 64) || secret.len() < 16 || secret.contains(char::is_whitespace) {
            return Err(PkiError::TokenFormat);
        }
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }

    /// Whether `secret` is this token's secret, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let (a, b) = (
            Sha256::digest(self.secret.as_bytes()),
            Sha256::digest(secret.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}::{}", self.ca_hash, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let token = JoinToken::generate(&"ab".repeat(32)).expect("token");
        let text = token.to_string();
        assert!(text.starts_with("HM10abab"), "{text}");
        let parsed = JoinToken::parse(&format!("  {text}\n")).expect("parse");
        assert_eq!(parsed, token);
        assert!(parsed.secret_matches(&token.secret));
        assert!(!parsed.secret_matches("nope"));
        for bad in [
            "",
            "K10abc::server:xyz",
            "HM10zz::0123456789abcdef0123",
            &format!("HM10{}", "a".repeat(64)),
            &format!("HM10{}::short", "a".repeat(64)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn pem_and_base64() {
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64_decode("a$"), None);
        let pem = "junk\n-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\naGk=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_blocks(pem, "CERTIFICATE"),
            vec![b"hello".to_vec(), b"hi".to_vec()]
        );
    }

    /// A node certificate from a reloaded CA verifies against the original CA certificate
    /// (the issuer name and key identifier are rebuilt identically).
    #[test]
    fn reloaded_ca_issues_certificates_that_chain_to_it() {
        use rustls::{
            client::danger::ServerCertVerifier as _,
            pki_types::{CertificateDer, ServerName, UnixTime},
        };

        let ca = Ca::generate("c0ffee").expect("ca");
        let reloaded = Ca::load("c0ffee", ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(reloaded.hash(), ca.hash());
        let node = NodeKey::generate().expect("key");
        let public = NodePublicKey::from_raw(node.public_key().raw().to_vec()).expect("pk");
        let pem = reloaded
            .issue_node("n2", &["192.0.2.2".parse().expect("ip")], &public)
            .expect("issue");
        let leaf = first_cert_der(&pem, "leaf").expect("der");

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(
                first_cert_der(ca.cert_pem(), "ca").expect("ca der"),
            ))
            .expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
        for name in ["n2", "192.0.2.2", "127.0.0.1", "localhost"] {
            verifier
                .verify_server_cert(
                    &CertificateDer::from(leaf.clone()),
                    &[],
                    &ServerName::try_from(name).expect("name"),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        assert!(
            verifier
                .verify_server_cert(
                    &CertificateDer::from(leaf),
                    &[],
                    &ServerName::try_from("n3").expect("name"),
                    &[],
                    UnixTime::now(),
                )
                .is_err(),
            "another node's name must not verify"
        );

        let other = Ca::generate("c0ffee").expect("other ca");
        assert_ne!(other.hash(), ca.hash(), "every CA is unique");
    }
}
