//! `cairn-bench`: PID 1 of the bench guest (`cargo xtask bench start`).
//!
//! The guest is an initramfs on the boards' kernel and QEMU machine: this
//! program as `/init`, busybox-static, Debian's `crun` and `runc` with
//! their libraries, and the boards' modules. It leaves the initramfs for a
//! tmpfs (so containers can pivot_root), mounts what `cairn-init` mounts
//! (cgroup v2 with the same controllers delegated), then starts the same
//! container N times with each contender, interleaved (A, B, C, D, A, ...):
//!
//! - `fork-exec`: fork + execve of the rootfs' `/bin/true` + waitpid, no
//!   isolation: the floor;
//! - `cairn`: `cairn_runtime::spawn` as cairn-init calls it (seccomp filter
//!   compiled once per container, cgroup `/sys/fs/cgroup/cairn/bench`),
//!   then the report pipe's EOF (entrypoint executed) and waitpid;
//! - `crun`, `runc`: `crun run` / `runc run` of an OCI bundle with the
//!   same rootfs, limits, namespaces, capabilities and seccomp deny list.
//!
//! Every sample is one console line `bench-sample <who> <metric> <µs>`;
//! the host (xtask) computes the statistics. Metrics: `reaped` (start
//! requested to the entrypoint's exit reaped, for cairn and fork-exec the
//! container init / child; for crun and runc their `run` command's exit,
//! which is after they reaped the container and deleted it), `exec` (cairn
//! only: start requested to the entrypoint executed, seen as EOF on the
//! report pipe), `cleanup` (cairn only, untimed in `reaped`: removing the
//! cgroup afterwards, which crun and runc do inside their `run`).
//!
//! Kernel command line: `cairn.bench.n=N` (samples per contender, default
//! 200), `cairn.bench.only=a,b` (contenders to run).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use cairn_runtime::devices::Programs;
use cairn_runtime::spawn::{self as spawning, Setup};
use cairn_runtime::spec::{ContainerSpec, CpuMax, Limits, Network};
use cairn_runtime::Ahead;
use cairn_runtime::{sys, Cgroup};

/// The rootfs every contender starts (busybox-static, `/bin/true`).
const ROOTFS: &str = "/bench/rootfs";
/// The OCI bundle for crun and runc (its config.json is written at start).
const BUNDLE: &str = "/bench/bundle";
/// The entrypoint, inside the rootfs.
const ENTRYPOINT: &str = "/bin/true";

/// The same limits for every contender.
const MEMORY_MAX: u64 = 64 << 20;
const PIDS_MAX: u32 = 64;
const CPU_QUOTA_US: u32 = 100_000;
const CPU_PERIOD_US: u32 = 100_000;
/// cairn's writable scratch tmpfs (crun and runc write into the rootfs).
const SCRATCH_BYTES: u64 = 16 << 20;

