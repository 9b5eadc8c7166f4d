//! Content digests (sha256) that name layers.

use core::fmt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of a byte slice.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parse 64 lowercase or uppercase hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(*pair.first()?)?;
            let lo = hex_value(*pair.get(1)?)?;
            *out.get_mut(i)? = (hi << 4) | lo;
        }
        Some(Self(out))
    }

    /// The first 12 hex characters, for log lines.
    pub fn short(&self) -> ShortDigest<'_> {
        ShortDigest(self)
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// Display helper for [`Digest::short`].
pub struct ShortDigest<'a>(&'a Digest);

impl fmt::Display for ShortDigest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 .0.iter().take(6) {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Incremental sha256 for streaming a partition through.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Finish.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_value() {
        let d = Digest::of(b"abc");
        let hex = format!("{d}");
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Digest::from_hex(&hex), Some(d));
        assert_eq!(format!("{}", d.short()), "ba7816bf8f01");
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&hex.replace('b', "g")), None);
    }

    #[test]
    fn streaming_matches_one_shot() {
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), Digest::of(b"abc"));
    }
}
