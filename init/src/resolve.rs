//! A manifest container resolved into the runtime's spec: the only code
//! that knows both the manifest (`cairn-format`) and the runtime (whose
//! types are its own). It maps layer names to their mount directories,
//! device sources to host nodes, and the manifest's limits, namespaces and
//! rlimits to the runtime's plain types.
//!
//! Device source rules (the manifest validation, shared with the host tool, already
//! refuses `partition:cairn-*` and paths outside `/dev/`; they are checked
//! again here so PID 1 does not depend on it):
//! - `partition:NAME` is a partition of the boot disk, by GPT name, and
//!   never a system (`cairn-*`) partition;
//! - anything else is a path under `/dev/`;
//! - whatever the name, a block device that is the boot disk itself or one
//!   of its system partitions (same device number, `st_rdev`) is refused: a
//!   `/dev/vda` or a `/dev/disk/by-*` alias cannot hand a container the
//!   state, the manifest slots, the layers or the mounted data partition;
//! - a block device whose major is device-mapper's (`/proc/devices`) is
//!   refused: a layer's verity target (`/dev/dm-N`, `/dev/mapper/...`)
//!   is a system device too, and cairn hands containers no dm device.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use cairn_format::manifest::{self as m, check_device_source, DeviceSource};
use cairn_runtime::spec::{self as rt, ContainerSpec};

use crate::partitions::{Partitions, SYSTEM_PREFIX};

/// Device numbers a container may never be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forbidden {
    rdevs: Vec<u64>,
    /// Device-mapper's block major, when the kernel has it.
    dm_major: Option<u32>,
}

impl Forbidden {
    /// The boot disk `/dev/<disk>` and its system partitions, by device
    /// number (nodes that cannot be read are skipped: nothing to compare).
    pub fn of_boot_disk(disk: &str, parts: &Partitions) -> Self {
        let nodes = std::iter::once(format!("/dev/{disk}"))
            .chain(parts.iter().filter(|(n, _)| n.starts_with(SYSTEM_PREFIX)).map(|(_, d)| d.clone()));
        Self { rdevs: nodes.filter_map(|n| block_rdev(&n)).collect(), dm_major: crate::dm::major() }
    }

    /// Why a block device number is forbidden, if it is.
    pub fn refusal(&self, rdev: u64, path: &str) -> Option<DeviceRefusal> {
        if self.rdevs.contains(&rdev) {
            return Some(DeviceRefusal::BootDisk(path.to_owned()));
        }
        if self.dm_major.is_some_and(|m| libc::major(rdev) == m) {
            return Some(DeviceRefusal::DeviceMapper(path.to_owned()));
        }
        None
    }
}

/// The device number of a block device node (following symlinks).
fn block_rdev(path: &str) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    m.file_type().is_block_device().then(|| m.rdev())
}

/// Why a device source is refused on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRefusal {
    /// It breaks a name rule shared with the host (`check_device_source`).
    Rule(&'static str),
    /// `partition:NAME` naming a system (`cairn-*`) partition.
    SystemPartition,
    /// `partition:NAME` with no such partition on the boot disk.
    NoSuchPartition(String),
    /// The node is, by device number, the boot disk or one of its system
    /// partitions.
    BootDisk(String),
    /// The node is a device-mapper device (a layer's verity target).
    DeviceMapper(String),
}

impl core::fmt::Display for DeviceRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceRefusal::Rule(why) => f.write_str(why),
            DeviceRefusal::SystemPartition => f.write_str("names a system (cairn-*) partition"),
            DeviceRefusal::NoSuchPartition(name) => write!(f, "no partition {name} on the boot disk"),
            DeviceRefusal::BootDisk(path) => write!(f, "{path} is the boot disk or one of its system partitions"),
            DeviceRefusal::DeviceMapper(path) => write!(f, "{path} is a device-mapper device (layers' verity targets)"),
        }
    }
}

/// The name rules: the host node a source names, before looking at it.
pub fn source_path(source: &DeviceSource, parts: &Partitions) -> Result<String, DeviceRefusal> {
    check_device_source(source).map_err(DeviceRefusal::Rule)?;
    match source {
        DeviceSource::Partition(name) if name.starts_with(SYSTEM_PREFIX) => Err(DeviceRefusal::SystemPartition),
        DeviceSource::Partition(name) => {
            parts.get(name).cloned().ok_or_else(|| DeviceRefusal::NoSuchPartition(name.clone()))
        }
        DeviceSource::Node(path) => Ok(path.clone()),
    }
}

