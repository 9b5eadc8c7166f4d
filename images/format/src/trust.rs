//! The device's trust data: the public keys whose manifest signatures it
//! accepts and the product it boots. `cairn image assemble` writes them into
//! each boot slot's initramfs; `cairn-init` reads them at boot, before it
//! verifies a manifest. The init binary holds neither, so one released
//! binary serves every product.
//!
//! Files (text, ASCII):
//!
//! ```text
//! /etc/cairn/trusted-keys   one ed25519 public key per line, 64 hex
//!                           characters (what `cairn key generate` writes to
//!                           NAME.pub); blank lines and lines starting with
//!                           `#` are ignored; 1 to MAX_TRUSTED_KEYS keys,
//!                           no key twice
//! /etc/cairn/product        the compatibility string, 1 to 64 characters
//!                           of [A-Za-z0-9._,+-], one optional final newline
//! ```
//!
//! Their integrity is the boot slot's: with Secure Boot the slot's signed
//! unified kernel image covers the initramfs, so a changed key or product
//! is refused by the firmware. Parsing is strict and never panics: the
//! init reports what is wrong with a file and then refuses every manifest.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::envelope::{key_id, PublicKey};
use crate::manifest::is_valid_compatible;

/// Where the trusted keys are, in the initramfs.
pub const TRUSTED_KEYS_PATH: &str = "/etc/cairn/trusted-keys";
/// Where the product's compatibility string is, in the initramfs.
pub const PRODUCT_PATH: &str = "/etc/cairn/product";
/// Present only in a development build's initramfs: the device then
/// honours switches production images refuse (`cairn.console=ctl`). Its
/// integrity is the slot's, like the trust data's: with Secure Boot, a
/// production image cannot gain it without the vendor's signature.
pub const DEVELOPMENT_PATH: &str = "/etc/cairn/development";
/// Most keys a device trusts.
pub const MAX_TRUSTED_KEYS: usize = 16;
/// Largest trust file read (a full key file with comments fits).
pub const MAX_FILE_LEN: usize = 4096;

/// What is wrong with a trust file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// The file is longer than [`MAX_FILE_LEN`] bytes (the bytes seen; a
    /// reader may stop one past the limit).
    TooLarge(usize),
    /// The file is not ASCII text.
    NotText,
    /// A key line is not 64 characters.
    KeyLength {
        /// 1-based line number.
        line: usize,
        /// Characters on it.
        len: usize,
    },
    /// A key line holds a non-hex character.
    NotHex {
        /// 1-based line number.
        line: usize,
    },
    /// The 32 bytes are not an ed25519 public key.
    NotAKey {
        /// 1-based line number.
        line: usize,
    },
    /// The same key twice.
    Duplicate {
        /// 1-based line number of the second occurrence.
        line: usize,
    },
    /// More than [`MAX_TRUSTED_KEYS`] keys.
    TooManyKeys(usize),
    /// No key at all.
    NoKeys,
    /// The product string breaks the compatibility string rule.
    BadProduct(String),
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(_) => write!(f, "more than {MAX_FILE_LEN} bytes"),
            Self::NotText => write!(f, "not ASCII text"),
            Self::KeyLength { line, len } => write!(f, "line {line}: {len} characters; a key is 64 hex characters"),
            Self::NotHex { line } => write!(f, "line {line}: not hex"),
            Self::NotAKey { line } => write!(f, "line {line}: not an ed25519 public key"),
            Self::Duplicate { line } => write!(f, "line {line}: the same key twice"),
            Self::TooManyKeys(n) => write!(f, "{n} keys, more than {MAX_TRUSTED_KEYS}"),
            Self::NoKeys => write!(f, "no key"),
            Self::BadProduct(p) => {
                write!(f, "product {p:?} is not 1 to 64 characters of [A-Za-z0-9._,+-]")
            }
        }
    }
}

