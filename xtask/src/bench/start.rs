//! Container start, same guest, same rootfs: the bench guest (an initramfs
//! on the board's kernel and QEMU machine whose `/init` is `cairn-bench`)
//! starts one busybox container N times with each of fork+exec, cairn's
//! runtime, crun and runc, interleaved, and prints every sample.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_board::Board;
use cairn_build::cpio::{self, CpioBuilder};
use cairn_qemu_tests::qemu;

use super::report::{Group, Row};
use super::stats::{self, summarize};
use crate::host_deps::{self, Deb};

/// The guest's Debian packages: busybox, the two runtimes and every
/// library they load (crun: libcap, libseccomp, libsystemd and its
/// compressors and libgcrypt, libyajl; runc: libseccomp).
pub const PACKAGES: &[&str] = &[
    "busybox-static",
    "crun",
    "runc",
    "libc6",
    "libcap2",
    "libseccomp2",
    "libsystemd0",
    "libyajl2",
    "libgcrypt20",
    "libgpg-error0",
    "liblz4-1",
    "liblzma5",
    "libzstd1",
];

/// Libraries of these packages whose file names hold this are left out
/// (none of the binaries loads them; glibc's gconv modules are 8 MiB).
const SKIP: &[&str] = &["/gconv/", "/audit/"];

/// The unpacked guest packages of a board (cached under `build/debs`).
pub fn debs(b: &Board) -> Result<Vec<Deb>> {
    host_deps::fetch_debs(PACKAGES, b.deb_arch, &crate::build_dir().join("debs"))
}

/// Build `cairn-bench` for the board (release, static musl).
pub fn build_cairn_bench(b: &Board) -> Result<PathBuf> {
    let status = crate::device_build::cargo_build(b.rust_target, &["cairn-bench"], &[])
        .status()
        .context("running cargo build -p cairn-bench")?;
    ensure!(status.success(), "cargo build -p cairn-bench for {} failed", b.rust_target);
    Ok(crate::device_build::built(b.rust_target, "cairn-bench"))
}

