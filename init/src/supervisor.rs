//! The supervisor's executor: one single-threaded event loop over a
//! signalfd, the control socket, the console and the containers' output and
//! report pipes. Every decision (start order, dependency blocking, restart
//! backoff, start timeouts, the shutdown plan, control requests) is made by
//! the pure core in [`crate::machine`]; this file turns its effects into
//! syscalls and what the kernel says into its inputs.
//!
//! Starting never blocks the loop: `spawn` returns once the container's
//! init exists, and its set-up (which runs under the container's own
//! limits) is followed by polling the report pipe. A container is
//! `Starting` until the pipe reaches EOF (the entrypoint was executed:
//! `container.started`), a report arrives (`container.failed`), its init
//! exits, or the start timeout (`cairn.start_timeout_ms`, 10 s by default) passes
//! (`container.start-timeout`: the cgroup is killed and it counts as a
//! set-up failure). Once a shutdown began nothing is started: units
//! waiting or in backoff are stopped, set-ups under way are killed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::resolve::SpecError;
use cairn_format::manifest::MAX_CONTAINERS;
use cairn_runtime::seccomp::Filter;
use cairn_runtime::spawn::{self as spawning, Filters, Setup, SpawnError};
use cairn_runtime::sys::SysError;
use cairn_runtime::Ahead;
use cairn_runtime::{spawn, Cgroup, ContainerSpec, Exit};

use crate::control::{self, Conn, Listener, Received, Sent, Source, Stream, MAX_CONNECTIONS};
use crate::event::{event, Event};
pub use crate::machine::ShutdownKind;
use crate::machine::{Answer, Effects, Machine, Pid, Report, Spawned, UnitDesc};
use crate::ring::LogRing;
use crate::tap::Tap;

/// Why a unit can never start.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// Its manifest entry does not resolve to a spec (a layer that did not
    /// verify, a refused device, ...).
    #[error("{0}")]
    Resolve(SpecError),
    /// Its seccomp filter does not compile.
    #[error("{0}")]
    Seccomp(SpawnError),
}

impl From<SpecError> for UnitError {
    fn from(e: SpecError) -> Self {
        UnitError::Resolve(e)
    }
}

/// The executor's side of one container: what it needs to run it.
pub struct Unit {
    name: String,
    spec: Result<ContainerSpec, UnitError>,
    cgroup: Cgroup,
    oom_baseline: u64,
    /// OOM kills of its cgroup already reported (`container.oom`).
    oom_seen: u64,
    /// Its `memory.events` watch (-1: none).
    oom_wd: i32,
    /// Its output being copied to the console: the pty's master with
    /// `console`, else the read end of its stdout/stderr pipe.
    console: Option<Tap>,
    /// From a spawn until the core announces the start.
    fresh_output: Option<(Tap, Option<String>)>,
    /// Its seccomp filter, compiled once for every start (and shared with
    /// the containers compiled from the same inputs).
    filter: Option<Arc<Filter>>,
    /// While starting: the read end of its report pipe (non-blocking).
    report: Option<OwnedFd>,
    /// Its newest output lines (kept across restarts).
    log: LogRing,
    /// Its health check's command and timeout (the command form).
    probe: Option<(Vec<std::ffi::CString>, Duration)>,
    /// Its probe in flight.
    probing: Option<crate::probe::Running>,
}

impl Unit {
    /// A unit; `spec` is an error when it can never start. Its seccomp
    /// filter comes from `filters` (compiled there unless an earlier unit
    /// had the same inputs).
    pub fn new(name: &str, spec: Result<ContainerSpec, UnitError>, filters: &mut Filters) -> Self {
        let compiled = spec.and_then(|s| match filters.get(&s) {
            Ok(f) => Ok((s, f)),
            Err(e) => Err(UnitError::Seccomp(e)),
        });
        let (spec, filter) = match compiled {
            Ok((s, f)) => (Ok(s), f),
            Err(e) => (Err(e), None),
        };
        Self {
            name: name.into(),
            spec,
            filter,
            cgroup: Cgroup::for_container(name),
            oom_baseline: 0,
            oom_seen: 0,
            oom_wd: -1,
            console: None,
            fresh_output: None,
            report: None,
            log: LogRing::new(cairn_format::manifest::DEFAULT_LOG_SIZE as usize),
            probe: None,
            probing: None,
        }
    }

    /// Check its health with this command (argv), killed after `timeout`.
    /// An argument with a NUL (the manifest's validation refuses it) drops
    /// the command: every check then fails to start, and says why.
    pub fn with_probe(mut self, argv: &[String], timeout: Duration) -> Self {
        let argv = argv.iter().map(|a| std::ffi::CString::new(a.as_str())).collect::<Result<Vec<_>, _>>();
        self.probe = Some((argv.unwrap_or_default(), timeout));
        self
    }

    /// Keep `bytes` of its output in memory (its manifest's `log_size`).
    pub fn with_log_size(mut self, bytes: u32) -> Self {
        self.log = LogRing::new(bytes as usize);
        self
    }
}

/// Everything the core's effects act on.
struct Io {
    units: Vec<Unit>,
    /// inotify on the containers' `memory.events` (live OOM events).
    oom: Option<OwnedFd>,
    /// Device programs loaded so far, shared by every container with the
    /// same rules (most have the defaults), and a network namespace made
    /// ahead for the first container that may take it.
    ahead: Ahead,
}

impl Effects for Io {
    fn spawn(&mut self, i: usize, restarts: u32, join: Option<Pid>, _: Instant) -> Spawned {
        let Some(u) = self.units.get_mut(i) else { return Spawned::Unstartable };
        let spec = match &u.spec {
            Ok(s) => s,
            Err(reason) => {
                event("container.failed").kv("name", &u.name).kv("reason", reason).emit();
                return Spawned::Unstartable;
            }
        };
        u.oom_baseline = u.cgroup.oom_kills();
        u.oom_seen = u.oom_baseline;
        let spec = with_restart_count(spec, restarts);
        match spawn(&spec, u.filter.as_deref(), &u.cgroup, &mut self.ahead, join) {
            Ok(started) => {
                // The cgroup exists now (it is kept across runs: the same
                // file, the same watch).
                if let Some(fd) = self.oom.as_ref() {
                    u.oom_wd = watch_memory_events(fd, &u.cgroup, &u.name);
                }
                u.report = Some(started.report);
                if let Some((master, pty)) = started.console {
                    u.fresh_output = Some((Tap::new(master, i), Some(pty)));
                } else if let Some(output) = started.output {
                    u.fresh_output = Some((Tap::new(output, i), None));
                }
                Spawned::Started { pid: started.pid, at: Instant::now() }
            }
            Err(e) => {
                event("container.failed").kv("name", &u.name).kv("error", &e).emit();
                Spawned::Failed
            }
        }
    }

