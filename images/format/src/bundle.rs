//! Update bundles: one file (or one blob per part) carrying a signed
//! manifest and the layer partitions a device on some base version lacks.
//!
//! Layout of the single-file form (all offsets from the start of the file):
//!
//! ```text
//! 0          the table of contents (TOC): a signature envelope
//!            (envelope.rs layout) under the magic "CAIRNTC1" whose payload
//!            is the postcard-encoded `Toc`; at most HEAD_LEN bytes in all
//! P0         the manifest part: the signed manifest envelope, as written to
//!            a cairn-manifest-{a,b} partition
//! P1 ..      one part per layer the bundle carries: exactly the bytes of a
//!            cairn-layer-NN partition (the image, zero padding to its
//!            hash_offset, the dm-verity tree)
//! Pn         optionally a boot image part (a PE/UKI file for a boot slot)
//! ```
//!
//! Every part starts at a multiple of [`ALIGN`] (4 KiB: a device copies a
//! part into a partition with block-aligned reads, O_DIRECT when it wants),
//! after the TOC, in the TOC's order (manifest, layers, boot image), without
//! overlap and inside the file. The TOC names each part's offset, size and
//! sha256, and a layer part also the layer's digest as the manifest names
//! it. The network form is the same TOC and the same parts as separate
//! content-addressed files (`toc`, `blobs/sha256/<hex>`): the offsets then
//! only say where the parts sit in the single file.
//!
//! A device reads a fixed-size head ([`HEAD_LEN`]), calls [`open_toc`]
//! (signature and every bound here), reads the manifest part and calls
//! [`open_manifest_part`] (its sha256, its own signature, and that the TOC
//! and the manifest agree: product, version, each layer part's digest and
//! size), then streams each layer part into a free slot, hashing as it goes
//! ([`PartHasher`]: never past the size, then the exact size and sha256).
//!
//! A thin bundle (built against a base version) leaves out the layers the
//! base already has: [`check_manifest`] returns the manifest layers the
//! bundle does not carry, which the device must already hold.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::envelope::{self, Envelope, EnvelopeError, KeyId, OpenError, PublicKey, HEADER_LEN, SIGNATURE_LEN};
use crate::manifest::{self, Manifest};

/// Magic of the TOC's envelope.
pub const TOC_MAGIC: [u8; 8] = *b"CAIRNTC1";
/// Bytes a device reads to find the TOC: the whole TOC envelope fits.
pub const HEAD_LEN: usize = 64 * 1024;
/// Largest TOC payload: the envelope fills at most [`HEAD_LEN`].
pub const MAX_TOC_PAYLOAD: usize = HEAD_LEN - HEADER_LEN - SIGNATURE_LEN;
/// Alignment of every part's offset.
pub const ALIGN: u64 = 4096;
/// Largest manifest part: a whole manifest envelope.
pub const MAX_MANIFEST_PART: u64 = (HEADER_LEN + envelope::MAX_PAYLOAD + SIGNATURE_LEN) as u64;
/// Largest boot image part (an EFI system partition holds two slots of it).
pub const MAX_BOOT_IMAGE: u64 = 128 << 20;

/// Where one part is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Byte offset in the single-file bundle (a multiple of [`ALIGN`]).
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// sha256 of the part's bytes (the blob name in the network form).
    pub sha256: Digest,
}

impl Part {
    /// One past its last byte (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// A layer partition's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPart {
    /// The layer's digest, as the manifest names it.
    pub digest: Digest,
    /// The partition bytes: image, padding, hash tree.
    pub part: Part,
}

/// The signed table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    /// The product (the manifest's `compatible`).
    pub compatible: String,
    /// The manifest's version.
    pub version: u64,
    /// For a thin bundle, the version of the manifest it was built against
    /// (informative: what the device must hold is given by digest).
    pub base_version: Option<u64>,
    /// Size of the single-file bundle.
    pub total_size: u64,
    /// The signed manifest envelope.
    pub manifest: Part,
    /// The layer partitions carried, in offset order.
    pub layers: Vec<LayerPart>,
    /// A boot slot image (PE/UKI), if the update carries one.
    pub boot_image: Option<Part>,
}

/// Which part, by its TOC field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartName {
    /// `manifest`.
    Manifest,
    /// `layers[i]`.
    Layer(usize),
    /// `boot_image`.
    BootImage,
}

