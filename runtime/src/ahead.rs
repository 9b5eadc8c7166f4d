//! What PID 1 makes ahead of its first start, on a thread of its own while
//! it finds its disk and mounts the layers (work that would otherwise sit
//! on the path to the first container):
//!
//! - the device program for the default rules (the BPF verifier and the
//!   JIT: 10 to 20 ms under emulation), kept in [`Programs`] for every
//!   start that has those rules;
//! - the seccomp filter of the usual security settings (the caller says
//!   which: about 8 ms under emulation), kept in [`Filters`] for every
//!   container that has them;
//! - one network namespace with loopback up, for the first container that
//!   wants a new one and nothing else in it. A boot's first new network
//!   namespace is slow (the kernel's per-namespace set-up runs cold: about
//!   20 ms under emulation with loopback brought up). Once a start has
//!   taken it (or wanted it and found none), PID 1 makes the next one
//!   when it is idle ([`Ahead::refill`]): a restart, or a start after the
//!   boot's first ones, finds one too, and does not make its own on its
//!   way to the entrypoint (7 ms of a start under emulation).
//!
//! The namespace belongs to the initial user namespace, like one made by
//! `clone3(CLONE_NEWNET)` from PID 1, so only a container without a user
//! namespace may take it: in one of its own, the container's root would
//! not hold `CAP_NET_ADMIN` over it. A container with bridge attachments
//! does not take it either: PID 1 moves their veth ends into the
//! namespace of the child's pid right after the clone, before the child
//! could have entered this one.
//!
//! Not the containers' parent cgroup: the first memory cgroup rewrites
//! kernel text on every CPU, so PID 1 makes it before this thread starts
//! (`early::cgroups` in cairn-init says why).

use std::os::fd::OwnedFd;

use crate::devices::Programs;
use crate::spawn::{FilterKey, Filters, SpawnError};
use crate::sys::{self, SysError, SysResult};

/// What was made ahead, taken by the starts that want it.
#[derive(Debug, Default)]
pub struct Ahead {
    /// Device programs loaded so far, by rules: shared by every container
    /// with the same rules (most have the defaults).
    pub programs: Programs,
    /// Seccomp filters compiled so far, by what they are compiled from.
    pub filters: Filters,
    /// A network namespace with loopback up, used by one container at most.
    spare_net: Option<OwnedFd>,
    /// A start wanted the spare namespace since the last [`Ahead::refill`]:
    /// make one again.
    net_wanted: bool,
}

/// What the preparation left, for PID 1 to report: the [`Ahead`] to start
/// containers with, and how each of its two parts went.
#[derive(Debug)]
pub struct Prepared {
    /// Hand this to the starts.
    pub ahead: Ahead,
    /// The default device program's load: `Err` leaves the cache empty,
    /// and the first start loads it (and fails with that start's error).
    pub program: SysResult<()>,
    /// The usual filter's compilation: `Err` leaves the cache empty, and
    /// the containers' units compile it (and fail with the same error).
    pub filter: Result<(), SpawnError>,
    /// The spare namespace's identity (`net:[inode]`, as
    /// `/proc/PID/ns/net` reads), or why there is none: the first start
    /// then makes its own.
    pub net: SysResult<String>,
}

impl Ahead {
    /// Nothing made ahead: every start makes what it needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start preparing on a thread of its own, so the work runs on another
    /// CPU while the caller goes on; `usual` is what most containers'
    /// filter is compiled from. The caller must [`Preparing::join`] it
    /// before it forks: `spawn` wants a single-threaded process.
    pub fn prepare(usual: FilterKey) -> Preparing {
        let work = move || {
            let (programs, program) = Programs::with_defaults();
            let mut filters = Filters::new();
            let filter = filters.compile(usual).map(|_| ());
            let (spare_net, net) = match spare_net() {
                Ok((fd, id)) => (Some(fd), Ok(id)),
                Err(e) => (None, Err(e)),
            };
            Prepared { ahead: Ahead { programs, filters, spare_net, net_wanted: false }, program, filter, net }
        };
        let thread = std::thread::Builder::new().name("ahead".into()).stack_size(THREAD_STACK).spawn(work);
        Preparing(thread.map_err(|e| SysError {
            op: "thread",
            arg: "ahead".into(),
            errno: e.raw_os_error().unwrap_or(0),
        }))
    }

    /// The spare network namespace, for a start that makes a new one and
    /// may take it (see the module's doc); gone from here once taken. The
    /// next [`Ahead::refill`] makes another, whether one was here or not.
    pub(crate) fn take_net(&mut self) -> Option<OwnedFd> {
        self.net_wanted = true;
        self.spare_net.take()
    }

    /// Whether a start took (or wanted) what [`Ahead::refill`] would make.
    pub fn wants_refill(&self) -> bool {
        self.net_wanted && self.spare_net.is_none()
    }