/// Syscalls denied in the crun/runc seccomp profile: the ones cairn's
/// default filter denies (runtime/src/seccomp.rs) that libseccomp 2.5
/// knows by name on both architectures.
const SECCOMP_DENY: &[&str] = &[
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "lookup_dcookie",
    "syslog",
    "name_to_handle_at",
    "open_by_handle_at",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "vhangup",
    "mbind",
    "set_mempolicy",
    "get_mempolicy",
    "move_pages",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

type Res<T> = Result<T, String>;

mod net;
mod trace;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let word = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match word(1) {
        "hello" => hello(),
        // The network benchmark's two ends, inside its containers (net.rs).
        "tcp-sink" => std::process::exit(net::sink(word(2).parse().unwrap_or(0))),
        "tcp-source" => {
            std::process::exit(net::source(word(2), word(3).parse().unwrap_or(0), word(4).parse().unwrap_or(0)))
        }
        _ => {}
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("cairn-bench: runs as PID 1 of the bench guest (cargo xtask bench start)");
        std::process::exit(2);
    }
    if let Err(e) = guest() {
        println!("bench-error setup {e}");
    }
    println!("bench-done");
    // SAFETY: sync and reboot take no pointers; PID 1 powers the guest off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; PID 1 must not exit.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// `cairn-bench hello`: the payload of the boot benchmark, as the bare
/// `/init` (kernel command line `-- hello`) or as a container's
/// entrypoint. Its first and only line carries CLOCK_BOOTTIME (the clock
/// of cairn's `t=`): `bench-hello t=<seconds> pid=<pid>`. With `stay` it
/// then sleeps forever (the scale benchmark); else as PID 1 it powers the
/// guest off, and otherwise exits 0.
fn hello() -> ! {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let line = format!("bench-hello t={}.{:06} pid={pid}\n", ts.tv_sec, ts.tv_nsec / 1000);
    // One write: the line reaches the console whole.
    // SAFETY: the pointer and length describe `line`.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    if std::env::args().nth(2).as_deref() == Some("stay") {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    if pid == 1 {
        // SAFETY: sync and reboot take no pointers.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
    std::process::exit(0)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A monotonic timestamp in µs.
fn now_us(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e6
}

fn guest() -> Res<()> {
    leave_initramfs()?;
    for (what, src, target, fstype, flags, data) in [
        ("proc", "proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None),
        ("sysfs", "sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None),
        ("devtmpfs", "devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, Some("mode=0755")),
        ("devpts", "devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, Some("mode=0620,ptmxmode=0666")),
        ("shm", "shm", "/dev/shm", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=1777,size=16m")),
        ("run", "run", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=0755,size=32m")),
        ("tmp", "tmp", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=1777,size=32m")),
        (
            "cgroup2",
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("nsdelegate"),
        ),
    ] {
        sys::mkdir_all(target, 0o755).map_err(err)?;
        match sys::mount(what, Some(src), target, Some(fstype), flags, data) {
            Err(e) if e.errno != libc::EBUSY => return Err(err(e)),
            _ => {}
        }
    }
    load_modules();
    // What cairn-init's early::cgroups does, plus a parent for crun and runc.
    let root = Cgroup::at("/sys/fs/cgroup");
    root.write("cgroup.subtree_control", cairn_runtime::cgroup::CONTROLLERS).map_err(err)?;
    for parent in [cairn_runtime::cgroup::CONTAINERS, "/sys/fs/cgroup/bench"] {
        cairn_runtime::cgroup::make_parent(parent).map_err(err)?;
    }
    std::fs::write(format!("{BUNDLE}/config.json"), oci_config()).map_err(err)?;

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let n: usize = arg(&cmdline, "cairn.bench.n").and_then(|v| v.parse().ok()).unwrap_or(200);
    let all = [
        "fork-exec",
        "cairn",
        "crun",
        "runc",
        "ns-clone",
        "ns-clone-nonet",
        "cgroup",
        "cairn-bridge",
        "cairn-egress",
        "cairn-own-net",
        "cairn-cold",
    ];
    let only = arg(&cmdline, "cairn.bench.only");
    let mut contenders: Vec<&str> =
        all.iter().copied().filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *c))).collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bench-info n={n} contenders={} kernel={} controllers={} crun={} runc={}",
        contenders.join(","),
        kernel.trim(),
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control").unwrap_or_default().trim().replace(' ', ","),
        version("/usr/bin/crun"),
        version("/usr/bin/runc"),
    );

    let spec = cairn_spec()?;
    if arg(&cmdline, "cairn.bench.mode").as_deref() == Some("observe") {
        return observe();
    }
    if arg(&cmdline, "cairn.bench.mode").as_deref() == Some("steps") {
        return steps(&spec, n);
    }
    if arg(&cmdline, "cairn.bench.mode").as_deref() == Some("net") {
        let mib = arg(&cmdline, "cairn.bench.mib").and_then(|v| v.parse().ok()).unwrap_or(32);
        return net::run(&spec, n, mib);
    }
    if arg(&cmdline, "cairn.bench.mode").as_deref() == Some("memory") {
        let restarts = arg(&cmdline, "cairn.bench.restarts").and_then(|v| v.parse().ok()).unwrap_or(1000);
        return memory(&spec, restarts);
    }
    let filter = spawning::seccomp_filter(&spec).map_err(err)?;
    let cgroup = Cgroup::for_container(&spec.name);
    // Device programs load once per rule set, and the default one is the
    // containers' parent's, as in cairn-init; the network namespace a start
    // takes is made again after it, as cairn-init does when idle
    // (`cairn-cold` has none of it: a boot's first start without the
    // thread that makes them ahead, its program attached by the start).
    let mut ahead = Ahead::new();
    ahead.programs.attach_defaults_to(cairn_runtime::cgroup::CONTAINERS).map_err(err)?;
    // The same, never refilled: each start makes its own namespace. Its
    // attach replaces the first's program on the parent with its own, of
    // the same rules: each Ahead then knows the parent holds them.
    let mut own_net = Ahead::new();
    own_net.programs.attach_defaults_to(cairn_runtime::cgroup::CONTAINERS).map_err(err)?;
    if arg(&cmdline, "cairn.bench.mode").as_deref() == Some("trace") {
        return trace::run(&spec, filter.as_ref(), &cgroup, &mut ahead, n);
    }
    // The same container on a bridge (a veth pair per start, eth0 at an
    // address), and on a network with egress (plus its default route).
    let (bridged, routed) = if contenders.iter().any(|c| c.starts_with("cairn-")) {
        bridge_up().map_err(err)?;
        let attach = |gateway| cairn_runtime::spec::NetAttach {
            bridge: "cairn-br0".into(),
            iface: "eth0".into(),
            address: [10, 89, 3, 2],
            prefix: 24,
            gateway,
        };
        let mut b = spec.clone();
        b.networks = vec![attach(None)];
        let mut r = spec.clone();
        r.networks = vec![attach(Some([10, 89, 3, 1]))];
        (b, r)
    } else {
        (spec.clone(), spec.clone())
    };
    let mut failures = [0u32; 16];
    // One unmeasured start each first (page cache, first-use costs), then N rounds.
    for round in 0..=n {
        let warmup = round == 0;
        for (ci, who) in contenders.clone().iter().enumerate() {
            let result = match *who {
                "fork-exec" => fork_exec(),
                "cairn" => cairn_start(&spec, filter.as_ref(), &cgroup, &mut ahead, true),
                "cairn-bridge" => cairn_start(&bridged, filter.as_ref(), &cgroup, &mut ahead, true),
                "cairn-egress" => cairn_start(&routed, filter.as_ref(), &cgroup, &mut ahead, true),
                "cairn-own-net" => cairn_start(&spec, filter.as_ref(), &cgroup, &mut own_net, false),
                // Every start loads its device program, as before they
                // were kept (and as at a boot's first start).
                "cairn-cold" => cairn_start(&spec, filter.as_ref(), &cgroup, &mut Ahead::new(), false),
                "crun" => oci_run("/usr/bin/crun", &[]),
                "runc" => oci_run("/usr/bin/runc", &[]),
                "ns-clone" => ns_clone(true),
                "ns-clone-nonet" => ns_clone(false),
                "cgroup" => cgroup_only(&spec),
                _ => Err("unknown contender".into()),
            };
            match result {
                Ok(metrics) if !warmup => {
                    for (metric, us) in metrics {
                        println!("bench-sample {who} {metric} {us:.0}");
                    }
                }
                Ok(_) => println!("bench-warmup {who} ok"),
                Err(e) => {
                    println!("bench-error {who} round={round} {e}");
                    if let Some(f) = failures.get_mut(ci) {
                        *f += 1;
                    }
                }
            }
        }
        // A contender that keeps failing is dropped (its errors are on the console).
        let before = contenders.clone();
        contenders = before
            .iter()
            .enumerate()
            .filter(|(i, who)| {
                let keep = failures.get(*i).copied().unwrap_or(0) < 3;
                if !keep {
                    println!("bench-error {who} dropped after 3 failures");
                }
                keep
            })
            .map(|(_, w)| *w)
            .collect();
        if contenders.len() != before.len() {
            failures = [0; 16];
        }
    }
    Ok(())
}

/// Bridge `cairn-br0` up with the device's address 10.89.3.1/24, as
/// cairn-init makes a network with egress (no firewall: it costs nothing
/// per start).
fn bridge_up() -> cairn_runtime::sys::SysResult<()> {
    use cairn_runtime::netlink::{self, Rtnl};
    let rtnl = Rtnl::open()?;
    let subnet = cairn_format::network::Subnet { addr: [10, 89, 3, 0], prefix: 24 };
    rtnl.call("cairn-br0", &netlink::new_bridge("cairn-br0", cairn_format::network::bridge_mac(subnet)))?;
    netlink::disable_ipv6("cairn-br0")?;
    cairn_runtime::network::configure("cairn-br0", subnet.gateway(), subnet.prefix)
}

/// `key=value` from the kernel command line.
fn arg(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// `PROGRAM --version`, first line, spaces as `_`.
fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().replace(' ', "_")))
        .unwrap_or_else(|| "missing".into())
}

/// The spec cairn-init would resolve for a manifest container with the
/// defaults (see `init/src/resolve.rs` and the manifest's `Security`
/// defaults) plus the bench limits.
fn cairn_spec() -> Res<ContainerSpec> {
    let c = |s: &str| CString::new(s).map_err(err);
    Ok(ContainerSpec {
        name: "bench".into(),
        layer_dirs: vec![ROOTFS.into()],
        scratch_bytes: SCRATCH_BYTES,
        argv: vec![c(ENTRYPOINT)?],
        env: vec![c("PATH=/bin")?],
        cwd: "/".into(),
        hostname: "bench".into(),
        uid: 0,
        gid: 0,
        limits: Limits {
            memory_max: Some(MEMORY_MAX),
            cpu_max: Some(CpuMax { quota_us: CPU_QUOTA_US, period_us: CPU_PERIOD_US }),
            pids_max: Some(PIDS_MAX),
            ..Limits::default()
        },
        control: false,
        groups: vec![],
        capabilities: cairn_format::manifest::DEFAULT_CAPABILITIES,
        no_new_privs: true,
        readonly_rootfs: false,
        seccomp: true,
        seccomp_deny: vec![],
        allow_userns: false,
        devices: vec![],
        network: Network::None,
        rlimits: vec![],
        stop_signal: libc::SIGTERM,
        stop_grace_ms: 1000,
        signal_group: false,
        console: false,
        userns: None,
        volumes: vec![],
        networks: Vec::new(),
        hosts: None,
        resolv_conf: None,
    })
}

/// Start the container with cairn's runtime as cairn-init does, wait for
/// the report pipe's EOF (exec), reap the container init; then, with
/// `refill`, make what the start took from `ahead`, untimed, as cairn-init
/// does once idle.
fn cairn_start(
    spec: &ContainerSpec,
    filter: Option<&cairn_runtime::seccomp::Filter>,
    cgroup: &Cgroup,
    ahead: &mut Ahead,
    refill: bool,
) -> Res<Vec<(&'static str, f64)>> {
    let t0 = Instant::now();
    let started = cairn_runtime::spawn(spec, filter, cgroup, ahead, None).map_err(err)?;
    let spawned_us = now_us(t0);
    let mut pfd = libc::pollfd { fd: started.report.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let exec_us = loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        if rc < 0 && sys::errno() == libc::EINTR {
            continue;
        }
        if rc <= 0 {
            return Err(format!("report pipe: poll rc={rc} errno={}", sys::errno()));
        }
        match spawning::poll_report(&started.report) {
            Setup::Pending => continue,
            Setup::Done => break now_us(t0),
            Setup::ExecFailed(e) => return Err(format!("exec failed: {}", sys::errno_name(e))),
            Setup::Failed(e) => return Err(format!("setup failed: {e}")),
        }
    };
    let status = wait(started.pid)?;
    let reaped_us = now_us(t0);
    drop(started);
    if status != 0 {
        return Err(format!("container init exited with status {status:#x}"));
    }
    let t1 = Instant::now();
    let mut removed = cgroup.remove();
    for _ in 0..100 {
        if !matches!(&removed, Err(e) if e.errno == libc::EBUSY) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        removed = cgroup.remove();
    }
    removed.map_err(err)?;
    let cleanup_us = now_us(t1);
    // What cairn-init does once idle after a start: make the network
    // namespace the next one takes (untimed, as it is off a start's path).
    if refill {
        let _ = ahead.refill();
    }
    Ok(vec![("spawned", spawned_us), ("exec", exec_us), ("reaped", reaped_us), ("cleanup", cleanup_us)])
}

/// `Rss`, `Pss` and USS (`Private_Clean` + `Private_Dirty`) in KiB from
/// `/proc/PID/smaps_rollup`.
fn smaps(pid: &str) -> Res<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("smaps_rollup of {pid}: {e}"))?;
    let field = |k: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(k)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
    };
    Ok((field("Rss:"), field("Pss:"), field("Private_Clean:") + field("Private_Dirty:")))
}