fn text(bytes: &[u8]) -> Result<&str, TrustError> {
    if bytes.len() > MAX_FILE_LEN {
        return Err(TrustError::TooLarge(bytes.len()));
    }
    if !bytes.is_ascii() {
        return Err(TrustError::NotText);
    }
    core::str::from_utf8(bytes).map_err(|_| TrustError::NotText)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_key(hex: &str, line: usize) -> Result<PublicKey, TrustError> {
    if hex.len() != 64 {
        return Err(TrustError::KeyLength { line, len: hex.len() });
    }
    let mut key = [0u8; 32];
    for (b, pair) in key.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (pair.first().copied().and_then(nibble), pair.get(1).copied().and_then(nibble))
        else {
            return Err(TrustError::NotHex { line });
        };
        *b = hi << 4 | lo;
    }
    check_key(&key, line)?;
    Ok(key)
}

fn check_key(key: &PublicKey, line: usize) -> Result<(), TrustError> {
    ed25519_dalek::VerifyingKey::from_bytes(key).map(|_| ()).map_err(|_| TrustError::NotAKey { line })
}

/// The keys in a trusted-keys file.
pub fn parse_trusted_keys(bytes: &[u8]) -> Result<Vec<PublicKey>, TrustError> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for (n, raw) in text(bytes)?.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let key = parse_key(l, n + 1)?;
        if keys.contains(&key) {
            return Err(TrustError::Duplicate { line: n + 1 });
        }
        keys.push(key);
    }
    check_count(keys.len())?;
    Ok(keys)
}

fn check_count(n: usize) -> Result<(), TrustError> {
    match n {
        0 => Err(TrustError::NoKeys),
        n if n > MAX_TRUSTED_KEYS => Err(TrustError::TooManyKeys(n)),
        _ => Ok(()),
    }
}

/// The product string in a product file (one final newline allowed).
pub fn parse_product(bytes: &[u8]) -> Result<String, TrustError> {
    let t = text(bytes)?;
    let p = t.strip_suffix('\n').unwrap_or(t);
    if !is_valid_compatible(p) {
        return Err(TrustError::BadProduct(p.to_string()));
    }
    Ok(p.to_string())
}

