//! The boot state record on the `cairn-state` partition, as the device
//! reads and writes it: one whole copy (the older one) per write, flushed,
//! then read back past the page cache and compared. What each write holds
//! is decided by the pure transitions of `cairn_format::update`.

use std::os::fd::AsFd;

use cairn_format::bootstate::{self, BootState, BootStateError, COPY_SIZE, RECORD_SIZE};
use cairn_runtime::sys::{self, SysError};

use crate::partitions::Partitions;

/// The partition.
pub const PARTITION: &str = "cairn-state";

/// The record as read at boot, and where to write the next copy.
pub struct Record {
    /// The state partition's device, if the disk has one.
    dev: Option<String>,
    /// The copy holding `state` (0 or 1).
    copy: usize,
    /// The current state.
    pub state: BootState,
    /// Why the record could not be read (the factory fallback is in use).
    pub unreadable: Option<Unreadable>,
}

/// Why the record was not used.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// The disk has no state partition.
    #[error("no {PARTITION} partition")]
    Missing,
    /// The partition could not be read.
    #[error("reading {0}")]
    Read(SysError),
    /// Neither copy is valid.
    #[error("{0}")]
    Record(BootStateError),
}

/// Why a write did not land.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The disk has no state partition.
    #[error("no {PARTITION} partition")]
    Missing,
    /// The state does not encode.
    #[error("{0}")]
    Encode(BootStateError),
    /// A syscall failed.
    #[error("{0}")]
    Sys(SysError),
    /// The copy read back differs from the one written.
    #[error("copy {copy} read back differs from what was written")]
    ReadBack {
        /// The copy.
        copy: usize,
    },
}

impl Record {
    /// Read the record. Neither copy valid (or no partition): the factory
    /// state with the init's built-in floor, `unreadable` saying why.
    pub fn read(parts: &Partitions, floor: u64) -> Record {
        let Some(dev) = parts.get(PARTITION).cloned() else {
            return Record {
                dev: None,
                copy: 1,
                state: bootstate::fallback(floor),
                unreadable: Some(Unreadable::Missing),
            };
        };
        let region = read_at(&dev, 0, RECORD_SIZE);
        let (copy, state, unreadable) = match region.map(|r| bootstate::read_record(&r)) {
            Ok(Ok((copy, state))) => (copy, state, None),
            Ok(Err(e)) => (1, bootstate::fallback(floor), Some(Unreadable::Record(e))),
            Err(e) => (1, bootstate::fallback(floor), Some(Unreadable::Read(e))),
        };
        Record { dev: Some(dev), copy, state, unreadable }
    }

    /// A copy for a forked child (the installer) to write through.
    pub fn snapshot(&self) -> Record {
        Record { dev: self.dev.clone(), copy: self.copy, state: self.state.clone(), unreadable: None }
    }

    /// Write `next` as the new state: the older copy, sequence one higher,
    /// flushed and read back with O_DIRECT. On success `self.state` is the
    /// written state; on failure nothing changes here (the disk holds the
    /// old copy, or a torn one the reader refuses).
    pub fn write(&mut self, next: BootState) -> Result<(), WriteError> {
        let dev = self.dev.as_deref().ok_or(WriteError::Missing)?;
        let mut next = next;
        let at = bootstate::next_write(self.copy, self.state.seq, &mut next);
        let mut block = Box::new([0u8; COPY_SIZE]);
        bootstate::encode_copy(&next, &mut block).map_err(WriteError::Encode)?;
        write_at(dev, at as u64, &block[..]).map_err(WriteError::Sys)?;
        let copy = at / COPY_SIZE;
        let back = read_at(dev, at as u64, COPY_SIZE).map_err(WriteError::Sys)?;
        if back.as_slice() != &block[..] {
            return Err(WriteError::ReadBack { copy });
        }
        self.copy = copy;
        self.state = next;
        Ok(())
    }
}

/// Write `data` at `offset` of `dev` and flush it to the medium.
fn write_at(dev: &str, offset: u64, data: &[u8]) -> Result<(), SysError> {
    let fd = sys::open(dev, libc::O_WRONLY | libc::O_CLOEXEC)?;
    let mut done = 0usize;
    while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
        let n = nix::sys::uio::pwrite(fd.as_fd(), rest, (offset + done as u64) as libc::off_t)
            .map_err(sys::err("pwrite", dev))?;
        if n == 0 {
            return Err(SysError { op: "pwrite", arg: dev.to_owned(), errno: libc::EIO });
        }
        done += n;
    }
    nix::unistd::fdatasync(&fd).map_err(sys::err("fdatasync", dev))
}

/// Read `len` bytes (a multiple of 4096) at `offset` (aligned) of `dev`
/// with O_DIRECT: from the medium, not from the page cache. Falls back to a
/// cached read where O_DIRECT is refused (EINVAL).
pub fn read_at(dev: &str, offset: u64, len: usize) -> Result<Vec<u8>, SysError> {
    const ALIGN: usize = 4096;
    let direct = sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECT);
    let fd = match direct {
        Err(e) if e.errno == libc::EINVAL => sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC)?,
        r => r?,
    };
    // An aligned window inside a larger buffer: O_DIRECT wants the memory
    // aligned as well as the offset and length.
    let mut raw = vec![0u8; len + ALIGN];
    let skip = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
    let buf = raw.get_mut(skip..skip + len).ok_or(SysError { op: "read", arg: dev.to_owned(), errno: libc::EINVAL })?;
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        let n = nix::sys::uio::pread(fd.as_fd(), rest, (offset + done as u64) as libc::off_t)
            .map_err(sys::err("pread", dev))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(raw.get(skip..skip + done).map(<[u8]>::to_vec).unwrap_or_default())
}
