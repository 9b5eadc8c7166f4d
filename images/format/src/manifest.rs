//! The appliance manifest: what the device runs, signed by the vendor.
//!
//! Lists and strings are `alloc` collections, decoded from the verified
//! payload (itself at most [`crate::envelope::MAX_PAYLOAD`] bytes). Their
//! bounds are validation rules, not capacities: [`Manifest::validate`]
//! checks them after decoding, with everything else the device relies on,
//! and names the field and the bound, so the host tool and the device apply
//! the same rules and say the same thing.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::order;
use crate::verity::{self, Verity};

/// Most layers one manifest may name.
pub const MAX_LAYERS: usize = 24;
/// Most containers one manifest may run.
pub const MAX_CONTAINERS: usize = 16;
/// Most layers one container may stack.
pub const MAX_CONTAINER_LAYERS: usize = 8;
/// Most argv entries of an entrypoint.
pub const MAX_ARGS: usize = 256;
/// Most environment variables of a container.
pub const MAX_ENV: usize = 256;
/// Most dependencies of a container.
pub const MAX_DEPS: usize = 8;
/// Longest name (appliance, layer, container).
pub const NAME_LEN: usize = 32;
/// Longest argv entry or environment entry, in bytes (an `sh -c` script,
/// a Docker image's `PATH`).
pub const ARG_LEN: usize = 4096;
/// Longest path (working directory, device paths), in bytes (`PATH_MAX`).
pub const PATH_LEN: usize = 4096;
/// Longest hostname.
pub const HOSTNAME_LEN: usize = 63;
/// Most device nodes a container may be given.
pub const MAX_DEVICES: usize = 8;
/// Most rlimits per container.
pub const MAX_RLIMITS: usize = 8;
/// Most io.max entries per container.
pub const MAX_IO_LIMITS: usize = 4;
/// Most extra seccomp denials per container.
pub const MAX_SECCOMP_DENY: usize = 16;
/// Longest syscall name.
pub const SYSCALL_LEN: usize = 24;
/// Most supplementary groups.
pub const MAX_GROUPS: usize = 8;
/// Longest cpuset list ("0-3,6").
pub const CPUSET_LEN: usize = 32;
/// Longest compatibility string (the product a manifest is for).
pub const COMPATIBLE_LEN: usize = 64;
/// Prefix of the system partitions (state, manifest slots, layers, data):
/// a [`DeviceSource::Partition`] may not name one.
pub const SYSTEM_PARTITION_PREFIX: &str = "cairn-";
/// Most ranges in one id map of a user namespace (the kernel takes up to
/// 340; a handful is all an appliance needs).
pub const MAX_ID_RANGES: usize = 5;
/// Most volumes one manifest may declare.
pub const MAX_VOLUMES: usize = 16;
/// Most volume mounts of one container.
pub const MAX_MOUNTS: usize = 8;

/// Capabilities a container keeps unless told otherwise: Docker's default
/// set without CAP_MKNOD and CAP_NET_RAW. Bit n is capability n.
pub const DEFAULT_CAPABILITIES: u64 = (1 << 0) // CHOWN
    | (1 << 1) // DAC_OVERRIDE
    | (1 << 3) // FOWNER
    | (1 << 4) // FSETID
    | (1 << 5) // KILL
    | (1 << 6) // SETGID
    | (1 << 7) // SETUID
    | (1 << 8) // SETPCAP
    | (1 << 10) // NET_BIND_SERVICE
    | (1 << 18) // SYS_CHROOT
    | (1 << 29) // AUDIT_WRITE
    | (1 << 31); // SETFCAP

/// Capability names, indexed by number (Linux 6.1: 0..=40).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability number by name (with or without `CAP_`, any case).
pub fn capability_number(name: &str) -> Option<u8> {
    let n = name.trim();
    let n = n.strip_prefix("CAP_").or_else(|| n.strip_prefix("cap_")).unwrap_or(n);
    CAPABILITY_NAMES.iter().position(|c| c.eq_ignore_ascii_case(n)).map(|i| i as u8)
}

/// A short identifier: `[a-z0-9][a-z0-9-]*`.
pub type Name = String;

/// The signed description of an appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Appliance name, for logs.
    pub appliance: Name,
    /// Monotonic version; the device refuses versions below its rollback floor.
    pub version: u64,
    /// The product this manifest is for; a device refuses a manifest whose
    /// string differs from the one built into its init.
    pub compatible: String,
    /// How layers are checked before containers read them.
    pub layer_check: LayerCheck,
    /// Every layer any container uses.
    pub layers: Vec<Layer>,
    /// The containers, in the order the author wrote them.
    pub containers: Vec<Container>,
    /// How a device judges this manifest when it arrives as an update.
    pub update: UpdatePolicy,
    /// Named volumes containers mount (`[[volume]]`).
    pub volumes: Vec<Volume>,
    /// Networks containers join (`[[network]]`, see [`crate::network`]).
    pub networks: Vec<crate::network::NetworkDef>,
}

/// A named volume: a directory on the data partition that outlives
/// reboots and updates (keyed by its name), or a tmpfs; both with a size
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name (also its directory's name on the data partition).
    pub name: Name,
    /// Where it lives.
    pub kind: VolumeKind,
    /// Most bytes it may hold (a project quota, or the tmpfs size).
    pub size_bytes: u64,
    /// Permission bits of its top directory (no setuid/setgid).
    pub mode: u16,
}

/// Where a volume lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeKind {
    /// A directory on `cairn-data`: kept across reboots and updates.
    Persistent,
    /// A tmpfs PID 1 mounts at boot, shared by the containers that mount
    /// it; empty at every boot.
    Tmpfs,
}

impl VolumeKind {
    /// Its name in appliance files and events.
    pub fn name(self) -> &'static str {
        match self {
            VolumeKind::Persistent => "persistent",
            VolumeKind::Tmpfs => "tmpfs",
        }
    }
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name.
    pub volume: Name,
    /// Absolute path inside the container.
    pub path: String,
    /// Mounted read-only (writes fail with EROFS).
    pub readonly: bool,
}

/// How an update to this manifest is tried and committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// The rollback floor the device raises to when this manifest commits
    /// (at most `version`; by default `version` itself, so nothing older
    /// boots again once it proved itself).
    pub floor: u64,
    /// How long every critical container must keep running, with no
    /// restart and no OOM kill, before a trial commits.
    pub commit_after_ms: u32,
    /// Boots a trial gets (each spent before anything is mounted) before
    /// the device falls back to the committed manifest.
    pub tries: u8,
}

impl UpdatePolicy {
    /// Default commit window: 30 s of health.
    pub const COMMIT_AFTER_MS: u32 = 30_000;
    /// Longest commit window (one day).
    pub const COMMIT_AFTER_MAX_MS: u32 = 86_400_000;
    /// Default tries.
    pub const TRIES: u8 = 3;
    /// Most tries: the boot loader's counter holds 0 to 15.
    pub const TRIES_MAX: u8 = 15;

    /// The defaults for a manifest of `version`.
    pub fn for_version(version: u64) -> Self {
        Self { floor: version, commit_after_ms: Self::COMMIT_AFTER_MS, tries: Self::TRIES }
    }
}

/// A read-only filesystem image, named by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Name that containers use to refer to it.
    pub name: Name,
    /// sha256 of the first `size` bytes of the partition that holds it.
    pub digest: Digest,
    /// Exact image size in bytes.
    pub size: u64,
    /// Its dm-verity hash tree, on the partition after the (padded) image.
    pub verity: Verity,
}

/// How the device checks layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerCheck {
    /// Every block is checked against the signed root hash when it is read
    /// (dm-verity); nothing is hashed at boot.
    Verity(OnCorruption),
    /// The whole image is hashed at boot and compared with the digest, then
    /// mounted directly: for kernels without dm-verity. Nothing is checked
    /// after the mount.
    Digest,
}

impl Default for LayerCheck {
    fn default() -> Self {
        LayerCheck::Verity(OnCorruption::Error)
    }
}

/// What the kernel does when a block does not match its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnCorruption {
    /// The read fails with EIO; the device keeps running and reports it.
    #[default]
    Error,
    /// The kernel restarts the device.
    Restart,
    /// The kernel panics (and a panic=N command line reboots it).
    Panic,
}

