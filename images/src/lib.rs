//! Formats shared by the device (`cairn-init`) and the host tools.
//!
//! Everything the device decodes lives here and is `no_std`-friendly in
//! spirit: fixed capacities (`heapless`), no panics on bad input, every
//! decode failure a value. Host-only builders sit behind the `host` feature.

#![cfg_attr(not(feature = "host"), no_std)]

pub mod bootstate;
pub mod digest;
pub mod envelope;
pub mod manifest;
pub mod order;

#[cfg(feature = "host")]
pub mod host;

pub use digest::Digest;
pub use envelope::{KeyId, PublicKey};
pub use manifest::Manifest;
