//! An update bundle's table of contents as the installer reads it from the
//! head of a bundle (a file on a USB stick, a second disk, or the `toc` of a
//! server): `bundle::open_toc` (parse, ed25519 check, postcard decode, every
//! bound), then `check_manifest` against a manifest.
//!
//! Two stages per input:
//!
//! 1. The raw bytes, trusting only the fixed test key: parse errors are the
//!    same with and without the signature check, nothing opens without a
//!    trusted key, and what opens is what `read_toc` decodes.
//! 2. The payload re-signed with the test key under the TOC magic, so
//!    mutations reach the decoder and the bound checks behind a signature
//!    that verifies. A TOC that opens is checked against the documented
//!    rules independently: parts aligned, after the TOC, in order without
//!    overlap, inside `total_size`, at most MAX_LAYERS layers, no digest
//!    twice. It re-seals and opens to the same value.
//!
//! Never panics is checked throughout; `Display` of every error is exercised.

#![no_main]

use std::sync::LazyLock;

use cairn_format::bundle::{
    self, check_manifest, open_toc, read_toc, BundleError, Toc, ALIGN, MAX_TOC_PAYLOAD, TOC_MAGIC,
};
use cairn_format::envelope::{EnvelopeError, PublicKey, HEADER_LEN, SIGNATURE_LEN};
use cairn_format::manifest::{self, Manifest};
use cairn_fuzz::{display_len, other_public_key, seal_into_as, test_public_key, test_signing_key};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SigningKey> = LazyLock::new(test_signing_key);
static PK: LazyLock<PublicKey> = LazyLock::new(test_public_key);
static OTHER: LazyLock<PublicKey> = LazyLock::new(other_public_key);

fuzz_target!(|data: &[u8]| {
    let pk = *PK;

    // Stage 1: the bytes as found at the start of a bundle.
    let unverified = read_toc(data);
    let opened = open_toc(data, &[pk]);
    for e in [unverified.as_ref().err(), opened.as_ref().err()].into_iter().flatten() {
        display_len(e);
    }
    match (&unverified, &opened) {
        (_, Ok(t)) => {
            // Only the trusted key opens; what opens decodes alike unverified.
            assert_eq!(unverified.as_ref().map(|u| &u.toc), Ok(t));
            assert_eq!(open_toc(data, &[*OTHER, pk]).as_ref(), Ok(t));
            check_rules(t, unverified.as_ref().map(|u| u.len).unwrap_or(0));
        }
        (_, Err(BundleError::Signature(_))) => {}
        (Ok(_), Err(o)) => panic!("decodes unverified, then {o:?} after the signature check"),
        // Past the signature, the same bytes fail the same way.
        (Err(e), Err(o)) => assert_eq!(e, o),
    }
    match open_toc(data, &[]) {
        Ok(_) => panic!("opened with no trusted keys"),
        Err(BundleError::Signature(EnvelopeError::UnknownKey(_))) => {}
        Err(e) => assert!(is_parse_error(&e), "no keys, yet {e:?}"),
    }

    // Stage 2: the payload behind a signature that verifies.
    let payload = match data.get(..HEADER_LEN) {
        Some(h) if h.get(..8) == Some(&TOC_MAGIC[..]) => {
            let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
            data.get(HEADER_LEN..HEADER_LEN.saturating_add(len)).unwrap_or(&data[HEADER_LEN..])
        }
        _ => data,
    };
    let payload = payload.get(..MAX_TOC_PAYLOAD).unwrap_or(payload);
    let mut sealed = Vec::new();
    seal_into_as(payload, &KEY, &TOC_MAGIC, MAX_TOC_PAYLOAD, &mut sealed);
    let len = HEADER_LEN + payload.len() + SIGNATURE_LEN;
    let direct = postcard::take_from_bytes::<Toc>(payload);
    match (open_toc(&sealed, &[pk]), direct) {
        (Err(e @ (BundleError::Signature(_) | BundleError::NotABundle | BundleError::TocTruncated { .. })), _) => {
            panic!("a correctly sealed TOC was refused: {e:?}")
        }
        (Err(BundleError::Decode), Err(_)) => {}
        (Err(BundleError::Decode), Ok(_)) => panic!("payload decodes directly but not through the envelope"),
        (r, Err(_)) => panic!("payload does not decode directly, yet {r:?}"),
        (Err(BundleError::TrailingBytes(n)), Ok((_, rest))) => assert_eq!(n, rest.len()),
        (Err(e), Ok((t, rest))) => {
            display_len(&e);
            assert!(rest.is_empty());
            assert_eq!(t.validate(len as u64), Err(e));
        }
        (Ok(t), Ok((d, rest))) => {
            assert!(rest.is_empty());
            assert_eq!(t, d);
            check_rules(&t, len);
            // Sealed again by the host sealer (a canonical encoding is
            // never longer), it opens to the same value.
            let again = bundle::seal_toc(&t, &KEY).expect("an opened TOC re-seals");
            assert!(again.len() <= len);
            assert_eq!(open_toc(&again, &[pk]).as_ref(), Ok(&t));
            // The file length check and the manifest check never panic.
            assert!(t.check_len(t.total_size).is_ok());
            if t.total_size > 0 {
                assert!(t.check_len(t.total_size - 1).is_err());
            }
            for m in [manifest_like(&t), Manifest { layers: Vec::new(), ..manifest_like(&t) }] {
                match check_manifest(&t, &m) {
                    Ok(missing) => {
                        assert!(missing.iter().all(|i| *i < m.layers.len()));
                        for l in &t.layers {
                            assert!(m.layers.iter().any(|ml| ml.digest == l.digest));
                        }
                    }
                    Err(e) => {
                        display_len(&e);
                    }
                }
            }
        }
    }
});

