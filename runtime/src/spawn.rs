//! Start a container: its cgroup, then `clone3` into new namespaces and
//! straight into the cgroup, then (in the child) its network, the fork of
//! the entrypoint's process (which readies itself meanwhile, see
//! [`crate::nsinit::Entry`]), the rootfs, the hostname, and the namespace
//! init's go-ahead and supervision.
//!
//! Parent and child share a close-on-exec pipe. The child writes a fixed
//! binary record on failure (stage + errno, see [`crate::report`]); a
//! successful exec of the entrypoint closes the last write end, so the
//! parent reads EOF with nothing before it. [`spawn`] does not wait for
//! that: it returns once the child exists, with the pipe's read end
//! non-blocking in [`Started::report`], and PID 1 polls it with
//! [`poll_report`] from its event loop (the child sets up under the
//! container's own limits, which may make it arbitrarily slow).
//!
//! With a user namespace a second pipe goes the other way: the child is
//! cloned with `CLONE_NEWUSER` along with its other namespaces (so the new
//! user namespace owns them all) and first of all waits on it. PID 1 writes
//! the child's `uid_map` and `gid_map`, detaches the rootfs mounts it made
//! for it (see `rootfs::host_plan`), then sends one byte. Only then does
//! the child become root of its namespace and set up its filesystem. If PID
//! 1 cannot write the maps it closes the pipe without a byte and the child
//! exits with the setup failure code.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::spec::Network;

use crate::cgroup::Cgroup;
use crate::network;
use crate::nsinit;
use crate::report::{self, Report, Stage};
use crate::rootfs;
use crate::spec::ContainerSpec;
use crate::sys::{self, SysError};

/// Namespaces every container gets (plus a network namespace unless it
/// uses the host's or joins another container's).
pub const NAMESPACES: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP) as u64;

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

pub use crate::exit::SETUP_FAILED;

/// Why a container did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Creating its state directories.
    #[error("preparing state: {0}")]
    Prepare(SysError),
    /// Creating the cgroup or writing a limit.
    #[error("cgroup: {0}")]
    Cgroup(SysError),
    /// clone3 itself.
    #[error("clone3: {0}")]
    Clone(SysError),
    /// A setup step inside the new namespaces; the container's init exits.
    #[error("setup: {0}")]
    Setup(Report),
    /// The child wrote something on the report pipe that is not a record.
    #[error("setup: {0}")]
    Report(report::DecodeError),
    /// The seccomp filter could not be built.
    #[error("seccomp: {0}")]
    Seccomp(crate::seccomp::SeccompError),
    /// The container whose network it joins is not running.
    #[error("network: the container it joins is not running")]
    NoNetworkToJoin,
    /// Mounting its rootfs for a user namespace, or writing the id maps.
    #[error("user namespace: {0}")]
    UserNamespace(SysError),
    /// Creating its veth pairs or enslaving them to their bridges, or
    /// writing its /etc/hosts.
    #[error("network: {0}")]
    Network(SysError),
}

/// A container whose init exists and is setting up.
#[derive(Debug)]
pub struct Started {
    /// Host pid of the container's namespace init.
    pub pid: libc::pid_t,
    /// Read end of the report pipe (non-blocking, close-on-exec): poll it
    /// for input and read it with [`poll_report`].
    pub report: OwnedFd,
    /// With `console`: the master side of the container's pseudo-terminal
    /// (non-blocking) and the slave's path on the host.
    pub console: Option<(OwnedFd, String)>,
    /// Without `console`: the read end (non-blocking) of the pipe that is
    /// the container's stdout and stderr (see [`crate::stdio`]).
    pub output: Option<OwnedFd>,
}

/// Kernel ABI of clone3's argument (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The seccomp filter `spec` asks for (None with `seccomp = false`),
/// compiled once per container and given to every [`spawn`] of it.
pub fn seccomp_filter(spec: &ContainerSpec) -> Result<Option<crate::seccomp::Filter>, SpawnError> {
    FilterKey::of(spec).map(|key| key.build()).transpose()
}

