//! Signing keys on the host.
//!
//! A secret key file holds one line: 64 hex characters (the ed25519 seed).
//! It must be mode 0600; anything else is refused, as is a file of the wrong
//! length. The public key file holds 64 hex characters of the public key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use cairn_format::digest::Digest;
use cairn_format::envelope::{key_id, KeyId, PublicKey};

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The secret key file is readable by others.
    #[error("secret key file {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The content is not 64 hex characters.
    #[error("key file {0} must hold exactly 64 hex characters")]
    Format(PathBuf),
    /// No randomness.
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

/// Make a new random key.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a secret key (mode 0600, created new) and its public key beside it
/// (`<path>.pub`). Refuses to overwrite an existing secret key.
pub fn save(key: &SigningKey, path: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    writeln!(f, "{}", hex(&key.to_bytes())).map_err(io)?;
    let pub_path = public_path(path);
    fs::write(&pub_path, format!("{}\n", hex(&key.verifying_key().to_bytes())))
        .map_err(|source| KeyError::Io { path: pub_path, source })
}

/// Where the public key of a secret key file is written.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let d = Digest::from_hex(text.trim()).ok_or_else(|| KeyError::Format(path.to_owned()))?;
    Ok(d.0)
}

/// Load a secret key, checking its mode.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode { path: path.to_owned(), mode });
    }
    Ok(SigningKey::from_bytes(&read_hex32(path)?))
}

/// Load a public key file.
pub fn load_public(path: &Path) -> Result<PublicKey, KeyError> {
    read_hex32(path)
}

/// Load the key at `path`, generating it first if it does not exist.
/// Returns the key and whether it was generated now.
pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    if path.exists() {
        return Ok((load(path)?, false));
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
    }
    let key = generate()?;
    save(&key, path)?;
    Ok((key, true))
}

/// The id a device logs for this key.
pub fn id_of(key: &SigningKey) -> KeyId {
    key_id(&key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_mode_check() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("k");
        let (k, fresh) = load_or_generate(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(fresh);
        let (again, fresh) = load_or_generate(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!fresh);
        assert_eq!(k.to_bytes(), again.to_bytes());
        assert_eq!(load_public(&public_path(&path)).ok(), Some(k.verifying_key().to_bytes()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(load(&path), Err(KeyError::Mode { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&path, "abcd\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(load(&path), Err(KeyError::Format(_))));
        assert!(save(&k, &path).is_err(), "must not overwrite a secret key");
    }
}
