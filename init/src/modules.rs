//! Kernel modules from the initramfs, loaded in the order the build
//! resolved (dependencies first), listed in `/lib/modules/load-order`.
//!
//! A list is one file name a line; an empty line separates groups that
//! share no dependency. The groups are loaded at once, on as many threads
//! as the machine has CPUs (four at most), each group in its order: most
//! of a module's load is the kernel's own work (copying, relocating,
//! checking its signature, its init), which runs in parallel. The threads
//! are joined before loading returns, so PID 1 is single-threaded again
//! before it forks anything.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use cairn_runtime::sys;

use crate::event::event;

/// The list the build writes: one file name per line, relative to /lib/modules.
pub const LOAD_ORDER: &str = "/lib/modules/load-order";
/// Modules loaded only when the manifest has container networks: bridge,
/// veth and their dependencies, in load order, none of them also in
/// [`LOAD_ORDER`].
pub const NETWORKS_ORDER: &str = "/lib/modules/load-order-networks";
/// Modules loaded only when the manifest needs netfilter (a network with
/// egress, a published port): nf_tables, conntrack, NAT and their
/// dependencies, in load order, none of them also in [`LOAD_ORDER`].
pub const NETFILTER_ORDER: &str = "/lib/modules/load-order-netfilter";
/// Modules loaded only on a machine with UEFI firmware (efivarfs), none of
/// them also in [`LOAD_ORDER`]; no list when the kernel builds them in.
pub const EFI_ORDER: &str = "/lib/modules/load-order-efi";
/// Modules every boot loads, but after its first starts are issued, or
/// earlier where it first needs them ([`load_late`]): the data partition's
/// quota format. None of them also in [`LOAD_ORDER`]; no list when the
/// kernel builds them in.
pub const LATE_ORDER: &str = "/lib/modules/load-order-late";
/// The lists loaded only when a boot needs them.
pub const ON_DEMAND: [&str; 4] = [NETWORKS_ORDER, NETFILTER_ORDER, EFI_ORDER, LATE_ORDER];
/// Most threads that load modules at once.
const MOST_THREADS: usize = 4;
/// Each loading thread's stack: a path, a syscall and an event line.
const THREAD_STACK: usize = 64 << 10;

/// The on-demand modules' files, open: PID 1 keeps them when it leaves
/// the initramfs instead of copying them ([`hold`]), loads them from here,
/// and closes each once it is loaded, or all that are left once the
/// manifest has shown what it needs ([`release`]): their memory is freed
/// then. Each is its absolute path and its descriptor.
static HELD: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// Whether this process (or the one it was forked from) has loaded the
/// late list ([`load_late`]).
static LATE_LOADED: AtomicBool = AtomicBool::new(false);

/// The files the on-demand lists name, as absolute paths (a list that is
/// not there names none).
pub fn on_demand_files() -> Vec<String> {
    ON_DEMAND.iter().flat_map(|order| list_files(order)).collect()
}

/// The files list `order` names, as absolute paths (none if it is not there).
fn list_files(order: &str) -> Vec<String> {
    std::fs::read_to_string(order)
        .map(|list| groups(&list).into_iter().flatten().map(module_path).collect())
        .unwrap_or_default()
}

/// Load the late list ([`LATE_ORDER`]) unless it was loaded already: after
/// the first starts are issued, or first by whatever needs its modules
/// before that (mounting the data partition). Without the list
/// (a kernel with them built in) there is nothing to do.
pub fn load_late() {
    if LATE_LOADED.swap(true, Ordering::Relaxed) || !std::path::Path::new(LATE_ORDER).exists() {
        return;
    }
    let failed = load_list(LATE_ORDER);
    event("modules.late-done").kv("failed", failed).emit();
}

/// Open each of `paths` and keep it for its load. One that cannot be
/// opened is not kept: its load later fails by path, naming it. Returns
/// the bytes kept.
pub fn hold(paths: &[String]) -> u64 {
    let Ok(mut held) = HELD.lock() else { return 0 };
    let mut bytes = 0;
    for p in paths {
        if let Ok(fd) = sys::open(p, libc::O_RDONLY) {
            bytes += nix::sys::stat::fstat(&fd).map_or(0, |st| st.st_size as u64);
            held.push((p.clone(), fd));
        }
    }
    bytes
}

