//! dm-verity hash trees, in the on-disk format the kernel's `verity`
//! target and `veritysetup` read (format version 1, sha256, 4 KiB data and
//! hash blocks, salt before the block, no superblock).
//!
//! A layer image on its partition is the squashfs image, zero-padded to a
//! whole block, followed by its hash tree. The tree's levels are stored
//! top first: the level with one block comes first, the level that hashes
//! the data blocks last. The root hash is `sha256(salt ‖ top block)`. The
//! signed manifest carries the salt and the root hash, so the device trusts
//! nothing on the partition: every block read through the verity target is
//! checked against the signed root on its way up.
//!
//! The salt is derived from the layer's content digest ([`salt_for`]), so
//! builds stay byte-reproducible and two builds of one layer agree.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Data and hash block size, in bytes.
pub const BLOCK: u64 = 4096;
/// sha256 digests in one hash block.
const HASHES_PER_BLOCK: u64 = BLOCK / 32;
/// Most tree levels: 128^8 blocks is far beyond any disk.
const MAX_LEVELS: usize = 8;

/// What the device needs to set up a verity target over a layer partition
/// without trusting anything written on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    /// Data blocks covered (the image, padded to a whole block).
    pub data_blocks: u64,
    /// Byte offset of the hash tree on the partition (a block multiple, at
    /// or after the data).
    pub hash_offset: u64,
    /// Salt hashed before every block.
    pub salt: [u8; 32],
    /// Root of the tree.
    pub root_hash: Digest,
}

impl Verity {
    /// Bytes the partition must hold: data, then the tree.
    pub fn partition_bytes(&self) -> u64 {
        self.hash_offset.saturating_add(tree_blocks(self.data_blocks).saturating_mul(BLOCK))
    }
}

/// The salt of a layer: `sha256("cairn verity salt v1" ‖ digest)`.
pub fn salt_for(digest: &Digest) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cairn verity salt v1");
    h.update(digest.0);
    h.finalize().into()
}

/// Blocks of data covering `bytes`.
pub fn data_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}

/// Hash blocks at each level, lowest (hashing the data) first. Empty when
/// there is at most one data block: then the root hashes that block.
fn level_blocks(data_blocks: u64) -> heapless::Vec<u64, MAX_LEVELS> {
    let mut levels = heapless::Vec::new();
    let mut below = data_blocks;
    while below > 1 {
        below = below.div_ceil(HASHES_PER_BLOCK);
        if levels.push(below).is_err() {
            break;
        }
    }
    levels
}

/// Size of the hash tree of `data_blocks` blocks, in blocks.
pub fn tree_blocks(data_blocks: u64) -> u64 {
    level_blocks(data_blocks).iter().sum()
}

