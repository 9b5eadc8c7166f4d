//! cgroup v2: the value strings written into control files (pure, tested on
//! the host) and the filesystem operations on one container's cgroup.

use std::fs;
use std::os::fd::OwnedFd;

use nix::sys::stat::Mode;

use crate::spec::{CpuMax, Device, IoMax, Limits};

use crate::sys::{self, SysError, SysResult};

/// Where the unified hierarchy is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The parent of every container cgroup.
pub const CONTAINERS: &str = "/sys/fs/cgroup/cairn";
/// Controllers the init enables for children.
pub const CONTROLLERS: &str = "+cpu +memory +pids +io +cpuset";

/// Create the cgroup `path` below the root (an existing one is kept) with
/// [`CONTROLLERS`] enabled below it: the parent of containers. The root
/// must offer them already.
pub fn make_parent(path: &str) -> SysResult<()> {
    sys::mkdir(path, 0o755)?;
    Cgroup::at(path).write("cgroup.subtree_control", CONTROLLERS)
}

/// `memory.max` value.
pub fn memory_max(v: Option<u64>) -> String {
    v.map_or_else(|| "max".into(), |b| b.to_string())
}

/// `cpu.max` value: "$QUOTA $PERIOD" or "max $PERIOD".
pub fn cpu_max(v: Option<CpuMax>) -> String {
    match v {
        Some(c) => format!("{} {}", c.quota_us, c.period_us),
        None => "max 100000".into(),
    }
}

/// `pids.max` value.
pub fn pids_max(v: Option<u32>) -> String {
    v.map_or_else(|| "max".into(), |n| n.to_string())
}

/// One io.max line for a disk whose numbers are `dev` ("MAJ:MIN").
pub fn io_max_line(dev: &str, io: &IoMax) -> String {
    let v = |x: Option<u64>| x.map_or_else(|| "max".to_string(), |n| n.to_string());
    format!("{dev} rbps={} wbps={} riops={} wiops={}", v(io.rbps), v(io.wbps), v(io.riops), v(io.wiops))
}

/// The (file, value) pairs that apply `limits`, in the order written.
/// Optional controls that are not set are left at the kernel default;
/// io.max lines need the disk numbers and are written by [`Cgroup::create`].
pub fn limit_writes(limits: &Limits) -> Vec<(&'static str, String)> {
    let mut w = vec![
        ("memory.max", memory_max(limits.memory_max)),
        ("cpu.max", cpu_max(limits.cpu_max)),
        ("pids.max", pids_max(limits.pids_max)),
        ("memory.high", memory_max(limits.memory_high)),
    ];
    if let Some(swap) = limits.memory_swap_max {
        w.push(("memory.swap.max", swap.to_string()));
    }
    if let Some(weight) = limits.cpu_weight {
        w.push(("cpu.weight", weight.to_string()));
    }
    if let Some(cpus) = &limits.cpuset_cpus {
        w.push(("cpuset.cpus", cpus.as_str().to_owned()));
    }
    w
}

/// Read one `key value` field from a flat-keyed file such as memory.events.
pub fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok())).flatten()
    })
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    /// Absolute directory.
    pub path: String,
}

impl Cgroup {
    /// The cgroup at `path` (absolute).
    pub fn at(path: &str) -> Self {
        Self { path: path.into() }
    }

    /// Path of the cgroup for a container name.
    pub fn for_container(name: &str) -> Self {
        Self::at(&format!("{CONTAINERS}/{name}"))
    }

    /// Create it (if needed), write the limits and attach the device
    /// program: the defaults plus each of `devices`, by the type and
    /// numbers of its host node, from `programs` (loaded there the first
    /// time these rules are asked for), unless the parent holds it for
    /// every cgroup below ([`crate::devices::Programs::attach_defaults_to`]). Returns the directory, open for
    /// `clone3(CLONE_INTO_CGROUP)` (see [`Cgroup::open_dir`]); the control
    /// files are opened through it, not from `/` each.
    pub fn create(
        &self,
        limits: &Limits,
        devices: &[Device],
        programs: &mut crate::devices::Programs,
    ) -> SysResult<OwnedFd> {
        sys::mkdir(&self.path, 0o755)?;
        let dir = self.open_dir()?;
        let mut rules = crate::devices::default_rules();
        for d in devices {
            rules.push(crate::devices::rule_for(&d.host)?);
        }
        if !programs.inherited(&self.path, &rules) {
            programs.get(&rules, &self.path)?.attach(&dir, &self.path)?;
        }
        for (file, value) in limit_writes(limits) {
            self.write_at(&dir, file, &value)?;
        }
        for io in &limits.io_max {
            let sysfs = format!("/sys/class/block/{}/dev", io.device);
            let dev = fs::read_to_string(&sysfs).map_err(|e| SysError {
                op: "io.max disk",
                arg: sysfs.clone(),
                errno: e.raw_os_error().unwrap_or(libc::ENOENT),
            })?;
            self.write_at(&dir, "io.max", &io_max_line(dev.trim(), io))?;
        }
        Ok(dir)
    }

