//! `cairn-init`: PID 1 of a cairn appliance.
//!
//! Boot: early mounts and cgroups, kernel command line, modules, the trust
//! data in the initramfs, partitions, boot state, signed manifest, verified
//! layers; then the supervisor runs the containers until a shutdown
//! request, and the machine powers off or reboots. PID 1 never exits and
//! never panics: every failure is an event, and a device with nothing to
//! run stays up, waiting for a shutdown.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod boot;
mod bootslot;
mod cmdline;
mod console;
mod control;
mod dm;
mod dns;
mod early;
mod event;
mod exec;
mod helper_events;
mod install;
mod machine;
mod modules;
mod netwatch;
mod networks;
mod partitions;
mod policy;
mod record;
mod resolve;
mod ring;
mod storage;
mod supervisor;
mod switch_root;
mod tap;
mod trust;
mod uevent;
mod watchdog;
// Volumes (issue 14 item 1).
mod volumes;
// Health checks (issue 14 item 2).
mod health;
// Health checks by command: the probe's helper.
mod probe;

use cairn_format::manifest::{self, DeviceSource};

use event::event;
use machine::UnitDesc;
use policy::{Restart, RestartPolicy};
use supervisor::{ShutdownKind, Supervisor, Unit};

fn main() {
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("cairn-init: must run as PID 1 (it mounts filesystems, loads modules and reboots the machine)");
        std::process::exit(1);
    }
    // PID 1's own open of the console, as soon as /dev has it (the
    // initramfs usually does; otherwise after the early mounts below).
    event::open_console();
    let start = event("boot.start").kv("version", env!("CARGO_PKG_VERSION")).kv("arch", std::env::consts::ARCH);
    // The test-hooks build says so: a scenario that installs it as an
    // update's new init sees which init runs.
    #[cfg(feature = "test-hooks")]
    let start = start.kv("test_hooks", "on");
    start.emit();
    // The boot modules first, from the initramfs: the disk controller
    // probes while the rest of the boot goes on, and their files are not
    // copied out of the initramfs (nothing reads them again).
    let modules = modules::load_all();
    event("modules.done").kv("failed", modules.failed).emit();
    // The initramfs left behind, freed once the first starts are issued.
    let mut old_root = None;
    if switch_root::on_initramfs() {
        // Not copied: the boot modules (loaded), the on-demand ones (kept
        // open until loaded or not needed) and this program (running).
        let held = modules::on_demand_files();
        let held_bytes = modules::hold(&held);
        let left: Vec<String> = modules.files.iter().chain(&held).cloned().chain([String::from("/init")]).collect();
        match switch_root::switch(&left) {
            Ok((bytes, old)) => {
                event("rootfs.switched").kv("copied_bytes", bytes).kv("held_bytes", held_bytes).emit();
                old_root = Some(old);
            }
            Err(e) => event("rootfs.switch-failed").kv("error", e).kv("effect", "containers cannot pivot_root").emit(),
        }
    }
    let signals = match supervisor::signal_fd() {
        Ok(fd) => fd,
        Err(e) => {
            event("boot.fatal").kv("error", e).emit();
            halt_forever();
        }
    };
    for (what, e) in early::mount_all() {
        event("early.mount-failed").kv("mount", what).kv("error", e).emit();
    }
    if !event::open_console() {
        event("console.unavailable").kv("path", "/dev/console").kv("effect", "events go to the kernel's fd 1").emit();
    }
    if !helper_events::open() {
        event("helper-events.unavailable").kv("effect", "helpers write the console themselves").emit();
    }
    match early::cgroups() {
        Ok(()) => event("cgroups.ready").kv("controllers", early::enabled_controllers()).emit(),
        Err(e) => event("cgroups.failed").kv("error", e).emit(),
    }
    // The device's own network namespace (`network = "host"` containers share it).
    let netns = std::fs::read_link("/proc/self/ns/net").map(|p| p.display().to_string()).unwrap_or_default();
    event("boot.netns").kv("net", netns).emit();
    // CAD_OFF only changes what ctrl-alt-del does: SIGINT to PID 1.
    let _ = nix::sys::reboot::set_cad_enabled(false);

    let cmdline = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for word in &cmdline.ignored {
        event("cmdline.ignored").kv("word", word).emit();
    }
    // Armed from here on: petted by the boot's long waits and the
    // supervisor's loop, left armed across reboot (docs/design.md).
    watchdog::arm(&cmdline);

    let loader = if bootslot::mount_efivars() { bootslot::loader_info() } else { bootslot::LoaderInfo::default() };
    // The default device program (the BPF verifier and JIT: 10 to 20 ms
    // under emulation), the default settings' seccomp filter (about 8 ms)
    // and a network namespace with loopback up (about 20 ms cold) are
    // made on the other CPU while this thread finds the disk
    // and mounts the layers; joined before PID 1 first forks. Started
    // after the signalfd, so its thread blocks every signal too, and after
    // the firmware's variables are read: nothing of the kernel's that the
    // boot has not already needed runs beside it (efivarfs's module, the
    // firmware's runtime services).
    let ahead = cairn_runtime::Ahead::prepare(resolve::usual_filter());
    let (slot, booted) = boot::boot(&cmdline, &loader);
    let mut ahead = attach_and_report_ahead(ahead.join());
    let (units, order, targets, update, window, (search, updater), deferred_data) = match booted {
        Ok(booted) => {
            let (units, order) = units_of(&booted, &mut ahead.filters);
            let deferred_data = booted.data_deferred;
            let window = booted.manifest.update.commit_after_ms;
            let search = (booted.disk.clone(), booted.trial.as_ref().map(|t| t.slot), booted.record.snapshot());
            let updater = install::Updater {
                trust: booted.trust,
                committed: booted.manifest,
                partitions: booted.partitions,
                fallback_floor: boot::FALLBACK_ROLLBACK_FLOOR,
                entry: slot.clone(),
            };
            let update = booted.trial.map(|t| (t, booted.record));
            (units, order, booted.targets, update, window, (Some(search), Some(updater)), deferred_data)
        }
        Err(e @ boot::BootError::EntryNamed(_)) => {
            event("boot.restart").kv("reason", &e).emit();
            finish(ShutdownKind::Reboot, &[]);
        }
        Err(e) => {
            event("boot.failed").kv("reason", &e).emit();
            // A slot on trial that cannot boot: restart, so the loader
            // counts the try and, once they are used up, boots the other.
            // Without its ESP entry (no boot disk found) the loader's own
            // word says whether it started a counted entry.
            let trial = match &slot {
                Some(s) => s.on_trial().then_some(s.slot),
                None => bootslot::trial_by_loader(&loader),
            };
            if let Some(s) = trial {
                event("boot.trial-failed").kv("slot", s).kv("reason", e).kv("effect", "reboot").emit();
                finish(ShutdownKind::Reboot, &[]);
            }
            (Vec::new(), Vec::new(), Vec::new(), None, manifest::UpdatePolicy::COMMIT_AFTER_MS, (None, None), false)
        }
    };
    // The networks are made (or the boot failed): the on-demand modules no
    // load took are not needed this boot; their memory is freed.
    let released = modules::release();
    if released > 0 {
        event("modules.released").kv("count", released).emit();
    }
    // cairn-ctl is copied beside the socket only if a container can use it
    // (a permission, or a heartbeat health check).
    let offer = units.iter().any(|(_, d)| {
        d.permissions != control::Permissions(0) || d.health.is_some_and(|h| h.form == health::Form::Heartbeat)
    });
    let control = match control::Listener::bind(offer) {
        Ok(l) => Some(l),
        Err(e) => {
            event("control.unavailable").kv("error", e).emit();
            None
        }
    };
    let start_timeout = std::time::Duration::from_millis(cmdline.start_timeout_ms.into());
    let mut sup = Supervisor::new(units, order, start_timeout, signals, control, ahead);
    #[cfg(feature = "test-hooks")]
    if cmdline.test_hang == Some(cmdline::TestHang::Trial) && update.is_some() {
        watchdog::hang_from_now();
    }
    let window = std::time::Duration::from_millis(cmdline.bless_after_ms.unwrap_or(window).into());
    sup.judge_trial(slot, update, window);
    if let Some(u) = updater {
        sup.offer_updates(u);
    }
    // A bundle on another disk (a USB stick): the forked installer looks
    // for one and installs it (a trial pending refuses it).
    if let Some((disk, trial, record)) = search {
        sup.look_for_bundles(disk, trial, record);
    }
    if console::allowed(cmdline.console_ctl) {
        sup.open_console();
    }
    // The device's addresses, as a host-network container sets them.
    match netwatch::Watch::open() {
        Ok(w) => sup.watch_addresses(w),
        Err(e) => event("net.unwatched").kv("error", e).emit(),
    }
    // Run-time dm-verity errors become `layer.corrupt` events.
    if !targets.is_empty() {
        match uevent::Watch::open(targets.clone()) {
            Ok(w) => sup.watch_layers(w),
            Err(e) => event("verity.unwatched")
                .kv("error", e)
                .kv("effect", "corrupt blocks still fail with EIO, unreported")
                .emit(),
        }
    }
    if deferred_data {
        sup.mount_data_later();
    }
    if let Some(old) = old_root {
        sup.free_initramfs_later(old);
    }
    let kind = sup.run();
    finish(kind, &targets);
}

