//! What the device (`cairn-init`) decodes from storage, and the host tools
//! encode: the signed manifest, the signature envelope, the boot state
//! record and its transitions (the update state machine), layer digests, the start order, and the trust data (keys and
//! product) the init reads from its initramfs.
//!
//! `no_std` + `alloc`, no features, no `unsafe`: the same code is tested on
//! the host (`cargo test -p cairn-format`) and linked into PID 1. Nothing
//! here panics on bad input; every decode failure is a value. The host-side
//! builders live in `cairn-build`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
// What the device decodes must not panic on any input.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

extern crate alloc;

#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod bootentry;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod bootstate;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod bundle;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod digest;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod envelope;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod install;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod journal;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod manifest;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod network;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod order;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod trust;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod update;
#[cfg_attr(not(test), deny(clippy::indexing_slicing))]
pub mod verity;

pub use digest::Digest;
pub use envelope::{KeyId, PublicKey};
pub use manifest::Manifest;
