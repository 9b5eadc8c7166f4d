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

fn load_file<T>(path: &str, parse: fn(&[u8]) -> Result<T, TrustError>) -> Option<T> {
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
    load_from(TRUSTED_KEYS_PATH, PRODUCT_PATH)
}

fn load_from(keys_path: &str, product_path: &str) -> Option<Trust> {
    let keys = load_file(keys_path, trust::parse_trusted_keys);
    let product = load_file(product_path, trust::parse_product);
    let (keys, product) = (keys?, product?);
    event("trust.loaded").kv("keys", keys.len()).kv("ids", trust::fingerprints(&keys)).kv("product", &product).emit();
    Some(Trust { keys, product })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("cairn-init-trust-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
        fn file(&self, name: &str, data: &[u8]) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, data).unwrap();
            p.display().to_string()
        }
        fn path(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Public keys of the RFC 8032 test vectors 1 and 2.
    const KEYS: [&str; 2] = [
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    ];

    fn key_line(i: usize) -> String {
        format!("{}\n", KEYS[i])
    }

    fn public(i: usize) -> PublicKey {
        trust::parse_trusted_keys(key_line(i).as_bytes()).unwrap()[0]
    }

    #[test]
    fn both_files_load() {
        let d = Dir::new("ok");
        let keys = d.file("keys", key_line(0).as_bytes());
        let product = d.file("product", b"cairn-qemu-dev\n");
        assert_eq!(load_from(&keys, &product), Some(Trust { keys: vec![public(0)], product: "cairn-qemu-dev".into() }));
    }

    #[test]
    fn a_missing_or_bad_file_loads_nothing() {
        let d = Dir::new("bad");
        let keys = d.file("keys", key_line(1).as_bytes());
        let product = d.file("product", b"p\n");
        assert!(load_from(&keys, &product).is_some());
        assert_eq!(load_from(&d.path("none"), &product), None);
        assert_eq!(load_from(&keys, &d.path("none")), None);
        let bad = d.file("bad-product", b"two words\n");
        assert_eq!(load_from(&keys, &bad), None);
        let empty = d.file("empty", b"");
        assert_eq!(load_from(&empty, &product), None);
    }

    #[test]
    fn reads_stop_one_byte_past_the_limit() {
        let d = Dir::new("big");
        let big = d.file("big", &vec![b'#'; MAX_FILE_LEN * 4]);
        let bytes = read(&big).unwrap();
        assert_eq!(bytes.len(), MAX_FILE_LEN + 1);
        assert_eq!(trust::parse_trusted_keys(&bytes), Err(TrustError::TooLarge(MAX_FILE_LEN + 1)));
        let exact = d.file("exact", &vec![b'#'; MAX_FILE_LEN]);
        assert_eq!(read(&exact).unwrap().len(), MAX_FILE_LEN);
        match read(&d.path("none")) {
            Err(Invalid::Read { op: "open", errno: "ENOENT" }) => {}
            other => panic!("{other:?}"),
        }
    }
}
