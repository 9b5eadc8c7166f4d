//! The update installer: a forked child of PID 1 that reads a bundle,
//! checks everything before writing a byte, writes the missing layers and
//! the manifest into the slot the committed manifest does not use, reads
//! them back, and stages a trial with one durable write of the boot state
//! record. PID 1 only starts it and watches it exit (a hostile or broken
//! bundle can crash or hang the child, never PID 1).
//!
//! The sequence (what is written, flushed and read back, in which order)
//! is the pure `cairn_format::install::install`, tested on the host against
//! a disk that loses power at every write; here are the block devices
//! (`record::Disk`), the events and the fork. The install journal (how many
//! chunks of each layer part are durable, after the record's copies on
//! `cairn-state`) is written and read by that pure sequence through the same
//! `Target::State` device: an install cut by a power loss resumes on the
//! next boot (`update.resumed part=app chunks_skipped=5`).
//!
//! A bundle comes from one of two sources:
//! - a whole disk that holds one (a USB stick or a second disk written with
//!   `dd`): searched at boot ([`spawn`], forked by the supervisor once the
//!   first starts are under way: `Supervisor::look_for_bundles`);
//! - a descriptor a container with the `update` permission passes with its
//!   `update` request (`cairn-ctl update FILE`: a file its update agent
//!   downloaded, or a device it was given): [`spawn_request`]. That child
//!   reads the boot state record again (a trial may have committed since
//!   boot), tells the client each step on the request's connection and
//!   ends it with `cairn/1 end staged ...` or `cairn/1 error ...`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use cairn_format::bootstate::Slot;
use cairn_format::bundle;
use cairn_format::install::{self as pure, Progress, Target};
use cairn_format::manifest::Manifest;
use cairn_format::update::Partition;
use cairn_runtime::sys;

use crate::bootslot::BootSlot;
use crate::event::event;
use crate::partitions::Partitions;
use crate::record::{self, DevError, Disk, Record};
use crate::trust::Trust;

/// Bytes moved per read and write, and per install journal entry: each
/// chunk is flushed, then counted in the journal on `cairn-state`
/// (`cairn_format::journal`), so an install cut by a power loss resumes
/// after the last chunk counted (`update.resumed`).
const CHUNK: usize = 1 << 20;

/// Why an install stopped. Refusals come before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The device has no trust data.
    #[error("this device has no valid trust data: it refuses every bundle")]
    NoTrust,
    /// The state partition is missing.
    #[error("partition {} is missing", record::PARTITION)]
    NoState,
    /// What the pure sequence refused or failed at.
    #[error("{0}")]
    Install(pure::InstallError<DevError>),
}

impl InstallError {
    /// The event's `reason`: refusals name their rule.
    pub fn reason(&self) -> &'static str {
        match self {
            InstallError::NoTrust => "no-trust",
            InstallError::NoState => "no-partition",
            InstallError::Install(pure::InstallError::Io(DevError::Missing(_))) => "no-partition",
            InstallError::Install(e) => e.reason(),
        }
    }
}

/// The first disk other than the boot disk whose first bytes are a bundle's
/// table of contents: `/dev/NAME`.
pub fn find_bundle_disk(boot_disk: &str) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != boot_disk && !["loop", "ram", "dm-", "sr", "zram"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names.into_iter().map(|n| format!("/dev/{n}")).find(|dev| {
        let mut head = [0u8; bundle::TOC_MAGIC.len()];
        let read =
            sys::open(dev, libc::O_RDONLY | libc::O_CLOEXEC).and_then(|fd| record::read_fd_at(&fd, dev, 0, &mut head));
        read.is_ok_and(|n| n == head.len() && head == bundle::TOC_MAGIC)
    })
}

/// Everything the install needs from the running system.
pub struct Context<'a> {
    /// The trusted keys and product.
    pub trust: Option<&'a Trust>,
    /// The committed (booted) manifest.
    pub committed: &'a Manifest,
    /// The boot state record.
    pub record: Record,
    /// The boot disk's partitions.
    pub partitions: &'a Partitions,
    /// The boot entry this boot came from, as named on the ESP now: a
    /// bundle's boot image goes into the other one.
    pub entry: Option<BootSlot>,
}

