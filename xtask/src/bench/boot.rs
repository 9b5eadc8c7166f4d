//! Boot time of the demo appliance (the `cargo xtask bench` of before):
//! kernel start to `/init`, `/init` to every container started, from the
//! boot events' guest timestamps.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_board::Board;
use cairn_qemu_tests::{qemu, Artifacts};

use super::report::{Group, Row};

/// Boot the demo disk `runs` times; one group of three rows (seconds).
pub fn demo(b: &'static Board, art: &Artifacts, disk: &Path, runs: usize, log_dir: &Path) -> Result<Group> {
    let (mut to_init, mut to_started, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs.max(1) {
        let cmd = qemu::command(b, &art.boot, disk, "");
        let log = log_dir.join(format!("boot-demo-{i}.log"));
        let run =
            qemu::capture(cmd, &log, Duration::from_secs(180), &|c| c.first("boot.containers-started", &[]).is_some())?;
        let ev = run
            .console
            .first("boot.containers-started", &[])
            .with_context(|| format!("the demo never started its containers (console: {})", log.display()))?;
        let t_start = run.console.first("boot.start", &[]).and_then(|l| l.get("t")?.parse::<f64>().ok()).unwrap_or(0.0);
        let t: f64 = ev.get("t").and_then(|t| t.parse().ok()).unwrap_or(0.0);
        eprintln!(
            "xtask: bench boot run {i}: kernel->init {t_start:.3}s, init->containers {:.3}s, total {t:.3}s (host wall {:.1}s)",
            t - t_start,
            run.elapsed.as_secs_f64()
        );
        to_init.push(t_start);
        to_started.push(t - t_start);
        total.push(t);
    }
    Ok(Group {
        name: "boot-demo".into(),
        title: "demo appliance (three containers): guest time from kernel start, from the boot events".into(),
        unit: "s".into(),
        rows: vec![
            Row::new("kernel -> /init", to_init),
            Row::new("/init -> all started", to_started),
            Row::new("total", total),
        ],
        subject: None,
        notes: vec![],
    })
}

/// The demo disk booted through the UEFI firmware and, for comparison,
/// with QEMU's `-kernel` (no firmware, no loader): host wall time from QEMU's
/// start to the firmware handing over to the disk's loader (OVMF/AAVMF
/// print `BdsDxe: starting`), to cairn-init's `boot.start`, and to
/// `boot.containers-started` (seconds; when the host reads each line).
pub fn firmware(b: &'static Board, art: &Artifacts, disk: &Path, runs: usize, log_dir: &Path) -> Result<Group> {
    use std::cell::Cell;
    use std::time::Instant;
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut push = |name: String, v: f64| match rows.iter_mut().find(|(n, _)| *n == name) {
        Some((_, vs)) => vs.push(v),
        None => rows.push((name, vec![v])),
    };
    for i in 0..runs.max(1) {
        for (mode, direct) in [("uefi", false), ("direct", true)] {
            let opts = qemu::BootOptions { direct_kernel: direct, ..qemu::BootOptions::default() };
            let cmd = qemu::command_with(b, &art.boot, disk, &opts);
            let log = log_dir.join(format!("firmware-{mode}-{i}.log"));
            let start = Instant::now();
            let marks: [Cell<Option<f64>>; 3] = Default::default();
            let stop = |c: &cairn_qemu_tests::console::Console| {
                let now = start.elapsed().as_secs_f64();
                let seen = [
                    c.contains("BdsDxe: starting"),
                    c.first("boot.start", &[]).is_some(),
                    c.first("boot.containers-started", &[]).is_some(),
                ];
                for (m, s) in marks.iter().zip(seen) {
                    if s && m.get().is_none() {
                        m.set(Some(now));
                    }
                }
                seen[2]
            };
            let run = qemu::capture(cmd, &log, Duration::from_secs(240), &stop)?;
            let [handover, init, started] = marks.map(|m| m.get());
            let started = started.with_context(|| format!("{mode}: no boot.containers-started ({})", log.display()))?;
            eprintln!(
                "xtask: bench firmware {mode} run {i}: handover {handover:?} boot.start {init:?} started {started:.2}s (wall {:.1}s)",
                run.elapsed.as_secs_f64()
            );
            if let Some(h) = handover {
                push(format!("{mode}: QEMU start -> firmware hands over"), h);
            }
            if let Some(t) = init {
                push(format!("{mode}: QEMU start -> boot.start"), t);
            }
            push(format!("{mode}: QEMU start -> containers started"), started);
        }
    }
    let esp = cairn_build::gpt::read_layout(disk)
        .ok()
        .and_then(|l| l.find(cairn_build::gpt::ESP_NAME).map(|p| p.size_bytes))
        .unwrap_or(0);
    Ok(Group {
        name: "firmware".into(),
        title: "demo disk booted through UEFI firmware vs QEMU -kernel: host wall time from QEMU start".into(),
        unit: "s".into(),
        rows: rows.into_iter().map(|(n, v)| Row::new(&n, v)).collect(),
        subject: None,
        notes: vec![format!(
            "ESP {} MiB: systemd-boot {} B, slot a's unified kernel image {} B (kernel {} B, initramfs {} B)",
            esp >> 20,
            art.kit.loader.len(),
            art.kit.uki(cairn_format::bootstate::Slot::A, "cairn-qemu-dev", 1).map(|u| u.len()).unwrap_or(0),
            art.kit.kernel.len(),
            art.kit.initramfs.len()
        )],
    })
}

/// Milestones of a cairn boot, in order: (stage name, the event that ends
/// it, whether its last occurrence counts). A stage lasts from the previous
/// milestone present to its own; missing milestones are skipped.
pub const MILESTONES: &[(&str, &str, bool)] = &[
    ("kernel -> cairn /init", "boot.start", false),
    ("modules", "modules.done", false),
    ("leave initramfs", "rootfs.switched", false),
    ("cgroups", "cgroups.ready", false),
    ("partitions", "partitions.found", false),
    ("boot state", "bootstate.read", false),
    ("manifest verify", "manifest.verified", false),
    ("layer mounts (verify)", "layer.mounted", true),
    ("data partition", "data.mounted", false),
    ("to container start", "container.starting", false),
    ("container setup -> exec", "container.started", false),
    ("exec -> payload line", "bench-hello", false),
];

/// Stage durations from `(event, t)` pairs in console order.
pub fn stages(events: &[(String, f64)]) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    let mut prev = 0.0;
    for &(stage, event, last) in MILESTONES {
        let mut hits = events.iter().filter(|(e, _)| e == event).map(|(_, t)| *t);
        let t = if last { hits.next_back() } else { hits.next() };
        if let Some(t) = t {
            out.push((stage, t - prev));
            prev = t;
        }
    }
    out
}

