//! Sealing credentials at rest: authenticated encryption (XChaCha20-Poly1305) under a 32-byte key
//! the operator controls (`NIMBUS_SECRET_KEY`, or a generated key file readable only by its owner).
//!
//! A sealed value is `version (1 byte) || nonce (24 bytes) || ciphertext and tag`. The associated
//! data names the row a value belongs to (`provider:<id>`, `forge:<tenant>`), so a sealed value
//! copied into another row does not open. This module never logs or prints key material.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::Error;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
pub(crate) const KEY_LEN: usize = 32;

/// The key that seals credentials. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; KEY_LEN]);

/// Why a seal key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is not base64 of exactly 32 bytes.
    #[error("invalid secret key from {origin}: {reason}")]
    Invalid { origin: String, reason: String },
    /// The key file may be read or changed by users other than its owner.
    #[error(
        "key file {path} is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl SealKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> SealKey {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        SealKey(key.into())
    }

    /// Parses base64 (standard or URL-safe, padded or not) of exactly 32 bytes, e.g. the output
    /// of `openssl rand -base64 32`.
    pub fn from_base64(text: &str) -> Result<SealKey, KeyError> {
        Self::parse(text, "the given text")
    }

    /// The key as standard base64, the form `NIMBUS_SECRET_KEY` and the key file hold.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Where a server's key comes from: `env_value` (the content of `NIMBUS_SECRET_KEY`) wins;
    /// else `key_file` is read; else a new key is generated into `key_file` with mode 0600.
    ///
    /// Two processes starting at once agree on one key: the file appears atomically, complete,
    /// and whoever loses the race reads the winner's key.
    pub fn load_or_create(env_value: Option<&str>, key_file: &Path) -> Result<SealKey, KeyError> {
        if let Some(text) = env_value {
            return Self::parse(text, "NIMBUS_SECRET_KEY");
        }
        match Self::read_key_file(key_file) {
            Ok(key) => return Ok(key),
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let key = SealKey::generate();
        match key.write_new_key_file(key_file) {
            Ok(()) => Ok(key),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Self::read_key_file(key_file),
            Err(source) => Err(KeyError::Io {
                path: key_file.to_owned(),
                source,
            }),
        }
    }

    fn parse(text: &str, origin: &str) -> Result<SealKey, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid(format!(
                "it is empty; expected base64 of {KEY_LEN} bytes (e.g. `openssl rand -base64 32`)"
            )));
        }
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or_else(|| {
                invalid(format!(
                    "it is not base64; expected base64 of {KEY_LEN} bytes (e.g. `openssl rand -base64 32`)"
                ))
            })?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "it decodes to {} bytes; expected exactly {KEY_LEN} (e.g. `openssl rand -base64 32`)",
                bytes.len()
            ))
        })?;
        Ok(SealKey(key))
    }

    fn read_key_file(path: &Path) -> Result<SealKey, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let metadata = fs::metadata(path).map_err(io_err)?;
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(io_err)?;
        Self::parse(&text, &format!("key file {}", path.display()))
    }

    /// Writes the key to a private temporary file next to `path`, then links it into place,
    /// which fails with `AlreadyExists` instead of replacing a key someone else just wrote.
    fn write_new_key_file(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "secret-key".to_owned());
        let tmp = dir.join(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4()));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(format!("{}\n", self.to_base64()).as_bytes())?;
            file.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

