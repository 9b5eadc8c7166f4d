//! From an appliance description to the files a device boots: layer images,
//! the signed manifest and the GPT disk (the initramfs: `initramfs`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::appliance::{Appliance, ApplianceError, LayerRef};
use crate::datafs;
use crate::esp::{self, EspContents, EspError};
use crate::gpt::{self, DiskLayout, PartitionContents, PartitionSpec};
use crate::layer::{self, LayerError, LayerOptions};
use crate::verity::{self, LayerIdentity, LayerImage, VerityError};
use cairn_format::bootstate::{self, BootState, LayerSlot};
use cairn_format::digest::Digest;
use cairn_format::envelope;
use cairn_format::manifest::Manifest;
use cairn_format::verity::Verity;

/// Why an appliance could not be built or assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The appliance file.
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// A layer source is missing.
    #[error("layer {layer}: source {source_dir}: no such file or directory")]
    LayerSource {
        /// Layer name.
        layer: String,
        /// Resolved directory.
        source_dir: PathBuf,
    },
    /// A `build:NAME` source the caller did not provide.
    #[error("layer {layer}: unknown build product {name:?}")]
    UnknownBuildSource {
        /// Layer name.
        layer: String,
        /// The NAME.
        name: String,
    },
    /// Building a layer image.
    #[error("layer {layer}: {error}")]
    Import {
        /// Layer name.
        layer: String,
        /// Cause.
        error: LayerError,
    },
    /// No image of a layer the manifest names.
    #[error("layer {layer} ({digest:?}): no file in {dir} has that digest")]
    LayerNotFound {
        /// Layer name.
        layer: String,
        /// Its digest.
        digest: Digest,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A layer known only by digest cannot be written to a new disk.
    #[error("layer {0} is given by digest only; a new disk needs its image (use `file` or `source`)")]
    NoImage(String),
    /// Signing.
    #[error("manifest: {0}")]
    Seal(String),
    /// The EFI system partition.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// Reading a layer image or computing its hash tree.
    #[error(transparent)]
    Verity(#[from] VerityError),
    /// A layer image whose hash tree root is not the manifest's.
    #[error("layer {layer} ({path}): its verity root hash {found} is not the manifest's {expected}")]
    RootMismatch {
        /// Layer name.
        layer: String,
        /// The image file.
        path: PathBuf,
        /// Root hash in the manifest.
        expected: Digest,
        /// Root hash computed from the file.
        found: Digest,
    },
    /// A layer is larger than a slot.
    #[error("layer {layer} ({size} bytes with its hash tree) does not fit a {slot} byte layer slot")]
    LayerTooLarge {
        /// Layer name.
        layer: String,
        /// Its size.
        size: u64,
        /// Slot size.
        slot: u64,
    },
    /// More layers than layer partitions a state record can map.
    #[error("{0} layers exceed the {max} layer slots a device tracks", max = bootstate::MAX_LAYER_SLOTS)]
    TooManyLayers(usize),
    /// Disk writing.
    #[error(transparent)]
    Gpt(#[from] gpt::GptError),
    /// Formatting the data partition.
    #[error(transparent)]
    DataFs(#[from] datafs::DataFsError),
    /// Other file I/O.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AssembleError + '_ {
    move |error| AssembleError::Io { path: path.to_owned(), error }
}

/// One built layer image.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// Layer name.
    pub name: String,
    /// Image file; `None` for a layer known only by digest (the devices
    /// already hold it), which cannot be put on a new disk.
    pub path: Option<PathBuf>,
    /// sha256 of the image.
    pub digest: Digest,
    /// Image size (the padded squashfs image, without its tree).
    pub size: u64,
    /// Its dm-verity parameters.
    pub verity: Verity,
    /// Its hash tree, computed from the image (empty without an image).
    pub tree: Vec<u8>,
}

impl BuiltLayer {
    fn from_image(name: &str, path: PathBuf, image: LayerImage) -> Self {
        let LayerImage { id, tree } = image;
        BuiltLayer {
            name: name.to_owned(),
            path: Some(path),
            digest: id.digest,
            size: id.size,
            verity: id.verity,
            tree,
        }
    }

    /// The bytes its partition needs: image and tree.
    pub fn partition_bytes(&self) -> u64 {
        self.verity.partition_bytes()
    }
}

/// An appliance ready to be put on a disk.
#[derive(Debug, Clone)]
pub struct BuiltAppliance {
    /// The manifest as signed.
    pub manifest: Manifest,
    /// The signed envelope.
    pub envelope: Vec<u8>,
    /// Layer images in manifest order.
    pub layers: Vec<BuiltLayer>,
    /// The image of each layer built from one, by layer name (issue 15:
    /// image defaults and provenance).
    pub images: BTreeMap<String, crate::import::config::ImageInfo>,
    /// Where each container's argv, env, cwd and user came from.
    pub origins: Vec<crate::import::config::ContainerOrigins>,
}

/// Build every layer of the appliance at `appliance_path` into `out_dir`,
/// compile and sign the manifest. `build_sources` resolves `build:NAME`.
///
/// A layer is built from `source` (a directory, a rootfs tar, or an image,
/// flattened into one layer) as `out_dir/NAME.squashfs`, taken from `file`
/// (hashed, not copied), or known by `digest` and `size` alone. Everything
/// the device would refuse is found before any layer is built; on any error
/// the layer images this call wrote are removed again.
pub fn build_appliance(
    appliance_path: &Path,
    build_sources: &BTreeMap<String, PathBuf>,
    key: &SigningKey,
    out_dir: &Path,
) -> Result<BuiltAppliance, AssembleError> {
    build_appliance_for(appliance_path, build_sources, key, out_dir, None)
}

/// [`build_appliance`], taking the image of a multi-platform `source` for
/// `platform` (`os/arch[/variant]`, e.g. a board's).
pub fn build_appliance_for(
    appliance_path: &Path,
    build_sources: &BTreeMap<String, PathBuf>,
    key: &SigningKey,
    out_dir: &Path,
    platform: Option<&str>,
) -> Result<BuiltAppliance, AssembleError> {
    let app = Appliance::load(appliance_path)?;
    let base = appliance_path.parent().unwrap_or(Path::new("."));
    // Check the whole file first, with stand-in digests, so a mistake in a
    // container is reported before minutes of layer building.
    let mut problems = Vec::new();
    let mut stand_in = BTreeMap::new();
    let mut refs = Vec::new();
    for (i, l) in app.layers.iter().enumerate() {
        match l.reference() {
            Ok(r) => refs.push((l.name.as_str(), r)),
            Err(e) => {
                let line = app.lines.layers.get(i).map(|n| format!("line {n}: ")).unwrap_or_default();
                problems.push(format!("{line}layer[{i}] ({}): {e}", l.name));
            }
        }
        stand_in.insert(l.name.clone(), verity::identity_by_digest(Digest([0; 32]), 4096, Digest([0; 32])));
    }
    if let Err(ApplianceError::Invalid { problems: p, .. }) =
        app.with_placeholders().to_manifest(appliance_path, &stand_in)
    {
        problems.extend(p);
    }
    if !problems.is_empty() {
        return Err(ApplianceError::Invalid { path: appliance_path.to_owned(), problems }.into());
    }

    let mut written: Vec<PathBuf> = Vec::new();
    let mut images = BTreeMap::new();
    let result =
        build_layers(&refs, base, build_sources, out_dir, &mut written, &mut images, platform).and_then(|layers| {
            let info = layers
                .iter()
                .map(|l| (l.name.clone(), LayerIdentity { digest: l.digest, size: l.size, verity: l.verity }))
                .collect();
            let (app, origins) = app.with_image_defaults(appliance_path, &images)?;
            let manifest = app.to_manifest(appliance_path, &info)?;
            let envelope = envelope::seal_manifest(&manifest, key).map_err(AssembleError::Seal)?;
            Ok(BuiltAppliance { manifest, envelope, layers, images, origins })
        });
    if result.is_err() {
        for p in &written {
            let _ = fs::remove_file(p);
        }
    }
    result
}

/// Build or hash every layer (name, checked reference), in order; the
/// images written go into `written`.
fn build_layers(
    refs: &[(&str, LayerRef)],
    base: &Path,
    build_sources: &BTreeMap<String, PathBuf>,
    out_dir: &Path,
    written: &mut Vec<PathBuf>,
    images: &mut BTreeMap<String, crate::import::config::ImageInfo>,
    platform: Option<&str>,
) -> Result<Vec<BuiltLayer>, AssembleError> {
    let mut layers = Vec::new();
    for (name, reference) in refs {
        let name = *name;
        let built = match reference {
            LayerRef::Source(source) => {
                let src = match source.strip_prefix("build:") {
                    Some(product) => build_sources.get(product).cloned().ok_or_else(|| {
                        AssembleError::UnknownBuildSource { layer: name.to_owned(), name: product.into() }
                    })?,
                    None => base.join(source),
                };
                // `oci-archive:FILE:TAG` and the other skopeo references.
                let (src, select) = match crate::import::parse_reference(source) {
                    Ok((path, select)) if select.transport.is_some() => (base.join(path), select),
                    Ok(_) => (src, crate::import::Select::default()),
                    Err(error) => return Err(AssembleError::Import { layer: name.to_owned(), error: error.into() }),
                };
                if !src.exists() {
                    return Err(AssembleError::LayerSource { layer: name.to_owned(), source_dir: src });
                }
                fs::create_dir_all(out_dir).map_err(io(out_dir))?;
                let path = out_dir.join(format!("{name}.squashfs"));
                let platform = platform.map(str::to_owned);
                let opts = LayerOptions { flatten: true, select, platform, ..LayerOptions::default() };
                let files = layer::build(&src, &path, &opts, &mut |_| {})
                    .map_err(|error| AssembleError::Import { layer: name.to_owned(), error })?;
                written.push(path.clone());
                let Some(f) = files.into_iter().next() else {
                    return Err(AssembleError::LayerSource { layer: name.to_owned(), source_dir: src.clone() });
                };
                if let Some(image) = f.image {
                    images.insert(name.to_owned(), image);
                }
                let image = verity::read_image(&path).map_err(AssembleError::Verity)?;
                BuiltLayer::from_image(name, path, image)
            }
            LayerRef::File(file) => {
                let path = base.join(file);
                let image = verity::read_image(&path).map_err(AssembleError::Verity)?;
                BuiltLayer::from_image(name, path, image)
            }
            LayerRef::Digest(id) => BuiltLayer {
                name: name.to_owned(),
                path: None,
                digest: id.digest,
                size: id.size,
                verity: id.verity,
                tree: Vec::new(),
            },
        };
        layers.push(built);
    }
    Ok(layers)
}

/// Find the image of every layer `manifest` names in `dir`: `NAME.squashfs`
/// when its digest matches, otherwise any file there holding an image with
/// the layer's size and digest (a layer may be named differently where it
/// was built), with or without its hash tree. The tree is computed again
/// and its root must be the manifest's.
pub fn find_layers(manifest: &Manifest, dir: &Path) -> Result<Vec<BuiltLayer>, AssembleError> {
    let mut candidates: Vec<(PathBuf, u64)> = Vec::new();
    let listing = fs::read_dir(dir).map_err(io(dir))?;
    for entry in listing {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(io(&path))?;
        if meta.is_file() {
            candidates.push((path, meta.len()));
        }
    }
    candidates.sort();
    let mut read: BTreeMap<PathBuf, Option<LayerImage>> = BTreeMap::new();
    let mut out = Vec::new();
    for l in &manifest.layers {
        let preferred = dir.join(format!("{}.squashfs", l.name));
        let mut order: Vec<&(PathBuf, u64)> = candidates.iter().filter(|(p, _)| *p == preferred).collect();
        order.extend(candidates.iter().filter(|(p, _)| *p != preferred));
        let mut found = None;
        for (path, len) in order {
            if *len != l.size && *len != l.verity.partition_bytes() {
                continue;
            }
            // A file that is not a layer image is just not a candidate.
            let image = read.entry(path.clone()).or_insert_with(|| verity::read_image(path).ok());
            if let Some(image) = image.as_ref().filter(|i| i.id.digest == l.digest && i.id.size == l.size) {
                found = Some((path.clone(), image.clone()));
                break;
            }
        }
        let (path, image) = found.ok_or_else(|| AssembleError::LayerNotFound {
            layer: l.name.to_string(),
            digest: l.digest,
            dir: dir.to_owned(),
        })?;
        if image.id.verity != l.verity {
            return Err(AssembleError::RootMismatch {
                layer: l.name.to_string(),
                path,
                expected: l.verity.root_hash,
                found: image.id.verity.root_hash,
            });
        }
        out.push(BuiltLayer::from_image(&l.name, path, image));
    }
    Ok(out)
}

/// Disk geometry.
#[derive(Debug, Clone, Copy)]
pub struct DiskOptions {
    /// Size of every layer partition.
    pub layer_slot_bytes: u64,
    /// Empty layer partitions added for future updates.
    pub spare_layer_slots: usize,
    /// Size of the data partition.
    pub data_bytes: u64,
    /// Size of an empty `app-data` partition after `cairn-data`, for
    /// containers given it as `partition:app-data` (0: none). System
    /// (`cairn-*`) partitions can never be given to a container.
    pub app_data_bytes: u64,
    /// Size of the EFI system partition (when the disk has one).
    pub esp_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            layer_slot_bytes: 16 << 20,
            spare_layer_slots: 2,
            data_bytes: 16 << 20,
            app_data_bytes: 0,
            esp_bytes: ESP_BYTES,
        }
    }
}