impl OnCorruption {
    /// The verity target's optional argument, if any.
    pub fn table_arg(self) -> Option<&'static str> {
        match self {
            OnCorruption::Error => None,
            OnCorruption::Restart => Some("restart_on_corruption"),
            OnCorruption::Panic => Some("panic_on_corruption"),
        }
    }

    /// Its name in appliance files and events.
    pub fn name(self) -> &'static str {
        match self {
            OnCorruption::Error => "eio",
            OnCorruption::Restart => "restart",
            OnCorruption::Panic => "panic",
        }
    }
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Unique name; also the cgroup name.
    pub name: Name,
    /// Layer names, lowest first; the last one is on top.
    pub layers: Vec<Name>,
    /// Entrypoint and its arguments; `argv[0]` is an absolute path.
    pub argv: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Hostname in the container's UTS namespace.
    pub hostname: String,
    /// User id the entrypoint runs as.
    pub uid: u32,
    /// Group id the entrypoint runs as.
    pub gid: u32,
    /// Resource limits.
    pub limits: Limits,
    /// What to do when it exits.
    pub restart: Restart,
    /// Containers that must be started before this one.
    pub depends_on: Vec<Name>,
    /// How to stop it.
    pub stop: Stop,
    /// Supplementary group ids of the entrypoint.
    pub groups: Vec<u32>,
    /// Isolation settings.
    pub security: Security,
    /// Network namespace.
    pub network: Network,
    /// Forward signals to the entrypoint's whole process group.
    pub signal_group: bool,
    /// Give the container a pseudo-terminal as stdio (its controlling
    /// terminal, the entrypoint in the foreground); PID 1 copies its output
    /// to the console line by line, prefixed with the container's name.
    pub console: bool,
    /// An update commits only if this container runs through the commit
    /// window (no exit, no restart, no OOM kill).
    pub critical: bool,
    /// Volumes mounted into it.
    pub mounts: Vec<VolumeMount>,
    /// What it may ask PID 1 over the control socket (none: no socket).
    pub permissions: Vec<Permission>,
    /// Bytes of its stdout/stderr PID 1 keeps in memory (the log ring).
    pub log_size: u32,
    /// The networks it joins (`eth0`, `eth1`, ... in this order), each at
    /// the address the build fixed.
    pub networks: Vec<crate::network::Attachment>,
    /// Its health check, if it has one (see docs/appliance.md).
    pub health: Option<HealthCheck>,
    /// Ports of the device forwarded to it (on its first network with egress).
    pub publish: Vec<crate::network::Publish>,
}

/// A container's health check, with Docker's HEALTHCHECK timing: a check
/// is due every `interval_ms`; one that has not succeeded `timeout_ms`
/// after it was due is a failure; `retries` failures in a row make the
/// container unhealthy; failures within `start_period_ms` of its start do
/// not count (a success there makes it healthy at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What proves the container healthy.
    pub probe: HealthProbe,
    /// Time between checks, ms.
    pub interval_ms: u32,
    /// How late a check may be before it counts as failed, ms.
    pub timeout_ms: u32,
    /// Failures in a row that make it unhealthy.
    pub retries: u32,
    /// Grace after each start during which failures do not count, ms.
    pub start_period_ms: u32,
}

/// How a container proves its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthProbe {
    /// The container sends `heartbeat` on the control socket at least once
    /// per interval.
    Heartbeat,
    /// PID 1 runs this command inside the container every interval (as
    /// `cairn-ctl exec` would, with the entrypoint's identity and
    /// filters): exit status 0 is a success; any other status, or still
    /// running `timeout_ms` after it started (it is killed), a failure.
    /// `argv[0]` is an absolute path. Appended after `Heartbeat`, so a
    /// manifest without it decodes as before.
    Command(Vec<String>),
}

/// Most argv entries of a health check command.
pub const HEALTH_ARGS_MAX: usize = 32;

/// A right on the control socket (see docs/control.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// `status`, `ps`, `events`.
    Status,
    /// `logs`.
    Logs,
    /// `start`, `stop`, `restart`, `signal`.
    Lifecycle,
    /// `poweroff`, `reboot`.
    Power,
    /// `exec`.
    Exec,
    /// `update`.
    Update,
    /// `volume prune`: delete the data of volumes the manifest no longer
    /// names (appended: existing manifests decode as before).
    Volumes,
    /// `dns`: set the name servers of every container on a network with
    /// egress (appended, as `Volumes`).
    Network,
}

impl Permission {
    /// Every permission, in bit order.
    pub const ALL: [Permission; 8] = [
        Permission::Status,
        Permission::Logs,
        Permission::Lifecycle,
        Permission::Power,
        Permission::Exec,
        Permission::Update,
        Permission::Volumes,
        Permission::Network,
    ];

    /// Its name in appliance files, events and replies.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Status => "status",
            Permission::Logs => "logs",
            Permission::Lifecycle => "lifecycle",
            Permission::Power => "power",
            Permission::Exec => "exec",
            Permission::Update => "update",
            Permission::Volumes => "volumes",
            Permission::Network => "network",
        }
    }

    /// The permission called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Its bit in a permission mask.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Default size of a container's log ring.
pub const DEFAULT_LOG_SIZE: u32 = 64 * 1024;
/// Smallest log ring.
pub const MIN_LOG_SIZE: u32 = 4 * 1024;
/// Largest log ring.
pub const MAX_LOG_SIZE: u32 = 1024 * 1024;
/// Shortest health check interval, ms.
pub const HEALTH_INTERVAL_MIN_MS: u32 = 100;
/// Longest health check interval, timeout or start period, ms (one hour).
pub const HEALTH_TIME_MAX_MS: u32 = 3_600_000;
/// Most failures in a row a health check may allow.
pub const HEALTH_RETRIES_MAX: u32 = 100;

/// Isolation settings of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Capabilities kept in every set (bit n = capability n).
    pub capabilities: u64,
    /// Set `no_new_privs` (setuid binaries and file capabilities grant nothing).
    pub no_new_privs: bool,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Install the default seccomp filter.
    pub seccomp: bool,
    /// More syscalls to deny, by name.
    pub seccomp_deny: Vec<String>,
    /// Allow new user namespaces (denied by default).
    pub allow_userns: bool,
    /// Device nodes to create in the container's /dev.
    pub devices: Vec<Device>,
    /// Run the container in a user namespace of its own with these id maps
    /// (`None`: the host's, so container root is host root).
    pub userns: Option<UserNamespace>,
}

/// The id maps of a container's user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// User id ranges (written to `/proc/PID/uid_map`).
    pub uid_map: Vec<IdRange>,
    /// Group id ranges (written to `/proc/PID/gid_map`).
    pub gid_map: Vec<IdRange>,
}

/// One line of an id map: `count` ids from `inside` (in the container) are
/// `outside` onwards on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First id in the container.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdRange {
    /// The host id of `id` if this range maps it.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.inside)?;
        (off < self.count).then(|| self.outside.checked_add(off)).flatten()
    }
}

/// The host id of container id `id` under `map` (`None`: unmapped).
pub fn map_id(map: &[IdRange], id: u32) -> Option<u32> {
    map.iter().find_map(|r| r.host_id(id))
}

/// What is wrong with an id map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMapProblem {
    /// No ranges at all.
    Empty,
    /// A range of zero ids.
    ZeroCount,
    /// A range runs past the highest id (4294967294).
    Overflow,
    /// A range includes host id 0: host root inside the container.
    HostRoot,
    /// Two ranges share ids inside the container.
    OverlapInside,
    /// Two ranges share host ids.
    OverlapOutside,
}

impl fmt::Display for IdMapProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdMapProblem::Empty => "has no ranges",
            IdMapProblem::ZeroCount => "has a range with count 0",
            IdMapProblem::Overflow => "has a range that runs past id 4294967294",
            IdMapProblem::HostRoot => "maps host id 0 (host root) into the container",
            IdMapProblem::OverlapInside => "has two ranges that overlap inside the container",
            IdMapProblem::OverlapOutside => "has two ranges that overlap on the host",
        })
    }
}

/// Check one id map: at least one range (at most [`MAX_ID_RANGES`] is the
/// capacity), each non-empty, within the id space, not including host id
/// 0, and no two sharing an id on either side (the kernel refuses overlaps).
pub fn check_id_map(map: &[IdRange]) -> Result<(), IdMapProblem> {
    if map.is_empty() {
        return Err(IdMapProblem::Empty);
    }
    // (uid_t)-1 is never an id: a range ends at 2^32 - 1 at most (exclusive).
    let end = |start: u32, count: u32| u64::from(start) + u64::from(count);
    let crosses = |a: u32, ac: u32, b: u32, bc: u32| u64::from(a) < end(b, bc) && u64::from(b) < end(a, ac);
    for (i, r) in map.iter().enumerate() {
        if r.count == 0 {
            return Err(IdMapProblem::ZeroCount);
        }
        if end(r.inside, r.count) > u64::from(u32::MAX) || end(r.outside, r.count) > u64::from(u32::MAX) {
            return Err(IdMapProblem::Overflow);
        }
        if r.outside == 0 {
            return Err(IdMapProblem::HostRoot);
        }
        for o in map.iter().take(i) {
            if crosses(r.inside, r.count, o.inside, o.count) {
                return Err(IdMapProblem::OverlapInside);
            }
            if crosses(r.outside, r.count, o.outside, o.count) {
                return Err(IdMapProblem::OverlapOutside);
            }
        }
    }
    Ok(())
}

impl Default for Security {
    fn default() -> Self {
        Self {
            capabilities: DEFAULT_CAPABILITIES,
            no_new_privs: true,
            readonly_rootfs: false,
            seccomp: true,
            seccomp_deny: Vec::new(),
            allow_userns: false,
            devices: Vec::new(),
            userns: None,
        }
    }
}

/// A device node given to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Path inside the container, under /dev.
    pub path: String,
    /// The host device. Its type and numbers are read at start.
    pub source: DeviceSource,
    /// Permission bits of the node.
    pub mode: u16,
}

