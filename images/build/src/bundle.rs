//! Update bundles, host side: write one from a signed manifest and its
//! layer images (all layers, or only those a base version lacks), split it
//! into content-addressed files for a static HTTP server, and check one as
//! a device would, plus what only the host can afford (every part hashed,
//! every layer image against its digest).
//!
//! The format and the device-side reader are `cairn_format::bundle`. A
//! layer part is written by [`crate::gpt::write_layer_at`], the code that
//! writes a disk's layer partitions, so its bytes are those of a
//! `cairn-layer-NN` partition.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_format::bundle::{self, BundleError, LayerPart, Part, PartName, Toc};
use cairn_format::digest::{Digest, Hasher};
use cairn_format::envelope::{Envelope, KeyId, PublicKey};
use cairn_format::manifest::Manifest;
use ed25519_dalek::SigningKey;

use crate::assemble::BuiltLayer;
use crate::gpt::{self, GptError};

/// Why a bundle could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleBuildError {
    /// The format's rules (bounds, signatures, digests, consistency).
    #[error("{path}: {error}")]
    Format {
        /// The bundle (file or split directory).
        path: PathBuf,
        /// What is wrong.
        error: BundleError,
    },
    /// A layer to carry known only by digest (no image file).
    #[error("layer {0} is given by digest only; a bundle that carries it needs its image")]
    NoImage(String),
    /// The base manifest is for another product.
    #[error("the base manifest is for {base:?}, the manifest for {manifest:?}")]
    BaseProduct {
        /// The base's `compatible`.
        base: String,
        /// The manifest's.
        manifest: String,
    },
    /// The base is not older than the manifest.
    #[error("the base manifest's version {base} is not older than the manifest's {version}")]
    BaseNotOlder {
        /// The base's version.
        base: u64,
        /// The manifest's.
        version: u64,
    },
    /// A layer part whose image does not hash to the layer's digest.
    #[error(transparent)]
    LayerImage(Box<LayerImageError>),
    /// The signer of the TOC failed.
    #[error("signing the table of contents: {0}")]
    Sign(String),
    /// The boot image is not one a device should write into a boot entry.
    #[error("boot image {path}: {reason}")]
    BootImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing a layer part.
    #[error(transparent)]
    Gpt(#[from] GptError),
    /// Other file I/O.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
}

/// A layer part whose image does not hash to the layer's digest.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {part} ({layer}): its image hashes to sha256:{found}, the manifest says sha256:{expected}")]
pub struct LayerImageError {
    /// The bundle.
    pub path: PathBuf,
    /// The part.
    pub part: PartName,
    /// The layer's name.
    pub layer: String,
    /// The manifest's digest.
    pub expected: Digest,
    /// The image's.
    pub found: Digest,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleBuildError + '_ {
    move |error| BundleBuildError::Io { path: path.to_owned(), error }
}

fn format(path: &Path) -> impl FnOnce(BundleError) -> BundleBuildError + '_ {
    move |error| BundleBuildError::Format { path: path.to_owned(), error }
}

/// What goes into a bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleInput<'a> {
    /// The signed manifest envelope.
    pub envelope: &'a [u8],
    /// The manifest in it.
    pub manifest: &'a Manifest,
    /// Its layers, in manifest order ([`crate::assemble::find_layers`]).
    pub layers: &'a [BuiltLayer],
    /// The manifest devices update from: a thin bundle leaves out every
    /// layer whose digest it names.
    pub base: Option<&'a Manifest>,
    /// A boot slot image (PE/UKI) to carry.
    pub boot_image: Option<&'a Path>,
}

/// A bundle written.
#[derive(Debug, Clone)]
pub struct BuiltBundle {
    /// Its table of contents.
    pub toc: Toc,
    /// Bytes of the TOC envelope.
    pub toc_len: usize,
    /// The TOC envelope itself.
    pub toc_bytes: Vec<u8>,
    /// Indices of the manifest layers it leaves out.
    pub omitted: Vec<usize>,
}

/// The layers `input` carries: every layer whose digest the base does not
/// name, each digest once, in manifest order.
fn carried<'a>(input: &BundleInput<'a>) -> Vec<&'a BuiltLayer> {
    let mut out: Vec<&BuiltLayer> = Vec::new();
    for l in input.layers {
        let in_base = input.base.is_some_and(|b| b.layers.iter().any(|bl| bl.digest == l.digest));
        if !in_base && !out.iter().any(|o| o.digest == l.digest) {
            out.push(l);
        }
    }
    out
}