/// Seccomp filters compiled so far, by what they are compiled from (the
/// deny list, the user namespace rule, the capabilities): containers that
/// agree on those share one filter. Compiling takes milliseconds under
/// emulation; most containers of a manifest have the defaults, whose
/// filter PID 1 compiles ahead ([`crate::ahead`]).
#[derive(Debug, Default)]
pub struct Filters {
    compiled: Vec<(FilterKey, std::sync::Arc<crate::seccomp::Filter>)>,
}

/// What a filter is compiled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterKey {
    /// Syscalls denied beyond the default list.
    pub deny: Vec<String>,
    /// Whether new user namespaces are allowed.
    pub allow_userns: bool,
    /// The capabilities the entrypoint keeps (some open syscalls).
    pub capabilities: u64,
}

impl FilterKey {
    /// What `spec`'s filter is compiled from; `None` with `seccomp = false`.
    pub fn of(spec: &ContainerSpec) -> Option<Self> {
        spec.seccomp.then(|| FilterKey {
            deny: spec.seccomp_deny.clone(),
            allow_userns: spec.allow_userns,
            capabilities: spec.capabilities,
        })
    }

    /// Compile the filter.
    pub fn build(&self) -> Result<crate::seccomp::Filter, SpawnError> {
        let deny: Vec<&str> = self.deny.iter().map(String::as_str).collect();
        crate::seccomp::build(&deny, self.allow_userns, self.capabilities).map_err(SpawnError::Seccomp)
    }
}

impl Filters {
    /// None compiled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The filter `spec` asks for (see [`seccomp_filter`]), compiled now
    /// unless a spec with the same inputs asked before.
    pub fn get(&mut self, spec: &ContainerSpec) -> Result<Option<std::sync::Arc<crate::seccomp::Filter>>, SpawnError> {
        FilterKey::of(spec).map(|key| self.compile(key)).transpose()
    }

    /// The filter of `key`, compiled now unless it was before.
    pub fn compile(&mut self, key: FilterKey) -> Result<std::sync::Arc<crate::seccomp::Filter>, SpawnError> {
        if let Some((_, f)) = self.compiled.iter().find(|(k, _)| *k == key) {
            return Ok(f.clone());
        }
        let filter = std::sync::Arc::new(key.build()?);
        self.compiled.push((key, filter.clone()));
        Ok(filter)
    }

    /// How many distinct filters were compiled (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    /// Whether none was (for tests).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }
}

