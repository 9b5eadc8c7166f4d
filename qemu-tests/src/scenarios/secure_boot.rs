//! `secure-boot` (issue 11, item 3): the disk's loader and slot image are
//! signed with a Secure Boot key (`cairn image assemble --sign`'s
//! library), the firmware's variable store has that key enrolled as PK,
//! KEK and db, and Secure Boot is on (OVMF's Secure Boot build on x86_64,
//! AAVMF on aarch64). The device boots and says `secure_boot=on`. Then one
//! byte of the initramfs inside slot a's image on the ESP is changed: the
//! firmware refuses the image (`Access Denied`) and nothing of it runs.
//!
//! The factory way first (`--enroll-keys`): the firmware's variable store
//! is the board's empty one (setup mode), the ESP carries the key's
//! PK/KEK/db `.auth` files; systemd-boot enrolls them at the first boot and
//! resets, and the second boot is verified.

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{ensure, Context, Result};
use cairn_build::gpt;
use cairn_build::secureboot::{enrolled_vars, SbKey, SecureBootFirmware, AAVMF_AARCH64, OVMF_X86_64};

use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::qemu::{BootOptions, SecureFirmware};
use crate::{Ctx, Ending};

pub fn run(ctx: &Ctx) -> Result<()> {
    let fw: SecureBootFirmware = match ctx.board.efi_arch {
        "x64" => OVMF_X86_64,
        _ => AAVMF_AARCH64,
    };
    let key = SbKey::generate("cairn secure-boot scenario", 1)?;
    let app = ctx.build("boot-slots")?;
    let mut esp = ctx.art.kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
    esp.sign(&key)?;
    let (disk, layout) = ctx.disk_with_esp(&app, "disk.img", &esp)?;
    let vars = ctx.dir.join("vars.fd");
    enrolled_vars(std::path::Path::new(fw.vars_template), &key, &vars)?;
    let code = std::path::Path::new(fw.code);

    // Factory enrollment: setup mode, the keys on the ESP.
    let mut factory = ctx.art.kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
    factory.sign(&key)?;
    factory.enroll_keys(&key)?;
    let (factory_disk, _) = ctx.disk_with_esp(&app, "factory.img", &factory)?;
    let setup_vars = ctx.dir.join("setup-vars.fd");
    std::fs::copy(ctx.board.firmware_vars, &setup_vars)?;
    let setup = SecureFirmware { code, vars: &setup_vars, args: fw.qemu_args };
    let opts = BootOptions { secure: Some(setup), ..BootOptions::default() };
    let run = ctx.boot_with(&factory_disk, &opts, "enroll.log", BOOT_TIMEOUT, &until_exit)?;
    no_panic(&run)?;
    ensure!(run.console.contains("Enrolling secure boot keys"), "systemd-boot did not enroll the keys");
    ensure!(!run.console.contains("Failed to write"), "the firmware refused the .auth files");
    let run = ctx.boot_with(&factory_disk, &opts, "enrolled.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    run.console.expect("boot.slot", &[("slot", "a"), ("secure_boot", "on")])?;

    // A variable store written with the key enrolled (a flashing station's way).
    let secure = SecureFirmware { code, vars: &vars, args: fw.qemu_args };
    let opts = BootOptions { secure: Some(secure), ..BootOptions::default() };

    // Signed and enrolled: it boots, and the device knows Secure Boot was on.
    let run = ctx.boot_with(&disk, &opts, "signed.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "a"), ("state", "blessed"), ("secure_boot", "on")])?;
    c.expect("manifest.verified", &[("appliance", "boot-slots")])?;
    c.expect("container.started", &[("name", "app")])?;

    // One byte of the initramfs inside slot a's image, on the ESP.
    let part = layout.find(gpt::ESP_NAME).context("no ESP")?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&disk)?;
    let mut region = vec![0u8; part.size_bytes as usize];
    f.seek(SeekFrom::Start(part.offset_bytes))?;
    f.read_exact(&mut region)?;
    let rd = &ctx.art.kit.initramfs;
    let needle = rd.get(rd.len() / 2..rd.len() / 2 + 64).context("a short initramfs")?;
    let at = region.windows(needle.len()).position(|w| w == needle).context("the initramfs is not on the ESP")?;
    let at = part.offset_bytes + at as u64 + 32;
    f.seek(SeekFrom::Start(at))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&[b[0] ^ 0x01])?;
    drop(f);

    let refused = |c: &crate::console::Console| c.contains("Access Denied") || c.contains("Security Violation");
    let run = ctx.boot_with(&disk, &opts, "tampered.log", BOOT_TIMEOUT, &refused)?;
    no_panic(&run)?;
    ensure!(run.ending == Ending::Stopped, "the firmware did not refuse the changed image: QEMU {:?}", run.ending);
    ensure!(run.console.first("boot.start", &[]).is_none(), "cairn-init ran from the changed image");
    ensure!(!run.console.contains("Linux version"), "the changed image's kernel started");
    Ok(())
}