/// Print `bench-mem <who> <when> rss=.. pss=.. uss=..` (KiB).
fn print_mem(who: &str, when: &str, pid: &str) -> Res<()> {
    let (rss, pss, uss) = smaps(pid)?;
    println!("bench-mem {who} {when} rss={rss} pss={pss} uss={uss}");
    Ok(())
}

/// The memory run (`cairn.bench.mode=memory`): this process (the runtime's
/// caller, standing in for PID 1) idle; 16 containers running `sleep`, and
/// one namespace init's Rss/Pss/USS; then `restarts` starts of a container
/// whose entrypoint fails at once (`/bin/false`), one after the other in the
/// same cgroup as cairn-init restarts it, with this process measured along.
fn memory(base: &ContainerSpec, restarts: usize) -> Res<()> {
    print_mem("parent", "idle", "self")?;
    let filter = spawning::seccomp_filter(base).map_err(err)?;
    let mut ahead = Ahead::new();
    let mut running = Vec::new();
    for i in 0..16 {
        let mut spec = base.clone();
        spec.name = format!("stay{i:02}");
        spec.argv = vec![CString::new("/bin/sleep").map_err(err)?, CString::new("3600").map_err(err)?];
        let cg = Cgroup::for_container(&spec.name);
        let started = cairn_runtime::spawn(&spec, filter.as_ref(), &cg, &mut ahead, None).map_err(err)?;
        running.push((started, cg));
    }
    // Let every one finish its set-up (report pipe EOF).
    for (started, _) in &running {
        let mut pfd = libc::pollfd { fd: started.report.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 10_000) };
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    print_mem("parent", "16-running", "self")?;
    if let Some((first, cg)) = running.first() {
        print_mem("nsinit", "running", &first.pid.to_string())?;
        if let Some(bytes) = cg.read("memory.current").and_then(|c| c.trim().parse::<u64>().ok()) {
            println!("bench-mem container-cgroup running memory.current={}", bytes / 1024);
        }
    }
    for (started, cg) in &running {
        cg.kill_all().map_err(err)?;
        wait(started.pid)?;
    }
    for (_, cg) in &running {
        let _ = cg.remove();
    }
    drop(running);
    print_mem("parent", "after-16", "self")?;
    let mut spec = base.clone();
    spec.name = "crashloop".into();
    spec.argv = vec![CString::new("/bin/false").map_err(err)?];
    let cg = Cgroup::for_container(&spec.name);
    let t0 = Instant::now();
    for i in 1..=restarts {
        let started = cairn_runtime::spawn(&spec, filter.as_ref(), &cg, &mut ahead, None).map_err(err)?;
        let status = wait(started.pid)?;
        drop(started);
        if status == 0 {
            return Err("/bin/false exited 0".into());
        }
        if i == 10 || i == 100 || i % 250 == 0 {
            print_mem("parent", &format!("restarts-{i}"), "self")?;
        }
    }
    println!("bench-info restarts={restarts} restart_loop_s={:.1}", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The observer run (`cairn.bench.mode=observe`): the real cairn-init
/// (`/scale/lower/init`) boots the disk attached to the guest as PID 1 of a
/// new pid and mount namespace, on an overlay root (not tmpfs, so it does
/// not copy itself out of an initramfs), while this process, outside,
/// prints its memory and one namespace init's every 10 s:
/// `bench-mem cairn-init t<seconds> rss=.. pss=.. uss=..`. The host counts
/// cairn-init's events between the lines and stops the guest.
fn observe() -> Res<()> {
    for d in ["/scale/rw", "/scale/root"] {
        sys::mkdir_all(d, 0o755).map_err(err)?;
    }
    sys::mount("scale rw", Some("scale"), "/scale/rw", Some("tmpfs"), 0, Some("mode=0755")).map_err(err)?;
    for d in ["/scale/rw/upper", "/scale/rw/work"] {
        sys::mkdir(d, 0o755).map_err(err)?;
    }
    sys::mount(
        "scale root",
        Some("overlay"),
        "/scale/root",
        Some("overlay"),
        0,
        Some("lowerdir=/scale/lower,upperdir=/scale/rw/upper,workdir=/scale/rw/work"),
    )
    .map_err(err)?;
    let init = CString::new("/init").map_err(err)?;
    let argv = [init.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut args = CloneArgs {
        flags: (libc::CLONE_NEWNS | libc::CLONE_NEWPID) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a stack is a fork into new namespaces; this
    // process is single-threaded.
    let pid =
        unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, core::mem::size_of::<CloneArgs>()) };
    if pid == 0 {
        let r = sys::mount("private", None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
            .and_then(|()| sys::chdir("/scale/root"))
            .and_then(|()| sys::pivot_root_here())
            .and_then(|()| sys::umount(".", libc::MNT_DETACH))
            .and_then(|()| sys::chdir("/"));
        if let Err(e) = r {
            println!("bench-error observe {e}");
        } else {
            // SAFETY: argv and envp are NULL-terminated arrays of C strings.
            unsafe { libc::execve(init.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            println!("bench-error observe execve /init: {}", sys::errno_name(sys::errno()));
        }
        // SAFETY: _exit ends the child.
        unsafe { libc::_exit(1) };
    }
    if pid < 0 {
        return Err(format!("clone3: {}", sys::errno_name(sys::errno())));
    }
    let t0 = Instant::now();
    let host_pid = pid.to_string();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(10));
        let when = format!("t{:.0}", t0.elapsed().as_secs_f64());
        print_mem("cairn-init", &when, &host_pid)?;
        if let Some(ns) = nsinit_of("c00") {
            let _ = print_mem("nsinit", &when, &ns);
        }
    }
}

/// The host pid of container `name`'s namespace init (pid 1 in its namespace).
fn nsinit_of(name: &str) -> Option<String> {
    let procs = std::fs::read_to_string(format!("{}/{name}/cgroup.procs", cairn_runtime::cgroup::CONTAINERS)).ok()?;
    procs
        .lines()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| l.strip_prefix("NSpid:").map(|v| v.split_whitespace().last() == Some("1")))
                })
                .unwrap_or(false)
        })
        .map(str::to_owned)
}

