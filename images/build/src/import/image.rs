//! Container images: `docker save` archives and OCI image layouts.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cairn_format::digest::Digest;
use serde::Deserialize;

use super::archive::{normalise, Index, JSON_MAX};
use super::config::{ImageConfig, ImageInfo, ImageLayerInfo};
use super::stream::Tap;
use super::tarlayer::{read_layer, Budget, Target, Whiteouts};
use super::{ImportError, ImportOptions, ImportedLayer};

/// How deep image indexes may nest.
const MAX_NESTING: usize = 8;

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
const LAYER_TYPES: [&str; 10] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// One image of a `docker save` `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn show(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Whether this platform is what `wanted` asks for (a missing variant
    /// asks for any; arm64 without a variant is v8).
    fn matches(&self, wanted: &Platform) -> bool {
        let variant = self.variant.clone().or_else(|| (self.architecture == "arm64").then(|| "v8".to_owned()));
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || variant == wanted.variant)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    rootfs: Option<RootFs>,
    #[serde(default)]
    config: Option<ImageConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigDoc {
    fn platform(&self) -> Option<Platform> {
        Some(Platform { os: self.os.clone()?, architecture: self.architecture.clone()?, variant: self.variant.clone() })
    }
}

/// A file of an image and its size.
type Opened<'s> = Option<(Box<dyn Read + 's>, u64)>;

/// Where an image's files are.
pub(super) trait Store {
    /// Names the source in errors.
    fn label(&self) -> &str;
    /// The file at `rel` (a normalised relative path) and its size, if it
    /// is there.
    fn open(&self, rel: &[u8]) -> Result<Opened<'_>, ImportError>;
}

/// An OCI layout directory.
pub(super) struct DirStore {
    root: PathBuf,
    label: String,
}

impl DirStore {
    /// The layout in directory `root`.
    pub(super) fn new(root: &Path, label: &str) -> Self {
        DirStore { root: root.to_owned(), label: label.to_owned() }
    }
}

impl Store for DirStore {
    fn label(&self) -> &str {
        &self.label
    }

    /// Every directory on the way must be a real directory and the file a
    /// regular file; no symlink is followed.
    fn open(&self, rel: &[u8]) -> Result<Opened<'_>, ImportError> {
        let rel = String::from_utf8_lossy(rel).into_owned();
        let refuse = |what: &str| ImportError::Image { archive: self.label.clone(), reason: format!("{rel}: {what}") };
        let mut path = self.root.clone();
        let parts: Vec<&str> = rel.split('/').collect();
        let Some((last, dirs)) = parts.split_last() else { return Ok(None) };
        for d in dirs {
            path.push(d);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refuse("a directory on the way is a symlink or not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(ImportError::Io { path, error }),
            }
        }
        path.push(last);
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refuse("a symlink")),
            Err(error) => return Err(ImportError::Io { path, error }),
        };
        let md = file.metadata().map_err(|error| ImportError::Io { path: path.clone(), error })?;
        if !md.is_file() {
            return Err(refuse("not a regular file"));
        }
        Ok(Some((Box::new(file) as Box<dyn Read>, md.len())))
    }
}

/// An image archive (a tar of an OCI layout, or `docker save`).
pub(super) struct TarStore<'i> {
    index: &'i Index,
}

impl<'i> TarStore<'i> {
    /// The files of the indexed archive.
    pub(super) fn new(index: &'i Index) -> Self {
        TarStore { index }
    }
}

impl Store for TarStore<'_> {
    fn label(&self) -> &str {
        self.index.label()
    }

    fn open(&self, rel: &[u8]) -> Result<Opened<'_>, ImportError> {
        Ok(self.index.open(rel).map(|(r, size)| (Box::new(r) as Box<dyn Read>, size)))
    }
}

/// The hex of a `sha256:<64 lowercase hex>` digest.
fn digest_hex<'d>(store: &dyn Store, digest: &'d str) -> Result<&'d str, ImportError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(h),
        _ => Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("unsupported or malformed digest {digest:?} (sha256 only)"),
        }),
    }
}