    fn attach_output(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else { return };
        if let Some(mut old) = u.console.take() {
            old.pump(&u.name, &mut u.log);
            old.flush(&u.name, &mut u.log);
        }
        match u.fresh_output.take() {
            Some((tap, Some(pty))) => {
                event("container.console").kv("name", &u.name).kv("pty", pty).emit();
                u.console = Some(tap);
            }
            Some((tap, None)) => u.console = Some(tap),
            None => {}
        }
    }

    fn close_report(&mut self, i: usize) {
        if let Some(u) = self.units.get_mut(i) {
            u.report = None;
        }
    }

    fn signal(&mut self, pid: Pid, signal: i32) -> Result<(), SysError> {
        cairn_runtime::sys::kill(pid, signal)
    }

    fn kill_cgroup(&mut self, i: usize, pid: Pid) {
        if let Some(u) = self.units.get(i) {
            if let Err(e) = u.cgroup.kill_all() {
                event("container.kill-failed").kv("name", &u.name).kv("error", e).emit();
                let _ = cairn_runtime::sys::kill(pid, libc::SIGKILL);
            }
        }
    }

    fn freeze(&mut self, i: usize, frozen: bool) -> Result<(), SysError> {
        match self.units.get(i) {
            Some(u) => u.cgroup.freeze(frozen),
            None => Ok(()),
        }
    }

    fn frozen(&mut self, i: usize) -> Option<bool> {
        self.units.get(i).and_then(|u| u.cgroup.frozen())
    }

    fn start_probe(&mut self, i: usize, pid: Pid) -> bool {
        let Some(u) = self.units.get_mut(i) else { return false };
        let why = match (&u.spec, &u.probe) {
            (Ok(spec), Some((argv, timeout))) if !argv.is_empty() => {
                let target =
                    crate::exec::Target { name: &u.name, spec, filter: u.filter.as_deref(), cgroup: &u.cgroup, pid };
                match crate::probe::start(&target, argv, *timeout) {
                    Ok(running) => {
                        u.probing = Some(running);
                        return true;
                    }
                    Err(e) => e.to_string(),
                }
            }
            _ => "no command".to_string(),
        };
        event("container.probe-failed").kv("name", &u.name).kv("reason", "not started").kv("error", why).emit();
        false
    }

    fn kill_probe(&mut self, i: usize, helper_too: bool) {
        let Some(u) = self.units.get_mut(i) else { return };
        if let Some(running) = u.probing.take() {
            if let Err(e) = crate::probe::kill(&u.cgroup, running, helper_too) {
                event("container.probe-kill-failed").kv("name", &u.name).kv("error", e).emit();
            }
        }
    }

    fn emit(&mut self, e: Event) {
        e.emit();
    }

    fn hostname(&mut self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
    }
}

/// Watch `memory.events` of `cgroup` for changes (the kernel notifies
/// every change of the file); the watch descriptor, -1 if it failed.
fn watch_memory_events(fd: &OwnedFd, cgroup: &Cgroup, name: &str) -> i32 {
    let path = format!("{}/memory.events", cgroup.path);
    let Ok(c) = std::ffi::CString::new(path.clone()) else { return -1 };
    // SAFETY: a valid inotify descriptor and a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
    if wd < 0 {
        let errno = cairn_runtime::sys::errno();
        event("container.oom-unwatched")
            .kv("name", name)
            .kv("error", SysError { op: "inotify_add_watch", arg: path, errno })
            .kv("effect", "OOM kills reported at exit only")
            .emit();
    }
    wd
}

/// An inotify descriptor for the live OOM events (non-blocking).
fn oom_inotify() -> Option<OwnedFd> {
    // SAFETY: inotify_init1 takes flags only; the descriptor it returns is
    // owned by nothing else.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        let errno = cairn_runtime::sys::errno();
        event("oom.unwatched")
            .kv("error", SysError { op: "inotify_init1", arg: String::new(), errno })
            .kv("effect", "OOM kills reported at exit only")
            .emit();
        return None;
    }
    // SAFETY: `fd` was just returned by the kernel and is owned here alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The watch descriptors in a buffer of inotify events.
fn inotify_wds(buf: &[u8]) -> Vec<i32> {
    const HEADER: usize = 16; // wd, mask, cookie, len
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = buf.get(at..at + HEADER) {
        let word = |k: usize| h.get(k..k + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_ne_bytes);
        let (Some(wd), Some(len)) = (word(0), word(12)) else { break };
        out.push(wd as i32);
        at += HEADER + len as usize;
    }
    out
}

impl Unit {
    /// Report OOM kills of its cgroup not reported yet (`container.oom`,
    /// `kills` counted since its start).
    fn report_ooms(&mut self) {
        let total = self.cgroup.oom_kills();
        if total <= self.oom_seen {
            return;
        }
        event("container.oom")
            .kv("name", &self.name)
            .kv("kills", total.saturating_sub(self.oom_baseline))
            .kv("new", total - self.oom_seen)
            .kv("memory_max", self.cgroup.read("memory.max").unwrap_or_default().trim())
            .emit();
        self.oom_seen = total;
    }
}

impl Io {
    /// If `pid` was a unit's probe helper: which unit, and whether its
    /// probe passed (`container.probe-failed` says why not).
    fn probe_reaped(&mut self, pid: libc::pid_t) -> Option<(usize, bool)> {
        let i = self.units.iter().position(|u| u.probing.as_ref().is_some_and(|r| r.helper == pid))?;
        let u = self.units.get_mut(i)?;
        let outcome = u.probing.take()?.outcome();
        if !outcome.passed() {
            let timeout = u.probe.as_ref().map_or(Duration::ZERO, |p| p.1);
            let mut e = event("container.probe-failed").kv("name", &u.name);
            for (k, v) in outcome.fields(timeout) {
                e = e.kv(k, v);
            }
            e.emit();
        }
        Some((i, outcome.passed()))
    }

    /// Drain the inotify descriptor; report new OOM kills of the units
    /// whose `memory.events` changed.
    fn drain_oom(&mut self) {
        let Some(fd) = self.oom.as_ref() else { return };
        let mut buf = [0u8; 1024];
        let mut changed = Vec::new();
        for _ in 0..16 {
            match nix::unistd::read(fd, &mut buf) {
                Ok(n) if n > 0 => changed.extend(inotify_wds(buf.get(..n).unwrap_or(&[]))),
                _ => break,
            }
        }
        for u in &mut self.units {
            if u.oom_wd >= 0 && changed.contains(&u.oom_wd) {
                u.report_ooms();
            }
        }
    }

