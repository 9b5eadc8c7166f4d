//! `cairn image`: assemble and inspect flashable disk images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_build::assemble::{self, BuiltAppliance, DiskOptions};
use cairn_build::{gpt, kmod};
use cairn_format::envelope::{key_id, Envelope, KeyId};
use clap::Subcommand;
use serde_json::json;

use crate::layer::parse_size_arg;
use crate::manifest::read_unverified;
use crate::output::{digest, Output};
use crate::progress::{size, Progress};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Assemble a GPT disk image and its initramfs for a board.
    ///
    /// The disk holds every partition a device uses: cairn-state (the boot
    /// state record), cairn-manifest-a (the manifest) and -b (empty, for
    /// updates), one cairn-layer-NN per layer plus spare slots for updates,
    /// and cairn-data (formatted ext4). The initramfs (written beside the
    /// disk unless --initramfs says otherwise) holds the init binary and
    /// the board's kernel modules in load order.
    ///
    /// The init must trust the key that signed the manifest (its
    /// CAIRN_TRUSTED_KEYS at build time) and be built for the board's
    /// architecture: both are checked, since a device would refuse to boot.
    Assemble {
        /// Board name (see `cairn boards`).
        #[arg(long)]
        board: String,
        /// The signed manifest.
        #[arg(long)]
        manifest: PathBuf,
        /// Directory holding the layer images the manifest names.
        #[arg(long)]
        layers: PathBuf,
        /// The cairn-init binary for the board.
        #[arg(long)]
        init: PathBuf,
        /// The board's kernel, unpacked (a directory holding lib/modules/VERSION).
        #[arg(long)]
        kernel: PathBuf,
        /// The disk image to write.
        #[arg(long)]
        out: PathBuf,
        /// The initramfs to write (default: the disk's path with `.initramfs`).
        #[arg(long)]
        initramfs: Option<PathBuf>,
        /// Size of every layer slot.
        #[arg(long, default_value = "16M", value_parser = parse_size_arg)]
        slot_size: u64,
        /// Empty layer slots for updates.
        #[arg(long, default_value_t = 2)]
        spare_slots: usize,
        /// Size of the data partition.
        #[arg(long, default_value = "16M", value_parser = parse_size_arg)]
        data_size: u64,
        /// Also write a block map for bmaptool beside the disk (DISK.bmap,
        /// where `bmaptool copy` finds it): the blocks the assembler wrote
        /// and a sha256 of each range, so flashing writes only those and
        /// checks them. Same disk, same bytes. A stale DISK.bmap is removed
        /// when this is not given.
        #[arg(long)]
        bmap: bool,
        /// Also write the disk zstd-compressed (DISK.zst; `zstd -dc DISK.zst
        /// | dd ...` or `bmaptool copy DISK.zst ...` writes it). Same disk,
        /// same bytes. A stale DISK.zst is removed when this is not given.
        #[arg(long)]
        zstd: bool,
    },
    /// Print a disk image's partitions and the manifests in its slots.
    Inspect {
        /// The disk image.
        disk: PathBuf,
    },
}

