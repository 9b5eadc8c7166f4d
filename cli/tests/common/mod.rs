//! Test setup shared by the `cairn image assemble` tests: a fake boot kit.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// A minimal PE32+ image holding `text`.
pub fn tiny_pe(text: &[u8]) -> Vec<u8> {
    cairn_build::pe::minimal_image(text)
}

/// Under `d`: `kernel/` (kernel release 6.1.0-test: an EFI kernel and a
/// module tree where every module of `board` is built in) and `sdboot/`
/// (systemd-boot and systemd-stub for the board's architecture), for
/// `--kernel kernel --systemd-boot sdboot`.
pub fn fake_boot_kit(d: &Path, board: &str) {
    let board = cairn_board::by_name(board).unwrap();
    let modules = d.join("kernel/lib/modules/6.1.0-test");
    std::fs::create_dir_all(modules.join("kernel")).unwrap();
    let builtin: String = board
        .modules()
        .iter()
        .chain(board.network_modules())
        .chain(board.netfilter_modules())
        .chain(board.efi_modules())
        .chain(board.late_modules())
        .map(|m| format!("kernel/x/{m}.ko\n"))
        .collect();
    std::fs::write(modules.join("modules.builtin"), builtin).unwrap();
    std::fs::create_dir_all(d.join("kernel/boot")).unwrap();
    std::fs::write(d.join("kernel/boot/vmlinuz-6.1.0-test"), tiny_pe(b"kernel")).unwrap();
    let efi = d.join("sdboot/usr/lib/systemd/boot/efi");
    std::fs::create_dir_all(&efi).unwrap();
    let arch = board.efi_arch;
    std::fs::write(efi.join(format!("systemd-boot{arch}.efi")), tiny_pe(b"loader")).unwrap();
    std::fs::write(efi.join(format!("linux{arch}.efi.stub")), tiny_pe(b"#### LoaderInfo: systemd-stub test ####"))
        .unwrap();
}