    /// What unit `i`'s report pipe says now (nothing if it has none).
    fn report(&self, i: usize) -> Report {
        let Some(u) = self.units.get(i) else { return Report::Pending };
        match u.report.as_ref().map_or(Setup::Pending, spawning::poll_report) {
            Setup::Pending => Report::Pending,
            Setup::Done => Report::Done { exec_failed: None },
            Setup::ExecFailed(errno) => {
                let path = u.spec.as_ref().ok().and_then(|s| s.argv.first()).map(|p| p.to_string_lossy().into_owned());
                let error = cairn_runtime::report::ErrnoName(errno).to_string();
                Report::Done { exec_failed: Some((path.unwrap_or_default(), error)) }
            }
            Setup::Failed(SpawnError::Setup(r)) => {
                // A rootfs step is named by the path it works on: the
                // plan is a pure function of the spec, the same the child ran.
                let path = r.step.and_then(|i| {
                    let plan = cairn_runtime::rootfs::plan(u.spec.as_ref().ok()?).ok()?;
                    plan.get(usize::from(i)).map(|s| s.path().to_owned())
                });
                let mut fields = vec![("stage", r.stage.name().to_string())];
                if let Some(p) = path {
                    fields.push(("path", p));
                }
                fields.push(("error", cairn_runtime::report::ErrnoName(r.errno).to_string()));
                Report::Failed(fields)
            }
            Setup::Failed(e) => Report::Failed(vec![("error", e.to_string())]),
        }
    }
}

/// The supervisor.
pub struct Supervisor {
    machine: Machine,
    io: Io,
    signals: SignalFd,
    control: Option<Listener>,
    /// Control connections waiting for their request.
    conns: Vec<Conn>,
    /// dm-verity error uevents; `layers.corrupted` is this boot's "a layer
    /// block failed its hash" flag (a failed trial for OTA).
    layers: Option<crate::uevent::Watch>,
    /// The device's address changes (`net.address`).
    addresses: Option<crate::netwatch::Watch>,
    /// This boot's trial, and when to judge it.
    trial: Option<Trial>,
    /// The update installer's pid while it runs.
    installer: Option<libc::pid_t>,
    /// The development console's session (`cairn.console=ctl`).
    console: Option<crate::console::Session>,
    /// What an `update` request's installer needs (a boot that verified a
    /// manifest).
    updater: Option<crate::install::Updater>,
    /// The `volume prune` helper's pid while it runs.
    pruner: Option<libc::pid_t>,
    /// The boot's work that no start waits for, done once the first starts
    /// are under way.
    later: Later,
}

/// The boot's work that no start waits for: it overlaps with the first
/// containers' own set-up ([`Supervisor::after_starts_issued`]).
#[derive(Default)]
struct Later {
    /// The search for a bundle on another disk, forked
    /// ([`Supervisor::look_for_bundles`]).
    bundle_search: Option<BundleSearch>,
    /// Mount the data partition, which no container needs to start
    /// ([`Supervisor::mount_data_later`]).
    mount_data: bool,
    /// Free the initramfs's files ([`Supervisor::free_initramfs_later`]).
    old_root: Option<crate::switch_root::OldRoot>,
}

/// What the boot's installer child needs beside the [`Supervisor::updater`].
struct BundleSearch {
    /// The boot disk's kernel name: never searched.
    boot_disk: String,
    /// The manifest slot on trial this boot: a bundle found is refused.
    trial: Option<cairn_format::bootstate::Slot>,
    /// The boot state record as the boot read it.
    record: crate::record::Record,
}

/// This boot on trial: its boot entry (new kernel or init), its manifest
/// slot (a staged update), or both. Once the containers have run `after`
/// without a failure it commits (the record, then the entry); else it rolls
/// back (the record, the entry marked bad) and reboots.
struct Trial {
    entry: Option<crate::bootslot::BootSlot>,
    update: Option<(crate::boot::TrialBoot, crate::record::Record)>,
    after: Duration,
    deadline: Option<Instant>,
    /// The window passed with a health check not yet healthy: the verdict
    /// waits until this deadline for it (its health check's own verdict
    /// bound), then rolls back.
    health_wait: bool,
}

impl Supervisor {
    /// `units` with their core descriptions; `order` is the start order
    /// (indexes into `units`).
    pub fn new(
        units: Vec<(Unit, UnitDesc)>,
        order: Vec<usize>,
        start_timeout: Duration,
        signals: SignalFd,
        control: Option<Listener>,
        ahead: Ahead,
    ) -> Self {
        let (units, descs): (Vec<Unit>, Vec<UnitDesc>) = units.into_iter().unzip();
        Self {
            machine: Machine::new(descs, order, start_timeout),
            io: Io { units, oom: oom_inotify(), ahead },
            signals,
            control,
            conns: Vec::with_capacity(MAX_CONNECTIONS),
            layers: None,
            addresses: None,
            trial: None,
            installer: None,
            console: None,
            updater: None,
            pruner: None,
            later: Later::default(),
        }
    }

    /// Mount the data partition once the loop has issued the first starts,
    /// before it first waits (a manifest without persistent volumes: no
    /// container needs it to start), then report the volumes an earlier
    /// manifest left. The mount then overlaps with the containers' own
    /// set-up. Needs the boot's [`Supervisor::offer_updates`] (its
    /// partitions and manifest); without it nothing is mounted.
    pub fn mount_data_later(&mut self) {
        self.later.mount_data = true;
    }

    /// Free the initramfs's files (`initramfs.freed`) once the first starts
    /// are issued: nothing on their path needs it.
    pub fn free_initramfs_later(&mut self, old: crate::switch_root::OldRoot) {
        self.later.old_root = Some(old);
    }

    /// Judge this boot if it is on trial: the booted entry (if it counts
    /// tries) and the manifest slot (if `update` is a trial), once the
    /// containers have run `after`.
    pub fn judge_trial(
        &mut self,
        entry: Option<crate::bootslot::BootSlot>,
        update: Option<(crate::boot::TrialBoot, crate::record::Record)>,
        after: Duration,
    ) {
        let entry = entry.filter(|e| e.on_trial());
        if entry.is_none() && update.is_none() {
            return;
        }
        let mut e = event("boot.trial").kv("bless_after_ms", after.as_millis());
        if let Some(en) = &entry {
            e = e.kv("entry", en.slot);
        }
        if let Some((t, _)) = &update {
            e = e.kv("slot", t.slot).kv("version", t.version);
        }
        e.emit();
        self.trial = Some(Trial { entry, update, after, deadline: None, health_wait: false });
    }

    fn trial_deadline(&self) -> Option<Instant> {
        self.trial.as_ref().and_then(|t| t.deadline)
    }

