//! The data partition's filesystem: ext4, made with e2fsprogs' `mke2fs`
//! (present on every Linux build machine; Debian marks it required).
//!
//! Made deterministic: the UUID and the directory hash seed are derived
//! from the caller's seed, and `E2FSPROGS_FAKE_TIME` pins every timestamp,
//! so the same size and seed give the same bytes. Inode tables and the
//! journal are written out in full (no lazy init), so the device never
//! spends its first boot zeroing them.
//!
//! The features are named one by one (`MKE2FS_CONFIG=/dev/null` leaves
//! mke2fs without its ext4 defaults, which would make an ext2 layout with
//! no journal): ext4's usual set, plus `quota` and `project` with the
//! project quota inode, so each volume's size limit is a project quota
//! the kernel enforces (see `init/src/volumes.rs`). Project ids need
//! 256-byte inodes.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// Volume label of the data filesystem.
pub const LABEL: &str = "cairn-data";

/// The filesystem features (see the module documentation).
pub const FEATURES: &str = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,\
                            quota,project,^metadata_csum_seed";

/// Why the data filesystem could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DataFsError {
    /// `mke2fs` could not be started.
    #[error("cannot run mke2fs (install e2fsprogs): {0}")]
    Spawn(std::io::Error),
    /// `mke2fs` failed.
    #[error("mke2fs failed on {path}: {stderr}")]
    Failed {
        /// The image being formatted.
        path: PathBuf,
        /// What it said.
        stderr: String,
    },
    /// Creating or sizing the image file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// Too small for ext4 with a journal.
    #[error("a data partition of {0} bytes is too small (ext4 with a journal needs at least 4 MiB)")]
    TooSmall(u64),
}

/// A UUID in text form derived from `seed` (version 4 and variant bits set,
/// so tools accept it).
pub fn uuid_from(seed: &[u8]) -> String {
    let h = Sha256::digest(seed);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// An e2fsprogs tool from PATH, else from the sbin directories Debian
/// installs it in (a non-root PATH often lacks them).
fn sbin_tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|c| c.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Write an ext4 filesystem of `size` bytes to `out` (created or replaced).
pub fn make_ext4(out: &Path, size: u64, seed: &[u8]) -> Result<(), DataFsError> {
    if size < 4 << 20 {
        return Err(DataFsError::TooSmall(size));
    }
    let io = |error| DataFsError::Io { path: out.to_owned(), error };
    let f = std::fs::File::create(out).map_err(io)?;
    f.set_len(size).map_err(io)?;
    drop(f);
    let uuid = uuid_from(seed);
    let output = Command::new(sbin_tool("mke2fs"))
        .env("E2FSPROGS_FAKE_TIME", "1")
        .env("MKE2FS_CONFIG", "/dev/null") // defaults only: the same on every machine
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-L", LABEL, "-U", &uuid, "-O", FEATURES])
        .arg("-E")
        .arg(format!("hash_seed={uuid},quotatype=prjquota,root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0"))
        .arg(out)
        .output()
        .map_err(DataFsError::Spawn)?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        return Err(DataFsError::Failed {
            path: out.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_fsck_clean() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        make_ext4(&a, 8 << 20, b"seed").unwrap_or_else(|e| panic!("{e}"));
        make_ext4(&b, 8 << 20, b"seed").unwrap_or_else(|e| panic!("{e}"));
        let (x, y) = (std::fs::read(&a).unwrap_or_default(), std::fs::read(&b).unwrap_or_default());
        assert_eq!(x.len(), 8 << 20);
        assert!(x == y, "two runs differ");
        let fsck = Command::new(sbin_tool("e2fsck")).args(["-fn"]).arg(&a).output().unwrap_or_else(|e| panic!("{e}"));
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
        // ext4 superblock at 1024: magic 0xEF53 at offset 56, label at 120.
        assert_eq!(&x[1024 + 56..1024 + 58], &[0x53, 0xef]);
        assert_eq!(&x[1024 + 120..1024 + 120 + LABEL.len()], LABEL.as_bytes());
        assert!(matches!(make_ext4(&a, 1 << 20, b"s"), Err(DataFsError::TooSmall(_))));
        // A journal, and project quotas with their inode (what volumes need).
        let dump = Command::new(sbin_tool("dumpe2fs")).arg("-h").arg(&a).output().unwrap_or_else(|e| panic!("{e}"));
        let dump = String::from_utf8_lossy(&dump.stdout);
        let features = dump.lines().find(|l| l.starts_with("Filesystem features:")).unwrap_or_default();
        for f in ["has_journal", "extent", "quota", "project", "metadata_csum"] {
            assert!(features.split_whitespace().any(|w| w == f), "{f} missing: {features}");
        }
        assert!(dump.contains("Project quota inode:"), "{dump}");
        assert!(dump.contains("Inode size:\t          256"), "{dump}");
        assert_ne!(uuid_from(b"a"), uuid_from(b"b"));
    }
}