/// Attach the default device program made ahead to the containers' parent
/// cgroup, for every container cgroup made below it (`devices_at`), and say
/// what was made ahead of the first start (`boot.ahead`): what failed is
/// made by the start that needs it, and fails there if it must.
///
/// The attach is made here, on PID 1's only thread, because the boot's
/// first attach of a device program patches kernel text on every CPU (like
/// the first memory cgroup, `early::cgroups`). If it fails, every start
/// attaches the program to its own cgroup.
fn attach_and_report_ahead(mut p: cairn_runtime::ahead::Prepared) -> cairn_runtime::Ahead {
    let e = event("boot.ahead");
    let e = match &p.program {
        Ok(()) => e.kv("device_program", "loaded"),
        Err(err) => e.kv("device_program", "failed").kv("program_error", err),
    };
    let e = match p.ahead.programs.attach_defaults_to(cairn_runtime::cgroup::CONTAINERS) {
        Ok(()) => e.kv("devices_at", cairn_runtime::cgroup::CONTAINERS),
        Err(err) => e.kv("devices_at", "none").kv("devices_error", err),
    };
    let e = match &p.filter {
        Ok(()) => e.kv("seccomp", "compiled"),
        Err(err) => e.kv("seccomp", "failed").kv("seccomp_error", err),
    };
    match &p.net {
        Ok(id) => e.kv("net", id),
        Err(err) => e.kv("net", "none").kv("net_error", err),
    }
    .emit();
    p.ahead
}