impl fmt::Display for PartName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manifest => write!(f, "manifest"),
            Self::Layer(i) => write!(f, "layers[{i}]"),
            Self::BootImage => write!(f, "boot_image"),
        }
    }
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// Fewer bytes than an envelope header.
    TooShort(usize),
    /// The magic is not `CAIRNTC1` (not a bundle, or a manifest envelope).
    NotABundle,
    /// The TOC payload is over [`MAX_TOC_PAYLOAD`].
    TocTooLarge(usize),
    /// The head ends before the TOC envelope does.
    TocTruncated {
        /// Bytes the TOC's header promises.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The TOC's signature (unknown key, bad signature, bad trusted key).
    Signature(EnvelopeError),
    /// The signed payload is not a TOC this code can decode.
    Decode,
    /// Bytes after the TOC inside the signed payload.
    TrailingBytes(usize),
    /// `compatible` is not a valid product string.
    BadCompatible(String),
    /// More layer parts than a manifest may name.
    TooManyLayers(usize),
    /// A part of no bytes.
    EmptyPart(PartName),
    /// A part's offset is not a multiple of [`ALIGN`].
    Misaligned {
        /// The part.
        part: PartName,
        /// Its offset.
        offset: u64,
    },
    /// A part starts inside the TOC.
    InsideToc {
        /// The part.
        part: PartName,
        /// Its offset.
        offset: u64,
        /// Where the TOC envelope ends.
        toc_end: u64,
    },
    /// A part starts before the part listed before it.
    OutOfOrder {
        /// The part.
        part: PartName,
        /// Its offset.
        offset: u64,
        /// The offset of the part before it.
        previous: u64,
    },
    /// A part starts before the part listed before it ends.
    Overlap {
        /// The part.
        part: PartName,
        /// Its offset.
        offset: u64,
        /// Where the part before it ends.
        previous_end: u64,
    },
    /// A part ends past `total_size`.
    OutsideFile {
        /// The part.
        part: PartName,
        /// Where it ends.
        end: u64,
        /// The bundle's size.
        total_size: u64,
    },
    /// A part over the bound for its kind.
    PartTooLarge {
        /// The part.
        part: PartName,
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// Two layer parts with one digest.
    DuplicateLayer {
        /// The second part.
        part: PartName,
        /// The digest.
        digest: Digest,
    },
    /// The file is shorter than the TOC's `total_size`.
    Truncated {
        /// `total_size`.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// A part's bytes are not as long as the TOC says.
    PartLength {
        /// The part.
        part: PartName,
        /// The TOC's size.
        expected: u64,
        /// Bytes given.
        found: u64,
    },
    /// A part's bytes do not hash to the TOC's sha256.
    PartDigest {
        /// The part.
        part: PartName,
        /// The TOC's sha256.
        expected: Digest,
        /// The bytes' sha256.
        found: Digest,
    },
    /// The manifest part does not open (its own signature, decoding,
    /// validation).
    Manifest(OpenError),
    /// The TOC and the manifest name different products.
    ProductMismatch {
        /// The TOC's `compatible`.
        toc: String,
        /// The manifest's.
        manifest: String,
    },
    /// The TOC and the manifest name different versions.
    VersionMismatch {
        /// The TOC's `version`.
        toc: u64,
        /// The manifest's.
        manifest: u64,
    },
    /// A layer part whose digest the manifest does not name.
    UnknownLayer {
        /// The part.
        part: PartName,
        /// Its digest.
        digest: Digest,
    },
    /// A layer part whose size is not the partition size of its layer.
    LayerSize {
        /// The part.
        part: PartName,
        /// The part's size.
        size: u64,
        /// The manifest layer's image, padding and hash tree.
        expected: u64,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort(n) => write!(f, "bundle too short ({n} bytes) for a table of contents"),
            Self::NotABundle => write!(f, "not a bundle (no CAIRNTC1 table of contents)"),
            Self::TocTooLarge(n) => {
                write!(f, "table of contents payload of {n} bytes exceeds {MAX_TOC_PAYLOAD}")
            }
            Self::TocTruncated { need, have } => {
                write!(f, "table of contents truncated: need {need} bytes, have {have}")
            }
            Self::Signature(e) => write!(f, "table of contents: {e}"),
            Self::Decode => write!(f, "signed table of contents does not decode"),
            Self::TrailingBytes(n) => write!(f, "signed table of contents holds {n} bytes after it"),
            Self::BadCompatible(s) => write!(f, "compatible {s:?} is not a product string"),
            Self::TooManyLayers(n) => {
                write!(f, "layers: {n} layer parts exceed {}", manifest::MAX_LAYERS)
            }
            Self::EmptyPart(p) => write!(f, "{p}.size is 0"),
            Self::Misaligned { part, offset } => {
                write!(f, "{part}.offset {offset} is not a multiple of {ALIGN}")
            }
            Self::InsideToc { part, offset, toc_end } => {
                write!(f, "{part}.offset {offset} is inside the table of contents (ends at {toc_end})")
            }
            Self::OutOfOrder { part, offset, previous } => {
                write!(f, "{part}.offset {offset} is before the previous part's offset {previous}")
            }
            Self::Overlap { part, offset, previous_end } => {
                write!(f, "{part}.offset {offset} overlaps the previous part (ends at {previous_end})")
            }
            Self::OutsideFile { part, end, total_size } => {
                write!(f, "{part} ends at {end}, past total_size {total_size}")
            }
            Self::PartTooLarge { part, size, max } => write!(f, "{part}.size {size} exceeds {max}"),
            Self::DuplicateLayer { part, digest } => {
                write!(f, "{part}.digest sha256:{digest} is carried twice")
            }
            Self::Truncated { need, have } => {
                write!(f, "bundle truncated: total_size is {need} bytes, have {have}")
            }
            Self::PartLength { part, expected, found } => {
                write!(f, "{part}: {found} bytes, the table of contents says {expected}")
            }
            Self::PartDigest { part, expected, found } => {
                write!(f, "{part}: sha256:{found} is not the table of contents' sha256:{expected}")
            }
            Self::Manifest(e) => write!(f, "manifest part: {e}"),
            Self::ProductMismatch { toc, manifest } => {
                write!(f, "compatible {toc:?} is not the manifest's {manifest:?}")
            }
            Self::VersionMismatch { toc, manifest } => {
                write!(f, "version {toc} is not the manifest's {manifest}")
            }
            Self::UnknownLayer { part, digest } => {
                write!(f, "{part}.digest sha256:{digest} is no layer of the manifest")
            }
            Self::LayerSize { part, size, expected } => {
                write!(f, "{part}.size {size} is not its layer's partition size {expected}")
            }
        }
    }
}

/// `n` rounded up to a multiple of [`ALIGN`] (`None` on overflow).
pub fn align_up(n: u64) -> Option<u64> {
    n.checked_add(ALIGN - 1).map(|v| v / ALIGN * ALIGN)
}

impl Toc {
    /// Every part, in the order they must sit in the file.
    pub fn parts(&self) -> impl Iterator<Item = (PartName, &Part)> + '_ {
        core::iter::once((PartName::Manifest, &self.manifest))
            .chain(self.layers.iter().enumerate().map(|(i, l)| (PartName::Layer(i), &l.part)))
            .chain(self.boot_image.iter().map(|p| (PartName::BootImage, p)))
    }

    /// Check every bound, for a TOC whose envelope is `toc_len` bytes.
    pub fn validate(&self, toc_len: u64) -> Result<(), BundleError> {
        if !manifest::is_valid_compatible(&self.compatible) {
            return Err(BundleError::BadCompatible(self.compatible.clone()));
        }
        if self.layers.len() > manifest::MAX_LAYERS {
            return Err(BundleError::TooManyLayers(self.layers.len()));
        }
        let (mut previous, mut previous_end) = (None::<u64>, toc_len);
        for (part, p) in self.parts() {
            if p.size == 0 {
                return Err(BundleError::EmptyPart(part));
            }
            if p.offset % ALIGN != 0 {
                return Err(BundleError::Misaligned { part, offset: p.offset });
            }
            match previous {
                None if p.offset < toc_len => {
                    return Err(BundleError::InsideToc { part, offset: p.offset, toc_end: toc_len })
                }
                Some(prev) if p.offset < prev => {
                    return Err(BundleError::OutOfOrder { part, offset: p.offset, previous: prev })
                }
                Some(_) if p.offset < previous_end => {
                    return Err(BundleError::Overlap { part, offset: p.offset, previous_end })
                }
                _ => {}
            }
            let end = p.end();
            if end > self.total_size {
                return Err(BundleError::OutsideFile { part, end, total_size: self.total_size });
            }
            let max = match part {
                PartName::Manifest => Some(MAX_MANIFEST_PART),
                PartName::BootImage => Some(MAX_BOOT_IMAGE),
                PartName::Layer(_) => None,
            };
            if let Some(max) = max.filter(|m| p.size > *m) {
                return Err(BundleError::PartTooLarge { part, size: p.size, max });
            }
            previous = Some(p.offset);
            previous_end = end;
        }
        for (i, l) in self.layers.iter().enumerate() {
            if self.layers.iter().take(i).any(|o| o.digest == l.digest) {
                return Err(BundleError::DuplicateLayer { part: PartName::Layer(i), digest: l.digest });
            }
        }
        Ok(())
    }

    /// A file (or device) of `len` bytes holds the whole bundle.
    pub fn check_len(&self, len: u64) -> Result<(), BundleError> {
        if len < self.total_size {
            return Err(BundleError::Truncated { need: self.total_size, have: len });
        }
        Ok(())
    }

    /// The layer part carrying `digest`.
    pub fn layer(&self, digest: &Digest) -> Option<&LayerPart> {
        self.layers.iter().find(|l| l.digest == *digest)
    }
}

