//! Signing keys on the host, and manifest envelopes signed apart from the
//! build.
//!
//! A secret key file is either a PKCS#8 PEM ed25519 key (`-----BEGIN
//! PRIVATE KEY-----`, what `openssl genpkey -algorithm ed25519` writes and
//! HSM and KMS tools import and export) or, as earlier cairn versions
//! wrote, one line of 64 hex characters (the ed25519 seed). The format is
//! found from the content. It must be mode 0600 either way; anything else is
//! refused, as is content of neither form. A public key file holds 64 hex
//! characters (one line of `/etc/cairn/trusted-keys` in the initramfs) or
//! an SPKI PEM (`-----BEGIN PUBLIC KEY-----`, `openssl pkey -pubout`).
//!
//! An *unsigned* envelope has the envelope's layout with an all-zero key id
//! and signature; [`signed_bytes`] and [`attach`] turn its payload into a
//! signed envelope byte for byte what [`cairn_format::envelope::seal`]
//! writes, whoever computes the signature.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use cairn_format::digest::Digest;
use cairn_format::envelope::{key_id, KeyId, PublicKey, HEADER_LEN, MAGIC, MAX_PAYLOAD, SIGNATURE_LEN};

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
    /// The content is neither 64 hex characters nor a PEM key.
    #[error("key file {0} must hold exactly 64 hex characters or a PEM ed25519 key")]
    Format(PathBuf),
    /// A PEM file that is not an ed25519 key of the kind wanted.
    #[error("key file {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No randomness.
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

/// How a secret key file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// PKCS#8 PEM (v1: the seed only, as OpenSSL writes it).
    Pem,
    /// 64 hex characters and a newline (earlier cairn versions).
    Hex,
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

/// Write a secret key as 64 hex characters (mode 0600, created new) and its
/// public key beside it (`<path>.pub`). Refuses to overwrite an existing
/// secret key.
pub fn save(key: &SigningKey, path: &Path) -> Result<(), KeyError> {
    save_as(key, path, SecretFormat::Hex)
}

/// [`save`] in the given format; the `.pub` file is hex either way (what
/// `cairn image assemble --trust` reads).
pub fn save_as(key: &SigningKey, path: &Path, format: SecretFormat) -> Result<(), KeyError> {
    write_secret(key, path, format)?;
    let pub_path = public_path(path);
    fs::write(&pub_path, public_hex_line(&key.verifying_key().to_bytes()))
        .map_err(|source| KeyError::Io { path: pub_path, source })
}

/// Write only the secret key file (mode 0600, created new: never over an
/// existing file).
pub fn write_secret(key: &SigningKey, path: &Path, format: SecretFormat) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let text = match format {
        SecretFormat::Hex => format!("{}\n", hex(&key.to_bytes())),
        SecretFormat::Pem => secret_pem(key).map_err(|reason| KeyError::Pem { path: path.to_owned(), reason })?,
    };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// A secret key as PKCS#8 v1 PEM (the 32-byte seed; no public key, which
/// OpenSSL 1.1 cannot read).
pub fn secret_pem(key: &SigningKey) -> Result<String, String> {
    let bytes = KeypairBytes { secret_key: key.to_bytes(), public_key: None };
    bytes.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string()).map_err(|e| e.to_string())
}

/// A public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_pem(public: &PublicKey) -> Result<String, String> {
    let key = VerifyingKey::from_bytes(public).map_err(|e| e.to_string())?;
    key.to_public_key_pem(LineEnding::LF).map_err(|e| e.to_string())
}

/// A public key as a `.pub` file line.
pub fn public_hex_line(public: &PublicKey) -> String {
    format!("{}\n", hex(public))
}

/// Where the public key of a secret key file is written.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })
}

fn hex32(path: &Path, text: &str) -> Result<[u8; 32], KeyError> {
    let d = Digest::from_hex(text.trim()).ok_or_else(|| KeyError::Format(path.to_owned()))?;
    Ok(d.0)
}