/// The steps run (`cairn.bench.mode=steps`): where the child's set-up
/// goes. For each prefix of cairn's rootfs plan, a child cloned into the
/// container's namespaces (as `spawn` does) times `rootfs::apply` of the
/// prefix; step i costs prefix(i) - prefix(i-1). `rounds` times, printed
/// as `bench-sample step <index>:<kind>:<path> <µs of the prefix>`.
fn steps(spec: &ContainerSpec, rounds: usize) -> Res<()> {
    sys::mkdir_all(&spec.state_dir(), 0o700).map_err(err)?;
    let plan = cairn_runtime::rootfs::plan(spec).map_err(err)?;
    println!("bench-info steps={} rounds={rounds}", plan.len());
    let flags = cairn_runtime::spawn::NAMESPACES | libc::CLONE_NEWNET as u64;
    for _ in 0..rounds {
        for i in 0..plan.len() {
            let prefix = plan.get(..=i).unwrap_or(&[]);
            let (rd, wr) = sys::pipe().map_err(err)?;
            let mut args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..CloneArgs::default() };
            // SAFETY: clone3 without a stack is a fork into new namespaces;
            // this process is single-threaded.
            let pid = unsafe {
                libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, core::mem::size_of::<CloneArgs>())
            };
            if pid == 0 {
                drop(rd);
                let t0 = Instant::now();
                let ok = cairn_runtime::rootfs::apply(prefix);
                let us = now_us(t0);
                let msg = match ok {
                    Ok(()) => format!("{us:.0}"),
                    Err(e) => format!("error {e}"),
                };
                let _ = sys::write_all(&wr, msg.as_bytes());
                // SAFETY: _exit ends the child.
                unsafe { libc::_exit(0) };
            }
            drop(wr);
            if pid < 0 {
                return Err(format!("clone3: {}", sys::errno_name(sys::errno())));
            }
            let out = sys::read_to_end(&rd, 4096).map_err(err)?;
            wait(pid as libc::pid_t)?;
            let out = String::from_utf8_lossy(&out);
            let step = plan.get(i).map(|s| {
                let kind = format!("{s:?}");
                let kind: String = kind.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                format!("{i:02}:{kind}:{}", s.path().replace(&spec.state_dir(), "~"))
            });
            match out.parse::<f64>() {
                Ok(us) => println!("bench-sample step {} {us:.0}", step.unwrap_or_default()),
                Err(_) => println!("bench-error step {} {out}", step.unwrap_or_default()),
            }
        }
    }
    Ok(())
}