    fn assess(&mut self, now: Instant) {
        let corrupted = self.layer_corrupted();
        let Some(t) = self.trial.as_mut() else { return };
        if self.machine.shutting_down() {
            // Not judged: the next boot is counted again.
            self.trial = None;
            return;
        }
        if t.deadline.is_none() && self.machine.containers_started() {
            t.deadline = Some(now + t.after);
        }
        let due = t.deadline.is_some_and(|d| now >= d);
        // While the gate waits for health: judged as soon as it is healthy
        // (or something failed).
        let settled = t.health_wait && (self.machine.all_healthy().is_ok() || self.machine.health().is_err());
        if !due && !settled {
            return;
        }
        let verdict = self.machine.health().and_then(|()| match corrupted {
            true => Err("a layer block failed its hash".to_owned()),
            false => Ok(()),
        });
        // The health gate: every container with a health check is healthy.
        // One still `starting` is waited for, as long as its check needs to
        // give a verdict; an unhealthy one failed `health()` above.
        let verdict = match (verdict, self.machine.all_healthy()) {
            (Ok(()), Err(why)) if !t.health_wait => {
                t.health_wait = true;
                let wait = self.machine.health_verdict_within();
                t.deadline = Some(now + wait);
                event("boot.trial-waiting").kv("reason", why).kv("wait_ms", wait.as_millis()).emit();
                return;
            }
            (Ok(()), Err(why)) => Err(why),
            (v, _) => v,
        };
        let Some(t) = self.trial.take() else { return };
        match verdict {
            Ok(()) => commit(t),
            Err(reason) => {
                roll_back(t, &reason);
                self.machine.request_shutdown(ShutdownKind::Reboot, "trial failed", now, &mut self.io);
            }
        }
    }

    /// Report the device's address changes from the event loop.
    pub fn watch_addresses(&mut self, w: crate::netwatch::Watch) {
        self.addresses = Some(w);
    }

    /// Report dm-verity errors on the layers from the event loop.
    pub fn watch_layers(&mut self, w: crate::uevent::Watch) {
        self.layers = Some(w);
    }

    /// Whether a layer block failed its hash this boot.
    pub fn layer_corrupted(&self) -> bool {
        self.layers.as_ref().is_some_and(|w| w.corrupted)
    }

    /// Run until a shutdown has stopped every container.
    pub fn run(&mut self) -> ShutdownKind {
        loop {
            crate::watchdog::turn(); // watchdog: pet once per turn
            if let Some(kind) = self.machine.step(Instant::now(), &mut self.io) {
                for u in &mut self.io.units {
                    if let Some(mut tap) = u.console.take() {
                        tap.pump(&u.name, &mut u.log);
                        tap.flush(&u.name, &mut u.log);
                    }
                }
                return kind;
            }
            self.after_starts_issued();
            // The trial's clock starts as soon as the containers have
            // started, before the loop sleeps.
            self.assess(Instant::now());
            let timeout = earliest(poll_timeout(self.machine.next_deadline()), self.control_timeout());
            let timeout = earliest(timeout, crate::watchdog::poll_ms()); // watchdog: wake to pet
            let timeout = earliest(timeout, poll_timeout(self.console.as_ref().and_then(|c| c.due)));
            self.wait(earliest(timeout, poll_timeout(self.trial_deadline())));
            self.machine.fire(Instant::now(), &mut self.io);
            self.assess(Instant::now());
            if self.machine.fire_signals(Instant::now(), &mut self.io) {
                // The spacing counts from after this kill and its event.
                self.machine.signal_sent(Instant::now());
            }
            self.fire_control_timers();
            self.pump_streams();
            if let Some(c) = self.console.as_mut().filter(|_| !self.machine.shutting_down()) {
                c.tend(Instant::now());
            }
        }
    }

    /// Whether `caller` is a container whose start has not settled.
    fn still_starting(&self, caller: &control::Caller) -> bool {
        let control::Caller::Container(name) = caller else { return false };
        self.io
            .units
            .iter()
            .position(|u| u.name == *name)
            .is_some_and(|i| matches!(self.machine.state(i), Some(crate::machine::State::Starting { .. })))
    }

    /// Whether any container's start has not settled.
    fn starting(&self) -> bool {
        (0..self.io.units.len()).any(|i| matches!(self.machine.state(i), Some(crate::machine::State::Starting { .. })))
    }

    /// Unit `i`'s report pipe is readable (or its init exited): hand what
    /// it says to the core.
    fn settle_start(&mut self, i: usize, exit: Option<Exit>) -> bool {
        if !matches!(self.machine.state(i), Some(crate::machine::State::Starting { .. })) {
            return false;
        }
        let report = self.io.report(i);
        self.machine.settle(i, report, exit, Instant::now(), &mut self.io)
    }

    /// Serve `update` requests with this.
    pub fn offer_updates(&mut self, u: crate::install::Updater) {
        self.updater = Some(u);
    }

    /// Keep a `cairn-ctl shell` session on the console (a development
    /// build's `cairn.console=ctl`): started now, again after it ends.
    pub fn open_console(&mut self) {
        self.console = Some(crate::console::Session::new());
    }

    /// Once the first starts are under way, fork the installer that looks
    /// for a bundle on every disk but `boot_disk` (a USB stick), and watch
    /// it: a staged update reboots into its trial. Needs the boot's
    /// [`Supervisor::offer_updates`]; without it nothing is searched.
    pub fn look_for_bundles(
        &mut self,
        boot_disk: String,
        trial: Option<cairn_format::bootstate::Slot>,
        record: crate::record::Record,
    ) {
        self.later.bundle_search = Some(BundleSearch { boot_disk, trial, record });
    }

    /// The boot's work that no container waits for, after the loop's first
    /// starts: the late modules (the data partition's quota format), the
    /// initramfs's files freed, the installer's fork (it then runs on its
    /// own), then the data partition's mount.
    fn after_starts_issued(&mut self) {
        // Once: later turns find it loaded.
        crate::modules::load_late();
        let later = std::mem::take(&mut self.later);
        if let Some(old) = later.old_root {
            event("initramfs.freed").kv("removed", old.free()).emit();
        }
        let Some(u) = self.updater.as_ref() else { return };
        if let Some(s) = later.bundle_search {
            let cx = crate::install::Context {
                trust: u.trust.as_ref(),
                committed: &u.committed,
                record: s.record,
                partitions: &u.partitions,
                entry: u.entry.clone(),
            };
            self.installer = crate::install::spawn(&s.boot_disk, s.trial, cx);
        }
        if later.mount_data {
            crate::storage::mount_data(&u.partitions);
            crate::volumes::report_unused(&u.committed);
        }
    }

