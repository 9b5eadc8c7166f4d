//! Test setup shared by the `cairn image assemble` tests: a fake boot kit.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// A minimal PE32+ image (one `.text` section holding `text`), what
/// systemd-boot, systemd-stub and an EFI kernel look like to the assembler.
pub fn tiny_pe(text: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 0x400];
    let put16 = |b: &mut Vec<u8>, o: usize, v: u16| b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    b[..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, 0x80);
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    let (coff, opt) = (0x84, 0x98);
    put16(&mut b, coff, 0x8664);
    put16(&mut b, coff + 2, 1);
    put16(&mut b, coff + 16, 240);
    put16(&mut b, opt, 0x020b);
    put32(&mut b, opt + 32, 0x1000);
    put32(&mut b, opt + 36, 0x200);
    put32(&mut b, opt + 56, 0x2000);
    put32(&mut b, opt + 60, 0x400);
    put32(&mut b, opt + 108, 16);
    let sec = opt + 240;
    b[sec..sec + 5].copy_from_slice(b".text");
    let raw = (text.len().max(1) as u32).div_ceil(0x200) * 0x200;
    put32(&mut b, sec + 8, text.len() as u32);
    put32(&mut b, sec + 12, 0x1000);
    put32(&mut b, sec + 16, raw);
    put32(&mut b, sec + 20, 0x400);
    b.extend_from_slice(text);
    b.resize(0x400 + raw as usize, 0);
    b
}

/// Under `d`: `kernel/` (kernel release 6.1.0-test: an EFI kernel and a
/// module tree where every module of `board` is built in) and `sdboot/`
/// (systemd-boot and systemd-stub for the board's architecture), for
/// `--kernel kernel --systemd-boot sdboot`.
pub fn fake_boot_kit(d: &Path, board: &str) {
    let board = cairn_board::by_name(board).unwrap();
    let modules = d.join("kernel/lib/modules/6.1.0-test");
    std::fs::create_dir_all(modules.join("kernel")).unwrap();
    let builtin: String = board.modules.iter().map(|m| format!("kernel/x/{m}.ko\n")).collect();
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
