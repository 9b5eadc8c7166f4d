//! `nvme-ahci` (issue 11 item 5): a board's image boots from each disk bus
//! the board names (`Board::test_disks`): on generic-x86_64 from NVMe and
//! from SATA behind AHCI, on generic-arm64 from NVMe and from USB storage.
//! Each boot must find the boot disk's partitions by GPT name on the bus's
//! device node (`nvme0n1`, `sda`), load the bus's drivers, and run the demo
//! appliance (containers started, data partition mounted, layers behind
//! dm-verity) until it powers itself off.
//!
//! On the QEMU boards, which test virtio only, the scenario does nothing:
//! every other scenario boots them from virtio already.

use anyhow::{ensure, Context, Result};
use cairn_board::DiskBus;

use super::{powered_off, until_exit, BOOT_TIMEOUT};
use crate::console::{Console, Line};
use crate::qemu::BootOptions;
use crate::{Ctx, Run};

pub fn run(ctx: &Ctx) -> Result<()> {
    let buses: Vec<DiskBus> = ctx.board.test_disks.iter().copied().filter(|b| *b != DiskBus::Virtio).collect();
    if buses.is_empty() {
        eprintln!("nvme-ahci: {} tests virtio disks only, which every other scenario boots: skipped", ctx.board.name);
        return Ok(());
    }
    let app = ctx.build("boot-demo")?;
    for bus in buses {
        let (disk, _) = ctx.disk(&app, &format!("{}.img", bus.name()))?;
        let opts = BootOptions { bus, ..BootOptions::default() };
        let log = format!("{}.log", bus.name());
        let run = ctx.boot_with(&disk, &opts, &log, BOOT_TIMEOUT, &until_exit)?;
        check(&run, bus, app.layers.len()).with_context(|| format!("booting from {} (console {log})", bus.name()))?;
        let c = &run.console;
        eprintln!(
            "nvme-ahci: {} from {}: modules {:.2}s (boot.start -> modules.done), partitions found at t={:.2}s, \
             containers at t={:.2}s, QEMU {:.1}s",
            ctx.board.name,
            bus.name(),
            t(c.first("modules.done", &[])) - t(c.first("boot.start", &[])),
            t(c.first("partitions.found", &[])),
            t(c.first("container.started", &[("name", "driver")])),
            run.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

fn t(l: Option<&Line>) -> f64 {
    l.and_then(|l| l.get("t")).and_then(|t| t.parse().ok()).unwrap_or(-1.0)
}

/// Module file names use `-` or `_` (`xhci-pci.ko`); board lists use `_`.
fn module_name(file: &str) -> String {
    file.trim_end_matches(".ko").replace('-', "_")
}

fn check(run: &Run, bus: DiskBus, layers: usize) -> Result<()> {
    powered_off(run)?;
    let c: &Console = &run.console;
    let loaded: Vec<String> =
        c.all("module.loaded", &[]).iter().filter_map(|l| l.get("name")).map(module_name).collect();
    for m in bus.drivers() {
        ensure!(loaded.iter().any(|l| l == m), "{} disks need module {m}, not loaded (loaded: {loaded:?})", bus.name());
    }
    // Booted through the firmware: every module loads (efivarfs too).
    let failed: Vec<String> =
        c.all("module.failed", &[]).iter().filter_map(|l| l.get("name")).map(module_name).collect();
    ensure!(failed.is_empty(), "modules failed to load: {failed:?}");
    ensure!(loaded.iter().any(|l| l == "efivarfs"), "efivarfs not loaded: the disk was not booted through UEFI");
    let found = c.expect("partitions.found", &[])?;
    ensure!(
        found.get("disk") == Some(bus.first_disk()),
        "partitions found on {:?}, want {} (the {} disk)",
        found.get("disk"),
        bus.first_disk(),
        bus.name()
    );
    c.expect("data.mounted", &[("fs", "ext4"), ("path", "/run/cairn/data")])?;
    ensure!(
        c.all("layer.mounted", &[("check", "verity")]).len() == layers,
        "want {layers} layers behind dm-verity, got {}",
        c.all("layer.mounted", &[("check", "verity")]).len()
    );
    for name in ["alpha", "beta", "driver"] {
        c.expect("container.started", &[("name", name)])?;
    }
    for hostname in ["alpha", "beta-host"] {
        c.expect("inspect", &[("name", hostname)]).with_context(|| format!("{hostname} printed nothing"))?;
    }
    Ok(())
}