/// Resolve a device source to a host node, refusing system devices.
pub fn device_source(
    source: &DeviceSource,
    parts: &Partitions,
    forbidden: &Forbidden,
) -> Result<String, DeviceRefusal> {
    let path = source_path(source, parts)?;
    match block_rdev(&path).and_then(|rdev| forbidden.refusal(rdev, &path)) {
        Some(refusal) => Err(refusal),
        None => Ok(path),
    }
}

/// Why a manifest container cannot be turned into a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// A layer is not mounted (missing or failed verification).
    LayerUnavailable(String),
    /// A string holds a NUL byte.
    Nul(String),
    /// A device source that does not exist on this device (or is refused).
    DeviceUnavailable(String),
    /// A volume that could not be prepared (see `volume.failed`).
    VolumeUnavailable(String),
    /// A network whose bridge could not be made (see `network.failed`).
    NetworkUnavailable(String),
}

impl core::fmt::Display for SpecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpecError::LayerUnavailable(l) => write!(f, "layer {l} is not available"),
            SpecError::Nul(s) => write!(f, "string {s:?} contains a NUL byte"),
            SpecError::DeviceUnavailable(d) => write!(f, "device source {d} is not available"),
            SpecError::VolumeUnavailable(v) => write!(f, "volume {v} is not available"),
            SpecError::NetworkUnavailable(n) => write!(f, "network {n} is not available"),
        }
    }
}

fn c_string(s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(s.replace('\0', "\\0")))
}

/// What the seccomp filter of a container with the default security
/// settings is compiled from: PID 1 compiles it ahead of the manifest.
pub fn usual_filter() -> cairn_runtime::spawn::FilterKey {
    let s = m::Security::default();
    cairn_runtime::spawn::FilterKey { deny: s.seccomp_deny, allow_userns: s.allow_userns, capabilities: s.capabilities }
}

