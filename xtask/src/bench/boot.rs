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
/// milestone present to its own; missing milestones are skipped, and so is
/// one reached after a later milestone (work the boot did off the path to
/// the payload: the data partition's mount without persistent volumes).
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
    let reached: Vec<(&'static str, f64)> = MILESTONES
        .iter()
        .filter_map(|&(stage, event, last)| {
            let mut hits = events.iter().filter(|(e, _)| e == event).map(|(_, t)| *t);
            let t = if last { hits.next_back() } else { hits.next() };
            t.map(|t| (stage, t))
        })
        .collect();
    let mut out = Vec::new();
    let mut prev = 0.0;
    for (i, &(stage, t)) in reached.iter().enumerate() {
        if reached.iter().skip(i + 1).any(|&(_, later)| later < t) {
            continue;
        }
        out.push((stage, t - prev));
        prev = t;
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

/// One cairn boot's figures: the payload's time and the stage durations.
struct CairnBoot {
    hello: f64,
    stages: Vec<(&'static str, f64)>,
    /// cairn's own time: its `/init` (`boot.start`) to the payload's line, s.
    own: f64,
    /// `check_ms` of its `layer.mounted` events, summed.
    check_ms: f64,
}

impl CairnBoot {
    /// From the boot's `(event, t, check_ms)` triples in console order and
    /// the payload's time; `None` without `boot.start`.
    fn of(events: &[(String, f64, Option<f64>)], hello: f64) -> Option<Self> {
        let start = events.iter().find(|(e, ..)| e == "boot.start").map(|(_, t, _)| *t)?;
        let mut times: Vec<(String, f64)> = events.iter().map(|(e, t, _)| (e.clone(), *t)).collect();
        times.push(("bench-hello".into(), hello));
        let check_ms = events.iter().filter(|(e, ..)| e == "layer.mounted").filter_map(|(.., c)| *c).sum();
        Some(Self { hello, stages: stages(&times), own: hello - start, check_ms })
    }

    /// A stage's duration, s (0 if the boot has no such stage).
    fn stage(&self, name: &str) -> f64 {
        self.stages.iter().find(|(s, _)| *s == name).map_or(0.0, |(_, secs)| *secs)
    }

    /// cairn's own time less the layers' check at mount (s).
    fn unchecked(&self) -> f64 {
        self.own - self.check_ms / 1000.0
    }
}

/// Boot `disk` with QEMU's `-kernel` (no firmware, like the bare init: the
/// disk has no boot slot, and through the firmware it would stop in the
/// UEFI shell) until the payload's line.
fn cairn_boot(b: &'static Board, art: &Artifacts, disk: &Path, log: &Path) -> Result<CairnBoot> {
    let stop = |c: &cairn_qemu_tests::console::Console| console_hello(c).is_some();
    let opts = qemu::BootOptions { direct_kernel: true, ..qemu::BootOptions::default() };
    let cmd = qemu::command_with(b, &art.boot, disk, &opts);
    let run = qemu::capture(cmd, log, Duration::from_secs(180), &stop)?;
    let hello = console_hello(&run.console)
        .with_context(|| format!("the cairn boot printed no bench-hello (console: {})", log.display()))?;
    let events: Vec<(String, f64, Option<f64>)> = run
        .console
        .lines
        .iter()
        .filter(|l| l.source == "cairn")
        .filter_map(|l| {
            Some((l.event.clone(), l.get("t")?.parse().ok()?, l.get("check_ms").and_then(|c| c.parse().ok())))
        })
        .collect();
    CairnBoot::of(&events, hello)
        .with_context(|| format!("the cairn boot has no boot.start (console: {})", log.display()))
}

/// Stage durations by stage (ms), in [`MILESTONES`] order.
type PerStage = Vec<(&'static str, Vec<f64>)>;

fn add_stages(per_stage: &mut PerStage, boot: &CairnBoot) {
    for (stage, secs) in &boot.stages {
        if let Some((_, v)) = per_stage.iter_mut().find(|(s, _)| s == stage) {
            v.push(secs * 1000.0);
        }
    }
}

/// The stage group of one kind of cairn boot.
fn stage_group(name: &str, title: &str, per_stage: PerStage) -> Group {
    Group {
        name: name.into(),
        title: title.into(),
        unit: "ms".into(),
        rows: per_stage.into_iter().filter(|(_, v)| !v.is_empty()).map(|(s, v)| Row::new(s, v)).collect(),
        subject: None,
        notes: MILESTONES.iter().map(|(s, e, _)| format!("{s}: ends at {e}")).collect(),
    }
}

/// The appliance of `toml` with every layer checked by digest at boot
/// instead of dm-verity (a top-level key, so it goes before the tables).
fn digest_variant(toml: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(toml).with_context(|| format!("reading {}", toml.display()))?;
    std::fs::write(out, format!("layer_check = \"digest\"\n{text}"))?;
    Ok(())
}

/// The medians the overhead summary is made of (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medians {
    /// The bare init's boot.
    pub bare: f64,
    /// cairn's boot, the layer checked by dm-verity.
    pub cairn: f64,
    /// cairn's own time in those boots: its `/init` to the payload's line.
    pub own: f64,
    /// The same in the boots with the layer checked by digest, less the
    /// digest's hashing.
    pub unchecked: f64,
    /// That, less the boot modules' stage.
    pub unchecked_no_modules: f64,
}

/// What cairn adds to the bare boot. The totals differ by the kernel's
/// part too, the same work in both that varies by a tenth of a second
/// from boot to boot under emulation; cairn's own time, from its `/init` to
/// the payload's line, is measured within each boot. Then that time
/// without the layer check (the boots with the layer checked by digest,
/// less the hashing) and without the boot modules (the kernel's own driver
/// init, which a kernel with those drivers built in would pay before
/// `/init`).
pub fn overhead_summary(m: Medians) -> Vec<String> {
    let share = |added: f64| format!("{:+.0} ms ({:+.0}% of the bare boot)", added * 1000.0, added / m.bare * 100.0);
    vec![
        format!("difference of the totals' p50s: {}", share(m.cairn - m.bare)),
        format!("cairn's own time, its /init to the payload's line (p50): {}", share(m.own)),
        format!(
            "the same without the layer check (the digest boots less their hashing; the goal's measure): {}",
            share(m.unchecked)
        ),
        format!("the same without the boot modules too (the kernel's driver init): {}", share(m.unchecked_no_modules)),
    ]
}

/// Boot overhead against a bare init: the same kernel booting an
/// initramfs whose `/init` is `cairn-bench hello`, and cairn booting a
/// one-container appliance whose entrypoint is `cairn-bench hello`, its
/// layer checked by dm-verity (the default) and, to tell what the read-time
/// check costs, by digest at boot; interleaved, `runs` boots each. Kernel
/// start to the payload's line.
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
    // The appliance of `toml`, its layers under `layers`, on the disk `disk`.
    let disk_of = |toml: &Path, layers: &str, disk: &str| -> Result<_> {
        let app = cairn_build::assemble::build_appliance(toml, &sources, &art.key, &dir.join(layers))?;
        let disk = dir.join(disk);
        cairn_build::assemble::assemble_disk(&app, &disk, cairn_build::assemble::DiskOptions::default(), None)?;
        Ok((app, disk))
    };
    let (app, disk) = disk_of(&toml, "layers", "disk.img")?;
    let digest_toml = dir.join("hello-digest.toml");
    digest_variant(&toml, &digest_toml)?;
    let (_, digest_disk) = disk_of(&digest_toml, "layers-digest", "disk-digest.img")?;
    let bare_initramfs = dir.join("bare.cpio.gz");
    let mut c = cairn_build::cpio::CpioBuilder::new();
    for d in ["dev", "proc", "sys"] {
        c.dir(d, 0o755);
    }
    c.char_device("dev/console", 0o600, 5, 1);
    c.file("init", 0o755, &std::fs::read(&bench_bin)?);
    std::fs::write(&bare_initramfs, cairn_build::cpio::gzip(&c.finish()))?;

    let (mut bare, mut cairn, mut digest) = (Vec::new(), Vec::new(), Vec::new());
    let (mut own, mut unchecked, mut unchecked_no_modules) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_stage: PerStage = MILESTONES.iter().map(|(s, ..)| (*s, Vec::new())).collect();
    let mut per_stage_digest = per_stage.clone();
    let stop = |c: &cairn_qemu_tests::console::Console| console_hello(c).is_some();
    for i in 0..runs.max(1) {
        let cmd = super::diskless_command(b, &art.boot.qemu, &art.boot.kernel, &bare_initramfs, "-- hello");
        let log = dir.join(format!("bare-{i}.log"));
        let run = qemu::capture(cmd, &log, Duration::from_secs(120), &stop)?;
        let t = console_hello(&run.console)
            .with_context(|| format!("the bare init printed no bench-hello (console: {})", log.display()))?;
        bare.push(t);

        let verity = cairn_boot(b, art, &disk, &dir.join(format!("cairn-{i}.log")))?;
        add_stages(&mut per_stage, &verity);
        cairn.push(verity.hello);
        own.push(verity.own);
        let by_digest = cairn_boot(b, art, &digest_disk, &dir.join(format!("cairn-digest-{i}.log")))?;
        add_stages(&mut per_stage_digest, &by_digest);
        digest.push(by_digest.hello);
        unchecked.push(by_digest.unchecked());
        unchecked_no_modules.push(by_digest.unchecked() - by_digest.stage("modules"));
        eprintln!(
            "xtask: bench boot-overhead run {i}: bare {t:.3}s, cairn {:.3}s, cairn with the layer checked by digest {:.3}s",
            verity.hello, by_digest.hello
        );
    }
    let p50 = |v: &[f64]| super::stats::summarize(v).map_or(0.0, |s| s.p50);
    let summary = overhead_summary(Medians {
        bare: p50(&bare),
        cairn: p50(&cairn),
        own: p50(&own),
        unchecked: p50(&unchecked),
        unchecked_no_modules: p50(&unchecked_no_modules),
    });
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut compare = Group {
        name: "boot-overhead".into(),
        title: "kernel start -> the payload's first line (CLOCK_BOOTTIME in the guest): bare /init vs cairn running it as its one container".into(),
        unit: "s".into(),
        rows: vec![Row::new("cairn", cairn), Row::new("cairn, layer by digest", digest), Row::new("bare init", bare)],
        subject: Some("cairn".into()),
        notes: vec![
            format!("{runs} boots each, interleaved (bare, cairn, cairn by digest, bare, ...)"),
            "cairn: the layer checked by dm-verity as it is read (the default); cairn, layer by digest: hashed whole at \
             boot and mounted without dm-verity"
                .to_owned(),
            format!(
                "initramfs: bare {} bytes (cairn-bench alone), cairn {} bytes (cairn-init and the board's modules); disk: one {}-byte layer",
                size(&bare_initramfs),
                size(&art.boot.initramfs),
                app.layers.iter().map(|l| l.size).sum::<u64>()
            ),
        ],
    };
    compare.notes.extend(summary);
    let breakdown = stage_group(
        "boot-overhead-stages",
        "where cairn's boot goes, from its events (each stage ends at the named event)",
        per_stage,
    );
    let breakdown_digest = stage_group(
        "boot-overhead-stages-digest",
        "the same, the layer checked by digest at boot instead of dm-verity",
        per_stage_digest,
    );
    Ok(vec![compare, breakdown, breakdown_digest])
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
    fn a_milestone_reached_after_a_later_one_is_off_the_path() {
        let ev = |e: &str, t: f64| (e.to_owned(), t);
        let events = [
            ev("boot.start", 2.0),
            ev("layer.mounted", 2.5),
            ev("container.starting", 2.75),
            ev("data.mounted", 3.0),
            ev("container.started", 3.25),
            ev("bench-hello", 3.5),
        ];
        let s = stages(&events);
        let names: Vec<&str> = s.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "kernel -> cairn /init",
                "layer mounts (verify)",
                "to container start",
                "container setup -> exec",
                "exec -> payload line"
            ]
        );
        let secs: Vec<f64> = s.iter().map(|(_, t)| *t).collect();
        assert_eq!(secs, [2.0, 0.5, 0.25, 0.5, 0.25]);
    }

    #[test]
    fn a_boot_gives_its_own_time_without_the_check_and_without_the_modules() {
        let ev = |e: &str, t: f64, c: Option<f64>| (e.to_owned(), t, c);
        let events = [
            ev("boot.start", 1.5, None),
            ev("modules.done", 1.75, None),
            ev("layer.mounted", 2.0, Some(20.0)),
            ev("layer.mounted", 2.25, Some(5.0)),
            ev("container.started", 2.5, None),
        ];
        let b = CairnBoot::of(&events, 2.625).unwrap();
        assert_eq!((b.hello, b.own, b.check_ms), (2.625, 1.125, 25.0));
        assert_eq!(b.unchecked(), 1.1);
        assert_eq!(b.stage("modules"), 0.25);
        assert_eq!(b.stage("cgroups"), 0.0, "a stage the boot lacks");
        assert!(CairnBoot::of(&events[1..], 2.625).is_none(), "no boot.start");
    }

    #[test]
    fn the_summary_gives_each_share_of_the_bare_boot() {
        let m = Medians { bare: 1.0, cairn: 1.5, own: 0.45, unchecked: 0.38, unchecked_no_modules: 0.23 };
        assert_eq!(
            overhead_summary(m),
            [
                "difference of the totals' p50s: +500 ms (+50% of the bare boot)",
                "cairn's own time, its /init to the payload's line (p50): +450 ms (+45% of the bare boot)",
                "the same without the layer check (the digest boots less their hashing; the goal's measure): +380 ms (+38% of the bare boot)",
                "the same without the boot modules too (the kernel's driver init): +230 ms (+23% of the bare boot)"
            ]
        );
    }

    #[test]
    fn hello_lines_parse() {
        assert_eq!(hello_time("bench-hello t=3.250000 pid=1"), Some(3.25));
        assert_eq!(hello_time("[ 1.0] x bench-hello t=4.5 pid=2"), Some(4.5));
        assert_eq!(hello_time("bench-hello pid=1"), None);
        assert_eq!(hello_time("payload t=1"), None);
    }
}