/// The trusted-keys file for `keys`, checked by the rules the device reads
/// it with (line numbers in errors count keys from 1).
pub fn render_trusted_keys(keys: &[PublicKey]) -> Result<String, TrustError> {
    check_count(keys.len())?;
    let mut out = String::with_capacity(keys.len() * 65);
    for (n, k) in keys.iter().enumerate() {
        check_key(k, n + 1)?;
        if keys.get(..n).is_some_and(|before| before.contains(k)) {
            return Err(TrustError::Duplicate { line: n + 1 });
        }
        for b in k {
            let _ = fmt::write(&mut out, format_args!("{b:02x}"));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The product file for `product`.
pub fn render_product(product: &str) -> Result<String, TrustError> {
    if !is_valid_compatible(product) {
        return Err(TrustError::BadProduct(product.to_string()));
    }
    let mut out = product.to_string();
    out.push('\n');
    Ok(out)
}

/// The keys' short ids (what `manifest.rejected` and `cairn key show`
/// print), comma separated, for the `trust.loaded` event.
pub fn fingerprints(keys: &[PublicKey]) -> String {
    let mut out = String::new();
    for (n, k) in keys.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = fmt::write(&mut out, format_args!("{}", key_id(k)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    fn key(seed: u8) -> PublicKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes()
    }

    fn hex(k: &PublicKey) -> String {
        k.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_round_trip_through_the_file() {
        let keys = [key(1), key(2)];
        let file = render_trusted_keys(&keys).unwrap();
        assert_eq!(file, format!("{}\n{}\n", hex(&keys[0]), hex(&keys[1])));
        assert_eq!(parse_trusted_keys(file.as_bytes()).unwrap(), keys);
    }

    #[test]
    fn a_pub_file_with_comments_blank_lines_and_capitals_parses() {
        let k = key(3);
        let text = format!("# release key\n\n  {}  \r\n", hex(&k).to_uppercase());
        assert_eq!(parse_trusted_keys(text.as_bytes()).unwrap(), [k]);
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        let k = hex(&key(4));
        assert_eq!(parse_trusted_keys(b""), Err(TrustError::NoKeys));
        assert_eq!(parse_trusted_keys(b"# only a comment\n"), Err(TrustError::NoKeys));
        let short = format!("#\n{}\n", &k[..62]);
        assert_eq!(parse_trusted_keys(short.as_bytes()), Err(TrustError::KeyLength { line: 2, len: 62 }));
        let not_hex = format!("{}g\n", &k[..63]);
        assert_eq!(parse_trusted_keys(not_hex.as_bytes()), Err(TrustError::NotHex { line: 1 }));
        let twice = format!("{k}\n{k}\n");
        assert_eq!(parse_trusted_keys(twice.as_bytes()), Err(TrustError::Duplicate { line: 2 }));
        assert_eq!(parse_trusted_keys("é".as_bytes()), Err(TrustError::NotText));
        assert_eq!(parse_trusted_keys(&[b'#'; MAX_FILE_LEN + 1]), Err(TrustError::TooLarge(MAX_FILE_LEN + 1)));
        // 32 bytes that do not decode to a curve point.
        let off = not_a_point();
        let text = format!("{k}\n{}\n", hex(&off));
        assert_eq!(parse_trusted_keys(text.as_bytes()), Err(TrustError::NotAKey { line: 2 }));
    }

    fn not_a_point() -> PublicKey {
        (0..=255u8)
            .map(|n| [n; 32])
            .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
            .expect("some [n; 32] is not a point")
    }

    #[test]
    fn at_most_max_keys() {
        let keys: Vec<PublicKey> = (1..=MAX_TRUSTED_KEYS as u8).map(key).collect();
        let file = render_trusted_keys(&keys).unwrap();
        assert_eq!(parse_trusted_keys(file.as_bytes()).unwrap().len(), MAX_TRUSTED_KEYS);
        let more = format!("{file}{}\n", hex(&key(200)));
        assert_eq!(parse_trusted_keys(more.as_bytes()), Err(TrustError::TooManyKeys(MAX_TRUSTED_KEYS + 1)));
        let mut too_many = keys.clone();
        too_many.push(key(200));
        assert_eq!(render_trusted_keys(&too_many), Err(TrustError::TooManyKeys(MAX_TRUSTED_KEYS + 1)));
    }

    #[test]
    fn the_writer_refuses_what_the_reader_would() {
        assert_eq!(render_trusted_keys(&[]), Err(TrustError::NoKeys));
        assert_eq!(render_trusted_keys(&[key(1), key(1)]), Err(TrustError::Duplicate { line: 2 }));
        assert_eq!(render_trusted_keys(&[key(1), not_a_point()]), Err(TrustError::NotAKey { line: 2 }));
        assert!(render_product("").is_err() && render_product("a b").is_err());
        assert!(render_product(&"x".repeat(65)).is_err());
    }

    #[test]
    fn products_round_trip_and_bad_ones_are_refused() {
        assert_eq!(render_product("cairn-qemu-dev").unwrap(), "cairn-qemu-dev\n");
        assert_eq!(parse_product(b"cairn-qemu-dev\n").unwrap(), "cairn-qemu-dev");
        assert_eq!(parse_product(b"acme,cam-2.1+x_y").unwrap(), "acme,cam-2.1+x_y");
        assert_eq!(parse_product(&[b'x'; 64]).unwrap().len(), 64);
        for bad in [&b""[..], b"\n", b"a\n\n", b"a b\n", b" a\n", b"a\r\n", &[b'x'; 65]] {
            assert!(matches!(parse_product(bad), Err(TrustError::BadProduct(_))), "{bad:?}");
        }
        assert_eq!(parse_product("caf\u{e9}".as_bytes()), Err(TrustError::NotText));
    }

    #[test]
    fn fingerprints_are_the_key_ids() {
        let (a, b) = (key(1), key(2));
        assert_eq!(fingerprints(&[a, b]), format!("{},{}", key_id(&a), key_id(&b)));
        assert_eq!(fingerprints(&[a]).len(), 16);
    }
}