/// Place the parts after a TOC envelope of `toc_len` bytes.
fn layout(toc: &mut Toc, toc_len: u64) -> Result<(), BundleError> {
    let overflow = BundleError::OutsideFile { part: PartName::Manifest, end: u64::MAX, total_size: u64::MAX };
    let mut at = bundle::align_up(toc_len).ok_or(overflow.clone())?;
    let mut place = |p: &mut Part| -> Result<(), BundleError> {
        p.offset = at;
        at = bundle::align_up(p.end()).ok_or(overflow.clone())?;
        Ok(())
    };
    place(&mut toc.manifest)?;
    for l in &mut toc.layers {
        place(&mut l.part)?;
    }
    if let Some(b) = &mut toc.boot_image {
        place(b)?;
    }
    // The last part ends the file (no padding after it).
    toc.total_size = toc.parts().last().map_or(0, |(_, p)| p.end());
    Ok(())
}

/// `out` with `.partial` appended.
fn partial(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// The sha256 of `size` bytes at `offset` of `f`, and of their first
/// `prefix` bytes.
fn hash_range(
    f: &mut File,
    path: &Path,
    offset: u64,
    size: u64,
    prefix: u64,
) -> Result<(Digest, Digest), BundleBuildError> {
    f.seek(SeekFrom::Start(offset)).map_err(io(path))?;
    let (whole, head, done) = hash_stream(&mut f.take(size), path, prefix)?;
    if done != size {
        let short = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{done} of {size} bytes"));
        return Err(BundleBuildError::Io { path: path.to_owned(), error: short });
    }
    Ok((whole, head))
}

/// Hash all of `r`: the sha256 of everything, of the first `prefix`
/// bytes, and the length.
fn hash_stream(r: &mut dyn Read, path: &Path, prefix: u64) -> Result<(Digest, Digest, u64), BundleBuildError> {
    let (mut whole, mut head) = (Hasher::default(), Hasher::default());
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        whole.update(chunk);
        let take = prefix.saturating_sub(done).min(n as u64) as usize;
        head.update(&chunk[..take]);
        done += n as u64;
    }
    Ok((whole.finish(), head.finish(), done))
}

/// A thin bundle's base must be for the same product and older.
pub fn check_base(m: &Manifest, base: &Manifest) -> Result<(), BundleBuildError> {
    if base.compatible != m.compatible {
        return Err(BundleBuildError::BaseProduct { base: base.compatible.clone(), manifest: m.compatible.clone() });
    }
    if base.version >= m.version {
        return Err(BundleBuildError::BaseNotOlder { base: base.version, version: m.version });
    }
    Ok(())
}

/// Write the bundle for `input` to `out`, its TOC signed with `key`.
/// Same inputs, same bytes. Written beside `out` and renamed into place.
pub fn write_bundle(input: &BundleInput<'_>, key: &SigningKey, out: &Path) -> Result<BuiltBundle, BundleBuildError> {
    use ed25519_dalek::Signer as _;
    let public = key.verifying_key().to_bytes();
    write_bundle_with(input, &public, &mut |bytes| Ok(key.sign(bytes).to_bytes()), out)
}

/// Whether `image` is an update's boot image for manifest `m` (`cairn image
/// assemble --update-image`): a PE whose os-release names the manifest's
/// product and version (systemd-boot sorts the new entry first by that
/// version; one that sorted after the running entry would never be tried,
/// and the trial would fail) and whose command line names no boot slot
/// (the device picks the entry).
pub fn check_boot_image(image: &[u8], m: &Manifest) -> Result<(), String> {
    crate::pe::headers(image).map_err(|e| format!("not a PE image: {e}"))?;
    let text = |name: &str| -> Result<String, String> {
        let data = crate::pe::section_data(image, name)
            .map_err(|e| format!("section {name}: {e}"))?
            .ok_or_else(|| format!("no {name} section: not a unified kernel image"))?;
        Ok(String::from_utf8_lossy(data).trim_end_matches('\0').to_owned())
    };
    let osrel = text(".osrel")?;
    let field =
        |key: &str| osrel.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim_matches('"'));
    let version = m.version.to_string();
    if field("IMAGE_VERSION") != Some(version.as_str()) {
        return Err(format!(
            "its os-release says IMAGE_VERSION={}, the manifest is version {version}",
            field("IMAGE_VERSION").unwrap_or("(none)")
        ));
    }
    if field("IMAGE_ID") != Some(m.compatible.as_str()) {
        return Err(format!(
            "its os-release says IMAGE_ID={}, the manifest is for {}",
            field("IMAGE_ID").unwrap_or("(none)"),
            m.compatible
        ));
    }
    let cmdline = text(".cmdline")?;
    if cmdline.split_whitespace().any(|w| w.starts_with("cairn.slot=")) {
        return Err(
            "its command line names a boot slot (cairn.slot=): build it with `cairn image assemble --update-image`"
                .into(),
        );
    }
    Ok(())
}