/// clone_args of clone3, version 0 (64 bytes).
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
}

/// The kernel's part of cairn's start alone: clone3 into the namespaces
/// cairn uses (with or without a new network namespace), execve the
/// rootfs' `true` there at once (no rootfs, no cgroup), waitpid.
fn ns_clone(net: bool) -> Res<Vec<(&'static str, f64)>> {
    let path = CString::new(format!("{ROOTFS}{ENTRYPOINT}")).map_err(err)?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut flags = cairn_runtime::spawn::NAMESPACES;
    if net {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let mut args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..CloneArgs::default() };
    let t0 = Instant::now();
    // SAFETY: clone3 without a stack is a fork into new namespaces; this
    // process is single-threaded and the child only calls execve and _exit
    // with pointers prepared before.
    let pid =
        unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, core::mem::size_of::<CloneArgs>()) };
    if pid == 0 {
        // SAFETY: see above; argv and envp are NULL-terminated arrays of C strings.
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(format!("clone3: {}", sys::errno_name(sys::errno())));
    }
    let status = wait(pid as libc::pid_t)?;
    let us = now_us(t0);
    if status != 0 {
        return Err(format!("child exited with status {status:#x}"));
    }
    Ok(vec![("reaped", us)])
}

/// The cgroup part of cairn's start alone: create it with the limits and
/// the device program (`Cgroup::create`, as `spawn` does), then remove it.
fn cgroup_only(spec: &ContainerSpec) -> Res<Vec<(&'static str, f64)>> {
    // A new cache each time: the device program is loaded every time, as
    // at the first start of the first container.
    let cg = Cgroup::for_container("bench-cgroup");
    let t0 = Instant::now();
    cg.create(&spec.limits, &spec.devices, &mut Programs::new()).map_err(err)?;
    let created = now_us(t0);
    cg.remove().map_err(err)?;
    Ok(vec![("created", created), ("reaped", now_us(t0))])
}