/// Close the kept files no load took (see [`HELD`]), but for the late
/// list's, which every boot loads ([`load_late`]): how many.
pub fn release() -> usize {
    let late = list_files(LATE_ORDER);
    let Ok(mut held) = HELD.lock() else { return 0 };
    let before = held.len();
    held.retain(|(path, _)| late.contains(path));
    before - held.len()
}

/// The kept file of `path`, taken out (closed once loaded).
fn take_held(path: &str) -> Option<OwnedFd> {
    let mut held = HELD.lock().ok()?;
    let i = held.iter().position(|(p, _)| p == path)?;
    Some(held.swap_remove(i).1)
}

/// Where module file `name` of a list is.
fn module_path(name: &str) -> String {
    format!("/lib/modules/{name}")
}

/// What loading one list did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// How many failed (each was `module.failed`).
    pub failed: usize,
    /// The files of the list, loaded or not: nothing reads them again.
    pub files: Vec<String>,
}

/// Load every listed module. A module already loaded (EEXIST) counts as
/// loaded; one whose init says ENODEV (nothing for it on this machine:
/// efivarfs without UEFI firmware, a controller the board does not have)
/// is `module.skipped`, not a failure; each failure is an event.
pub fn load_all() -> Loaded {
    load_files(LOAD_ORDER)
}

/// Load every module listed in `order` (see [`load_all`]); a list that is
/// not there is `modules.none` and no failure. Returns how many failed.
pub fn load_list(order: &str) -> usize {
    load_files(order).failed
}

fn load_files(order: &str) -> Loaded {
    let list = match std::fs::read_to_string(order) {
        Ok(l) => l,
        Err(e) => {
            event("modules.none").kv("path", order).kv("error", e).emit();
            return Loaded::default();
        }
    };
    let groups = groups(&list);
    let failed = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    // Each thread takes the next group not taken until none is left.
    let work = || {
        while let Some(group) = groups.get(next.fetch_add(1, Ordering::Relaxed)) {
            for name in group {
                if !load_one(name) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let cpus = sys::cpus();
    let helpers = cpus.min(MOST_THREADS).min(groups.len()).saturating_sub(1);
    std::thread::scope(|s| {
        for _ in 0..helpers {
            // A thread that cannot start leaves its share to the others.
            if std::thread::Builder::new().stack_size(THREAD_STACK).spawn_scoped(s, work).is_err() {
                break;
            }
        }
        work();
    });
    let files = groups.iter().flatten().map(|name| module_path(name)).collect();
    Loaded { failed: failed.into_inner(), files }
}

/// The groups of a load-order list (see the module's documentation).
fn groups(list: &str) -> Vec<Vec<&str>> {
    let mut groups: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in list.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Load one module by file name; false if it failed (an event says why).
fn load_one(name: &str) -> bool {
    let path = module_path(name);
    match load(&path) {
        Ok(()) => event("module.loaded").kv("name", name).emit(),
        Err(e) if e.errno == libc::ENODEV => {
            event("module.skipped").kv("name", name).kv("reason", "no device for it on this machine (ENODEV)").emit()
        }
        Err(e) => {
            event("module.failed").kv("name", name).kv("error", e).emit();
            return false;
        }
    }
    true
}

fn load(path: &str) -> sys::SysResult<()> {
    let fd = match take_held(path) {
        Some(fd) => fd,
        None => sys::open(path, libc::O_RDONLY)?,
    };
    let params = c"";
    let flags = nix::kmod::ModuleInitFlags::empty();
    match nix::kmod::finit_module(&fd, params, flags) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(sys::SysError { op: "finit_module", arg: path.into(), errno: e as i32 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_cut_into_groups_at_empty_lines() {
        let list = "virtio_ring.ko\nvirtio_blk.ko\n\nsquashfs.ko\n \n\n dm-mod.ko\ndm-verity.ko\n\n";
        assert_eq!(
            groups(list),
            [vec!["virtio_ring.ko", "virtio_blk.ko"], vec!["squashfs.ko"], vec!["dm-mod.ko", "dm-verity.ko"]]
        );
        // A list of before: one group, loaded in order.
        assert_eq!(groups("a.ko\nb.ko\n"), [vec!["a.ko", "b.ko"]]);
        assert!(groups("\n\n").is_empty());
    }
}