/// `bench-hello t=SECONDS` in a console line.
pub fn hello_time(line: &str) -> Option<f64> {
    let at = line.find("bench-hello ")?;
    line[at..].split_whitespace().find_map(|w| w.strip_prefix("t=")).and_then(|t| t.parse().ok())
}

/// The payload's `bench-hello` time in a captured console.
fn console_hello(c: &cairn_qemu_tests::console::Console) -> Option<f64> {
    c.raw.iter().find_map(|l| hello_time(l))
}

/// Boot overhead against a bare init: the same kernel booting an
/// initramfs whose `/init` is `cairn-bench hello`, and cairn booting a
/// one-container appliance whose entrypoint is `cairn-bench hello`;
/// interleaved, `runs` boots each. Kernel start to the payload's line.
pub fn overhead(b: &'static Board, art: &Artifacts, runs: usize, log_dir: &Path) -> Result<Vec<Group>> {
    let bench_bin = super::start::build_cairn_bench(b)?;
    let dir = log_dir.join("boot-hello");
    let root = dir.join("layer");
    std::fs::create_dir_all(root.join("bin"))?;
    for d in ["proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&bench_bin, root.join("bin/cairn-bench")).context("copying cairn-bench")?;
    let toml = crate::repo_root().join("bench/appliances/hello.toml");
    let sources = std::collections::BTreeMap::from([("bench".to_owned(), root.clone())]);
    let app = cairn_build::assemble::build_appliance(&toml, &sources, &art.key, &dir.join("layers"))?;
    let disk = dir.join("disk.img");
    cairn_build::assemble::assemble_disk(&app, &disk, cairn_build::assemble::DiskOptions::default(), None)?;
    let bare_initramfs = dir.join("bare.cpio.gz");
    let mut c = cairn_build::cpio::CpioBuilder::new();
    for d in ["dev", "proc", "sys"] {
        c.dir(d, 0o755);
    }
    c.char_device("dev/console", 0o600, 5, 1);
    c.file("init", 0o755, &std::fs::read(&bench_bin)?);
    std::fs::write(&bare_initramfs, cairn_build::cpio::gzip(&c.finish()))?;

    let (mut bare, mut cairn) = (Vec::new(), Vec::new());
    let mut per_stage: Vec<(&'static str, Vec<f64>)> = MILESTONES.iter().map(|(s, ..)| (*s, Vec::new())).collect();
    let stop = |c: &cairn_qemu_tests::console::Console| console_hello(c).is_some();
    for i in 0..runs.max(1) {
        let cmd = super::diskless_command(b, &art.boot.qemu, &art.boot.kernel, &bare_initramfs, "-- hello");
        let log = dir.join(format!("bare-{i}.log"));
        let run = qemu::capture(cmd, &log, Duration::from_secs(120), &stop)?;
        let t = console_hello(&run.console)
            .with_context(|| format!("the bare init printed no bench-hello (console: {})", log.display()))?;
        bare.push(t);

        // QEMU's -kernel, like the bare init (the disk has no boot slot:
        // through the firmware it would stop in the UEFI shell).
        let opts = qemu::BootOptions { direct_kernel: true, ..qemu::BootOptions::default() };
        let cmd = qemu::command_with(b, &art.boot, &disk, &opts);
        let log = dir.join(format!("cairn-{i}.log"));
        let run = qemu::capture(cmd, &log, Duration::from_secs(180), &stop)?;
        let t = console_hello(&run.console)
            .with_context(|| format!("the cairn boot printed no bench-hello (console: {})", log.display()))?;
        cairn.push(t);
        let mut events: Vec<(String, f64)> = run
            .console
            .lines
            .iter()
            .filter(|l| l.source == "cairn")
            .filter_map(|l| Some((l.event.clone(), l.get("t")?.parse().ok()?)))
            .collect();
        events.push(("bench-hello".into(), t));
        for (stage, secs) in stages(&events) {
            if let Some((_, v)) = per_stage.iter_mut().find(|(s, _)| *s == stage) {
                v.push(secs * 1000.0);
            }
        }
        eprintln!("xtask: bench boot-overhead run {i}: bare {:.3}s, cairn {t:.3}s", bare.last().unwrap_or(&0.0));
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let compare = Group {
        name: "boot-overhead".into(),
        title: "kernel start -> the payload's first line (CLOCK_BOOTTIME in the guest): bare /init vs cairn running it as its one container".into(),
        unit: "s".into(),
        rows: vec![Row::new("cairn", cairn), Row::new("bare init", bare)],
        subject: Some("cairn".into()),
        notes: vec![
            format!("{runs} boots each, interleaved (bare, cairn, bare, ...)"),
            format!(
                "initramfs: bare {} bytes (cairn-bench alone), cairn {} bytes (cairn-init and the board's modules); disk: one {}-byte layer",
                size(&bare_initramfs),
                size(&art.boot.initramfs),
                app.layers.iter().map(|l| l.size).sum::<u64>()
            ),
        ],
    };
    let breakdown = Group {
        name: "boot-overhead-stages".into(),
        title: "where cairn's boot goes, from its events (each stage ends at the named event)".into(),
        unit: "ms".into(),
        rows: per_stage.into_iter().filter(|(_, v)| !v.is_empty()).map(|(s, v)| Row::new(s, v)).collect(),
        subject: None,
        notes: MILESTONES.iter().map(|(s, e, _)| format!("{s}: ends at {e}")).collect(),
    };
    Ok(vec![compare, breakdown])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_differences_between_present_milestones() {
        let ev = |e: &str, t: f64| (e.to_owned(), t);
        let events = [
            ev("boot.start", 2.0),
            ev("module.loaded", 2.1),
            ev("modules.done", 2.5),
            ev("rootfs.switched", 3.0),
            ev("manifest.verified", 3.25),
            ev("layer.mounted", 3.5),
            ev("layer.mounted", 4.0),
            ev("container.starting", 4.5),
            ev("container.started", 4.75),
            ev("bench-hello", 5.0),
        ];
        let s = stages(&events);
        let names: Vec<&str> = s.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "kernel -> cairn /init",
                "modules",
                "leave initramfs",
                "manifest verify",
                "layer mounts (verify)",
                "to container start",
                "container setup -> exec",
                "exec -> payload line"
            ]
        );
        let secs: Vec<f64> = s.iter().map(|(_, t)| *t).collect();
        assert_eq!(secs, [2.0, 0.5, 0.5, 0.25, 0.75, 0.5, 0.25, 0.25]);
        assert!((secs.iter().sum::<f64>() - 5.0).abs() < 1e-9, "stages add up to the payload's time");
    }

    #[test]
    fn hello_lines_parse() {
        assert_eq!(hello_time("bench-hello t=3.250000 pid=1"), Some(3.25));
        assert_eq!(hello_time("[ 1.0] x bench-hello t=4.5 pid=2"), Some(4.5));
        assert_eq!(hello_time("bench-hello pid=1"), None);
        assert_eq!(hello_time("payload t=1"), None);
    }
}