/// Where the bundle is read from.
pub enum Source {
    /// A block device holding it from its first byte (`/dev/vdb`).
    Disk(String),
    /// A descriptor passed with an `update` request: a regular file or a
    /// block device, read with `pread`.
    Passed(OwnedFd),
}

/// Install the bundle from `source`. Each step is an event (and, with
/// `tell`, a message to the requesting client); the result is the staged
/// slot.
pub fn install(source: Source, cx: Context<'_>, tell: Option<&Client>) -> Result<Slot, InstallError> {
    let started = Instant::now();
    let trust = cx.trust.ok_or(InstallError::NoTrust)?;
    let state_dev = cx.record.dev().ok_or(InstallError::NoState)?;
    let mut devices = vec![(Target::State, state_dev.to_owned())];
    let passed = match source {
        Source::Disk(dev) => {
            devices.push((Target::Source, dev));
            None
        }
        Source::Passed(fd) => Some(fd),
    };
    let mut layers = Vec::new();
    for (name, dev) in cx.partitions {
        if let Some(slot) = [Slot::A, Slot::B].into_iter().find(|s| s.partition() == name) {
            devices.push((Target::Manifest(slot), dev.clone()));
        }
        let Some(number) = name.strip_prefix("cairn-layer-").and_then(|n| n.parse::<u8>().ok()) else { continue };
        devices.push((Target::Layer(number), dev.clone()));
        if let Some(bytes) = partition_bytes(dev) {
            layers.push(Partition { number, bytes });
        }
    }
    let esp = cx.entry.as_ref().map(|b| b.esp.clone());
    let mut disk = Disk::new(devices).with_esp(esp);
    if let Some(fd) = passed {
        disk.adopt(Target::Source, "bundle (passed by the request)", fd);
    }
    let pcx = pure::Install {
        keys: &trust.keys,
        product: &trust.product,
        committed: cx.committed,
        partitions: &layers,
        chunk: CHUNK,
        booted_entry: cx.entry.as_ref().map(|b| b.entry),
    };
    let mut rec = cx.record.cursor();
    let mut t = Instant::now();
    let report = |p: Progress<'_>| {
        let e = match p {
            Progress::Verified { manifest, slot, reuse, write, bytes } => event("update.verified")
                .kv("version", manifest.version)
                .kv("product", &manifest.compatible)
                .kv("slot", slot)
                .kv("layers", manifest.layers.len())
                .kv("reuse", reuse)
                .kv("write", write)
                .kv("bytes", bytes),
            Progress::Claimed { slot, seq } => event("update.claimed").kv("slot", slot).kv("seq", seq),
            Progress::Resumed { layer, partition, chunks_skipped, chunks } => event("update.resumed")
                .kv("part", &layer.name)
                .kv("digest", layer.digest.short())
                .kv("partition", partition)
                .kv("chunks_skipped", chunks_skipped)
                .kv("chunks", chunks)
                .kv("chunk_bytes", CHUNK),
            Progress::ResumeFailed { partition } => {
                event("update.resume-failed").kv("partition", partition).kv("effect", "rewrite")
            }
            Progress::LayerWritten { layer, partition, bytes } => event("update.layer-written")
                .kv("layer", &layer.name)
                .kv("digest", layer.digest.short())
                .kv("partition", partition)
                .kv("bytes", bytes)
                .kv("ms", t.elapsed().as_millis()),
            Progress::ManifestWritten { slot, bytes } => {
                event("update.manifest-written").kv("slot", slot).kv("bytes", bytes)
            }
            Progress::BootImageWritten { entry, bytes } => event("update.boot-image-written")
                .kv("entry", entry)
                .kv("bytes", bytes)
                .kv("ms", t.elapsed().as_millis()),
            Progress::EntryNamed { entry, tries } => event("update.boot-entry")
                .kv("entry", entry)
                .kv("file", cairn_format::bootentry::Entry::trial(entry, u32::from(tries)).file_name()),
            Progress::Staged { slot, version, tries, seq } => event("update.staged")
                .kv("slot", slot)
                .kv("version", version)
                .kv("tries", tries)
                .kv("seq", seq)
                .kv("ms", started.elapsed().as_millis()),
        };
        if let Some(c) = tell {
            c.say(e.line());
        }
        e.emit();
        // A layer's time runs from the step before it.
        t = Instant::now();
    };
    pure::install(&mut disk, &pcx, &mut rec, report).map_err(InstallError::Install)
}