/// One supervised unit per manifest container, and the start order.
fn units_of(b: &boot::Booted, filters: &mut cairn_runtime::spawn::Filters) -> (Vec<(Unit, UnitDesc)>, Vec<usize>) {
    let m = &b.manifest;
    let order = m.start_order().unwrap_or_default();
    let forbidden = resolve::Forbidden::of_boot_disk(&b.disk, &b.partitions);
    let ready = volumes::prepare(m);
    let bridges = networks::prepare(m);
    let units = m
        .containers
        .iter()
        .map(|c| {
            let device = |source: &DeviceSource| match resolve::device_source(source, &b.partitions, &forbidden) {
                Ok(path) => Some(path),
                Err(reason) => {
                    event("device.refused")
                        .kv("container", &c.name)
                        .kv("source", source.to_string())
                        .kv("reason", reason)
                        .emit();
                    None
                }
            };
            let spec = resolve::container_spec(c, |l| b.layer_dirs.get(l).cloned(), device)
                .and_then(|s| volumes::attach(s, c, &ready))
                .and_then(|s| networks::attach(s, m, c, &bridges))
                .map_err(Into::into);
            let mut unit = Unit::new(&c.name, spec, filters).with_log_size(c.log_size);
            if let Some(h @ manifest::HealthCheck { probe: manifest::HealthProbe::Command(argv), .. }) = &c.health {
                unit = unit.with_probe(argv, std::time::Duration::from_millis(h.timeout_ms.into()));
            }
            let desc = UnitDesc {
                name: c.name.as_str().into(),
                deps: c.depends_on.iter().filter_map(|d| m.container(d).map(|(i, _)| i)).collect(),
                join: match &c.network {
                    manifest::Network::Join(name) => m.container(name).map(|(i, _)| i),
                    _ => None,
                },
                restart: restart_of(&c.restart),
                stop_signal: i32::from(c.stop.signal),
                grace_ms: c.stop.grace_ms,
                permissions: control::Permissions::of(&c.permissions),
                critical: c.critical,
                health: c.health.as_ref().map(health::Config::of),
            };
            (unit, desc)
        })
        .collect();
    (units, order)
}

