//! The scenarios, one file each.

mod bad_signature;
mod boot_demo;
mod boot_disk;
mod cli_disk;
mod dev_console;
// console and control socket area
mod console_abuse;
mod corrupt_layer;
mod exit_codes;
mod hostile;
mod init_semantics;
mod limits;
mod limits_extended;
mod network;
mod oci_layers;
mod reaping;
mod restart;
mod shutdown;
mod userns;
// Non-blocking container starts (issue 8 item 4).
mod slow_start;
// Filesystem reach (issue 8, rootfs).
mod hostile_rootfs;
// Layers behind dm-verity (issue 10).
mod verity_tamper;
// Boot slots and boot counting (issue 11).
mod boot_slots;
// Boot disks beyond virtio (issue 11 item 5).
mod nvme_ahci;
// Images people can flash (issue 11 item 6).
mod flash_card;
// The signed boot chain (issue 11 item 3).
mod secure_boot;
// Over-the-air updates (issue 12).
mod ota;
mod ota_network;
// The device's uplink (issue 16 item 4).
mod net_uplink;
// Container networks (issue 16 items 1 and 2).
mod net_bridge;
mod net_churn;
mod net_egress;
// The watchdog (issue 12 item 5).
mod watchdog;
// Volumes (issue 14 item 1).
mod volumes;
// Operating a running appliance (issue 14).
mod control_permissions;
mod exec;
mod logs;
// Health checks, live OOM events, pause/resume (issue 14 item 2).
mod health;
mod health_gate;
mod oom_live;
mod pause;

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::console::Console;
use crate::Boards::{Every, One};
use crate::{Ending, Run, Scenario};

