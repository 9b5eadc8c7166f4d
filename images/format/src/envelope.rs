//! The signature envelope around a manifest.
//!
//! Layout (all integers little endian):
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CAIRNMF6" (2: the manifest gained `compatible`;
//!                                 3: alloc lists and strings, a typed
//!                                 device source; 4: dm-verity per layer;
//!                                 5: the update policy, critical containers;
//!                                 6: volumes and container mounts,
//!                                 control permissions, log size)
//! 8       8     key id: first 8 bytes of sha256(public key)
//! 16      4     payload length N (at most MAX_PAYLOAD)
//! 20      N     payload: the postcard-encoded Manifest
//! 20+N    64    ed25519 signature over bytes 0 .. 20+N
//! ```
//!
//! The signature covers the header too, so the magic separates this use of
//! the key from any other, and the length cannot be altered. Bytes after the
//! signature are ignored: an envelope sits at the start of a partition. Bytes
//! after the manifest *inside* the signed payload are refused: the payload
//! is exactly one manifest.
//!
//! The same layout seals an update bundle's table of contents under the
//! magic `CAIRNTC1` ([`crate::bundle`], [`Envelope::parse_as`],
//! [`seal_as`]): a manifest signature is never a valid table of contents
//! signature, nor the other way round.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::digest::Digest;
use crate::manifest::{Manifest, ValidationError};

/// Envelope magic.
pub const MAGIC: [u8; 8] = *b"CAIRNMF6";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 20;
/// Signature length.
pub const SIGNATURE_LEN: usize = 64;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Short identifier of a public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A raw ed25519 public key.
pub type PublicKey = [u8; 32];

/// The id of a public key.
pub fn key_id(key: &PublicKey) -> KeyId {
    let d = Digest::of(key);
    let mut id = [0u8; 8];
    id.copy_from_slice(d.0.get(..8).unwrap_or(&[0; 8]));
    KeyId(id)
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than a header.
    TooShort(usize),
    /// The magic is wrong (not a manifest, or erased).
    BadMagic,
    /// The declared payload is larger than allowed.
    PayloadTooLarge(usize),
    /// The input ends before the payload and signature do.
    Truncated {
        /// Bytes the header promises.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Signed by a key the device does not trust.
    UnknownKey(KeyId),
    /// The signature does not verify with the trusted key.
    BadSignature(KeyId),
    /// A trusted key is not a valid curve point (a build error).
    BadTrustedKey(KeyId),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort(n) => write!(f, "envelope too short ({n} bytes)"),
            Self::BadMagic => write!(f, "not a manifest envelope (bad magic)"),
            Self::PayloadTooLarge(n) => write!(f, "payload of {n} bytes exceeds {MAX_PAYLOAD}"),
            Self::Truncated { need, have } => {
                write!(f, "envelope truncated: need {need} bytes, have {have}")
            }
            Self::UnknownKey(id) => write!(f, "signed by untrusted key {id}"),
            Self::BadSignature(id) => write!(f, "signature by key {id} does not verify"),
            Self::BadTrustedKey(id) => write!(f, "built-in key {id} is not a valid ed25519 key"),
        }
    }
}

/// A parsed but not yet verified envelope.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Who claims to have signed it.
    pub key_id: KeyId,
    /// The payload.
    pub payload: &'a [u8],
    signed: &'a [u8],
    signature: [u8; SIGNATURE_LEN],
}