fn blob_path(hex: &str) -> Vec<u8> {
    format!("blobs/sha256/{hex}").into_bytes()
}

/// Read a small file of the store whole.
fn read_all(store: &dyn Store, rel: &[u8], shown: &str) -> Result<Vec<u8>, ImportError> {
    let (r, size) = store
        .open(rel)?
        .ok_or_else(|| ImportError::MissingBlob { archive: store.label().to_owned(), what: shown.to_owned() })?;
    if size > JSON_MAX {
        return Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("{shown} is larger than {JSON_MAX} bytes"),
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    r.take(JSON_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|error| ImportError::Io { path: store.label().into(), error })?;
    Ok(buf)
}

/// Read the blob `desc` names, checking its size and digest.
fn read_blob(store: &dyn Store, desc: &Descriptor) -> Result<Vec<u8>, ImportError> {
    let h = digest_hex(store, &desc.digest)?;
    let bytes = read_all(store, &blob_path(h), &desc.digest)?;
    check_blob(store, &desc.digest, h, Some(desc.size), &bytes)?;
    Ok(bytes)
}

fn check_blob(
    store: &dyn Store,
    shown: &str,
    hex_want: &str,
    size: Option<u64>,
    bytes: &[u8],
) -> Result<(), ImportError> {
    if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(ImportError::BlobSize {
            archive: store.label().to_owned(),
            blob: shown.to_owned(),
            expected: size,
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(bytes).to_string();
    if actual != hex_want {
        return Err(ImportError::BlobDigest { archive: store.label().to_owned(), blob: shown.to_owned(), actual });
    }
    Ok(())
}

fn parse<'a, T: Deserialize<'a>>(store: &dyn Store, what: &str, bytes: &'a [u8]) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|error| ImportError::Json {
        archive: store.label().to_owned(),
        member: what.to_owned(),
        error,
    })
}

fn parse_platform(store: &dyn Store, s: &str) -> Result<Platform, ImportError> {
    let parts: Vec<&str> = s.split('/').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("platform {s:?} is not os/arch[/variant]"),
        });
    }
    Ok(Platform {
        os: parts[0].to_owned(),
        architecture: parts[1].to_owned(),
        variant: parts.get(2).map(|v| (*v).to_owned()),
    })
}

/// An image manifest an index lists.
struct Candidate {
    desc: Descriptor,
    platform: Option<Platform>,
    present: bool,
}

impl Candidate {
    fn show(&self) -> String {
        match &self.platform {
            Some(p) => p.show(),
            None => format!("(platform not given: {})", self.desc.digest),
        }
    }
}

/// What a descriptor (or, without a media type, the blob itself) is.
#[derive(PartialEq, Eq)]
enum DocKind {
    Index,
    Manifest,
    Other,
}

fn doc_kind(media_type: Option<&str>, blob: Option<&[u8]>) -> DocKind {
    match media_type {
        Some(t) if INDEX_TYPES.contains(&t) => DocKind::Index,
        Some(t) if MANIFEST_TYPES.contains(&t) => DocKind::Manifest,
        Some(_) => DocKind::Other,
        None => {
            let Some(v) = blob.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()) else {
                return DocKind::Other;
            };
            if let Some(t) = v.get("mediaType").and_then(|t| t.as_str()) {
                return doc_kind(Some(t), None);
            }
            if v.get("manifests").is_some() {
                DocKind::Index
            } else if v.get("layers").is_some() && v.get("config").is_some() {
                DocKind::Manifest
            } else {
                DocKind::Other
            }
        }
    }
}