/// The PEM label of `text` (`PRIVATE KEY`, `PUBLIC KEY`, ...) if it is PEM.
fn pem_label(text: &str) -> Option<&str> {
    text.trim_start().strip_prefix("-----BEGIN ")?.split_once("-----").map(|(label, _)| label)
}

/// Whether `path` holds a public key (an SPKI PEM, or hex in a `.pub`
/// file) rather than a secret one.
pub fn is_public_file(path: &Path) -> Result<bool, KeyError> {
    let text = read_text(path)?;
    Ok(match pem_label(&text) {
        Some(label) => label == "PUBLIC KEY",
        None => path.extension().is_some_and(|e| e == "pub"),
    })
}

/// Load a secret key (PKCS#8 PEM or 64 hex characters), checking its mode.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode { path: path.to_owned(), mode });
    }
    let text = read_text(path)?;
    let pem_err = |reason: String| KeyError::Pem { path: path.to_owned(), reason };
    match pem_label(&text) {
        Some("PRIVATE KEY") => SigningKey::from_pkcs8_pem(&text)
            .map_err(|e| pem_err(format!("not a PKCS#8 ed25519 private key ({e}); cairn signs with ed25519 only"))),
        Some(label) => Err(pem_err(format!(
            "a PEM {label}, not a secret key: give an unencrypted PKCS#8 ed25519 key (BEGIN PRIVATE KEY)"
        ))),
        None => Ok(SigningKey::from_bytes(&hex32(path, &text)?)),
    }
}

/// Load a public key file: 64 hex characters or an SPKI PEM.
pub fn load_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read_text(path)?;
    match pem_label(&text) {
        Some("PUBLIC KEY") => VerifyingKey::from_public_key_pem(&text)
            .map(|k| k.to_bytes())
            .map_err(|e| KeyError::Pem { path: path.to_owned(), reason: format!("not an ed25519 public key ({e})") }),
        Some(label) => Err(KeyError::Pem {
            path: path.to_owned(),
            reason: format!("a PEM {label}, not a public key (BEGIN PUBLIC KEY)"),
        }),
        None => hex32(path, &text),
    }
}

/// The public key of a key file of any kind: a public key file, or a
/// secret key file (its mode checked).
pub fn load_any_public(path: &Path) -> Result<PublicKey, KeyError> {
    if is_public_file(path)? {
        load_public(path)
    } else {
        Ok(load(path)?.verifying_key().to_bytes())
    }
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

/// Why an envelope could not be made or signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The payload is larger than an envelope holds.
    #[error("payload of {0} bytes exceeds the envelope's {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// A signature that is not 64 bytes (raw, hex or base64).
    #[error("the signer returned {0}, not an ed25519 signature (64 bytes raw, 128 hex digits or base64)")]
    Malformed(String),
    /// A signature that does not verify with the public key.
    #[error(
        "the signature does not verify with key {0}: the signer used another key, or signed something else \
         (ed25519 signs the bytes themselves: no digest, no ed25519ph)"
    )]
    BadSignature(KeyId),
    /// The public key is not a valid ed25519 point.
    #[error("public key {0} is not a valid ed25519 key")]
    BadKey(KeyId),
}

fn header(payload_len: usize, id: [u8; 8]) -> Result<Vec<u8>, SignError> {
    if payload_len > MAX_PAYLOAD {
        return Err(SignError::TooLarge(payload_len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload_len + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&id);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    Ok(out)
}

/// An unsigned envelope: the envelope's layout, key id and signature zero.
pub fn unsigned_envelope(payload: &[u8]) -> Result<Vec<u8>, SignError> {
    let mut out = header(payload.len(), [0; 8])?;
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0; SIGNATURE_LEN]);
    Ok(out)
}