/// The core's restart rule of a manifest entry.
fn restart_of(r: &manifest::Restart) -> Restart {
    let policy = match r.policy {
        manifest::RestartPolicy::Never => RestartPolicy::Never,
        manifest::RestartPolicy::OnFailure { max_restarts } => RestartPolicy::OnFailure { max_restarts },
        manifest::RestartPolicy::Always => RestartPolicy::Always,
    };
    Restart { policy, backoff_initial_ms: r.backoff_initial_ms, backoff_max_ms: r.backoff_max_ms }
}

/// How long the shutdown waits for every process to die after SIGKILL.
const DEATH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything is stopped: kill what is left and wait for it (bounded),
/// unmount (or remount read-only), sync, power off or reboot.
fn finish(kind: ShutdownKind, targets: &[storage::LayerTarget]) -> ! {
    watchdog::pet();
    // kill(-1) from PID 1 signals every other process; nothing of ours is
    // left to protect at this point.
    let _ = cairn_runtime::sys::kill(-1, libc::SIGKILL);
    let (reaped, left) = reap_all(DEATH_WAIT);
    watchdog::pet();
    if left {
        // In D state (e.g. on failing media): unmounting may fail; the
        // read-only remount below is the fallback.
        event("shutdown.processes-left").kv("reaped", reaped).kv("waited_ms", DEATH_WAIT.as_millis()).emit();
    }
    release(storage::DATA_DIR, "data");
    if let Ok(dir) = std::fs::read_dir(storage::LAYERS_DIR) {
        for e in dir.flatten() {
            release(&e.path().to_string_lossy(), "layer");
        }
    }
    storage::remove_targets(targets);
    nix::unistd::sync();
    // A reboot keeps the watchdog armed: if the reboot never completes, it
    // resets the machine. A power-off disarms it, so the device stays off.
    match kind {
        ShutdownKind::PowerOff => watchdog::disarm(),
        ShutdownKind::Reboot => watchdog::pet(),
    }
    let (mode, name) = match kind {
        ShutdownKind::PowerOff => (nix::sys::reboot::RebootMode::RB_POWER_OFF, "poweroff"),
        ShutdownKind::Reboot => (nix::sys::reboot::RebootMode::RB_AUTOBOOT, "reboot"),
    };
    event("shutdown.complete").kv("kind", name).emit();
    // What is still queued gets a bounded chance to reach the console.
    event::console_drain(std::time::Duration::from_secs(2));
    // On success reboot(2) does not return.
    let Err(e) = nix::sys::reboot::reboot(mode);
    event("shutdown.reboot-failed").kv("error", cairn_runtime::sys::errno_name(e as i32)).emit();
    event::console_drain(std::time::Duration::from_secs(2));
    halt_forever()
}

/// Reap children until none is left (ECHILD) or `bound` passes. Returns
/// how many were reaped and whether some are left.
fn reap_all(bound: std::time::Duration) -> (u32, bool) {
    let deadline = std::time::Instant::now() + bound;
    let mut reaped = 0u32;
    loop {
        // SAFETY: reaping with a valid (null) status pointer. Raw libc:
        // nix's waitpid fails with EINVAL after reaping a child a realtime
        // signal killed, which would look like a child still left.
        let pid = unsafe { libc::waitpid(-1, core::ptr::null_mut(), libc::WNOHANG) };
        if pid > 0 {
            reaped += 1;
            continue;
        }
        if pid < 0 && cairn_runtime::sys::errno() == libc::ECHILD {
            return (reaped, false);
        }
        if std::time::Instant::now() >= deadline {
            return (reaped, true);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Unmount `path` at shutdown; if that fails (EBUSY: a process is still in
/// it), remount it read-only so the filesystem is clean on the next boot.
/// Every failure is an event; a path that is not mounted is not one.
fn release(path: &str, what: &str) {
    use cairn_runtime::sys;
    match sys::umount(path, 0) {
        Ok(()) => return,
        Err(e) if e.errno == libc::EINVAL || e.errno == libc::ENOENT => return, // not mounted
        Err(e) => event("shutdown.unmount-failed").kv("what", what).kv("path", path).kv("error", e).emit(),
    }
    match sys::mount("remount read-only", None, path, None, libc::MS_REMOUNT | libc::MS_RDONLY, None) {
        Ok(()) => event("shutdown.remounted-ro").kv("what", what).kv("path", path).emit(),
        Err(e) => event("shutdown.remount-failed").kv("what", what).kv("path", path).kv("error", e).emit(),
    }
}

/// PID 1 must never exit: the kernel would panic.
fn halt_forever() -> ! {
    event::console_drain(std::time::Duration::from_secs(2));
    loop {
        nix::unistd::pause();
    }
}