/// Where a container's device node comes from (`partition:NAME` or a
/// `/dev/` path in the appliance TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSource {
    /// A GPT partition of the boot disk, by partition name; never a system
    /// (`cairn-*`) partition.
    Partition(String),
    /// A device node of the host, a path under `/dev/`.
    Node(String),
}

impl DeviceSource {
    /// Read the TOML spelling: `partition:NAME`, or a path.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("partition:") {
            Some(name) => Self::Partition(name.into()),
            None => Self::Node(s.into()),
        }
    }
}

impl fmt::Display for DeviceSource {
    /// The TOML spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partition(name) => write!(f, "partition:{name}"),
            Self::Node(path) => f.write_str(path),
        }
    }
}

/// Network namespace of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A new namespace with only loopback (up).
    None,
    /// The device's own network namespace.
    Host,
    /// The namespace of another container (which must be started first).
    Join(Name),
}

/// Resource limits, written into the container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `memory.max` in bytes; `None` = unlimited.
    pub memory_max: Option<u64>,
    /// `cpu.max`; `None` = unlimited.
    pub cpu_max: Option<CpuMax>,
    /// `pids.max`; `None` = unlimited.
    pub pids_max: Option<u32>,
    /// Size cap of the tmpfs that holds the container's writable upper layer.
    pub scratch_bytes: u64,
    /// `memory.high` in bytes (throttling point).
    pub memory_high: Option<u64>,
    /// `memory.swap.max` in bytes.
    pub memory_swap_max: Option<u64>,
    /// `cpu.weight` (1 to 10000).
    pub cpu_weight: Option<u16>,
    /// `cpuset.cpus`, e.g. "0-1".
    pub cpuset_cpus: Option<String>,
    /// `io.max` entries.
    pub io_max: Vec<IoMax>,
    /// Resource limits (setrlimit) of the entrypoint.
    pub rlimits: Vec<Rlimit>,
}

/// One `io.max` line: a disk and its limits (`None` = max).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoMax {
    /// Kernel name of the disk (e.g. "vda"); io.max applies to whole disks.
    pub device: Name,
    /// Read bytes per second.
    pub rbps: Option<u64>,
    /// Write bytes per second.
    pub wbps: Option<u64>,
    /// Read operations per second.
    pub riops: Option<u64>,
    /// Write operations per second.
    pub wiops: Option<u64>,
}

/// A resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Which resource.
    pub resource: RlimitResource,
    /// Soft limit (`u64::MAX` = unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX` = unlimited).
    pub hard: u64,
}

/// Resources settable with setrlimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl RlimitResource {
    /// Parse a lowercase name ("nofile").
    pub fn from_name(s: &str) -> Option<Self> {
        use RlimitResource::*;
        Some(match s {
            "nofile" => Nofile,
            "nproc" => Nproc,
            "core" => Core,
            "memlock" => Memlock,
            "stack" => Stack,
            "fsize" => Fsize,
            "as" => As,
            "cpu" => Cpu,
            "nice" => Nice,
            "rtprio" => Rtprio,
            "sigpending" => Sigpending,
            "msgqueue" => Msgqueue,
            _ => return None,
        })
    }

    /// The lowercase name [`RlimitResource::from_name`] reads.
    pub fn name(self) -> &'static str {
        use RlimitResource::*;
        match self {
            Nofile => "nofile",
            Nproc => "nproc",
            Core => "core",
            Memlock => "memlock",
            Stack => "stack",
            Fsize => "fsize",
            As => "as",
            Cpu => "cpu",
            Nice => "nice",
            Rtprio => "rtprio",
            Sigpending => "sigpending",
            Msgqueue => "msgqueue",
        }
    }
}

/// CPU bandwidth: `quota_us` of CPU time in every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    /// Microseconds of CPU per period.
    pub quota_us: u32,
    /// Period length in microseconds.
    pub period_us: u32,
}

/// Restart policy and backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubled after each one.
    pub backoff_initial_ms: u32,
    /// Upper bound of the delay.
    pub backoff_max_ms: u32,
}

/// When a container is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never restarted.
    Never,
    /// Restarted after a non-zero exit or a signal, at most `max_restarts` times.
    OnFailure {
        /// Restarts allowed before it is left stopped.
        max_restarts: u32,
    },
    /// Always restarted, whatever the exit status.
    Always,
}

/// How a container is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// Signal sent first (forwarded to the entrypoint).
    pub signal: u8,
    /// Time allowed before the whole cgroup is killed.
    pub grace_ms: u32,
}

/// Lower bounds and upper bounds the device enforces.
pub mod bounds {
    /// Smallest `memory.max` (1 MiB).
    pub const MEMORY_MIN: u64 = 1 << 20;
    /// Smallest cpu period and quota (1 ms), as the kernel requires.
    pub const CPU_US_MIN: u32 = 1000;
    /// Largest cpu period (1 s), as the kernel requires.
    pub const CPU_PERIOD_MAX: u32 = 1_000_000;
    /// Smallest scratch tmpfs (64 KiB).
    pub const SCRATCH_MIN: u64 = 64 << 10;
    /// Longest stop grace period (10 minutes).
    pub const GRACE_MAX_MS: u32 = 600_000;
    /// Longest backoff (1 hour).
    pub const BACKOFF_MAX_MS: u32 = 3_600_000;
    /// Smallest volume (64 KiB).
    pub const VOLUME_MIN: u64 = 64 << 10;
}

