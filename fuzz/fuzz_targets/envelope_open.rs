//! The signed manifest envelope as `cairn-init` reads it from a
//! `cairn-manifest-{a,b}` partition: `envelope::open_manifest` (parse, ed25519
//! check against the trusted keys, postcard decode, validation).
//!
//! Two stages per input:
//!
//! 1. The raw bytes, trusting only the fixed test key. Checks that parsing
//!    agrees with the documented layout, that nothing opens without a trusted
//!    key, and that anything that does open is valid and ignores trailing
//!    bytes.
//! 2. The same payload re-signed with the test key (the payload of the input
//!    if it parses as an envelope, else the whole input), so the fuzzer also
//!    reaches the decoder and validator *behind* a signature that verifies.
//!    A correctly sealed envelope must never fail an envelope check, and the
//!    result must match decoding the payload directly.
//!
//! Never panics is checked throughout; `Display` of every error is exercised.

#![no_main]

use std::sync::LazyLock;

use cairn_fuzz::{display_len, other_public_key, seal_into, test_public_key, test_signing_key};
use cairn_format::envelope::{
    key_id, open_manifest, Envelope, EnvelopeError, OpenError, PublicKey, HEADER_LEN, MAGIC, MAX_PAYLOAD, SIGNATURE_LEN,
};
use cairn_format::Manifest;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SigningKey> = LazyLock::new(test_signing_key);
static PK: LazyLock<PublicKey> = LazyLock::new(test_public_key);
static OTHER: LazyLock<PublicKey> = LazyLock::new(other_public_key);

fuzz_target!(|data: &[u8]| {
    let pk = *PK;

    // Stage 1: the bytes as found on the partition.
    let parsed = Envelope::parse(data);
    match &parsed {
        Ok(env) => check_parse(data, env),
        Err(e) => {
            display_len(e);
        }
    }
    let opened = open_manifest(data, &[pk]);
    if let Err(e) = &opened {
        display_len(e);
    }
    match (&parsed, &opened) {
        // A parse failure is reported as such, whatever the keys.
        (Err(pe), r) => assert_eq!(r, &Err(OpenError::Envelope(pe.clone()))),
        (Ok(env), Err(OpenError::Envelope(EnvelopeError::UnknownKey(id)))) => {
            assert_eq!(*id, env.key_id);
            assert_ne!(env.key_id, key_id(&pk), "trusted key reported unknown");
        }
        (Ok(env), Err(OpenError::Envelope(e))) => {
            assert_eq!(env.key_id, key_id(&pk), "signature checked against a key with another id");
            assert_eq!(e, &EnvelopeError::BadSignature(env.key_id), "parse passed, then {e:?}");
        }
        (Ok(env), Err(_) | Ok(_)) => {
            // Past the signature check: only the trusted key can get here.
            assert_eq!(env.key_id, key_id(&pk));
        }
    }
    // With no trusted key nothing opens, and a parsed envelope is an unknown key.
    match (&parsed, open_manifest(data, &[])) {
        (_, Ok(_)) => panic!("opened with no trusted keys"),
        (Ok(env), r) => assert_eq!(r, Err(OpenError::Envelope(EnvelopeError::UnknownKey(env.key_id)))),
        (Err(_), _) => {}
    }
    if let Ok(m) = &opened {
        // Rare: only if the fuzzer kept a valid signature intact.
        assert_eq!(m.validate(), Ok(()), "open_manifest returned an invalid manifest");
        let mut padded = data.to_vec();
        padded.extend_from_slice(&[0xa5; 64]);
        assert_eq!(open_manifest(&padded, &[pk]).as_ref(), Ok(m), "trailing bytes changed the result");
        // Untrusted keys in the list do not change anything.
        assert_eq!(open_manifest(data, &[*OTHER, pk]).as_ref(), Ok(m));
    }

    // Stage 2: the payload behind a signature that verifies.
    let payload = match &parsed {
        Ok(env) => env.payload,
        Err(_) => data.get(..MAX_PAYLOAD).unwrap_or(data),
    };
    let mut sealed = Vec::new();
    seal_into(payload, &KEY, &mut sealed);
    let resealed = open_manifest(&sealed, &[pk]);
    let direct = postcard::take_from_bytes::<Manifest>(payload);
    match (&resealed, &direct) {
        (Err(OpenError::Envelope(e)), _) => panic!("a correctly sealed envelope was refused: {e:?}"),
        (Err(OpenError::Decode), Err(_)) => {}
        (Err(OpenError::Decode), Ok(_)) => panic!("payload decodes directly but not through the envelope"),
        (_, Err(_)) => panic!("payload does not decode directly but opened: {resealed:?}"),
        (Err(OpenError::TrailingBytes(n)), Ok((_, rest))) => assert_eq!(*n, rest.len()),
        (Err(OpenError::Incompatible { .. }), _) => panic!("open_manifest does not check compatibility"),
        (Err(OpenError::Invalid(e)), Ok((m, _))) => {
            display_len(e);
            assert_eq!(m.validate().as_ref(), Err(e));
        }
        (Ok(m), Ok((d, rest))) => {
            assert!(rest.is_empty(), "opened with {} bytes after the manifest", rest.len());
            assert_eq!(m, d);
            assert_eq!(m.validate(), Ok(()));
        }
    }
    if let Ok(m) = &opened {
        // Stage 1 and stage 2 saw the same signed bytes.
        assert_eq!(resealed.as_ref(), Ok(m));
    }
});

/// `Envelope::parse` succeeded: its fields must be the documented slices.
fn check_parse(data: &[u8], env: &Envelope<'_>) {
    let len = u32::from_le_bytes([data[16], data[17], data[18], data[19]]) as usize;
    assert_eq!(&data[..8], &MAGIC);
    assert_eq!(&data[8..16], &env.key_id.0);
    assert!(len <= MAX_PAYLOAD);
    assert_eq!(env.payload.len(), len);
    assert!(data.len() >= HEADER_LEN + len + SIGNATURE_LEN);
    assert_eq!(env.payload, &data[HEADER_LEN..HEADER_LEN + len]);
}