/// Find `name` under one of `dirs` of an unpacked package.
fn find_bin(deb: &Deb, name: &str) -> Result<PathBuf> {
    ["usr/bin", "usr/sbin", "bin", "sbin"]
        .iter()
        .map(|d| deb.tree.join(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{} has no {name} (in {})", deb.file, deb.tree.display()))
}

/// Add every shared library file and symlink of `tree` (paths holding
/// `.so`, under lib*/ and usr/lib*/) to the archive at the same path.
fn add_libs(c: &mut CpioBuilder, tree: &Path, dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Ok(0),
    };
    for e in entries {
        let e = e?;
        let path = e.path();
        let rel = path.strip_prefix(tree).unwrap_or(&path).to_string_lossy().into_owned();
        let in_lib = rel.starts_with("lib") || rel.starts_with("usr/lib");
        let ft = e.file_type()?;
        if ft.is_dir() {
            if rel == "usr" || in_lib {
                bytes += add_libs(c, tree, &path)?;
            }
            continue;
        }
        let keep = in_lib && rel.contains(".so") && !SKIP.iter().any(|s| format!("/{rel}").contains(s));
        if !keep {
            continue;
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            c.symlink(&rel, &target.to_string_lossy());
        } else {
            let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            bytes += data.len() as u64;
            c.file(&rel, 0o755, &data);
        }
    }
    Ok(bytes)
}

/// The bench guest's initramfs; returns its path.
pub fn build_guest(b: &Board, modules: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    build_guest_with(b, modules, dir, None)
}

/// [`build_guest`], with `cairn_init` (when given) as `/scale/lower/init`
/// beside the modules, for the observer run.
pub fn build_guest_with(b: &Board, modules: &[PathBuf], dir: &Path, cairn_init: Option<&Path>) -> Result<PathBuf> {
    let debs = debs(b)?;
    let deb = |name: &str| debs.iter().find(|d| d.package == name).with_context(|| format!("no package {name}"));
    let bench = build_cairn_bench(b)?;
    let mut c = CpioBuilder::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "lib/modules", "bench/bundle"] {
        c.dir(d, 0o755);
    }
    c.char_device("dev/console", 0o600, 5, 1);
    c.char_device("dev/null", 0o666, 1, 3);
    c.file("init", 0o755, &std::fs::read(&bench).with_context(|| format!("reading {}", bench.display()))?);
    let busybox = std::fs::read(find_bin(deb("busybox-static")?, "busybox")?)?;
    c.file("bin/busybox", 0o755, &busybox);
    c.symlink("bin/sh", "busybox");
    // The container rootfs: busybox alone, `true` and `sh` as links to it.
    c.file("bench/rootfs/bin/busybox", 0o755, &busybox);
    c.symlink("bench/rootfs/bin/true", "busybox");
    for applet in ["sh", "sleep", "false"] {
        c.symlink(&format!("bench/rootfs/bin/{applet}"), "busybox");
    }
    for d in ["proc", "dev", "sys", "tmp", "etc", "run"] {
        c.dir(&format!("bench/rootfs/{d}"), 0o755);
    }
    c.file("bench/rootfs/etc/passwd", 0o644, b"root:x:0:0:root:/:/bin/sh\n");
    c.file("bench/rootfs/etc/group", 0o644, b"root:x:0:\n");
    for rt in ["crun", "runc"] {
        let path = find_bin(deb(rt)?, rt)?;
        c.file(&format!("usr/bin/{rt}"), 0o755, &std::fs::read(&path)?);
    }
    for d in &debs {
        if PACKAGES.iter().skip(3).any(|p| *p == d.package) {
            add_libs(&mut c, &d.tree, &d.tree)?;
        }
    }
    let mut order = String::new();
    for m in modules {
        let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        c.file(&format!("lib/modules/{name}"), 0o644, &std::fs::read(m)?);
        order.push_str(&name);
        order.push('\n');
    }
    c.file("lib/modules/load-order", 0o644, order.as_bytes());
    if let Some(init) = cairn_init {
        for d in ["dev", "proc", "sys", "run", "lib/modules"] {
            c.dir(&format!("scale/lower/{d}"), 0o755);
        }
        c.char_device("scale/lower/dev/console", 0o600, 5, 1);
        c.file("scale/lower/init", 0o755, &std::fs::read(init)?);
        for m in modules {
            let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            c.file(&format!("scale/lower/lib/modules/{name}"), 0o644, &std::fs::read(m)?);
        }
        c.file("scale/lower/lib/modules/load-order", 0o644, order.as_bytes());
    }
    std::fs::create_dir_all(dir)?;
    let out = dir.join(if cairn_init.is_some() { "observe-guest.cpio.gz" } else { "bench-guest.cpio.gz" });
    std::fs::write(&out, cpio::gzip(&c.finish())).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// `key=value` facts the guest printed.
pub type Facts = Vec<(String, String)>;

/// Boot the bench guest once with `n` samples per contender; the groups
/// and the guest's `bench-info` facts.
pub fn run(guest: &Guest<'_>, n: usize) -> Result<(Vec<Group>, Facts)> {
    // CAIRN_BENCH_ONLY=a,b runs only those contenders (e.g.
    // `cairn,cairn-bridge,cairn-egress` for the cost of a bridge).
    let only = std::env::var("CAIRN_BENCH_ONLY").map(|o| format!(" cairn.bench.only={o}")).unwrap_or_default();
    eprintln!("xtask: bench start: booting the bench guest, {n} samples per contender");
    // runc takes about 2 s a start under TCG; leave room for all four.
    let timeout = Duration::from_secs(120 + 10 * n as u64);
    let raw = guest.boot(&format!("cairn.bench.n={n}{only}"), "container-start.log", timeout)?;
    let samples = stats::parse_samples(raw.iter().map(String::as_str));
    let info = stats::parse_info(raw.iter().map(String::as_str), "bench-info");
    Ok((groups(&samples, n), info))
}

/// The container-start groups from the guest's samples (µs in, ms out).
pub fn groups(samples: &stats::Samples, n: usize) -> Vec<Group> {
    let ms = |who: &str, metric: &str| -> Vec<f64> {
        samples
            .get(&(who.to_owned(), metric.to_owned()))
            .map(|v| v.iter().map(|us| us / 1000.0).collect())
            .unwrap_or_default()
    };
    let mut start = Group {
        name: "container-start".into(),
        title: "start requested -> entrypoint (/bin/true) exited and reaped, same busybox rootfs, limits and namespaces"
            .into(),
        unit: "ms".into(),
        rows: ["cairn", "fork-exec", "crun", "runc"].iter().map(|w| Row::new(w, ms(w, "reaped"))).collect(),
        subject: Some("cairn".into()),
        notes: vec![
            format!("{n} samples each, interleaved fork-exec, cairn, crun, runc in one guest, after one unmeasured warm-up start each"),
            "cairn: cairn_runtime::spawn (as cairn-init) to waitpid of the container init, into the network namespace made after the previous start (as cairn-init makes it when idle), its cgroup given the default device program by the parent's (as in cairn-init); crun/runc: `run --bundle` to the command's exit (it reaps and deletes the container)".into(),
            "fork-exec: fork + execve of the same busybox `true` + waitpid, no isolation: the floor".into(),
        ],
    };
    let ratio = |other: &str| -> Option<f64> {
        let a = summarize(&ms("cairn", "reaped"))?;
        let o = summarize(&ms(other, "reaped"))?;
        Some(a.p50 / o.p50)
    };
    if let Some(r) = ratio("crun") {
        start.notes.push(format!("goal: cairn p50 <= 0.1 x crun's; measured {r:.3}x"));
    }
    if let Some(r) = ratio("fork-exec") {
        start.notes.push(format!("goal: cairn p50 <= 4 x fork+exec's; measured {r:.1}x"));
    }
    let detail = Group {
        name: "container-start-cairn".into(),
        title: "cairn's start split: to the entrypoint executed (report pipe EOF), and the cgroup removal after".into(),
        unit: "ms".into(),
        rows: vec![
            Row::new("spawn() returned", ms("cairn", "spawned")),
            Row::new("start -> exec", ms("cairn", "exec")),
            Row::new("start -> reaped", ms("cairn", "reaped")),
            Row::new("cgroup rmdir after", ms("cairn", "cleanup")),
            Row::new("own netns: start -> reaped", ms("cairn-own-net", "reaped")),
            Row::new("cold: start -> reaped", ms("cairn-cold", "reaped")),
        ],
        subject: None,
        notes: vec![
            "crun and runc do not report their exec moment; their cgroup removal is inside their time".into(),
            "own netns: the program cached, but each start makes its own network namespace (cairn-init before it made the next one when idle)".into(),
            "cold: nothing made ahead: the device program loaded and attached and the network namespace made at every start (a boot's first start without PID 1's ahead thread)".into(),
        ],
    };
    let parts = Group {
        name: "container-start-parts".into(),
        title: "the kernel's share: pieces of a start measured alone in the same guest, interleaved with the rest".into(),
        unit: "ms".into(),
        rows: vec![
            Row::new("clone3 all ns + exec", ms("ns-clone", "reaped")),
            Row::new("clone3 no netns + exec", ms("ns-clone-nonet", "reaped")),
            Row::new("cgroup create", ms("cgroup", "created")),
            Row::new("cgroup create+rmdir", ms("cgroup", "reaped")),
        ],
        subject: None,
        notes: vec![
            "clone3 rows: cairn's namespaces (mount, pid, uts, ipc, cgroup, and net or not), execve true at once, waitpid: no rootfs, no cgroup".into(),
            "cgroup rows: Cgroup::create with the bench limits and the default device program, loaded every time (as at a first start)".into(),
        ],
    };
    let mut out = vec![start, detail, parts];
    // Joining a bridge (run with CAIRN_BENCH_ONLY=cairn,cairn-bridge,cairn-egress).
    if !ms("cairn-bridge", "exec").is_empty() {
        out.push(Group {
            name: "container-start-bridge".into(),
            title: "start requested -> entrypoint executed: no network, on a bridge, on a network with egress".into(),
            unit: "ms".into(),
            rows: vec![
                Row::new("cairn (network none)", ms("cairn", "exec")),
                Row::new("cairn-bridge", ms("cairn-bridge", "exec")),
                Row::new("cairn-egress", ms("cairn-egress", "exec")),
            ],
            subject: None,
            notes: vec![
                "cairn-bridge: a veth pair into cairn-br0 made by the runtime, eth0 addressed by the child".into(),
                "cairn-egress: the same plus the child's default route through the bridge's 10.89.3.1 (rtnetlink)"
                    .into(),
            ],
        });
    }
    out
}

/// Per-step costs (ms) from the prefix times (µs) of the steps run: the
/// labels sort by their index prefix; step i of round r costs
/// prefix_i[r] - prefix_{i-1}[r].
pub fn step_costs(samples: &stats::Samples) -> Vec<(String, Vec<f64>)> {
    let prefixes: Vec<(&str, &Vec<f64>)> =
        samples.iter().filter(|((who, _), _)| who == "step").map(|((_, label), v)| (label.as_str(), v)).collect();
    let mut out = Vec::new();
    let mut prev: Option<&Vec<f64>> = None;
    for (label, v) in prefixes {
        let costs = match prev {
            Some(p) => v.iter().zip(p.iter()).map(|(a, b)| (a - b) / 1000.0).collect(),
            None => v.iter().map(|a| a / 1000.0).collect(),
        };
        out.push((label.to_owned(), costs));
        prev = Some(v);
    }
    out
}

/// The bench guest of a board, booted in one of `cairn-bench`'s modes.
pub struct Guest<'a> {
    /// The board.
    pub b: &'static Board,
    /// Its QEMU.
    pub qemu_bin: &'a Path,
    /// Its kernel.
    pub kernel: &'a Path,
    /// The kernel's modules for the guest.
    pub modules: &'a [PathBuf],
    /// Where the guest and its console log go.
    pub log_dir: &'a Path,
}

