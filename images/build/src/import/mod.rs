//! Reading archives and container images into [`Tree`]s: the sources of
//! `cairn layer build` other than a plain directory.
//!
//! The kind of source is found from its content, never its file name:
//!
//! - a **rootfs tar** (`docker export`, a rootfs tarball), plain, gzip or
//!   zstd: one layer, taken literally. Such a tar is already a whole
//!   filesystem, so a member named `.wh.NAME` in it is an ordinary file of
//!   that name (overlayfs only treats character devices 0/0 as whiteouts,
//!   so it cannot hide anything on the device either);
//! - a **`docker save` archive** (a tar, possibly compressed, holding a
//!   `manifest.json` that lists `Config` and `Layers`): one layer per image
//!   layer, lowest first. When it also holds an OCI layout (Docker 25 and
//!   later write both) `manifest.json` is used, as it lists exactly the
//!   images that were saved;
//! - an **OCI image layout**, a directory with an `oci-layout` file or a tar
//!   of one (with `oci-layout` at the top of the archive): `index.json`,
//!   nested indexes, the image manifest for the chosen platform, its layers.
//!
//! Images give one layer per image layer, named `NN-<first 12 hex digits
//! of the layer blob's sha256>` (`NN` counts from 01, lowest layer first),
//! with OCI whiteouts turned into what overlayfs reads in a lower layer:
//! `.wh.NAME` becomes a character device 0/0 named `NAME` (mode 0, owner
//! 0:0) and `.wh..wh..opq` in a directory becomes the xattr
//! `trusted.overlay.opaque=y` on it. With [`ImportOptions::flatten`] the
//! layers are merged into one tree named `flat` instead, applying the
//! whiteouts as Docker does: a whiteout removes the name from the layers
//! below, an opaque marker hides everything the layers below have in that
//! directory (but not what its own layer puts there, whatever the member
//! order); no whiteout remains. Other `.wh..wh.` names (aufs metadata such
//! as `.wh..wh.plnk`) are skipped, as Docker skips them.
//!
//! Kept per member: numeric owner (user and group names are ignored),
//! `mode & 0o7777`, xattrs (PAX `SCHILY.xattr.*` records), symlinks (target
//! bytes as given), hard links, FIFOs (a FIFO reaches no kernel object
//! outside the container, so it is kept, as Docker, runc and crun keep it),
//! and character devices 0/0 (what overlayfs reads as a whiteout; opening
//! one fails with ENXIO).
//! Modification times are kept (a PAX `mtime` record over the header's;
//! whole seconds, clamped to squashfs's unsigned 32 bits): an image's
//! times are already fixed by its digest, and Python compares a `.pyc`
//! file's recorded source time with the source's. A whiteout has time 0.
//! Directories missing from the archive are
//! created with mode 0755, owner 0:0 and time 0; a later member for such a
//! directory sets its metadata and keeps its children. Regular file data is
//! streamed into one anonymous spool file per tree ([`Tree::spool`]), never
//! held in memory.
//!
//! Verified: every OCI blob (index, manifest, config, layer) against its
//! descriptor's size and sha256 digest; every layer's uncompressed sha256
//! against the image config's `rootfs.diff_ids`; a `docker save` config and
//! layer against the digest its file name carries, where it carries one.
//! Gzip streams are read to their end so their CRC is checked; zstd frame
//! checksums are checked when present.
//!
//! Refused, naming the archive (for an image layer: the source, the layer's
//! position and digest) and the member: absolute member paths (a leading
//! `/`; a leading `./` is normal and stripped), `..` components and
//! invalid names; a hard link whose target is missing, outside the archive
//! or a directory; a symlink whose relative target climbs above the root
//! (absolute targets are normal in a rootfs and resolve inside the
//! container); a member below a file or symlink; the same path twice in one
//! layer (a whiteout counts as a member for its target's name); truncated
//! archives (also a tar without its end-of-archive block) and members;
//! corrupt gzip or zstd streams; xattrs outside the `user.`, `trusted.` and
//! `security.` namespaces (`system.*`: squashfs cannot hold them; also PAX
//! ACL records); every other character device and every block device (a
//! layer's device node would let container root open that device: the
//! device's own boot disk, say; the overlay does not carry `nodev` through);
//! overlayfs xattrs (`trusted.overlay.*`, and `user.overlay.*` which a
//! `userxattr` overlay reads), so redirect, metacopy or origin data from an
//! image is never honoured: the only one written is the importer's own
//! `trusted.overlay.opaque=y` from `.wh..wh..opq`; GNU sparse members and
//! other member types a tar can hold but a layer cannot; a PAX `size`
//! record that differs from the header's size; total file bytes over
//! [`ImportOptions::max_bytes`] (counted over every layer of the source,
//! before writing them to the spool). Reading an OCI layout directory only
//! opens `oci-layout`, `index.json` and `blobs/sha256/<64 hex digits>`
//! built from validated digests, and follows no symlink there. PAX global
//! headers are ignored.
//!
//! Bounded, so a few KiB of gzip cannot demand GiBs of memory or disk: a GNU
//! long-name or long-link header or a PAX extended header (each held in
//! memory whole) over [`EXTENSION_MAX`] is refused from the size its header
//! claims, before it is read, naming it and the member before it; a source
//! with more than [`ImportOptions::max_entries`] members (over all its
//! layers; each costs memory in the tree) is refused. A compressed `docker
//! save` or OCI tar is decompressed to an anonymous temporary file (unlinked
//! from the start, so it goes with the process) of at most
//! [`ImportOptions::max_bytes`], counted while decompressing; the regular
//! files of the trees are spooled under the same budget, so one source
//! writes at most twice `max_bytes` to `$TMPDIR`.