/// A reason the manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// A string is longer than its bound.
    TooLong {
        /// Which field (`container "web": argv[3]`).
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A list has more entries than its bound.
    TooMany {
        /// Which field (`container "web": env`).
        field: String,
        /// Its number of entries.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A name is empty or uses characters other than `[a-z0-9-]`.
    BadName(Name),
    /// Two layers share a name.
    DuplicateLayer(Name),
    /// Two containers share a name.
    DuplicateContainer(Name),
    /// No containers at all.
    NoContainers,
    /// A container names a layer the manifest does not list.
    UnknownLayer {
        /// The container.
        container: Name,
        /// The missing layer.
        layer: Name,
    },
    /// A container has no layers.
    NoLayers(Name),
    /// A container names an unknown dependency.
    UnknownDependency {
        /// The container.
        container: Name,
        /// The missing dependency.
        dependency: Name,
    },
    /// The dependencies form a cycle through this container.
    DependencyCycle(Name),
    /// Empty argv or a relative entrypoint path.
    BadEntrypoint(Name),
    /// An environment entry without `=`.
    BadEnv(Name),
    /// Working directory not absolute.
    BadCwd(Name),
    /// Hostname not a valid DNS label.
    BadHostname(Name),
    /// A limit out of the range the kernel or the device accepts.
    LimitOutOfRange {
        /// The container.
        container: Name,
        /// Which limit.
        limit: &'static str,
    },
    /// A stop signal outside 1..=31.
    BadStopSignal(Name),
    /// Layer size zero.
    EmptyLayer(Name),
    /// A layer whose hash tree geometry does not match its size.
    BadVerity(Name),
    /// Joins another container's network without depending on it.
    NetworkJoin {
        /// The container.
        container: Name,
        /// The one whose network it joins.
        other: Name,
    },
    /// An id map of the user namespace is malformed.
    BadIdMap {
        /// The container.
        container: Name,
        /// "uid_map" or "gid_map".
        map: &'static str,
        /// What is wrong.
        problem: IdMapProblem,
    },
    /// The user namespace setting cannot work with the rest of the container.
    BadUserNamespace {
        /// The container.
        container: Name,
        /// What is wrong.
        reason: &'static str,
    },
    /// The compatibility string is empty or uses characters other than
    /// `[A-Za-z0-9._,+-]`.
    BadCompatible,
    /// `update.floor` is above `version`: the manifest would refuse itself.
    FloorAboveVersion {
        /// The floor.
        floor: u64,
        /// The version.
        version: u64,
    },
    /// `update.tries` or `update.commit_after_ms` is out of range.
    BadUpdatePolicy(&'static str),
    /// A device entry breaks a rule.
    BadDevice {
        /// The container.
        container: Name,
        /// Its index in `security.devices`.
        index: usize,
        /// The field: "path" or "source".
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A volume or a container's volume mount breaks a rule (the whole
    /// sentence, naming the volume or the container and mount).
    BadVolume(String),
    /// A network or a container's attachment breaks a rule (the whole
    /// sentence).
    BadNetwork(String),
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ValidationError::*;
        match self {
            TooLong { field, len, max } => write!(f, "{field} is {len} bytes long, the most is {max}"),
            TooMany { field, len, max } => write!(f, "{field} has {len} entries, the most is {max}"),
            BadName(n) => {
                write!(f, "name {n:?} must be [a-z0-9-], 1 to {NAME_LEN} characters, starting with a letter or digit")
            }
            DuplicateLayer(n) => write!(f, "layer {n:?} is listed twice"),
            DuplicateContainer(n) => write!(f, "container {n:?} is listed twice"),
            NoContainers => write!(f, "the manifest has no containers"),
            UnknownLayer { container, layer } => write!(f, "container {container:?} uses unknown layer {layer:?}"),
            NoLayers(c) => write!(f, "container {c:?} has no layers"),
            UnknownDependency { container, dependency } => {
                write!(f, "container {container:?} depends on unknown container {dependency:?}")
            }
            DependencyCycle(c) => write!(f, "dependency cycle through container {c:?}"),
            BadEntrypoint(c) => write!(f, "container {c:?}: argv must be non-empty and argv[0] an absolute path"),
            BadEnv(c) => write!(f, "container {c:?}: environment entries must be KEY=value"),
            BadCwd(c) => write!(f, "container {c:?}: working directory must be absolute"),
            BadHostname(c) => write!(f, "container {c:?}: hostname must be a DNS label"),
            LimitOutOfRange { container, limit } => write!(f, "container {container:?}: {limit} is out of range"),
            BadStopSignal(c) => write!(f, "container {c:?}: stop signal must be 1 to 31"),
            EmptyLayer(l) => write!(f, "layer {l:?} has size 0"),
            BadVerity(l) => write!(f, "layer {l:?}: its verity data blocks and hash offset do not match its size"),
            NetworkJoin { container, other } => {
                write!(f, "container {container:?} joins the network of {other:?} and must list it in depends_on")
            }
            BadIdMap { container, map, problem } => {
                write!(f, "container {container:?}: security.userns.{map} {problem}")
            }
            BadUserNamespace { container, reason } => write!(f, "container {container:?}: security.userns: {reason}"),
            BadCompatible => write!(
                f,
                "compatible must be 1 to {COMPATIBLE_LEN} characters of [A-Za-z0-9._,+-] (the product the manifest is for)"
            ),
            FloorAboveVersion { floor, version } => {
                write!(f, "update.floor {floor} is above version {version}: the device would refuse the manifest")
            }
            BadUpdatePolicy(what) => write!(f, "update.{what} is out of range"),
            BadDevice { container, index, field, reason } => {
                write!(f, "container {container:?}: security.devices[{index}].{field}: {reason}")
            }
            BadVolume(what) | BadNetwork(what) => f.write_str(what),
        }
    }
}

/// True for `[a-z0-9][a-z0-9-]*`, at most [`NAME_LEN`] bytes.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > NAME_LEN {
        return false;
    }
    match b.first() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return false,
    }
    b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_valid_hostname(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= HOSTNAME_LEN
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

impl Manifest {
    /// Find a layer by name.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name.as_str() == name)
    }

    /// Whether a volume lives on the data partition (a persistent one).
    pub fn has_persistent_volumes(&self) -> bool {
        self.volumes.iter().any(|v| v.kind == VolumeKind::Persistent)
    }

    /// Find a container by name, with its index.
    pub fn container(&self, name: &str) -> Option<(usize, &Container)> {
        self.containers.iter().enumerate().find(|(_, c)| c.name.as_str() == name)
    }

    /// Container indexes in start order (dependencies first, ties in
    /// manifest order); stop order is the reverse. Unknown dependency names
    /// are ignored here (validation reports them).
    pub fn start_order(&self) -> Result<order::Order, order::OrderError> {
        let deps: Vec<Vec<usize>> = self
            .containers
            .iter()
            .map(|c| c.depends_on.iter().filter_map(|d| self.container(d).map(|(j, _)| j)).collect())
            .collect();
        order::start_order(&deps)
    }

    /// Check every rule the device relies on. Returns the first problem.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut first = None;
        self.for_each_problem(|e| {
            if first.is_none() {
                first = Some(e);
            }
        });
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Report every problem, for host tools that want them all.
    pub fn for_each_problem(&self, mut report: impl FnMut(ValidationError)) {
        use ValidationError::*;
        check_bounds(self, &mut report);
        if !is_valid_name(&self.appliance) {
            report(BadName(self.appliance.clone()));
        }
        if !is_valid_compatible(&self.compatible) {
            report(BadCompatible);
        }
        let u = &self.update;
        if u.floor > self.version {
            report(FloorAboveVersion { floor: u.floor, version: self.version });
        }
        if u.tries == 0 || u.tries > UpdatePolicy::TRIES_MAX {
            report(BadUpdatePolicy("tries (1 to 15)"));
        }
        if u.commit_after_ms > UpdatePolicy::COMMIT_AFTER_MAX_MS {
            report(BadUpdatePolicy("commit_after_ms (at most one day)"));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if !is_valid_name(&l.name) {
                report(BadName(l.name.clone()));
            }
            if self.layers.iter().take(i).any(|o| o.name == l.name) {
                report(DuplicateLayer(l.name.clone()));
            }
            if l.size == 0 {
                report(EmptyLayer(l.name.clone()));
            }
            if !verity_fits(l) {
                report(BadVerity(l.name.clone()));
            }
        }
        if self.containers.is_empty() {
            report(NoContainers);
        }
        for (i, c) in self.containers.iter().enumerate() {
            check_container(self, i, c, &mut report);
        }
        if let Err(order::OrderError::Cycle(idx)) = self.start_order() {
            if let Some(c) = self.containers.get(idx) {
                report(DependencyCycle(c.name.clone()));
            }
        }
        check_volumes(self, &mut report);
        crate::network::check(self, |s| report(BadNetwork(s)));
    }

    /// Find a volume by name.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name.as_str() == name)
    }

    /// The host uid and gid a volume's top directory belongs to: those of
    /// the first container (manifest order) that mounts it read-write,
    /// else of the first that mounts it at all, mapped through its user
    /// namespace; `None` if no container mounts it (or the ids are not
    /// mapped, which validation refuses).
    pub fn volume_owner(&self, volume: &str) -> Option<(u32, u32)> {
        let mounters = || self.containers.iter().filter(move |c| c.mounts.iter().any(|m| m.volume == volume));
        let rw = |c: &&Container| c.mounts.iter().any(|m| m.volume == volume && !m.readonly);
        let c = mounters().find(rw).or_else(|| mounters().next())?;
        host_ids(c)
    }
}

/// The host uid and gid of a container's uid and gid (through its user
/// namespace, if it has one).
pub fn host_ids(c: &Container) -> Option<(u32, u32)> {
    match &c.security.userns {
        None => Some((c.uid, c.gid)),
        Some(u) => Some((map_id(&u.uid_map, c.uid)?, map_id(&u.gid_map, c.gid)?)),
    }
}

/// Paths a volume may not be mounted on or under: the container's own
/// pseudo filesystems (mounted over it or refusing it) and the control
/// socket's directory.
pub const MOUNT_RESERVED: [&str; 4] = ["/proc", "/sys", "/dev", "/run/cairn"];

/// A volume mount's path inside the container: absolute, normalised (no
/// empty, `.` or `..` component, no trailing `/`), not `/`, not on or
/// under [`MOUNT_RESERVED`].
pub fn check_mount_path(path: &str) -> Result<(), &'static str> {
    let rest = path.strip_prefix('/').ok_or("must be an absolute path")?;
    if rest.is_empty() {
        return Err("cannot be / (the container's root)");
    }
    if rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must be normalised (no empty, . or .. components, no trailing /)");
    }
    if path.len() > PATH_LEN || path.contains('\0') {
        return Err("is too long or holds a NUL byte");
    }
    if MOUNT_RESERVED.iter().any(|r| path_within(path, r)) {
        return Err("is on or under /proc, /sys, /dev or /run/cairn (the container's own mounts)");
    }
    Ok(())
}

/// `path` is `dir` or below it (component-wise).
fn path_within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The volume rules: names, sizes and modes of `[[volume]]`, and each
/// container's mounts (known volume, path, no overlap, at most one mount
/// of a volume), and that the containers writing one volume agree on its
/// host owner.
fn check_volumes(m: &Manifest, report: &mut impl FnMut(ValidationError)) {
    let mut bad = |s: String| report(ValidationError::BadVolume(s));
    if m.volumes.len() > MAX_VOLUMES {
        bad(format!("volumes has {} entries, the most is {MAX_VOLUMES}", m.volumes.len()));
    }
    for (i, v) in m.volumes.iter().enumerate() {
        if !is_valid_name(&v.name) {
            bad(format!("volume {:?}: name must be [a-z0-9-], 1 to {NAME_LEN} characters", v.name));
        }
        if m.volumes.iter().take(i).any(|o| o.name == v.name) {
            bad(format!("volume {:?} is listed twice", v.name));
        }
        if v.size_bytes < bounds::VOLUME_MIN {
            bad(format!("volume {:?}: size {} is below the smallest, 64 KiB", v.name, v.size_bytes));
        }
        if v.mode & !0o1777 != 0 {
            bad(format!("volume {:?}: mode {:o} may hold permission and sticky bits only", v.name, v.mode));
        }
    }
    for c in &m.containers {
        if c.mounts.len() > MAX_MOUNTS {
            bad(format!("container {:?}: mounts has {} entries, the most is {MAX_MOUNTS}", c.name, c.mounts.len()));
        }
        for (i, mt) in c.mounts.iter().enumerate() {
            let at = || format!("container {:?}: mounts[{i}] ({})", c.name, mt.volume);
            if m.volume(&mt.volume).is_none() {
                bad(format!("{}: unknown volume {:?}", at(), mt.volume));
            }
            if let Err(why) = check_mount_path(&mt.path) {
                bad(format!("{}: path {:?} {why}", at(), mt.path));
            }
            for (j, o) in c.mounts.iter().enumerate().take(i) {
                if o.volume == mt.volume {
                    bad(format!("{}: volume {:?} is mounted twice (also mounts[{j}])", at(), mt.volume));
                }
                if path_within(&mt.path, &o.path) || path_within(&o.path, &mt.path) {
                    bad(format!("{}: path {:?} overlaps mounts[{j}] at {:?}", at(), mt.path, o.path));
                }
            }
        }
    }
    for v in &m.volumes {
        let mut writers = m
            .containers
            .iter()
            .filter(|c| c.mounts.iter().any(|mt| mt.volume == v.name && !mt.readonly))
            .filter_map(|c| host_ids(c).map(|ids| (c, ids)));
        if let Some((first, ids)) = writers.next() {
            for (c, other) in writers {
                if other != ids {
                    bad(format!(
                        "volume {:?}: containers {:?} and {:?} write it as different host owners ({}:{} and {}:{}); \
                         use the same uid/gid (and user namespace maps) or mount it read-only in one",
                        v.name, first.name, c.name, ids.0, ids.1, other.0, other.1
                    ));
                }
            }
        }
    }
}

