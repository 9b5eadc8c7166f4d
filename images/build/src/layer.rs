//! Building layer images from whatever a person has: a directory, a rootfs
//! tarball, a `docker save` archive or an OCI image layout.
//!
//! A directory or a rootfs tarball gives one layer. An image gives one
//! layer per image layer (lowest first, OCI whiteouts turned into overlayfs
//! whiteouts so the device's overlay stacks them as Docker would), or one
//! flattened layer. Output is all or nothing: when one layer fails, the
//! layers this call already wrote are removed again.
//!
//! What a layer may hold is the same from every source: no device node but
//! the overlayfs whiteout (a character device 0/0), and no overlayfs xattr
//! but the opaque marker. A directory may already be in the overlay format
//! (an upper directory), so `trusted.overlay.opaque=y` on a directory is
//! kept from one; archives spell opaque directories `.wh..wh..opq` (see
//! [`import`]).

use std::fs;
use std::path::{Path, PathBuf};

use crate::import::{self, ImportError, ImportOptions};
use crate::scan::{self, ScanError};
use crate::squashfs::{self, SquashfsError};
use crate::tree::{Forbidden, Tree};
use crate::verity::{self, VerityError};
use cairn_format::digest::Digest;

/// Options of a layer build.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Merge an image's layers into one.
    pub flatten: bool,
    /// Which platform of a multi-platform image ("linux/arm64").
    pub platform: Option<String>,
    /// Refuse an archive or image source whose files add up to more than
    /// this (also the budget for decompressing a compressed image archive
    /// to a temporary file). Default [`import::DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// Refuse a layer image larger than this (a layer slot's size).
    pub max_image_bytes: Option<u64>,
    /// What a skopeo-style reference selected ([`import::parse_reference`]).
    pub select: import::Select,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            flatten: false,
            platform: None,
            max_bytes: import::DEFAULT_MAX_BYTES,
            max_image_bytes: None,
            select: import::Select::default(),
        }
    }
}