/// Every scenario in run order. The slowest few whose checks do not depend
/// on the architecture run on one board only in a whole-suite run
/// ([`crate::Boards::One`]), split between the boards so that neither suite
/// is much longer than the other.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario { name: "boot-demo", run: boot_demo::run, boards: Every },
        Scenario { name: "limits", run: limits::run, boards: Every },
        Scenario { name: "bad-signature", run: bad_signature::run, boards: Every },
        Scenario { name: "corrupt-layer", run: corrupt_layer::run, boards: Every },
        Scenario { name: "reaping", run: reaping::run, boards: Every },
        Scenario { name: "shutdown", run: shutdown::run, boards: Every },
        Scenario { name: "restart", run: restart::run, boards: Every },
        Scenario { name: "hostile", run: hostile::run, boards: Every },
        Scenario { name: "init-semantics", run: init_semantics::run, boards: Every },
        Scenario { name: "limits-extended", run: limits_extended::run, boards: Every },
        Scenario { name: "exit-codes", run: exit_codes::run, boards: Every },
        Scenario { name: "network", run: network::run, boards: Every },
        Scenario { name: "oci-layers", run: oci_layers::run, boards: Every },
        Scenario { name: "cli-disk", run: cli_disk::run, boards: Every },
        Scenario { name: "userns", run: userns::run, boards: Every },
        // Non-blocking container starts (issue 8 item 4).
        Scenario { name: "slow-start", run: slow_start::run, boards: Every },
        // Filesystem reach (issue 8, rootfs).
        Scenario { name: "hostile-rootfs", run: hostile_rootfs::run, boards: Every },
        // issue 8: boot disk, product binding, state copies (boot_disk.rs)
        // Once: the disk choice reads the loader's partition UUID, which
        // systemd-boot sets the same way on both firmwares.
        Scenario { name: "foreign-disk", run: boot_disk::foreign_disk, boards: One("qemu-x86_64") },
        Scenario { name: "wrong-product", run: boot_disk::wrong_product, boards: Every },
        Scenario { name: "state-copy0-corrupt", run: boot_disk::state_copy0_corrupt, boards: Every },
        // console and control socket area
        Scenario { name: "console-abuse", run: console_abuse::run, boards: Every },
        // Layers behind dm-verity (issue 10); verity-boot's checks run in boot-demo's boot.
        Scenario { name: "verity-tamper", run: verity_tamper::run, boards: Every },
        // Boot slots and boot counting (issue 11).
        Scenario { name: "boot-counting", run: boot_slots::counting, boards: Every },
        Scenario { name: "boot-bless", run: boot_slots::bless, boards: Every },
        Scenario { name: "boot-trial-fails", run: boot_slots::trial_fails, boards: Every },
        // Boot disks beyond virtio: NVMe, AHCI, USB (issue 11 item 5).
        Scenario { name: "nvme-ahci", run: nvme_ahci::run, boards: Every },
        // Images people can flash (issue 11 item 6): bmaptool onto a larger, used card.
        Scenario { name: "flash-card", run: flash_card::run, boards: Every },
        // The signed boot chain (issue 11 item 3).
        Scenario { name: "secure-boot", run: secure_boot::run, boards: Every },
        // Over-the-air updates (issue 12).
        Scenario { name: "ota-install", run: ota::install, boards: Every },
        Scenario { name: "ota-rollback", run: ota::rollback, boards: Every },
        // Once: the journal, the resume and the trial are the installer's
        // own logic over block writes; the cuts are the harness killing QEMU.
        Scenario { name: "ota-powercut", run: ota::powercut, boards: One("qemu-x86_64") },
        // Once: every refusal is the bundle check's pure logic.
        Scenario { name: "ota-antirollback", run: ota::antirollback, boards: One("qemu-aarch64") },
        Scenario { name: "ota-watchdog", run: ota::watchdog, boards: Every },
        // An update requested over the control socket (issue 12 item 2).
        Scenario { name: "ota-request", run: ota::request, boards: Every },
        // The update agent over HTTP, with dropped connections (issue 12 item 6).
        Scenario { name: "ota-network", run: ota_network::run, boards: Every },
        // The device's uplink by DHCP from a container (issue 16 item 4).
        Scenario { name: "net-uplink", run: net_uplink::run, boards: Every },
        // Container networks: bridges, veth pairs, names, isolation (issue 16).
        Scenario { name: "net-bridge", run: net_bridge::run, boards: Every },
        Scenario { name: "net-churn", run: net_churn::run, boards: Every },
        // Egress (NAT), a published port (DNAT), the firewall (issue 16 item 3).
        Scenario { name: "net-egress", run: net_egress::run, boards: Every },
        // The watchdog (issue 12 item 5): armed, petted, reset on a hang, disarmed at power-off.
        // Once: both boards use softdog; the watchdog reset itself runs on
        // both in ota-watchdog.
        Scenario { name: "watchdog", run: watchdog::run, boards: One("qemu-aarch64") },
        // Volumes (issue 14 item 1): persistent and tmpfs volumes, limits, read-only, user namespaces.
        // Once: ext4 quotas, idmapped ids and PID 1's volume logic do not
        // depend on the architecture.
        Scenario { name: "volumes", run: volumes::run, boards: One("qemu-x86_64") },
        // Operating a running appliance (issue 14): control permissions, logs.
        Scenario { name: "control-permissions", run: control_permissions::run, boards: Every },
        Scenario { name: "logs", run: logs::run, boards: Every },
        // Health checks, live OOM events, pause/resume (issue 14 item 2).
        Scenario { name: "health", run: health::run, boards: Every },
        Scenario { name: "oom-live", run: oom_live::run, boards: Every },
        Scenario { name: "pause", run: pause::run, boards: Every },
        Scenario { name: "health-gate", run: health_gate::run, boards: Every },
        // Exec into a running container (issue 14 item 4).
        Scenario { name: "exec", run: exec::run, boards: Every },
        // The development console (issue 14 item 6).
        Scenario { name: "dev-console", run: dev_console::run, boards: Every },
    ]
}

/// Generous: TCG on a loaded 2-core machine is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// Never stop early: wait for QEMU to exit by itself.
pub fn until_exit(_: &Console) -> bool {
    false
}

/// PID 1 never panicked and the kernel never did either.
pub fn no_panic(run: &Run) -> Result<()> {
    for (what, text) in [("kernel panic", "Kernel panic"), ("a Rust panic", "panicked at")] {
        if let Some(at) = run.console.raw.iter().position(|l| l.contains(text)) {
            bail!("{what} on the console:\n{}", panic_excerpt(&run.console.raw, at));
        }
    }
    Ok(())
}

