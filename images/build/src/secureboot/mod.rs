//! UEFI Secure Boot, host side: signing keys, Authenticode signatures on PE
//! images (boot loader, unified kernel images), EFI signature lists and
//! authenticated variables (`PK.auth`, `KEK.auth`, `db.auth`), and firmware
//! variable stores with the keys enrolled, for tests.
//!
//! Pure Rust (RustCrypto); host-only. See docs/security.md, "Secure Boot".

pub mod authenticode;
mod der_util;
pub mod key;
pub mod siglist;
pub mod varstore;

pub use authenticode::{sign_pe, SignError};
pub use key::{SbKey, SbKeyError, SbKeyPaths};
pub use siglist::{auth_files, AuthError, AuthFiles, EfiTime, Guid};
pub use varstore::{enrolled_vars, SecureBootFirmware, VarStoreError, AAVMF_AARCH64, OVMF_X86_64};
