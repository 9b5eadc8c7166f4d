//! `cairn image`: assemble and inspect flashable disk images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_build::assemble::{self, BuiltAppliance, DiskOptions};
use cairn_build::bootkit::{BootKit, BootKitError};
use cairn_build::esp::EfiArch;
use cairn_build::initramfs::{self, Trust};
use cairn_build::secureboot::{SbKey, SbKeyPaths};
use cairn_build::{gpt, kmod};
use cairn_format::envelope::{self, key_id, Envelope, KeyId};
use clap::Subcommand;
use serde_json::json;

use crate::layer::parse_size_arg;
use crate::manifest::read_unverified;
use crate::output::{digest, Output};
use crate::progress::{size, Progress};

// Parsed once from the command line: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Assemble a GPT disk image and its initramfs for a board.
    ///
    /// The disk holds every partition a device uses: cairn-state (the boot
    /// state record), cairn-manifest-a (the manifest) and -b (empty, for
    /// updates), one cairn-layer-NN per layer plus spare slots for updates,
    /// and cairn-data (formatted ext4). The initramfs (written beside the
    /// disk unless --initramfs says otherwise) holds the init binary, the
    /// board's kernel modules in load order, and the device's trust data:
    /// the --trust keys and the --product string.
    ///
    /// The manifest must verify with a --trust key and be for --product,
    /// and the init must be built for the board's architecture: all are
    /// checked, since a device would refuse to boot.
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
        /// A public key the device trusts (NAME.pub from `cairn key
        /// generate`, or an SPKI PEM): written to the initramfs'
        /// /etc/cairn/trusted-keys. Repeat for several keys (at most 16).
        #[arg(long = "trust", required = true, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        /// The product the device boots, written to the initramfs'
        /// /etc/cairn/product: a manifest's `compatible` must equal it.
        #[arg(long)]
        product: String,
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
        /// Where systemd-boot and systemd-stub for the board's architecture
        /// are: the root of an unpacked Debian `systemd-boot-efi` package
        /// (holding usr/lib/systemd/boot/efi/), `/` for the host's own.
        #[arg(long, default_value = "/")]
        systemd_boot: PathBuf,
        /// Size of the EFI system partition.
        #[arg(long, default_value = "128M", value_parser = parse_size_arg)]
        esp_size: u64,
        /// More kernel command line words for the boot slot (after the
        /// board's own).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Sign the boot loader and the slot image for Secure Boot with the
        /// key NAME.sb.key and certificate NAME.sb.crt (`cairn key
        /// secure-boot NAME`). Without it the disk boots only with Secure
        /// Boot off: anyone who can write the disk can then change the
        /// kernel, the init, its trust data and the command line.
        #[arg(long, value_name = "NAME")]
        sign: Option<PathBuf>,
        /// With --sign: also put the key's PK, KEK and db enrollment files
        /// on the ESP (loader/keys/auto/) and have systemd-boot enroll them
        /// at the first boot of a board whose firmware is in setup mode.
        #[arg(long, requires = "sign")]
        enroll_keys: bool,
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
        /// Also write this build's boot image for an update bundle (`cairn
        /// bundle build --boot-image FILE`): the same kernel, initramfs and
        /// command line as slot a's, without `cairn.slot=` (a device writes
        /// it into whichever boot entry it did not start from), signed like
        /// slot a with --sign.
        #[arg(long, value_name = "FILE")]
        update_image: Option<PathBuf>,
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
            trust,
            product,
            kernel,
            out,
            initramfs,
            slot_size,
            spare_slots,
            data_size,
            systemd_boot,
            esp_size,
            cmdline,
            sign,
            enroll_keys,
            bmap,
            zstd,
            update_image,
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

            let mut keys = Vec::new();
            for k in &trust {
                keys.push(cairn_build::keys::load_public(k).with_context(|| format!("--trust {}", k.display()))?);
            }
            let trust = Trust::new(keys, product)?;
            check_trust(&envelope, &manifest, &trust, signer)?;

            progress.step("checking the init binary");
            let init_bytes = std::fs::read(&init).with_context(|| format!("cannot read {}", init.display()))?;
            check_init(&init_bytes, &init, board)?;

            progress.step(format!("finding layers in {}", layers.display()));
            let found = assemble::find_layers(&m, &layers)?;

            progress.step("resolving kernel modules");
            let (version, mod_dir) = kmod::find_module_dir(&kernel)?;
            let modules = kmod::resolve_modules(&mod_dir, &version, &board.modules())?;
            let on_demand = kmod::OnDemand::resolve(&mod_dir, &version, &modules, kmod::Wanted::of(board))?;

            progress.step(format!("writing {}", initramfs.display()));
            initramfs::write_with_on_demand(&init, &modules, &on_demand, &trust, &initramfs)?;

            progress.step("building the boot slot (unified kernel image)");
            let arch = EfiArch::from_suffix(board.efi_arch)
                .with_context(|| format!("board {} has no UEFI architecture", board.name))?;
            let vmlinuz = kernel.join("boot").join(format!("vmlinuz-{version}"));
            let rd_bytes = std::fs::read(&initramfs).with_context(|| format!("cannot read {}", initramfs.display()))?;
            let kit = BootKit::from_files(arch, &systemd_boot, &vmlinuz, &version, rd_bytes, &board.cmdline(&cmdline))
                .map_err(|e| match e {
                    BootKitError::Read { what: what @ ("systemd-boot" | "systemd-stub"), path, .. } => anyhow::anyhow!(
                        "{what} {}: not found; install systemd-boot-efi, or for another architecture \
                         `apt-get download systemd-boot-efi:ARCH && dpkg-deb -x systemd-boot-efi_*.deb DIR` \
                         and pass --systemd-boot DIR",
                        path.display()
                    ),
                    e => e.into(),
                })?;
            let mut esp = kit.factory_esp(&m.compatible, m.version)?;
            let signer = match &sign {
                Some(name) => {
                    let paths = SbKeyPaths::for_name(name);
                    let key = SbKey::load(&paths.key, &paths.cert)?;
                    progress.step(format!("signing the loader and slot a for Secure Boot ({})", key.subject()));
                    esp.sign(&key)?;
                    if enroll_keys {
                        esp.enroll_keys(&key)?;
                    }
                    Some(key)
                }
                None => None,
            };
            let update_image = match &update_image {
                Some(path) => {
                    progress.step(format!("writing the update's boot image {}", path.display()));
                    let mut image = kit.update_image(&m.compatible, m.version)?;
                    if let Some(key) = &signer {
                        image = cairn_build::secureboot::sign_pe(&image, key)?;
                    }
                    std::fs::write(path, &image).with_context(|| format!("cannot write {}", path.display()))?;
                    Some((path.clone(), image.len()))
                }
                None => None,
            };

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
                esp_bytes: esp_size,
                ..DiskOptions::default()
            };
            let written = assemble::assemble_disk_mapped(&app, &out, opts, Some(&esp))?;
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
                        "trusted_keys": trust.keys.iter().map(|k| key_id(k).to_string()).collect::<Vec<_>>(),
                        "product": trust.product,
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
                    "update_image": update_image.as_ref().map(|(path, size)| json!({
                        "path": path,
                        "size": size,
                    })),
                    "esp": {
                        "size": esp_size,
                        "files": esp.files().iter().map(|(path, data)| json!({
                            "path": path,
                            "size": data.len(),
                        })).collect::<Vec<_>>(),
                        "cmdline": kit.slot_cmdline(cairn_format::bootstate::Slot::A),
                        "signed_by": signer.as_ref().map(|k| k.fingerprint()),
                    },
                }));
            }

            println!("disk {} ({}) for board {}", out.display(), size(layout.disk_size), board.name);
            println!(
                "  disk guid {} (the loader names the boot disk; started without one, pass cairn.disk={})",
                layout.disk_guid_text(),
                layout.disk_guid_text()
            );
            for p in &layout.partitions {
                println!("  {:>2} {:<18} {:>10}", p.index, p.name, size(p.size_bytes));
            }
            for (path, data) in esp.files() {
                println!("  esp {:<28} {:>10}", path, size(data.len() as u64));
            }
            println!("  slot a command line: {}", kit.slot_cmdline(cairn_format::bootstate::Slot::A));
            match &signer {
                Some(k) => println!("  signed for Secure Boot by {} (sha256 {})", k.subject(), k.fingerprint()),
                None => println!("  not signed for Secure Boot (--sign): the disk boots only with Secure Boot off"),
            }
            for l in &app.layers {
                println!("  layer {:<16} {} {}", l.name, digest(&l.digest), size(l.size));
            }
            println!(
                "initramfs {} ({}): init + {} modules of kernel {version}; product {}, trusting {}",
                initramfs.display(),
                size(rd),
                modules.len(),
                trust.product,
                cairn_format::trust::fingerprints(&trust.keys)
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
            if let Some((path, n)) = &update_image {
                println!(
                    "update boot image {} ({}), for `cairn bundle build --boot-image`",
                    path.display(),
                    size(*n as u64)
                );
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

/// The device would accept the manifest: it verifies with a trusted key
/// and is for the product (the checks `cairn-init` makes at boot).
fn check_trust(envelope: &[u8], path: &Path, trust: &Trust, signer: KeyId) -> Result<()> {
    if !trust.keys.iter().any(|k| key_id(k) == signer) {
        bail!("{}: signed by key {signer}, which no --trust key is; the device would refuse to boot", path.display());
    }
    let m = envelope::open_manifest(envelope, &trust.keys).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    envelope::check_compatible(&m, &trust.product)
        .map_err(|e| anyhow::anyhow!("{}: {e} (--product); the device would refuse to boot", path.display()))
}

/// The init is an ELF binary for the board's architecture.
fn check_init(bytes: &[u8], path: &Path, board: &cairn_board::Board) -> Result<()> {
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
    Ok(())
}

/// The boot slot entries on an EFI system partition's bytes: a note for
/// people and a JSON list (slot, entry, state, tries, size).
fn boot_slots(esp: Vec<u8>) -> (String, serde_json::Value) {
    use cairn_format::bootentry::{self, Entry};
    let fs = match fatfs::FileSystem::new(std::io::Cursor::new(esp), fatfs::FsOptions::new()) {
        Ok(fs) => fs,
        Err(e) => return (format!("not a FAT file system: {e}"), json!([])),
    };
    let mut slots = Vec::new();
    if let Ok(dir) = fs.root_dir().open_dir(bootentry::DIR) {
        for e in dir.iter().flatten() {
            let name = e.file_name();
            let Some(entry) = Entry::parse(&name) else { continue };
            let (left, done) = entry.counter.map_or((None, None), |c| (Some(c.left), Some(c.done)));
            slots.push(json!({
                "slot": entry.slot.to_string(),
                "entry": name,
                "state": entry.assessment().as_str(),
                "tries_left": left,
                "tries_done": done,
                "size": e.len(),
            }));
        }
    }
    slots.sort_by_key(|s| s["slot"].as_str().unwrap_or_default().to_owned());
    let note = if slots.is_empty() {
        "no boot slot".to_owned()
    } else {
        let each: Vec<String> = slots
            .iter()
            .map(|s| {
                let tries = s["tries_left"].as_u64().map(|l| format!(", {l} tries left")).unwrap_or_default();
                format!(
                    "slot {} {}{tries} ({})",
                    s["slot"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    s["entry"].as_str().unwrap_or("")
                )
            })
            .collect();
        each.join("; ")
    };
    (note, json!(slots))
}

/// The boot state record: what the device boots next, and why.
fn boot_state(region: &[u8]) -> (String, serde_json::Value) {
    use cairn_format::bootstate::{self, Slot};
    let (_, s) = match bootstate::read_record(region) {
        Ok(r) => r,
        Err(e) => {
            return (
                format!("no valid record ({e}): the device boots slot a (factory fallback)"),
                json!({"state": "invalid", "error": e.to_string()}),
            )
        }
    };
    let trial = s.trial.map(|t| format!(", trial {} ({} tries left)", t.slot, t.tries_left)).unwrap_or_default();
    let note = format!(
        "committed {}, a {} b {}{trial}, floor {}, seq {}",
        s.committed,
        s.status_of(Slot::A),
        s.status_of(Slot::B),
        s.rollback_floor,
        s.seq
    );
    let value = json!({
        "state": "record",
        "seq": s.seq,
        "committed": s.committed.to_string(),
        "trial": s.trial.map(|t| json!({"slot": t.slot.to_string(), "tries_left": t.tries_left, "boot_entry": t.boot_entry.map(|e| e.to_string())})),
        "status": {"a": s.status_of(Slot::A).name(), "b": s.status_of(Slot::B).name()},
        "rollback_floor": s.rollback_floor,
        "layers": s.layer_slots.iter().map(|l| json!({"digest": digest(&l.digest), "partition": l.partition})).collect::<Vec<_>>(),
    });
    (note, value)
}

fn inspect(disk: &Path, output: &Output) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let layout = gpt::read_layout(disk)?;
    let mut f = std::fs::File::open(disk).with_context(|| format!("cannot read {}", disk.display()))?;
    let mut parts = Vec::new();
    for p in &layout.partitions {
        let mut slot = serde_json::Value::Null;
        let mut note = String::new();
        if p.name == gpt::ESP_NAME {
            let mut buf = vec![0u8; p.size_bytes as usize];
            f.seek(SeekFrom::Start(p.offset_bytes))?;
            f.read_exact(&mut buf)?;
            (note, slot) = boot_slots(buf);
        } else if p.name == "cairn-state" {
            let mut buf = vec![0u8; (p.size_bytes as usize).min(cairn_format::bootstate::RECORD_SIZE)];
            f.seek(SeekFrom::Start(p.offset_bytes))?;
            f.read_exact(&mut buf)?;
            (note, slot) = boot_state(&buf);
        } else if p.name.starts_with("cairn-manifest-") {
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
                if p.name == gpt::ESP_NAME {
                    v["boot_slots"] = slot.clone();
                } else if p.name == "cairn-state" {
                    v["boot_state"] = slot.clone();
                } else if !slot.is_null() {
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
