//! Board definitions. One file per board; each is plain data that the build
//! (xtask, the `cairn` host tool) reads to pick a Rust target, fetch a kernel,
//! choose modules for the initramfs and start QEMU.

#![forbid(unsafe_code)]

mod generic_arm64;
mod generic_x86_64;
mod qemu_aarch64;
mod qemu_x86_64;

/// A disk bus QEMU can attach a board's boot disk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    /// virtio-blk over PCI (`vda`).
    #[default]
    Virtio,
    /// NVMe over PCI (`nvme0n1`).
    Nvme,
    /// SATA behind an AHCI controller (`sda`).
    Ahci,
    /// USB mass storage behind an xHCI controller (`sda`).
    Usb,
}

impl DiskBus {
    /// Its name in scenario output and logs.
    pub fn name(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Nvme => "nvme",
            DiskBus::Ahci => "ahci",
            DiskBus::Usb => "usb",
        }
    }

    /// Modules a board must load (unless its kernel has them built in)
    /// to boot from a disk on this bus.
    pub fn drivers(self) -> &'static [&'static str] {
        match self {
            DiskBus::Virtio => &["virtio_pci", "virtio_blk"],
            DiskBus::Nvme => &["nvme"],
            DiskBus::Ahci => &["ahci", "sd_mod"],
            DiskBus::Usb => &["xhci_pci", "usb_storage", "sd_mod"],
        }
    }

    /// The kernel name of the first disk on this bus when it is the only
    /// disk of the machine.
    pub fn first_disk(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vda",
            DiskBus::Nvme => "nvme0n1",
            DiskBus::Ahci | DiskBus::Usb => "sda",
        }
    }
}

/// A board's watchdog: what resets the machine when PID 1 stops turning
/// its event loop (see docs/design.md, "Watchdog").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// The kernel module that provides it (`None`: built into the kernel).
    /// The build puts it and its dependencies into the initramfs, after
    /// the board's drivers and [`SYSTEM_MODULES`].
    pub module: Option<&'static str>,
    /// Its device node (`/dev/watchdog0`; `/dev/watchdog` is the same
    /// device under its legacy name).
    pub device: &'static str,
    /// The timeout cairn-init sets, in seconds: how long PID 1 may go
    /// without petting it before the machine resets.
    pub timeout_s: u32,
}

/// The software watchdog (`softdog`): a kernel timer, so it catches a hung
/// PID 1 but not a hung kernel. Debian's cloud kernels build no hardware
/// watchdog driver for QEMU's machines (no `i6300esb`, no `iTCO_wdt`); a
/// board for specific hardware names its SoC's or chipset's driver.
pub const SOFTDOG: Watchdog = Watchdog { module: Some("softdog"), device: "/dev/watchdog0", timeout_s: 15 };

/// The device node cairn-init opens when the command line names none.
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog0";

/// Which QEMU scenarios `cargo xtask test` runs on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestSuite {
    /// Every scenario (the QEMU machine boards).
    All,
    /// Only these (boards for real hardware, whose QEMU runs only check
    /// what differs from the QEMU boards).
    Only(&'static [&'static str]),
}

