//! QEMU `q35` x86_64 machine with virtio-blk over PCI.

use crate::{Board, DiskBus, TestSuite, SOFTDOG};

/// The default board.
pub static BOARD: Board = X86_64;

/// The board as a value, for the boards that share its machine.
pub(crate) const X86_64: Board = Board {
    name: "qemu-x86_64",
    rust_target: "x86_64-unknown-linux-musl",
    deb_arch: "amd64",
    kernel_meta: "linux-image-cloud-amd64",
    kernel_package: "linux-image-6.1.0-57-cloud-amd64-unsigned",
    kernel_version: "6.1.192-3",
    drivers: &["virtio_pci", "virtio_blk", "virtio_net"],
    console: "ttyS0",
    qemu_binary: "qemu-system-x86_64",
    qemu_package: "qemu-system-x86",
    qemu_args: &["-machine", "q35", "-cpu", "max", "-m", "512", "-smp", "2"],
    kernel_cmdline: "panic=-1 quiet loglevel=4",
    efi_arch: "x64",
    firmware_code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
    firmware_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
    firmware_package: "ovmf",
    test_disks: &[DiskBus::Virtio],
    test_suite: TestSuite::All,
    // No hardware watchdog driver in the cloud kernel: softdog.
    watchdog: Some(SOFTDOG),
};