/// Seals and opens credentials under one [`SealKey`].
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: SealKey) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
        }
    }

    /// Encrypts `plaintext` bound to `aad` (which row it belongs to) under a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption only fails for inputs beyond 2^38 bytes, far above any credential.
            .expect("XChaCha20-Poly1305 encryption of a credential");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts a value from [`Sealer::seal`]; `Error::Unseal` for a wrong key, a different
    /// `aad`, or data that was altered or is not a sealed value at all.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(Error::Unseal);
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| Error::Unseal)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trip() {
        let sealer = Sealer::new(SealKey::generate());
        let sealed = sealer.seal(b"hunter2", b"provider:1");
        assert_eq!(sealed[0], VERSION);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(sealer.open(&sealed, b"provider:1").unwrap(), b"hunter2");
        // Fresh nonce each time.
        assert_ne!(sealed, sealer.seal(b"hunter2", b"provider:1"));
        let empty = sealer.seal(b"", b"x");
        assert_eq!(sealer.open(&empty, b"x").unwrap(), b"");
    }

    #[test]
    fn wrong_key_does_not_open() {
        let sealed = Sealer::new(SealKey::generate()).seal(b"secret", b"provider:1");
        let other = Sealer::new(SealKey::generate());
        assert!(matches!(
            other.open(&sealed, b"provider:1"),
            Err(Error::Unseal)
        ));
    }

    #[test]
    fn swapped_aad_does_not_open() {
        let sealer = Sealer::new(SealKey::generate());
        let sealed = sealer.seal(b"secret", b"provider:1");
        assert!(matches!(
            sealer.open(&sealed, b"provider:2"),
            Err(Error::Unseal)
        ));
        assert!(matches!(
            sealer.open(&sealed, b"forge:1"),
            Err(Error::Unseal)
        ));
    }

    #[test]
    fn tampered_or_garbage_does_not_open() {
        let sealer = Sealer::new(SealKey::generate());
        let mut sealed = sealer.seal(b"secret", b"a");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(sealer.open(&sealed, b"a"), Err(Error::Unseal)));
        for garbage in [&b""[..], b"\x01", b"plain text credentials", &[2u8; 64]] {
            assert!(matches!(sealer.open(garbage, b"a"), Err(Error::Unseal)));
        }
    }

    #[test]
    fn debug_is_redacted() {
        let key = SealKey::generate();
        let text = key.to_base64();
        assert_eq!(format!("{key:?}"), "SealKey([redacted])");
        let sealer = Sealer::new(key);
        assert_eq!(format!("{sealer:?}"), "Sealer([redacted])");
        assert!(!format!("{sealer:?}").contains(&text));
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/nimbus/secret-key");
        let key = SealKey::load_or_create(None, &path).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file {} has mode {mode:o}", path.display());
        let again = SealKey::load_or_create(None, &path).unwrap();
        assert_eq!(key, again, "a second start must reuse the key file");
        // No temporary files are left behind.
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("secret-key")]);
    }

    #[test]
    fn concurrent_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-key");
        let keys: Vec<SealKey> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| SealKey::load_or_create(None, &path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn env_value_wins_over_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-key");
        let file_key = SealKey::load_or_create(None, &path).unwrap();
        let env_key = SealKey::generate();
        let loaded = SealKey::load_or_create(Some(&env_key.to_base64()), &path).unwrap();
        assert_eq!(loaded, env_key);
        assert_ne!(loaded, file_key);
    }

    #[test]
    fn bad_env_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-key");
        let short = STANDARD.encode([7u8; 16]);
        for (value, expect) in [
            ("", "empty"),
            ("not base64 at all!", "not base64"),
            (short.as_str(), "decodes to 16 bytes; expected exactly 32"),
        ] {
            let err = SealKey::load_or_create(Some(value), &path).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("NIMBUS_SECRET_KEY") && message.contains(expect),
                "value {value:?}: got {message:?}, expected it to mention {expect:?}"
            );
        }
        assert!(!path.exists(), "a bad env key must not create a key file");
        // URL-safe and unpadded forms are accepted.
        let key = SealKey::generate();
        let unpadded = URL_SAFE_NO_PAD.encode(key.0);
        assert_eq!(SealKey::from_base64(&unpadded).unwrap(), key);
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-key");
        SealKey::load_or_create(None, &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SealKey::load_or_create(None, &path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_key_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-key");
        fs::write(&path, "short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = SealKey::load_or_create(None, &path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
