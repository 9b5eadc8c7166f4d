//! The boot state record on the `cairn-state` partition, and the block
//! devices an install writes, as `cairn_format::install::Storage`: `pread`,
//! `pwrite`, `fdatasync` and `O_DIRECT` reads. The order of the writes
//! (older copy, flush, read back) is the pure `install::write_record`,
//! tested on the host against a disk that loses power at every write; what
//! each write holds is decided by the pure transitions of
//! `cairn_format::update`. The installer's journal (`cairn_format::journal`)
//! lives on the same partition after the record's two copies (8 KiB to
//! 16 KiB) and goes through the same `Target::State` descriptors.

use std::os::fd::{AsFd, OwnedFd};

use cairn_format::bootstate::{self, BootState, BootStateError, Slot};
use cairn_format::install::{self, ReadError, RecordError, Storage, Target};
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
        let mut disk = Disk::new(vec![(Target::State, dev.clone())]);
        let (copy, state, unreadable) = match install::Record::read(&mut disk) {
            Ok(r) => (r.copy, r.state, None),
            Err(e) => {
                let why = match e {
                    ReadError::Io(DevError::Missing(_)) => Unreadable::Missing,
                    ReadError::Io(DevError::Sys(e)) => Unreadable::Read(e),
                    ReadError::Record(e) => Unreadable::Record(e),
                };
                (1, bootstate::fallback(floor), Some(why))
            }
        };
        Record { dev: Some(dev), copy, state, unreadable }
    }

    /// A copy for a forked child (the installer) to write through.
    pub fn snapshot(&self) -> Record {
        Record { dev: self.dev.clone(), copy: self.copy, state: self.state.clone(), unreadable: None }
    }

    /// The state partition's device, if the disk has one.
    pub fn dev(&self) -> Option<&str> {
        self.dev.as_deref()
    }

    /// The pure record (the copy and the state), for the installer.
    pub fn cursor(&self) -> install::Record {
        install::Record { copy: self.copy, state: self.state.clone() }
    }

    /// Write `next` as the new state: the older copy, sequence one higher,
    /// flushed and read back with O_DIRECT (`install::write_record`). On
    /// success `self.state` is the written state; on failure nothing
    /// changes here (the disk holds the old copy, or a torn one the reader
    /// refuses).
    pub fn write(&mut self, next: BootState) -> Result<(), WriteError> {
        let dev = self.dev.clone().ok_or(WriteError::Missing)?;
        let mut disk = Disk::new(vec![(Target::State, dev)]);
        let (copy, state) = install::write_record(&mut disk, self.copy, self.state.seq, next).map_err(|e| match e {
            RecordError::Encode(e) => WriteError::Encode(e),
            RecordError::Io(DevError::Missing(_)) => WriteError::Missing,
            RecordError::Io(DevError::Sys(e)) => WriteError::Sys(e),
            RecordError::ReadBack { copy } => WriteError::ReadBack { copy },
        })?;
        self.copy = copy;
        self.state = state;
        Ok(())
    }
}

/// Why a block device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The target has no device.
    #[error("partition {0} is missing")]
    Missing(String),
    /// A syscall failed.
    #[error("{0}")]
    Sys(SysError),
}

/// Block devices by install target. Each is opened once per way it is used
/// (read, read with O_DIRECT, write) and stays open until dropped, so a
/// flush is an `fdatasync` of the descriptor that wrote and an install's
/// chunks do not reopen their device.
pub struct Disk {
    devices: Vec<(Target, String)>,
    open: Vec<(Target, Use, OwnedFd)>,
    /// The ESP's device, for a bundle's boot image.
    esp: Option<String>,
    /// The ESP mounted while a boot image is written.
    entry: Option<crate::bootslot::EntryWriter>,
}

/// How a descriptor was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Direct,
    Write,
}

impl Disk {
    /// The devices of each target.
    pub fn new(devices: Vec<(Target, String)>) -> Disk {
        Disk { devices, open: Vec::new(), esp: None, entry: None }
    }

    /// The ESP (its device) a bundle's boot image is written to.
    pub fn with_esp(mut self, esp: Option<String>) -> Disk {
        self.esp = esp;
        self
    }

    /// Read `t` through `fd`, an open descriptor (a bundle passed by a
    /// request); `label` names it in errors. Only plain reads use it.
    pub fn adopt(&mut self, t: Target, label: &str, fd: OwnedFd) {
        self.devices.push((t, label.to_owned()));
        self.open.push((t, Use::Read, fd));
    }

    /// `t`'s device and a descriptor opened for `how`, opened on first use.
    fn fd(&mut self, t: Target, how: Use) -> Result<(&OwnedFd, &str), DevError> {
        let dev = self
            .devices
            .iter()
            .find(|(d, _)| *d == t)
            .map(|(_, p)| p.as_str())
            .ok_or_else(|| DevError::Missing(t.to_string()))?;
        if !self.open.iter().any(|(o, u, _)| (*o, *u) == (t, how)) {
            let fd = match how {
                Use::Read => sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC),
                Use::Direct => open_direct(dev),
                Use::Write => sys::open(dev, libc::O_WRONLY | libc::O_CLOEXEC),
            };
            self.open.push((t, how, fd.map_err(DevError::Sys)?));
        }
        let fd = self.open.iter().find(|(o, u, _)| (*o, *u) == (t, how)).map(|(_, _, fd)| fd);
        fd.map(|fd| (fd, dev)).ok_or_else(|| DevError::Missing(t.to_string()))
    }
}

