//! Scale: cairn-init booting appliances of 1, 4 and 16 containers (time
//! to all started), and memory in the bench guest: the runtime's caller
//! idle and with 16 containers, one namespace init's Rss/Pss/USS, and the
//! caller over 1,000 starts of a crash-looping container.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_board::Board;
use cairn_qemu_tests::{qemu, Artifacts};

use super::report::{Group, Row};

/// An appliance of `n` containers, each `cairn-bench stay`-like: busybox
/// is not on the layer, so the entrypoint is `cairn-bench hello stay`.
pub fn appliance_toml(n: usize) -> String {
    let mut t = format!(
        "appliance = \"bench-scale-{n}\"\nversion = 1\ncompatible = \"cairn-qemu-dev\"\n\n[[layer]]\nname = \"bench\"\nsource = \"build:bench\"\n"
    );
    for i in 0..n {
        let _ = write!(
            t,
            "\n[[container]]\nname = \"c{i:02}\"\nlayers = [\"bench\"]\nargv = [\"/bin/cairn-bench\", \"hello\", \"stay\"]\n\
             limits = {{ memory = \"16M\", pids = 8 }}\nrestart = {{ policy = \"never\" }}\n"
        );
    }
    t
}

/// Boot appliances of 1, 4 and 16 containers, interleaved, `runs` times.
pub fn boot(b: &'static Board, art: &Artifacts, runs: usize, log_dir: &Path) -> Result<Group> {
    let bench_bin = super::start::build_cairn_bench(b)?;
    let dir = log_dir.join("scale");
    let root = dir.join("layer");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&bench_bin, root.join("bin/cairn-bench")).context("copying cairn-bench")?;
    let sources = BTreeMap::from([("bench".to_owned(), root.clone())]);
    let counts = [1usize, 4, 16];
    let mut disks: Vec<PathBuf> = Vec::new();
    for n in counts {
        let toml = dir.join(format!("scale-{n}.toml"));
        std::fs::write(&toml, appliance_toml(n))?;
        let app = cairn_build::assemble::build_appliance(&toml, &sources, &art.key, &dir.join(format!("layers-{n}")))?;
        let disk = dir.join(format!("scale-{n}.img"));
        cairn_build::assemble::assemble_disk(&app, &disk, cairn_build::assemble::DiskOptions::default(), None)?;
        disks.push(disk);
    }
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    let mut spread: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    for i in 0..runs.max(1) {
        for (k, (n, disk)) in counts.iter().zip(&disks).enumerate() {
            // QEMU's -kernel: the disk has no boot slot for the firmware.
            let opts = qemu::BootOptions { direct_kernel: true, ..qemu::BootOptions::default() };
            let cmd = qemu::command_with(b, &art.boot, disk, &opts);
            let log = dir.join(format!("scale-{n}-{i}.log"));
            let run = qemu::capture(cmd, &log, Duration::from_secs(240), &|c| {
                c.first("boot.containers-started", &[]).is_some()
            })?;
            let t = |e: &str| run.console.first(e, &[]).and_then(|l| l.get("t")?.parse::<f64>().ok());
            let done = t("boot.containers-started")
                .with_context(|| format!("{n} containers never all started (console: {})", log.display()))?;
            let init = t("boot.start").unwrap_or(0.0);
            let first = t("container.starting").unwrap_or(done);
            if let (Some(a), Some(s)) = (all.get_mut(k), spread.get_mut(k)) {
                a.push((done - init) * 1000.0);
                s.push((done - first) * 1000.0);
            }
            eprintln!("xtask: bench scale run {i}: {n} containers: /init -> all started {:.3}s", done - init);
        }
    }
    let mut rows = Vec::new();
    for (k, n) in counts.iter().enumerate() {
        rows.push(Row::new(
            &format!("{n:>2} containers: /init -> all started"),
            all.get(k).cloned().unwrap_or_default(),
        ));
    }
    for (k, n) in counts.iter().enumerate() {
        rows.push(Row::new(
            &format!("{n:>2} containers: first starting -> all started"),
            spread.get(k).cloned().unwrap_or_default(),
        ));
    }
    Ok(Group {
        name: "scale-boot".into(),
        title: "cairn-init booting 1, 4 and 16 containers (each `cairn-bench hello stay`, no dependencies), from its events".into(),
        unit: "ms".into(),
        rows,
        subject: None,
        notes: vec![format!("{runs} boots per size, interleaved 1, 4, 16, 1, ...")],
    })
}

/// `bench-mem <who> <when> rss=R pss=P uss=U` lines: rows `<who> <when> <field>`.
pub fn parse_mem<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in lines {
        let Some(at) = line.find("bench-mem ") else { continue };
        let mut w = line[at..].split_whitespace().skip(1);
        let (Some(who), Some(when)) = (w.next(), w.next()) else { continue };
        for kv in w {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(v) = v.parse::<f64>() {
                    out.push((format!("{who} {when} {k}"), v));
                }
            }
        }
    }
    out
}

