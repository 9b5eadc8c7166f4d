//! Host-only builders: everything that produces an artifact for a device.

pub mod appliance;
pub mod assemble;
pub mod cpio;
pub mod datafs;
pub mod gpt;
pub mod import;
pub mod keys;
pub mod kmod;
pub mod layer;
pub mod manifest_toml;
pub mod scan;
pub mod squashfs;
pub mod tree;
