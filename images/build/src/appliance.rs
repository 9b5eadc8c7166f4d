//! The human-written appliance description (TOML) and its compilation into
//! a [`Manifest`]. See `docs/appliance.md` for the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use cairn_format::digest::Digest;

use crate::verity::{self, LayerIdentity};
use cairn_format::manifest::{
    self, capability_number, Container, CpuMax, Device, DeviceSource, IdRange, IoMax, Layer, LayerCheck, Limits,
    Manifest, Network, OnCorruption, Permission, Restart, RestartPolicy, Rlimit, RlimitResource, Security, Stop,
    UpdatePolicy, UserNamespace, Volume, VolumeKind, VolumeMount, DEFAULT_LOG_SIZE,
};
use cairn_format::manifest::{HealthCheck, HealthProbe};
use cairn_format::network;

/// The appliance file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Appliance name.
    pub appliance: String,
    /// Manifest version (anti-rollback counter).
    pub version: u64,
    /// The product the manifest is for (required; the device's init is
    /// built with the same string and refuses any other).
    pub compatible: Option<String>,
    /// How the device checks layers: `"verity"` (default: every block on
    /// read, dm-verity) or `"digest"` (the whole image hashed at boot, for
    /// kernels without dm-verity).
    #[serde(default)]
    pub layer_check: Option<String>,
    /// With `layer_check = "verity"`: what a corrupted block does: `"eio"`
    /// (default: the read fails), `"restart"` or `"panic"` (the kernel's).
    #[serde(default)]
    pub on_corruption: Option<String>,
    /// Layers, by name.
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerSource>,
    /// Containers.
    #[serde(default, rename = "container")]
    pub containers: Vec<ContainerSpec>,
    /// How a device tries and commits this manifest as an update.
    #[serde(default)]
    pub update: UpdateSpec,
    /// Line numbers of the `[[layer]]` and `[[container]]` headers (from
    /// [`Appliance::load`]), so problems can name their place.
    #[serde(skip)]
    pub lines: HeaderLines,
    /// Named volumes (`[[volume]]`).
    #[serde(default, rename = "volume")]
    pub volumes: Vec<VolumeSpec>,
    /// Container networks (`[[network]]`).
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkSpec>,
}

/// One `[[network]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Its name.
    pub name: String,
    /// `A.B.C.D/N`.
    pub subnet: String,
    /// Egress through the device (NAT); default internal.
    #[serde(default)]
    pub egress: bool,
}

/// One entry of a container's `networks`: a name, or a table with a pinned
/// address.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum JoinSpec {
    /// `"backend"`: the next free address.
    Name(String),
    /// `{ name = "backend", address = "10.89.1.10" }`.
    Pinned {
        /// The network.
        name: String,
        /// The address.
        address: String,
    },
}

/// One `[[volume]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Its name (its directory's name on the data partition).
    pub name: String,
    /// Most bytes it holds: an integer or "64K", "32M", "1G".
    pub size: Size,
    /// "persistent" (default: on the data partition, kept) or "tmpfs"
    /// (in memory, empty at every boot).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Permission bits of its top directory (default 0o700).
    #[serde(default = "default_volume_mode")]
    pub mode: u16,
}

fn default_volume_mode() -> u16 {
    0o700
}

/// One entry of a container's `mounts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The volume's name.
    pub volume: String,
    /// Absolute path inside the container.
    pub path: String,
    /// Read-only (default false).
    #[serde(default)]
    pub readonly: bool,
}

/// Where each `[[layer]]` and `[[container]]` table starts (1-based lines).
#[derive(Debug, Clone, Default)]
pub struct HeaderLines {
    /// One per `[[layer]]`, in order.
    pub layers: Vec<usize>,
    /// One per `[[container]]`, in order.
    pub containers: Vec<usize>,
}

impl HeaderLines {
    /// Find the array-of-table headers in an appliance file's text.
    pub fn scan(text: &str) -> Self {
        let mut h = HeaderLines::default();
        for (n, line) in text.lines().enumerate() {
            let t: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if t.starts_with("[[layer]]") {
                h.layers.push(n + 1);
            } else if t.starts_with("[[container]]") {
                h.containers.push(n + 1);
            }
        }
        h
    }

    fn place(list: &[usize], i: usize) -> String {
        list.get(i).map(|l| format!("line {l}: ")).unwrap_or_default()
    }
}

/// Where a layer comes from: exactly one of `source`, `file` or `digest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSource {
    /// Name containers use.
    pub name: String,
    /// Built from this: a directory, a rootfs tar, a `docker save` archive or
    /// an OCI layout (an image is flattened into one layer), relative to the
    /// appliance file; or `build:NAME` for a directory the build tool makes.
    #[serde(default)]
    pub source: Option<String>,
    /// A layer image already built (`cairn layer build`), relative to the
    /// appliance file.
    #[serde(default)]
    pub file: Option<String>,
    /// A layer known only by digest (`sha256:...`), e.g. one the devices
    /// already have; `size` must be given too.
    #[serde(default)]
    pub digest: Option<String>,
    /// Image size in bytes, with `digest`.
    #[serde(default)]
    pub size: Option<u64>,
    /// Root hash of its dm-verity tree (64 hex characters), with `digest`.
    #[serde(default)]
    pub root_hash: Option<String>,
}

/// What a layer entry refers to, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerRef {
    /// Build from a source.
    Source(String),
    /// A built image file.
    File(String),
    /// Digest, size and verity root hash only.
    Digest(LayerIdentity),
}

impl LayerSource {
    /// Which of the three forms this entry uses; an error text otherwise.
    pub fn reference(&self) -> Result<LayerRef, String> {
        match (&self.source, &self.file, &self.digest, self.size, &self.root_hash) {
            (Some(s), None, None, None, None) => Ok(LayerRef::Source(s.clone())),
            (None, Some(f), None, None, None) => Ok(LayerRef::File(f.clone())),
            (None, None, Some(d), Some(size), Some(root)) => {
                let hex = d.strip_prefix("sha256:").unwrap_or(d);
                let digest =
                    Digest::from_hex(hex).ok_or_else(|| format!("digest {d:?} is not sha256:<64 hex characters>"))?;
                let root =
                    Digest::from_hex(root).ok_or_else(|| format!("root_hash {root:?} is not 64 hex characters"))?;
                Ok(LayerRef::Digest(verity::identity_by_digest(digest, size, root)))
            }
            (None, None, Some(_), _, _) => {
                Err("a layer given by digest needs its size and root_hash too (`cairn layer build` prints them)".into())
            }
            _ => Err("give exactly one of source, file or digest (with size and root_hash)".into()),
        }
    }
}