mod archive;
pub mod config;
mod image;
mod stream;
mod tarlayer;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::tree::Tree;

use self::stream::{Compression, Sniffed};
use self::tarlayer::{Budget, Target, Whiteouts};

/// The default of [`ImportOptions::max_bytes`] (and of `cairn layer build
/// --max-size`): 4 GiB. A layer is stored on the device's layer partitions
/// (tens to hundreds of MiB on an embedded appliance), so a source holding
/// more than 4 GiB of files is a mistake or an attack; the limit is also
/// what the importer may write to `$TMPDIR` for one source.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

/// The largest GNU long-name, GNU long-link or PAX extended header an
/// archive may hold: 1 MiB (a path is at most 4 KiB on Linux; PAX records
/// beyond paths are xattrs, whose values Linux caps at 64 KiB).
pub const EXTENSION_MAX: u64 = 1 << 20;

/// A tar extension header: what it is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// GNU `L`: the next member's path.
    GnuLongName,
    /// GNU `K`: the next member's link target.
    GnuLongLink,
    /// PAX `x`: records for the next member.
    Pax,
}

impl std::fmt::Display for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Extension::GnuLongName => "GNU long name",
            Extension::GnuLongLink => "GNU long link",
            Extension::Pax => "PAX extended header",
        })
    }
}

/// The default of [`ImportOptions::max_entries`]: 1 Mi members, several
/// times the files of a full distribution's root filesystem.
pub const DEFAULT_MAX_ENTRIES: u64 = 1 << 20;

/// How to import a source.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Merge an image's layers into one tree, applying its whiteouts.
    pub flatten: bool,
    /// Which image of a multi-platform index: `os/arch[/variant]`
    /// (`linux/arm64`, `linux/arm/v7`). Without it an index must hold
    /// exactly one image (attestation manifests aside).
    pub platform: Option<String>,
    /// Refuse a source whose regular files add up to more than this many
    /// bytes (over all its layers). It also bounds the temporary file a
    /// compressed image archive is decompressed into, counted while
    /// decompressing. Default [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// Refuse a source with more members than this (over all its layers,
    /// and in an image archive itself). Default [`DEFAULT_MAX_ENTRIES`].
    pub max_entries: u64,
    /// What a skopeo-style reference said: the kind of source required and
    /// which image of it ([`parse_reference`]).
    pub select: Select,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            flatten: false,
            platform: None,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            select: Select::default(),
        }
    }
}

