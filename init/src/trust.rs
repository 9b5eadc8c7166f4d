//! The device's trust data, read from the initramfs at boot: the public
//! keys whose manifest signatures this device accepts and the product it
//! boots (`cairn_format::trust` has the file formats). Nothing of it is
//! compiled into the init, so one binary serves every product.
//!
//! A missing or invalid file is a `trust.invalid` event; the device then
//! refuses every manifest (it never guesses a key or a product).

use std::fs::File;
use std::io::Read;

use cairn_format::envelope::PublicKey;
use cairn_format::trust::{self, TrustError, MAX_FILE_LEN, PRODUCT_PATH, TRUSTED_KEYS_PATH};

use crate::event::event;

/// What this device trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Keys whose signatures it accepts.
    pub keys: Vec<PublicKey>,
    /// Its product: a manifest's `compatible` must equal it.
    pub product: String,
}

/// Why a trust file could not be used.
#[derive(Debug, thiserror::Error)]
enum Invalid {
    /// Opening or reading it.
    #[error("{op}: {errno}")]
    Read { op: &'static str, errno: &'static str },
    /// Its contents.
    #[error("{0}")]
    Parse(TrustError),
}

/// Read a trust file, at most one byte more than a valid one may hold (so
/// a too large file is reported as such, not truncated).
fn read(path: &str) -> Result<Vec<u8>, Invalid> {
    let errno = |e: std::io::Error| cairn_runtime::sys::errno_name(e.raw_os_error().unwrap_or(libc::EIO));
    let f = File::open(path).map_err(|e| Invalid::Read { op: "open", errno: errno(e) })?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut buf).map_err(|e| Invalid::Read { op: "read", errno: errno(e) })?;
    Ok(buf)
}

fn load_file<T>(path: &'static str, parse: fn(&[u8]) -> Result<T, TrustError>) -> Option<T> {
    match read(path).and_then(|b| parse(&b).map_err(Invalid::Parse)) {
        Ok(v) => Some(v),
        Err(why) => {
            event("trust.invalid").kv("file", path).kv("reason", why).kv("effect", "every manifest is refused").emit();
            None
        }
    }
}

/// The trust data, or `None` (after a `trust.invalid` event per bad file)
/// when a file is missing or invalid.
pub fn load() -> Option<Trust> {
    let keys = load_file(TRUSTED_KEYS_PATH, trust::parse_trusted_keys);
    let product = load_file(PRODUCT_PATH, trust::parse_product);
    let (keys, product) = (keys?, product?);
    event("trust.loaded").kv("keys", keys.len()).kv("ids", trust::fingerprints(&keys)).kv("product", &product).emit();
    Some(Trust { keys, product })
}