/// A partition's size from sysfs.
fn partition_bytes(dev: &str) -> Option<u64> {
    let name = dev.rsplit('/').next()?;
    let sectors = std::fs::read_to_string(format!("/sys/class/block/{name}/size")).ok()?;
    sectors.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// The installer child's exit code when no disk holds a bundle.
pub const NO_BUNDLE: i32 = 3;

/// Fork the installer. The child looks for a bundle on every disk but the
/// boot disk (PID 1 never reads a stick: a disk that stops answering hangs
/// the child, not PID 1), refuses it while `trial` is pending, installs it,
/// and exits: 0 staged; 1 refused or failed (said in its events);
/// [`NO_BUNDLE`]. PID 1 gets the child's pid to watch. `None` (with an
/// event) if fork fails.
pub fn spawn(boot_disk: &str, trial: Option<Slot>, cx: Context<'_>) -> Option<libc::pid_t> {
    // SAFETY: PID 1 is single-threaded, so the child is a consistent copy;
    // the child never returns into PID 1's code: it ends in exit_now.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Some(child.as_raw()),
        Ok(nix::unistd::ForkResult::Child) => {
            let events = crate::helper_events::become_helper();
            // Forked from the supervisor's loop: the containers' pipes and
            // ptys and the control socket are not the installer's to hold
            // (a pty would stay open after its container's end).
            if let Err(errno) = sys::close_all_but(&[events]) {
                let e = sys::SysError { op: "close_range", arg: "the installer's inherited descriptors".into(), errno };
                event("update.unavailable").kv("error", e).emit();
                sys::exit_now(1);
            }
            let Some(source) = find_bundle_disk(boot_disk) else { sys::exit_now(NO_BUNDLE) };
            event("update.installing").kv("source", &source).kv("pid", nix::unistd::getpid().as_raw()).emit();
            let result = match trial {
                Some(slot) => Err(trial_pending(slot)),
                None => install(Source::Disk(source.clone()), cx, None).map_err(|e| (e.reason(), e.to_string())),
            };
            let code = match result {
                Ok(_) => 0,
                Err((reason, error)) => {
                    event("update.refused").kv("source", &source).kv("reason", reason).kv("error", error).emit();
                    1
                }
            };
            sys::exit_now(code)
        }
        Err(e) => {
            event("update.unavailable").kv("error", sys::err("fork", "installer")(e)).emit();
            None
        }
    }
}

fn trial_pending(slot: Slot) -> (&'static str, String) {
    ("trial-pending", format!("slot {slot} is on trial: commit or roll back first"))
}

/// What a requested install needs from the boot, kept by the supervisor.
pub struct Updater {
    /// The initramfs's trusted keys and product.
    pub trust: Option<Trust>,
    /// The booted manifest: the committed one whenever no trial is pending
    /// (a request during a trial is refused).
    pub committed: Manifest,
    /// The boot disk's partitions.
    pub partitions: Partitions,
    /// The floor to assume when the record cannot be read.
    pub fallback_floor: u64,
    /// The boot entry this boot came from (read again before an install:
    /// it may have been blessed since).
    pub entry: Option<BootSlot>,
}

/// The requesting client, told each step (best effort: a client that does
/// not read misses messages, it never stalls the install).
pub struct Client(OwnedFd);