    fn on_exit(&mut self, pid: libc::pid_t, status: i32) {
        if crate::exec::reaped(pid) {
            return;
        }
        if self.console.as_mut().is_some_and(|c| c.reaped(pid, Instant::now())) {
            return;
        }
        if self.pruner == Some(pid) {
            self.pruner = None;
            return;
        }
        if let Some((i, passed)) = self.io.probe_reaped(pid) {
            self.machine.probe_ended(i, passed, Instant::now(), &mut self.io);
            return;
        }
        if self.installer == Some(pid) {
            self.installer = None;
            let exit = Exit::from_wait_status(status);
            if exit == Some(Exit::Code(0)) {
                event("update.ready").kv("effect", "reboot into the trial").emit();
                self.machine.request_shutdown(ShutdownKind::Reboot, "update staged", Instant::now(), &mut self.io);
            } else if exit != Some(Exit::Code(crate::install::NO_BUNDLE)) {
                let mut e = event("update.install-ended").kv("pid", pid);
                if let Some(x) = exit {
                    e = e.kv_exit(x);
                }
                e.emit();
            }
            return;
        }
        let Some(i) = self.machine.unit_of(pid) else {
            return;
        };
        let Some(exit) = Exit::from_wait_status(status) else {
            return;
        };
        // Exited while starting: what its report pipe says comes first.
        if self.settle_start(i, Some(exit)) {
            return;
        }
        if let Some(u) = self.io.units.get_mut(i) {
            // Its last lines before its exit event (it may have exited after
            // this loop's poll, so they were not read yet).
            if let Some(tap) = u.console.as_mut() {
                tap.pump(&u.name, &mut u.log);
            }
            // Kills not reported live yet come first.
            u.report_ooms();
            let ooms = u.cgroup.oom_kills().saturating_sub(u.oom_baseline);
            event("container.exited").kv("name", &u.name).kv("pid", pid).kv_exit(exit).kv("oom_kills", ooms).emit();
        }
        self.machine.exited(i, exit, Instant::now(), &mut self.io);
    }

    /// How far the loop's next deadline must be for PID 1 to make what
    /// `ahead` lacks before it (a network namespace: 7 ms under emulation,
    /// well under 1 ms on hardware), so that no timer fires late for it.
    const REFILL_ROOM_MS: i32 = 20;