/// The hash tree's geometry agrees with the image: every block of the
/// image is covered, and the tree starts on a block boundary after it.
fn verity_fits(l: &Layer) -> bool {
    let v = &l.verity;
    v.data_blocks == verity::data_blocks(l.size)
        && v.hash_offset.is_multiple_of(verity::BLOCK)
        && v.hash_offset / verity::BLOCK >= v.data_blocks
        && v.hash_offset.checked_add(verity::tree_blocks(v.data_blocks).saturating_mul(verity::BLOCK)).is_some()
}

/// The size rules: every list and string within its bound. A name, a
/// hostname or `compatible` over its bound is reported by its own rule.
fn check_bounds(m: &Manifest, report: &mut impl FnMut(ValidationError)) {
    let mut many = |field: &dyn Fn() -> String, len: usize, max: usize| {
        if len > max {
            report(ValidationError::TooMany { field: field(), len, max });
        }
    };
    many(&|| "layers".into(), m.layers.len(), MAX_LAYERS);
    many(&|| "containers".into(), m.containers.len(), MAX_CONTAINERS);
    for c in &m.containers {
        let at = |f: &str| format!("container {:?}: {f}", c.name);
        let s = &c.security;
        many(&|| at("layers"), c.layers.len(), MAX_CONTAINER_LAYERS);
        many(&|| at("argv"), c.argv.len(), MAX_ARGS);
        many(&|| at("env"), c.env.len(), MAX_ENV);
        many(&|| at("depends_on"), c.depends_on.len(), MAX_DEPS);
        many(&|| at("groups"), c.groups.len(), MAX_GROUPS);
        many(&|| at("security.seccomp_deny"), s.seccomp_deny.len(), MAX_SECCOMP_DENY);
        many(&|| at("security.devices"), s.devices.len(), MAX_DEVICES);
        many(&|| at("limits.io_max"), c.limits.io_max.len(), MAX_IO_LIMITS);
        many(&|| at("limits.rlimits"), c.limits.rlimits.len(), MAX_RLIMITS);
        if let Some(u) = &s.userns {
            many(&|| at("security.userns.uid_map"), u.uid_map.len(), MAX_ID_RANGES);
            many(&|| at("security.userns.gid_map"), u.gid_map.len(), MAX_ID_RANGES);
        }
    }
    let mut long = |field: &dyn Fn() -> String, len: usize, max: usize| {
        if len > max {
            report(ValidationError::TooLong { field: field(), len, max });
        }
    };
    for c in &m.containers {
        let at = |f: &str| format!("container {:?}: {f}", c.name);
        for (i, a) in c.argv.iter().enumerate() {
            long(&|| at(&format!("argv[{i}]")), a.len(), ARG_LEN);
        }
        for (i, e) in c.env.iter().enumerate() {
            long(&|| at(&format!("env[{i}]")), e.len(), ARG_LEN);
        }
        long(&|| at("cwd"), c.cwd.len(), PATH_LEN);
        for (i, n) in c.security.seccomp_deny.iter().enumerate() {
            long(&|| at(&format!("security.seccomp_deny[{i}]")), n.len(), SYSCALL_LEN);
        }
        for (i, d) in c.security.devices.iter().enumerate() {
            long(&|| at(&format!("security.devices[{i}].path")), d.path.len(), PATH_LEN);
            let (DeviceSource::Partition(src) | DeviceSource::Node(src)) = &d.source;
            long(&|| at(&format!("security.devices[{i}].source")), src.len(), PATH_LEN);
        }
        if let Some(cpus) = &c.limits.cpuset_cpus {
            long(&|| at("limits.cpuset_cpus"), cpus.len(), CPUSET_LEN);
        }
    }
}

fn check_container(m: &Manifest, i: usize, c: &Container, report: &mut impl FnMut(ValidationError)) {
    use ValidationError::*;
    let name = || c.name.clone();
    if !is_valid_name(&c.name) {
        report(BadName(name()));
    }
    if m.containers.iter().take(i).any(|o| o.name == c.name) {
        report(DuplicateContainer(name()));
    }
    if c.layers.is_empty() {
        report(NoLayers(name()));
    }
    for l in &c.layers {
        if m.layer(l).is_none() {
            report(UnknownLayer { container: name(), layer: l.clone() });
        }
    }
    for d in &c.depends_on {
        if m.container(d).is_none() || *d == c.name {
            report(UnknownDependency { container: name(), dependency: d.clone() });
        }
    }
    if !c.argv.first().is_some_and(|a| a.starts_with('/')) {
        report(BadEntrypoint(name()));
    }
    if c.env.iter().any(|e| e.find('=').is_none_or(|p| p == 0)) {
        report(BadEnv(name()));
    }
    if !c.cwd.starts_with('/') {
        report(BadCwd(name()));
    }
    if !is_valid_hostname(&c.hostname) {
        report(BadHostname(name()));
    }
    let mut limit = |ok: bool, limit: &'static str| {
        if !ok {
            report(LimitOutOfRange { container: name(), limit });
        }
    };
    let l = &c.limits;
    limit(l.memory_max.is_none_or(|m| m >= bounds::MEMORY_MIN), "memory_max");
    limit(
        l.cpu_max.is_none_or(|c| {
            c.quota_us >= bounds::CPU_US_MIN && (bounds::CPU_US_MIN..=bounds::CPU_PERIOD_MAX).contains(&c.period_us)
        }),
        "cpu_max",
    );
    limit(l.pids_max.is_none_or(|p| p >= 1), "pids_max");
    limit(l.scratch_bytes >= bounds::SCRATCH_MIN, "scratch_bytes");
    limit(l.memory_high.is_none_or(|m| m >= bounds::MEMORY_MIN), "memory_high");
    limit(l.cpu_weight.is_none_or(|w| (1..=10_000).contains(&w)), "cpu_weight");
    limit(
        l.cpuset_cpus
            .as_ref()
            .is_none_or(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b'-')),
        "cpuset_cpus",
    );
    limit(l.io_max.iter().all(|io| is_valid_disk_name(&io.device)), "io_max device");
    limit(l.rlimits.iter().all(|r| r.soft <= r.hard), "rlimit soft above hard");
    for (index, d) in c.security.devices.iter().enumerate() {
        if let Err(reason) = check_device_path(&d.path) {
            report(BadDevice { container: name(), index, field: "path", reason });
        }
        if let Err(reason) = check_device_source(&d.source) {
            report(BadDevice { container: name(), index, field: "source", reason });
        }
    }
    let mut limit = |ok: bool, limit: &'static str| {
        if !ok {
            report(LimitOutOfRange { container: name(), limit });
        }
    };
    limit(c.security.capabilities >> CAPABILITY_NAMES.len() == 0, "capabilities");
    limit(c.stop.grace_ms <= bounds::GRACE_MAX_MS, "stop grace_ms");
    limit((MIN_LOG_SIZE..=MAX_LOG_SIZE).contains(&c.log_size), "log_size");
    limit(
        c.permissions.iter().enumerate().all(|(k, p)| !c.permissions.iter().take(k).any(|q| q == p)),
        "permissions (one twice)",
    );
    if let Some(h) = &c.health {
        limit((HEALTH_INTERVAL_MIN_MS..=HEALTH_TIME_MAX_MS).contains(&h.interval_ms), "health interval_ms");
        limit(h.timeout_ms <= HEALTH_TIME_MAX_MS, "health timeout_ms");
        limit(h.start_period_ms <= HEALTH_TIME_MAX_MS, "health start_period_ms");
        limit((1..=HEALTH_RETRIES_MAX).contains(&h.retries), "health retries");
        if let HealthProbe::Command(argv) = &h.probe {
            // A probe given no time at all could only ever fail.
            limit(h.timeout_ms >= HEALTH_INTERVAL_MIN_MS, "health timeout_ms");
            limit(
                (1..=HEALTH_ARGS_MAX).contains(&argv.len())
                    && argv.first().is_some_and(|a| a.starts_with('/'))
                    && argv.iter().all(|a| a.len() <= ARG_LEN && !a.contains('\0')),
                "health command",
            );
        }
    }
    let r = &c.restart;
    limit(r.backoff_initial_ms <= r.backoff_max_ms && r.backoff_max_ms <= bounds::BACKOFF_MAX_MS, "restart backoff");
    if !(1..=31).contains(&c.stop.signal) {
        report(BadStopSignal(name()));
    }
    if let Network::Join(other) = &c.network {
        if !c.depends_on.contains(other) {
            report(NetworkJoin { container: name(), other: other.clone() });
        }
    }
    if let Some(u) = &c.security.userns {
        for (map, ranges) in [("uid_map", &u.uid_map), ("gid_map", &u.gid_map)] {
            if let Err(problem) = check_id_map(ranges) {
                report(BadIdMap { container: name(), map, problem });
            }
        }
        userns_problems(c, u, |reason| report(BadUserNamespace { container: name(), reason }));
    }
}