/// Longest the installer waits, after `end staged`, for the requesting
/// client to hang up before it exits (and PID 1 reboots).
const HANG_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Client {
    /// Wait until the client closes its end of the connection, or `limit`.
    /// Anything it still sends is read and dropped.
    pub fn wait_hang_up(&self, limit: std::time::Duration) {
        let until = Instant::now() + limit;
        let mut buf = [0u8; 256];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if ms == 0 {
                return;
            }
            let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, for the call's duration.
            let n = unsafe { libc::poll(&mut p, 1, i32::from(ms)) };
            match if n < 0 { Err(nix::errno::Errno::last()) } else { Ok(n) } {
                Ok(0) => return,
                Ok(_) => {
                    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
                    match nix::sys::socket::recv(self.0.as_raw_fd(), &mut buf, flags) {
                        Ok(0) => return,
                        Ok(_) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return,
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Send one message.
    pub fn say(&self, text: &str) {
        let flags = nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        let _ = nix::sys::socket::send(self.0.as_raw_fd(), text.as_bytes(), flags);
    }
}

/// Why a passed descriptor is not read as a bundle: it must be a regular
/// file or a block device (a pipe or a socket cannot be read at an offset,
/// and a character device could be anything).
fn check_passed(fd: &OwnedFd) -> Result<(), (&'static str, String)> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| ("bad-source", format!("fstat of the passed descriptor: {e}")))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFREG || kind == libc::S_IFBLK {
        Ok(())
    } else {
        Err(("bad-source", format!("the passed descriptor is not a file or a block device (mode {:o})", st.st_mode)))
    }
}

/// Fork the installer for an `update` request: `source` is the descriptor
/// the request carried, `client` its connection. The child tells the
/// client `cairn/1 ok installing pid=N`, then each step's event line, then
/// `cairn/1 end staged slot=S version=V` (exit 0: PID 1 reboots into the
/// trial) or `cairn/1 error REASON: WHY` (exit 1). The boot state record is
/// read again in the child: a trial pending refuses the bundle.
pub fn spawn_request(u: &Updater, source: OwnedFd, client: OwnedFd) -> Result<libc::pid_t, sys::SysError> {
    // SAFETY: PID 1 is single-threaded, so the child is a consistent copy;
    // the child never returns into PID 1's code: it ends in exit_now.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(nix::unistd::ForkResult::Child) => {
            let events = crate::helper_events::become_helper();
            // Forked from the supervisor's loop, as the bundle search is:
            // it keeps its events channel, the bundle and the client, and
            // none of the containers' pipes and ptys, the control socket
            // or PID 1's other descriptors.
            if let Err(errno) = sys::close_all_but(&[events, source.as_raw_fd(), client.as_raw_fd()]) {
                let e = sys::SysError { op: "close_range", arg: "the installer's inherited descriptors".into(), errno };
                event("update.unavailable").kv("error", e).emit();
                sys::exit_now(1);
            }
            let client = Client(client);
            let pid = nix::unistd::getpid().as_raw();
            client.say(&format!("cairn/1 ok installing pid={pid}"));
            event("update.installing").kv("source", "request").kv("pid", pid).emit();
            let record = Record::read(&u.partitions, u.fallback_floor);
            let result = match (&record.state.trial, check_passed(&source)) {
                (Some(t), _) => Err(trial_pending(t.slot)),
                (None, Err(e)) => Err(e),
                (None, Ok(())) => {
                    let entry = u.entry.as_ref().and_then(|b| match crate::bootslot::reread(b) {
                        Ok(now) => Some(now),
                        Err(e) => {
                            event("boot.slot-unreadable").kv("error", e).emit();
                            None
                        }
                    });
                    let cx = Context {
                        trust: u.trust.as_ref(),
                        committed: &u.committed,
                        record,
                        partitions: &u.partitions,
                        entry,
                    };
                    install(Source::Passed(source), cx, Some(&client)).map_err(|e| (e.reason(), e.to_string()))
                }
            };
            let code = match result {
                Ok(slot) => {
                    client.say(&format!("cairn/1 end staged slot={slot} effect=reboot"));
                    // PID 1 reboots once this child exits: give the client
                    // its answer's worth of time to read it and hang up
                    // (an agent then deletes its bundle), never more than
                    // `HANG_UP_WAIT`.
                    client.wait_hang_up(HANG_UP_WAIT);
                    0
                }
                Err((reason, error)) => {
                    event("update.refused").kv("source", "request").kv("reason", reason).kv("error", &error).emit();
                    client.say(&format!("cairn/1 error {reason}: {error}"));
                    1
                }
            };
            sys::exit_now(code)
        }
        Err(e) => Err(sys::err("fork", "installer")(e)),
    }
}