impl Guest<'_> {
    /// Boot with `cmdline` added until `bench-done` (or `timeout`); the
    /// console's lines, its `bench-error`s printed. Fails if it did not
    /// finish.
    pub fn boot(&self, cmdline: &str, log_name: &str, timeout: Duration) -> Result<Vec<String>> {
        let initramfs = build_guest(self.b, self.modules, self.log_dir)?;
        let cmd = super::diskless_command(self.b, self.qemu_bin, self.kernel, &initramfs, cmdline);
        let log = self.log_dir.join(log_name);
        eprintln!("xtask: bench guest console: {}", log.display());
        let run = qemu::capture(cmd, &log, timeout, &|c| c.contains("bench-done"))?;
        for l in run.console.raw.iter().filter(|l| l.contains("bench-error")) {
            eprintln!("xtask: bench guest: {}", l.trim_end());
        }
        ensure!(
            run.console.raw.iter().any(|l| l.contains("bench-done")),
            "the bench guest did not finish ({:?} after {:.0}s); console: {}",
            run.ending,
            run.elapsed.as_secs_f64(),
            log.display()
        );
        Ok(run.console.raw)
    }
}

/// Boot the bench guest in steps mode: where the child's rootfs set-up goes.
pub fn steps(guest: &Guest<'_>, rounds: usize) -> Result<Group> {
    eprintln!("xtask: bench steps: {rounds} rounds");
    let timeout = Duration::from_secs(120 + 60 * rounds as u64);
    let raw = guest.boot(&format!("cairn.bench.mode=steps cairn.bench.n={rounds}"), "steps.log", timeout)?;
    let samples = stats::parse_samples(raw.iter().map(String::as_str));
    let whole: Vec<f64> = samples
        .iter()
        .rfind(|((who, _), _)| who == "step")
        .map(|(_, v)| v.iter().map(|us| us / 1000.0).collect())
        .unwrap_or_default();
    let costs = step_costs(&samples);
    let total: f64 = costs.iter().filter_map(|(_, v)| summarize(v).map(|s| s.p50)).sum();
    let mut rows = vec![Row::new("whole plan (all steps)", whole)];
    rows.extend(costs.into_iter().map(|(label, v)| Row::new(&label, v)));
    Ok(Group {
        name: "container-start-rootfs-steps".into(),
        title: "cairn's rootfs plan step by step, in a child in the container's namespaces (prefix i minus prefix i-1)".into(),
        unit: "ms".into(),
        rows,
        subject: None,
        notes: vec![
            "per step: noisy differences of two separate runs (negative when the machine was busier for the shorter prefix); read the whole plan first".into(),
            format!("{rounds} rounds; ~ is the container's state directory; sum of the p50s {total:.1} ms"),
            "not in these steps: the loopback, the hostname, the namespace init's fork, capabilities, seccomp and execve".into(),
        ],
    })
}