/// A TOC read from a head, its signature not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedToc {
    /// Who claims to have signed it.
    pub key_id: KeyId,
    /// Bytes of the TOC envelope.
    pub len: usize,
    /// The TOC (bounds checked).
    pub toc: Toc,
}

fn envelope_error(e: EnvelopeError) -> BundleError {
    match e {
        EnvelopeError::TooShort(n) => BundleError::TooShort(n),
        EnvelopeError::BadMagic => BundleError::NotABundle,
        EnvelopeError::PayloadTooLarge(n) => BundleError::TocTooLarge(n),
        EnvelopeError::Truncated { need, have } => BundleError::TocTruncated { need, have },
        e => BundleError::Signature(e),
    }
}

fn decode(env: &Envelope<'_>, payload: &[u8]) -> Result<UnverifiedToc, BundleError> {
    let (toc, rest): (Toc, _) = postcard::take_from_bytes(payload).map_err(|_| BundleError::Decode)?;
    if !rest.is_empty() {
        return Err(BundleError::TrailingBytes(rest.len()));
    }
    let len = HEADER_LEN + env.payload.len() + SIGNATURE_LEN;
    toc.validate(len as u64)?;
    Ok(UnverifiedToc { key_id: env.key_id, len, toc })
}

/// Parse and bound-check the TOC at the start of `head` without checking
/// its signature (for inspection; a device uses [`open_toc`]).
pub fn read_toc(head: &[u8]) -> Result<UnverifiedToc, BundleError> {
    let env = Envelope::parse_as(head, &TOC_MAGIC, MAX_TOC_PAYLOAD).map_err(envelope_error)?;
    decode(&env, env.payload)
}

