//! Board definitions. One file per board; each is plain data that the build
//! (xtask, the `cairn` host tool) reads to pick a Rust target, fetch a kernel,
//! choose modules for the initramfs and start QEMU.

#![forbid(unsafe_code)]

mod qemu_aarch64;
mod qemu_x86_64;

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
    /// Kernel modules the init loads at boot, by module name. The build adds
    /// their dependencies and writes them in load order into the initramfs.
    pub modules: &'static [&'static str],
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
}

impl Board {
    /// The full kernel command line for this board.
    pub fn cmdline(&self, extra: &str) -> String {
        let mut s = format!("console={} {}", self.console, self.kernel_cmdline);
        if !extra.is_empty() {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }
}

/// The board used when none is named.
pub const DEFAULT_BOARD: &str = "qemu-x86_64";

/// Every board cairn knows.
pub fn all() -> [&'static Board; 2] {
    [&qemu_x86_64::BOARD, &qemu_aarch64::BOARD]
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
}