/// One container as written by a person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Unique name.
    pub name: String,
    /// Layers, lowest first.
    pub layers: Vec<String>,
    /// Entrypoint and arguments (may be left out when a layer of the
    /// container comes from an image: its Entrypoint + Cmd).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Environment.
    #[serde(default = "default_env")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Hostname (default: the container name).
    pub hostname: Option<String>,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Started after these.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Legacy shorthand: the permissions `status`, `lifecycle` and
    /// `power` (what the control socket allowed before permissions).
    #[serde(default)]
    pub control: bool,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartSpec,
    /// Stop behaviour.
    #[serde(default)]
    pub stop: StopSpec,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
    /// "none" (default), "host", or "container:NAME".
    #[serde(default)]
    pub network: Option<String>,
    /// Forward signals to the entrypoint's process group.
    #[serde(default)]
    pub signal_group: bool,
    /// A pseudo-terminal as stdio, copied to the console with a `[name] ` prefix.
    #[serde(default)]
    pub console: bool,
    /// An update commits only if this container keeps running through the
    /// commit window (default: every container is critical).
    #[serde(default = "yes")]
    pub critical: bool,
    /// Isolation settings.
    #[serde(default)]
    pub security: SecuritySpec,
    /// `user[:group]`, names resolved through the image's /etc/passwd and
    /// /etc/group at build time (instead of uid/gid).
    #[serde(default)]
    pub user: Option<String>,
    /// Control socket permissions: `status`, `logs`, `lifecycle`, `power`,
    /// `exec`, `update` (default none: no socket).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Size of its in-memory log ring (default 64K, 4K to 1M).
    #[serde(default)]
    pub log_size: Option<Size>,
    /// The keys the appliance file set for this container (from
    /// [`Appliance::load`]), so image defaults fill only the others.
    #[serde(skip)]
    pub explicit: std::collections::BTreeSet<String>,
    /// Volumes mounted into it.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Networks it joins (`eth0`, `eth1`, ... in this order).
    #[serde(default)]
    pub networks: Vec<JoinSpec>,
    /// Ports of the device forwarded to it: `"HOST:PORT/tcp"` (or `/udp`).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Its health check (`health = { interval_ms = .., ... }`).
    #[serde(default)]
    pub health: Option<HealthSpec>,
}

/// A container's `health` table (Docker's HEALTHCHECK timing; docs/appliance.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// `"heartbeat"` (default) or `"command"` (then `command` is the
    /// probe run inside the container).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The command form's probe: argv, `argv[0]` an absolute path.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Time between checks (default 10000).
    pub interval_ms: Option<u32>,
    /// How late a check may be (default 5000).
    pub timeout_ms: Option<u32>,
    /// Failures in a row that make it unhealthy (default 3).
    pub retries: Option<u32>,
    /// Grace after each start (default 0).
    pub start_period_ms: Option<u32>,
}

/// Default health check interval, ms.
pub const HEALTH_INTERVAL_MS: u32 = 10_000;
/// Default health check timeout, ms.
pub const HEALTH_TIMEOUT_MS: u32 = 5_000;
/// Default health check retries.
pub const HEALTH_RETRIES: u32 = 3;

impl HealthSpec {
    fn compile(&self) -> Result<HealthCheck, String> {
        let probe = match (self.kind.as_deref(), &self.command) {
            (None | Some("heartbeat"), None) => HealthProbe::Heartbeat,
            (None | Some("heartbeat"), Some(_)) => {
                return Err("health: `command` needs type = \"command\" (a heartbeat runs nothing)".into())
            }
            (Some("command"), Some(argv)) => HealthProbe::Command(argv.clone()),
            (Some("command"), None) => {
                return Err("health: type \"command\" needs `command = [\"/abs/path\", ...]`".into())
            }
            (Some(other), _) => return Err(format!("health: type {other:?} is not \"heartbeat\" or \"command\"")),
        };
        Ok(HealthCheck {
            probe,
            interval_ms: self.interval_ms.unwrap_or(HEALTH_INTERVAL_MS),
            timeout_ms: self.timeout_ms.unwrap_or(HEALTH_TIMEOUT_MS),
            retries: self.retries.unwrap_or(HEALTH_RETRIES),
            start_period_ms: self.start_period_ms.unwrap_or(0),
        })
    }
}

/// The `[update]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// The rollback floor set when this manifest commits (default: its
    /// version).
    pub floor: Option<u64>,
    /// Milliseconds every critical container must keep running before a
    /// trial commits (default 30000).
    pub commit_after_ms: Option<u32>,
    /// Boots a trial gets (1 to 15, default 3).
    pub tries: Option<u8>,
}

impl UpdateSpec {
    fn compile(&self, version: u64) -> UpdatePolicy {
        let d = UpdatePolicy::for_version(version);
        UpdatePolicy {
            floor: self.floor.unwrap_or(d.floor),
            commit_after_ms: self.commit_after_ms.unwrap_or(d.commit_after_ms),
            tries: self.tries.unwrap_or(d.tries),
        }
    }
}

/// Isolation settings as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// Capabilities added to the default set.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set ("ALL" removes all).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `no_new_privs` (default true).
    #[serde(default = "yes")]
    pub no_new_privs: bool,
    /// Read-only root filesystem.
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// The default seccomp filter (default true).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// More syscalls to deny.
    #[serde(default)]
    pub seccomp_deny: Vec<String>,
    /// Allow new user namespaces.
    #[serde(default)]
    pub allow_userns: bool,
    /// Device nodes.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// A user namespace of its own (off when absent).
    #[serde(default)]
    pub userns: Option<UsernsSpec>,
}

/// `security.userns` as written: a host id (shorthand for container ids 0
/// to 65535 as host ids from there on, for users and groups alike) or the
/// maps, `[inside, outside, count]` each; `gid_map` defaults to `uid_map`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UsernsSpec {
    /// `userns = 100000`.
    Base(u32),
    /// `userns = { uid_map = [[0, 100000, 65536]], gid_map = [...] }`.
    Maps(UsernsMaps),
}

/// Explicit id maps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsernsMaps {
    /// `[inside, outside, count]` ranges for user ids.
    pub uid_map: Vec<[u32; 3]>,
    /// Same for group ids; the uid map when absent.
    #[serde(default)]
    pub gid_map: Option<Vec<[u32; 3]>>,
}

/// Ids the shorthand `userns = BASE` maps: 0 to 65535.
pub const USERNS_SHORTHAND_COUNT: u32 = 65536;