/// Resolve a manifest container; `layer_dir` maps a layer name to the
/// directory it is mounted on, or `None` if it is unavailable; `device`
/// maps a device source to a host device node.
pub fn container_spec(
    c: &m::Container,
    layer_dir: impl Fn(&str) -> Option<String>,
    device: impl Fn(&DeviceSource) -> Option<String>,
) -> Result<ContainerSpec, SpecError> {
    let devices = c
        .security
        .devices
        .iter()
        .map(|d| {
            device(&d.source)
                .map(|host| rt::Device { path: d.path.clone(), host, mode: d.mode })
                .ok_or_else(|| SpecError::DeviceUnavailable(d.source.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let layer_dirs = c
        .layers
        .iter()
        .map(|l| layer_dir(l).ok_or_else(|| SpecError::LayerUnavailable(l.clone())))
        .collect::<Result<_, _>>()?;
    Ok(ContainerSpec {
        name: c.name.clone(),
        layer_dirs,
        scratch_bytes: c.limits.scratch_bytes,
        argv: c.argv.iter().map(|a| c_string(a)).collect::<Result<_, _>>()?,
        env: c.env.iter().map(|e| c_string(e)).collect::<Result<_, _>>()?,
        cwd: c.cwd.clone(),
        hostname: c.hostname.clone(),
        uid: c.uid,
        gid: c.gid,
        limits: limits(&c.limits),
        // A heartbeat check is proved on the socket (a check by command
        // is run by PID 1 and needs none).
        control: !c.permissions.is_empty()
            || c.health.as_ref().is_some_and(|h| h.probe == cairn_format::manifest::HealthProbe::Heartbeat),
        groups: c.groups.clone(),
        capabilities: c.security.capabilities,
        no_new_privs: c.security.no_new_privs,
        readonly_rootfs: c.security.readonly_rootfs,
        seccomp: c.security.seccomp,
        seccomp_deny: c.security.seccomp_deny.clone(),
        allow_userns: c.security.allow_userns,
        devices,
        network: match &c.network {
            m::Network::None => rt::Network::None,
            m::Network::Host => rt::Network::Host,
            m::Network::Join(other) => rt::Network::Join(other.clone()),
        },
        rlimits: c.limits.rlimits.iter().map(rlimit).collect(),
        stop_signal: i32::from(c.stop.signal),
        stop_grace_ms: c.stop.grace_ms,
        signal_group: c.signal_group,
        console: c.console,
        userns: c
            .security
            .userns
            .as_ref()
            .map(|u| rt::UserNamespace { uid_map: ids(&u.uid_map), gid_map: ids(&u.gid_map) }),
        volumes: Vec::new(),  // volumes::attach
        networks: Vec::new(), // networks::attach
        hosts: None,
        resolv_conf: None,
    })
}

fn limits(l: &m::Limits) -> rt::Limits {
    rt::Limits {
        memory_max: l.memory_max,
        cpu_max: l.cpu_max.map(|c| rt::CpuMax { quota_us: c.quota_us, period_us: c.period_us }),
        pids_max: l.pids_max,
        memory_high: l.memory_high,
        memory_swap_max: l.memory_swap_max,
        cpu_weight: l.cpu_weight,
        cpuset_cpus: l.cpuset_cpus.clone(),
        io_max: l
            .io_max
            .iter()
            .map(|io| rt::IoMax {
                device: io.device.clone(),
                rbps: io.rbps,
                wbps: io.wbps,
                riops: io.riops,
                wiops: io.wiops,
            })
            .collect(),
    }
}

fn rlimit(r: &m::Rlimit) -> rt::Rlimit {
    use m::RlimitResource as M;
    use rt::RlimitResource as R;
    let resource = match r.resource {
        M::Nofile => R::Nofile,
        M::Nproc => R::Nproc,
        M::Core => R::Core,
        M::Memlock => R::Memlock,
        M::Stack => R::Stack,
        M::Fsize => R::Fsize,
        M::As => R::As,
        M::Cpu => R::Cpu,
        M::Nice => R::Nice,
        M::Rtprio => R::Rtprio,
        M::Sigpending => R::Sigpending,
        M::Msgqueue => R::Msgqueue,
    };
    rt::Rlimit { resource, soft: r.soft, hard: r.hard }
}

fn ids(map: &[m::IdRange]) -> Vec<rt::IdRange> {
    map.iter().map(|r| rt::IdRange { inside: r.inside, outside: r.outside, count: r.count }).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn parts() -> Partitions {
        [("cairn-state", "/dev/vda1"), ("cairn-data", "/dev/vda7"), ("camera-store", "/dev/vda8")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    #[test]
    fn sources_resolve_by_the_name_rules() {
        let p = parts();
        let path = |s: &str| source_path(&DeviceSource::parse(s), &p);
        assert_eq!(path("partition:camera-store"), Ok("/dev/vda8".into()));
        assert_eq!(path("/dev/ttyS1"), Ok("/dev/ttyS1".into()));
        // The shared rule refuses cairn-* first; the device's own check
        // stands behind it.
        assert!(matches!(path("partition:cairn-data"), Err(DeviceRefusal::Rule(r)) if r.contains("system (cairn-*)")));
        assert!(matches!(path("partition:cairn-state"), Err(DeviceRefusal::Rule(_))));
        assert_eq!(path("partition:ghost"), Err(DeviceRefusal::NoSuchPartition("ghost".into())));
        assert_eq!(path("partition:ghost").unwrap_err().to_string(), "no partition ghost on the boot disk");
        assert!(matches!(path("/etc/shadow"), Err(DeviceRefusal::Rule(_))));
        assert!(matches!(path("/dev/../etc/shadow"), Err(DeviceRefusal::Rule(_))));
        assert_eq!(
            DeviceRefusal::BootDisk("/dev/vda".into()).to_string(),
            "/dev/vda is the boot disk or one of its system partitions"
        );
    }

    pub(crate) fn container() -> m::Container {
        m::Container {
            name: "cam".into(),
            layers: vec!["base".into(), "app".into()],
            argv: vec!["/bin/app".into(), "-v".into()],
            env: vec!["A=1".into()],
            cwd: "/srv".into(),
            hostname: "cam-1".into(),
            uid: 7,
            gid: 8,
            limits: m::Limits {
                memory_max: Some(32 << 20),
                cpu_max: Some(m::CpuMax { quota_us: 5000, period_us: 10_000 }),
                pids_max: Some(9),
                scratch_bytes: 1 << 20,
                memory_high: Some(16 << 20),
                memory_swap_max: Some(0),
                cpu_weight: Some(50),
                cpuset_cpus: Some("0-1".into()),
                io_max: vec![m::IoMax { device: "vda".into(), rbps: Some(1), wbps: None, riops: None, wiops: Some(2) }],
                rlimits: vec![m::Rlimit { resource: m::RlimitResource::Msgqueue, soft: 1, hard: 2 }],
            },
            restart: m::Restart { policy: m::RestartPolicy::Never, backoff_initial_ms: 1, backoff_max_ms: 2 },
            depends_on: vec!["db".into()],
            stop: m::Stop { signal: 2, grace_ms: 300 },
            critical: true,
            permissions: vec![m::Permission::Status],
            log_size: m::DEFAULT_LOG_SIZE,
            health: None,
            publish: Vec::new(),
            networks: Vec::new(),
            groups: vec![20],
            security: m::Security {
                devices: vec![m::Device {
                    path: "/dev/store".into(),
                    source: DeviceSource::Partition("camera-store".into()),
                    mode: 0o640,
                }],
                userns: Some(m::UserNamespace {
                    uid_map: vec![m::IdRange { inside: 0, outside: 100_000, count: 10 }],
                    gid_map: vec![m::IdRange { inside: 0, outside: 200_000, count: 10 }],
                }),
                seccomp_deny: vec!["ptrace".into()],
                ..m::Security::default()
            },
            network: m::Network::Join("db".into()),
            signal_group: true,
            console: true,
            mounts: vec![m::VolumeMount { volume: "db".into(), path: "/var/db".into(), readonly: true }],
        }
    }

    #[test]
    fn a_manifest_container_maps_field_for_field_into_the_runtime_spec() {
        let p = parts();
        let layer = |l: &str| Some(format!("/run/cairn/layers/{l}"));
        let device = |s: &DeviceSource| source_path(s, &p).ok();
        let s = container_spec(&container(), layer, device).unwrap();
        assert_eq!(s.layer_dirs, ["/run/cairn/layers/base", "/run/cairn/layers/app"]);
        assert_eq!(s.argv, [c"/bin/app", c"-v"]);
        assert_eq!(s.env, [c"A=1"]);
        assert_eq!((s.cwd.as_str(), s.hostname.as_str(), s.uid, s.gid), ("/srv", "cam-1", 7, 8));
        assert_eq!(s.devices, [rt::Device { path: "/dev/store".into(), host: "/dev/vda8".into(), mode: 0o640 }]);
        assert_eq!(s.network, rt::Network::Join("db".into()));
        assert_eq!(s.rlimits, [rt::Rlimit { resource: rt::RlimitResource::Msgqueue, soft: 1, hard: 2 }]);
        assert_eq!(
            s.limits,
            rt::Limits {
                memory_max: Some(32 << 20),
                cpu_max: Some(rt::CpuMax { quota_us: 5000, period_us: 10_000 }),
                pids_max: Some(9),
                memory_high: Some(16 << 20),
                memory_swap_max: Some(0),
                cpu_weight: Some(50),
                cpuset_cpus: Some("0-1".into()),
                io_max: vec![rt::IoMax {
                    device: "vda".into(),
                    rbps: Some(1),
                    wbps: None,
                    riops: None,
                    wiops: Some(2)
                }],
            }
        );
        let u = s.userns.as_ref().unwrap();
        assert_eq!((u.uid_map[0].outside, u.gid_map[0].outside), (100_000, 200_000));
        assert_eq!((s.scratch_bytes, s.stop_signal, s.stop_grace_ms), (1 << 20, 2, 300));
        assert!(s.control && s.signal_group && s.console && s.seccomp && !s.allow_userns);
        assert_eq!((s.groups.as_slice(), s.seccomp_deny.as_slice()), (&[20][..], &["ptrace".to_owned()][..]));
        // The socket: for a permission or a heartbeat, not for a check by
        // command (PID 1 runs it).
        let check =
            |probe| m::HealthCheck { probe, interval_ms: 1000, timeout_ms: 500, retries: 1, start_period_ms: 0 };
        for (permissions, probe, control) in [
            (vec![], None, false),
            (vec![], Some(m::HealthProbe::Heartbeat), true),
            (vec![], Some(m::HealthProbe::Command(vec!["/bin/check".into()])), false),
            (vec![m::Permission::Status], Some(m::HealthProbe::Command(vec!["/bin/check".into()])), true),
        ] {
            let c = m::Container { permissions, health: probe.map(check), ..container() };
            assert_eq!(container_spec(&c, layer, device).unwrap().control, control, "{:?}", c.health);
        }
    }

    /// The filter compiled ahead is the one a container with the default
    /// security settings asks for, and only such a container's.
    #[test]
    fn a_container_with_default_security_asks_for_the_usual_filter() {
        let all = |_: &str| Some("/l".to_owned());
        let none = |_: &DeviceSource| None;
        let mut c = container();
        c.security = m::Security::default();
        let spec = container_spec(&c, all, none).unwrap();
        assert_eq!(cairn_runtime::spawn::FilterKey::of(&spec), Some(usual_filter()));
        c.security.capabilities |= 1 << 21;
        let spec = container_spec(&c, all, none).unwrap();
        assert_ne!(cairn_runtime::spawn::FilterKey::of(&spec), Some(usual_filter()));
    }

    #[test]
    fn a_missing_layer_or_device_or_a_nul_is_a_spec_error() {
        let p = parts();
        let layer = |l: &str| (l == "base").then(|| "/l/base".to_owned());
        let device = |s: &DeviceSource| source_path(s, &p).ok();
        assert_eq!(container_spec(&container(), layer, device).err(), Some(SpecError::LayerUnavailable("app".into())));
        let all = |_: &str| Some("/l".to_owned());
        let mut c = container();
        c.security.devices[0].source = DeviceSource::Partition("ghost".into());
        assert_eq!(container_spec(&c, all, device).err(), Some(SpecError::DeviceUnavailable("partition:ghost".into())));
        let mut c = container();
        c.env.push("B=\0".into());
        assert_eq!(container_spec(&c, all, device).err(), Some(SpecError::Nul("B=\\0".into())));
    }

    /// What boot moves by value (the manifest through `boot.rs`'s
    /// `and_then` chain, one spec per container) stays small: the manifest's lists and
    /// strings are on the heap. It was ~148 KB with fixed capacities.
    #[test]
    fn boot_values_are_small() {
        use std::mem::size_of;
        let sizes = [
            ("Manifest", size_of::<m::Manifest>()),
            ("Container", size_of::<m::Container>()),
            ("ContainerSpec", size_of::<ContainerSpec>()),
        ];
        println!("{sizes:?}");
        for (what, size) in sizes {
            assert!(size < 2048, "{what} is {size} bytes");
        }
    }

    #[test]
    fn a_forbidden_device_number_is_refused_whatever_its_name() {
        // Host test: /dev/null is a char device, never "the boot disk".
        let p = parts();
        let none = Forbidden::default();
        assert_eq!(device_source(&DeviceSource::parse("/dev/null"), &p, &none), Ok("/dev/null".into()));
        let f = Forbidden { rdevs: vec![42], dm_major: None };
        assert_eq!(f.refusal(42, "/dev/x"), Some(DeviceRefusal::BootDisk("/dev/x".into())));
        assert_eq!(f.refusal(43, "/dev/x"), None);
    }

    #[test]
    fn any_device_mapper_node_is_refused() {
        let f = Forbidden { rdevs: vec![], dm_major: Some(254) };
        let dm3 = libc::makedev(254, 3);
        assert_eq!(f.refusal(dm3, "/dev/dm-3"), Some(DeviceRefusal::DeviceMapper("/dev/dm-3".into())));
        assert_eq!(
            f.refusal(dm3, "/dev/mapper/cairn-layer-app").unwrap().to_string(),
            "/dev/mapper/cairn-layer-app is a device-mapper device (layers' verity targets)"
        );
        // Another major (virtio-blk's, say) is not dm.
        assert_eq!(f.refusal(libc::makedev(253, 3), "/dev/vdb"), None);
        // Without dm in the kernel nothing is refused for it.
        assert_eq!(Forbidden::default().refusal(dm3, "/dev/dm-3"), None);
    }
}