/// Start the container described by `spec` in `cgroup`, whose device
/// program comes from `ahead`'s cache, and whose new network namespace is
/// `ahead`'s spare one if it may take it ([`crate::ahead`]). `join_net` is
/// the host pid of the container whose network namespace it joins, if any.
///
/// Must be called from a single-threaded process: the child continues as a
/// copy of the caller (like fork) and must not find locks held by others.
pub fn spawn(
    spec: &ContainerSpec,
    filter: Option<&crate::seccomp::Filter>,
    cgroup: &Cgroup,
    ahead: &mut crate::Ahead,
    join_net: Option<libc::pid_t>,
) -> Result<Started, SpawnError> {
    let mut flags = NAMESPACES | CLONE_INTO_CGROUP;
    let join = match &spec.network {
        Network::Join(_) => Some(join_net.ok_or(SpawnError::NoNetworkToJoin)?),
        Network::None | Network::Host => None,
    };
    if spec.userns.is_some() {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    sys::mkdir_all(&spec.state_dir(), 0o700).map_err(SpawnError::Prepare)?;
    let cg = cgroup.create(&spec.limits, &spec.devices, &mut ahead.programs).map_err(SpawnError::Cgroup)?;
    let (rd, wr) = sys::pipe().map_err(SpawnError::Prepare)?;
    set_nonblocking(&rd).map_err(SpawnError::Prepare)?;
    let plan = rootfs::plan(spec).map_err(SpawnError::Prepare)?;
    let stdio = crate::stdio::prepare(spec.console).map_err(SpawnError::Prepare)?;
    // The child waits for PID 1's side first: its id maps, its veth pairs.
    let go_ahead = match spec.userns.is_some() || !spec.networks.is_empty() {
        true => Some(sys::pipe().map_err(SpawnError::Prepare)?),
        false => None,
    };
    // Where `cairn-ctl exec` waits for statuses: the container's init keeps
    // this directory open (crate::exec).
    let exits = crate::exec::exits_dir(spec).map_err(SpawnError::Prepare)?;
    if let Some(h) = &spec.hosts {
        let path = format!("{}/hosts", spec.state_dir());
        std::fs::write(&path, h).map_err(|e| {
            SpawnError::Network(SysError { op: "write", arg: path, errno: e.raw_os_error().unwrap_or(0) })
        })?;
    }
    let host_mounts = rootfs::host_mounts(spec);
    if let Err(e) = rootfs::apply(&rootfs::host_plan(spec)) {
        detach(&host_mounts);
        return Err(SpawnError::UserNamespace(e));
    }
    // Taken last, so that a start failing before the clone leaves it.
    let net = match (&spec.network, join) {
        (Network::None, _) => match spec.userns.is_none() && spec.networks.is_empty() {
            true => ahead.take_net().map(NetSetup::Enter),
            false => None,
        }
        .unwrap_or_else(|| {
            flags |= libc::CLONE_NEWNET as u64;
            NetSetup::Loopback
        }),
        (Network::Join(_), Some(pid)) => NetSetup::Join(pid),
        (Network::Host | Network::Join(_), _) => NetSetup::Keep,
    };

    let mut args =
        CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, cgroup: cg.as_raw_fd() as u64, ..CloneArgs::default() };
    // SAFETY: clone3 with no stack behaves like fork: the child runs on a
    // copy of this address space. `args` is a valid clone_args of the size
    // passed. The caller guarantees no other threads exist.
    let pid =
        unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, core::mem::size_of::<CloneArgs>()) };
    if pid < 0 {
        let e = SysError { op: "clone3", arg: spec.name.clone(), errno: sys::errno() };
        detach(&host_mounts);
        return Err(SpawnError::Clone(e));
    }
    if pid == 0 {
        drop(rd);
        drop(cg);
        let go_ahead = go_ahead.map(|(go_rd, go_wr)| {
            drop(go_wr);
            go_rd
        });
        // The pty's slave, or /dev/null and the output pipe, become stdio.
        if let Err(e) = stdio.attach() {
            report::write(&wr, Stage::Console, e.errno);
            sys::exit_now(SETUP_FAILED);
        }
        child(spec, &plan, net, filter, wr, go_ahead, exits);
    }
    drop(wr);
    drop(exits);
    let pid = pid as libc::pid_t;
    // The child's mount namespace holds its own copies now.
    detach(&host_mounts);
    if let Some((go_rd, go_wr)) = go_ahead {
        drop(go_rd);
        let ready = match &spec.userns {
            Some(u) => crate::userns::write_maps(pid, u).map_err(SpawnError::UserNamespace),
            None => Ok(()),
        }
        .and_then(|()| crate::bridge::attach(pid, &spec.networks).map_err(SpawnError::Network))
        // If the byte cannot be written the child reads EOF and exits.
        .and_then(|()| sys::write_all(&go_wr, b"1").map_err(SpawnError::Prepare));
        // On an error the child reads EOF on the go-ahead pipe (closed
        // with this function's locals) and exits with the setup failure
        // code; PID 1 reaps it like any other child.
        ready?;
    }
    // The container holds its side now; PID 1 keeps only the master or the read end.
    let (console, output) = match stdio.keep() {
        crate::stdio::Kept::Pty(master, path) => (Some((master, path)), None),
        crate::stdio::Kept::Pipe(read) => (None, Some(read)),
    };
    Ok(Started { pid, report: rd, console, output })
}