pub fn run(cmd: ImageCommand, progress: &Progress, output: &Output) -> Result<()> {
    match cmd {
        ImageCommand::Assemble {
            board,
            manifest,
            layers,
            init,
            kernel,
            out,
            initramfs,
            slot_size,
            spare_slots,
            data_size,
            bmap,
            zstd,
        } => {
            let board = cairn_board::by_name(&board)
                .with_context(|| format!("unknown board {board:?}; cairn knows {}", cairn_board::names().join(", ")))?;
            let initramfs = initramfs.unwrap_or_else(|| out.with_extension("initramfs"));
            let envelope = std::fs::read(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
            let (signer, m) = read_unverified(&manifest)?;
            if cairn_build::keys::is_unsigned(&envelope) {
                bail!(
                    "{}: not signed; a device refuses an unsigned manifest (sign it with `cairn manifest sign`)",
                    manifest.display()
                );
            }

            progress.step("checking the init binary");
            let init_bytes = std::fs::read(&init).with_context(|| format!("cannot read {}", init.display()))?;
            check_init(&init_bytes, &init, board, signer)?;

            progress.step(format!("finding layers in {}", layers.display()));
            let found = assemble::find_layers(&m, &layers)?;

            progress.step("resolving kernel modules");
            let (version, mod_dir) = kmod::find_module_dir(&kernel)?;
            let modules = kmod::resolve_modules(&mod_dir, &version, board.modules)?;

            progress.step(format!("writing {}", initramfs.display()));
            assemble::build_initramfs(&init, &modules, &initramfs)?;

            progress.step(format!("writing {}", out.display()));
            let app = BuiltAppliance {
                manifest: m,
                envelope,
                layers: found,
                images: Default::default(),
                origins: Vec::new(),
            };
            let opts = DiskOptions {
                layer_slot_bytes: slot_size,
                spare_layer_slots: spare_slots,
                data_bytes: data_size,
                ..DiskOptions::default()
            };
            let written = assemble::assemble_disk_mapped(&app, &out, opts)?;
            let layout = written.layout.clone();
            let flash = flash_files(&out, &written, bmap, zstd, progress)?;
            progress.clear();
            let rd = std::fs::metadata(&initramfs).map(|m| m.len()).unwrap_or(0);
            if output.json {
                return output.print_json(&json!({
                    "disk": out,
                    "size": layout.disk_size,
                    "board": board.name,
                    "disk_guid": layout.disk_guid_text(),
                    "partitions": layout.partitions.iter().map(|p| json!({
                        "index": p.index,
                        "name": p.name,
                        "size": p.size_bytes,
                    })).collect::<Vec<_>>(),
                    "layers": app.layers.iter().map(|l| json!({
                        "name": l.name,
                        "digest": digest(&l.digest),
                        "size": l.size,
                    })).collect::<Vec<_>>(),
                    "initramfs": {
                        "path": initramfs,
                        "size": rd,
                        "kernel": version,
                        "modules": modules.len(),
                    },
                    "bmap": flash.bmap.as_ref().map(|(path, b)| json!({
                        "path": path,
                        "blocks": b.blocks_count(),
                        "mapped_blocks": b.mapped_count(),
                        "block_size": cairn_build::bmap::BLOCK_SIZE,
                    })),
                    "zstd": flash.zstd.as_ref().map(|(path, z)| json!({
                        "path": path,
                        "size": z.size,
                    })),
                }));
            }

            println!("disk {} ({}) for board {}", out.display(), size(layout.disk_size), board.name);
            println!(
                "  disk guid {} (kernel command line: cairn.disk={})",
                layout.disk_guid_text(),
                layout.disk_guid_text()
            );
            for p in &layout.partitions {
                println!("  {:>2} {:<18} {:>10}", p.index, p.name, size(p.size_bytes));
            }
            for l in &app.layers {
                println!("  layer {:<16} {} {}", l.name, digest(&l.digest), size(l.size));
            }
            println!(
                "initramfs {} ({}): init + {} modules of kernel {version}",
                initramfs.display(),
                size(rd),
                modules.len()
            );
            if let Some((path, b)) = &flash.bmap {
                println!(
                    "bmap {}: {} of {} blocks mapped ({})",
                    path.display(),
                    b.mapped_count(),
                    b.blocks_count(),
                    size(b.mapped_count() * cairn_build::bmap::BLOCK_SIZE)
                );
            }
            if let Some((path, z)) = &flash.zstd {
                println!("zstd {} ({})", path.display(), size(z.size));
            }
            eprintln!("cairn: done in {:.1} s", progress.elapsed().as_secs_f64());
            Ok(())
        }
        ImageCommand::Inspect { disk } => inspect(&disk, output),
    }
}

/// The files written beside a disk for flashing.
struct FlashFiles {
    bmap: Option<(PathBuf, cairn_build::bmap::Bmap)>,
    zstd: Option<(PathBuf, cairn_build::zst::ZstInfo)>,
}

/// `disk` with `suffix` appended to its file name (`disk.img.bmap`: where
/// bmaptool looks for a map of `disk.img` and of `disk.img.zst`).
fn beside(disk: &Path, suffix: &str) -> PathBuf {
    let mut p = disk.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Write the `.bmap` and `.zst` of a disk just written, as asked; remove
/// the ones not asked for (they describe an earlier disk: bmaptool would
/// find the stale map and refuse the new image).
fn flash_files(
    disk: &Path,
    written: &gpt::WrittenDisk,
    bmap: bool,
    zstd: bool,
    progress: &Progress,
) -> Result<FlashFiles> {
    let size = written.layout.disk_size;
    let mut files = FlashFiles { bmap: None, zstd: None };
    let (bmap_path, zst_path) = (beside(disk, ".bmap"), beside(disk, ".zst"));
    for (wanted, path) in [(bmap, &bmap_path), (zstd, &zst_path)] {
        if !wanted {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove the stale {}", path.display()))
                }
                _ => {}
            }
        }
    }
    if bmap {
        progress.step(format!("writing {}", bmap_path.display()));
        let b = cairn_build::bmap::read_bmap(disk, size, &written.written)?;
        cairn_build::bmap::write_bmap(&b, &bmap_path)?;
        files.bmap = Some((bmap_path, b));
    }
    if zstd {
        progress.step(format!("writing {}", zst_path.display()));
        let z = cairn_build::zst::compress_image(disk, size, &written.written, &zst_path)?;
        files.zstd = Some((zst_path, z));
    }
    Ok(files)
}