/// Everything the build needs to know about one board.
#[derive(Debug)]
pub struct Board {
    /// Name used on the command line (`--board NAME`).
    pub name: &'static str,
    /// Rust target triple `cairn-init` and payloads are built for.
    pub rust_target: &'static str,
    /// Debian architecture of the kernel package.
    pub deb_arch: &'static str,
    /// Debian meta package that names the newest kernel; only
    /// `cargo xtask kernel-update` reads it, to move the two fields below.
    pub kernel_meta: &'static str,
    /// The exact kernel package the board's images are built with
    /// (`linux-image-<release>-unsigned`), so one commit builds one disk.
    pub kernel_package: &'static str,
    /// Its exact Debian version.
    pub kernel_version: &'static str,
    /// The board's drivers: kernel modules the init loads at boot, by
    /// module name, before [`SYSTEM_MODULES`] ([`Board::modules`]).
    pub drivers: &'static [&'static str],
    /// Console device the kernel and cairn-init print on.
    pub console: &'static str,
    /// QEMU system emulator binary.
    pub qemu_binary: &'static str,
    /// Debian package that provides `qemu_binary`.
    pub qemu_package: &'static str,
    /// QEMU machine arguments (machine, cpu, memory, firmware options).
    pub qemu_args: &'static [&'static str],
    /// Extra kernel command line arguments besides the console.
    pub kernel_cmdline: &'static str,
    /// UEFI architecture suffix of its boot files (`x64`: `BOOTX64.EFI`,
    /// `systemd-bootx64.efi`, `linuxx64.efi.stub`; `aa64`).
    pub efi_arch: &'static str,
    /// UEFI firmware QEMU boots the disk with: code, variable store template.
    pub firmware_code: &'static str,
    /// The firmware's variable store template (copied for every boot).
    pub firmware_vars: &'static str,
    /// Debian package that provides the firmware.
    pub firmware_package: &'static str,
    /// The buses QEMU tests the board's boot disk on (the `nvme-ahci`
    /// scenario boots once from each).
    pub test_disks: &'static [DiskBus],
    /// What `cargo xtask test` runs on this board.
    pub test_suite: TestSuite,
    /// The watchdog cairn-init arms (`None`: the board has none). Its
    /// module joins [`Board::modules`]; its timeout (and its device, when
    /// not [`DEFAULT_WATCHDOG_DEVICE`]) join [`Board::cmdline`].
    pub watchdog: Option<Watchdog>,
}

/// Modules every board loads after its drivers: the layers (squashfs
/// behind dm-verity, under overlayfs) and the EFI system partition (FAT),
/// which a boot from a slot image reads before it starts anything.
pub const SYSTEM_MODULES: &[&str] =
    &["squashfs", "overlay", "dm_mod", "dm_verity", "vfat", "nls_cp437", "nls_ascii", "nls_utf8"];

/// Modules every board carries for what the boot does after its first
/// starts: the data partition's quota format (`quota_v2`: without it an
/// ext4 with the `quota` feature does not mount read-write). The init
/// loads them once the first starts are issued, or earlier when the boot
/// mounts the data partition first (an appliance with volumes).
pub const LATE_MODULES: &[&str] = &["quota_v2"];

/// Modules every board carries for the firmware's variables (efivarfs).
/// The init loads them only where the kernel found UEFI firmware
/// (`/sys/firmware/efi`): elsewhere (a boot by QEMU's `-kernel`, a board
/// whose loader is not UEFI) efivarfs's init fails with ENODEV, which
/// took 68 ms of an emulated boot.
pub const EFI_MODULES: &[&str] = &["efivarfs"];

/// Modules every board carries for container networks: bridges and veth
/// pairs (with their dependencies llc and stp). The init loads them only
/// for a manifest with a `[[network]]`: `bridge` alone takes over 100 ms
/// to load under emulation, which a boot without container networks
/// should not pay.
pub const NETWORK_MODULES: &[&str] = &["bridge", "veth"];

/// Modules every board carries for the firewall of container networks
/// (nf_tables, connection tracking, NAT: masquerade for egress, DNAT for
/// published ports, `fib daddr type local` to match the device's own
/// addresses). The build resolves their dependencies (nfnetlink,
/// nf_conntrack, nf_nat, nf_defrag_ipv4/6, libcrc32c) and lists them apart
/// in the initramfs: the init loads them only for a manifest with a network
/// with egress or a published port, so other appliances pay no boot time
/// for them (only initramfs bytes).
pub const NETFILTER_MODULES: &[&str] = &["nf_tables", "nft_ct", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4"];

impl Board {
    /// Kernel modules the init loads only when the manifest has container
    /// networks ([`NETWORK_MODULES`]).
    pub fn network_modules(&self) -> &'static [&'static str] {
        NETWORK_MODULES
    }

    /// Kernel modules the init loads only when the manifest needs the
    /// firewall ([`NETFILTER_MODULES`]).
    pub fn netfilter_modules(&self) -> &'static [&'static str] {
        NETFILTER_MODULES
    }

    /// Kernel modules the init loads after the first starts, or when the
    /// boot first needs them ([`LATE_MODULES`]).
    pub fn late_modules(&self) -> &'static [&'static str] {
        LATE_MODULES
    }

    /// Kernel modules the init loads only on a machine with UEFI firmware
    /// ([`EFI_MODULES`]).
    pub fn efi_modules(&self) -> &'static [&'static str] {
        EFI_MODULES
    }

    /// Kernel modules the init loads at boot, by module name: the board's
    /// drivers, then [`SYSTEM_MODULES`]. The build adds their dependencies
    /// and writes them in load order into the initramfs.
    pub fn modules(&self) -> Vec<&'static str> {
        let watchdog = self.watchdog.and_then(|w| w.module);
        self.drivers.iter().chain(SYSTEM_MODULES).copied().chain(watchdog).collect()
    }

    /// The full kernel command line for this board: the console, the
    /// board's words, its watchdog (`cairn.watchdog=SECONDS`, and
    /// `cairn.watchdog_device=PATH` for another device than the default;
    /// a later `cairn.watchdog=` in `extra` overrides them), then `extra`.
    pub fn cmdline(&self, extra: &str) -> String {
        let mut s = format!("console={} {}", self.console, self.kernel_cmdline);
        if let Some(w) = self.watchdog {
            s.push_str(&format!(" cairn.watchdog={}", w.timeout_s));
            if w.device != DEFAULT_WATCHDOG_DEVICE {
                s.push_str(&format!(" cairn.watchdog_device={}", w.device));
            }
        }
        if !extra.is_empty() {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }
}