/// One layer image written.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// A name for it: the output file's stem.
    pub name: String,
    /// Where it was written.
    pub path: PathBuf,
    /// sha256 of the image.
    pub digest: Digest,
    /// Image size in bytes (the padded squashfs image, without its tree).
    pub size: u64,
    /// Its dm-verity hash tree, written after the image.
    pub verity: cairn_format::verity::Verity,
    /// The image layer it came from (`sha256:...` of the OCI blob), if any.
    pub source_digest: Option<String>,
    /// The image it came from: its config, provenance, and the files of
    /// it image defaults need (read from this layer's tree).
    pub image: Option<import::config::ImageInfo>,
}

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading a directory source.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// Reading an archive or image source.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Writing an image.
    #[error(transparent)]
    Write(#[from] SquashfsError),
    /// Writing its hash tree.
    #[error(transparent)]
    Verity(#[from] VerityError),
    /// A directory source holding a character or block device other than
    /// a whiteout (a character device 0/0).
    #[error(
        "{path}: {kind} {major}:{minor}: layers may not hold device nodes (only whiteouts, character devices 0:0)"
    )]
    Device {
        /// The file.
        path: PathBuf,
        /// `character device` or `block device`.
        kind: &'static str,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A directory source with an overlayfs xattr other than
    /// `trusted.overlay.opaque=y` on a directory.
    #[error("{path}: extended attribute {name} is overlayfs metadata and is refused (only trusted.overlay.opaque=y on a directory is kept)")]
    OverlayXattr {
        /// The file.
        path: PathBuf,
        /// The attribute.
        name: String,
    },
    /// The source does not exist.
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    /// Several layers need a directory to go to.
    #[error("{path}: the image has {layers} layers; --out must be a directory (or use --flatten)")]
    OutNotADirectory {
        /// The output path.
        path: PathBuf,
        /// How many layers.
        layers: usize,
    },
    /// A layer image larger than allowed.
    #[error("layer {name} is {size} bytes with its hash tree, larger than the {max} byte limit (the layer slot size)")]
    TooLarge {
        /// Layer name.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Creating the output directory.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
}

/// What a build is doing, for progress displays.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// Reading the source.
    Reading(&'a Path),
    /// Writing layer `index` of `count`.
    Writing {
        /// Layer name.
        name: &'a str,
        /// 0-based.
        index: usize,
        /// Total layers.
        count: usize,
    },
}

/// The trees a source holds, with names: one for a directory or rootfs
/// tarball (named after the source file), one per image layer otherwise.
#[allow(clippy::type_complexity)]
pub fn read_source(
    source: &Path,
    opts: &LayerOptions,
) -> Result<Vec<(String, Option<String>, Tree, Option<import::config::ImageInfo>)>, LayerError> {
    if !source.exists() {
        return Err(LayerError::Missing(source.to_owned()));
    }
    let stem = source
        .file_name()
        .map(|n| n.to_string_lossy().split('.').next().unwrap_or("layer").to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "layer".to_owned());
    if source.is_dir() && !source.join("oci-layout").exists() && opts.select.transport.is_none() {
        let tree = scan::scan_dir(source)?;
        check_dir_tree(source, &tree)?;
        return Ok(vec![(stem, None, tree, None)]);
    }
    let iopts = ImportOptions {
        flatten: opts.flatten,
        platform: opts.platform.clone(),
        max_bytes: opts.max_bytes,
        select: opts.select.clone(),
        ..ImportOptions::default()
    };
    let layers = import::import(source, &iopts)?;
    let single = layers.len() == 1;
    Ok(layers
        .into_iter()
        .map(|l| (if single { stem.clone() } else { l.name }, l.source_digest, l.tree, l.image))
        .collect())
}

/// Refuse a tree read from the directory `source` that holds what a layer
/// may not: device nodes other than whiteouts, overlayfs xattrs other than
/// the opaque marker (a directory may already be in the overlay format).
fn check_dir_tree(source: &Path, tree: &Tree) -> Result<(), LayerError> {
    use std::os::unix::ffi::OsStrExt;
    let Some((rel, what)) = tree.layer_violation() else { return Ok(()) };
    let path = source.join(std::ffi::OsStr::from_bytes(&rel));
    Err(match what {
        Forbidden::Device { kind, major, minor } => LayerError::Device { path, kind, major, minor },
        Forbidden::OverlayXattr(name) => {
            LayerError::OverlayXattr { path, name: String::from_utf8_lossy(&name).into_owned() }
        }
    })
}

/// Build the layer images of `source`. One layer goes to the file `out`;
/// several go into the directory `out` (created if missing) as
/// `<name>.squashfs`. Each file is the squashfs image followed by its
/// dm-verity hash tree (see [`crate::verity`]). Nothing is left behind on
/// error.
pub fn build(
    source: &Path,
    out: &Path,
    opts: &LayerOptions,
    progress: &mut dyn FnMut(Step<'_>),
) -> Result<Vec<LayerFile>, LayerError> {
    progress(Step::Reading(source));
    let trees = read_source(source, opts)?;
    let count = trees.len();
    let into_dir = count > 1 || out.is_dir();
    let mut created_dir = false;
    if count > 1 {
        if out.exists() && !out.is_dir() {
            return Err(LayerError::OutNotADirectory { path: out.to_owned(), layers: count });
        }
        if !out.exists() {
            fs::create_dir_all(out).map_err(|error| LayerError::Io { path: out.to_owned(), error })?;
            created_dir = true;
        }
    }
    // A single layer's file may name a directory that does not exist yet.
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty() && !into_dir);
    let mut created_parent = None;
    if let Some(p) = parent.filter(|p| !p.exists()) {
        let top = p.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_owned);
        fs::create_dir_all(p).map_err(|error| LayerError::Io { path: p.to_owned(), error })?;
        created_parent = top;
    }
    let mut written: Vec<LayerFile> = Vec::new();
    let result = (|| {
        for (index, (name, source_digest, tree, image)) in trees.iter().enumerate() {
            progress(Step::Writing { name, index, count });
            let path = if into_dir { out.join(format!("{name}.squashfs")) } else { out.to_owned() };
            let img = squashfs::write_layer(tree, &path)?;
            let sealed = verity::append_tree(&path, Digest(img.digest), img.size);
            let verity = match sealed {
                Ok(image) => image.id.verity,
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    return Err(e.into());
                }
            };
            written.push(LayerFile {
                name: name.clone(),
                path: path.clone(),
                digest: Digest(img.digest),
                size: img.size,
                verity,
                source_digest: source_digest.clone(),
                image: image.clone().map(|mut i| {
                    i.inspect_tree(tree);
                    i
                }),
            });
            let on_disk = verity.partition_bytes();
            if let Some(max) = opts.max_image_bytes.filter(|m| on_disk > *m) {
                return Err(LayerError::TooLarge { name: name.clone(), size: on_disk, max });
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            for w in &written {
                let _ = fs::remove_file(&w.path);
            }
            if created_dir {
                let _ = fs::remove_dir(out);
            }
            if let Some(top) = created_parent {
                // Only directories this call made, and only if still empty.
                for d in out.ancestors().skip(1) {
                    if fs::remove_dir(d).is_err() || d == top {
                        break;
                    }
                }
            }
            Err(e)
        }
    }
}