/// What does not fit together between a container and its user namespace.
fn userns_problems(c: &Container, u: &UserNamespace, mut report: impl FnMut(&'static str)) {
    let mut check = |ok: bool, reason: &'static str| {
        if !ok {
            report(reason);
        }
    };
    // The namespace init runs as root of the namespace.
    check(map_id(&u.uid_map, 0).is_some(), "uid 0 must be mapped (the namespace init runs as root inside)");
    check(map_id(&u.gid_map, 0).is_some(), "gid 0 must be mapped (the namespace init runs as root inside)");
    check(map_id(&u.uid_map, c.uid).is_some(), "the container's uid is not in uid_map");
    check(map_id(&u.gid_map, c.gid).is_some(), "the container's gid is not in gid_map");
    check(c.groups.iter().all(|g| map_id(&u.gid_map, *g).is_some()), "a supplementary group is not in gid_map");
    check(
        c.network == Network::None,
        "needs network = \"none\" (sysfs and the network of the host or of another container belong to the host's user namespace)",
    );
    check(
        c.security.devices.is_empty(),
        "cannot be combined with devices (a host device node stays owned by host root, unusable inside)",
    );
}

/// True for a compatibility string: 1 to [`COMPATIBLE_LEN`] characters of
/// `[A-Za-z0-9._,+-]`.
pub fn is_valid_compatible(s: &str) -> bool {
    !s.is_empty() && s.len() <= COMPATIBLE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._,+-".contains(&b))
}

/// A device node's path inside the container: under `/dev/`, no `..`
/// component, nothing but the name after `/dev/`.
pub fn check_device_path(path: &str) -> Result<(), &'static str> {
    let rest = path.strip_prefix("/dev/").ok_or("must be under /dev/")?;
    if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must name a node under /dev/ (no empty, . or .. components)");
    }
    Ok(())
}

/// A device source: a partition of the boot disk that is not a system
/// (`cairn-*`) partition, or a path under `/dev/`. The device also refuses
/// a source that turns out to be the boot disk or one of its system
/// partitions (checked by device number at start).
pub fn check_device_source(source: &DeviceSource) -> Result<(), &'static str> {
    match source {
        DeviceSource::Partition(part) => {
            if part.starts_with(SYSTEM_PARTITION_PREFIX) {
                return Err("names a system (cairn-*) partition: state, manifest slots, layers and data are PID 1's");
            }
            if part.is_empty() || part.contains('/') {
                return Err("partition:NAME needs a GPT partition name");
            }
            Ok(())
        }
        DeviceSource::Node(path) => {
            check_device_path(path)
                .map_err(|_| "must be partition:NAME or a node under /dev/ (no empty, . or .. components)")?;
            if path.starts_with("/dev/mapper/") || path.starts_with("/dev/dm-") {
                return Err("names a device-mapper node: the layers' verity targets are PID 1's");
            }
            Ok(())
        }
    }
}

