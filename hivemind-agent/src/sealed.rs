//! Values sealed at rest — secrets and registry passwords — so that a copy of the redb file or
//! an etcd snapshot holds no plaintext.
//!
//! AES-256-GCM from `ring` (the crypto the agent's TLS already uses): a fresh random 96-bit
//! nonce per value, and the store key the value is written under as associated data, so a
//! sealed value moved to another key does not open. A sealed value is
//! `hm1:` + base64url(nonce ‖ ciphertext ‖ tag).
//!
//! The key is 32 random bytes in `<data dir>/seal.key` (mode 0600), made on first start. A
//! cluster shares one key: the first node's, handed to each joining node over the join's
//! CA-pinned TLS channel.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine as _;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
const PREFIX: &str = "hm1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the sealing key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the sealing key {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the sealing key {path} is not {KEY_LEN} bytes (it was cut short or replaced)")]
    BadKey { path: PathBuf },
    #[error("the system's random number generator failed")]
    Random,
    #[error(
        "the sealed value of {context} does not open with this node's key (another cluster's value, or a damaged one)"
    )]
    Open { context: String },
}

/// The key values are sealed with. Cheap to clone.
#[derive(Clone)]
pub struct SealKey {
    key: Arc<LessSafeKey>,
    bytes: Arc<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key in `path`, made (32 random bytes, mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        match fs::read(path) {
            Ok(bytes) => Self::from_bytes(&bytes).ok_or_else(|| SealError::BadKey {
                path: path.to_owned(),
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut bytes = [0; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| SealError::Random)?;
                let key = Self::from_bytes(&bytes).ok_or(SealError::Random)?;
                key.save(path)?;
                Ok(key)
            }
            Err(source) => Err(SealError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// A key from its bytes (e.g. handed over at join); `None` if they are not a key.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; KEY_LEN] = bytes.try_into().ok()?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).ok()?;
        Some(Self {
            key: Arc::new(LessSafeKey::new(key)),
            bytes: Arc::new(bytes),
        })
    }

    /// The key's bytes, to hand to a joining node.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Writes the key to `path` with mode 0600 (replacing what is there, atomically).
    pub fn save(&self, path: &Path) -> Result<(), SealError> {
        let write_err = |source| SealError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(self.bytes.as_slice())
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(write_err)?;
        fs::rename(&tmp, path).map_err(write_err)
    }

    /// Seals `plaintext`, bound to `context` (the store key it is written under).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SealError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// Opens what [`seal`](Self::seal) made for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let fail = || SealError::Open {
            context: context.to_owned(),
        };
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b64| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b64)
                    .ok()
            })
            .ok_or_else(fail)?;
        if raw.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| fail())?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_key_and_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seal.key");
        let key = SealKey::load_or_create(&path).expect("key");
        let mode = fs::metadata(&path).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            SealKey::load_or_create(&path).expect("again").bytes(),
            key.bytes(),
            "the same key on the next start"
        );

        let sealed = key.seal("/hivemind/secrets/db", b"hunter2").expect("seal");
        assert!(sealed.starts_with("hm1:"));
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            key.seal("/hivemind/secrets/db", b"hunter2").expect("seal"),
            "a fresh nonce each time"
        );
        assert_eq!(
            key.open("/hivemind/secrets/db", &sealed).expect("open"),
            b"hunter2"
        );
        assert!(key.open("/hivemind/secrets/other", &sealed).is_err());
        let other = SealKey::from_bytes(&[7; KEY_LEN]).expect("key");
        assert!(other.open("/hivemind/secrets/db", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open("/hivemind/secrets/db", &tampered).is_err());
        assert!(key.open("/hivemind/secrets/db", "plain").is_err());

        fs::write(&path, b"short").expect("write");
        assert!(matches!(
            SealKey::load_or_create(&path),
            Err(SealError::BadKey { .. })
        ));
    }
}
