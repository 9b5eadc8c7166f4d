//! A container fully resolved for the runtime: host paths of its layers and
//! devices, C strings ready for execve, and the plain types of its limits
//! and namespaces. The runtime owns these types and knows nothing of the
//! manifest; `cairn-init`'s `resolve` module builds a spec from one.

use std::ffi::CString;

/// Base directory for per-container state on the host's /run.
pub const STATE_DIR: &str = "/run/cairn/containers";
/// Directory holding the control socket; bound into containers that may use it.
pub const CONTROL_DIR: &str = "/run/cairn/control";

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Host directories of its mounted layers, lowest first.
    pub layer_dirs: Vec<String>,
    /// Size cap of the writable scratch tmpfs.
    pub scratch_bytes: u64,
    /// Entrypoint and arguments.
    pub argv: Vec<CString>,
    /// Environment.
    pub env: Vec<CString>,
    /// Working directory.
    pub cwd: String,
    /// UTS hostname.
    pub hostname: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// cgroup limits.
    pub limits: Limits,
    /// Whether the control socket directory is bound in.
    pub control: bool,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capabilities kept (bit n = capability n).
    pub capabilities: u64,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Install the default seccomp filter.
    pub seccomp: bool,
    /// Extra syscalls to deny.
    pub seccomp_deny: Vec<String>,
    /// Allow new user namespaces.
    pub allow_userns: bool,
    /// Device nodes to create.
    pub devices: Vec<Device>,
    /// Network namespace.
    pub network: Network,
    /// Resource limits of the entrypoint.
    pub rlimits: Vec<Rlimit>,
    /// Signal sent to the processes left when the entrypoint exits.
    pub stop_signal: i32,
    /// Time they get before SIGKILL.
    pub stop_grace_ms: u32,
    /// Forward signals to the entrypoint's process group.
    pub signal_group: bool,
    /// A pseudo-terminal as stdio and controlling terminal.
    pub console: bool,
    /// A user namespace of its own, with these id maps.
    pub userns: Option<UserNamespace>,
    /// Volumes bound into the container.
    pub volumes: Vec<VolumeMount>,
    /// Bridged networks it joins (with `Network::None`): one veth pair
    /// each, its end inside named `iface`.
    pub networks: Vec<NetAttach>,
    /// The `/etc/hosts` bound (read-only) into it, if any.
    pub hosts: Option<String>,
    /// A file on the device bound (read-only) at its `/etc/resolv.conf`:
    /// PID 1 rewrites it in place when the name servers change, and every
    /// container bound to it reads the new ones at its next lookup.
    pub resolv_conf: Option<String>,
}

/// A container on a bridge: a veth pair, the host end enslaved to
/// `bridge`, the other end `iface` inside at `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAttach {
    /// The bridge on the device.
    pub bridge: String,
    /// The interface inside the container (`eth0`, ...).
    pub iface: String,
    /// Its IPv4 address.
    pub address: [u8; 4],
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The default route's gateway (the device's side of a network with
    /// egress), on at most one attachment.
    pub gateway: Option<[u8; 4]>,
}

/// A volume bound into a container: a host directory PID 1 prepared (on
/// the data partition, or a tmpfs) at a path inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name (for errors).
    pub name: String,
    /// Host directory.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Bound read-only.
    pub readonly: bool,
}

/// A device node given to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Path inside the container, under /dev.
    pub path: String,
    /// The host node it is made from (type and numbers read at start).
    pub host: String,
    /// Permission bits of the node.
    pub mode: u16,
}

/// Network namespace of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A new namespace with only loopback (up).
    None,
    /// PID 1's own network namespace.
    Host,
    /// The namespace of another container, by name (PID 1 passes its pid).
    Join(String),
}

/// cgroup limits (`None`: the kernel's default, "max").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `cpu.max`.
    pub cpu_max: Option<CpuMax>,
    /// `pids.max`.
    pub pids_max: Option<u32>,
    /// `memory.high` in bytes.
    pub memory_high: Option<u64>,
    /// `memory.swap.max` in bytes.
    pub memory_swap_max: Option<u64>,
    /// `cpu.weight` (1 to 10000).
    pub cpu_weight: Option<u16>,
    /// `cpuset.cpus`, e.g. "0-1".
    pub cpuset_cpus: Option<String>,
    /// `io.max` entries.
    pub io_max: Vec<IoMax>,
}

/// CPU bandwidth: `quota_us` of CPU time in every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Microseconds of CPU per period.
    pub quota_us: u32,
    /// Period length in microseconds.
    pub period_us: u32,
}

/// One `io.max` line: a disk and its limits (`None` = max).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoMax {
    /// Kernel name of the disk (e.g. "vda").
    pub device: String,
    /// Read bytes per second.
    pub rbps: Option<u64>,
    /// Write bytes per second.
    pub wbps: Option<u64>,
    /// Read operations per second.
    pub riops: Option<u64>,
    /// Write operations per second.
    pub wiops: Option<u64>,
}

/// A resource limit of the entrypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Which resource.
    pub resource: RlimitResource,
    /// Soft limit (`u64::MAX` = unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX` = unlimited).
    pub hard: u64,
}

/// Resources settable with setrlimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitResource {
    /// RLIMIT_NOFILE.
    Nofile,
    /// RLIMIT_NPROC.
    Nproc,
    /// RLIMIT_CORE.
    Core,
    /// RLIMIT_MEMLOCK.
    Memlock,
    /// RLIMIT_STACK.
    Stack,
    /// RLIMIT_FSIZE.
    Fsize,
    /// RLIMIT_AS.
    As,
    /// RLIMIT_CPU.
    Cpu,
    /// RLIMIT_NICE.
    Nice,
    /// RLIMIT_RTPRIO.
    Rtprio,
    /// RLIMIT_SIGPENDING.
    Sigpending,
    /// RLIMIT_MSGQUEUE.
    Msgqueue,
}

/// The id maps of a container's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// User id ranges (written to `/proc/PID/uid_map`).
    pub uid_map: Vec<IdRange>,
    /// Group id ranges (written to `/proc/PID/gid_map`).
    pub gid_map: Vec<IdRange>,
}

/// One line of an id map: `count` ids from `inside` (in the container) are
/// `outside` onwards on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id in the container.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// The host id of container id `id` under `map` (`None`: unmapped).
pub fn map_id(map: &[IdRange], id: u32) -> Option<u32> {
    map.iter().find_map(|r| {
        let off = id.checked_sub(r.inside)?;
        (off < r.count).then(|| r.outside.checked_add(off)).flatten()
    })
}

impl ContainerSpec {
    /// The container's state directory on the host.
    pub fn state_dir(&self) -> String {
        format!("{STATE_DIR}/{}", self.name)
    }
}