/// A skopeo transport cairn reads (local ones only: network pulls stay
/// with skopeo, `skopeo copy docker://... oci-archive:...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    Oci,
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive,
    /// `docker-archive:FILE[:REF]`: a `docker save` archive.
    DockerArchive,
}

impl Transport {
    /// The transport's name, as in a reference.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Oci => "oci",
            Transport::OciArchive => "oci-archive",
            Transport::DockerArchive => "docker-archive",
        }
    }
}

/// Which image of a source to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Select {
    /// The kind of source the reference named (`None`: a plain path, found
    /// from its content).
    pub transport: Option<Transport>,
    /// `oci`, `oci-archive`: the `org.opencontainers.image.ref.name`
    /// annotation of an entry of `index.json`. `docker-archive`: one of an
    /// image's `RepoTags` (`name:tag`, with or without `docker.io/` and
    /// `library/`; `:latest` when no tag), or `@N`, the N-th image (from 0)
    /// of `manifest.json`.
    pub tag: Option<String>,
}

/// A source as written on a command line or in an appliance file: a path,
/// or a skopeo-style reference `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
/// `docker-archive:FILE[:REF]`. The path ends at the first `:` after the
/// transport (as skopeo reads them: a path with a `:` needs a plain path,
/// or `./` does not help either); an empty TAG is refused. Anything else is a
/// plain path (`./oci:x` is the file `oci:x`).
pub fn parse_reference(s: &str) -> Result<(PathBuf, Select), ImportError> {
    let transports = [Transport::Oci, Transport::OciArchive, Transport::DockerArchive];
    let Some((t, rest)) =
        transports.iter().find_map(|t| s.strip_prefix(t.name()).and_then(|r| r.strip_prefix(':')).map(|r| (*t, r)))
    else {
        return Ok((PathBuf::from(s), Select::default()));
    };
    let bad = |reason: &str| ImportError::Image { archive: s.to_owned(), reason: reason.to_owned() };
    let (path, tag) = match rest.split_once(':') {
        Some((p, tag)) => (p, Some(tag)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(bad("the reference names no path"));
    }
    if tag.is_some_and(|t| t.is_empty()) {
        return Err(bad("empty tag after the path's `:`"));
    }
    Ok((PathBuf::from(path), Select { transport: Some(t), tag: tag.map(str::to_owned) }))
}

/// The OCI platform (`os/arch[/variant]`) of a Rust target triple, to
/// take a multi-platform image's platform from a board.
pub fn platform_of_target(rust_target: &str) -> Option<&'static str> {
    let arch = rust_target.split('-').next()?;
    Some(match arch {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        "riscv64gc" | "riscv64" => "linux/riscv64",
        "armv7" => "linux/arm/v7",
        "i686" | "i586" => "linux/386",
        _ => return None,
    })
}

/// One tree read from a source.
#[derive(Debug)]
pub struct ImportedLayer {
    /// A stable name: `rootfs` for a rootfs tar, `NN-<12 hex>` for an image
    /// layer, `flat` for a flattened image.
    pub name: String,
    /// The image layer it came from (`sha256:...` of the layer blob as
    /// stored), if it is one image layer.
    pub source_digest: Option<String>,
    /// The files.
    pub tree: Tree,
    /// The image it came from (its config and provenance), if any.
    pub image: Option<config::ImageInfo>,
}