fn hash_block(salt: &[u8; 32], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Builds a hash tree from data blocks fed in order.
#[derive(Debug)]
pub struct TreeBuilder {
    salt: [u8; 32],
    /// Hashes of the data blocks so far, 32 bytes each.
    leaves: Vec<u8>,
    /// A partial data block (the image's tail).
    pending: Vec<u8>,
}

impl TreeBuilder {
    /// A builder for a layer with this salt.
    pub fn new(salt: [u8; 32]) -> Self {
        TreeBuilder { salt, leaves: Vec::new(), pending: Vec::new() }
    }

    /// Feed image bytes, in any chunk sizes.
    pub fn update(&mut self, mut data: &[u8]) {
        let block = BLOCK as usize;
        if !self.pending.is_empty() {
            let take = (block - self.pending.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.pending.extend_from_slice(head);
            data = rest;
            if self.pending.len() == block {
                let h = hash_block(&self.salt, &self.pending);
                self.leaves.extend_from_slice(&h);
                self.pending.clear();
            }
        }
        let mut chunks = data.chunks_exact(block);
        for b in &mut chunks {
            let h = hash_block(&self.salt, b);
            self.leaves.extend_from_slice(&h);
        }
        self.pending.extend_from_slice(chunks.remainder());
    }

    /// Pad the tail with zeros and build the tree. Returns the parameters
    /// (hash tree right after the padded data) and the tree's bytes.
    pub fn finish(mut self) -> (Verity, Vec<u8>) {
        let block = BLOCK as usize;
        if !self.pending.is_empty() {
            self.pending.resize(block, 0);
            let h = hash_block(&self.salt, &self.pending);
            self.leaves.extend_from_slice(&h);
        }
        let data_blocks = (self.leaves.len() / 32) as u64;
        // Each level: the hashes of the level below, packed into zero-padded
        // blocks. `levels[0]` hashes the data.
        let mut levels: Vec<Vec<u8>> = Vec::new();
        let mut below = self.leaves;
        let mut root = if data_blocks == 0 { hash_block(&self.salt, &[0u8; BLOCK as usize]) } else { [0u8; 32] };
        if data_blocks == 1 {
            root.copy_from_slice(below.get(..32).unwrap_or(&[0; 32]));
        }
        while below.len() > 32 {
            let mut level = below;
            let rem = level.len() % block;
            if rem != 0 {
                level.resize(level.len() + block - rem, 0);
            }
            let mut up = Vec::with_capacity(level.len() / block * 32);
            for b in level.chunks_exact(block) {
                up.extend_from_slice(&hash_block(&self.salt, b));
            }
            levels.push(level);
            if up.len() == 32 {
                root.copy_from_slice(&up);
            }
            below = up;
        }
        let mut tree = Vec::with_capacity(levels.iter().map(Vec::len).sum());
        for level in levels.iter().rev() {
            tree.extend_from_slice(level);
        }
        let verity = Verity { data_blocks, hash_offset: data_blocks * BLOCK, salt: self.salt, root_hash: Digest(root) };
        (verity, tree)
    }
}

/// The `verity` device-mapper table line for a layer whose data and hash
/// tree are both on `device` (`major:minor` or a path). `on_corruption`
/// is `None` for the default (the reader gets EIO) or the kernel's
/// optional argument (`restart_on_corruption`, `panic_on_corruption`).
pub fn table(v: &Verity, device: &str, on_corruption: Option<&str>) -> alloc::string::String {
    use core::fmt::Write as _;
    let mut s = alloc::string::String::new();
    let _ = write!(
        s,
        "1 {device} {device} {BLOCK} {BLOCK} {} {} sha256 {} ",
        v.data_blocks,
        v.hash_offset / BLOCK,
        v.root_hash
    );
    for b in v.salt {
        let _ = write!(s, "{b:02x}");
    }
    if let Some(opt) = on_corruption {
        let _ = write!(s, " 1 {opt}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(data: &[u8]) -> (Verity, Vec<u8>) {
        let mut t = TreeBuilder::new([7; 32]);
        // Odd chunk sizes exercise the pending-block path.
        for c in data.chunks(1000) {
            t.update(c);
        }
        t.finish()
    }

    #[test]
    fn geometry() {
        assert_eq!(tree_blocks(1), 0);
        assert_eq!(tree_blocks(2), 1);
        assert_eq!(tree_blocks(128), 1);
        assert_eq!(tree_blocks(129), 2 + 1);
        assert_eq!(tree_blocks(128 * 128), 128 + 1);
        assert_eq!(tree_blocks(128 * 128 + 1), 129 + 2 + 1);
    }

    #[test]
    fn one_block_root_is_the_block_hash() {
        let data = [0xabu8; 100];
        let (v, tree) = build(&data);
        assert_eq!(v.data_blocks, 1);
        assert!(tree.is_empty());
        let mut padded = data.to_vec();
        padded.resize(4096, 0);
        assert_eq!(v.root_hash.0, hash_block(&[7; 32], &padded));
    }

    #[test]
    fn two_levels_top_first() {
        let data: Vec<u8> = (0..200 * 4096u32).map(|i| (i % 251) as u8).collect();
        let (v, tree) = build(&data);
        assert_eq!(v.data_blocks, 200);
        assert_eq!(tree.len() as u64, 3 * BLOCK);
        assert_eq!(v.partition_bytes(), 203 * BLOCK);
        // Level 0 (last two blocks) holds the data hashes in order.
        let leaf0 = hash_block(&[7; 32], &data[..4096]);
        assert_eq!(&tree[4096..4096 + 32], &leaf0);
        // The top block (first) hashes the two level-0 blocks; root hashes it.
        assert_eq!(&tree[..32], &hash_block(&[7; 32], &tree[4096..8192]));
        assert_eq!(v.root_hash.0, hash_block(&[7; 32], &tree[..4096]));
        // A changed byte changes the root.
        let mut bad = data.clone();
        bad[150 * 4096 + 9] ^= 1;
        assert_ne!(build(&bad).0.root_hash, v.root_hash);
    }

    #[test]
    fn table_line() {
        let (v, _) = build(&[1u8; 8192]);
        let t = table(&v, "254:3", Some("restart_on_corruption"));
        assert!(t.starts_with("1 254:3 254:3 4096 4096 2 2 sha256 "), "{t}");
        assert!(t.ends_with(&alloc::format!("{} 1 restart_on_corruption", "07".repeat(32))), "{t}");
    }
}