/// A signer of TOC bytes ([`bundle::toc_signed_bytes`]): the ed25519
/// signature, or why there is none.
pub type SignFn<'a> = dyn FnMut(&[u8]) -> Result<[u8; 64], String> + 'a;

/// [`write_bundle`] with any signer for the key `public` (a signing
/// command, an HSM). The signature is checked before the bundle is kept.
pub fn write_bundle_with(
    input: &BundleInput<'_>,
    public: &PublicKey,
    sign: &mut SignFn<'_>,
    out: &Path,
) -> Result<BuiltBundle, BundleBuildError> {
    let m = input.manifest;
    if let Some(b) = input.base {
        check_base(m, b)?;
    }
    if let Some(path) = input.boot_image {
        let image = fs::read(path).map_err(io(path))?;
        check_boot_image(&image, m).map_err(|reason| BundleBuildError::BootImage { path: path.to_owned(), reason })?;
    }
    let layers = carried(input);
    for l in &layers {
        if l.path.is_none() {
            return Err(BundleBuildError::NoImage(l.name.clone()));
        }
    }
    let boot_size = match input.boot_image {
        Some(p) => Some(fs::metadata(p).map_err(io(p))?.len()),
        None => None,
    };
    let zero = Digest([0; 32]);
    let mut toc = Toc {
        compatible: m.compatible.clone(),
        version: m.version,
        base_version: input.base.map(|b| b.version),
        total_size: 0,
        manifest: Part { offset: 0, size: input.envelope.len() as u64, sha256: zero },
        layers: layers
            .iter()
            .map(|l| LayerPart { digest: l.digest, part: Part { offset: 0, size: l.partition_bytes(), sha256: zero } })
            .collect(),
        boot_image: boot_size.map(|size| Part { offset: 0, size, sha256: zero }),
    };
    // The TOC's length depends on the offsets (varints): place the parts
    // until the TOC fits before the first one.
    let mut toc_len = bundle::toc_envelope_len(&toc).map_err(format(out))? as u64;
    loop {
        layout(&mut toc, toc_len).map_err(format(out))?;
        let len = bundle::toc_envelope_len(&toc).map_err(format(out))? as u64;
        if bundle::align_up(len) == bundle::align_up(toc_len) {
            break;
        }
        toc_len = len;
    }

    let tmp = partial(out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let result = (|| -> Result<BuiltBundle, BundleBuildError> {
        let mut f = File::options().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
        f.set_len(toc.total_size).map_err(io(&tmp))?;
        f.seek(SeekFrom::Start(toc.manifest.offset)).map_err(io(&tmp))?;
        f.write_all(input.envelope).map_err(io(&tmp))?;
        let mut written = Vec::new();
        for (l, lp) in layers.iter().zip(&toc.layers) {
            let image = l.path.as_deref().ok_or_else(|| BundleBuildError::NoImage(l.name.clone()))?;
            gpt::write_layer_at(
                &mut f,
                &tmp,
                lp.part.offset,
                image,
                l.size,
                l.verity.hash_offset,
                &l.tree,
                &mut written,
            )?;
        }
        if let (Some(path), Some(p)) = (input.boot_image, &toc.boot_image) {
            let mut src = File::open(path).map_err(io(path))?;
            f.seek(SeekFrom::Start(p.offset)).map_err(io(&tmp))?;
            let copied = std::io::copy(&mut (&mut src).take(p.size), &mut f).map_err(io(path))?;
            if copied != p.size {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while read");
                return Err(BundleBuildError::Io { path: path.to_owned(), error: e });
            }
        }
        // Hash each part as written (read back from the file).
        toc.manifest.sha256 = Digest::of(input.envelope);
        for (i, (l, lp)) in layers.iter().zip(toc.layers.iter_mut()).enumerate() {
            let (whole, image) = hash_range(&mut f, &tmp, lp.part.offset, lp.part.size, l.size)?;
            if image != l.digest {
                return Err(BundleBuildError::LayerImage(Box::new(LayerImageError {
                    path: out.to_owned(),
                    part: PartName::Layer(i),
                    layer: l.name.clone(),
                    expected: l.digest,
                    found: image,
                })));
            }
            lp.part.sha256 = whole;
        }
        if let Some(p) = &mut toc.boot_image {
            p.sha256 = hash_range(&mut f, &tmp, p.offset, p.size, 0)?.0;
        }
        let mut sealed = bundle::toc_signed_bytes(&toc, public).map_err(format(out))?;
        let signature = sign(&sealed).map_err(BundleBuildError::Sign)?;
        sealed.extend_from_slice(&signature);
        // What a device will check: the signature, and every bound.
        bundle::open_toc(&sealed, &[*public]).map_err(format(out))?;
        f.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
        f.write_all(&sealed).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let omitted = bundle::check_manifest(&toc, m).map_err(format(out))?;
        Ok(BuiltBundle { toc: toc.clone(), toc_len: sealed.len(), toc_bytes: sealed, omitted })
    })();
    match result {
        Ok(b) => {
            fs::rename(&tmp, out).map_err(io(out))?;
            Ok(b)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Path of a part's blob in a split bundle: `blobs/sha256/<hex>`.
pub fn blob_path(dir: &Path, sha256: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(sha256.to_string())
}

/// File name of the TOC in a split bundle.
pub const SPLIT_TOC: &str = "toc";

/// Write the parts of the bundle file `bundle` (whose TOC is `toc`, `toc_bytes`)
/// as content-addressed files under `dir`: `dir/toc` (the signed TOC) and
/// `dir/blobs/sha256/<hex>` per part, servable by any static HTTP server.
/// Returns the files written.
pub fn write_split(bundle: &Path, toc: &Toc, toc_bytes: &[u8], dir: &Path) -> Result<Vec<PathBuf>, BundleBuildError> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let mut f = File::open(bundle).map_err(io(bundle))?;
    let mut files = Vec::new();
    for (_, p) in toc.parts() {
        let path = blob_path(dir, &p.sha256);
        let tmp = partial(&path);
        f.seek(SeekFrom::Start(p.offset)).map_err(io(bundle))?;
        let mut w = File::create(&tmp).map_err(io(&tmp))?;
        let copied = std::io::copy(&mut (&mut f).take(p.size), &mut w).map_err(io(&tmp))?;
        if copied != p.size {
            let _ = fs::remove_file(&tmp);
            let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "shorter than its table of contents");
            return Err(BundleBuildError::Io { path: bundle.to_owned(), error: e });
        }
        w.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        files.push(path);
    }
    // The TOC last: a directory with a TOC has every blob it names.
    let path = dir.join(SPLIT_TOC);
    let tmp = partial(&path);
    fs::write(&tmp, toc_bytes).and_then(|()| fs::rename(&tmp, &path)).map_err(io(&path))?;
    files.push(path);
    Ok(files)
}

/// Where a bundle's parts are read from: the single file, or a split
/// directory.
#[derive(Debug)]
enum Source {
    File(File, PathBuf),
    Dir(PathBuf),
}

impl Source {
    /// The bundle at `path` (a file, or a directory holding `toc`) and its
    /// head (the first [`bundle::HEAD_LEN`] bytes, or the whole TOC file).
    fn open(path: &Path) -> Result<(Source, Vec<u8>, Option<u64>), BundleBuildError> {
        if path.is_dir() {
            let toc = path.join(SPLIT_TOC);
            let mut head = Vec::new();
            File::open(&toc)
                .map_err(io(&toc))?
                .take(bundle::HEAD_LEN as u64)
                .read_to_end(&mut head)
                .map_err(io(&toc))?;
            return Ok((Source::Dir(path.to_owned()), head, None));
        }
        let mut f = File::open(path).map_err(io(path))?;
        let len = f.metadata().map_err(io(path))?.len();
        let mut head = Vec::new();
        (&mut f).take(bundle::HEAD_LEN as u64).read_to_end(&mut head).map_err(io(path))?;
        Ok((Source::File(f, path.to_owned()), head, Some(len)))
    }

    /// A reader of the part's bytes and the file it reads (a blob of
    /// another length is found by the length check of whoever reads it).
    fn part(&mut self, p: &Part) -> Result<(Box<dyn Read + '_>, PathBuf), BundleBuildError> {
        match self {
            Source::File(f, path) => {
                f.seek(SeekFrom::Start(p.offset)).map_err(io(path))?;
                Ok((Box::new(f.take(p.size)), path.clone()))
            }
            Source::Dir(dir) => {
                let path = blob_path(dir, &p.sha256);
                let f = File::open(&path).map_err(io(&path))?;
                // One byte more, to notice a longer blob.
                Ok((Box::new(f.take(p.size.saturating_add(1))), path))
            }
        }
    }
}

/// A bundle as read back.
#[derive(Debug, Clone)]
pub struct ReadBundle {
    /// Who claims to have signed the TOC.
    pub key_id: KeyId,
    /// The TOC.
    pub toc: Toc,
    /// Bytes of the TOC envelope.
    pub toc_len: usize,
    /// The manifest part's envelope.
    pub envelope: Vec<u8>,
}

/// Read a bundle's TOC and manifest part without checking signatures or
/// part digests (for `inspect`); the TOC's bounds are checked.
pub fn read_bundle(path: &Path) -> Result<ReadBundle, BundleBuildError> {
    let (mut src, head, _) = Source::open(path)?;
    let u = bundle::read_toc(&head).map_err(format(path))?;
    let envelope = read_manifest_part(&mut src, &u.toc)?;
    Ok(ReadBundle { key_id: u.key_id, toc: u.toc, toc_len: u.len, envelope })
}

fn read_manifest_part(src: &mut Source, toc: &Toc) -> Result<Vec<u8>, BundleBuildError> {
    let mut bytes = Vec::new();
    let (r, at) = src.part(&toc.manifest)?;
    // At most one byte more than the TOC says (a longer blob is refused by
    // the length check).
    r.take(bundle::MAX_MANIFEST_PART + 1).read_to_end(&mut bytes).map_err(io(&at))?;
    Ok(bytes)
}

/// What [`verify_bundle`] found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The TOC, its signature verified.
    pub toc: Toc,
    /// Who signed the TOC.
    pub key_id: KeyId,
    /// Bytes of the TOC envelope.
    pub toc_len: usize,
    /// Who signed the manifest.
    pub manifest_key_id: KeyId,
    /// The manifest, its signature verified.
    pub manifest: Manifest,
    /// Indices of the manifest layers the bundle leaves out.
    pub omitted: Vec<usize>,
}

/// Check a bundle (file or split directory) against `trusted` keys: the
/// TOC's signature and bounds, the file's length, the manifest part's
/// sha256 and signature, that the TOC and manifest agree, every part's
/// length and sha256, and every layer part's image against the layer's
/// digest. The first problem is the error.
pub fn verify_bundle(path: &Path, trusted: &[PublicKey]) -> Result<Verified, BundleBuildError> {
    let (mut src, head, len) = Source::open(path)?;
    let toc = bundle::open_toc(&head, trusted).map_err(format(path))?;
    let u = bundle::read_toc(&head).map_err(format(path))?;
    let (key_id, toc_len) = (u.key_id, u.len);
    if let Some(len) = len {
        toc.check_len(len).map_err(format(path))?;
    }
    let envelope = read_manifest_part(&mut src, &toc)?;
    let (manifest, omitted) = bundle::open_manifest_part(&toc, &envelope, trusted).map_err(format(path))?;
    let manifest_key_id = Envelope::parse(&envelope).map(|e| e.key_id).map_err(|_| {
        let error = BundleError::Manifest(cairn_format::envelope::OpenError::Decode);
        BundleBuildError::Format { path: path.to_owned(), error }
    })?;
    let mut parts: Vec<(PartName, Part, u64, Option<&cairn_format::manifest::Layer>)> = Vec::new();
    for (i, lp) in toc.layers.iter().enumerate() {
        let layer = manifest.layers.iter().find(|l| l.digest == lp.digest);
        parts.push((PartName::Layer(i), lp.part, layer.map_or(0, |l| l.size), layer));
    }
    if let Some(b) = toc.boot_image {
        parts.push((PartName::BootImage, b, 0, None));
    }
    for (name, p, prefix, layer) in parts {
        let (mut r, at) = src.part(&p)?;
        let (whole, head, done) = hash_stream(&mut r, &at, prefix)?;
        if done != p.size {
            let error = BundleError::PartLength { part: name, expected: p.size, found: done };
            return Err(BundleBuildError::Format { path: at, error });
        }
        bundle::check_digest(name, &p, whole).map_err(format(&at))?;
        if let Some(l) = layer {
            let found = head;
            if found != l.digest {
                return Err(BundleBuildError::LayerImage(Box::new(LayerImageError {
                    path: at,
                    part: name,
                    layer: l.name.clone(),
                    expected: l.digest,
                    found,
                })));
            }
        }
    }
    Ok(Verified { toc, key_id, toc_len, manifest_key_id, manifest, omitted })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::assemble;
    use std::collections::BTreeMap;

    const APPLIANCE: &str = r#"appliance = "bundle-test"
version = VERSION
compatible = "cairn-test"

[[layer]]
name = "base"
source = "base"

[[layer]]
name = "app"
source = "app"

[[container]]
name = "app"
layers = ["base", "app"]
argv = ["/bin/app"]
"#;

    /// Build the test appliance at `version` in `dir`, with `app`'s file
    /// holding `app`.
    fn build(dir: &Path, version: u64, app: &str) -> assemble::BuiltAppliance {
        fs::create_dir_all(dir.join("base/bin")).unwrap();
        fs::write(dir.join("base/bin/sh"), "base layer\n".repeat(500)).unwrap();
        // Incompressible: the base image spans blocks, so it has a hash tree.
        let mut x = 1u32;
        let noise: Vec<u8> = (0..40_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 24) as u8
            })
            .collect();
        fs::write(dir.join("base/noise"), noise).unwrap();
        fs::create_dir_all(dir.join("app/bin")).unwrap();
        fs::write(dir.join("app/bin/app"), app).unwrap();
        let toml = APPLIANCE.replace("VERSION", &version.to_string());
        fs::write(dir.join("appliance.toml"), toml).unwrap();
        let key = SigningKey::from_bytes(&[1; 32]);
        assemble::build_appliance(&dir.join("appliance.toml"), &BTreeMap::new(), &key, &dir.join("layers")).unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn input<'a>(app: &'a assemble::BuiltAppliance, base: Option<&'a Manifest>) -> BundleInput<'a> {
        BundleInput { envelope: &app.envelope, manifest: &app.manifest, layers: &app.layers, base, boot_image: None }
    }

    #[test]
    fn a_full_bundle_carries_every_layer_as_its_partition_and_verifies() {
        let d = tempfile::tempdir().unwrap();
        let app = build(d.path(), 1, "v1");
        let out = d.path().join("b.cairn");
        let b = write_bundle(&input(&app, None), &key(), &out).unwrap();
        assert_eq!(b.toc.layers.len(), 2);
        assert!(!app.layers[0].tree.is_empty() && app.layers[0].size.is_multiple_of(4096));
        assert!(b.omitted.is_empty());
        let bytes = fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, b.toc.total_size);
        for (_, p) in b.toc.parts() {
            assert_eq!(p.offset % 4096, 0);
        }
        // The first part sits right after the TOC, 4 KiB aligned.
        assert_eq!(b.toc.manifest.offset, bundle::align_up(b.toc_len as u64).unwrap());
        let mp = b.toc.manifest;
        assert_eq!(&bytes[mp.offset as usize..mp.end() as usize], &app.envelope[..]);
        // A layer part is exactly the disk's layer partition: image,
        // zeroes to hash_offset, tree.
        for (l, lp) in app.layers.iter().zip(&b.toc.layers) {
            let part = &bytes[lp.part.offset as usize..lp.part.end() as usize];
            let image = fs::read(l.path.as_ref().unwrap()).unwrap();
            assert_eq!(&part[..l.size as usize], &image[..l.size as usize]);
            assert!(part[l.size as usize..l.verity.hash_offset as usize].iter().all(|b| *b == 0));
            assert_eq!(&part[l.verity.hash_offset as usize..], &l.tree[..]);
            assert_eq!(lp.part.size, l.verity.partition_bytes());
        }
        let pk = key().verifying_key().to_bytes();
        let v = verify_bundle(&out, &[pk]).unwrap();
        assert_eq!(v.manifest, app.manifest);
    }

    #[test]
    fn a_layer_part_is_the_layer_partition_of_an_assembled_disk() {
        let d = tempfile::tempdir().unwrap();
        let app = build(d.path(), 1, "v1");
        let out = d.path().join("b.cairn");
        let b = write_bundle(&input(&app, None), &key(), &out).unwrap();
        let disk = d.path().join("disk.img");
        let opts = assemble::DiskOptions { layer_slot_bytes: 1 << 20, ..Default::default() };
        let layout = assemble::assemble_disk(&app, &disk, opts, None).unwrap();
        let (bundle_bytes, disk_bytes) = (fs::read(&out).unwrap(), fs::read(&disk).unwrap());
        for (i, lp) in b.toc.layers.iter().enumerate() {
            let name = format!("cairn-layer-{:02}", i + 1);
            let p = layout.partitions.iter().find(|p| p.name == name).unwrap();
            let slot = &disk_bytes[p.offset_bytes as usize..(p.offset_bytes + p.size_bytes) as usize];
            let part = &bundle_bytes[lp.part.offset as usize..lp.part.end() as usize];
            // The part is the partition's head; the rest of the slot is zero.
            assert_eq!(&slot[..part.len()], part, "{name}");
            assert!(slot[part.len()..].iter().all(|b| *b == 0), "{name}");
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let app = build(d.path(), 1, "v1");
        let (a, b) = (d.path().join("a.cairn"), d.path().join("b.cairn"));
        write_bundle(&input(&app, None), &key(), &a).unwrap();
        write_bundle(&input(&app, None), &key(), &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        // And the whole appliance built again elsewhere.
        let d2 = tempfile::tempdir().unwrap();
        let app2 = build(d2.path(), 1, "v1");
        let c = d2.path().join("c.cairn");
        write_bundle(&input(&app2, None), &key(), &c).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&c).unwrap());
    }

    #[test]
    fn a_thin_bundle_carries_only_what_the_base_lacks() {
        let d = tempfile::tempdir().unwrap();
        let v1 = build(&d.path().join("v1"), 1, "v1");
        let v2 = build(&d.path().join("v2"), 2, "v2");
        let out = d.path().join("thin.cairn");
        let b = write_bundle(&input(&v2, Some(&v1.manifest)), &key(), &out).unwrap();
        assert_eq!(b.toc.layers.len(), 1);
        assert_eq!(b.toc.layers[0].digest, v2.manifest.layers[1].digest);
        assert_eq!(b.toc.base_version, Some(1));
        assert_eq!(b.omitted, vec![0]);
        let pk = key().verifying_key().to_bytes();
        assert_eq!(verify_bundle(&out, &[pk]).unwrap().omitted, vec![0]);
        // A base that is not older, or for another product, is refused.
        let e = write_bundle(&input(&v1, Some(&v2.manifest)), &key(), &out).unwrap_err();
        assert_eq!(e.to_string(), "the base manifest's version 2 is not older than the manifest's 1");
        let mut other = v1.manifest.clone();
        other.compatible = "router-v2".into();
        let e = write_bundle(&input(&v2, Some(&other)), &key(), &out).unwrap_err();
        assert_eq!(e.to_string(), "the base manifest is for \"router-v2\", the manifest for \"cairn-test\"");
    }

    #[test]
    fn a_signed_part_whose_image_is_not_the_layer_is_found() {
        // A TOC signer who signs the sha256 of other bytes than the layer's:
        // the device would find out at the first verity read; verify finds
        // it now.
        let d = tempfile::tempdir().unwrap();
        let app = build(d.path(), 1, "v1");
        let out = d.path().join("b.cairn");
        let b = write_bundle(&input(&app, None), &key(), &out).unwrap();
        let mut bytes = fs::read(&out).unwrap();
        let mut toc = b.toc.clone();
        let p = toc.layers[1].part;
        bytes[p.offset as usize + 10] ^= 1;
        toc.layers[1].part.sha256 = Digest::of(&bytes[p.offset as usize..p.end() as usize]);
        let sealed = bundle::seal_toc(&toc, &key()).unwrap();
        assert_eq!(sealed.len(), b.toc_len);
        bytes[..sealed.len()].copy_from_slice(&sealed);
        fs::write(&out, &bytes).unwrap();
        let pk = key().verifying_key().to_bytes();
        let e = verify_bundle(&out, &[pk]).unwrap_err();
        let BundleBuildError::LayerImage(e) = e else { panic!("{e}") };
        assert_eq!((e.part, e.layer.as_str(), e.expected), (PartName::Layer(1), "app", app.layers[1].digest));
    }

    /// A stand-in for a unified kernel image: a minimal PE with the
    /// sections the bundle checks.
    fn update_image(m: &Manifest, cmdline: &str) -> Vec<u8> {
        let osrel = crate::uki::os_release(&m.compatible, m.version, "update");
        let sections = [
            crate::pe::NewSection { name: ".osrel", data: osrel.as_bytes() },
            crate::pe::NewSection { name: ".cmdline", data: cmdline.as_bytes() },
        ];
        crate::pe::add_sections(&crate::pe::minimal_image(b"\xc3"), &sections).unwrap()
    }

    #[test]
    fn a_boot_image_must_be_this_manifests_and_name_no_slot() {
        let d = tempfile::tempdir().unwrap();
        let app = build(d.path(), 1, "v1");
        let m = &app.manifest;
        assert_eq!(check_boot_image(&update_image(m, "console=ttyS0 quiet"), m), Ok(()));
        let slotted = check_boot_image(&update_image(m, "console=ttyS0 cairn.slot=b"), m).unwrap_err();
        assert!(slotted.contains("cairn.slot="), "{slotted}");
        let mut older = m.clone();
        older.version += 1;
        let e = check_boot_image(&update_image(m, ""), &older).unwrap_err();
        assert!(e.contains("IMAGE_VERSION=1"), "{e}");
        let mut other = m.clone();
        other.compatible = "router-v2".into();
        let e = check_boot_image(&update_image(m, ""), &other).unwrap_err();
        assert!(e.contains("the manifest is for router-v2"), "{e}");
        let e = check_boot_image(b"MZ not really a PE", m).unwrap_err();
        assert!(e.starts_with("not a PE image"), "{e}");
        // And `write_bundle` refuses one.
        let boot = d.path().join("boot.efi");
        fs::write(&boot, update_image(m, "cairn.slot=a")).unwrap();
        let mut i = input(&app, None);
        i.boot_image = Some(&boot);
        let e = write_bundle(&i, &key(), &d.path().join("b.cairn")).unwrap_err();
        assert!(matches!(e, BundleBuildError::BootImage { .. }), "{e}");
    }

    #[test]
    fn a_split_bundle_holds_the_same_parts_by_digest_and_verifies() {
        let d = tempfile::tempdir().unwrap();
        let app = build(d.path(), 1, "v1");
        let out = d.path().join("b.cairn");
        let boot = d.path().join("boot.efi");
        fs::write(&boot, update_image(&app.manifest, "console=ttyS0")).unwrap();
        let mut i = input(&app, None);
        i.boot_image = Some(&boot);
        let b = write_bundle(&i, &key(), &out).unwrap();
        assert!(b.toc.boot_image.is_some());
        let split = d.path().join("split");
        let files = write_split(&out, &b.toc, &b.toc_bytes, &split).unwrap();
        assert_eq!(files.len(), 5);
        let bytes = fs::read(&out).unwrap();
        for (_, p) in b.toc.parts() {
            let blob = fs::read(blob_path(&split, &p.sha256)).unwrap();
            assert_eq!(&blob[..], &bytes[p.offset as usize..p.end() as usize]);
            assert_eq!(Digest::of(&blob), p.sha256);
        }
        assert_eq!(fs::read(split.join("toc")).unwrap(), &bytes[..b.toc_len]);
        let pk = key().verifying_key().to_bytes();
        verify_bundle(&split, &[pk]).unwrap();
        // A blob changed on the server is found.
        let lp = b.toc.layers[1].part;
        let blob = blob_path(&split, &lp.sha256);
        let mut data = fs::read(&blob).unwrap();
        data[100] ^= 1;
        fs::write(&blob, &data).unwrap();
        let e = verify_bundle(&split, &[pk]).unwrap_err();
        assert!(e.to_string().contains("layers[1]: sha256:"), "{e}");
    }
}