/// ELF machine numbers of the boards' architectures.
fn elf_machine(target: &str) -> Option<u16> {
    if target.starts_with("x86_64") {
        Some(62)
    } else if target.starts_with("aarch64") {
        Some(183)
    } else {
        None
    }
}

/// The init is a static ELF for the board's architecture and holds a
/// trusted key with the manifest signer's id.
fn check_init(bytes: &[u8], path: &Path, board: &cairn_board::Board, signer: KeyId) -> Result<()> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!("{}: not an ELF binary", path.display());
    }
    let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if let Some(want) = elf_machine(board.rust_target) {
        if machine != Some(want) {
            bail!(
                "{}: built for ELF machine {:?}, board {} needs {want} ({})",
                path.display(),
                machine,
                board.name,
                board.rust_target
            );
        }
    }
    // Trusted keys are 32-byte arrays in the binary's read-only data.
    let trusted = bytes.windows(32).any(|w| {
        let mut k = [0u8; 32];
        k.copy_from_slice(w);
        key_id(&k) == signer
    });
    if !trusted {
        bail!(
            "{}: this init does not trust key {signer}, which signed the manifest; the device would refuse to \
             boot. Build cairn-init with the key's .pub file in CAIRN_TRUSTED_KEYS",
            path.display()
        );
    }
    Ok(())
}

fn inspect(disk: &Path, output: &Output) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let layout = gpt::read_layout(disk)?;
    let mut f = std::fs::File::open(disk).with_context(|| format!("cannot read {}", disk.display()))?;
    let mut parts = Vec::new();
    for p in &layout.partitions {
        let mut slot = serde_json::Value::Null;
        let mut note = String::new();
        if p.name.starts_with("cairn-manifest-") {
            let mut buf = vec![0u8; p.size_bytes.min(1 << 20) as usize];
            f.seek(SeekFrom::Start(p.offset_bytes))?;
            f.read_exact(&mut buf)?;
            let unsigned = cairn_build::keys::is_unsigned(&buf);
            (note, slot) = match Envelope::parse(&buf) {
                Ok(env) => {
                    let key = (!unsigned).then(|| env.key_id.to_string());
                    let by = key.clone().unwrap_or_else(|| "nobody (unsigned)".into());
                    match postcard::take_from_bytes::<cairn_format::Manifest>(env.payload) {
                        Ok((m, _)) => (
                            format!("{} version {}, signed by {by}", m.appliance, m.version),
                            json!({"state": "manifest", "key_id": key, "appliance": m.appliance.as_str(),
                                   "version": m.version, "compatible": m.compatible.as_str()}),
                        ),
                        Err(e) => (
                            format!("signed by {by}, payload not decodable"),
                            json!({"state": "undecodable", "key_id": key, "error": e.to_string()}),
                        ),
                    }
                }
                Err(_) if buf.iter().all(|b| *b == 0) => ("empty".into(), json!({"state": "empty"})),
                Err(e) => (format!("not a manifest: {e}"), json!({"state": "invalid", "error": e.to_string()})),
            };
        }
        parts.push((p, note, slot));
    }
    if output.json {
        return output.print_json(&json!({
            "disk": disk,
            "size": layout.disk_size,
            "disk_guid": layout.disk_guid_text(),
            "partitions": parts.iter().map(|(p, _, slot)| {
                let mut v = json!({"index": p.index, "name": p.name, "offset": p.offset_bytes, "size": p.size_bytes});
                if !slot.is_null() {
                    v["manifest"] = slot.clone();
                }
                v
            }).collect::<Vec<_>>(),
        }));
    }
    println!("disk {} ({}) guid {}", disk.display(), size(layout.disk_size), layout.disk_guid_text());
    for (p, note, _) in &parts {
        println!("  {:>2} {:<18} {:>10}  {note}", p.index, p.name, size(p.size_bytes));
    }
    Ok(())
}