/// The memory run of the bench guest (`cairn.bench.mode=memory`).
pub fn memory(
    b: &'static Board,
    art: &Artifacts,
    modules: &[PathBuf],
    restarts: usize,
    log_dir: &Path,
) -> Result<Group> {
    let initramfs = super::start::build_guest(b, modules, log_dir)?;
    let cmd = super::diskless_command(
        b,
        &art.boot.qemu,
        &art.boot.kernel,
        &initramfs,
        &format!("cairn.bench.mode=memory cairn.bench.restarts={restarts}"),
    );
    let log = log_dir.join("memory.log");
    eprintln!("xtask: bench memory: booting the bench guest, {restarts} restarts (console: {})", log.display());
    let run = qemu::capture(cmd, &log, Duration::from_secs(120 + restarts as u64), &|c| c.contains("bench-done"))?;
    let raw: Vec<&str> = run.console.raw.iter().map(String::as_str).collect();
    for l in raw.iter().filter(|l| l.contains("bench-error")) {
        eprintln!("xtask: bench guest: {}", l.trim_end());
    }
    let mut notes = vec![
        "parent: cairn-bench, PID 1 of the bench guest, calling cairn_runtime::spawn as cairn-init does (cairn-init's own RSS is not measured here: see docs/bench.md)".into(),
        "nsinit: one container's namespace init (a fork of the parent) while its `sleep` runs; USS = Private_Clean + Private_Dirty".into(),
        format!("restarts: /bin/false as entrypoint, started {restarts} times one after the other in the same cgroup"),
    ];
    notes.extend(raw.iter().filter(|l| l.contains("bench-info restarts")).map(|l| l.trim().to_owned()));
    Ok(Group {
        name: "memory".into(),
        title: "Rss/Pss/USS from /proc/PID/smaps_rollup in the bench guest".into(),
        unit: "KiB".into(),
        rows: parse_mem(raw.iter().copied()).into_iter().map(|(name, v)| Row::new(&name, vec![v])).collect(),
        subject: None,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_lines_count_the_crash_starts_before_them() {
        let lines = [
            "bench-mem cairn-init t10 rss=700 pss=480 uss=230",
            "cairn: t=1 event=container.starting name=crash pid=3 restarts=0",
            "cairn: t=1 event=container.starting name=c00 pid=2 restarts=0",
            "cairn: t=2 event=boot.containers-started running=2 total=2",
            "cairn: t=3 event=container.starting name=crash pid=4 restarts=1",
            "bench-mem nsinit t20 rss=540 pss=294 uss=48",
        ];
        let o = parse_observed(lines);
        assert_eq!(o.len(), 2);
        assert_eq!((o[0].who.as_str(), o[0].crash_starts, o[0].all_started), ("cairn-init", 0, false));
        assert_eq!(o[0].kib, (700.0, 480.0, 230.0));
        assert_eq!((o[1].who.as_str(), o[1].crash_starts, o[1].all_started), ("nsinit", 2, true));
        assert_eq!(crashloop_toml().matches("[[container]]").count(), 16);
    }

    #[test]
    fn scale_appliances_have_n_containers() {
        let t = appliance_toml(4);
        assert_eq!(t.matches("[[container]]").count(), 4);
        assert!(t.contains("name = \"c03\""));
        assert!(t.contains("appliance = \"bench-scale-4\""));
    }

    #[test]
    fn memory_lines_become_rows() {
        let rows = parse_mem(["x", "bench-mem parent idle rss=600 pss=550 uss=500", "bench-mem nsinit running rss=80"]);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0], ("parent idle rss".to_owned(), 600.0));
        assert_eq!(rows[3], ("nsinit running rss".to_owned(), 80.0));
    }
}

/// One `bench-mem` line of the observer run, with how many times the
/// crash-looping container had been started before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `cairn-init` or `nsinit`.
    pub who: String,
    /// Starts of the `crash` container (cairn-init's events) before the line.
    pub crash_starts: usize,
    /// Whether cairn-init had announced every container started.
    pub all_started: bool,
    /// (rss, pss, uss) in KiB.
    pub kib: (f64, f64, f64),
}

/// The observer's lines in console order.
pub fn parse_observed<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Observed> {
    let mut out = Vec::new();
    let (mut crash, mut all) = (0, false);
    for line in lines {
        if line.contains("event=container.starting") && line.contains(" name=crash ") {
            crash += 1;
        }
        if line.contains("event=boot.containers-started") {
            all = true;
        }
        let Some(at) = line.find("bench-mem ") else { continue };
        let mut w = line[at..].split_whitespace().skip(1);
        let Some(who) = w.next() else { continue };
        let mut kib = (0.0, 0.0, 0.0);
        for kv in w {
            match kv.split_once('=') {
                Some(("rss", v)) => kib.0 = v.parse().unwrap_or(0.0),
                Some(("pss", v)) => kib.1 = v.parse().unwrap_or(0.0),
                Some(("uss", v)) => kib.2 = v.parse().unwrap_or(0.0),
                _ => {}
            }
        }
        out.push(Observed { who: who.to_owned(), crash_starts: crash, all_started: all, kib });
    }
    out
}