impl<'a> Envelope<'a> {
    /// Split `bytes` into its fields, checking lengths only.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        Self::parse_as(bytes, &MAGIC, MAX_PAYLOAD)
    }

    /// [`Envelope::parse`] for another use of the same layout: `magic`
    /// instead of the manifest's (so a signature made for one use is never
    /// taken for another), and payloads of at most `max_payload` bytes
    /// (`PayloadTooLarge` above it).
    pub fn parse_as(bytes: &'a [u8], magic: &[u8; 8], max_payload: usize) -> Result<Self, EnvelopeError> {
        let header = bytes.get(..HEADER_LEN).ok_or(EnvelopeError::TooShort(bytes.len()))?;
        let (found, rest) = header.split_at(8);
        if found != magic {
            return Err(EnvelopeError::BadMagic);
        }
        let (id, len) = rest.split_at(8);
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(id);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > max_payload {
            return Err(EnvelopeError::PayloadTooLarge(len));
        }
        let need = HEADER_LEN + len + SIGNATURE_LEN;
        if bytes.len() < need {
            return Err(EnvelopeError::Truncated { need, have: bytes.len() });
        }
        let signed = bytes.get(..HEADER_LEN + len).ok_or(EnvelopeError::TooShort(bytes.len()))?;
        let payload = signed.get(HEADER_LEN..).ok_or(EnvelopeError::TooShort(bytes.len()))?;
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(bytes.get(HEADER_LEN + len..need).ok_or(EnvelopeError::TooShort(bytes.len()))?);
        Ok(Self { key_id: KeyId(key_id), payload, signed, signature })
    }

    /// Verify against the trusted keys; returns the payload when it verifies.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<&'a [u8], EnvelopeError> {
        let key = trusted.iter().find(|k| key_id(k) == self.key_id).ok_or(EnvelopeError::UnknownKey(self.key_id))?;
        let vk = VerifyingKey::from_bytes(key).map_err(|_| EnvelopeError::BadTrustedKey(self.key_id))?;
        let sig = Signature::from_bytes(&self.signature);
        vk.verify_strict(self.signed, &sig).map_err(|_| EnvelopeError::BadSignature(self.key_id))?;
        Ok(self.payload)
    }
}

/// Why a manifest could not be loaded from an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The envelope or its signature.
    Envelope(EnvelopeError),
    /// The signed payload is not a manifest this init can decode (the
    /// size rules are checked after decoding: [`OpenError::Invalid`]).
    Decode,
    /// The manifest decodes but breaks a rule.
    Invalid(ValidationError),
    /// The signed payload holds this many bytes after the manifest.
    TrailingBytes(usize),
    /// The manifest is for another product.
    Incompatible {
        /// The manifest's `compatible`.
        manifest: String,
        /// The device's (from its initramfs' trust data).
        device: String,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Envelope(e) => e.fmt(f),
            Self::Decode => write!(f, "signed payload is not a manifest this init can decode"),
            Self::Invalid(e) => write!(f, "manifest invalid: {e}"),
            Self::TrailingBytes(n) => write!(f, "signed payload holds {n} bytes after the manifest"),
            Self::Incompatible { manifest, device } => {
                write!(f, "manifest is for {manifest:?}, this device is {device:?}")
            }
        }
    }
}

/// Verify, decode and validate a manifest envelope.
pub fn open_manifest(bytes: &[u8], trusted: &[PublicKey]) -> Result<Manifest, OpenError> {
    let env = Envelope::parse(bytes).map_err(OpenError::Envelope)?;
    let payload = env.verify(trusted).map_err(OpenError::Envelope)?;
    let (m, rest): (Manifest, _) = postcard::take_from_bytes(payload).map_err(|_| OpenError::Decode)?;
    if !rest.is_empty() {
        return Err(OpenError::TrailingBytes(rest.len()));
    }
    m.validate().map_err(OpenError::Invalid)?;
    Ok(m)
}

/// Accept a manifest only for this device's product: its `compatible`
/// must equal `device` exactly; an empty `device` accepts none.
pub fn check_compatible(m: &Manifest, device: &str) -> Result<(), OpenError> {
    if device.is_empty() || m.compatible.as_str() != device {
        return Err(OpenError::Incompatible { manifest: m.compatible.clone(), device: device.to_string() });
    }
    Ok(())
}