/// Where a child's set-up stands, from its report pipe.
#[derive(Debug)]
pub enum Setup {
    /// Nothing to read yet: still setting up.
    Pending,
    /// EOF with nothing before it: the entrypoint was executed.
    Done,
    /// The entrypoint could not be executed (errno); the init exits with
    /// 127 (not found) or 126 (not executable). The path is `argv[0]`.
    ExecFailed(i32),
    /// A setup step failed; the init exits with [`SETUP_FAILED`].
    Failed(SpawnError),
}

/// Read the report pipe of a starting child without blocking. After
/// anything but [`Setup::Pending`] the pipe has nothing more to say.
pub fn poll_report(fd: &OwnedFd) -> Setup {
    let mut buf = [0u8; 2 * report::LEN];
    let n = match nix::unistd::read(fd, &mut buf) {
        Ok(0) => return Setup::Done,
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Setup::Pending,
        Err(e) => return Setup::Failed(SpawnError::Prepare(sys::err("read report", fd.as_raw_fd())(e))),
    };
    // One record is written with one write under PIPE_BUF: it arrives
    // whole. The init and the entrypoint's process may each write one
    // (both failed): the first is what stopped the start.
    match report::decode(buf.get(..n.min(report::LEN)).unwrap_or(&[])) {
        Ok(Report { stage: Stage::Exec, errno, .. }) => Setup::ExecFailed(errno),
        Ok(r) => Setup::Failed(SpawnError::Setup(r)),
        Err(e) => Setup::Failed(SpawnError::Report(e)),
    }
}

/// Set O_NONBLOCK on `fd`.
fn set_nonblocking(fd: &OwnedFd) -> Result<(), SysError> {
    sys::set_nonblocking(fd).map_err(sys::err("fcntl O_NONBLOCK", fd.as_raw_fd()))
}

/// Detach mounts PID 1 made for a child (errors ignored: a mount that is
/// not there is what we want).
fn detach(mounts: &[String]) {
    for m in mounts {
        let _ = sys::umount(m, libc::MNT_DETACH);
    }
}

/// What to do about the network namespace in the child.
enum NetSetup {
    /// New namespace: bring loopback up.
    Loopback,
    /// Enter this namespace, made ahead with loopback up.
    Enter(OwnedFd),
    /// Host namespace: nothing.
    Keep,
    /// Join the namespace of this pid.
    Join(libc::pid_t),
}