/// Verify the TOC at the start of `head` (the first [`HEAD_LEN`] bytes of
/// a bundle, or all of it if shorter) against the trusted keys, decode it
/// and check every bound.
pub fn open_toc(head: &[u8], trusted: &[PublicKey]) -> Result<Toc, BundleError> {
    let env = Envelope::parse_as(head, &TOC_MAGIC, MAX_TOC_PAYLOAD).map_err(envelope_error)?;
    let payload = env.verify(trusted).map_err(envelope_error)?;
    decode(&env, payload).map(|u| u.toc)
}

/// `bytes` are the part the TOC names: length and sha256.
pub fn verify_part(part: PartName, p: &Part, bytes: &[u8]) -> Result<(), BundleError> {
    if bytes.len() as u64 != p.size {
        return Err(BundleError::PartLength { part, expected: p.size, found: bytes.len() as u64 });
    }
    check_digest(part, p, Digest::of(bytes))
}

/// A part's streamed hash is the TOC's.
pub fn check_digest(part: PartName, p: &Part, found: Digest) -> Result<(), BundleError> {
    if found != p.sha256 {
        return Err(BundleError::PartDigest { part, expected: p.sha256, found });
    }
    Ok(())
}

/// A part's bytes checked as they stream by (into a slot, from a file or
/// a connection): never more than the TOC's size, and at the end exactly
/// that size with the TOC's sha256.
pub struct PartHasher {
    name: PartName,
    part: Part,
    seen: u64,
    hasher: crate::digest::Hasher,
}

impl fmt::Debug for PartHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartHasher")
            .field("name", &self.name)
            .field("part", &self.part)
            .field("seen", &self.seen)
            .finish()
    }
}

impl PartHasher {
    /// Start checking `part`.
    pub fn new(name: PartName, part: Part) -> Self {
        Self { name, part, seen: 0, hasher: crate::digest::Hasher::default() }
    }

