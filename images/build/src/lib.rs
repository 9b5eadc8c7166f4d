//! Host-side builders: everything that produces an artifact for a device.
//! The formats they write are `cairn-format`'s, the same code the device
//! decodes with.

pub mod appliance;
pub mod assemble;
pub mod bmap;
pub mod bootkit;
pub mod bundle;
pub mod cpio;
pub mod datafs;
pub mod esp;
pub mod fat;
pub mod gpt;
pub mod import;
pub mod initramfs;
pub mod keys;
pub mod kmod;
pub mod layer;
pub mod manifest_toml;
pub mod pe;
pub mod scan;
pub mod secureboot;
pub mod squashfs;
pub mod tree;
pub mod uki;
pub mod verity;
pub mod zst;
