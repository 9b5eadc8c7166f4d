//! Any UEFI x86_64 PC or industrial box PC: Debian's generic kernel (the
//! cloud kernel has no AHCI, USB storage or SD/eMMC drivers) with the
//! storage drivers of real hardware. Tested in QEMU's `q35` machine with
//! the boot disk on NVMe and on AHCI (SATA).

use crate::{Board, DiskBus, TestSuite};

/// The x86_64 board for real hardware.
pub static BOARD: Board = Board {
    name: "generic-x86_64",
    rust_target: "x86_64-unknown-linux-musl",
    deb_arch: "amd64",
    kernel_meta: "linux-image-amd64",
    kernel_package: "linux-image-6.1.0-57-amd64-unsigned",
    kernel_version: "6.1.192-3",
    drivers: &[
        // virtio, so the board also boots in QEMU's (and clouds') defaults.
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        // NVMe.
        "nvme",
        // SATA behind AHCI.
        "ahci",
        "sd_mod",
        // USB mass storage (xHCI for USB 3 ports, EHCI for USB 2 ports of
        // older chipsets; UAS for the disks that speak it).
        "xhci_pci",
        "ehci_pci",
        "usb_storage",
        "uas",
        // SD cards and eMMC (PCI and ACPI-enumerated SDHCI controllers).
        "mmc_block",
        "sdhci_pci",
        "sdhci_acpi",
        // The data partition (ext4 and the checksum it needs are modules
        // in the generic kernel, built in the cloud kernel).
        "ext4",
        "crc32c_generic",
    ],
    test_disks: &[DiskBus::Nvme, DiskBus::Ahci],
    test_suite: TestSuite::Only(&["nvme-ahci"]),
    // The same machine, console and firmware as the QEMU board.
    ..crate::qemu_x86_64::X86_64
};
