//! `cargo xtask bench`: benchmarks, not tests. Every benchmark runs on each
//! board (or `--board`), contenders interleaved (A, B, C, A, B, C, ...) so
//! that drift on a noisy machine hits them all alike. One table is printed
//! per board and written to `build/bench/<board>.md` and `.json`, with what
//! ran (kernel, QEMU version, machine) and per row n/min/p50/p90/p99/max.
//! Nothing here fails on a slow result. See docs/bench.md.

pub mod boot;
pub mod net;
pub mod ota;
pub mod report;
pub mod scale;
pub mod sizes;
pub mod start;
pub mod stats;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_board::Board;

use report::Report;

/// The benchmarks run on a board when none is named.
pub const DEFAULT: &[&str] = &["start", "boot", "boot-demo", "sizes", "scale", "memory", "pid1"];
/// Every benchmark name `cargo xtask bench NAME..` accepts per board.
pub const ALL: &[&str] =
    &["start", "boot", "boot-demo", "sizes", "scale", "memory", "pid1", "steps", "trace", "firmware", "ota", "net"];

/// What `cargo xtask bench` was asked for.
#[derive(Debug)]
pub struct Options {
    /// Boards, in order.
    pub boards: Vec<&'static Board>,
    /// Boots per contender for the boot benchmarks.
    pub runs: usize,
    /// Samples per contender inside one guest (container start).
    pub samples: usize,
    /// Benchmark names (empty: [`DEFAULT`]).
    pub which: Vec<String>,
    /// Start the board's report afresh instead of keeping the groups of
    /// the last run that this one does not measure.
    pub fresh: bool,
}

/// `build/bench`.
pub fn out_dir() -> PathBuf {
    crate::build_dir().join("bench")
}

/// Run the benchmarks on every board, print the tables, write the files.
pub fn run(o: &Options) -> Result<()> {
    let which: Vec<&str> =
        if o.which.is_empty() { DEFAULT.to_vec() } else { o.which.iter().map(String::as_str).collect() };
    for w in &which {
        if !ALL.contains(w) {
            bail!("unknown benchmark {w:?}; benchmarks: {} (and `layers`, on the host)", ALL.join(", "));
        }
    }
    let out = out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for &b in &o.boards {
        let art = crate::prepare(b)?;
        let kernel = crate::kernel::fetch_kernel(b, &crate::build_dir().join("kernels"))?;
        let log_dir = out.join(b.name);
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let earlier = std::fs::read_to_string(out.join(format!("{}.json", b.name)))
            .ok()
            .and_then(|t| report::parse_json(&t))
            .filter(|_| !o.fresh);
        let mut r = Report { board: b.name.into(), ..Report::default() };
        r.facts.push(("kernel".into(), format!("{} ({})", kernel.version, kernel.package)));
        r.facts.push(("qemu".into(), qemu_version(&art.boot.qemu)));
        r.facts.push(("machine".into(), format!("{} -accel tcg", b.qemu_args.join(" "))));
        r.facts.push(("host".into(), host_summary()));
        r.facts.push(("benchmarks".into(), which.join(", ")));
        // The bench guest loads the container networks' modules at boot
        // too (`cairn-bridge`, `net`); cairn-init loads them on demand.
        let guest_modules: Vec<PathBuf> = kernel.modules.iter().chain(&kernel.on_demand.networks).cloned().collect();
        let guest = start::Guest {
            b,
            qemu_bin: &art.boot.qemu,
            kernel: &art.boot.kernel,
            modules: &guest_modules,
            log_dir: &log_dir,
        };
        for w in &which {
            match *w {
                "boot" => r.groups.extend(boot::overhead(b, &art, o.runs, &log_dir)?),
                "boot-demo" => {
                    let disk = crate::demo_disk(b, &art)?;
                    r.groups.push(boot::demo(b, &art, &disk, o.runs, &log_dir)?);
                }
                "firmware" => {
                    let disk = crate::demo_disk(b, &art)?;
                    r.groups.push(boot::firmware(b, &art, &disk, o.runs, &log_dir)?);
                }
                "start" => {
                    let (groups, info) = start::run(&guest, o.samples)?;
                    for (k, v) in info {
                        r.facts.push((format!("start guest {k}"), v));
                    }
                    r.groups.extend(groups);
                }
                "sizes" => {
                    let disk = crate::demo_disk(b, &art)?;
                    let mut g = sizes::sizes(b, &art, &start::debs(b)?)?;
                    g.notes.push(format!("demo disk: {}", disk.display()));
                    r.groups.push(g);
                }
                "scale" => r.groups.push(scale::boot(b, &art, o.runs, &log_dir)?),
                "ota" => r.groups.push(ota::run(b, &art, o.runs, &log_dir)?),
                "net" => r.groups.push(net::run(&guest, o.samples)?),
                "memory" => r.groups.push(scale::memory(b, &art, &kernel.modules, 1000, &log_dir)?),
                "pid1" => r.groups.push(scale::observe(b, &art, &kernel.modules, 1000, &log_dir)?),
                "steps" => r.groups.push(start::steps(&guest, o.runs.max(5))?),
                "trace" => r.groups.push(start::trace(&guest, o.samples.min(50))?),
                _ => unreachable_name(w)?,
            }
            // Keep what is measured so far even if a later benchmark fails.
            write(&r)?;
        }
        print!("{}", report::render_table(&r));
        let r = report::merge_earlier(r, earlier);
        let (md, json) = write(&r)?;
        println!("xtask: wrote {} and {}", md.display(), json.display());
    }
    Ok(())
}

fn unreachable_name(w: &str) -> Result<()> {
    bail!("benchmark {w:?} has no runner")
}

/// Write `<board>.md` and `<board>.json` under `build/bench`.
pub fn write(r: &Report) -> Result<(PathBuf, PathBuf)> {
    let md = out_dir().join(format!("{}.md", r.board));
    let json = out_dir().join(format!("{}.json", r.board));
    std::fs::write(&md, report::render_md(r)).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, report::render_json(r)).with_context(|| format!("writing {}", json.display()))?;
    Ok((md, json))
}

/// The boards' QEMU command line without a disk: the bench guests boot an
/// initramfs alone. `extra` ends the kernel command line.
pub fn diskless_command(
    b: &Board,
    qemu: &std::path::Path,
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    extra: &str,
) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(b.qemu_args)
        .args(["-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(b.cmdline(extra));
    cmd
}

/// First line of `qemu-system-* --version`.
fn qemu_version(qemu: &std::path::Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Host CPU model and count, for the record (TCG speed depends on it).
fn host_summary() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown cpu".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{model}, {cpus} cpus available")
}