fn is_valid_disk_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn s(v: &str) -> String {
        v.to_owned()
    }

    pub fn container(name: &str, deps: &[&str]) -> Container {
        Container {
            name: s(name),
            layers: vec![s("base")],
            argv: vec![s("/bin/app")],
            env: vec![s("PATH=/bin")],
            cwd: s("/"),
            hostname: s(name),
            uid: 0,
            gid: 0,
            limits: Limits {
                memory_max: Some(16 << 20),
                cpu_max: Some(CpuMax { quota_us: 50_000, period_us: 100_000 }),
                pids_max: Some(32),
                scratch_bytes: 1 << 20,
                memory_high: None,
                memory_swap_max: None,
                cpu_weight: None,
                cpuset_cpus: None,
                io_max: Vec::new(),
                rlimits: Vec::new(),
            },
            restart: Restart {
                policy: RestartPolicy::OnFailure { max_restarts: 3 },
                backoff_initial_ms: 100,
                backoff_max_ms: 1000,
            },
            depends_on: deps.iter().map(|d| s(d)).collect(),
            stop: Stop { signal: 15, grace_ms: 2000 },
            groups: Vec::new(),
            security: Security::default(),
            network: Network::None,
            signal_group: false,
            console: false,
            critical: true,
            mounts: Vec::new(),
            permissions: Vec::new(),
            log_size: DEFAULT_LOG_SIZE,
            networks: Vec::new(),
            health: None,
            publish: Vec::new(),
        }
    }

    #[test]
    fn health_checks_are_checked() {
        let mut c = container("web", &[]);
        let ok = HealthCheck {
            probe: HealthProbe::Heartbeat,
            interval_ms: 1000,
            timeout_ms: 0,
            retries: 1,
            start_period_ms: 0,
        };
        c.health = Some(ok.clone());
        assert_eq!(manifest(&[c.clone()]).validate(), Ok(()));
        type Spoil = (fn(&mut HealthCheck), &'static str);
        let bad: [Spoil; 5] = [
            (|h| h.interval_ms = HEALTH_INTERVAL_MIN_MS - 1, "health interval_ms"),
            (|h| h.interval_ms = HEALTH_TIME_MAX_MS + 1, "health interval_ms"),
            (|h| h.timeout_ms = HEALTH_TIME_MAX_MS + 1, "health timeout_ms"),
            (|h| h.retries = 0, "health retries"),
            (|h| h.start_period_ms = HEALTH_TIME_MAX_MS + 1, "health start_period_ms"),
        ];
        for (spoil, what) in bad {
            let mut h = ok.clone();
            spoil(&mut h);
            c.health = Some(h);
            assert!(
                matches!(manifest(&[c.clone()]).validate(), Err(ValidationError::LimitOutOfRange { limit, .. }) if limit == what),
                "{what}"
            );
        }
        // The command form: an absolute argv[0], a few bounded arguments,
        // and time to run.
        let cmd = |argv: &[&str], timeout_ms: u32| HealthCheck {
            probe: HealthProbe::Command(argv.iter().map(|a| s(a)).collect()),
            timeout_ms,
            ..ok.clone()
        };
        c.health = Some(cmd(&["/bin/check", "--quick"], 500));
        assert_eq!(manifest(&[c.clone()]).validate(), Ok(()));
        let many = vec!["/bin/check"; HEALTH_ARGS_MAX + 1];
        let long = "x".repeat(ARG_LEN + 1);
        for (h, what) in [
            (cmd(&["/bin/check"], HEALTH_INTERVAL_MIN_MS - 1), "health timeout_ms"),
            (cmd(&[], 500), "health command"),
            (cmd(&["check"], 500), "health command"),
            (cmd(&many, 500), "health command"),
            (cmd(&["/bin/check", &long], 500), "health command"),
            (cmd(&["/bin/check", "a\0b"], 500), "health command"),
        ] {
            c.health = Some(h);
            assert!(
                matches!(manifest(&[c.clone()]).validate(), Err(ValidationError::LimitOutOfRange { limit, .. }) if limit == what),
                "{what}"
            );
        }
    }

    #[test]
    fn permissions_and_log_size_are_checked() {
        let mut c = container("web", &[]);
        c.permissions = vec![Permission::Status, Permission::Power];
        assert_eq!(manifest(&[c.clone()]).validate(), Ok(()));
        c.permissions.push(Permission::Status);
        assert!(matches!(
            manifest(&[c.clone()]).validate(),
            Err(ValidationError::LimitOutOfRange { limit: "permissions (one twice)", .. })
        ));
        c.permissions.pop();
        for bad in [0, MIN_LOG_SIZE - 1, MAX_LOG_SIZE + 1] {
            c.log_size = bad;
            assert!(matches!(
                manifest(&[c.clone()]).validate(),
                Err(ValidationError::LimitOutOfRange { limit: "log_size", .. })
            ));
        }
        for p in Permission::ALL {
            assert_eq!(Permission::from_name(p.name()), Some(p));
        }
        assert_eq!(Permission::from_name("root"), None);
    }

    /// Verity parameters that fit an image of `size` bytes.
    pub fn test_verity(size: u64) -> crate::verity::Verity {
        let blocks = crate::verity::data_blocks(size);
        crate::verity::Verity {
            data_blocks: blocks,
            hash_offset: blocks * 4096,
            salt: [1; 32],
            root_hash: Digest([2; 32]),
        }
    }

    #[test]
    fn verity_geometry_must_match_the_size() {
        let mut m = manifest(&[container("a", &[])]);
        assert!(m.validate().is_ok());
        m.layers[0].verity.data_blocks = 2;
        assert_eq!(m.validate(), Err(ValidationError::BadVerity(s("base"))));
        m.layers[0].verity = test_verity(4096);
        m.layers[0].verity.hash_offset = 4095;
        assert_eq!(m.validate(), Err(ValidationError::BadVerity(s("base"))));
        m.layers[0].verity.hash_offset = 0;
        assert_eq!(m.validate(), Err(ValidationError::BadVerity(s("base"))));
    }

    pub fn manifest(containers: &[Container]) -> Manifest {
        Manifest {
            appliance: s("demo"),
            version: 1,
            compatible: s("cairn-test"),
            layer_check: LayerCheck::default(),
            layers: vec![Layer { name: s("base"), digest: Digest([7; 32]), size: 4096, verity: test_verity(4096) }],
            containers: containers.to_vec(),
            update: UpdatePolicy::for_version(1),
            volumes: Vec::new(),
            networks: Vec::new(),
        }
    }

    fn problems(m: &Manifest) -> std::vec::Vec<ValidationError> {
        let mut v = std::vec::Vec::new();
        m.for_each_problem(|e| v.push(e));
        v
    }

    #[test]
    fn a_good_manifest_validates_and_round_trips_through_postcard() {
        let m = manifest(&[container("db", &[]), container("web", &["db"])]);
        assert_eq!(m.validate(), Ok(()));
        let bytes = postcard::to_allocvec(&m).unwrap();
        let back: Manifest = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn start_order_follows_depends_on_by_name() {
        let m = manifest(&[
            container("web", &["api", "db"]),
            container("api", &["db"]),
            container("log", &[]),
            container("db", &[]),
        ]);
        let names: std::vec::Vec<&str> =
            m.start_order().unwrap().iter().map(|i| m.containers[*i].name.as_str()).collect();
        assert_eq!(names, ["log", "db", "api", "web"]);
        let m = manifest(&[container("a", &["ghost"])]);
        assert_eq!(m.start_order(), Ok(vec![0]), "unknown names are validation's to report");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut bad = container("Web", &["nope"]);
        bad.layers = vec![s("missing")];
        bad.argv = vec![s("relative")];
        bad.env = vec![s("NOEQUALS")];
        bad.cwd = s("tmp");
        bad.hostname = s("-x");
        bad.limits.memory_max = Some(10);
        bad.limits.cpu_max = Some(CpuMax { quota_us: 10, period_us: 100_000 });
        bad.limits.pids_max = Some(0);
        bad.stop.signal = 0;
        let m = manifest(&[bad]);
        let p = problems(&m);
        let has = |f: &dyn Fn(&ValidationError) -> bool| p.iter().any(f);
        assert!(has(&|e| matches!(e, ValidationError::BadName(_))));
        assert!(has(&|e| matches!(e, ValidationError::UnknownLayer { .. })));
        assert!(has(&|e| matches!(e, ValidationError::UnknownDependency { .. })));
        assert!(has(&|e| matches!(e, ValidationError::BadEntrypoint(_))));
        assert!(has(&|e| matches!(e, ValidationError::BadEnv(_))));
        assert!(has(&|e| matches!(e, ValidationError::BadCwd(_))));
        assert!(has(&|e| matches!(e, ValidationError::BadHostname(_))));
        assert!(has(&|e| matches!(e, ValidationError::BadStopSignal(_))));
        for limit in ["memory_max", "cpu_max", "pids_max"] {
            assert!(
                has(&|e| matches!(e, ValidationError::LimitOutOfRange { limit: l, .. } if *l == limit)),
                "{limit} not reported"
            );
        }
    }

    #[test]
    fn capabilities_by_name_and_the_default_set() {
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("net_raw"), Some(13));
        assert_eq!(capability_number("CAP_NOPE"), None);
        assert_eq!(DEFAULT_CAPABILITIES & (1 << 27), 0, "MKNOD is dropped");
        assert_eq!(DEFAULT_CAPABILITIES & (1 << 13), 0, "NET_RAW is dropped");
        assert_eq!(DEFAULT_CAPABILITIES.count_ones(), 12);
        let mut c = container("a", &[]);
        c.network = Network::Join(s("b"));
        let m = manifest(&[container("b", &[]), c]);
        assert!(matches!(m.validate(), Err(ValidationError::NetworkJoin { .. })));
    }

    #[test]
    fn cycles_duplicates_and_self_dependencies_are_rejected() {
        let m = manifest(&[container("a", &["b"]), container("b", &["a"])]);
        assert!(matches!(m.validate(), Err(ValidationError::DependencyCycle(_))));
        let m = manifest(&[container("a", &["a"])]);
        assert!(matches!(m.validate(), Err(ValidationError::UnknownDependency { .. })));
        let m = manifest(&[container("a", &[]), container("a", &[])]);
        assert!(matches!(m.validate(), Err(ValidationError::DuplicateContainer(_))));
        assert_eq!(manifest(&[]).validate(), Err(ValidationError::NoContainers));
    }

    fn range(inside: u32, outside: u32, count: u32) -> IdRange {
        IdRange { inside, outside, count }
    }

    fn userns(uid: &[IdRange], gid: &[IdRange]) -> Option<UserNamespace> {
        Some(UserNamespace { uid_map: uid.to_vec(), gid_map: gid.to_vec() })
    }

    #[test]
    fn id_maps_are_checked() {
        assert_eq!(check_id_map(&[range(0, 100_000, 65536)]), Ok(()));
        assert_eq!(check_id_map(&[range(0, 100_000, 1), range(1000, 101_000, 10)]), Ok(()));
        assert_eq!(check_id_map(&[]), Err(IdMapProblem::Empty));
        assert_eq!(check_id_map(&[range(0, 100_000, 0)]), Err(IdMapProblem::ZeroCount));
        assert_eq!(check_id_map(&[range(0, u32::MAX - 10, 11)]), Err(IdMapProblem::Overflow));
        assert_eq!(check_id_map(&[range(u32::MAX - 10, 5, 11)]), Err(IdMapProblem::Overflow));
        assert_eq!(check_id_map(&[range(0, u32::MAX - 10, 10)]), Ok(()), "ids up to 2^32 - 2 are fine");
        assert_eq!(check_id_map(&[range(0, 0, 65536)]), Err(IdMapProblem::HostRoot));
        assert_eq!(check_id_map(&[range(0, 100_000, 10), range(9, 200_000, 1)]), Err(IdMapProblem::OverlapInside));
        assert_eq!(check_id_map(&[range(0, 100_000, 10), range(10, 100_009, 1)]), Err(IdMapProblem::OverlapOutside));
        assert_eq!(check_id_map(&[range(0, 100_000, 10), range(10, 100_010, 1)]), Ok(()), "adjacent is fine");
        let m = [range(0, 100_000, 1), range(1000, 101_000, 10)];
        assert_eq!(map_id(&m, 0), Some(100_000));
        assert_eq!(map_id(&m, 1009), Some(101_009));
        assert_eq!(map_id(&m, 1010), None);
        assert_eq!(map_id(&m, 1), None);
    }

    #[test]
    fn a_user_namespace_must_fit_the_container() {
        let mut c = container("a", &[]);
        c.security.userns = userns(&[range(0, 100_000, 65536)], &[range(0, 100_000, 65536)]);
        assert_eq!(manifest(&[c.clone()]).validate(), Ok(()));
        let reasons = |c: &Container| {
            let mut v = std::vec::Vec::new();
            manifest(std::slice::from_ref(c)).for_each_problem(|e| v.push(e.to_string()));
            v.join("\n")
        };
        let mut bad = c.clone();
        bad.uid = 70_000;
        bad.groups = vec![5, 70_001];
        bad.network = Network::Host;
        // Permissions are checked per request, from any uid: allowed.
        bad.permissions = vec![Permission::Status];
        let all = reasons(&bad);
        for want in ["container's uid is not in uid_map", "supplementary group", "network"] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
        assert!(!all.contains("permission"), "{all}");
        let mut bad = c.clone();
        bad.security.userns = userns(&[range(1, 100_000, 10)], &[range(0, 0, 10), range(5, 200_000, 1)]);
        let all = reasons(&bad);
        assert!(all.contains("uid 0 must be mapped"), "{all}");
        assert!(all.contains("security.userns.gid_map maps host id 0"), "{all}");
        let mut bad = c;
        bad.security.devices =
            vec![Device { path: s("/dev/data"), source: DeviceSource::Partition(s("extra")), mode: 0o600 }];
        assert!(matches!(manifest(&[bad]).validate(), Err(ValidationError::BadUserNamespace { .. })));
        assert_eq!(manifest(&[container("b", &[])]).validate(), Ok(()), "off by default");
    }

    #[test]
    fn device_sources_may_not_name_system_partitions_and_paths_stay_in_dev() {
        let with = |path: &str, source: &str| {
            let mut c = container("cam", &[]);
            c.security.devices = vec![Device { path: s(path), source: DeviceSource::parse(source), mode: 0o600 }];
            problems(&manifest(&[c])).iter().map(|e| e.to_string()).collect::<std::vec::Vec<_>>().join("\n")
        };
        assert_eq!(with("/dev/video0", "/dev/video0"), "");
        assert_eq!(with("/dev/store", "partition:camera-store"), "");
        for sys in ["cairn-state", "cairn-data", "cairn-manifest-a", "cairn-layer-01", "cairn-x"] {
            let p = with("/dev/x", &format!("partition:{sys}"));
            assert!(
                p.contains("container \"cam\": security.devices[0].source") && p.contains("system (cairn-*)"),
                "{p}"
            );
        }
        for path in ["/tmp/x", "/dev/", "/dev/../etc/passwd", "/dev/a//b", "dev/x", "/dev/./x"] {
            let p = with(path, "/dev/null");
            assert!(p.contains("security.devices[0].path"), "{path}: {p}");
        }
        for source in ["/sys/x", "vda", "/dev/../x", "partition:", "partition:a/b"] {
            let p = with("/dev/x", source);
            assert!(p.contains("security.devices[0].source"), "{source}: {p}");
        }
        for source in ["/dev/dm-0", "/dev/mapper/cairn-layer-base", "/dev/mapper/control"] {
            let p = with("/dev/x", source);
            assert!(p.contains("security.devices[0].source") && p.contains("device-mapper"), "{source}: {p}");
        }
    }

    #[test]
    fn the_compatibility_string_is_required_and_plain() {
        let mut m = manifest(&[container("a", &[])]);
        assert!(is_valid_compatible("cairn-qemu-dev") && is_valid_compatible("acme,cam-2.1+x_y"));
        m.compatible = s("");
        assert_eq!(m.validate(), Err(ValidationError::BadCompatible));
        m.compatible = s("cam 1");
        assert_eq!(m.validate(), Err(ValidationError::BadCompatible));
        assert!(ValidationError::BadCompatible.to_string().starts_with("compatible "));
    }

    #[test]
    fn a_list_or_string_over_its_bound_is_refused_naming_the_field_and_the_bound() {
        let mut c = container("web", &[]);
        let script = format!("echo {}", "x".repeat(4000));
        c.argv = vec![s("/bin/sh"), s("-c"), script];
        c.env = (0..MAX_ENV).map(|i| format!("VAR{i}=value")).collect();
        assert_eq!(manifest(&[c.clone()]).validate(), Ok(()), "a 4 KB sh -c script and 256 variables fit");

        let mut long = c.clone();
        long.argv[2] = "x".repeat(ARG_LEN + 1);
        let e = manifest(&[long]).validate().unwrap_err();
        assert_eq!(
            e,
            ValidationError::TooLong { field: s("container \"web\": argv[2]"), len: ARG_LEN + 1, max: ARG_LEN }
        );
        assert_eq!(e.to_string(), "container \"web\": argv[2] is 4097 bytes long, the most is 4096");

        let mut many = c.clone();
        many.env.push(s("ONE=more"));
        let e = manifest(&[many]).validate().unwrap_err();
        assert_eq!(e, ValidationError::TooMany { field: s("container \"web\": env"), len: MAX_ENV + 1, max: MAX_ENV });
        assert_eq!(e.to_string(), "container \"web\": env has 257 entries, the most is 256");

        let wide =
            manifest(&(0..=MAX_CONTAINERS).map(|i| container(&format!("c{i}"), &[])).collect::<std::vec::Vec<_>>());
        let e = wide.validate().unwrap_err();
        assert_eq!(
            e,
            ValidationError::TooMany { field: s("containers"), len: MAX_CONTAINERS + 1, max: MAX_CONTAINERS }
        );

        let mut named = manifest(&[c]);
        named.appliance = "a".repeat(NAME_LEN + 1);
        assert!(matches!(named.validate(), Err(ValidationError::BadName(_))));
        named.appliance = "a".repeat(NAME_LEN);
        assert_eq!(named.validate(), Ok(()));
    }

    fn vol(name: &str, kind: VolumeKind, size: u64) -> Volume {
        Volume { name: s(name), kind, size_bytes: size, mode: 0o700 }
    }

    fn mnt(volume: &str, path: &str, readonly: bool) -> VolumeMount {
        VolumeMount { volume: s(volume), path: s(path), readonly }
    }

    fn volume_problems(m: &Manifest) -> std::string::String {
        problems(m).iter().map(|e| e.to_string()).collect::<std::vec::Vec<_>>().join("\n")
    }

    #[test]
    fn volumes_and_mounts_validate_and_round_trip() {
        let mut a = container("db", &[]);
        a.mounts = vec![mnt("data", "/var/lib/db", false), mnt("cache", "/tmp/cache", false)];
        let mut b = container("backup", &[]);
        b.mounts = vec![mnt("data", "/data", true)];
        let mut m = manifest(&[a, b]);
        m.volumes = vec![vol("data", VolumeKind::Persistent, 8 << 20), vol("cache", VolumeKind::Tmpfs, 1 << 20)];
        assert_eq!(m.validate(), Ok(()));
        assert!(m.has_persistent_volumes());
        let tmpfs_only = Manifest {
            volumes: m.volumes.iter().filter(|v| v.kind == VolumeKind::Tmpfs).cloned().collect(),
            ..m.clone()
        };
        assert!(!tmpfs_only.has_persistent_volumes());
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Manifest>(&bytes).unwrap(), m);
        assert_eq!(m.volume_owner("data"), Some((0, 0)));
        assert_eq!(m.volume_owner("nobody-mounts-it"), None);
    }

    #[test]
    fn bad_volumes_are_refused_with_the_reason() {
        let mut c = container("app", &[]);
        c.mounts = vec![
            mnt("ghost", "/a", false),
            mnt("data", "relative", false),
            mnt("data", "/srv", false),
            mnt("cache", "/srv/cache", false),
            mnt("logs", "/proc/x", false),
        ];
        let mut m = manifest(&[c]);
        m.volumes = vec![
            vol("data", VolumeKind::Persistent, 0),
            vol("data", VolumeKind::Persistent, 1 << 20),
            vol("cache", VolumeKind::Tmpfs, 1 << 20),
            vol("logs", VolumeKind::Persistent, 1 << 20),
            vol("Bad", VolumeKind::Persistent, 1 << 20),
        ];
        m.volumes[3].mode = 0o4755;
        let p = volume_problems(&m);
        for want in [
            "volume \"data\": size 0 is below the smallest, 64 KiB",
            "volume \"data\" is listed twice",
            "volume \"Bad\": name must be",
            "volume \"logs\": mode 4755 may hold permission and sticky bits only",
            "container \"app\": mounts[0] (ghost): unknown volume \"ghost\"",
            "container \"app\": mounts[1] (data): path \"relative\" must be an absolute path",
            "container \"app\": mounts[2] (data): volume \"data\" is mounted twice (also mounts[1])",
            "container \"app\": mounts[3] (cache): path \"/srv/cache\" overlaps mounts[2] at \"/srv\"",
            "container \"app\": mounts[4] (logs): path \"/proc/x\" is on or under /proc",
        ] {
            assert!(p.contains(want), "{want:?} missing from:\n{p}");
        }
        assert_eq!(p.lines().count(), 9, "{p}");
    }

    #[test]
    fn mount_paths_stay_normal_and_off_the_containers_own_mounts() {
        for ok in ["/data", "/var/lib/db", "/procfs", "/devices", "/run/cairnx", "/run/other"] {
            assert_eq!(check_mount_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "data",
            "/",
            "/a/",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/..",
            "/proc",
            "/sys/x",
            "/dev/shm",
            "/run/cairn",
            "/run/cairn/control",
            "/a\0b",
        ] {
            assert!(check_mount_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_mount_path(&format!("/{}", "x".repeat(PATH_LEN))).is_err());
        assert!(path_within("/a/b", "/a") && path_within("/a", "/a") && !path_within("/ab", "/a"));
    }

    #[test]
    fn writers_of_one_volume_must_agree_on_its_host_owner() {
        let ns = |base: u32| userns(&[range(0, base, 65536)], &[range(0, base, 65536)]);
        let mut a = container("a", &[]);
        a.uid = 1000;
        a.gid = 1000;
        a.security.userns = ns(100_000);
        a.mounts = vec![mnt("data", "/data", false)];
        let mut b = container("b", &[]);
        b.uid = 101_000;
        b.gid = 101_000;
        b.mounts = vec![mnt("data", "/data", false)];
        let mut m = manifest(&[a.clone(), b.clone()]);
        m.volumes = vec![vol("data", VolumeKind::Persistent, 1 << 20)];
        assert_eq!(m.validate(), Ok(()), "1000 under 0->100000 is host 101000, as b");
        assert_eq!(m.volume_owner("data"), Some((101_000, 101_000)));
        m.containers[1].uid = 5;
        let p = volume_problems(&m);
        assert!(
            p.contains("containers \"a\" and \"b\" write it as different host owners (101000:101000 and 5:101000)"),
            "{p}"
        );
        m.containers[1].mounts[0].readonly = true;
        assert_eq!(m.validate(), Ok(()), "a reader may differ");
        assert_eq!(m.volume_owner("data"), Some((101_000, 101_000)), "the writer owns it");
        m.containers.swap(0, 1);
        assert_eq!(m.volume_owner("data"), Some((101_000, 101_000)), "whatever the order");
    }
}