    fn wait(&mut self, timeout_ms: i32) {
        const SIGNALS: usize = 0;
        const LISTENER: usize = 1;
        const CONSOLE: usize = 2;
        const CONNS: usize = 3;
        const UNITS: usize = CONNS + MAX_CONNECTIONS;
        const REPORTS: usize = UNITS + MAX_CONTAINERS;
        const UEVENTS: usize = REPORTS + MAX_CONTAINERS;
        const ADDRESSES: usize = UEVENTS + 1;
        const OOM: usize = ADDRESSES + 1;
        const HELPERS: usize = OOM + 1;
        let idle = libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 };
        // Fixed capacity: no allocation in the loop. -1 (ignored by poll)
        // fills unused slots, so unit i's output is always at fds[UNITS + i]
        // and its report pipe (while starting) at fds[REPORTS + i].
        let mut fds = [idle; HELPERS + 1];
        let mut set = |k: usize, fd: i32, events: libc::c_short| {
            if let Some(slot) = fds.get_mut(k) {
                slot.fd = fd;
                slot.events = events;
            }
        };
        set(SIGNALS, self.signals.as_raw_fd(), libc::POLLIN);
        // While the table is full, new clients wait in the backlog.
        if self.conns.len() < MAX_CONNECTIONS {
            set(LISTENER, self.control.as_ref().map_or(-1, Listener::raw), libc::POLLIN);
        }
        set(CONSOLE, crate::event::console_waiting().unwrap_or(-1), libc::POLLOUT);
        set(UEVENTS, self.layers.as_ref().map_or(-1, crate::uevent::Watch::raw), libc::POLLIN);
        set(ADDRESSES, self.addresses.as_ref().map_or(-1, crate::netwatch::Watch::raw), libc::POLLIN);
        set(OOM, self.io.oom.as_ref().map_or(-1, AsRawFd::as_raw_fd), libc::POLLIN);
        set(HELPERS, crate::helper_events::fd().unwrap_or(-1), libc::POLLIN);
        for (k, c) in self.conns.iter().enumerate().take(MAX_CONNECTIONS) {
            // A stream waits for room only when lines wait for it; POLLHUP
            // (its client gone) is reported whatever is asked.
            let events = match c.stream {
                Some(s) if self.behind(&s) => libc::POLLOUT,
                Some(_) => 0,
                None => libc::POLLIN,
            };
            // A request from a container still starting is left unread
            // until its start settles (its deadline still runs): only
            // code the entrypoint executed can connect, but the report
            // pipe's EOF also waits for the namespace init's own close,
            // which may come later. Answered now, it would be refused
            // as "starting".
            let waits = c.stream.is_none() && self.still_starting(&c.caller);
            set(CONNS + k, if waits { -1 } else { c.raw() }, events);
        }
        for (i, u) in self.io.units.iter().enumerate().take(MAX_CONTAINERS) {
            set(UNITS + i, u.console.as_ref().map_or(-1, Tap::raw), libc::POLLIN);
            set(REPORTS + i, u.report.as_ref().map_or(-1, AsRawFd::as_raw_fd), libc::POLLIN);
        }
        // Idle (nothing ready, nothing due for REFILL_ROOM_MS, no start in
        // flight, no shutdown): make again what the last starts took from
        // `ahead` (a network namespace, a few ms of the kernel's), then go
        // round the loop.
        let room = !(0..Self::REFILL_ROOM_MS).contains(&timeout_ms);
        if room && self.io.ahead.wants_refill() && !self.machine.shutting_down() && !self.starting() {
            // SAFETY: as below; a zero timeout only looks.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) } == 0 {
                match self.io.ahead.refill() {
                    Some(Ok(net)) => event("ahead.made").kv("net", &net).emit(),
                    Some(Err(e)) => event("ahead.failed").kv("net_error", &e).emit(),
                    None => {}
                }
                return;
            }
        }
        // SAFETY: `fds` is a valid array of pollfd of the length passed.
        // Raw libc: nix's PollFd borrows each descriptor and has no
        // ignored (-1) slot, which keeps unit i at a fixed index.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n <= 0 {
            return;
        }
        let ready = |k: usize, mask: libc::c_short| fds.get(k).is_some_and(|f| f.fd >= 0 && f.revents & mask != 0);
        let hup = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
        let (signals, listener) = (ready(SIGNALS, libc::POLLIN), ready(LISTENER, libc::POLLIN));
        if ready(CONSOLE, libc::POLLOUT | libc::POLLERR | libc::POLLHUP) {
            crate::event::console_flush();
        }
        // Output first, so a container's last lines come before its exit event.
        for (i, u) in self.io.units.iter_mut().enumerate() {
            if ready(UNITS + i, hup) {
                if let Some(tap) = u.console.as_mut() {
                    if !tap.pump(&u.name, &mut u.log) {
                        u.console = None;
                        if u.spec.as_ref().is_ok_and(|s| s.console) {
                            event("container.console-closed").kv("name", &u.name).emit();
                        }
                    }
                }
            }
        }
        // Reports before exits: a report explains the exit that follows it.
        for i in 0..self.io.units.len().min(MAX_CONTAINERS) {
            if ready(REPORTS + i, hup) {
                self.settle_start(i, None);
            }
        }
        if ready(HELPERS, libc::POLLIN) {
            crate::helper_events::drain();
        }
        if ready(OOM, libc::POLLIN) {
            self.io.drain_oom();
        }
        if ready(UEVENTS, libc::POLLIN) {
            if let Some(w) = self.layers.as_mut() {
                w.drain();
            }
        }
        if ready(ADDRESSES, libc::POLLIN) {
            if let Some(w) = self.addresses.as_ref() {
                w.drain();
            }
        }
        if signals {
            self.read_signals();
        }
        let mut readable = [false; MAX_CONNECTIONS];
        for (k, r) in readable.iter_mut().enumerate() {
            *r = ready(CONNS + k, hup);
        }
        self.serve_connections(&readable);
        if listener {
            self.accept_connections();
        }
    }

    fn read_signals(&mut self) {
        // The kernel hands out whole signalfd_siginfo records only.
        while let Ok(Some(info)) = self.signals.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGUSR2 | libc::SIGPWR => {
                    self.machine.request_shutdown(ShutdownKind::PowerOff, "signal", Instant::now(), &mut self.io)
                }
                libc::SIGINT => {
                    self.machine.request_shutdown(ShutdownKind::Reboot, "signal", Instant::now(), &mut self.io)
                }
                other => event("signal.ignored").kv("signal", other).kv("from_pid", info.ssi_pid).emit(),
            }
        }
    }

    fn reap(&mut self) {
        // A helper's last events (written before it exited) come before
        // what its exit makes PID 1 say.
        crate::helper_events::drain();
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer. Raw libc: the raw
            // status is what `on_exit` decodes, and nix's waitpid fails with
            // EINVAL (the child reaped, its status lost) when a realtime
            // signal killed it.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.on_exit(pid, status);
        }
    }

    /// Accept what waits, up to the table's bound.
    fn accept_connections(&mut self) {
        let now = Instant::now();
        while self.conns.len() < MAX_CONNECTIONS {
            let Some(conn) = self.control.as_ref().and_then(|l| l.accept(now)) else {
                return;
            };
            self.conns.push(conn);
        }
    }

    /// Answer every connection whose request has come; drop those that hung up.
    fn serve_connections(&mut self, readable: &[bool]) {
        let mut k = self.conns.len();
        while k > 0 {
            k -= 1;
            if !readable.get(k).copied().unwrap_or(false) {
                continue;
            }
            let Some(conn) = self.conns.get_mut(k) else { continue };
            match conn.receive() {
                Received::Nothing => {}
                Received::Closed => {
                    self.conns.swap_remove(k);
                }
                // A stream's client has nothing more to say.
                Received::Request(_) | Received::TooLong(_) | Received::TooManyFds if conn.stream.is_some() => {}
                received @ (Received::Request(_) | Received::TooLong(_) | Received::TooManyFds) => {
                    let conn = self.conns.swap_remove(k);
                    let (text, answer) = match received {
                        Received::Request(text) => {
                            let answer = self.machine.answer(&conn.caller, &text, Instant::now(), &mut self.io);
                            (text, answer)
                        }
                        Received::TooLong(n) => (
                            format!("({n} bytes)"),
                            Answer::Reply(format!("error request longer than {}", control::REQUEST_MAX)),
                        ),
                        Received::TooManyFds => (
                            "(descriptors)".into(),
                            Answer::Reply(format!("error more than {} descriptors", control::REQUEST_FDS)),
                        ),
                        _ => continue,
                    };
                    let text = text.trim();
                    self.respond(conn, text.strip_prefix(control::VERSION).map_or(text, str::trim_start), answer);
                }
            }
        }
    }

    /// Send the answer (or start the stream) and say so in an event.
    fn respond(&mut self, mut conn: Conn, text: &str, answer: Answer) {
        let followers = self.conns.iter().filter(|c| c.stream.is_some()).count();
        let stream = |source, next, follow| Stream { source, next, follow, progress: Instant::now() };
        let (body, stream) = match answer {
            Answer::Reply(body) => (body, None),
            Answer::Ps(rows) => {
                let mut body = String::from("ok\n");
                let init = control::PsRow {
                    name: "cairn-init".into(),
                    state: "running",
                    pid: Some(1),
                    uptime_ms: Some(control::now_ms()),
                    restarts: 0,
                    last_exit: None,
                    health: None,
                };
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                body.push_str(&control::format_ps(&init, &control::init_stats(&status)));
                for row in &rows {
                    let stats = self
                        .io
                        .units
                        .iter()
                        .find(|u| u.name == row.name)
                        .map(|u| control::CgroupStats::read(|f| u.cgroup.read(f)));
                    body.push('\n');
                    body.push_str(&control::format_ps(row, &stats.unwrap_or_default()));
                }
                (body, None)
            }
            Answer::Logs { .. } | Answer::Events | Answer::KernelLog { .. } if followers >= control::MAX_FOLLOWERS => {
                ("error busy: too many streams".into(), None)
            }
            Answer::Logs { unit, since_ms, follow } => {
                let next = self.io.units.get(unit).map_or(0, |u| u.log.seq_since(since_ms));
                ("ok".into(), Some(stream(Source::Log(unit), next, follow)))
            }
            Answer::KernelLog { since_ms } => {
                let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC;
                match nix::fcntl::open("/dev/kmsg", flags, nix::sys::stat::Mode::empty()) {
                    Ok(fd) => {
                        conn.kmsg = Some(fd);
                        ("ok".into(), Some(stream(Source::Kernel, since_ms, false)))
                    }
                    Err(e) => (format!("error /dev/kmsg: {}", cairn_runtime::report::ErrnoName(e as i32)), None),
                }
            }
            Answer::Events => {
                ("ok".into(), Some(stream(Source::Events, control::with_events(LogRing::next_seq), true)))
            }
            Answer::Exec { unit, pid, argv, opts } => (self.exec(&conn, unit, pid, &argv, &opts), None),
            Answer::VolumePrune => match self.start_prune(&conn) {
                // The helper answers on the connection from here on.
                Ok(body) => {
                    Self::said(&conn, text, &body);
                    return;
                }
                Err(body) => (body, None),
            },
            Answer::Dns(servers) => (Self::set_dns(&conn, &servers), None),
            Answer::Update => match self.start_requested_install(&mut conn) {
                // The installer answers on the connection from here on.
                Ok(body) => {
                    Self::said(&conn, text, &body);
                    return;
                }
                Err(body) => (body, None),
            },
        };
        // A heartbeat comes every interval: only its changes of health and
        // its refusals are events, not every accepted one.
        let quiet = text == "heartbeat" && body.lines().next() == Some("ok");
        if !quiet {
            Self::said(&conn, text, &body);
        }
        let reply = control::framed_reply(&body);
        match stream {
            Some(s) if conn.send(reply.as_bytes()) == Sent::Taken => {
                conn.stream = Some(s);
                self.conns.push(conn);
            }
            Some(_) => {}
            None => conn.reply(&reply),
        }
    }

    /// `exec`: fork the helper that serves it (crate::exec).
    fn exec(
        &self,
        conn: &Conn,
        unit: usize,
        pid: libc::pid_t,
        argv: &[Vec<u8>],
        opts: &crate::exec::Options,
    ) -> String {
        let Some(u) = self.io.units.get(unit) else { return "error no such container".into() };
        let Ok(spec) = &u.spec else { return "error it cannot start".into() };
        let target = crate::exec::Target { name: &u.name, spec, filter: u.filter.as_deref(), cgroup: &u.cgroup, pid };
        crate::exec::fork_helper(conn, conn.caller.name(), &target, argv, opts)
    }

    /// `volume prune`: pick the volumes to delete (never one the manifest
    /// names or a container mounts) and fork the helper that deletes them
    /// and answers on `conn` (the data of a volume can be large: PID 1
    /// never waits for the deletion). `Ok`: what the `control.request`
    /// event says; `Err`: the reply to send now.
    fn start_prune(&mut self, conn: &Conn) -> Result<String, String> {
        if let Some(pid) = self.pruner {
            return Err(format!("error busy: a prune is running (pid {pid})"));
        }
        // A trial may roll back to a manifest that still names a volume
        // this one does not: nothing is pruned until the trial is judged.
        if self.trial.is_some() {
            return Err("error busy: this boot is on trial (prune once it is committed)".into());
        }
        let m = self
            .updater
            .as_ref()
            .map(|u| &u.committed)
            .ok_or("error unavailable: this boot has no verified manifest")?;
        if !crate::volumes::data_ready() {
            return Err("error unavailable: the data partition is not mounted".into());
        }
        let mounted: Vec<&str> = self
            .io
            .units
            .iter()
            .filter_map(|u| u.spec.as_ref().ok())
            .flat_map(|s| s.volumes.iter().map(|v| v.source.as_str()))
            .collect();
        let names = crate::volumes::prunable(&crate::volumes::present_names(), m, &mounted);
        if names.is_empty() {
            return Err("ok nothing to prune".into());
        }
        // SAFETY: PID 1 is single-threaded; the child only prunes, answers
        // and exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                self.pruner = Some(child.as_raw());
                Ok(format!("pruning {} (pid {child})", names.join(",")))
            }
            Ok(nix::unistd::ForkResult::Child) => {
                let fd = conn.raw();
                let events = crate::helper_events::become_helper();
                if cairn_runtime::sys::close_all_but(&[fd, events]).is_err() {
                    cairn_runtime::sys::exit_now(1);
                }
                let body = crate::volumes::prune(&names, crate::event::Event::emit);
                let msg = control::framed_reply(&body);
                // SAFETY: `msg` is a live buffer of its length; `fd` is the
                // connection, open in this process.
                unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
                cairn_runtime::sys::exit_now(0)
            }
            Err(e) => Err(format!("error fork: {}", cairn_runtime::sys::errno_name(e as i32))),
        }
    }

    /// `dns`: rewrite the containers' resolv.conf (crate::dns).
    fn set_dns(conn: &Conn, servers: &crate::dns::Servers) -> String {
        match crate::dns::set(servers) {
            None => "error unavailable: no container is on a network with egress".into(),
            Some(Err(e)) => format!("error {e}"),
            Some(Ok(())) => {
                let (list, search) = (servers.servers_text(), servers.search_text());
                event("network.dns").kv("caller", conn.caller.name()).kv("servers", &list).kv("search", &search).emit();
                format!("ok servers={list} search={search}")
            }
        }
    }

    /// The `control.request` event: who asked what, the reply's first line.
    fn said(conn: &Conn, text: &str, body: &str) {
        event("control.request")
            .kv("caller", conn.caller.name())
            .kv("pid", conn.pid)
            .kv("uid", conn.uid)
            .kv("request", text)
            .kv("reply", body.lines().next().unwrap_or_default())
            .emit();
    }

    /// Fork the installer on the bundle `conn`'s request carried: it takes
    /// the connection and answers on it. Refused while an install runs, on
    /// a device that was not booted from a verified manifest, or without
    /// exactly one descriptor.
    fn start_requested_install(&mut self, conn: &mut Conn) -> Result<String, String> {
        if let Some(pid) = self.installer {
            return Err(format!("error busy: an install is running (pid {pid})"));
        }
        let updater = self.updater.as_ref().ok_or("error unavailable: this boot has no verified manifest")?;
        let source = match (conn.fds.pop(), conn.fds.is_empty()) {
            (Some(fd), true) => fd,
            _ => return Err("error update takes the bundle as one descriptor (cairn-ctl update FILE)".into()),
        };
        let client = conn.try_clone_fd().map_err(|e| format!("error {e}"))?;
        let pid = crate::install::spawn_request(updater, source, client).map_err(|e| format!("error {e}"))?;
        self.installer = Some(pid);
        Ok(format!("ok installing pid={pid}"))
    }

    /// Whether lines (or, not following, its end) wait for this stream.
    fn behind(&self, s: &Stream) -> bool {
        if !s.follow {
            return true;
        }
        match s.source {
            Source::Log(i) => self.io.units.get(i).is_some_and(|u| u.log.next_seq() > s.next),
            Source::Events => control::with_events(|r| r.next_seq() > s.next),
            Source::Kernel => true,
        }
    }

    /// Send each stream what waits for it, as far as its socket takes it
    /// (bounded per turn); close finished ones, drop gone or stalled ones.
    fn pump_streams(&mut self) {
        const BUDGET: usize = 256;
        let now = Instant::now();
        let mut k = self.conns.len();
        while k > 0 {
            k -= 1;
            let Some(mut s) = self.conns.get(k).and_then(|c| c.stream) else { continue };
            let mut outcome = None;
            if s.source == Source::Kernel {
                outcome = self.conns.get_mut(k).and_then(|c| c.pump_kernel(&mut s, now, BUDGET));
            }
            for _ in 0..BUDGET {
                if s.source == Source::Kernel {
                    break;
                }
                // Copied out first: an event may be emitted below.
                let (first, line) = match s.source {
                    Source::Log(i) => match self.io.units.get(i) {
                        Some(u) => (u.log.evicted, u.log.get(s.next).map(|(t, l)| control::format_log_line(*t, l))),
                        None => (0, None),
                    },
                    Source::Events => control::with_events(|r| {
                        (r.evicted, r.get(s.next).map(|(_, l)| String::from_utf8_lossy(l).into_owned()))
                    }),
                    Source::Kernel => (0, None),
                };
                let msg = if s.next < first {
                    let lost = first - s.next;
                    s.next = first;
                    control::framed_reply(&format!("lost {lost}"))
                } else if let Some(line) = line {
                    s.next += 1;
                    line
                } else if s.follow {
                    break;
                } else {
                    let end = self.conns.get(k).map_or(Sent::Gone, |c| c.send(control::framed_reply("end").as_bytes()));
                    if end != Sent::Full {
                        outcome = Some(end);
                    }
                    break;
                };
                let Some(conn) = self.conns.get(k) else { break };
                match conn.send(msg.as_bytes()) {
                    Sent::Taken => s.progress = now,
                    Sent::Full => {
                        // Not sent: the same line next time.
                        if !msg.starts_with(control::VERSION) {
                            s.next -= 1;
                        }
                        break;
                    }
                    Sent::Gone => {
                        outcome = Some(Sent::Gone);
                        break;
                    }
                }
            }
            let stalled = self.behind(&s) && now.saturating_duration_since(s.progress) >= control::FOLLOW_STALL;
            if outcome.is_some() || stalled {
                let conn = self.conns.swap_remove(k);
                if stalled {
                    event("control.stream-dropped")
                        .kv("caller", conn.caller.name())
                        .kv("reason", "client not reading")
                        .kv("stalled_ms", control::FOLLOW_STALL.as_millis())
                        .emit();
                }
            } else if let Some(c) = self.conns.get_mut(k) {
                c.stream = Some(s);
            }
        }
    }

    /// When the next control connection deadline is due (poll ms, -1: none).
    fn control_timeout(&self) -> i32 {
        let due = |c: &Conn| match c.stream {
            None => Some(c.deadline),
            Some(s) if self.behind(&s) => Some(s.progress + control::FOLLOW_STALL),
            Some(_) => None,
        };
        poll_timeout(self.conns.iter().filter_map(due).min())
    }

    /// Close connections past their deadline.
    fn fire_control_timers(&mut self) {
        let now = Instant::now();
        let mut k = self.conns.len();
        while k > 0 {
            k -= 1;
            if self.conns.get(k).is_some_and(|c| c.stream.is_none() && c.deadline <= now) {
                let conn = self.conns.swap_remove(k);
                event("control.timeout")
                    .kv("caller", conn.caller.name())
                    .kv("pid", conn.pid)
                    .kv("uid", conn.uid)
                    .kv("waited_ms", control::REQUEST_DEADLINE.as_millis())
                    .emit();
            }
        }
    }
}