impl UsernsSpec {
    /// The manifest form (its bounds are checked by the manifest's
    /// validation, as on the device).
    fn compile(&self) -> UserNamespace {
        fn ranges(list: &[[u32; 3]]) -> Vec<IdRange> {
            list.iter()
                .map(|[inside, outside, count]| IdRange { inside: *inside, outside: *outside, count: *count })
                .collect()
        }
        match self {
            UsernsSpec::Base(outside) => {
                let r = [[0, *outside, USERNS_SHORTHAND_COUNT]];
                UserNamespace { uid_map: ranges(&r), gid_map: ranges(&r) }
            }
            UsernsSpec::Maps(m) => {
                let uid_map = ranges(&m.uid_map);
                let gid_map = match &m.gid_map {
                    Some(g) => ranges(g),
                    None => uid_map.clone(),
                };
                UserNamespace { uid_map, gid_map }
            }
        }
    }
}

impl Default for SecuritySpec {
    fn default() -> Self {
        Self {
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
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

fn yes() -> bool {
    true
}

/// A device node as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Path in the container (under /dev).
    pub path: String,
    /// Host device path, or `partition:NAME`.
    pub source: String,
    /// Permission bits (default 0o600).
    #[serde(default = "default_device_mode")]
    pub mode: u16,
}

fn default_device_mode() -> u16 {
    0o600
}

/// One io.max entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    /// Disk name, e.g. "vda".
    pub device: String,
    /// Read bytes per second.
    pub rbps: Option<Size>,
    /// Write bytes per second.
    pub wbps: Option<Size>,
    /// Read operations per second.
    pub riops: Option<u64>,
    /// Write operations per second.
    pub wiops: Option<u64>,
}

/// An rlimit as written: one value for soft and hard, or `[soft, hard]`;
/// "unlimited" for no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RlimitSpec {
    /// Same soft and hard.
    One(RlimitValue),
    /// Soft and hard.
    Pair([RlimitValue; 2]),
}

/// A limit value.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RlimitValue {
    /// A number.
    Number(u64),
    /// "unlimited".
    Word(String),
}

impl RlimitValue {
    fn value(&self) -> Option<u64> {
        match self {
            RlimitValue::Number(n) => Some(*n),
            RlimitValue::Word(w) if w == "unlimited" => Some(u64::MAX),
            RlimitValue::Word(_) => None,
        }
    }
}

fn default_env() -> Vec<String> {
    vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()]
}
fn default_cwd() -> String {
    "/".into()
}

/// Limits as written: sizes accept `K`, `M`, `G` suffixes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// `memory.max`, e.g. "64M", or "max" (unlimited); default
    /// [`DEFAULT_MEMORY`].
    pub memory: Option<OrMax<Size>>,
    /// CPUs as a fraction, e.g. 0.5 = 50 ms per 100 ms.
    pub cpus: Option<f64>,
    /// `pids.max`, or "max" (unlimited); default [`DEFAULT_PIDS`].
    pub pids: Option<OrMax<u32>>,
    /// Size cap of the writable scratch layer (default 16M).
    pub scratch: Option<Size>,
    /// `memory.high`.
    pub memory_high: Option<Size>,
    /// `memory.swap.max`.
    pub memory_swap: Option<Size>,
    /// `cpu.weight`.
    pub cpu_weight: Option<u16>,
    /// `cpuset.cpus`.
    pub cpuset: Option<String>,
    /// `io.max` entries.
    #[serde(default)]
    pub io: Vec<IoSpec>,
    /// rlimits by name (nofile, nproc, core, memlock, stack, fsize, as, cpu, ...).
    #[serde(default)]
    pub rlimits: BTreeMap<String, RlimitSpec>,
}

/// `memory.max` of a container whose file sets no `memory`: 256 MiB. Enough
/// for the daemons an appliance runs (a busybox shell needs ~1 MiB, a Go or
/// Python service tens of MiB), small enough that one runaway container
/// cannot take the memory of a 512 MiB+ device from PID 1 and the others.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// `pids.max` of a container whose file sets no `pids`: a fork bomb stops
/// there instead of exhausting the pid space (PID 1 must still clone).
pub const DEFAULT_PIDS: u32 = 1024;

/// A limit, or the word "max" (explicitly unlimited).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum OrMax<T> {
    /// "max".
    Max(MaxWord),
    /// A value.
    Value(T),
}

/// The word "max".
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct MaxWord;

impl TryFrom<String> for MaxWord {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "max" {
            Ok(MaxWord)
        } else {
            Err(format!("{s:?} is not \"max\""))
        }
    }
}

impl<T: Copy> OrMax<T> {
    /// The manifest value: `default` when not written, `None` for "max".
    fn or_default(v: Option<Self>, default: T) -> Option<T> {
        match v {
            None => Some(default),
            Some(OrMax::Max(_)) => None,
            Some(OrMax::Value(x)) => Some(x),
        }
    }
}

/// A byte size: an integer or a string with a K/M/G suffix.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Plain bytes.
    Bytes(u64),
    /// "64M" and the like.
    Text(SizeText),
}

/// A size string, parsed when used.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct SizeText(u64);

impl TryFrom<String> for SizeText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_size(&s)
            .map(SizeText)
            .ok_or_else(|| format!("{s:?} is not a size (use e.g. 65536, \"64K\", \"32M\", \"1G\")"))
    }
}

/// Parse "123", "64K", "32M", "1G" (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (s.get(..i)?, 1u64 << 10),
        (i, 'M' | 'm') => (s.get(..i)?, 1 << 20),
        (i, 'G' | 'g') => (s.get(..i)?, 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl Size {
    fn bytes(self) -> u64 {
        match self {
            Size::Bytes(b) => b,
            Size::Text(SizeText(b)) => b,
        }
    }
}

/// Restart policy as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// "never", "on-failure" or "always".
    #[serde(default = "default_policy")]
    pub policy: String,
    /// With on-failure: restarts allowed.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// First delay.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u32,
    /// Largest delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u32,
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            max_restarts: default_max_restarts(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
        }
    }
}
fn default_policy() -> String {
    "on-failure".into()
}
fn default_max_restarts() -> u32 {
    5
}
fn default_backoff_initial() -> u32 {
    500
}
fn default_backoff_max() -> u32 {
    30_000
}

/// Stop behaviour as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    /// Signal name ("SIGTERM", "TERM") or number.
    #[serde(default = "default_signal")]
    pub signal: String,
    /// Grace period before the cgroup is killed.
    #[serde(default = "default_grace")]
    pub grace_ms: u32,
}

impl Default for StopSpec {
    fn default() -> Self {
        Self { signal: default_signal(), grace_ms: default_grace() }
    }
}
fn default_signal() -> String {
    "SIGTERM".into()
}
fn default_grace() -> u32 {
    5000
}

/// Signal numbers by name (the ones that are the same on every Linux
/// architecture cairn supports).
pub fn signal_number(s: &str) -> Option<u8> {
    let name = s.trim().trim_start_matches("SIG");
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "ALRM" => 14,
        "TERM" => 15,
        "PWR" => 30,
        other => return other.parse().ok(),
    };
    Some(n)
}

