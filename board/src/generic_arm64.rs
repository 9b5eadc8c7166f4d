//! Any 64-bit ARM board that boots UEFI applications (U-Boot's EFI or an
//! EDK2 port): Debian's generic arm64 kernel with the storage drivers of
//! real boards. Tested in QEMU's `virt` machine with the boot disk on NVMe
//! and on USB storage (xHCI).
//!
//! SD/eMMC: the kernel has the MMC core and `mmc_block` built in; the
//! host controllers of the common SoC families are modules listed here.
//! A SoC whose controller also needs a PHY, clock or regulator driver that
//! Debian builds as a module needs a board file of its own that adds it.

use crate::{Board, DiskBus, TestSuite};

/// The arm64 board for real hardware.
pub static BOARD: Board = Board {
    name: "generic-arm64",
    rust_target: "aarch64-unknown-linux-musl",
    deb_arch: "arm64",
    kernel_meta: "linux-image-arm64",
    kernel_package: "linux-image-6.1.0-57-arm64-unsigned",
    kernel_version: "6.1.192-3",
    drivers: &[
        // virtio, so the board also boots in QEMU's defaults.
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        // NVMe.
        "nvme",
        // SATA: AHCI on PCI and on the SoC (platform AHCI).
        "ahci",
        "ahci_platform",
        "sd_mod",
        // USB mass storage: xHCI on PCI and on the SoC, EHCI, the
        // DesignWare USB 3 (dwc3) and USB 2 (dwc2) controllers.
        "xhci_pci",
        "xhci_plat_hcd",
        "ehci_pci",
        "ehci_platform",
        "dwc3",
        "dwc3_of_simple",
        "dwc2",
        "usb_storage",
        "uas",
        // SD cards and eMMC (mmc_block is built in): ACPI SDHCI, Xilinx
        // and Rockchip (arasan, dwcmshc, dw_mmc), Raspberry Pi (iproc,
        // bcm2835), NXP (esdhc), Tegra, Qualcomm, Marvell (xenon),
        // Amlogic (meson-gx), Allwinner (sunxi).
        "mmc_block",
        "sdhci_acpi",
        "sdhci_of_arasan",
        "sdhci_of_dwcmshc",
        "dw_mmc_rockchip",
        "sdhci_iproc",
        "bcm2835",
        "sdhci_esdhc_imx",
        "sdhci_of_esdhc",
        "sdhci_tegra",
        "sdhci_msm",
        "sdhci_xenon_driver",
        "meson_gx_mmc",
        "sunxi_mmc",
        // The data partition (ext4 and the checksum it needs are modules
        // in the generic kernel, built in the cloud kernel).
        "ext4",
        "crc32c_generic",
    ],
    test_disks: &[DiskBus::Nvme, DiskBus::Usb],
    test_suite: TestSuite::Only(&["nvme-ahci"]),
    // The same machine, console and firmware as the QEMU board.
    ..crate::qemu_aarch64::AARCH64
};
