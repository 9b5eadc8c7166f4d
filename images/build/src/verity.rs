//! Layer image files and their dm-verity hash trees.
//!
//! A layer image file is a squashfs image padded to a whole 4 KiB block
//! (its `size`, which its digest covers), optionally followed by its hash
//! tree (what `cairn layer build` writes, so `veritysetup verify` can check
//! the file by itself). The builder never trusts a tree found in a file:
//! it computes the tree from the image and, when the file carries one,
//! refuses a file whose tree differs. A bare image (e.g. `mksquashfs`
//! output) is accepted; its tree is computed when it is put on a disk.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_format::digest::{Digest, Hasher};
use cairn_format::verity::{self, TreeBuilder, Verity, BLOCK};

/// What names a layer image and lets a device check it: the manifest's
/// per-layer fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerIdentity {
    /// sha256 of the first `size` bytes.
    pub digest: Digest,
    /// The padded squashfs image's size in bytes.
    pub size: u64,
    /// Its hash tree's parameters.
    pub verity: Verity,
}

/// A layer image with its hash tree, ready for a partition.
#[derive(Debug, Clone)]
pub struct LayerImage {
    /// Digest, size, verity parameters.
    pub id: LayerIdentity,
    /// The tree's bytes, written at `id.verity.hash_offset`.
    pub tree: Vec<u8>,
}

/// Why a layer image file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// Reading or writing the file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// Not a squashfs image.
    #[error("{0}: not a squashfs image (no hsqs magic)")]
    NotSquashfs(PathBuf),
    /// Shorter than its own superblock says, padded.
    #[error("{path}: the squashfs image needs {size} bytes (bytes_used padded to 4 KiB) but the file has {len}; build it with padding (mksquashfs pads by default)")]
    Short {
        /// The file.
        path: PathBuf,
        /// Bytes needed.
        size: u64,
        /// Bytes present.
        len: u64,
    },
    /// Bytes after the image that are not its hash tree.
    #[error("{path}: {len} bytes, but the image is {size} bytes and its hash tree {tree} more; the bytes after the image are not its hash tree")]
    BadTail {
        /// The file.
        path: PathBuf,
        /// File length.
        len: u64,
        /// Image size.
        size: u64,
        /// Tree size.
        tree: u64,
    },
    /// The file's tree is not the tree of its image.
    #[error("{0}: the hash tree after the image does not match the image")]
    TreeMismatch(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VerityError + '_ {
    move |error| VerityError::Io { path: path.to_owned(), error }
}

/// The squashfs image size of a layer file: `bytes_used` from its
/// superblock, rounded up to a whole block.
fn image_size(path: &Path, f: &mut File) -> Result<u64, VerityError> {
    let mut sb = [0u8; 48];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut sb))
        .map_err(|_| VerityError::NotSquashfs(path.into()))?;
    if sb[..4] != *b"hsqs" {
        return Err(VerityError::NotSquashfs(path.into()));
    }
    let mut used = [0u8; 8];
    used.copy_from_slice(&sb[40..48]);
    Ok(u64::from_le_bytes(used).div_ceil(BLOCK) * BLOCK)
}

/// Feed `len` bytes of `f` from its start to `sink`, in 1 MiB reads.
fn stream(path: &Path, f: &mut File, len: u64, mut sink: impl FnMut(&[u8])) -> Result<(), VerityError> {
    f.seek(SeekFrom::Start(0)).map_err(io(path))?;
    let mut r = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        sink(&buf[..n]);
    }
    if total != len {
        return Err(VerityError::Short { path: path.into(), size: len, len: total });
    }
    Ok(())
}

/// Read a layer image file: its digest, size and hash tree. A tree already
/// in the file must be exactly the computed one.
pub fn read_image(path: &Path) -> Result<LayerImage, VerityError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let size = image_size(path, &mut f)?;
    if len < size {
        return Err(VerityError::Short { path: path.into(), size, len });
    }
    let mut h = Hasher::default();
    stream(path, &mut f, size, |b| h.update(b))?;
    let digest = h.finish();
    let image = tree_of(path, &mut f, digest, size)?;
    let tree_len = image.tree.len() as u64;
    if len != size && len != size + tree_len {
        return Err(VerityError::BadTail { path: path.into(), len, size, tree: tree_len });
    }
    if len == size + tree_len && tree_len > 0 {
        let mut found = vec![0u8; image.tree.len()];
        f.seek(SeekFrom::Start(size)).and_then(|_| f.read_exact(&mut found)).map_err(io(path))?;
        if found != image.tree {
            return Err(VerityError::TreeMismatch(path.into()));
        }
    }
    Ok(image)
}