/// Default size of the EFI system partition: two slots of an arm64 kernel
/// (an uncompressed `Image` of ~27 MiB) and room for an update to write a
/// third image before removing one.
pub const ESP_BYTES: u64 = 128 << 20;

/// Size of each manifest slot partition.
pub const MANIFEST_SLOT_BYTES: u64 = 1 << 20;

/// Write the GPT disk: the EFI system partition with the boot slots (when
/// `esp` is given: without it the disk boots only with a kernel and
/// initramfs given from outside, e.g. QEMU's `-kernel`), state (both
/// copies), both manifest slots (A holds the manifest, B is empty), one
/// layer partition per layer plus spares, and data.
pub fn assemble_disk(
    app: &BuiltAppliance,
    out: &Path,
    opts: DiskOptions,
    esp: Option<&EspContents>,
) -> Result<DiskLayout, AssembleError> {
    assemble_disk_mapped(app, out, opts, esp).map(|w| w.layout)
}

/// [`assemble_disk`], also returning the byte ranges written (for a
/// `.bmap` and the compressed image, [`crate::bmap`], [`crate::zst`]).
pub fn assemble_disk_mapped(
    app: &BuiltAppliance,
    out: &Path,
    opts: DiskOptions,
    esp: Option<&EspContents>,
) -> Result<gpt::WrittenDisk, AssembleError> {
    let total_slots = app.layers.len() + opts.spare_layer_slots;
    if total_slots > bootstate::MAX_LAYER_SLOTS || total_slots > 99 {
        return Err(AssembleError::TooManyLayers(total_slots));
    }
    let mut slots = heapless::Vec::new();
    for (i, l) in app.layers.iter().enumerate() {
        if l.partition_bytes() > opts.layer_slot_bytes {
            return Err(AssembleError::LayerTooLarge {
                layer: l.name.clone(),
                size: l.partition_bytes(),
                slot: opts.layer_slot_bytes,
            });
        }
        slots
            .push(LayerSlot { digest: l.digest, partition: (i + 1) as u8 })
            .map_err(|_| AssembleError::TooManyLayers(total_slots))?;
    }
    // The factory version has proved itself: its floor holds from the
    // first boot, so nothing older installs on a new device either.
    let state = BootState { rollback_floor: app.manifest.update.floor, ..BootState::factory(slots) };
    let mut record = vec![0u8; bootstate::RECORD_SIZE];
    let mut block = [0u8; bootstate::COPY_SIZE];
    bootstate::encode_copy(&state, &mut block).map_err(|e| AssembleError::Seal(e.to_string()))?;
    // Both copies: one bad sector in either still leaves the device a
    // state to boot from (equal sequence numbers: copy 0 is read first).
    record[..bootstate::COPY_SIZE].copy_from_slice(&block);
    record[bootstate::COPY_SIZE..].copy_from_slice(&block);

    let mut parts = Vec::new();
    if let Some(esp) = esp {
        parts.push(PartitionSpec {
            name: gpt::ESP_NAME.into(),
            size_bytes: opts.esp_bytes,
            contents: PartitionContents::Bytes(esp::build(esp, opts.esp_bytes)?),
        });
    }
    parts.extend([
        PartitionSpec { name: "cairn-state".into(), size_bytes: 1 << 20, contents: PartitionContents::Bytes(record) },
        PartitionSpec {
            name: "cairn-manifest-a".into(),
            size_bytes: MANIFEST_SLOT_BYTES,
            contents: PartitionContents::Bytes(app.envelope.clone()),
        },
        PartitionSpec {
            name: "cairn-manifest-b".into(),
            size_bytes: MANIFEST_SLOT_BYTES,
            contents: PartitionContents::Empty,
        },
    ]);
    for n in 0..total_slots {
        let contents = match app.layers.get(n) {
            Some(l @ BuiltLayer { path: Some(path), .. }) => PartitionContents::Layer {
                image: path.clone(),
                size: l.size,
                tree_offset: l.verity.hash_offset,
                tree: l.tree.clone(),
            },
            Some(l) => return Err(AssembleError::NoImage(l.name.clone())),
            None => PartitionContents::Empty,
        };
        parts.push(PartitionSpec {
            name: format!("cairn-layer-{:02}", n + 1),
            size_bytes: opts.layer_slot_bytes,
            contents,
        });
    }
    // The data partition, formatted ext4 (deterministic: the UUID comes
    // from the appliance name), made beside the disk and removed after.
    let mut data = out.as_os_str().to_owned();
    data.push(".data.partial");
    let data = PathBuf::from(data);
    datafs::make_ext4(&data, opts.data_bytes, app.manifest.appliance.as_bytes())?;
    parts.push(PartitionSpec {
        name: "cairn-data".into(),
        size_bytes: opts.data_bytes,
        contents: PartitionContents::File(data.clone()),
    });
    if opts.app_data_bytes > 0 {
        parts.push(PartitionSpec {
            name: "app-data".into(),
            size_bytes: opts.app_data_bytes,
            contents: PartitionContents::Empty,
        });
    }
    let written = gpt::write_disk_mapped(out, &parts);
    let _ = fs::remove_file(&data);
    Ok(written?)
}