/// Build a signed envelope (host side; the device never signs).
pub fn seal(payload: &[u8], key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, EnvelopeError> {
    seal_as(payload, key, &MAGIC, MAX_PAYLOAD)
}

/// [`seal`] under another magic and payload bound (see [`Envelope::parse_as`]).
pub fn seal_as(
    payload: &[u8],
    key: &ed25519_dalek::SigningKey,
    magic: &[u8; 8],
    max_payload: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    use ed25519_dalek::Signer;
    if payload.len() > max_payload {
        return Err(EnvelopeError::PayloadTooLarge(payload.len()));
    }
    let public = key.verifying_key().to_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SIGNATURE_LEN);
    out.extend_from_slice(magic);
    out.extend_from_slice(&key_id(&public).0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let sig = key.sign(&out);
    out.extend_from_slice(&sig.to_bytes());
    Ok(out)
}

/// Encode, validate and seal a manifest (host side).
pub fn seal_manifest(m: &Manifest, key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, String> {
    m.validate().map_err(|e| e.to_string())?;
    let payload = postcard::to_allocvec(m).map_err(|e| e.to_string())?;
    seal(&payload, key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{container, manifest};
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sealed() -> (std::vec::Vec<u8>, PublicKey) {
        let k = key(1);
        let m = manifest(&[container("app", &[])]);
        (seal_manifest(&m, &k).expect("seal"), k.verifying_key().to_bytes())
    }

    #[test]
    fn a_sealed_manifest_opens_with_its_key_and_trailing_padding() {
        let (mut env, pk) = sealed();
        env.extend_from_slice(&[0u8; 4096]);
        let m = open_manifest(&env, &[pk]);
        assert_eq!(m.map(|m| m.containers.len()), Ok(1));
    }

    #[test]
    fn every_single_flipped_byte_is_rejected() {
        let (env, pk) = sealed();
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(open_manifest(&bad, &[pk]).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn an_untrusted_key_is_named() {
        let (env, _) = sealed();
        let other = key(2).verifying_key().to_bytes();
        let trusted_id = key_id(&key(1).verifying_key().to_bytes());
        assert_eq!(open_manifest(&env, &[other]), Err(OpenError::Envelope(EnvelopeError::UnknownKey(trusted_id))));
        assert_eq!(open_manifest(&env, &[]), Err(OpenError::Envelope(EnvelopeError::UnknownKey(trusted_id))));
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let (env, pk) = sealed();
        for len in 0..env.len() {
            assert!(open_manifest(&env[..len], &[pk]).is_err());
        }
        assert_eq!(open_manifest(&[0u8; 100], &[pk]), Err(OpenError::Envelope(EnvelopeError::BadMagic)));
        let mut huge = env.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open_manifest(&huge, &[pk]), Err(OpenError::Envelope(EnvelopeError::PayloadTooLarge(_)))));
    }

    #[test]
    fn trailing_bytes_inside_the_signed_payload_are_refused() {
        let k = key(1);
        let m = manifest(&[container("app", &[])]);
        let mut payload = postcard::to_allocvec(&m).expect("encode");
        let pk = k.verifying_key().to_bytes();
        assert_eq!(open_manifest(&seal(&payload, &k).expect("seal"), &[pk]), Ok(m));
        payload.extend_from_slice(b"xyz");
        let env = seal(&payload, &k).expect("seal");
        let refused = open_manifest(&env, &[pk]);
        assert_eq!(refused, Err(OpenError::TrailingBytes(3)));
        assert_eq!(
            refused.clone().expect_err("refused").to_string(),
            "signed payload holds 3 bytes after the manifest"
        );
    }

    #[test]
    fn a_manifest_for_another_product_is_refused_naming_both() {
        let m = manifest(&[container("app", &[])]);
        assert_eq!(check_compatible(&m, "cairn-test"), Ok(()));
        let e = check_compatible(&m, "router-v2").expect_err("refused").to_string();
        assert_eq!(e, "manifest is for \"cairn-test\", this device is \"router-v2\"");
        let e = check_compatible(&m, "").expect_err("refused").to_string();
        assert_eq!(e, "manifest is for \"cairn-test\", this device is \"\"");
        assert!(check_compatible(&m, "cairn-tes").is_err() && check_compatible(&m, "cairn-test2").is_err());
    }

    #[test]
    fn a_validly_signed_invalid_manifest_is_refused() {
        let k = key(1);
        let mut m = manifest(&[container("app", &["ghost"])]);
        let payload = postcard::to_allocvec(&m).expect("encode");
        let env = seal(&payload, &k).expect("seal");
        assert!(matches!(open_manifest(&env, &[k.verifying_key().to_bytes()]), Err(OpenError::Invalid(_))));
        m.containers.clear();
        let env = seal(b"not postcard at all", &k).expect("seal");
        assert_eq!(open_manifest(&env, &[k.verifying_key().to_bytes()]), Err(OpenError::Decode));
    }
}