/// The board used when none is named.
pub const DEFAULT_BOARD: &str = "qemu-x86_64";

/// Every board cairn knows: the QEMU machine boards first.
pub fn all() -> [&'static Board; 4] {
    [&qemu_x86_64::BOARD, &qemu_aarch64::BOARD, &generic_x86_64::BOARD, &generic_arm64::BOARD]
}

/// Look a board up by name.
pub fn by_name(name: &str) -> Option<&'static Board> {
    all().into_iter().find(|b| b.name == name)
}

/// Names of every board, for error messages.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|b| b.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_board_exists_and_names_are_unique() {
        assert!(by_name(DEFAULT_BOARD).is_some());
        let mut names = names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len());
        assert!(by_name("no-such-board").is_none());
    }

    #[test]
    fn kernels_are_pinned_to_an_exact_package() {
        for b in all() {
            assert!(
                b.kernel_package.starts_with("linux-image-") && b.kernel_package.ends_with("-unsigned"),
                "{}",
                b.name
            );
            assert!(b.kernel_package.contains(b.deb_arch), "{}", b.name);
            assert!(b.kernel_version.chars().next().is_some_and(|c| c.is_ascii_digit()), "{}", b.name);
            assert_ne!(b.kernel_meta, b.kernel_package);
        }
    }

    fn board(name: &str) -> &'static Board {
        by_name(name).unwrap_or_else(|| panic!("no board {name}"))
    }

    #[test]
    fn generic_boards_use_the_generic_kernels_and_test_real_buses() {
        for (name, qemu, buses) in [
            ("generic-x86_64", "qemu-x86_64", [DiskBus::Nvme, DiskBus::Ahci]),
            ("generic-arm64", "qemu-aarch64", [DiskBus::Nvme, DiskBus::Usb]),
        ] {
            let (g, q) = (board(name), board(qemu));
            assert_eq!((g.rust_target, g.deb_arch, g.console), (q.rust_target, q.deb_arch, q.console), "{name}");
            assert!(!g.kernel_package.contains("cloud"), "{name}: the cloud kernel has no AHCI/USB/MMC drivers");
            assert_eq!(g.kernel_meta, format!("linux-image-{}", g.deb_arch));
            assert_eq!(g.test_disks, buses, "{name}");
            assert_eq!(g.test_suite, TestSuite::Only(&["nvme-ahci"]), "{name}");
            // Everything the QEMU board of the architecture loads, so the
            // generic image also boots where the QEMU one does.
            let (gm, qm) = (g.modules(), q.modules());
            for m in &qm {
                assert!(gm.contains(m), "{name} lacks {m} that {qemu} loads");
            }
            for m in q.netfilter_modules() {
                assert!(g.netfilter_modules().contains(m), "{name} lacks {m} that {qemu} loads for the firewall");
                assert!(!gm.contains(m), "{name} loads {m} at every boot, not only for the firewall");
            }
            for m in q.late_modules() {
                assert!(g.late_modules().contains(m), "{name} lacks {m} that {qemu} loads late");
                assert!(!gm.contains(m), "{name} loads {m} before the first starts");
            }
            for m in q.network_modules() {
                assert!(g.network_modules().contains(m), "{name} lacks {m} that {qemu} loads for networks");
                assert!(!gm.contains(m), "{name} loads {m} at every boot, not only for container networks");
            }
            for m in ["nvme", "ahci", "sd_mod", "xhci_pci", "usb_storage", "uas", "mmc_block", "ext4", "crc32c_generic"]
            {
                assert!(gm.contains(&m), "{name} lacks {m}");
            }
        }
    }

    #[test]
    fn every_board_loads_the_drivers_of_its_test_buses_and_the_esp_stack() {
        for b in all() {
            assert!(!b.test_disks.is_empty(), "{}", b.name);
            let all = b.modules();
            let mut modules = all.clone();
            modules.sort_unstable();
            modules.dedup();
            assert_eq!(modules.len(), all.len(), "{}: a module listed twice", b.name);
            for bus in b.test_disks {
                // The cloud kernels build NVMe in; the QEMU boards test virtio only.
                for m in bus.drivers() {
                    assert!(all.contains(m), "{}: {} disks need {m}", b.name, bus.name());
                }
            }
            for m in ["vfat", "nls_cp437", "nls_ascii", "nls_utf8", "squashfs", "overlay", "dm_verity"] {
                assert!(all.contains(&m), "{} lacks {m}", b.name);
            }
            assert!(!all.contains(&"quota_v2") && b.late_modules().contains(&"quota_v2"), "{}: quota_v2 late", b.name);
            assert!(
                !all.contains(&"efivarfs") && b.efi_modules().contains(&"efivarfs"),
                "{}: efivarfs on demand",
                b.name
            );
            // Virtio everywhere: every board also boots in QEMU's defaults.
            assert!(DiskBus::Virtio.drivers().iter().all(|m| all.contains(m)), "{}", b.name);
        }
        let full: Vec<_> = all().into_iter().filter(|b| b.test_suite == TestSuite::All).map(|b| b.name).collect();
        assert_eq!(full, ["qemu-x86_64", "qemu-aarch64"], "the full QEMU suite runs on the QEMU boards");
    }

    #[test]
    fn every_board_arms_a_watchdog_whose_module_is_loaded_and_named_on_the_command_line() {
        for b in all() {
            let w = b.watchdog.unwrap_or_else(|| panic!("{} names no watchdog", b.name));
            assert!(w.device.starts_with("/dev/watchdog"), "{}", b.name);
            assert!((5..=60).contains(&w.timeout_s), "{}: timeout {}", b.name, w.timeout_s);
            if let Some(m) = w.module {
                assert_eq!(b.modules().last(), Some(&m), "{}: the watchdog module loads last", b.name);
            }
            let line = b.cmdline("cairn.watchdog=off");
            assert!(line.contains(&format!(" cairn.watchdog={} ", w.timeout_s)), "{line}");
            assert!(line.ends_with(" cairn.watchdog=off"), "the extra words come last, so they override: {line}");
        }
        assert_eq!(board("qemu-x86_64").watchdog, Some(SOFTDOG));
        let other = Board { watchdog: Some(Watchdog { device: "/dev/watchdog1", ..SOFTDOG }), ..qemu_x86_64::X86_64 };
        assert_eq!(
            other.cmdline(""),
            "console=ttyS0 panic=-1 quiet loglevel=4 cairn.watchdog=15 cairn.watchdog_device=/dev/watchdog1"
        );
        let none = Board { watchdog: None, ..qemu_x86_64::X86_64 };
        assert_eq!(none.cmdline("x"), "console=ttyS0 panic=-1 quiet loglevel=4 x");
        assert!(!none.modules().contains(&"softdog"));
    }

    #[test]
    fn disk_buses_name_their_first_disk() {
        assert_eq!(DiskBus::default(), DiskBus::Virtio);
        let firsts: Vec<_> = [DiskBus::Virtio, DiskBus::Nvme, DiskBus::Ahci, DiskBus::Usb]
            .iter()
            .map(|b| (b.name(), b.first_disk()))
            .collect();
        assert_eq!(firsts, [("virtio", "vda"), ("nvme", "nvme0n1"), ("ahci", "sda"), ("usb", "sda")]);
    }
}