/// Every image manifest reachable from `descs` (nested indexes followed).
fn collect(store: &dyn Store, descs: &[Descriptor], depth: usize, out: &mut Vec<Candidate>) -> Result<(), ImportError> {
    if depth > MAX_NESTING {
        return Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("image indexes nested more than {MAX_NESTING} deep"),
        });
    }
    for d in descs {
        let h = digest_hex(store, &d.digest)?;
        let present = store.open(&blob_path(h))?.is_some();
        let blob = if d.media_type.is_none() && present { Some(read_blob(store, d)?) } else { None };
        match doc_kind(d.media_type.as_deref(), blob.as_deref()) {
            DocKind::Index if present => {
                let bytes = match blob {
                    Some(b) => b,
                    None => read_blob(store, d)?,
                };
                let doc: IndexDoc = parse(store, &d.digest, &bytes)?;
                collect(store, &doc.manifests, depth + 1, out)?;
            }
            DocKind::Manifest => out.push(Candidate { desc: d.clone(), platform: d.platform.clone(), present }),
            _ => {}
        }
    }
    Ok(())
}

/// The platform of an image manifest without one in its descriptor: from
/// its config.
fn platform_from_config(store: &dyn Store, desc: &Descriptor) -> Result<Option<Platform>, ImportError> {
    let manifest: ManifestDoc = parse(store, &desc.digest, &read_blob(store, desc)?)?;
    let config: ConfigDoc = parse(store, &manifest.config.digest, &read_blob(store, &manifest.config)?)?;
    Ok(config.platform())
}

fn is_attestation(c: &Candidate) -> bool {
    c.platform.as_ref().is_some_and(|p| p.os == "unknown")
        || c.desc
            .annotations
            .as_ref()
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some_and(|t| t == "attestation-manifest")
}

/// Pick the image manifest to import.
fn choose(store: &dyn Store, mut cands: Vec<Candidate>, wanted: Option<&str>) -> Result<Descriptor, ImportError> {
    cands.retain(|c| !is_attestation(c));
    let label = store.label().to_owned();
    if cands.is_empty() {
        return Err(ImportError::Image { archive: label, reason: "the image index lists no image manifest".into() });
    }
    let missing = |c: &Candidate| ImportError::MissingBlob { archive: label.clone(), what: c.desc.digest.clone() };
    let Some(wanted_s) = wanted else {
        if cands.len() == 1 {
            let c = cands.remove(0);
            return if c.present { Ok(c.desc) } else { Err(missing(&c)) };
        }
        // A partial copy of a multi-platform image: the one that is here.
        let here: Vec<&Candidate> = cands.iter().filter(|c| c.present).collect();
        if here.len() == 1 {
            return Ok(here[0].desc.clone());
        }
        return Err(ImportError::ChoosePlatform {
            archive: label,
            available: cands.iter().map(Candidate::show).collect(),
        });
    };
    let wanted = parse_platform(store, wanted_s)?;
    for c in cands.iter_mut().filter(|c| c.platform.is_none() && c.present) {
        c.platform = platform_from_config(store, &c.desc)?;
    }
    let mut matching: Vec<Candidate> = Vec::new();
    let mut others = Vec::new();
    for c in cands {
        if c.platform.as_ref().is_some_and(|p| p.matches(&wanted)) {
            matching.push(c);
        } else {
            others.push(c.show());
        }
    }
    if matching.len() > 1 && matching.iter().filter(|c| c.present).count() == 1 {
        matching.retain(|c| c.present);
    }
    match matching.len() {
        0 => Err(ImportError::NoSuchPlatform { archive: label, wanted: wanted_s.to_owned(), available: others }),
        1 => {
            let c = matching.remove(0);
            if c.present {
                Ok(c.desc)
            } else {
                Err(missing(&c))
            }
        }
        _ => Err(ImportError::ChoosePlatform {
            archive: label,
            available: matching.iter().map(Candidate::show).collect(),
        }),
    }
}

/// One layer to read: where, and what to check it against.
struct LayerRef {
    /// Path in the store.
    path: Vec<u8>,
    /// Names it in messages (digest or archive path).
    shown: String,
    /// The sha256 (hex) it must have, if known.
    digest: Option<String>,
    /// The size it must have, if known.
    size: Option<u64>,
    /// Its descriptor's media type and annotations (OCI).
    media_type: Option<String>,
    annotations: BTreeMap<String, String>,
}