fn is_parse_error(e: &BundleError) -> bool {
    matches!(
        e,
        BundleError::TooShort(_) | BundleError::NotABundle | BundleError::TocTooLarge(_) | BundleError::TocTruncated { .. }
    )
}

/// The rules an opened TOC must meet, checked without the library's code.
fn check_rules(t: &Toc, toc_len: usize) {
    assert!(t.layers.len() <= manifest::MAX_LAYERS);
    assert!(manifest::is_valid_compatible(&t.compatible));
    let mut parts = vec![t.manifest];
    parts.extend(t.layers.iter().map(|l| l.part));
    parts.extend(t.boot_image);
    let mut end = toc_len as u128;
    for p in &parts {
        assert!(p.size > 0);
        assert_eq!(p.offset % ALIGN, 0);
        assert!(p.offset as u128 >= end, "part at {} before {end}", p.offset);
        end = p.offset as u128 + p.size as u128;
        assert!(end <= t.total_size as u128);
    }
    for (i, l) in t.layers.iter().enumerate() {
        assert!(t.layers[..i].iter().all(|o| o.digest != l.digest));
    }
}

/// A manifest naming the TOC's product, version and layers (with made-up
/// verity geometry, so sizes mostly disagree).
fn manifest_like(t: &Toc) -> Manifest {
    use cairn_format::manifest::{Layer, LayerCheck};
    use cairn_format::verity::Verity;
    Manifest {
        appliance: "fuzz".into(),
        version: t.version,
        compatible: t.compatible.clone(),
        layer_check: LayerCheck::default(),
        layers: t
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| Layer {
                name: format!("l{i}"),
                digest: l.digest,
                size: l.part.size,
                verity: Verity {
                    data_blocks: l.part.size / ALIGN,
                    hash_offset: l.part.size / ALIGN * ALIGN,
                    salt: [0; 32],
                    root_hash: l.digest,
                },
            })
            .collect(),
        containers: Vec::new(),
        update: cairn_format::manifest::UpdatePolicy::for_version(t.version),
        volumes: Vec::new(),
        networks: Vec::new(),
    }
}
