//! What makes a disk boot by itself: the boot kit (systemd-boot, systemd-stub,
//! a kernel, an initramfs, a command line) turned into one unified kernel
//! image per boot slot on the EFI system partition.
//!
//! The factory disk holds slot `a`, blessed. A slot written later (by an
//! update, or a test) gets a boot counter ([`cairn_format::bootentry`]).
//! An update's image ([`BootKit::update_image`]) names no slot: the device
//! writes it into whichever entry it did not boot from, and the init learns
//! its entry from the loader.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_format::bootentry::Entry;
use cairn_format::bootstate::Slot;

use crate::esp::{EfiArch, EspContents, SlotImage};
use crate::uki::{self, UkiError, UkiParts};

/// Why a boot kit could not be read or turned into images.
#[derive(Debug, thiserror::Error)]
pub enum BootKitError {
    /// A file of the kit.
    #[error("{what} {path}: {error}")]
    Read {
        /// Which part.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// Building a slot's image.
    #[error("slot {slot}: {error}")]
    Uki {
        /// The slot.
        slot: Slot,
        /// Cause.
        error: UkiError,
    },
    /// Building an update's image.
    #[error("the update's boot image: {0}")]
    UpdateUki(UkiError),
}

/// Everything a boot slot is made of.
#[derive(Debug, Clone)]
pub struct BootKit {
    /// Architecture.
    pub arch: EfiArch,
    /// systemd-boot (`systemd-boot{x64,aa64}.efi`).
    pub loader: Vec<u8>,
    /// systemd-stub (`linux{x64,aa64}.efi.stub`).
    pub stub: Vec<u8>,
    /// The kernel (an EFI application).
    pub kernel: Vec<u8>,
    /// Kernel release.
    pub uname: String,
    /// The initramfs (cairn-init, its trust data, modules).
    pub initramfs: Vec<u8>,
    /// Kernel command line, without `cairn.slot=` (added per slot).
    pub cmdline: String,
}

/// Where the systemd-boot files of an architecture are, in an unpacked
/// `systemd-boot-efi` package (or `/`): `usr/lib/systemd/boot/efi/`.
pub fn systemd_boot_files(root: &Path, arch: EfiArch) -> (PathBuf, PathBuf) {
    let dir = root.join("usr/lib/systemd/boot/efi");
    let s = arch.suffix();
    (dir.join(format!("systemd-boot{s}.efi")), dir.join(format!("linux{s}.efi.stub")))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BootKitError> {
    fs::read(path).map_err(|error| BootKitError::Read { what, path: path.to_owned(), error })
}

impl BootKit {
    /// Read a kit from files.
    pub fn from_files(
        arch: EfiArch,
        systemd_boot_root: &Path,
        kernel: &Path,
        uname: &str,
        initramfs: Vec<u8>,
        cmdline: &str,
    ) -> Result<BootKit, BootKitError> {
        let (loader, stub) = systemd_boot_files(systemd_boot_root, arch);
        Ok(BootKit {
            arch,
            loader: read("systemd-boot", &loader)?,
            stub: read("systemd-stub", &stub)?,
            kernel: read("kernel", kernel)?,
            uname: uname.to_owned(),
            initramfs,
            cmdline: cmdline.to_owned(),
        })
    }

    /// The command line of `slot`'s image.
    pub fn slot_cmdline(&self, slot: Slot) -> String {
        let mut c = self.cmdline.trim().to_owned();
        if !c.is_empty() {
            c.push(' ');
        }
        c.push_str(&format!("cairn.slot={slot}"));
        c
    }

    /// The unified kernel image of `slot`, for release `version` of `product`.
    pub fn uki(&self, slot: Slot, product: &str, version: u64) -> Result<Vec<u8>, BootKitError> {
        let os_release = uki::os_release(product, version, &slot.to_string());
        self.image(&self.slot_cmdline(slot), &os_release).map_err(|error| BootKitError::Uki { slot, error })
    }

    /// A unified kernel image of the kit with this command line and
    /// os-release.
    fn image(&self, cmdline: &str, os_release: &str) -> Result<Vec<u8>, UkiError> {
        uki::build(&UkiParts {
            stub: &self.stub,
            kernel: &self.kernel,
            initramfs: &self.initramfs,
            cmdline,
            os_release,
            uname: &self.uname,
        })
    }

    /// The boot image an update bundle carries (`cairn bundle build
    /// --boot-image`): the kit's command line without `cairn.slot=`, since
    /// the device picks the entry it goes into, and `IMAGE_VERSION` the
    /// manifest's version, so systemd-boot sorts it before the entry the
    /// device runs now.
    pub fn update_image(&self, product: &str, version: u64) -> Result<Vec<u8>, BootKitError> {
        let os_release = uki::os_release(product, version, "update");
        self.image(self.cmdline.trim(), &os_release).map_err(BootKitError::UpdateUki)
    }

    /// The slot image for `entry`.
    pub fn slot_image(&self, entry: Entry, product: &str, version: u64) -> Result<SlotImage, BootKitError> {
        Ok(SlotImage { entry, uki: self.uki(entry.slot, product, version)? })
    }

    /// A factory ESP: slot `a` blessed, and nothing in slot `b`.
    pub fn factory_esp(&self, product: &str, version: u64) -> Result<EspContents, BootKitError> {
        Ok(EspContents {
            arch: self.arch,
            loader: self.loader.clone(),
            slots: vec![self.slot_image(Entry::blessed(Slot::A), product, version)?],
            extra: Vec::new(),
        })
    }
}
