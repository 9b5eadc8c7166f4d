//! Host-only builders: everything that produces an artifact for a device.

pub mod appliance;
pub mod assemble;
pub mod cpio;
pub mod gpt;
pub mod keys;
pub mod squashfs;
pub mod tree;