/// An appliance of 15 `stay` containers and one whose entrypoint exits 2
/// at once, restarted always with a 1 ms backoff: 16, the manifest's most.
pub fn crashloop_toml() -> String {
    let mut t = appliance_toml(15).replace("bench-scale-15", "bench-crashloop");
    t.push_str(
        "\n[[container]]\nname = \"crash\"\nlayers = [\"bench\"]\nargv = [\"/bin/cairn-bench\", \"exit\"]\n\
         limits = { memory = \"16M\", pids = 8 }\nrestart = { policy = \"always\", backoff_initial_ms = 1, backoff_max_ms = 1 }\n",
    );
    t
}

/// PID 1's memory with cairn-init itself: the bench guest runs it as PID 1
/// of a pid namespace and watches it from outside. One boot of the 1-container
/// appliance (idle), one of 15 containers plus a crash loop (16) until
/// `restarts` restarts.
pub fn observe(
    b: &'static Board,
    art: &Artifacts,
    modules: &[PathBuf],
    restarts: usize,
    log_dir: &Path,
) -> Result<Group> {
    let bench_bin = super::start::build_cairn_bench(b)?;
    let dir = log_dir.join("observe");
    let root = dir.join("layer");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&bench_bin, root.join("bin/cairn-bench")).context("copying cairn-bench")?;
    let sources = BTreeMap::from([("bench".to_owned(), root.clone())]);
    let guest = super::start::build_guest_with(b, modules, &dir, Some(&art.init))?;
    let files = cairn_qemu_tests::BootFiles {
        qemu: art.boot.qemu.clone(),
        kernel: art.boot.kernel.clone(),
        initramfs: guest,
        firmware: None,
    };
    let mut rows = Vec::new();
    let mut notes = vec![
        "cairn-init runs as PID 1 of a new pid and mount namespace on an overlay root in the bench guest; cairn-bench reads /proc/PID/smaps_rollup from outside every 10 s".into(),
        "USS = Private_Clean + Private_Dirty; the crash container's entrypoint exits 2 at once, restart always, 1 ms backoff".into(),
    ];
    for (name, toml_text) in [("idle-1", appliance_toml(1)), ("crashloop", crashloop_toml())] {
        let toml = dir.join(format!("{name}.toml"));
        std::fs::write(&toml, toml_text)?;
        let app =
            cairn_build::assemble::build_appliance(&toml, &sources, &art.key, &dir.join(format!("layers-{name}")))?;
        let disk = dir.join(format!("{name}.img"));
        cairn_build::assemble::assemble_disk(&app, &disk, cairn_build::assemble::DiskOptions::default(), None)?;
        let log = dir.join(format!("{name}.log"));
        eprintln!("xtask: bench observe {name} (console: {})", log.display());
        // The idle boot stops at the first sample; the crash loop after its
        // `restarts`th restart (the first start is not a restart).
        let want = if name == "crashloop" { restarts + 1 } else { 0 };
        let cmd = qemu::command(b, &files, &disk, "cairn.bench.mode=observe");
        let run = qemu::capture(cmd, &log, Duration::from_secs(300 + restarts as u64 / 2), &|c| {
            let raw: Vec<&str> = c.raw.iter().map(String::as_str).collect();
            parse_observed(raw).iter().any(|o| o.who == "cairn-init" && o.all_started && o.crash_starts >= want)
        })?;
        let raw: Vec<&str> = run.console.raw.iter().map(String::as_str).collect();
        let seen = parse_observed(raw);
        let pick = |who: &str, min_starts: usize| {
            seen.iter().find(|o| o.who == who && o.all_started && o.crash_starts >= min_starts)
        };
        let mut push = |label: String, o: Option<&Observed>| {
            if let Some(o) = o {
                rows.push(Row::new(&format!("{label} rss"), vec![o.kib.0]));
                rows.push(Row::new(&format!("{label} pss"), vec![o.kib.1]));
                rows.push(Row::new(&format!("{label} uss"), vec![o.kib.2]));
            }
        };
        if name == "idle-1" {
            push("cairn-init, 1 container, idle:".into(), pick("cairn-init", 0));
        } else {
            push("cairn-init, 16 containers:".into(), pick("cairn-init", 0));
            push("nsinit of one:".into(), pick("nsinit", 0));
            for n in [10, 100, 500, 1000].into_iter().filter(|n| *n <= restarts) {
                let o = pick("cairn-init", n + 1);
                push(format!("cairn-init after {} restarts:", o.map_or(n, |o| o.crash_starts.saturating_sub(1))), o);
            }
            if let Some(last) = seen.iter().rev().find(|o| o.who == "cairn-init") {
                notes.push(format!(
                    "crash container started {} times in {:.0} s",
                    last.crash_starts,
                    run.elapsed.as_secs_f64()
                ));
            }
        }
    }
    Ok(Group {
        name: "memory-pid1".into(),
        title:
            "cairn-init's own Rss/Pss/USS (KiB): one container idle; 15 running + 1 crash-looping, over its restarts"
                .into(),
        unit: "KiB".into(),
        rows,
        subject: None,
        notes,
    })
}