/// waitpid for `pid`; its raw status.
fn wait(pid: libc::pid_t) -> Res<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        if rc < 0 && sys::errno() != libc::EINTR {
            return Err(format!("waitpid {pid}: {}", sys::errno_name(sys::errno())));
        }
    }
}

/// fork, execve `/bench/rootfs/bin/true`, waitpid: no isolation at all.
fn fork_exec() -> Res<Vec<(&'static str, f64)>> {
    let path = CString::new(format!("{ROOTFS}{ENTRYPOINT}")).map_err(err)?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let t0 = Instant::now();
    // SAFETY: this process is single-threaded; the child only calls execve
    // and _exit (async-signal-safe) with pointers prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; argv and envp are NULL-terminated arrays of C strings.
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(format!("fork: {}", sys::errno_name(sys::errno())));
    }
    let status = wait(pid)?;
    let us = now_us(t0);
    if status != 0 {
        return Err(format!("{ROOTFS}{ENTRYPOINT} exited with status {status:#x}"));
    }
    Ok(vec![("reaped", us)])
}

/// `<runtime> run --bundle BUNDLE bench`: the runtime creates, starts,
/// waits for and deletes the container.
fn oci_run(runtime: &str, extra: &[&str]) -> Res<Vec<(&'static str, f64)>> {
    let t0 = Instant::now();
    let out = Command::new(runtime)
        .args(extra)
        .args(["run", "--bundle", BUNDLE, "bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{runtime}: {e}"))?;
    let us = now_us(t0);
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).replace('\n', " | ");
        // Leave nothing behind for the next round.
        let _ = Command::new(runtime).args(["delete", "-f", "bench"]).stderr(Stdio::null()).status();
        return Err(format!("{runtime} run: {} {msg}", out.status));
    }
    Ok(vec![("reaped", us)])
}