/// Syscalls of a phase get a row when their p50 is at least this (ms);
/// all of them are in the guest's console log.
const TRACE_SHOWN_MS: f64 = 0.3;

/// Boot the bench guest in trace mode: where one cairn start spends its
/// time, phase by phase and syscall by syscall, from the kernel's trace.
pub fn trace(guest: &Guest<'_>, rounds: usize) -> Result<Group> {
    eprintln!("xtask: bench trace: {rounds} traced starts");
    let timeout = Duration::from_secs(180 + 5 * rounds as u64);
    let raw = guest.boot(&format!("cairn.bench.mode=trace cairn.bench.n={rounds}"), "trace.log", timeout)?;
    let samples = stats::parse_samples(raw.iter().map(String::as_str));
    Ok(trace_group(&samples, rounds, &guest.log_dir.join("trace.log")))
}

/// The trace group from the guest's samples: the traced and untraced
/// totals, each phase, and within it the syscalls worth a row.
pub fn trace_group(samples: &stats::Samples, rounds: usize, log: &Path) -> Group {
    let ms = |v: &Vec<f64>| v.iter().map(|us| us / 1000.0).collect::<Vec<f64>>();
    let get = |who: &str, label: &str| samples.get(&(who.to_owned(), label.to_owned())).map(ms).unwrap_or_default();
    let mut rows = vec![
        Row::new("untraced: start → reaped", get("untraced", "reaped")),
        Row::new("traced: start → reaped", get("trace-phase", "0:total")),
    ];
    let phases = samples.iter().filter(|((who, label), _)| who == "trace-phase" && label != "0:total");
    for ((_, phase), v) in phases {
        rows.push(Row::new(phase, ms(v)));
        let prefix = format!("{phase}:");
        let mut calls: Vec<(String, Vec<f64>, f64)> = samples
            .iter()
            .filter(|((who, label), _)| who == "trace-sys" && label.starts_with(&prefix))
            .map(|((_, label), v)| {
                let v = ms(v);
                // Absent from a round: zero in that round.
                let mut padded = v.clone();
                padded.resize(padded.len().max(rounds), 0.0);
                let p50 = summarize(&padded).map_or(0.0, |s| s.p50);
                (label.get(prefix.len()..).unwrap_or_default().to_owned(), v, p50)
            })
            .collect();
        calls.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (call, v, p50) in calls {
            if p50 >= TRACE_SHOWN_MS {
                rows.push(Row::new(&format!("  {phase} · {call}"), v));
            }
        }
    }
    Group {
        name: "container-start-trace".into(),
        title: "one cairn start cut into its critical path's phases from the kernel's trace (tracefs: syscalls, fork, exec, exit)".into(),
        unit: "ms".into(),
        rows,
        subject: None,
        notes: vec![
            "phases: 1 caller (start requested → clone3: state dir, cgroup, pipes, plan), 2 clone3 (→ the init's first instruction), 3 init (→ it forks the entrypoint's process: loopback, signal mask), 4 rootfs (→ it lets the entrypoint go: rootfs, hostname), 5 entry (→ exec: working directory, execve), 6 payload (→ its exit), 7 reap (→ the init's exit), 8 teardown (→ the caller's wait4 returns)".into(),
            "4b entry-ready, beside the path: the entrypoint's process from its fork to its wait for the go-ahead (signals, rlimits, bounding set, seccomp, ids, capabilities, no_new_privs), while the init builds the filesystem".into(),
            format!("per phase, the time its critical process spent in each syscall (rows from {TRACE_SHOWN_MS} ms p50); (user): the rest of the phase: its own instructions, page faults, waiting for a CPU"),
            "tracing costs time: compare the traced and untraced totals, measured alternately in the same guest".into(),
            format!("{rounds} traced starts; the first one's events: {} (bench-trace lines)", log.display()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_costs_are_prefix_differences() {
        let lines = [
            "bench-sample step 00:MakePrivate:/ 100",
            "bench-sample step 01:Mount:~/root 400",
            "bench-sample step 00:MakePrivate:/ 200",
            "bench-sample step 01:Mount:~/root 600",
            "bench-sample cairn reaped 1",
        ];
        let c = step_costs(&stats::parse_samples(lines));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0], ("00:MakePrivate:/".to_owned(), vec![0.1, 0.2]));
        assert_eq!(c[1], ("01:Mount:~/root".to_owned(), vec![0.3, 0.4]));
    }

    #[test]
    fn groups_convert_to_ms_and_state_the_goals() {
        let lines = [
            "bench-sample cairn exec 1000",
            "bench-sample cairn reaped 2000",
            "bench-sample cairn cleanup 100",
            "bench-sample crun reaped 40000",
            "bench-sample fork-exec reaped 1000",
        ];
        let g = groups(&stats::parse_samples(lines), 1);
        assert_eq!(g[0].rows[0].samples, [2.0]);
        assert_eq!(g[0].rows[2].samples, [40.0]);
        assert!(g[0].rows[3].samples.is_empty(), "runc printed nothing");
        assert!(g[0].notes.iter().any(|n| n.contains("measured 0.050x")), "{:?}", g[0].notes);
        assert!(g[0].notes.iter().any(|n| n.contains("measured 2.0x")), "{:?}", g[0].notes);
        assert_eq!(g[1].rows[1].samples, [1.0]);
        assert_eq!(g[1].rows[3].samples, [0.1]);
    }

    #[test]
    fn trace_rows_are_phases_then_their_big_syscalls() {
        let lines = [
            "bench-sample untraced reaped 100000",
            "bench-sample trace-phase 0:total 140000",
            "bench-sample trace-phase 1:caller 30000",
            "bench-sample trace-phase 3:init 60000",
            "bench-sample trace-sys 3:init:mount 25000",
            "bench-sample trace-sys 3:init:pivot_root 200",
            "bench-sample trace-sys 3:init:(user) 34800",
            "bench-sample trace-sys 1:caller:bpf 9000",
        ];
        let g = trace_group(&stats::parse_samples(lines), 1, Path::new("x"));
        let names: Vec<&str> = g.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "untraced: start → reaped",
                "traced: start → reaped",
                "1:caller",
                "  1:caller · bpf",
                "3:init",
                "  3:init · (user)",
                "  3:init · mount",
            ]
        );
        assert_eq!(g.rows[6].samples, [25.0]);
    }
}