/// Why a source could not be imported. `archive` names what was being read:
/// the source, or for an image layer the source with the layer's position
/// and digest; `member` is a member's name as the archive gives it.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the source failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: io::Error,
    },
    /// The temporary spool or decompression file could not be written.
    #[error("writing a temporary file: {0}")]
    Spool(io::Error),
    /// Not a tar (plain, gzip or zstd), `docker save` archive or OCI layout.
    #[error("{archive}: not a tar archive (plain, gzip or zstd), a docker save archive or an OCI image layout")]
    NotAnArchive {
        /// What was read.
        archive: String,
    },
    /// Compressed with something other than gzip or zstd.
    #[error("{archive}: {format}-compressed archives are not supported (use plain, gzip or zstd)")]
    UnsupportedCompression {
        /// What was read.
        archive: String,
        /// `xz`, `bzip2`.
        format: &'static str,
    },
    /// A gzip or zstd stream that does not decode.
    #[error("{archive}: corrupt {format} stream: {error}")]
    Corrupt {
        /// What was read.
        archive: String,
        /// `gzip` or `zstd`.
        format: &'static str,
        /// Cause.
        error: io::Error,
    },
    /// The archive ends early (no end-of-archive block, or cut in a header).
    #[error("{archive}: archive truncated{}", after_member(.after))]
    TruncatedArchive {
        /// What was read.
        archive: String,
        /// The last complete member, if any.
        after: Option<String>,
    },
    /// A member whose data ends early.
    #[error("{archive}: member {member}: truncated")]
    TruncatedMember {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
    },
    /// A tar header that does not parse (bad checksum, bad number field).
    #[error("{archive}: malformed tar archive{}: {error}", after_member(.after))]
    Malformed {
        /// What was read.
        archive: String,
        /// The last complete member, if any.
        after: Option<String>,
        /// Cause.
        error: io::Error,
    },
    /// A member path that is absolute, has a `..` component or an invalid
    /// name (longer than 255 bytes, holding NUL).
    #[error("{archive}: member {member}: absolute path, `..` component or invalid file name")]
    BadPath {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
    },
    /// The same path twice in one layer.
    #[error("{archive}: member {member}: the same path appears twice in one layer")]
    Duplicate {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
    },
    /// A member below something that is not a directory.
    #[error("{archive}: member {member}: parent {parent} is not a directory")]
    ParentNotDirectory {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// The offending ancestor (a path in the layer).
        parent: String,
    },
    /// A non-directory member at a path earlier members use as a directory.
    #[error("{archive}: member {member}: not a directory, but earlier members of the layer are inside it")]
    NotADirectory {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
    },
    /// A hard link that cannot be made.
    #[error("{archive}: member {member}: hard link to {target}: {reason}")]
    HardLink {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// The link target as given.
        target: String,
        /// `target missing`, `target outside the archive`, `target is a
        /// directory`.
        reason: &'static str,
    },
    /// A symlink whose relative target climbs above the root.
    #[error("{archive}: member {member}: symlink target {target} climbs above the root")]
    SymlinkEscapes {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// The target as given.
        target: String,
    },
    /// An extended attribute a layer cannot hold.
    #[error(
        "{archive}: member {member}: extended attribute {name} cannot be kept (only user.*, trusted.* and security.*)"
    )]
    Xattr {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// The attribute (or PAX record) name.
        name: String,
    },
    /// A member this importer cannot represent.
    #[error("{archive}: member {member}: {what} is not supported")]
    Unsupported {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// What it is (`a GNU sparse file`, `tar entry type 'V'`, ...).
        what: String,
    },
    /// A whiteout that makes no sense.
    #[error("{archive}: member {member}: {reason}")]
    Whiteout {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// Why.
        reason: &'static str,
    },
    /// A GNU long-name or long-link header or a PAX extended header larger
    /// than [`EXTENSION_MAX`] (such a header is read into memory whole).
    #[error("{archive}: member {member}{}: {what} of {size} bytes, over the {} byte cap", after_member(.after), EXTENSION_MAX)]
    ExtensionTooLarge {
        /// What was read.
        archive: String,
        /// The extension header's own name (`././@LongLink`, `PaxHeaders/...`).
        member: String,
        /// The last complete member before it, if any.
        after: Option<String>,
        /// Which kind of extension header.
        what: Extension,
        /// The size the header claims.
        size: u64,
    },
    /// A compressed image archive that decompresses to more than the budget
    /// ([`ImportOptions::max_bytes`]).
    #[error("{archive}: decompresses to more than the {max} byte budget (--max-size); the temporary file was removed")]
    TempTooLarge {
        /// What was read.
        archive: String,
        /// The budget.
        max: u64,
    },
    /// A character or block device other than an overlay whiteout (a
    /// character device 0/0).
    #[error("{archive}: member {member}: {kind} {major}:{minor}: layers may not hold device nodes (only whiteouts, character devices 0:0)")]
    Device {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// `character device` or `block device`.
        kind: &'static str,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// An overlayfs xattr (`trusted.overlay.*`, `user.overlay.*`) in an
    /// archive: overlayfs would honour it (redirects, metacopy, origin) in a
    /// lower layer.
    #[error("{archive}: member {member}: extended attribute {name} is overlayfs metadata and is refused (opaque directories are written as .wh..wh..opq)")]
    OverlayXattr {
        /// What was read.
        archive: String,
        /// The member.
        member: String,
        /// The attribute.
        name: String,
    },
    /// More members than [`ImportOptions::max_entries`].
    #[error("{archive}: member {member}: more than {max} members")]
    TooManyEntries {
        /// What was read.
        archive: String,
        /// The member that went over.
        member: String,
        /// The limit.
        max: u64,
    },
    /// The files add up to more than [`ImportOptions::max_bytes`].
    #[error("{archive}: member {member}: the files add up to more than the {max} byte limit")]
    TooLarge {
        /// What was read.
        archive: String,
        /// The member that went over.
        member: String,
        /// The limit.
        max: u64,
    },
    /// A file of the image that is not there.
    #[error("{archive}: {what} is missing")]
    MissingBlob {
        /// The source.
        archive: String,
        /// The blob digest or archive path.
        what: String,
    },
    /// A blob whose sha256 differs from its descriptor.
    #[error("{archive}: blob {blob} has digest sha256:{actual}")]
    BlobDigest {
        /// The source.
        archive: String,
        /// The digest expected (or the archive path).
        blob: String,
        /// The digest found (hex).
        actual: String,
    },
    /// A blob whose size differs from its descriptor.
    #[error("{archive}: blob {blob} is {actual} bytes, its descriptor says {expected}")]
    BlobSize {
        /// The source.
        archive: String,
        /// The blob digest.
        blob: String,
        /// Size in the descriptor.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A layer whose uncompressed content differs from the config's
    /// `rootfs.diff_ids`.
    #[error("{archive}: uncompressed layer has digest sha256:{actual}, the image config says {expected}")]
    DiffId {
        /// The layer.
        archive: String,
        /// The diff id in the config.
        expected: String,
        /// The digest found (hex).
        actual: String,
    },
    /// A JSON document of the image that does not parse.
    #[error("{archive}: {member}: {error}")]
    Json {
        /// The source.
        archive: String,
        /// The document (`index.json`, a blob digest, a path).
        member: String,
        /// Cause.
        error: serde_json::Error,
    },
    /// An image whose structure is not understood (unsupported media type
    /// or digest algorithm, several images in a `docker save`, ...).
    #[error("{archive}: {reason}")]
    Image {
        /// The source.
        archive: String,
        /// What is wrong.
        reason: String,
    },
    /// No image for the platform asked for.
    #[error("{archive}: no image for platform {wanted}; it has: {}", .available.join(", "))]
    NoSuchPlatform {
        /// The source.
        archive: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms it has.
        available: Vec<String>,
    },
    /// Several images and no (or no precise enough) platform given.
    #[error("{archive}: the image index holds several images ({}); choose one with --platform os/arch[/variant] or --board NAME", .available.join(", "))]
    ChoosePlatform {
        /// The source.
        archive: String,
        /// The platforms to choose from.
        available: Vec<String>,
    },
}

fn after_member(after: &Option<String>) -> String {
    match after {
        Some(m) => format!(" after member {m}"),
        None => String::new(),
    }
}

/// Read `source` (a rootfs tar, `docker save` archive, OCI layout
/// directory or tar) into trees: one for a rootfs tar or a flattened
/// image, one per image layer (lowest first) otherwise.
pub fn import(source: &Path, opts: &ImportOptions) -> Result<Vec<ImportedLayer>, ImportError> {
    let label = source.display().to_string();
    let io_err = |error| ImportError::Io { path: source.to_owned(), error };
    let md = fs::metadata(source).map_err(io_err)?;
    let mut budget = Budget::new(opts.max_bytes, opts.max_entries);
    let wrong_kind = |is: &str| ImportError::Image {
        archive: source.display().to_string(),
        reason: format!("{is}, not what {}: names", opts.select.transport.map(Transport::name).unwrap_or("")),
    };
    if md.is_dir() {
        if !fs::symlink_metadata(source.join("oci-layout")).map(|m| m.is_file()).unwrap_or(false) {
            return Err(ImportError::NotAnArchive { archive: label });
        }
        if opts.select.transport.is_some_and(|t| t != Transport::Oci) {
            return Err(wrong_kind("an OCI layout directory"));
        }
        let store = image::DirStore::new(source, &label);
        return image::import_oci(&store, opts, &mut budget);
    }
    let file = File::open(source).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let sniffed = stream::sniff_file(&file, len, &label).map_err(io_err)?;
    let compression = match sniffed {
        Sniffed::Tar(c) => c,
        Sniffed::Unsupported(format) => return Err(ImportError::UnsupportedCompression { archive: label, format }),
        Sniffed::Unknown => return Err(ImportError::NotAnArchive { archive: label }),
    };
    let whole = || archive::Range::new(&file, 0, len);
    let index = match compression {
        Compression::None => Some(archive::Index::build(&file, len, &label, opts.max_entries)?),
        Compression::Gzip | Compression::Zstd => {
            // Only an image needs random access: look at the names first,
            // decompress to a temporary file only for an image.
            if archive::looks_like_image(&mut whole(), &label)? {
                let tmp = stream::decompress_to_temp(&mut whole(), &label, opts.max_bytes)?;
                let tmp_len = tmp.metadata().map_err(ImportError::Spool)?.len();
                Some(archive::Index::build(&tmp, tmp_len, &label, opts.max_entries)?)
            } else {
                None
            }
        }
    };
    let t = opts.select.transport;
    if t == Some(Transport::Oci) {
        return Err(wrong_kind("a file"));
    }
    if let Some(index) = index {
        match index.image_kind(t == Some(Transport::OciArchive))? {
            Some(archive::ImageKind::Docker(manifest)) => {
                if t.is_some_and(|t| t != Transport::DockerArchive) {
                    return Err(wrong_kind("a docker save archive"));
                }
                return image::import_docker(&index, manifest, opts, &mut budget);
            }
            Some(archive::ImageKind::Oci) => {
                if t.is_some_and(|t| t != Transport::OciArchive) {
                    return Err(wrong_kind("an OCI layout archive"));
                }
                let store = image::TarStore::new(&index);
                return image::import_oci(&store, opts, &mut budget);
            }
            None => {}
        }
    }
    if t.is_some() {
        return Err(wrong_kind("a root filesystem tar, not an image"));
    }
    let mut target = Target::new()?;
    tarlayer::read_layer(&mut whole(), &label, &mut target, Whiteouts::Literal, &mut budget)?;
    Ok(vec![ImportedLayer { name: "rootfs".into(), source_digest: None, tree: target.finish()?, image: None }])
}
