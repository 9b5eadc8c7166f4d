//! Shared pieces of the cairn fuzz targets: the fixed test key and an
//! envelope sealer that only uses `cairn-format`, as cairn-init does.
//!
//! The seal here is an independent copy of `cairn_format::envelope::seal`,
//! so the targets do not test the encoder with itself. `cargo run --bin
//! seeds --features seeds` checks the two agree byte for byte.

#![forbid(unsafe_code)]

use cairn_format::envelope::{key_id, PublicKey, HEADER_LEN, MAGIC, MAX_PAYLOAD, SIGNATURE_LEN};
use ed25519_dalek::{Signer, SigningKey};

/// Seed of the fixed test signing key. Never a production key.
pub const TEST_KEY_SEED: [u8; 32] = *b"cairn-fuzz-test-key-not-for-use!";

/// Seed of a second key the device does not trust.
pub const OTHER_KEY_SEED: [u8; 32] = *b"cairn-fuzz-untrusted-key-0000000";

/// The fixed test signing key.
pub fn test_signing_key() -> SigningKey {
    SigningKey::from_bytes(&TEST_KEY_SEED)
}

/// Its public key: the one key the targets trust.
pub fn test_public_key() -> PublicKey {
    test_signing_key().verifying_key().to_bytes()
}

/// The public key of [`OTHER_KEY_SEED`].
pub fn other_public_key() -> PublicKey {
    SigningKey::from_bytes(&OTHER_KEY_SEED).verifying_key().to_bytes()
}

/// Seal `payload` (at most `MAX_PAYLOAD` bytes are used) into `out` with
/// `key`, the way the host tool does.
pub fn seal_into(payload: &[u8], key: &SigningKey, out: &mut Vec<u8>) {
    seal_into_as(payload, key, &MAGIC, MAX_PAYLOAD, out)
}

/// [`seal_into`] under another magic and payload bound (an update
/// bundle's table of contents: `bundle::TOC_MAGIC`, `bundle::MAX_TOC_PAYLOAD`).
pub fn seal_into_as(payload: &[u8], key: &SigningKey, magic: &[u8; 8], max: usize, out: &mut Vec<u8>) {
    let payload = payload.get(..max).unwrap_or(payload);
    out.clear();
    out.reserve(HEADER_LEN + payload.len() + SIGNATURE_LEN);
    out.extend_from_slice(magic);
    out.extend_from_slice(&key_id(&key.verifying_key().to_bytes()).0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let sig = key.sign(out);
    out.extend_from_slice(&sig.to_bytes());
}

/// Format `v` with `Display` (the device logs these for untrusted input, so
/// formatting must not panic either) and return the length.
pub fn display_len(v: &dyn core::fmt::Display) -> usize {
    use core::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "{v}");
    s.len()
}