/// The console around a panic, indented under the failure line: what led to
/// it and the kernel's reason and trace, so that a run whose logs are gone
/// (a CI machine's) still says what happened.
fn panic_excerpt(raw: &[String], at: usize) -> String {
    let from = at.saturating_sub(PANIC_BEFORE);
    let lines = raw.iter().skip(from).take(PANIC_BEFORE + PANIC_AFTER);
    lines.map(|l| format!("     | {l}")).collect::<Vec<_>>().join("\n")
}

const PANIC_BEFORE: usize = 30;
const PANIC_AFTER: usize = 12;

/// Build the scenario appliance `name`, boot it until the device powers
/// itself off, and check that it did so in order.
pub fn boot_until_poweroff(ctx: &crate::Ctx, name: &str) -> Result<Run> {
    let app = ctx.build(name)?;
    let (disk, _) = ctx.disk(&app, "disk.img")?;
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    Ok(run)
}

/// The device powered itself off in order.
pub fn powered_off(run: &Run) -> Result<()> {
    no_panic(run)?;
    ensure!(run.ending == Ending::Exited, "QEMU did not exit by itself ({:?} after {:?})", run.ending, run.elapsed);
    run.console.expect("shutdown.complete", &[("kind", "poweroff")])?;
    awaited(run)
}

/// Every `await-stopped` driver saw the containers it names stopped: one
/// that gave up waiting (and sent its request anyway) means the checks run
/// on a device where something the scenario waits for never ended.
pub fn awaited(run: &Run) -> Result<()> {
    for l in run.console.all("await-stopped", &[]) {
        ensure!(l.get("timeout") == Some("0"), "a driver gave up waiting for containers to stop: {:?}", l.fields);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(lines: &[&str]) -> Run {
        let mut console = Console::default();
        for l in lines {
            console.push(l);
        }
        Run { console, ending: Ending::Exited, elapsed: Duration::ZERO }
    }

    #[test]
    fn a_panic_fails_with_what_led_to_it() {
        let clean = run_of(&["cairn: t=1.0 event=boot.start", "[    8.2] reboot: Power down"]);
        assert!(no_panic(&clean).is_ok());
        let mut lines = vec!["cairn: t=1.0 event=boot.start"; 40];
        lines.extend([
            "[    2.1] Call trace:",
            "[    2.1]  efivarfs_init+0x10",
            "[    2.1] Kernel panic - not syncing: Oops",
        ]);
        let e = no_panic(&run_of(&lines)).unwrap_err().to_string();
        assert!(e.starts_with("kernel panic on the console:\n"), "{e}");
        assert!(e.contains("     | [    2.1]  efivarfs_init+0x10\n"), "the trace is missing: {e}");
        assert_eq!(e.lines().count(), 1 + PANIC_BEFORE + 1, "{e}");
        let e = no_panic(&run_of(&["thread 'main' panicked at init/src/main.rs:9"])).unwrap_err().to_string();
        assert!(e.starts_with("a Rust panic on the console:\n     | thread 'main'"), "{e}");
    }

    #[test]
    fn a_driver_that_gave_up_waiting_fails_the_run() {
        let line = |timeout: &str| {
            format!("[driver] payload name=driver event=await-stopped names=a,b polls=600 timeout={timeout}")
        };
        assert!(awaited(&run_of(&[&line("0")])).is_ok());
        assert!(awaited(&run_of(&["cairn: t=1.0 event=boot.start"])).is_ok());
        let e = awaited(&run_of(&[&line("0"), &line("1")])).unwrap_err().to_string();
        assert!(e.starts_with("a driver gave up waiting for containers to stop"), "{e}");
    }

    #[test]
    fn a_scenario_run_once_names_a_board_with_the_whole_suite_and_each_such_board_runs_some() {
        let full: Vec<&str> = cairn_board::all()
            .into_iter()
            .filter(|b| b.test_suite == cairn_board::TestSuite::All)
            .map(|b| b.name)
            .collect();
        let once: Vec<(&str, &str)> = all()
            .iter()
            .filter_map(|s| match s.boards {
                One(b) => Some((s.name, b)),
                Every => None,
            })
            .collect();
        for (name, board) in &once {
            assert!(full.contains(board), "{name} runs only on {board}, which has no whole suite");
        }
        for board in &full {
            let runs = all().iter().filter(|s| s.boards.include(board)).count();
            assert!(runs < all().len(), "{board} runs every scenario: the pins all name it");
        }
    }
}