    /// Bytes taken so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Take the next bytes; refused (and not hashed) past the part's size.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        let seen = self.seen.saturating_add(bytes.len() as u64);
        if seen > self.part.size {
            return Err(BundleError::PartLength { part: self.name, expected: self.part.size, found: seen });
        }
        self.hasher.update(bytes);
        self.seen = seen;
        Ok(())
    }

    /// All bytes taken: the length and the sha256 must be the TOC's.
    pub fn finish(self) -> Result<(), BundleError> {
        if self.seen != self.part.size {
            return Err(BundleError::PartLength { part: self.name, expected: self.part.size, found: self.seen });
        }
        check_digest(self.name, &self.part, self.hasher.finish())
    }
}

/// The TOC and the manifest agree: same product and version, every layer
/// part is a layer of the manifest with that layer's partition size.
/// Returns the indices (in `manifest.layers`) of the layers the bundle
/// does not carry: a device must already hold them.
pub fn check_manifest(toc: &Toc, m: &Manifest) -> Result<Vec<usize>, BundleError> {
    if toc.compatible != m.compatible {
        return Err(BundleError::ProductMismatch { toc: toc.compatible.clone(), manifest: m.compatible.clone() });
    }
    if toc.version != m.version {
        return Err(BundleError::VersionMismatch { toc: toc.version, manifest: m.version });
    }
    for (i, l) in toc.layers.iter().enumerate() {
        let part = PartName::Layer(i);
        let layer = m
            .layers
            .iter()
            .find(|ml| ml.digest == l.digest)
            .ok_or(BundleError::UnknownLayer { part, digest: l.digest })?;
        let expected = layer.verity.partition_bytes();
        if l.part.size != expected {
            return Err(BundleError::LayerSize { part, size: l.part.size, expected });
        }
    }
    Ok(m.layers.iter().enumerate().filter(|(_, l)| toc.layer(&l.digest).is_none()).map(|(i, _)| i).collect())
}

/// The manifest part's bytes: its sha256, its own signature, decoding and
/// validation, then [`check_manifest`]. Returns the manifest and the
/// layers the bundle does not carry.
pub fn open_manifest_part(
    toc: &Toc,
    bytes: &[u8],
    trusted: &[PublicKey],
) -> Result<(Manifest, Vec<usize>), BundleError> {
    verify_part(PartName::Manifest, &toc.manifest, bytes)?;
    let m = envelope::open_manifest(bytes, trusted).map_err(BundleError::Manifest)?;
    let missing = check_manifest(toc, &m)?;
    Ok((m, missing))
}