/// Whether `envelope` (a parsed one's bytes) is unsigned: key id and
/// signature all zero.
pub fn is_unsigned(envelope: &[u8]) -> bool {
    let Some(len) = envelope.get(16..20).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        return false;
    };
    let id_zero = envelope.get(8..16).is_some_and(|id| id.iter().all(|b| *b == 0));
    let sig = envelope.get(HEADER_LEN + len..HEADER_LEN + len + SIGNATURE_LEN);
    id_zero && sig.is_some_and(|s| s.iter().all(|b| *b == 0))
}

/// The bytes a signer signs for `payload` under `public`: the envelope's
/// header (magic, key id, length) and the payload.
pub fn signed_bytes(payload: &[u8], public: &PublicKey) -> Result<Vec<u8>, SignError> {
    let mut out = header(payload.len(), key_id(public).0)?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// The envelope: [`signed_bytes`] and the signature, which must verify with
/// `public`.
pub fn attach(signed: &[u8], signature: &[u8; 64], public: &PublicKey) -> Result<Vec<u8>, SignError> {
    let id = key_id(public);
    let key = VerifyingKey::from_bytes(public).map_err(|_| SignError::BadKey(id))?;
    key.verify_strict(signed, &Signature::from_bytes(signature)).map_err(|_| SignError::BadSignature(id))?;
    let mut out = signed.to_vec();
    out.extend_from_slice(signature);
    Ok(out)
}

/// A signature as a signing command prints it: 64 raw bytes, 128 hex
/// digits or base64 (standard or URL alphabet, padded or not); whitespace
/// around it is ignored.
pub fn parse_signature(out: &[u8]) -> Result<[u8; 64], SignError> {
    if let Ok(raw) = <[u8; 64]>::try_from(out) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(out).map(str::trim).unwrap_or("");
    let decoded = if text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..64).map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2).unwrap_or(""), 16).ok()).collect()
    } else {
        base64(text)
    };
    decoded.and_then(|v: Vec<u8>| <[u8; 64]>::try_from(v).ok()).ok_or_else(|| {
        SignError::Malformed(if text.is_empty() && !out.is_empty() {
            format!("{} bytes of binary", out.len())
        } else if out.is_empty() {
            "nothing".into()
        } else {
            format!("{:?}", text.chars().take(40).collect::<String>())
        })
    })
}