/// The error to report when reading layer `l` failed with `e`: a digest
/// mismatch if the blob is not what its descriptor says (so a damaged blob
/// is reported as such, not as whatever its damage looks like).
fn blame_blob(store: &dyn Store, l: &LayerRef, e: ImportError) -> ImportError {
    let Some(want) = &l.digest else { return e };
    let Ok(Some((r, _))) = store.open(&l.path) else { return e };
    let mut tap = Tap::new(r);
    if io::copy(&mut tap, &mut io::sink()).is_err() {
        return e;
    }
    let actual = Digest(tap.finish().0).to_string();
    if actual == *want {
        e
    } else {
        ImportError::BlobDigest { archive: store.label().to_owned(), blob: l.shown.clone(), actual }
    }
}

/// Read the layers (lowest first) into trees, each with `info` (the
/// image's provenance, its layers filled in here).
fn import_layers(
    store: &dyn Store,
    layers: &[LayerRef],
    diff_ids: &[String],
    opts: &ImportOptions,
    budget: &mut Budget,
    mut info: ImageInfo,
) -> Result<Vec<ImportedLayer>, ImportError> {
    let label = store.label().to_owned();
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(ImportError::Image {
            archive: label,
            reason: format!("the image config lists {} diff_ids for {} layers", diff_ids.len(), layers.len()),
        });
    }
    let width = layers.len().to_string().len().max(2);
    let mut out = Vec::new();
    let mut flat = if opts.flatten { Some(Target::new()?) } else { None };
    for (i, l) in layers.iter().enumerate() {
        let layer_label = format!("{label} layer {} of {} ({})", i + 1, layers.len(), l.shown);
        let (mut r, size) = store
            .open(&l.path)?
            .ok_or_else(|| ImportError::MissingBlob { archive: label.clone(), what: l.shown.clone() })?;
        if let Some(expected) = l.size.filter(|s| *s != size) {
            return Err(ImportError::BlobSize { archive: label, blob: l.shown.clone(), expected, actual: size });
        }
        let mut own = None;
        let (target, mode) = match &mut flat {
            Some(t) => (t, Whiteouts::Apply),
            None => (own.insert(Target::new()?), Whiteouts::Overlay),
        };
        let digests = match read_layer(&mut r, &layer_label, target, mode, budget) {
            Ok(d) => d,
            Err(e) => return Err(blame_blob(store, l, e)),
        };
        if digests.raw_len != size {
            return Err(ImportError::BlobSize {
                archive: label,
                blob: l.shown.clone(),
                expected: size,
                actual: digests.raw_len,
            });
        }
        let raw_hex = Digest(digests.raw).to_string();
        if l.digest.as_ref().is_some_and(|d| *d != raw_hex) {
            return Err(ImportError::BlobDigest { archive: label, blob: l.shown.clone(), actual: raw_hex });
        }
        let diff_id = format!("sha256:{}", Digest(digests.tar));
        if let Some(expected) = diff_ids.get(i) {
            if *expected != diff_id {
                let actual = Digest(digests.tar).to_string();
                return Err(ImportError::DiffId { archive: layer_label, expected: expected.clone(), actual });
            }
        }
        info.layers.push(ImageLayerInfo {
            digest: l.digest.is_some().then(|| format!("sha256:{raw_hex}")),
            diff_id,
            media_type: l.media_type.clone(),
            annotations: l.annotations.clone(),
        });
        if let Some(own) = own {
            out.push(ImportedLayer {
                name: format!("{:0width$}-{}", i + 1, &raw_hex[..12]),
                source_digest: Some(format!("sha256:{raw_hex}")),
                tree: own.finish()?,
                image: None,
            });
        }
    }
    if let Some(t) = flat {
        out.push(ImportedLayer { name: "flat".into(), source_digest: None, tree: t.finish()?, image: None });
    }
    for l in &mut out {
        l.image = Some(info.clone());
    }
    Ok(out)
}

