//! The admin token and the store's seal key: created on first start, kept 0600 in the config
//! directory, never logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use nimbus_store::SealKey;
use nimbus_types::Secret;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub const SEAL_KEY_FILE: &str = "secret.key";

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A new random token with a recognisable prefix (so secret scanners can find leaked ones).
pub fn new_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

pub fn load_or_create_admin_token(config_dir: &Path) -> anyhow::Result<Secret> {
    let path = config_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let token = new_token("nimbus_admin_");
            file.write_all(token.expose().as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the admin token");
            Ok(token)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "{} is readable by other users (mode {:o}); run: chmod 600 {}",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let token = token.trim();
            if token.len() < 16 {
                anyhow::bail!(
                    "{} holds no usable token; delete it to get a new one",
                    path.display()
                );
            }
            Ok(Secret::new(token))
        }
        Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
}

pub fn load_seal_key(config_dir: &Path) -> anyhow::Result<SealKey> {
    let env = std::env::var("NIMBUS_SECRET_KEY").ok();
    SealKey::load_or_create(env.as_deref(), &config_dir.join(SEAL_KEY_FILE))
        .context("cannot load the secret key that seals credentials")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_admin_token(dir.path()).unwrap();
        let second = load_or_create_admin_token(dir.path()).unwrap();
        assert_eq!(first, second);
        assert!(first.expose().starts_with("nimbus_admin_"));
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        std::fs::set_permissions(
            dir.path().join(ADMIN_TOKEN_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = load_or_create_admin_token(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