impl Storage for Disk {
    type Error = DevError;

    fn read(&mut self, t: Target, offset: u64, buf: &mut [u8]) -> Result<usize, DevError> {
        let (fd, dev) = self.fd(t, Use::Read)?;
        read_fd_at(fd, dev, offset, buf).map_err(DevError::Sys)
    }

    fn read_direct(&mut self, t: Target, offset: u64, buf: &mut [u8]) -> Result<usize, DevError> {
        let (fd, dev) = self.fd(t, Use::Direct)?;
        let data = read_direct_at(fd, dev, offset, buf.len()).map_err(DevError::Sys)?;
        let n = data.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn write(&mut self, t: Target, offset: u64, data: &[u8]) -> Result<(), DevError> {
        let (fd, dev) = self.fd(t, Use::Write)?;
        write_fd_at(fd, dev, offset, data).map_err(DevError::Sys)
    }

    fn flush(&mut self, t: Target) -> Result<(), DevError> {
        let (fd, dev) = self.fd(t, Use::Write)?;
        nix::unistd::fdatasync(fd).map_err(sys::err("fdatasync", dev)).map_err(DevError::Sys)?;
        if let Target::BootImage(_) = t {
            // A new file: its directory entry and the FAT chain too.
            nix::unistd::syncfs(fd).map_err(sys::err("syncfs", dev)).map_err(DevError::Sys)?;
        }
        Ok(())
    }

    fn begin_entry(&mut self, slot: Slot) -> Result<(), DevError> {
        let esp = self.esp.clone().ok_or_else(|| DevError::Missing(crate::partitions::ESP.into()))?;
        let t = Target::BootImage(slot);
        self.open.retain(|(o, _, _)| *o != t);
        self.devices.retain(|(o, _)| *o != t);
        self.entry = None;
        let (writer, path) = crate::bootslot::EntryWriter::begin(&esp, slot).map_err(DevError::Sys)?;
        self.entry = Some(writer);
        self.devices.push((t, path));
        Ok(())
    }

    fn finish_entry(&mut self, slot: Slot, tries: u8) -> Result<(), DevError> {
        #[cfg(feature = "test-hooks")]
        hang_before_naming();
        let t = Target::BootImage(slot);
        self.open.retain(|(o, _, _)| *o != t);
        let writer = self.entry.take().ok_or_else(|| DevError::Missing(t.to_string()))?;
        writer.finish(slot, tries).map(drop).map_err(DevError::Sys)
    }
}

/// `cairn.test.hang=entry-name` (test builds): the installer stops for
/// good between the stage write and naming the boot entry, so the harness
/// can cut the power exactly there.
#[cfg(feature = "test-hooks")]
fn hang_before_naming() {
    let words = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if crate::cmdline::parse(&words).test_hang == Some(crate::cmdline::TestHang::EntryName) {
        crate::event::event("test.hang").kv("where", "installer").kv("before", "naming the boot entry").emit();
        loop {
            nix::unistd::pause();
        }
    }
}

/// Read up to `buf.len()` bytes at `offset` (fewer at the end of `what`).
pub fn read_fd_at(fd: &OwnedFd, what: &str, offset: u64, buf: &mut [u8]) -> Result<usize, SysError> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        let at = libc::off_t::try_from(offset + done as u64).unwrap_or(libc::off_t::MAX);
        let n = nix::sys::uio::pread(fd.as_fd(), rest, at).map_err(sys::err("pread", what))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn write_fd_at(fd: &OwnedFd, what: &str, offset: u64, data: &[u8]) -> Result<(), SysError> {
    let mut done = 0usize;
    while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
        let at = libc::off_t::try_from(offset + done as u64).unwrap_or(libc::off_t::MAX);
        let n = nix::sys::uio::pwrite(fd.as_fd(), rest, at).map_err(sys::err("pwrite", what))?;
        if n == 0 {
            return Err(SysError { op: "pwrite", arg: what.into(), errno: libc::EIO });
        }
        done += n;
    }
    Ok(())
}

/// `dev` opened for reads from the medium, not from the page cache
/// (O_DIRECT); a plain read-only descriptor where O_DIRECT is refused
/// (EINVAL).
fn open_direct(dev: &str) -> Result<OwnedFd, SysError> {
    match sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECT) {
        Err(e) if e.errno == libc::EINVAL => sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC),
        r => r,
    }
}

/// Read `len` bytes (a multiple of 4096) at `offset` (aligned) through an
/// [`open_direct`] descriptor.
fn read_direct_at(fd: &OwnedFd, dev: &str, offset: u64, len: usize) -> Result<Vec<u8>, SysError> {
    const ALIGN: usize = 4096;
    // An aligned window inside a larger buffer: O_DIRECT wants the memory
    // aligned as well as the offset and length.
    let mut raw = vec![0u8; len + ALIGN];
    let skip = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
    let buf = raw.get_mut(skip..skip + len).ok_or(SysError { op: "read", arg: dev.to_owned(), errno: libc::EINVAL })?;
    let done = read_fd_at(fd, dev, offset, buf)?;
    Ok(raw.get(skip..skip + done).map(<[u8]>::to_vec).unwrap_or_default())
}