/// Why an appliance file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// Reading the file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field, a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Problems found while compiling it, one per line.
    #[error("{path}: {}", .problems.join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, with its place.
        problems: Vec<String>,
    },
}

impl Appliance {
    /// Read and parse an appliance file.
    pub fn load(path: &Path) -> Result<Self, ApplianceError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ApplianceError::Read { path: path.to_owned(), source })?;
        let mut app: Self = toml::from_str(&text)
            .map_err(|e| ApplianceError::Parse { path: path.to_owned(), message: e.to_string() })?;
        app.lines = HeaderLines::scan(&text);
        app.mark_explicit(&text);
        Ok(app)
    }

    /// How layers are checked, from `layer_check` and `on_corruption`.
    fn layer_check(&self) -> Result<LayerCheck, String> {
        let on = match self.on_corruption.as_deref() {
            None | Some("eio") => OnCorruption::Error,
            Some("restart") => OnCorruption::Restart,
            Some("panic") => OnCorruption::Panic,
            Some(o) => return Err(format!("on_corruption: {o:?} is not one of \"eio\", \"restart\", \"panic\"")),
        };
        match self.layer_check.as_deref() {
            None | Some("verity") => Ok(LayerCheck::Verity(on)),
            Some("digest") if self.on_corruption.is_some() => Err(
                "on_corruption: only with layer_check = \"verity\" (a digest-checked layer is not checked after boot)"
                    .into(),
            ),
            Some("digest") => Ok(LayerCheck::Digest),
            Some(o) => Err(format!("layer_check: {o:?} is not one of \"verity\", \"digest\"")),
        }
    }

    /// Compile into a manifest. `layer_info` gives the digest, size and
    /// verity parameters of each layer by name (the caller built them).
    /// Every problem is collected.
    pub fn to_manifest(
        &self,
        path: &Path,
        layer_info: &BTreeMap<String, LayerIdentity>,
    ) -> Result<Manifest, ApplianceError> {
        let mut problems = Vec::new();
        let layer_check = self.layer_check().unwrap_or_else(|p| {
            problems.push(p);
            LayerCheck::default()
        });
        let mut m = Manifest {
            appliance: self.appliance.clone(),
            version: self.version,
            compatible: self.compatible.clone().unwrap_or_default(),
            layer_check,
            layers: Vec::new(),
            containers: Vec::new(),
            update: self.update.compile(self.version),
            volumes: Vec::new(),
            networks: Vec::new(),
        };
        if self.compatible.is_none() {
            problems.push(
                "compatible: missing: name the product this manifest is for, e.g. compatible = \"cairn-qemu-dev\" \
                 (the device's init is built with the same string and refuses any other; see docs/appliance.md)"
                    .into(),
            );
        }
        for (i, l) in self.layers.iter().enumerate() {
            let place = format!("{}layer[{i}] ({})", HeaderLines::place(&self.lines.layers, i), l.name);
            let Some(id) = layer_info.get(&l.name) else {
                problems.push(format!("{place}: layer was not built"));
                continue;
            };
            m.layers.push(Layer { name: l.name.clone(), digest: id.digest, size: id.size, verity: id.verity });
        }
        for (i, c) in self.containers.iter().enumerate() {
            let place = format!("{}container[{i}] ({})", HeaderLines::place(&self.lines.containers, i), c.name);
            match compile_container(c) {
                Ok(mc) => m.containers.push(mc),
                Err(p) => problems.extend(p.into_iter().map(|p| format!("{place}: {p}"))),
            }
        }
        compile_volumes(self, &mut m, &mut problems);
        compile_networks(self, &mut m, &mut problems);
        m.for_each_problem(|e| problems.push(e.to_string()));
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(ApplianceError::Invalid { path: path.to_owned(), problems })
        }
    }
}

/// The `[[volume]]` tables into `m.volumes` (the rules themselves are the
/// manifest's, shared with the device).
fn compile_volumes(app: &Appliance, m: &mut Manifest, problems: &mut Vec<String>) {
    for (i, v) in app.volumes.iter().enumerate() {
        let kind = match v.kind.as_deref() {
            None | Some("persistent") => VolumeKind::Persistent,
            Some("tmpfs") => VolumeKind::Tmpfs,
            Some(other) => {
                problems.push(format!("volume[{i}] ({}): type {other:?} is not \"persistent\" or \"tmpfs\"", v.name));
                continue;
            }
        };
        m.volumes.push(Volume { name: v.name.clone(), kind, size_bytes: v.size.bytes(), mode: v.mode });
    }
}

/// The `[[network]]` tables into `m.networks`, and each container's
/// addresses: pinned ones as written, the others planned
/// ([`network::assign`]); the rules are the manifest's.
fn compile_networks(app: &Appliance, m: &mut Manifest, problems: &mut Vec<String>) {
    for (i, n) in app.networks.iter().enumerate() {
        match network::Subnet::parse(&n.subnet) {
            Some(subnet) => m.networks.push(network::NetworkDef { name: n.name.clone(), subnet, egress: n.egress }),
            None => problems.push(format!("network[{i}] ({}): subnet {:?} is not A.B.C.D/N", n.name, n.subnet)),
        }
    }
    let mut requests = Vec::with_capacity(app.containers.len());
    for c in &app.containers {
        let mut reqs = Vec::with_capacity(c.networks.len());
        for j in &c.networks {
            let (network, address) = match j {
                JoinSpec::Name(n) => (n.clone(), None),
                JoinSpec::Pinned { name, address } => match network::parse_addr(address) {
                    Some(a) => (name.clone(), Some(a)),
                    None => {
                        problems.push(format!("container {:?}: address {address:?} is not an IPv4 address", c.name));
                        continue;
                    }
                },
            };
            reqs.push(network::Request { network, address });
        }
        requests.push((c.name.clone(), reqs));
    }
    match network::assign(&m.networks, &requests) {
        Ok(plan) => {
            // By name: a container that did not compile is not in `m`.
            for ((name, _), attachments) in requests.iter().zip(plan) {
                if let Some(c) = m.containers.iter_mut().find(|c| c.name == *name) {
                    c.networks = attachments;
                }
            }
        }
        Err(e) => problems.push(e),
    }
}