/// Encode and seal a TOC whose parts start at or after the envelope's end
/// (host side). Use [`toc_envelope_len`] to place the parts first.
pub fn seal_toc(toc: &Toc, key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, BundleError> {
    let payload = postcard::to_allocvec(toc).map_err(|_| BundleError::Decode)?;
    let sealed = envelope::seal_as(&payload, key, &TOC_MAGIC, MAX_TOC_PAYLOAD).map_err(envelope_error)?;
    toc.validate(sealed.len() as u64)?;
    Ok(sealed)
}

/// The bytes a signer signs for `toc` under `public` (host side, for a
/// signer that is not a key file: an HSM, a KMS): the TOC envelope's header
/// and payload. The envelope is these bytes and the 64-byte signature; it
/// must pass [`open_toc`] with `public`.
pub fn toc_signed_bytes(toc: &Toc, public: &PublicKey) -> Result<Vec<u8>, BundleError> {
    let payload = postcard::to_allocvec(toc).map_err(|_| BundleError::Decode)?;
    if payload.len() > MAX_TOC_PAYLOAD {
        return Err(BundleError::TocTooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SIGNATURE_LEN);
    out.extend_from_slice(&TOC_MAGIC);
    out.extend_from_slice(&envelope::key_id(public).0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Bytes of the envelope that seals `toc`.
pub fn toc_envelope_len(toc: &Toc) -> Result<usize, BundleError> {
    let payload = postcard::to_allocvec(toc).map_err(|_| BundleError::Decode)?;
    Ok(HEADER_LEN + payload.len() + SIGNATURE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal_manifest;
    use crate::manifest::tests::{container, manifest};
    use ed25519_dalek::SigningKey;
    use std::string::ToString;
    use std::vec;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pk(seed: u8) -> PublicKey {
        key(seed).verifying_key().to_bytes()
    }

    fn part(offset: u64, size: u64) -> Part {
        Part { offset, size, sha256: Digest([offset as u8; 32]) }
    }

    /// A manifest with its layers, and a TOC carrying all of them, laid out
    /// as the builder does.
    fn fixture() -> (Manifest, Toc) {
        let mut m = manifest(&[container("app", &[])]);
        let extra = Digest([8; 32]);
        let verity = crate::manifest::tests::test_verity(8192);
        m.layers.push(crate::manifest::Layer { name: "extra".into(), digest: extra, size: 8192, verity });
        let mut off = 8192;
        let mp = part(off, 3000);
        off += 4096;
        let mut layers = vec![];
        for l in &m.layers {
            let size = l.verity.partition_bytes();
            layers.push(LayerPart { digest: l.digest, part: part(off, size) });
            off = align_up(off + size).unwrap();
        }
        let toc = Toc {
            compatible: m.compatible.clone(),
            version: m.version,
            base_version: None,
            total_size: off,
            manifest: mp,
            layers,
            boot_image: None,
        };
        (m, toc)
    }

    #[test]
    fn a_sealed_toc_opens_with_its_key_and_only_with_it() {
        let (_, toc) = fixture();
        let mut head = seal_toc(&toc, &key(1)).unwrap();
        assert!(head.len() < 8192);
        head.resize(HEAD_LEN, 0);
        assert_eq!(open_toc(&head, &[pk(1)]), Ok(toc.clone()));
        assert_eq!(open_toc(&head, &[pk(2), pk(1)]), Ok(toc.clone()));
        let e = open_toc(&head, &[pk(2)]).unwrap_err();
        assert_eq!(e, BundleError::Signature(EnvelopeError::UnknownKey(envelope::key_id(&pk(1)))));
        assert!(e.to_string().starts_with("table of contents: signed by untrusted key "), "{e}");
        let u = read_toc(&head).unwrap();
        assert_eq!((u.toc, u.key_id), (toc, envelope::key_id(&pk(1))));
    }

    #[test]
    fn signed_bytes_and_a_signature_are_the_sealed_toc() {
        use ed25519_dalek::Signer as _;
        let (_, toc) = fixture();
        let mut env = toc_signed_bytes(&toc, &pk(1)).unwrap();
        env.extend_from_slice(&key(1).sign(&env).to_bytes());
        assert_eq!(env, seal_toc(&toc, &key(1)).unwrap());
    }

    #[test]
    fn every_flipped_byte_of_the_toc_is_refused() {
        let (_, toc) = fixture();
        let head = seal_toc(&toc, &key(1)).unwrap();
        for i in 0..head.len() {
            let mut bad = head.clone();
            bad[i] ^= 0x01;
            assert!(open_toc(&bad, &[pk(1)]).is_err(), "flip at {i} accepted");
        }
        for len in 0..head.len() {
            assert!(open_toc(&head[..len], &[pk(1)]).is_err(), "truncated to {len} accepted");
        }
    }

    #[test]
    fn a_manifest_signature_is_not_a_toc_signature_nor_the_reverse() {
        let (m, toc) = fixture();
        let k = key(1);
        let env = seal_manifest(&m, &k).unwrap();
        assert_eq!(open_toc(&env, &[pk(1)]), Err(BundleError::NotABundle));
        let head = seal_toc(&toc, &k).unwrap();
        assert_eq!(envelope::open_manifest(&head, &[pk(1)]), Err(OpenError::Envelope(EnvelopeError::BadMagic)));
        // The same payload signed as a manifest and relabelled as a TOC
        // does not verify: the magic is under the signature.
        let payload = postcard::to_allocvec(&toc).unwrap();
        let mut forged = envelope::seal(&payload, &k).unwrap();
        forged[..8].copy_from_slice(&TOC_MAGIC);
        assert_eq!(
            open_toc(&forged, &[pk(1)]),
            Err(BundleError::Signature(EnvelopeError::BadSignature(envelope::key_id(&pk(1)))))
        );
    }

    #[test]
    fn the_toc_size_is_bounded_by_the_head() {
        let (_, toc) = fixture();
        let mut head = seal_toc(&toc, &key(1)).unwrap();
        head[16..20].copy_from_slice(&((MAX_TOC_PAYLOAD + 1) as u32).to_le_bytes());
        let e = open_toc(&head, &[pk(1)]).unwrap_err();
        assert_eq!(e, BundleError::TocTooLarge(MAX_TOC_PAYLOAD + 1));
        assert_eq!(e.to_string(), "table of contents payload of 65453 bytes exceeds 65452");
        let big = vec![0u8; MAX_TOC_PAYLOAD + 1];
        assert_eq!(
            envelope::seal_as(&big, &key(1), &TOC_MAGIC, MAX_TOC_PAYLOAD),
            Err(EnvelopeError::PayloadTooLarge(MAX_TOC_PAYLOAD + 1))
        );
        let head = seal_toc(&toc, &key(1)).unwrap();
        let e = open_toc(&head[..100], &[pk(1)]).unwrap_err();
        assert!(matches!(e, BundleError::TocTruncated { have: 100, .. }), "{e:?}");
        assert_eq!(open_toc(&head[..10], &[pk(1)]), Err(BundleError::TooShort(10)));
    }

    /// `toc` after `change`, validated for a TOC envelope of 100 bytes.
    fn refused(change: impl FnOnce(&mut Toc)) -> BundleError {
        let (_, mut toc) = fixture();
        change(&mut toc);
        toc.validate(100).unwrap_err()
    }

    #[test]
    fn each_bound_has_its_own_error_naming_the_field() {
        let (_, toc) = fixture();
        assert_eq!(toc.validate(100), Ok(()));
        assert_eq!(toc.validate(8192), Ok(()));
        // Layout: manifest at 8192 (3000 bytes), layers[0] at 12288 (4096
        // bytes), layers[1] at 16384 (12288 bytes), total 28672.
        assert_eq!((toc.layers[0].part.offset, toc.layers[1].part.offset, toc.total_size), (12288, 16384, 28672));
        let cases: Vec<(BundleError, &str)> = vec![
            (refused(|t| t.compatible = "".into()), "compatible \"\" is not a product string"),
            (
                refused(|t| {
                    let l = t.layers[0];
                    t.layers = vec![l; manifest::MAX_LAYERS + 1];
                }),
                "layers: 25 layer parts exceed 24",
            ),
            (refused(|t| t.manifest.size = 0), "manifest.size is 0"),
            (refused(|t| t.layers[0].part.offset += 512), "layers[0].offset 12800 is not a multiple of 4096"),
            (refused(|t| t.manifest.offset = 0), "manifest.offset 0 is inside the table of contents (ends at 100)"),
            (
                refused(|t| t.boot_image = Some(part(4096, 10))),
                "boot_image.offset 4096 is before the previous part's offset 16384",
            ),
            (refused(|t| t.manifest.size = 4097), "layers[0].offset 12288 overlaps the previous part (ends at 12289)"),
            (refused(|t| t.total_size -= 1), "layers[1] ends at 28672, past total_size 28671"),
            (
                refused(|t| {
                    t.manifest.size = MAX_MANIFEST_PART + 1;
                    t.layers.clear();
                    t.total_size = u64::MAX;
                }),
                "manifest.size 262229 exceeds 262228",
            ),
            (
                refused(|t| {
                    t.boot_image = Some(part(28672, MAX_BOOT_IMAGE + 1));
                    t.total_size = u64::MAX;
                }),
                "boot_image.size 134217729 exceeds 134217728",
            ),
            (
                refused(|t| t.boot_image = Some(part(!4095, 8192))),
                "boot_image ends at 18446744073709551615, past total_size 28672",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text, "{e:?}");
        }
        let e = refused(|t| {
            let mut again = t.layers[0];
            again.part.offset = t.total_size;
            t.total_size = again.part.end();
            t.layers.push(again);
        });
        let digest = toc.layers[0].digest;
        assert_eq!(e, BundleError::DuplicateLayer { part: PartName::Layer(2), digest });
        assert_eq!(e.to_string(), std::format!("layers[2].digest sha256:{digest} is carried twice"));
    }

    #[test]
    fn the_file_must_hold_total_size() {
        let (_, toc) = fixture();
        assert_eq!(toc.check_len(toc.total_size), Ok(()));
        assert_eq!(toc.check_len(toc.total_size + 1), Ok(()));
        let e = toc.check_len(toc.total_size - 1).unwrap_err();
        assert_eq!(e, BundleError::Truncated { need: toc.total_size, have: toc.total_size - 1 });
    }

    #[test]
    fn parts_are_checked_by_length_and_sha256() {
        let data = b"layer bytes".to_vec();
        let p = Part { offset: 4096, size: data.len() as u64, sha256: Digest::of(&data) };
        assert_eq!(verify_part(PartName::Layer(1), &p, &data), Ok(()));
        let mut bad = data.clone();
        bad[3] ^= 1;
        let e = verify_part(PartName::Layer(1), &p, &bad).unwrap_err();
        assert_eq!(
            e,
            BundleError::PartDigest { part: PartName::Layer(1), expected: p.sha256, found: Digest::of(&bad) }
        );
        assert!(e.to_string().starts_with("layers[1]: sha256:"), "{e}");
        let e = verify_part(PartName::BootImage, &p, &data[1..]).unwrap_err();
        assert_eq!(e.to_string(), "boot_image: 10 bytes, the table of contents says 11");
    }

    #[test]
    fn a_streamed_part_is_checked_by_length_and_sha256() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let p = Part { offset: 4096, size: data.len() as u64, sha256: Digest::of(&data) };
        let mut h = PartHasher::new(PartName::Layer(0), p);
        for chunk in data.chunks(999) {
            h.update(chunk).unwrap();
        }
        assert_eq!(h.seen(), 10_000);
        // One byte more is refused, and leaves the hash as it was.
        assert_eq!(
            h.update(b"x"),
            Err(BundleError::PartLength { part: PartName::Layer(0), expected: 10_000, found: 10_001 })
        );
        assert_eq!(h.finish(), Ok(()));
        let mut short = PartHasher::new(PartName::Layer(0), p);
        short.update(&data[..9_999]).unwrap();
        assert_eq!(short.finish().unwrap_err().to_string(), "layers[0]: 9999 bytes, the table of contents says 10000");
        let mut bad = data.clone();
        bad[5000] ^= 1;
        let mut h = PartHasher::new(PartName::Layer(0), p);
        h.update(&bad).unwrap();
        assert!(matches!(h.finish(), Err(BundleError::PartDigest { .. })));
    }

    #[test]
    fn the_toc_must_agree_with_the_manifest() {
        let (m, toc) = fixture();
        assert_eq!(check_manifest(&toc, &m), Ok(vec![]));
        // A thin bundle: the layers left out are reported.
        let mut thin = toc.clone();
        thin.layers.remove(0);
        assert_eq!(check_manifest(&thin, &m), Ok(vec![0]));
        thin.layers = vec![toc.layers[0]];
        assert_eq!(check_manifest(&thin, &m), Ok(vec![1]));
        thin.layers.clear();
        assert_eq!(check_manifest(&thin, &m), Ok((0..m.layers.len()).collect()));

        let mut t = toc.clone();
        t.compatible = "router-v2".into();
        assert_eq!(
            check_manifest(&t, &m).unwrap_err().to_string(),
            "compatible \"router-v2\" is not the manifest's \"cairn-test\""
        );
        let mut t = toc.clone();
        t.version += 1;
        assert_eq!(
            check_manifest(&t, &m).unwrap_err(),
            BundleError::VersionMismatch { toc: m.version + 1, manifest: m.version }
        );
        let mut t = toc.clone();
        t.layers[0].digest = Digest([0xee; 32]);
        assert_eq!(
            check_manifest(&t, &m).unwrap_err().to_string(),
            std::format!("layers[0].digest sha256:{} is no layer of the manifest", Digest([0xee; 32]))
        );
        let mut t = toc.clone();
        t.layers[0].part.size -= 1;
        let e = check_manifest(&t, &m).unwrap_err();
        let expected = m.layers[0].verity.partition_bytes();
        assert_eq!(e, BundleError::LayerSize { part: PartName::Layer(0), size: expected - 1, expected });
    }

    #[test]
    fn the_manifest_part_is_hashed_then_opened_then_compared() {
        let (m, mut toc) = fixture();
        let k = key(1);
        let env = seal_manifest(&m, &k).unwrap();
        toc.manifest.size = env.len() as u64;
        toc.manifest.sha256 = Digest::of(&env);
        assert_eq!(open_manifest_part(&toc, &env, &[pk(1)]), Ok((m.clone(), vec![])));
        let mut bad = env.clone();
        bad[30] ^= 1;
        assert!(matches!(
            open_manifest_part(&toc, &bad, &[pk(1)]),
            Err(BundleError::PartDigest { part: PartName::Manifest, .. })
        ));
        // The right bytes, but a key the device does not trust.
        let e = open_manifest_part(&toc, &env, &[pk(2)]).unwrap_err();
        assert_eq!(e, BundleError::Manifest(OpenError::Envelope(EnvelopeError::UnknownKey(envelope::key_id(&pk(1))))));
        toc.version += 1;
        assert!(matches!(open_manifest_part(&toc, &env, &[pk(1)]), Err(BundleError::VersionMismatch { .. })));
    }
}