    /// Write one control file.
    pub fn write(&self, file: &'static str, value: &str) -> SysResult<()> {
        let path = format!("{}/{file}", self.path);
        fs::write(&path, value).map_err(|e| SysError {
            op: file,
            arg: format!("{path} <- {value}"),
            errno: e.raw_os_error().unwrap_or(0),
        })
    }

    /// [`Cgroup::write`] through the open directory `dir` (this cgroup's).
    fn write_at(&self, dir: &OwnedFd, file: &'static str, value: &str) -> SysResult<()> {
        let failed = |errno| SysError { op: file, arg: format!("{}/{file} <- {value}", self.path), errno };
        let fd =
            nix::fcntl::openat(dir, file, nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| failed(e as i32))?;
        sys::write_all(&fd, value.as_bytes()).map_err(|e| failed(e.errno))
    }

    /// Read one control file.
    pub fn read(&self, file: &str) -> Option<String> {
        fs::read_to_string(format!("{}/{file}", self.path)).ok()
    }

    /// A directory descriptor for `clone3(CLONE_INTO_CGROUP)` (not O_PATH:
    /// the kernel looks the cgroup up through a regular file reference).
    pub fn open_dir(&self) -> SysResult<OwnedFd> {
        sys::open(&self.path, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// OOM kills so far (`memory.events` oom_kill).
    pub fn oom_kills(&self) -> u64 {
        self.read("memory.events").and_then(|t| flat_key(&t, "oom_kill")).unwrap_or(0)
    }

    /// Freeze (`true`) or thaw every process in it (`cgroup.freeze`). The
    /// write returns at once; freezing is done when [`Cgroup::frozen`] says so.
    pub fn freeze(&self, frozen: bool) -> SysResult<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// Whether it is frozen (`cgroup.events` frozen 1); `None`: unreadable.
    pub fn frozen(&self) -> Option<bool> {
        self.read("cgroup.events").and_then(|t| flat_key(&t, "frozen")).map(|v| v == 1)
    }

    /// Kill every process in it (`cgroup.kill`).
    pub fn kill_all(&self) -> SysResult<()> {
        self.write("cgroup.kill", "1")
    }

    /// True when no process is left (`cgroup.events` populated 0).
    pub fn is_empty(&self) -> bool {
        self.read("cgroup.events").and_then(|t| flat_key(&t, "populated")) == Some(0)
    }

    /// Remove the (empty) cgroup directory.
    pub fn remove(&self) -> SysResult<()> {
        let p = sys::cstr(&self.path)?;
        // rmdir(2) is unlinkat(AT_FDCWD, path, AT_REMOVEDIR).
        match nix::unistd::unlinkat(nix::fcntl::AT_FDCWD, p.as_c_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(SysError { op: "rmdir cgroup", arg: self.path.clone(), errno: e as i32 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_what_the_kernel_expects() {
        assert_eq!(memory_max(None), "max");
        assert_eq!(memory_max(Some(33554432)), "33554432");
        assert_eq!(cpu_max(Some(CpuMax { quota_us: 20000, period_us: 100000 })), "20000 100000");
        assert_eq!(cpu_max(None), "max 100000");
        assert_eq!(pids_max(Some(16)), "16");
        assert_eq!(pids_max(None), "max");
        let mut l = Limits {
            memory_max: Some(1 << 20),
            cpu_max: None,
            pids_max: Some(3),
            memory_high: None,
            memory_swap_max: Some(0),
            cpu_weight: Some(50),
            cpuset_cpus: Some("0-1".into()),
            io_max: Vec::new(),
        };
        let w = limit_writes(&l);
        assert_eq!(w[0], ("memory.max", "1048576".to_string()));
        assert_eq!(w[2], ("pids.max", "3".to_string()));
        assert!(w.contains(&("memory.high", "max".to_string())));
        assert!(w.contains(&("memory.swap.max", "0".to_string())));
        assert!(w.contains(&("cpu.weight", "50".to_string())));
        assert!(w.contains(&("cpuset.cpus", "0-1".to_string())));
        l.cpuset_cpus = None;
        assert!(!limit_writes(&l).iter().any(|(f, _)| *f == "cpuset.cpus"));
        let io = IoMax { device: "vda".into(), rbps: Some(1 << 20), wbps: None, riops: None, wiops: Some(10) };
        assert_eq!(io_max_line("254:0", &io), "254:0 rbps=1048576 wbps=max riops=max wiops=10");
    }

    #[test]
    fn flat_keyed_files_parse() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_key(events, "oom_kill"), Some(1));
        assert_eq!(flat_key(events, "oom"), Some(2));
        assert_eq!(flat_key(events, "missing"), None);
        assert_eq!(flat_key("populated 0\nfrozen 0\n", "populated"), Some(0));
    }
}