/// The OCI runtime spec for crun and runc: the same rootfs, limits,
/// namespaces, capabilities, no_new_privs and seccomp deny list as the
/// cairn spec, and the usual masked and read-only paths.
fn oci_config() -> String {
    let names = cairn_format::manifest::CAPABILITY_NAMES;
    let caps: Vec<String> = (0..64u32)
        .filter(|b| cairn_format::manifest::DEFAULT_CAPABILITIES & (1u64 << b) != 0)
        .filter_map(|b| names.get(b as usize).map(|n| format!("\"CAP_{n}\"")))
        .collect();
    let caps = caps.join(", ");
    let q = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let masked = q(&[
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    ]);
    let readonly = q(&["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
    let deny = q(SECCOMP_DENY);
    format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "terminal": false,
    "user": {{"uid": 0, "gid": 0}},
    "args": ["{ENTRYPOINT}"],
    "env": ["PATH=/bin"],
    "cwd": "/",
    "capabilities": {{"bounding": [{caps}], "effective": [{caps}], "permitted": [{caps}]}},
    "noNewPrivileges": true
  }},
  "root": {{"path": "{ROOTFS}", "readonly": false}},
  "hostname": "bench",
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}},
    {{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}},
    {{"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}},
    {{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}},
    {{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}}
  ],
  "linux": {{
    "cgroupsPath": "/bench/bench",
    "resources": {{
      "memory": {{"limit": {MEMORY_MAX}}},
      "cpu": {{"quota": {CPU_QUOTA_US}, "period": {CPU_PERIOD_US}}},
      "pids": {{"limit": {PIDS_MAX}}}
    }},
    "namespaces": [{{"type": "pid"}}, {{"type": "network"}}, {{"type": "ipc"}}, {{"type": "uts"}}, {{"type": "mount"}}, {{"type": "cgroup"}}],
    "maskedPaths": [{masked}],
    "readonlyPaths": [{readonly}],
    "seccomp": {{
      "defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{{"names": [{deny}], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}}]
    }}
  }}
}}
"#
    )
}

