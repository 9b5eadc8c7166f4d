//! A fixed input tree must give a fixed layer digest. Layer digests name
//! layers in signed manifests and decide reuse across updates, so any change
//! in the bytes we write (our squashfs writer, `miniz_oxide`'s output, the
//! order of entries, metadata normalisation) must be a deliberate one: it
//! changes this constant, and the change is reviewed.

#![allow(clippy::unwrap_used)] // a test: a failure should be loud

use std::collections::BTreeMap;
use std::path::Path;

use cairn_build::squashfs;
use cairn_build::tree::{FileData, Inode, Kind, Meta, Tree};

/// The digest of the tree [`make_tree`] describes.
///
/// Changed on purpose when layers began keeping modification times (issue
/// 15): the tree now carries non-zero times, so the digest pins them too.
/// With every time 0 the tree still gives the previous digest,
/// 947cda06dd40d23ce89fdf94cf4946a37d36041f078585f091b23efc4d3baf99: the
/// rest of the bytes did not change.
const GOLDEN: &str = "6e60a5970d6f2c431674b64d11f0b3aa9e14f5af5e91c250a76ab132e83e96a0";

/// Fixed times, one per mode, so the digest also pins where and how inode
/// times are written.
fn meta(mode: u16, uid: u32) -> Meta {
    Meta { mode, uid, gid: uid, xattrs: BTreeMap::new(), mtime: 1_700_000_000 + u32::from(mode) }
}

fn dir(t: &mut Tree, path: &str) {
    t.insert(path.as_bytes(), Inode { meta: meta(0o755, 0), kind: Kind::Dir(BTreeMap::new()) }).unwrap();
}

fn file(t: &mut Tree, spool: &Path, path: &str, bytes: &[u8], mode: u16, uid: u32) {
    let host = spool.join(path.replace('/', "_"));
    std::fs::write(&host, bytes).unwrap();
    let data = FileData::Host { path: host, len: bytes.len() as u64 };
    t.insert(path.as_bytes(), Inode { meta: meta(mode, uid), kind: Kind::File(data) }).unwrap();
}

/// Every kind of entry a layer holds, with fixed owners and modes (nothing
/// taken from the machine running the test).
fn make_tree(spool: &Path) -> Tree {
    let mut t = Tree::new(meta(0o755, 0));
    for d in ["etc", "etc/app", "usr", "usr/bin"] {
        dir(&mut t, d);
    }
    file(&mut t, spool, "etc/app/config.toml", b"level = 3\nname = \"golden\"\n", 0o644, 0);
    // Compressible data over one block, and incompressible data.
    let text: Vec<u8> = b"cairn layer golden digest\n".iter().copied().cycle().take(300_000).collect();
    file(&mut t, spool, "usr/bin/tool", &text, 0o755, 0);
    let mut x: u32 = 0x1234_5678;
    let noise: Vec<u8> = (0..70_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    file(&mut t, spool, "usr/noise.bin", &noise, 0o600, 1000);
    let link = Inode { meta: meta(0o777, 0), kind: Kind::Symlink(b"app/config.toml".to_vec()) };
    t.insert(b"etc/config", link).unwrap();
    let id = t.lookup(b"usr/bin/tool").unwrap().unwrap();
    t.hard_link(b"usr/bin/tool2", id).unwrap();
    t
}

#[test]
fn a_fixed_tree_gives_a_fixed_layer_digest() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let out = dir.path().join("golden.squashfs");
    let img = squashfs::write_layer(&tree, &out).unwrap();
    let hex: String = img.digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN, "the layer bytes changed: if on purpose, update GOLDEN");
}