/// The annotation naming an entry of an OCI layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The entry of `index.json` whose ref name is `tag` (`oci:DIR:TAG`).
fn by_ref_name(store: &dyn Store, manifests: &[Descriptor], tag: &str) -> Result<Descriptor, ImportError> {
    let name = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
    let found: Vec<&Descriptor> = manifests.iter().filter(|d| name(d).as_deref() == Some(tag)).collect();
    match found[..] {
        [d] => Ok(d.clone()),
        [] => {
            let names: Vec<String> = manifests.iter().filter_map(name).collect();
            Err(ImportError::Image {
                archive: store.label().to_owned(),
                reason: format!(
                    "no image tagged {tag:?} in index.json; it has: {}",
                    if names.is_empty() { "no tagged image".to_owned() } else { names.join(", ") }
                ),
            })
        }
        _ => Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("index.json tags {} entries {tag:?}", found.len()),
        }),
    }
}

/// The entry of a `docker save` manifest.json that `reference` names:
/// `@N` (from 0), or one of its RepoTags (`name[:tag]`, docker.io and
/// library/ prefixes optional, `:latest` implied).
fn docker_entry<'e>(entries: &'e [DockerEntry], reference: &str, label: &str) -> Result<&'e DockerEntry, ImportError> {
    let err = |reason: String| ImportError::Image { archive: label.to_owned(), reason };
    if let Some(n) = reference.strip_prefix('@') {
        let i: usize = n.parse().map_err(|_| err(format!("{reference:?} is not @N (an image's index from 0)")))?;
        return entries.get(i).ok_or_else(|| err(format!("{reference}: manifest.json lists {} images", entries.len())));
    }
    let canonical = |r: &str| {
        let r = r.strip_prefix("docker.io/").unwrap_or(r);
        let r = r.strip_prefix("library/").unwrap_or(r);
        let last = r.rsplit('/').next().unwrap_or(r);
        if last.contains(':') || last.contains('@') {
            r.to_owned()
        } else {
            format!("{r}:latest")
        }
    };
    let want = canonical(reference);
    let found: Vec<&DockerEntry> =
        entries.iter().filter(|e| e.repo_tags.iter().flatten().any(|t| canonical(t) == want)).collect();
    match found[..] {
        [e] => Ok(e),
        [] => {
            let tags: Vec<String> = entries.iter().flat_map(|e| e.repo_tags.clone().unwrap_or_default()).collect();
            Err(err(format!("no image tagged {reference:?} in manifest.json; it has: {}", tags.join(", "))))
        }
        _ => Err(err(format!("manifest.json lists {} images tagged {reference:?}", found.len()))),
    }
}

/// Import an OCI image layout.
pub(super) fn import_oci(
    store: &dyn Store,
    opts: &ImportOptions,
    budget: &mut Budget,
) -> Result<Vec<ImportedLayer>, ImportError> {
    let index_bytes = read_all(store, b"index.json", "index.json")?;
    let index: IndexDoc = parse(store, "index.json", &index_bytes)?;
    if index.media_type.as_deref().is_some_and(|t| !INDEX_TYPES.contains(&t)) {
        return Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("index.json has media type {:?}", index.media_type.unwrap_or_default()),
        });
    }
    let top = match &opts.select.tag {
        Some(tag) => vec![by_ref_name(store, &index.manifests, tag)?],
        None => index.manifests,
    };
    let mut cands = Vec::new();
    collect(store, &top, 0, &mut cands)?;
    let desc = choose(store, cands, opts.platform.as_deref())?;
    let manifest: ManifestDoc = parse(store, &desc.digest, &read_blob(store, &desc)?)?;
    if manifest.media_type.as_deref().is_some_and(|t| !MANIFEST_TYPES.contains(&t)) {
        return Err(ImportError::Image {
            archive: store.label().to_owned(),
            reason: format!("manifest {} has media type {:?}", desc.digest, manifest.media_type.unwrap_or_default()),
        });
    }
    let config: ConfigDoc = parse(store, &manifest.config.digest, &read_blob(store, &manifest.config)?)?;
    let mut layers = Vec::new();
    for (i, l) in manifest.layers.iter().enumerate() {
        let media = l.media_type.as_deref().unwrap_or("");
        if !LAYER_TYPES.contains(&media) {
            return Err(ImportError::Image {
                archive: store.label().to_owned(),
                reason: format!("layer {} ({}) has media type {media:?}, which is not a tar layer", i + 1, l.digest),
            });
        }
        let h = digest_hex(store, &l.digest)?;
        layers.push(LayerRef {
            path: blob_path(h),
            shown: l.digest.clone(),
            digest: Some(h.to_owned()),
            size: Some(l.size),
            media_type: l.media_type.clone(),
            annotations: l.annotations.clone().unwrap_or_default(),
        });
    }
    let info = ImageInfo {
        format: "oci".into(),
        manifest_digest: Some(desc.digest.clone()),
        config_digest: Some(manifest.config.digest.clone()),
        annotations: manifest.annotations.clone().unwrap_or_default(),
        config: config.config.clone().unwrap_or_default(),
        ..ImageInfo::default()
    };
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    import_layers(store, &layers, &diff_ids, opts, budget, info)
}