/// Load `/lib/modules/load-order` (overlay for cairn's rootfs).
fn load_modules() {
    let list = std::fs::read_to_string("/lib/modules/load-order").unwrap_or_default();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{name}");
        let Ok(fd) = sys::open(&path, libc::O_RDONLY) else {
            println!("bench-error module {name} cannot be opened");
            continue;
        };
        // SAFETY: finit_module reads the module from `fd`; the params are an empty C string.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, fd.as_raw_fd(), c"".as_ptr(), 0) };
        if rc != 0 && sys::errno() != libc::EEXIST {
            println!("bench-error module {name} {}", sys::errno_name(sys::errno()));
        }
    }
}

/// The kernel's initial root (rootfs) cannot be pivoted away from: copy
/// it into a tmpfs with busybox `cp -a`, move that over `/` and chroot
/// (what `switch_root` and cairn-init do). The initramfs copy is not freed:
/// the guest has memory to spare.
fn leave_initramfs() -> Res<()> {
    const NEW: &str = "/newroot";
    sys::mkdir(NEW, 0o755).map_err(err)?;
    sys::mount("new root", Some("root"), NEW, Some("tmpfs"), 0, Some("mode=0755")).map_err(err)?;
    let entries: Vec<String> = std::fs::read_dir("/")
        .map_err(err)?
        .filter_map(|e| e.ok())
        .map(|e| format!("/{}", e.file_name().to_string_lossy()))
        .filter(|p| p != NEW)
        .collect();
    let status = Command::new("/bin/busybox").arg("cp").arg("-a").args(&entries).arg(NEW).status().map_err(err)?;
    if !status.success() {
        return Err(format!("cp -a into {NEW}: {status}"));
    }
    sys::chdir(NEW).map_err(err)?;
    sys::mount("move new root", Some("."), "/", None, libc::MS_MOVE, None).map_err(err)?;
    // SAFETY: chroot with a valid C string.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(format!("chroot: {}", sys::errno_name(sys::errno())));
    }
    sys::chdir("/").map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_config_is_json_with_the_same_limits_and_namespaces() {
        let v: serde_json::Value = serde_json::from_str(&oci_config()).unwrap();
        assert_eq!(v["root"]["path"], ROOTFS);
        assert_eq!(v["process"]["args"][0], ENTRYPOINT);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], MEMORY_MAX);
        assert_eq!(r["pids"]["limit"], PIDS_MAX);
        assert_eq!(r["cpu"]["quota"], CPU_QUOTA_US);
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        let want = cairn_format::manifest::DEFAULT_CAPABILITIES.count_ones() as usize;
        assert_eq!(caps.len(), want);
        assert!(caps.iter().any(|c| c == "CAP_CHOWN") && !caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let deny = v["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap();
        assert_eq!(deny.len(), SECCOMP_DENY.len());
    }

    #[test]
    fn cmdline_words() {
        let c = "console=ttyS0 cairn.bench.n=50 cairn.bench.only=cairn,crun cairn.bench.nx=1";
        assert_eq!(arg(c, "cairn.bench.n").as_deref(), Some("50"));
        assert_eq!(arg(c, "cairn.bench.only").as_deref(), Some("cairn,crun"));
        assert_eq!(arg(c, "cairn.bench.mode"), None);
    }

    #[test]
    fn the_spec_is_cairn_init_defaults_with_the_bench_limits() {
        let s = cairn_spec().unwrap();
        assert!(s.seccomp && s.no_new_privs && !s.readonly_rootfs);
        assert_eq!(s.network, Network::None);
        assert_eq!(s.limits.memory_max, Some(MEMORY_MAX));
        assert_eq!(s.limits.pids_max, Some(PIDS_MAX));
        assert_eq!(s.layer_dirs, [ROOTFS]);
    }
}