/// Runs in the new namespaces as their PID 1. Never returns.
fn child(
    spec: &ContainerSpec,
    plan: &[rootfs::Step],
    net: NetSetup,
    filter: Option<&crate::seccomp::Filter>,
    sync: OwnedFd,
    go_ahead: Option<OwnedFd>,
    exits: OwnedFd,
) -> ! {
    if let Some(go) = go_ahead {
        // Nothing may happen in the new user namespace before its maps
        // exist, nor on its network before its veth pairs do.
        let byte = sys::read_to_end(&go, 1).unwrap_or_default();
        drop(go);
        let ready = match (byte.is_empty(), spec.userns.is_some()) {
            (true, true) => Err((Stage::IdMaps, 0)),
            (true, false) => Err((Stage::Network, 0)),
            (false, true) => crate::userns::become_root().map_err(|e| (Stage::BecomeRoot, e.errno)),
            (false, false) => Ok(()),
        };
        if let Err((stage, errno)) = ready {
            report::write(&sync, stage, errno);
            sys::exit_now(SETUP_FAILED);
        }
    }
    let spare = match &net {
        NetSetup::Enter(fd) => fd.as_raw_fd(),
        _ => sync.as_raw_fd(),
    };
    if let Err(errno) = sys::close_all_but(&[sync.as_raw_fd(), exits.as_raw_fd(), spare]) {
        // A descriptor of PID 1's left open would be reachable through
        // /proc/1/fd: never start like that.
        report::write(&sync, Stage::InheritedFds, errno);
        sys::exit_now(SETUP_FAILED);
    }
    // Not dumpable: /proc/1 of the container belongs to root and cannot be
    // ptraced or have its exe reopened by processes without CAP_SYS_PTRACE.
    let _ = nix::sys::prctl::set_dumpable(false);
    let network = match net {
        NetSetup::Loopback => network::loopback_up()
            .and_then(|()| spec.networks.iter().try_for_each(|a| network::configure(&a.iface, a.address, a.prefix)))
            .and_then(|()| network::default_route(&spec.networks)),
        NetSetup::Enter(fd) => network::enter(fd),
        NetSetup::Keep => Ok(()),
        NetSetup::Join(pid) => network::join(pid),
    };
    if let Err(e) = network {
        report::write(&sync, Stage::Network, e.errno);
        sys::exit_now(SETUP_FAILED);
    }
    // In every namespace now: the entrypoint's process readies itself
    // while this one builds the filesystem (see nsinit::Entry).
    let entry = nsinit::fork_entry(spec, &sync, filter);
    let setup = rootfs::apply_steps(plan)
        // The step's index goes into the report: PID 1 names its path.
        .map_err(|(i, e)| (Stage::Rootfs, u16::try_from(i).ok(), e))
        .and_then(|()| sys::sethostname(&spec.hostname).map_err(|e| (Stage::Hostname, None, e)));
    if let Err((stage, step, e)) = setup {
        // Exiting takes the entrypoint's process with it (the pid
        // namespace's init is gone); it has not executed anything.
        report::write_report(&sync, Report { stage, step, errno: e.errno });
        sys::exit_now(SETUP_FAILED);
    }
    entry.go(spec, sync, Some(exits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The init and the entrypoint's process may both fail and write a
    /// record each: the first read is the one reported.
    #[test]
    fn of_two_records_the_first_is_the_failure() {
        let (rd, wr) = sys::pipe().unwrap();
        set_nonblocking(&rd).unwrap();
        report::write(&wr, Stage::Seccomp, libc::EINVAL);
        report::write_report(&wr, Report { stage: Stage::Rootfs, step: Some(3), errno: libc::ELOOP });
        match poll_report(&rd) {
            Setup::Failed(SpawnError::Setup(r)) => assert_eq!((r.stage, r.errno), (Stage::Seccomp, libc::EINVAL)),
            other => panic!("{other:?}"),
        }
        drop(wr);
        assert!(matches!(poll_report(&rd), Setup::Done), "both records were read at once");
    }

    #[test]
    fn filters_are_shared_by_specs_with_the_same_inputs() {
        let mut f = Filters::new();
        let a = crate::rootfs::tests::spec(false);
        let fa = f.get(&a).unwrap().unwrap();
        let mut b = crate::rootfs::tests::spec(true);
        b.name = "other".into();
        let fb = f.get(&b).unwrap().unwrap();
        assert!(std::sync::Arc::ptr_eq(&fa, &fb), "same deny list, userns rule and capabilities: one filter");
        assert_eq!(f.len(), 1);
        let mut c = a.clone();
        c.capabilities = 1 << 21;
        let fc = f.get(&c).unwrap().unwrap();
        assert!(!std::sync::Arc::ptr_eq(&fa, &fc), "CAP_SYS_ADMIN opens syscalls: another filter");
        assert_ne!(fa.len(), fc.len());
        let mut d = a.clone();
        d.seccomp_deny = vec!["uname".into()];
        f.get(&d).unwrap().unwrap();
        let mut e = a.clone();
        e.allow_userns = true;
        f.get(&e).unwrap().unwrap();
        assert_eq!(f.len(), 4);
        let mut none = a.clone();
        none.seccomp = false;
        assert!(f.get(&none).unwrap().is_none());
        assert_eq!(f.len(), 4);
    }
}
