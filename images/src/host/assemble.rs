//! From an appliance description to the files a device boots: layer images,
//! the signed manifest, the GPT disk, and the initramfs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::bootstate::{self, BootState, LayerSlot};
use crate::digest::Digest;
use crate::envelope;
use crate::host::appliance::{Appliance, ApplianceError};
use crate::host::cpio::{self, CpioBuilder};
use crate::host::gpt::{self, DiskLayout, PartitionContents, PartitionSpec};
use crate::host::squashfs;
use crate::manifest::Manifest;

/// Why an appliance could not be built or assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The appliance file.
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// A layer source is missing.
    #[error("layer {layer}: source {source_dir} not found")]
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
    Layer {
        /// Layer name.
        layer: String,
        /// Cause.
        error: squashfs::SquashfsError,
    },
    /// Signing.
    #[error("manifest: {0}")]
    Seal(String),
    /// A layer is larger than a slot.
    #[error("layer {layer} ({size} bytes) does not fit a {slot} byte layer slot")]
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
    /// Image file.
    pub path: PathBuf,
    /// sha256 of the image.
    pub digest: Digest,
    /// Image size.
    pub size: u64,
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
}

/// Build every layer of the appliance at `appliance_path` into `out_dir`,
/// compile and sign the manifest. `build_sources` resolves `build:NAME`.
pub fn build_appliance(
    appliance_path: &Path,
    build_sources: &BTreeMap<String, PathBuf>,
    key: &SigningKey,
    out_dir: &Path,
) -> Result<BuiltAppliance, AssembleError> {
    let app = Appliance::load(appliance_path)?;
    let base = appliance_path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let mut layers = Vec::new();
    let mut info = BTreeMap::new();
    for l in &app.layers {
        // Interim: directory sources only (file and digest layers come with the layer importer).
        let source = l.source.clone().unwrap_or_default();
        let src = match source.strip_prefix("build:") {
            Some(name) => build_sources
                .get(name)
                .cloned()
                .ok_or_else(|| AssembleError::UnknownBuildSource { layer: l.name.clone(), name: name.into() })?,
            None => base.join(&source),
        };
        if !src.is_dir() {
            return Err(AssembleError::LayerSource { layer: l.name.clone(), source_dir: src });
        }
        let path = out_dir.join(format!("{}.squashfs", l.name));
        let img = squashfs::build_layer(&src, &path)
            .map_err(|error| AssembleError::Layer { layer: l.name.clone(), error })?;
        let digest = Digest(img.digest);
        info.insert(l.name.clone(), (digest, img.size));
        layers.push(BuiltLayer { name: l.name.clone(), path, digest, size: img.size });
    }
    let manifest = app.to_manifest(appliance_path, &info)?;
    let envelope = envelope::seal_manifest(&manifest, key).map_err(AssembleError::Seal)?;
    Ok(BuiltAppliance { manifest, envelope, layers })
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
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self { layer_slot_bytes: 16 << 20, spare_layer_slots: 2, data_bytes: 16 << 20 }
    }
}

/// Size of each manifest slot partition.
pub const MANIFEST_SLOT_BYTES: u64 = 1 << 20;

/// Write the GPT disk: state, both manifest slots (A holds the manifest,
/// B is empty), one layer partition per layer plus spares, and data.
pub fn assemble_disk(app: &BuiltAppliance, out: &Path, opts: DiskOptions) -> Result<DiskLayout, AssembleError> {
    let total_slots = app.layers.len() + opts.spare_layer_slots;
    if total_slots > bootstate::MAX_LAYER_SLOTS || total_slots > 99 {
        return Err(AssembleError::TooManyLayers(total_slots));
    }
    let mut slots = heapless::Vec::new();
    for (i, l) in app.layers.iter().enumerate() {
        if l.size > opts.layer_slot_bytes {
            return Err(AssembleError::LayerTooLarge {
                layer: l.name.clone(),
                size: l.size,
                slot: opts.layer_slot_bytes,
            });
        }
        slots
            .push(LayerSlot { digest: l.digest, partition: (i + 1) as u8 })
            .map_err(|_| AssembleError::TooManyLayers(total_slots))?;
    }
    let state = BootState::factory(slots);
    let mut record = vec![0u8; bootstate::RECORD_SIZE];
    let mut block = [0u8; bootstate::COPY_SIZE];
    bootstate::encode_copy(&state, &mut block).map_err(|e| AssembleError::Seal(e.to_string()))?;
    record[..bootstate::COPY_SIZE].copy_from_slice(&block);

    let mut parts = vec![
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
    ];
    for n in 0..total_slots {
        let contents = match app.layers.get(n) {
            Some(l) => PartitionContents::File(l.path.clone()),
            None => PartitionContents::Empty,
        };
        parts.push(PartitionSpec {
            name: format!("cairn-layer-{:02}", n + 1),
            size_bytes: opts.layer_slot_bytes,
            contents,
        });
    }
    parts.push(PartitionSpec {
        name: "cairn-data".into(),
        size_bytes: opts.data_bytes,
        contents: PartitionContents::Empty,
    });
    Ok(gpt::write_disk(out, &parts)?)
}

/// The initramfs: `/init` (cairn-init), the device nodes the kernel needs
/// before devtmpfs, mount points, and the modules in load order.
pub fn build_initramfs(init_binary: &Path, modules: &[PathBuf], out: &Path) -> Result<(), AssembleError> {
    let mut c = CpioBuilder::new();
    for d in ["dev", "proc", "sys", "run", "lib", "lib/modules"] {
        c.dir(d, 0o755);
    }
    c.char_device("dev/console", 0o600, 5, 1);
    c.char_device("dev/null", 0o666, 1, 3);
    let init = fs::read(init_binary).map_err(io(init_binary))?;
    c.file("init", 0o755, &init);
    let mut order = String::new();
    for m in modules {
        let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let data = fs::read(m).map_err(io(m))?;
        c.file(&format!("lib/modules/{name}"), 0o644, &data);
        order.push_str(&name);
        order.push('\n');
    }
    c.file("lib/modules/load-order", 0o644, order.as_bytes());
    let bytes = cpio::gzip(&c.finish());
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, out).map_err(io(out))
}