/// Decode base64 (either alphabet, padding optional).
fn base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (!text.is_empty()).then_some(out)
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

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// RFC 8410's example key (section 10.3) and its public key.
    const RFC8410_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";
    const RFC8410_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
        -----END PUBLIC KEY-----\n";

    #[test]
    fn pkcs8_pem_keys_are_read_and_written() {
        let dir = ok(tempfile::tempdir());
        let rfc = dir.path().join("rfc.pem");
        fs::write(&rfc, RFC8410_PEM).unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&rfc, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
        let k = ok(load(&rfc));
        assert_eq!(hex(&k.to_bytes()), "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842");
        // The secret key written back is the RFC's bytes (PKCS#8 v1).
        assert_eq!(ok(secret_pem(&k)), RFC8410_PEM);
        // Its public key, as SPKI PEM, is the RFC's.
        let public = k.verifying_key().to_bytes();
        assert_eq!(ok(public_pem(&public)), RFC8410_PUBLIC_PEM);
        let pub_pem = dir.path().join("rfc.pub.pem");
        fs::write(&pub_pem, RFC8410_PUBLIC_PEM).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok(load_public(&pub_pem)), public);
        assert!(ok(is_public_file(&pub_pem)));
        assert_eq!(ok(load_any_public(&pub_pem)), public);
        assert_eq!(ok(load_any_public(&rfc)), public);
        // A public key is not a secret key, nor the reverse.
        fs::set_permissions(&pub_pem, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(load(&pub_pem), Err(KeyError::Pem { .. })));
        assert!(matches!(load_public(&rfc), Err(KeyError::Pem { .. })));

        // Written as PEM: 0600, new, and read back.
        let path = dir.path().join("new");
        let key = ok(generate());
        ok(save_as(&key, &path, SecretFormat::Pem));
        assert_eq!(fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o600));
        assert!(fs::read_to_string(&path).unwrap_or_default().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(ok(load(&path)).to_bytes(), key.to_bytes());
        assert_eq!(ok(load_public(&public_path(&path))), key.verifying_key().to_bytes());
        assert!(save_as(&key, &path, SecretFormat::Pem).is_err(), "must not overwrite a secret key");
        // Mode checked for PEM too.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(load(&path), Err(KeyError::Mode { mode: 0o640, .. })));
        // An ed448 or RSA key: refused with the reason.
        let ed448 = dir.path().join("ed448.pem");
        fs::write(&ed448, "-----BEGIN PRIVATE KEY-----\nMEcCAQAwBQYDK2VxBDsEOROoy4WScjPhX/hWm8kTyj+kkVZfpsBNlu/r7UIYXrLx\noWMGGjp4GU2sTUxwvuCEfvezJaZE49RllQ==\n-----END PRIVATE KEY-----\n").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&ed448, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
        let e = load(&ed448).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("ed25519"), "{e}");
    }

    #[test]
    fn envelopes_signed_apart_are_what_seal_writes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let payload = b"a manifest's bytes";
        let sealed = ok(cairn_format::envelope::seal(payload, &key));
        let unsigned = ok(unsigned_envelope(payload));
        assert!(is_unsigned(&unsigned) && !is_unsigned(&sealed));
        let parsed = ok(cairn_format::envelope::Envelope::parse(&unsigned).map_err(|e| e.to_string()));
        assert_eq!(parsed.payload, payload);
        let to_sign = ok(signed_bytes(parsed.payload, &public));
        use ed25519_dalek::Signer;
        let sig = key.sign(&to_sign).to_bytes();
        assert_eq!(ok(attach(&to_sign, &sig, &public)), sealed);
        // Another key's signature, or a flipped bit: refused.
        let other = SigningKey::from_bytes(&[8; 32]).sign(&to_sign).to_bytes();
        assert!(matches!(attach(&to_sign, &other, &public), Err(SignError::BadSignature(_))));
        let mut flipped = sig;
        flipped[5] ^= 1;
        assert!(matches!(attach(&to_sign, &flipped, &public), Err(SignError::BadSignature(_))));
        assert!(matches!(unsigned_envelope(&vec![0; MAX_PAYLOAD + 1]), Err(SignError::TooLarge(_))));
    }

    #[test]
    fn signatures_are_read_raw_hex_or_base64() {
        let sig: [u8; 64] = core::array::from_fn(|i| (i * 37 + 250) as u8);
        assert_eq!(ok(parse_signature(&sig)), sig);
        let hexed = format!("  {}\n", hex(&sig));
        assert_eq!(ok(parse_signature(hexed.as_bytes())), sig);
        assert_eq!(ok(parse_signature(hexed.to_uppercase().as_bytes())), sig);
        // base64 of the same bytes (as Python's base64.b64encode writes it).
        let b64 = "+h9EaY6z2P0iR2yRttsAJUpvlLneAyhNcpe84QYrUHWav+QJLlN4ncLnDDFWe6DF6g80WX6jyO0SN1yBpsvwFQ==\n";
        assert_eq!(ok(parse_signature(b64.as_bytes())), sig);
        let url = b64.trim().trim_end_matches('=').replace('+', "-").replace('/', "_");
        assert_eq!(ok(parse_signature(url.as_bytes())), sig);
        for bad in [&b""[..], b"abc", &sig[..63], b"not a signature at all, not at all, no"] {
            assert!(matches!(parse_signature(bad), Err(SignError::Malformed(_))), "{bad:?}");
        }
    }
}