fn compile_container(c: &ContainerSpec) -> Result<Container, Vec<String>> {
    let mut permissions: Vec<Permission> = Vec::new();
    let legacy = if c.control { &[Permission::Status, Permission::Lifecycle, Permission::Power][..] } else { &[] };
    let mut perm_problems = Vec::new();
    for name in &c.permissions {
        match Permission::from_name(name) {
            Some(p) => permissions.push(p),
            None => perm_problems.push(format!(
                "permissions: unknown permission {name:?} (status, logs, lifecycle, power, exec, update)"
            )),
        }
    }
    permissions.extend_from_slice(legacy);
    permissions.sort();
    permissions.dedup();
    let mut p = perm_problems;
    let health = match c.health.as_ref().map(HealthSpec::compile).transpose() {
        Ok(h) => h,
        Err(e) => {
            p.push(e);
            None
        }
    };
    let policy = match c.restart.policy.as_str() {
        "never" => RestartPolicy::Never,
        "always" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure { max_restarts: c.restart.max_restarts },
        other => {
            p.push(format!("restart policy {other:?} is not never, on-failure or always"));
            RestartPolicy::Never
        }
    };
    for name in &c.security.seccomp_deny {
        if !cairn_runtime::seccomp::known_syscall(name) {
            p.push(format!("security.seccomp_deny: {name:?} is not a syscall of x86_64 or aarch64"));
        }
    }
    let signal = signal_number(&c.stop.signal).unwrap_or_else(|| {
        p.push(format!("stop signal {:?} is unknown", c.stop.signal));
        0
    });
    let cpu_max = match c.limits.cpus {
        None => None,
        Some(f) if f.is_finite() && f > 0.0 && f <= 1024.0 => {
            Some(CpuMax { quota_us: (f * 100_000.0).round() as u32, period_us: 100_000 })
        }
        Some(f) => {
            p.push(format!("limits.cpus {f} must be a number of CPUs above 0"));
            None
        }
    };
    let mut caps = manifest::DEFAULT_CAPABILITIES;
    for name in &c.security.cap_drop {
        match capability_number(name) {
            _ if name.eq_ignore_ascii_case("ALL") => caps = 0,
            Some(n) => caps &= !(1u64 << n),
            None => p.push(format!("security.cap_drop: unknown capability {name:?}")),
        }
    }
    for name in &c.security.cap_add {
        match capability_number(name) {
            Some(n) => caps |= 1u64 << n,
            None => p.push(format!("security.cap_add: unknown capability {name:?}")),
        }
    }
    let network = match c.network.as_deref() {
        None | Some("none") => Network::None,
        Some("host") => Network::Host,
        Some(other) => match other.strip_prefix("container:") {
            Some(n) => Network::Join(n.to_owned()),
            None => {
                p.push(format!("network {other:?} is not none, host or container:NAME"));
                Network::None
            }
        },
    };
    let devices = c
        .security
        .devices
        .iter()
        .map(|d| Device { path: d.path.clone(), source: DeviceSource::parse(&d.source), mode: d.mode })
        .collect();
    let io_max = c
        .limits
        .io
        .iter()
        .map(|io| IoMax {
            device: io.device.clone(),
            rbps: io.rbps.map(Size::bytes),
            wbps: io.wbps.map(Size::bytes),
            riops: io.riops,
            wiops: io.wiops,
        })
        .collect();
    let mut rlimits = Vec::new();
    for (name, spec) in &c.limits.rlimits {
        let Some(resource) = RlimitResource::from_name(name) else {
            p.push(format!("limits.rlimits: unknown resource {name:?}"));
            continue;
        };
        let (soft, hard) = match spec {
            RlimitSpec::One(v) => (v.value(), v.value()),
            RlimitSpec::Pair([s, h]) => (s.value(), h.value()),
        };
        match (soft, hard) {
            (Some(soft), Some(hard)) => rlimits.push(Rlimit { resource, soft, hard }),
            _ => p.push(format!("limits.rlimits.{name}: use a number or \"unlimited\"")),
        }
    }
    let userns = c.security.userns.as_ref().map(UsernsSpec::compile);
    let out = Container {
        name: c.name.clone(),
        layers: c.layers.clone(),
        argv: c.argv.clone(),
        env: c.env.clone(),
        cwd: c.cwd.clone(),
        hostname: c.hostname.clone().unwrap_or_else(|| c.name.clone()),
        uid: c.uid,
        gid: c.gid,
        limits: Limits {
            memory_max: OrMax::or_default(c.limits.memory, Size::Bytes(DEFAULT_MEMORY)).map(Size::bytes),
            cpu_max,
            pids_max: OrMax::or_default(c.limits.pids, DEFAULT_PIDS),
            scratch_bytes: c.limits.scratch.map(Size::bytes).unwrap_or(16 << 20),
            memory_high: c.limits.memory_high.map(Size::bytes),
            memory_swap_max: c.limits.memory_swap.map(Size::bytes),
            cpu_weight: c.limits.cpu_weight,
            cpuset_cpus: c.limits.cpuset.clone(),
            io_max,
            rlimits,
        },
        restart: Restart {
            policy,
            backoff_initial_ms: c.restart.backoff_initial_ms,
            backoff_max_ms: c.restart.backoff_max_ms,
        },
        depends_on: c.depends_on.clone(),
        stop: Stop { signal, grace_ms: c.stop.grace_ms },
        groups: c.groups.clone(),
        security: Security {
            capabilities: caps,
            no_new_privs: c.security.no_new_privs,
            readonly_rootfs: c.security.readonly_rootfs,
            seccomp: c.security.seccomp,
            seccomp_deny: c.security.seccomp_deny.clone(),
            allow_userns: c.security.allow_userns,
            devices,
            userns,
        },
        network,
        signal_group: c.signal_group,
        console: c.console,
        critical: c.critical,
        mounts: c
            .mounts
            .iter()
            .map(|mt| VolumeMount { volume: mt.volume.clone(), path: mt.path.clone(), readonly: mt.readonly })
            .collect(),
        permissions,
        log_size: u32::try_from(c.log_size.map_or(u64::from(DEFAULT_LOG_SIZE), Size::bytes)).unwrap_or(u32::MAX),
        networks: Vec::new(),
        health,
        publish: c
            .publish
            .iter()
            .filter_map(|s| {
                let got = network::Publish::parse(s);
                if got.is_none() {
                    p.push(format!("publish {s:?} is not HOSTPORT:PORT, /tcp or /udp, ports 1 to 65535"));
                }
                got
            })
            .collect(),
    };
    if p.is_empty() {
        Ok(out)
    } else {
        Err(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::manifest::IdRange;

    const GOOD: &str = r#"
appliance = "demo"
version = 3
compatible = "cairn-test"

[[layer]]
name = "base"
source = "base"

[[container]]
name = "sensor"
layers = ["base"]
argv = ["/bin/sensor", "--fast"]
limits = { memory = "32M", cpus = 0.25, pids = 16, rlimits = { nofile = 64, core = [0, "unlimited"] }, io = [{ device = "vda", rbps = "1M" }] }
restart = { policy = "on-failure", max_restarts = 2 }
stop = { signal = "SIGINT", grace_ms = 1000 }
security = { cap_drop = ["CHOWN"], cap_add = ["NET_ADMIN"], readonly_rootfs = true, devices = [{ path = "/dev/data", source = "partition:camera-store" }] }


[[container]]
name = "web"
layers = ["base"]
argv = ["/bin/web"]
depends_on = ["sensor"]
"#;

    fn info() -> BTreeMap<String, LayerIdentity> {
        BTreeMap::from([("base".to_owned(), verity::identity_by_digest(Digest([1; 32]), 4096, Digest([2; 32])))])
    }

    #[test]
    fn compiles_with_defaults_and_units() {
        let a: Appliance = toml::from_str(GOOD).unwrap_or_else(|e| panic!("{e}"));
        let m = a.to_manifest(Path::new("a.toml"), &info()).unwrap_or_else(|e| panic!("{e}"));
        let s = &m.containers[0];
        assert_eq!(s.limits.memory_max, Some(32 << 20));
        assert_eq!(s.limits.cpu_max, Some(CpuMax { quota_us: 25_000, period_us: 100_000 }));
        assert_eq!(s.stop.signal, 2);
        assert_eq!(s.hostname.as_str(), "sensor");
        assert_eq!(s.restart.policy, RestartPolicy::OnFailure { max_restarts: 2 });
        assert_eq!(m.containers[1].limits.scratch_bytes, 16 << 20);
        assert_eq!(m.layers[0].size, 4096);
        let sec = &s.security;
        assert_eq!(sec.capabilities & 1, 0);
        assert_ne!(sec.capabilities & (1 << 12), 0);
        assert!(sec.readonly_rootfs && sec.no_new_privs && sec.seccomp);
        assert_eq!(sec.devices[0].mode, 0o600);
        assert_eq!(s.limits.rlimits.len(), 2);
        assert!(s
            .limits
            .rlimits
            .iter()
            .any(|r| r.resource == RlimitResource::Core && r.soft == 0 && r.hard == u64::MAX));
        assert_eq!(s.limits.io_max[0].rbps, Some(1 << 20));
        assert_eq!(m.containers[1].network, Network::None);
    }

    #[test]
    fn permissions_and_log_size_compile() {
        let with =
            |extra: &str| GOOD.replace("depends_on = [\"sensor\"]", &format!("depends_on = [\"sensor\"]\n{extra}"));
        let compile = |text: &str| {
            let a: Appliance = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
            a.to_manifest(Path::new("a.toml"), &info())
        };
        let m = compile(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.containers[1].permissions.is_empty());
        assert_eq!(m.containers[1].log_size, DEFAULT_LOG_SIZE);
        let m = compile(&with("permissions = [\"power\", \"logs\"]\ncontrol = true\nlog_size = \"128K\""))
            .unwrap_or_else(|e| panic!("{e}"));
        use Permission::*;
        assert_eq!(m.containers[1].permissions, [Status, Logs, Lifecycle, Power]);
        assert_eq!(m.containers[1].log_size, 128 << 10);
        for (extra, want) in
            [("permissions = [\"root\"]", "unknown permission \"root\""), ("log_size = 100", "log_size")]
        {
            let e = compile(&with(extra)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn health_checks_compile() {
        let with =
            |extra: &str| GOOD.replace("depends_on = [\"sensor\"]", &format!("depends_on = [\"sensor\"]\n{extra}"));
        let compile = |text: &str| {
            let a: Appliance = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
            a.to_manifest(Path::new("a.toml"), &info())
        };
        let m = compile(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.containers[1].health, None);
        let m = compile(&with("health = { interval_ms = 1000, retries = 2, start_period_ms = 3000 }"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.containers[1].health,
            Some(HealthCheck {
                probe: HealthProbe::Heartbeat,
                interval_ms: 1000,
                timeout_ms: HEALTH_TIMEOUT_MS,
                retries: 2,
                start_period_ms: 3000
            })
        );
        let m = compile(&with("health = { type = \"command\", command = [\"/bin/check\", \"-q\"], timeout_ms = 800 }"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.containers[1].health,
            Some(HealthCheck {
                probe: HealthProbe::Command(vec!["/bin/check".into(), "-q".into()]),
                interval_ms: HEALTH_INTERVAL_MS,
                timeout_ms: 800,
                retries: HEALTH_RETRIES,
                start_period_ms: 0
            })
        );
        for (extra, want) in [
            ("health = { type = \"command\" }", "needs `command"),
            ("health = { command = [\"/bin/check\"] }", "needs type = \"command\""),
            ("health = { type = \"command\", command = [\"check\"] }", "health command"),
            ("health = { type = \"command\", command = [\"/bin/check\"], timeout_ms = 0 }", "health timeout_ms"),
            ("health = { type = \"tcp\" }", "is not \"heartbeat\""),
            ("health = { retries = 0 }", "health retries"),
            ("health = { interval_ms = 10 }", "health interval_ms"),
        ] {
            let e = compile(&with(extra)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let a: Result<Appliance, _> = toml::from_str(&with("health = { heartbeat_ms = 1 }"));
        assert!(a.is_err());
    }

    #[test]
    fn unknown_fields_are_refused_with_a_place() {
        let bad = GOOD.replace("pids = 16", "pids = 16, swap = 1");
        let e = toml::from_str::<Appliance>(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("swap"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = GOOD
            .replace("policy = \"on-failure\"", "policy = \"sometimes\"")
            .replace("depends_on = [\"sensor\"]", "depends_on = [\"ghost\"]")
            .replace("layers = [\"base\"]\nargv = [\"/bin/web\"]", "layers = [\"nope\"]\nargv = [\"/bin/web\"]");
        let a: Appliance = toml::from_str(&bad).unwrap_or_else(|e| panic!("{e}"));
        let Err(ApplianceError::Invalid { problems, .. }) = a.to_manifest(Path::new("a.toml"), &info()) else {
            panic!("accepted")
        };
        let all = problems.join("\n");
        assert!(all.contains("sometimes"), "{all}");
        assert!(all.contains("ghost"), "{all}");
        assert!(all.contains("nope"), "{all}");
    }

    #[test]
    fn seccomp_names_are_checked_at_build_time() {
        assert!(one("security = { seccomp_deny = [\"clock_settime\", \"iopl\"] }").is_ok());
        let e = one("security = { seccomp_deny = [\"no_such_call\"] }").unwrap_err();
        assert!(e.contains("security.seccomp_deny") && e.contains("no_such_call"), "{e}");
    }

    fn one(extra: &str) -> Result<Manifest, String> {
        let text = format!(
            "appliance = \"u\"\nversion = 1\ncompatible = \"t\"\n[[layer]]\nname = \"base\"\nsource = \"b\"\n\
             [[container]]\nname = \"c\"\nlayers = [\"base\"]\nargv = [\"/x\"]\n{extra}\n"
        );
        let mut a: Appliance = toml::from_str(&text).map_err(|e| e.to_string())?;
        a.lines = HeaderLines::scan(&text);
        a.to_manifest(Path::new("u.toml"), &info()).map_err(|e| e.to_string())
    }

    #[test]
    fn networks_compile_with_planned_and_pinned_addresses() {
        let m = one("networks = [\"back\", { name = \"front\", address = \"10.89.2.9\" }]\n\
             [[container]]\nname = \"d\"\nlayers = [\"base\"]\nargv = [\"/x\"]\nnetworks = [\"back\"]\n\
             [[network]]\nname = \"back\"\nsubnet = \"10.89.1.0/24\"\n\
             [[network]]\nname = \"front\"\nsubnet = \"10.89.2.0/24\"")
        .unwrap_or_else(|e| panic!("{e}"));
        let addrs = |i: usize| -> Vec<(String, String)> {
            m.containers[i].networks.iter().map(|a| (a.network.clone(), network::addr_text(a.address))).collect()
        };
        assert_eq!(addrs(0), [("back".into(), "10.89.1.2".into()), ("front".into(), "10.89.2.9".into())]);
        assert_eq!(addrs(1), [("back".into(), "10.89.1.3".into())]);
        let e = one("networks = [{ name = \"back\", address = \"10.89.1\" }, \"nowhere\"]\n\
                     [[network]]\nname = \"back\"\nsubnet = \"10.89.1.0/33\"")
        .unwrap_err();
        assert!(e.contains("address \"10.89.1\" is not an IPv4 address"), "{e}");
        assert!(e.contains("subnet \"10.89.1.0/33\" is not A.B.C.D/N"), "{e}");
        assert!(e.contains("network \"nowhere\" is not defined"), "{e}");
    }

    #[test]
    fn egress_and_published_ports_compile_and_are_checked() {
        let m = one("networks = [\"out\"]\npublish = [\"8080:80/tcp\", \"5353:53/udp\"]\n\
             [[network]]\nname = \"out\"\nsubnet = \"10.89.3.0/24\"\negress = true")
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(m.networks[0].egress);
        let got: Vec<String> = m.containers[0].publish.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["8080:80/tcp", "5353:53/udp"]);
        let e = one("networks = [\"back\"]\npublish = [\"8080:80/sctp\", \"99999:1\", \"1:2\"]\n\
                     [[network]]\nname = \"back\"\nsubnet = \"10.89.1.0/24\"")
        .unwrap_err();
        assert!(e.contains("publish \"8080:80/sctp\" is not"), "{e}");
        assert!(e.contains("publish \"99999:1\" is not"), "{e}");
        let e = one("networks = [\"back\"]\npublish = [\"1:2\"]\n\
                     [[network]]\nname = \"back\"\nsubnet = \"10.89.1.0/24\"")
        .unwrap_err();
        assert!(e.contains("no network with egress"), "an internal network cannot publish: {e}");
        let e = one("publish = [\"1:2\"]").unwrap_err();
        assert!(e.contains("no network with egress"), "no network at all: {e}");
        let e = one("[[network]]\nname = \"n\"\nsubnet = \"10.1.0.0/16\"\negress = \"yes\"").unwrap_err();
        assert!(e.contains("egress"), "{e}");
    }

    #[test]
    fn volumes_compile_and_their_problems_are_named() {
        let m = one("mounts = [{ volume = \"db\", path = \"/var/db\" }]\n[[volume]]\nname = \"db\"\nsize = \"4M\"")
            .unwrap_or_else(|e| panic!("{e}"));
        let v = m.volume("db").unwrap_or_else(|| panic!("no volume"));
        assert_eq!((v.kind, v.size_bytes, v.mode), (VolumeKind::Persistent, 4 << 20, 0o700));
        assert_eq!(
            m.containers[0].mounts,
            [VolumeMount { volume: "db".into(), path: "/var/db".into(), readonly: false }]
        );
        let e = one("mounts = [{ volume = \"nope\", path = \"/var/../etc\" }, { volume = \"db\", path = \"/\", readonly = true }]\n\
                     [[volume]]\nname = \"db\"\nsize = 0\n[[volume]]\nname = \"t\"\ntype = \"ramfs\"\nsize = \"1M\"")
        .unwrap_err();
        for want in [
            "volume[1] (t): type \"ramfs\" is not \"persistent\" or \"tmpfs\"",
            "volume \"db\": size 0 is below the smallest, 64 KiB",
            "container \"c\": mounts[0] (nope): unknown volume \"nope\"",
            "container \"c\": mounts[0] (nope): path \"/var/../etc\" must be normalised",
            "container \"c\": mounts[1] (db): path \"/\" cannot be /",
        ] {
            assert!(e.contains(want), "{want:?} missing from {e}");
        }
        let e = one("mounts = [{ volume = \"db\", path = \"/x\", mode = \"rw\" }]").unwrap_err();
        assert!(e.contains("unknown field `mode`"), "{e}");
    }

    #[test]
    fn userns_shorthand_maps_and_errors() {
        let m = one("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.containers[0].security.userns, None, "off by default");
        let m = one("security.userns = 100000").unwrap_or_else(|e| panic!("{e}"));
        let u = m.containers[0].security.userns.clone().unwrap_or_else(|| panic!("no userns"));
        let full = IdRange { inside: 0, outside: 100_000, count: 65536 };
        assert_eq!(u.uid_map.as_slice(), &[full]);
        assert_eq!(u.gid_map.as_slice(), &[full]);
        let m = one("uid = 1000\ngid = 1000\ngroups = [20]\n\
                     security.userns = { uid_map = [[0, 200000, 1], [1000, 201000, 1]], gid_map = [[0, 300000, 100], [1000, 301000, 1]] }")
        .unwrap_or_else(|e| panic!("{e}"));
        let u = m.containers[0].security.userns.clone().unwrap_or_else(|| panic!("no userns"));
        assert_eq!(u.uid_map.len(), 2);
        assert_eq!(u.gid_map[0], IdRange { inside: 0, outside: 300_000, count: 100 });
        let m = one("security.userns = { uid_map = [[0, 100000, 10]] }").unwrap_or_else(|e| panic!("{e}"));
        let u = m.containers[0].security.userns.clone().unwrap_or_else(|| panic!("no userns"));
        assert_eq!(u.gid_map, u.uid_map, "gid_map defaults to uid_map");

        let e = one("uid = 5\nsecurity.userns = { uid_map = [[1, 100000, 0]] }").err().unwrap_or_default();
        assert!(e.contains("security.userns.uid_map"), "{e}");
        assert!(e.contains("uid_map has a range with count 0"), "{e}");
        assert!(e.contains("uid 0 must be mapped"), "{e}");
        let six = "[[0,100000,1],[1,100001,1],[2,100002,1],[3,100003,1],[4,100004,1],[5,100005,1]]";
        let e = one(&format!("security.userns = {{ uid_map = {six} }}")).err().unwrap_or_default();
        assert!(e.contains("container \"c\": security.userns.uid_map has 6 entries, the most is 5"), "{e}");
        let e = one("security.userns = { uid_map = [[0, 1]] }").err().unwrap_or_default();
        assert!(e.contains("line"), "{e}");
        let e = one("security.userns = { uidmap = [[0, 1, 1]] }").err().unwrap_or_default();
        assert!(e.contains("line"), "{e}");
        let e = one("network = \"host\"\nsecurity.userns = 100000").err().unwrap_or_default();
        assert!(e.contains("needs network = \"none\""), "{e}");
    }

    #[test]
    fn memory_and_pids_default_to_safe_limits_with_max_as_the_opt_out() {
        let m = one("").unwrap_or_else(|e| panic!("{e}"));
        let l = &m.containers[0].limits;
        assert_eq!((l.memory_max, l.pids_max, l.cpu_max), (Some(256 << 20), Some(1024), None));
        let m = one("limits = { memory = \"max\", pids = \"max\" }").unwrap_or_else(|e| panic!("{e}"));
        let l = &m.containers[0].limits;
        assert_eq!((l.memory_max, l.pids_max), (None, None));
        let m = one("limits = { memory = \"8M\", pids = 7 }").unwrap_or_else(|e| panic!("{e}"));
        let l = &m.containers[0].limits;
        assert_eq!((l.memory_max, l.pids_max), (Some(8 << 20), Some(7)));
        assert!(one("limits = { pids = \"lots\" }").is_err());
        assert!(one("limits = { memory = \"maximum\" }").is_err());
    }

    #[test]
    fn compatible_is_required_and_named_when_missing() {
        let text = GOOD.replace("compatible = \"cairn-test\"\n", "");
        let a: Appliance = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let e = a.to_manifest(Path::new("a.toml"), &info()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("compatible: missing"), "{e}");
        let a: Appliance = toml::from_str(GOOD).unwrap_or_else(|e| panic!("{e}"));
        let m = a.to_manifest(Path::new("a.toml"), &info()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.compatible.as_str(), "cairn-test");
        let e = one("").map(|_| ()).and_then(|_| {
            let bad = GOOD.replace("\"cairn-test\"", "\"cam era\"");
            let a: Appliance = toml::from_str(&bad).map_err(|e| e.to_string())?;
            a.to_manifest(Path::new("a.toml"), &info()).map(|_| ()).map_err(|e| e.to_string())
        });
        assert!(e.err().unwrap_or_default().contains("compatible must be"));
    }

    #[test]
    fn sizes_and_signals_parse() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999G"), None);
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("12"), Some(12));
        assert_eq!(signal_number("SIGFOO"), None);
    }
}

#[cfg(test)]
mod place_tests {
    use super::*;

    #[test]
    fn problems_name_the_line_of_their_table() {
        let text = "appliance = \"a\"\nversion = 1\ncompatible = \"t\"\n\n[[layer]]\nname = \"base\"\nsource = \"x\"\n\n[[container]]\n\
                    name = \"ok\"\nlayers = [\"base\"]\nargv = [\"/x\"]\n\n  [[ container ]]\nname = \"bad\"\n\
                    layers = [\"base\"]\nargv = [\"/x\"]\nsecurity = { cap_add = [\"NOPE\"] }\n";
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("a.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let app = Appliance::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(app.lines.layers, vec![5]);
        assert_eq!(app.lines.containers, vec![9, 14]);
        let info =
            BTreeMap::from([("base".to_owned(), verity::identity_by_digest(Digest([0; 32]), 4096, Digest([0; 32])))]);
        let err = app.to_manifest(&path, &info).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 14: container[1] (bad): security.cap_add: unknown capability \"NOPE\""), "{err}");
    }
}

// Image defaults (issue 15): a container takes Entrypoint + Cmd, Env,
// WorkingDir and User from the image of its topmost layer built from an
// image, unless this file sets them. See crate::import::config.
impl Appliance {
    /// Record which keys each `[[container]]` table of `text` sets.
    fn mark_explicit(&mut self, text: &str) {
        let Ok(table) = toml::from_str::<toml::Table>(text) else { return };
        let Some(list) = table.get("container").and_then(|c| c.as_array()) else { return };
        for (c, t) in self.containers.iter_mut().zip(list) {
            c.explicit = t.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_default();
        }
    }

    /// Containers that may take argv from an image get a stand-in, so the
    /// whole file can be checked before layers are built.
    pub fn with_placeholders(&self) -> Appliance {
        let mut app = self.clone();
        for c in &mut app.containers {
            if c.argv.is_empty() && !c.explicit.contains("argv") {
                c.argv = vec!["/image-entrypoint".into()];
            }
            if c.user.is_some() {
                c.uid = 0;
                c.gid = 0;
            }
        }
        app
    }

    /// This appliance with the image defaults applied: `images` gives the
    /// image of each layer built from one (by layer name). Returns where
    /// each container's values came from.
    pub fn with_image_defaults(
        &self,
        path: &Path,
        images: &BTreeMap<String, crate::import::config::ImageInfo>,
    ) -> Result<(Appliance, Vec<crate::import::config::ContainerOrigins>), ApplianceError> {
        use crate::import::config::{apply_defaults, Explicit};
        let mut app = self.clone();
        let mut origins = Vec::new();
        let mut problems = Vec::new();
        for (i, c) in app.containers.iter_mut().enumerate() {
            let set = |k: &str| c.explicit.contains(k);
            let explicit = Explicit {
                argv: set("argv").then(|| c.argv.clone()),
                env: set("env").then(|| c.env.clone()),
                cwd: set("cwd").then(|| c.cwd.clone()),
                user: c.user.clone(),
                uid_gid: (set("uid") || set("gid")).then_some((c.uid, c.gid)),
                groups: set("groups").then(|| c.groups.clone()),
            };
            let image = c.layers.iter().rev().find_map(|l| images.get(l).map(|info| (l.as_str(), info)));
            match apply_defaults(&c.name, &explicit, image) {
                Ok((eff, o)) => {
                    (c.argv, c.env, c.cwd, c.uid, c.gid, c.groups) =
                        (eff.argv, eff.env, eff.cwd, eff.uid, eff.gid, eff.groups);
                    origins.push(o);
                }
                Err(p) => {
                    let place = format!("{}container[{i}] ({})", HeaderLines::place(&self.lines.containers, i), c.name);
                    problems.extend(p.into_iter().map(|p| format!("{place}: {p}")));
                }
            }
        }
        if problems.is_empty() {
            Ok((app, origins))
        } else {
            Err(ApplianceError::Invalid { path: path.to_owned(), problems })
        }
    }
}