    /// Make again what starts took: the spare network namespace, once per
    /// start that wanted it (a refusal is not tried again until another
    /// start wants one). Blocks for the kernel's few milliseconds: PID 1
    /// calls it when it has nothing else to do. The namespace is made on
    /// a thread of its own, joined before this returns (the caller's own
    /// network namespace never changes, and it is single-threaded again
    /// for its next fork). `None` when nothing was wanted; else the new
    /// namespace's identity or why there is none.
    pub fn refill(&mut self) -> Option<SysResult<String>> {
        if !self.wants_refill() {
            return None;
        }
        self.net_wanted = false;
        let thread = std::thread::Builder::new().name("spare-net".into()).stack_size(THREAD_STACK).spawn(spare_net);
        let lost = |errno| SysError { op: "thread", arg: "spare-net".into(), errno };
        let made = match thread {
            Ok(t) => t.join().unwrap_or_else(|_| Err(lost(0))),
            Err(e) => Err(lost(e.raw_os_error().unwrap_or(0))),
        };
        Some(made.map(|(fd, id)| {
            self.spare_net = Some(fd);
            id
        }))
    }

    /// Whether a spare network namespace is waiting (for tests).
    #[cfg(test)]
    pub fn has_spare_net(&self) -> bool {
        self.spare_net.is_some()
    }
}

/// The preparing thread's stack: the program and the load's attribute
/// structs are on the heap; the verifier and the namespace's set-up run in
/// the kernel.
const THREAD_STACK: usize = 64 << 10;

/// The preparation running on its own thread ([`Ahead::prepare`]).
#[derive(Debug)]
pub struct Preparing(Result<std::thread::JoinHandle<Prepared>, SysError>);

impl Preparing {
    /// Wait for it. If the thread could not start or died, nothing was
    /// made ahead and both parts say why. The thread is gone when this
    /// returns.
    pub fn join(self) -> Prepared {
        let lost = |e: SysError| Prepared {
            ahead: Ahead::new(),
            program: Err(e.clone()),
            filter: Err(SpawnError::Prepare(e.clone())),
            net: Err(e),
        };
        match self.0 {
            Ok(t) => t.join().unwrap_or_else(|_| lost(SysError { op: "thread", arg: "ahead".into(), errno: 0 })),
            Err(e) => lost(e),
        }
    }
}

/// A new network namespace with loopback up, held by a descriptor: made
/// by this thread leaving its own (`unshare` moves the calling thread
/// only), and kept alive by the descriptor after the thread is gone.
fn spare_net() -> SysResult<(OwnedFd, String)> {
    const OWN: &str = "/proc/thread-self/ns/net";
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(sys::err("unshare", "CLONE_NEWNET"))?;
    crate::network::loopback_up()?;
    let fd = sys::open(OWN, libc::O_RDONLY)?;
    let id = std::fs::read_link(OWN).map_err(|e| SysError {
        op: "readlink",
        arg: OWN.into(),
        errno: e.raw_os_error().unwrap_or(0),
    })?;
    Ok((fd, id.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preparation leaves the default program and the usual filter in
    /// their caches (the devices and spawn modules test the caches
    /// themselves) and a namespace other than the caller's, taken once
    /// (root; where the kernel refuses a namespace here, the error must be
    /// the kernel's).
    #[test]
    fn the_preparation_leaves_the_default_program_the_usual_filter_and_a_namespace_of_its_own() {
        let usual = FilterKey { deny: Vec::new(), allow_userns: false, capabilities: 1 << 0 };
        let mut p = Ahead::prepare(usual.clone()).join();
        match &p.program {
            Ok(()) => assert_eq!(p.ahead.programs.len(), 1),
            Err(e) => assert!(p.ahead.programs.is_empty(), "{e}"),
        }
        assert!(p.filter.is_ok(), "{:?}", p.filter);
        assert_eq!(p.ahead.filters.len(), 1);
        p.ahead.filters.compile(usual).unwrap();
        assert_eq!(p.ahead.filters.len(), 1, "the usual filter was compiled again");
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap().display().to_string();
        match &p.net {
            Ok(id) => {
                assert!(id.starts_with("net:[") && *id != own, "spare {id}, caller's {own}");
                assert!(p.ahead.has_spare_net());
                assert!(p.ahead.take_net().is_some() && p.ahead.take_net().is_none(), "taken once");
            }
            Err(e) => {
                assert!(!p.ahead.has_spare_net(), "{e}");
                assert!(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err(), "the preparation lost {e}");
            }
        }
    }

    /// A taken namespace is made again by the next refill, on another
    /// thread (the caller's own namespace is unchanged), once per take;
    /// with nothing taken, a refill makes nothing.
    #[test]
    fn a_refill_makes_a_new_namespace_once_per_start_that_wanted_one() {
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap().display().to_string();
        let mut a = Ahead::new();
        assert!(a.refill().is_none() && !a.has_spare_net(), "nothing was wanted");
        assert!(a.take_net().is_none());
        match a.refill() {
            Some(Ok(id)) => {
                assert!(id.starts_with("net:[") && id != own, "spare {id}, caller's {own}");
                assert!(a.has_spare_net() && !a.wants_refill());
                assert!(a.refill().is_none(), "one namespace per take");
                // Held, so that its inode number is not reused.
                let taken = a.take_net();
                assert!(taken.is_some() && a.wants_refill());
                let again = a.refill();
                assert!(matches!(&again, Some(Ok(next)) if *next != id), "{again:?}");
            }
            Some(Err(e)) => {
                assert!(!a.has_spare_net() && !a.wants_refill(), "{e}: tried again");
                assert!(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err(), "the refill lost {e}");
            }
            None => panic!("a take wanted a refill"),
        }
        let after = std::fs::read_link("/proc/thread-self/ns/net").unwrap().display().to_string();
        assert_eq!(after, own, "the caller's namespace changed");
    }
}
