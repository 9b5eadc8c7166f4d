//! QEMU `virt` aarch64 machine (PL011 console, virtio-blk over PCI).

use crate::{Board, DiskBus, TestSuite, SOFTDOG};

/// The 64-bit ARM board.
pub static BOARD: Board = AARCH64;

/// The board as a value, for the boards that share its machine.
pub(crate) const AARCH64: Board = Board {
    name: "qemu-aarch64",
    rust_target: "aarch64-unknown-linux-musl",
    deb_arch: "arm64",
    kernel_meta: "linux-image-cloud-arm64",
    kernel_package: "linux-image-6.1.0-57-cloud-arm64-unsigned",
    kernel_version: "6.1.192-3",
    drivers: &["virtio_pci", "virtio_blk", "virtio_net"],
    console: "ttyAMA0",
    qemu_binary: "qemu-system-aarch64",
    qemu_package: "qemu-system-arm",
    qemu_args: &["-machine", "virt", "-cpu", "max,pauth-impdef=on", "-m", "512", "-smp", "2"],
    kernel_cmdline: "panic=-1 quiet loglevel=4",
    efi_arch: "aa64",
    firmware_code: "/usr/share/AAVMF/AAVMF_CODE.fd",
    firmware_vars: "/usr/share/AAVMF/AAVMF_VARS.fd",
    firmware_package: "qemu-efi-aarch64",
    test_disks: &[DiskBus::Virtio],
    test_suite: TestSuite::All,
    // No hardware watchdog driver in the cloud kernel: softdog.
    watchdog: Some(SOFTDOG),
};