fn tree_of(path: &Path, f: &mut File, digest: Digest, size: u64) -> Result<LayerImage, VerityError> {
    let mut t = TreeBuilder::new(verity::salt_for(&digest));
    stream(path, f, size, |b| t.update(b))?;
    let (verity, tree) = t.finish();
    Ok(LayerImage { id: LayerIdentity { digest, size, verity }, tree })
}

/// Append the hash tree to an image file this build just wrote (exactly
/// `size` bytes, with digest `digest`).
pub fn append_tree(path: &Path, digest: Digest, size: u64) -> Result<LayerImage, VerityError> {
    let mut f = fs::OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
    let image = tree_of(path, &mut f, digest, size)?;
    f.seek(SeekFrom::Start(image.id.verity.hash_offset))
        .and_then(|_| f.write_all(&image.tree))
        .and_then(|()| f.sync_all())
        .map_err(io(path))?;
    Ok(image)
}

/// The identity of a layer known only by digest, size and root hash.
pub fn identity_by_digest(digest: Digest, size: u64, root_hash: Digest) -> LayerIdentity {
    let blocks = verity::data_blocks(size);
    LayerIdentity {
        digest,
        size,
        verity: Verity { data_blocks: blocks, hash_offset: blocks * BLOCK, salt: verity::salt_for(&digest), root_hash },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan;
    use crate::squashfs;

    /// A directory removed when the test ends.
    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("cairn-verity-{name}-")).tempdir().unwrap()
    }

    fn layer(dir: &Path) -> (PathBuf, Digest, u64) {
        let src = dir.join("src");
        fs::create_dir_all(&src).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        fs::write(src.join("big"), &big).unwrap();
        fs::write(src.join("small"), b"hello").unwrap();
        let out = dir.join("l.squashfs");
        let img = squashfs::write_layer(&scan::scan_dir(&src).unwrap(), &out).unwrap();
        (out, Digest(img.digest), img.size)
    }

    #[test]
    fn a_built_file_with_its_tree_reads_back_and_a_bare_one_too() {
        let dir = tmp("roundtrip");
        let d = dir.path();
        let (path, digest, size) = layer(d);
        let bare = d.join("bare");
        fs::copy(&path, &bare).unwrap();
        let appended = append_tree(&path, digest, size).unwrap();
        assert_eq!(appended.id.size, size);
        assert_eq!(fs::metadata(&path).unwrap().len(), appended.id.verity.partition_bytes());
        let read = read_image(&path).unwrap();
        assert_eq!(read.id, appended.id);
        assert_eq!(read_image(&bare).unwrap().id, appended.id);
        assert_eq!(read.id.verity.salt, verity::salt_for(&digest));
        assert_eq!(identity_by_digest(digest, size, read.id.verity.root_hash), read.id);
    }

    #[test]
    fn a_wrong_tree_or_stray_tail_is_refused() {
        let dir = tmp("tamper");
        let d = dir.path();
        let (path, digest, size) = layer(d);
        let image = append_tree(&path, digest, size).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[image.id.verity.hash_offset as usize + 5] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_image(&path), Err(VerityError::TreeMismatch(_))));
        bytes.truncate(last);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_image(&path), Err(VerityError::BadTail { .. })));
        fs::write(&path, b"not squashfs at all, long enough for a superblock read......").unwrap();
        assert!(matches!(read_image(&path), Err(VerityError::NotSquashfs(_))));
    }

    /// The standard tool agrees with our tree: `veritysetup verify` with the
    /// manifest's parameters passes, and fails after one flipped data byte.
    #[test]
    fn veritysetup_verifies_our_output() {
        let Some(tool) = ["/usr/sbin/veritysetup", "/sbin/veritysetup", "/usr/bin/veritysetup"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            eprintln!(
                "SKIP veritysetup_verifies_our_output: veritysetup not installed (apt-get install cryptsetup-bin)"
            );
            return;
        };
        let dir = tmp("veritysetup");
        let d = dir.path();
        let (path, digest, size) = layer(d);
        let image = append_tree(&path, digest, size).unwrap();
        let v = image.id.verity;
        let salt: String = v.salt.iter().map(|b| format!("{b:02x}")).collect();
        let verify = |p: &Path| {
            std::process::Command::new(tool)
                .args([
                    "verify",
                    "--no-superblock",
                    "--hash=sha256",
                    "--data-block-size=4096",
                    "--hash-block-size=4096",
                ])
                .arg(format!("--salt={salt}"))
                .arg(format!("--data-blocks={}", v.data_blocks))
                .arg(format!("--hash-offset={}", v.hash_offset))
                .arg(p)
                .arg(p)
                .arg(v.root_hash.to_string())
                .output()
                .unwrap()
        };
        let ok = verify(&path);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let mut bytes = fs::read(&path).unwrap();
        bytes[8192 + 17] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let bad = verify(&path);
        assert!(!bad.status.success(), "a flipped byte passed veritysetup verify");
    }
}
