//! Unified kernel images: one PE that UEFI firmware (or systemd-boot)
//! starts, holding the kernel, the initramfs and the command line, so one
//! Secure Boot signature covers all three.
//!
//! The image is systemd-stub (Debian's `systemd-boot-efi`,
//! `linux{x64,aa64}.efi.stub`) with sections appended ([`crate::pe`]):
//! `.osrel` (os-release: what systemd-boot shows and sorts entries by),
//! `.cmdline`, `.uname`, `.initrd` and `.linux`. With Secure Boot on,
//! the stub ignores any command line the loader passes; off, a loader
//! could pass its own (systemd-boot's editor is off in our `loader.conf`).

use crate::pe::{self, NewSection, PeError};

/// What goes into one image.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// systemd-stub for the board's architecture.
    pub stub: &'a [u8],
    /// The kernel as an EFI application (x86 bzImage, arm64 `Image`).
    pub kernel: &'a [u8],
    /// The initramfs.
    pub initramfs: &'a [u8],
    /// Kernel command line.
    pub cmdline: &'a str,
    /// os-release text ([`os_release`]).
    pub os_release: &'a str,
    /// Kernel release (`uname -r`), if known.
    pub uname: &'a str,
}

/// Why an image could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UkiError {
    /// The stub.
    #[error("systemd-stub: {0}")]
    Stub(PeError),
    /// The kernel is not an EFI application (an arm64 kernel must be the
    /// uncompressed `Image`, x86 a bzImage with the EFI stub).
    #[error("the kernel is not an EFI application: {0}")]
    Kernel(PeError),
    /// A stub that is not systemd-stub.
    #[error("the stub does not say \"#### LoaderInfo: systemd-stub\": not systemd-stub")]
    NotSystemdStub,
    /// A command line with a NUL or newline.
    #[error("the kernel command line holds a NUL or a newline")]
    BadCmdline,
}

/// The os-release of a slot's image. systemd-boot shows `PRETTY_NAME`, and
/// sorts entries with the same `IMAGE_ID` by `IMAGE_VERSION`, highest first,
/// after every entry with tries left: so the newest release that has not
/// failed boots.
pub fn os_release(product: &str, version: u64, slot: &str) -> String {
    let clean = |s: &str| s.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').collect::<String>();
    let product = clean(product);
    format!(
        "NAME=\"cairn\"\nID=cairn\nIMAGE_ID={product}\nIMAGE_VERSION={version}\nPRETTY_NAME=\"{product} {version} (slot {})\"\n",
        clean(slot)
    )
}

/// Build the image. Deterministic.
pub fn build(p: &UkiParts<'_>) -> Result<Vec<u8>, UkiError> {
    pe::headers(p.kernel).map_err(UkiError::Kernel)?;
    let stub = pe::headers(p.stub).map_err(UkiError::Stub)?;
    // Its magic string (in `.sdmagic` on x64; the arm64 stub of systemd
    // 252 has only .text and .data).
    let magic = b"#### LoaderInfo: systemd-stub ";
    if stub.sections.is_empty() || !p.stub.windows(magic.len()).any(|w| w == magic) {
        return Err(UkiError::NotSystemdStub);
    }
    if p.cmdline.contains(['\0', '\n']) {
        return Err(UkiError::BadCmdline);
    }
    let mut sections = vec![
        NewSection { name: ".osrel", data: p.os_release.as_bytes() },
        NewSection { name: ".cmdline", data: p.cmdline.as_bytes() },
    ];
    if !p.uname.is_empty() {
        sections.push(NewSection { name: ".uname", data: p.uname.as_bytes() });
    }
    sections.push(NewSection { name: ".initrd", data: p.initramfs });
    sections.push(NewSection { name: ".linux", data: p.kernel });
    pe::add_sections(p.stub, &sections).map_err(UkiError::Stub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_sorts_by_version_and_cannot_be_broken_by_quotes() {
        let s = os_release("acme\"x", 7, "b");
        assert!(s.contains("IMAGE_ID=acmex\n"), "{s}");
        assert!(s.contains("IMAGE_VERSION=7\n"));
        assert!(s.contains("PRETTY_NAME=\"acmex 7 (slot b)\"\n"));
    }

    #[test]
    fn a_debian_stub_and_kernel_make_an_image_with_every_section() {
        let stub = std::fs::read("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        let kernel = glob_kernel();
        let (Ok(stub), Some(kernel)) = (stub, kernel) else { return };
        let parts = UkiParts {
            stub: &stub,
            kernel: &kernel,
            initramfs: b"initramfs",
            cmdline: "console=ttyS0 cairn.slot=a",
            os_release: &os_release("p", 1, "a"),
            uname: "6.1.0",
        };
        let uki = build(&parts).unwrap();
        assert_eq!(pe::section_data(&uki, ".cmdline").unwrap(), Some(&b"console=ttyS0 cairn.slot=a"[..]));
        assert_eq!(pe::section_data(&uki, ".initrd").unwrap(), Some(&b"initramfs"[..]));
        assert_eq!(pe::section_data(&uki, ".linux").unwrap(), Some(&kernel[..]));
        assert_eq!(build(&parts).unwrap(), uki);
        let bad = UkiParts { cmdline: "a\nb", ..parts };
        assert_eq!(build(&bad).unwrap_err(), UkiError::BadCmdline);
        let not_kernel = UkiParts { kernel: b"not a kernel", ..parts };
        assert!(matches!(build(&not_kernel).unwrap_err(), UkiError::Kernel(_)));
        let not_stub = UkiParts { stub: &kernel, ..parts };
        assert_eq!(build(&not_stub).unwrap_err(), UkiError::NotSystemdStub);
    }

    /// A Debian amd64 kernel from the build directory, if one was fetched.
    fn glob_kernel() -> Option<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/kernels");
        for pkg in std::fs::read_dir(root).ok()?.flatten() {
            if !pkg.file_name().to_string_lossy().contains("amd64") {
                continue;
            }
            for f in std::fs::read_dir(pkg.path().join("tree/boot")).ok()?.flatten() {
                if f.file_name().to_string_lossy().starts_with("vmlinuz-") {
                    return std::fs::read(f.path()).ok();
                }
            }
        }
        None
    }
}