/// The earlier of two poll timeouts (-1 is none).
fn earliest(a: i32, b: i32) -> i32 {
    match (a, b) {
        (-1, t) | (t, -1) => t,
        (a, b) => a.min(b),
    }
}

/// A poll timeout (ms, -1: none) until `deadline`.
fn poll_timeout(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(t) => t.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32 + 1,
    }
}

/// The spec with `CAIRN_RESTART_COUNT=<restarts so far>` in its environment
/// (replacing one the manifest may set), so an entrypoint knows how many
/// times it was restarted since boot.
fn with_restart_count(spec: &ContainerSpec, restarts: u32) -> ContainerSpec {
    let mut spec = spec.clone();
    spec.env.retain(|e| !e.as_bytes().starts_with(b"CAIRN_RESTART_COUNT="));
    if let Ok(var) = std::ffi::CString::new(format!("CAIRN_RESTART_COUNT={restarts}")) {
        spec.env.push(var);
    }
    spec
}

/// Block every signal and return a signalfd that receives them.
pub fn signal_fd() -> Result<SignalFd, cairn_runtime::sys::SysError> {
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(cairn_runtime::sys::err("signalfd", "all"))
}

pub(crate) trait ExitFields {
    fn kv_exit(self, exit: Exit) -> Self;
}