/// The sha256 hex a `docker save` path carries: `blobs/sha256/<hex>` or
/// `<hex>.json` (a config in the older layout).
fn hex_of_path(path: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(path).ok()?;
    let h = s.strip_prefix("blobs/sha256/").or_else(|| s.strip_suffix(".json"))?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| h.to_owned())
}

/// Import a `docker save` archive.
pub(super) fn import_docker(
    index: &Index,
    entries: Vec<DockerEntry>,
    opts: &ImportOptions,
    budget: &mut Budget,
) -> Result<Vec<ImportedLayer>, ImportError> {
    let store = TarStore::new(index);
    let label = index.label().to_owned();
    let entry = match (&opts.select.tag, &entries[..]) {
        (Some(reference), _) => docker_entry(&entries, reference, &label)?,
        (None, [entry]) => entry,
        (None, _) => {
            let tags: Vec<String> = entries.iter().flat_map(|e| e.repo_tags.clone().unwrap_or_default()).collect();
            return Err(ImportError::Image {
                archive: label,
                reason: format!(
                    "manifest.json lists {} images ({}); name one: docker-archive:FILE:NAME:TAG or \
                     docker-archive:FILE:@N",
                    entries.len(),
                    tags.join(", ")
                ),
            });
        }
    };
    let path = |p: &str| {
        normalise(p.as_bytes()).ok_or_else(|| ImportError::BadPath { archive: label.clone(), member: p.to_owned() })
    };
    let config_path = path(&entry.config)?;
    let config_bytes = read_all(&store, &config_path, &entry.config)?;
    if let Some(h) = hex_of_path(&config_path) {
        check_blob(&store, &entry.config, &h, None, &config_bytes)?;
    }
    let config: ConfigDoc = parse(&store, &entry.config, &config_bytes)?;
    if let Some(wanted_s) = opts.platform.as_deref() {
        let wanted = parse_platform(&store, wanted_s)?;
        let have = config.platform();
        if !have.as_ref().is_some_and(|p| p.matches(&wanted)) {
            return Err(ImportError::NoSuchPlatform {
                archive: label,
                wanted: wanted_s.to_owned(),
                available: have.iter().map(Platform::show).collect(),
            });
        }
    }
    let mut layers = Vec::new();
    for l in &entry.layers {
        let p = path(l)?;
        layers.push(LayerRef {
            digest: hex_of_path(&p),
            path: p,
            shown: l.clone(),
            size: None,
            media_type: None,
            annotations: BTreeMap::new(),
        });
    }
    let info = ImageInfo {
        format: "docker-archive".into(),
        config_digest: hex_of_path(&config_path).map(|h| format!("sha256:{h}")),
        repo_tags: entry.repo_tags.clone().unwrap_or_default(),
        config: config.config.clone().unwrap_or_default(),
        ..ImageInfo::default()
    };
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    import_layers(&store, &layers, &diff_ids, opts, budget, info)
}
