//! Formats shared by the device (`cairn-init`) and the host tools.
//!
//! Everything the device decodes lives here and is `no_std`-friendly in
//! spirit: fixed capacities (`heapless`), no panics on bad input, every
//! decode failure a value. Host-only builders sit behind the `host` feature.

#![cfg_attr(not(feature = "host"), no_std)]
// What the device decodes must not panic on any input.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod bootstate;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod digest;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod envelope;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod manifest;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod order;

#[cfg(feature = "host")]
pub mod host;

pub use digest::Digest;
pub use envelope::{KeyId, PublicKey};
pub use manifest::Manifest;