impl ExitFields for crate::event::Event {
    fn kv_exit(self, exit: Exit) -> Self {
        match exit {
            Exit::Code(c) => self.kv("code", c),
            Exit::Signal(s) => self.kv("signal", s).kv("code", 128 + s),
        }
    }
}

/// The trial was healthy: commit the manifest slot (one durable write:
/// committed, good, floor raised), then bless the boot entry. A commit that
/// does not land leaves the trial pending: the next boot spends a try and
/// judges again.
fn commit(t: Trial) {
    if let Some((trial, mut record)) = t.update {
        let next = cairn_format::update::commit(&record.state, trial.slot, trial.version, trial.floor);
        match next.map_err(|e| e.to_string()).and_then(|n| record.write(n).map_err(|e| e.to_string())) {
            Ok(()) => event("update.committed")
                .kv("slot", trial.slot)
                .kv("version", trial.version)
                .kv("rollback_floor", record.state.rollback_floor)
                .kv("seq", record.state.seq)
                .emit(),
            Err(e) => {
                event("update.commit-failed").kv("slot", trial.slot).kv("error", e).emit();
                return;
            }
        }
    }
    if let Some(mut entry) = t.entry {
        if let Err(e) = crate::bootslot::bless(&mut entry) {
            event("boot.bless-failed").kv("slot", entry.slot).kv("error", e).emit();
        }
    }
}

/// The trial failed: the manifest slot is bad (one durable write; the
/// floor is unchanged) and the boot entry it came with is marked bad, so
/// the next boot is the committed slot's. The caller reboots.
fn roll_back(t: Trial, reason: &str) {
    let mut e = event("boot.trial-failed").kv("reason", reason).kv("effect", "reboot");
    if let Some(en) = &t.entry {
        e = e.kv("entry", en.slot);
    }
    if let Some((trial, _)) = &t.update {
        e = e.kv("slot", trial.slot);
    }
    e.emit();
    let Some((trial, mut record)) = t.update else {
        // An entry alone: the loader counts its tries.
        return;
    };
    // The entry the trial came with is marked bad before the record ends
    // the trial: cut between the two, the loader starts the old entry and
    // the next boot ends the trial as a fall-back. The other order could
    // leave the failed image counting tries with no trial to judge it, and
    // blessed once the old manifest runs fine on it (the power-cut
    // simulator's `RollbackRecordFirst`).
    let came_with = record.state.trial.and_then(|x| x.boot_entry);
    if let Some(mut entry) = t.entry.filter(|en| came_with == Some(en.slot)) {
        if let Err(e) = crate::bootslot::mark_bad(&mut entry) {
            event("boot.mark-bad-failed").kv("slot", entry.slot).kv("error", e).emit();
        }
    }
    match record.write(cairn_format::update::fail_trial(&record.state)) {
        Ok(()) => event("update.rolled-back")
            .kv("slot", trial.slot)
            .kv("reason", cairn_format::update::TrialFailure::Unhealthy)
            .kv("booting", record.state.committed)
            .kv("rollback_floor", record.state.rollback_floor)
            .emit(),
        Err(e) => event("bootstate.write-failed").kv("error", e).emit(),
    }
}

#[cfg(test)]
mod tests {
    use super::inotify_wds;

    #[test]
    fn inotify_events_name_their_watches() {
        let mut buf = Vec::new();
        for (wd, name) in [(3i32, &b""[..]), (7, &b"memory.events\0\0\0"[..]), (3, &b""[..])] {
            buf.extend_from_slice(&wd.to_ne_bytes());
            buf.extend_from_slice(&libc::IN_MODIFY.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            buf.extend_from_slice(name);
        }
        assert_eq!(inotify_wds(&buf), [3, 7, 3]);
        // A cut record is not read past its end.
        assert_eq!(inotify_wds(buf.get(..20).unwrap_or(&[])), [3]);
        assert_eq!(inotify_wds(&[]), Vec::<i32>::new());
    }
}
