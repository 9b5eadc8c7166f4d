//! Kernel modules from the initramfs, loaded in the order the build
//! resolved (dependencies first), listed in `/lib/modules/load-order`.

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
    let mut failed = 0;
    let mut files = Vec::new();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{name}");
        match load(&path) {
            Ok(()) => event("module.loaded").kv("name", name).emit(),
            Err(e) if e.errno == libc::ENODEV => event("module.skipped")
                .kv("name", name)
                .kv("reason", "no device for it on this machine (ENODEV)")
                .emit(),
            Err(e) => {
                failed += 1;
                event("module.failed").kv("name", name).kv("error", e).emit();
            }
        }
        files.push(path);
    }
    Loaded { failed, files }
}

fn load(path: &str) -> sys::SysResult<()> {
    let fd = sys::open(path, libc::O_RDONLY)?;
    let params = c"";
    let flags = nix::kmod::ModuleInitFlags::empty();
    match nix::kmod::finit_module(&fd, params, flags) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(sys::SysError { op: "finit_module", arg: path.into(), errno: e as i32 }),
    }
}
