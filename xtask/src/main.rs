//! `cargo xtask`: fetch host dependencies, build, assemble images, run a
//! board in QEMU, run the QEMU scenarios, benchmark.

#![forbid(unsafe_code)]

mod bench;
mod bench_layers;
mod bench_verity;
mod device_build;
mod host_deps;
mod kernel;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use cairn_board::{Board, TestSuite};
use cairn_build::bootkit::BootKit;
use cairn_build::esp::EfiArch;
use cairn_build::{assemble, initramfs, keys};
use cairn_qemu_tests::{qemu, Artifacts, BootFiles};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run [--board NAME] [--disk IMAGE] [--fast]
                                        build and boot the demo appliance (or IMAGE)
                                        with the serial console attached (Ctrl-A X quits);
                                        the UEFI firmware boots the disk, or with --fast
                                        QEMU starts the kernel and initramfs itself
  test                                  every test: host unit tests, then every QEMU scenario on the
                                        QEMU boards, then nvme-ahci on the generic boards
  qemu-test [--board NAME] [SCENARIO..] run QEMU scenarios (every board's suite unless --board)
  build [--board NAME]                  build init, payload, initramfs and the demo disk
  bench [--board NAME] [--runs N] [--samples N] [BENCH..]
                                        benchmarks (both boards unless --board; BENCH: start,
                                        boot, boot-demo, sizes, scale, memory, pid1, steps,
                                        firmware; default all but steps and firmware);
                                        earlier results of
                                        other benchmarks are kept unless `fresh` is named;
                                        table in build/bench/<board>.{md,json}, see docs/bench.md
  bench layers                          measure `cairn layer build` (directory, tar, tar.gz)
  bench verity [--board NAME] [--runs N] manifest verified -> layers mounted, 16/128/512 MiB,
                                        dm-verity against the whole-image sha256
  scenarios                             list the QEMU scenarios
  kernel-update [--board NAME]          pin the board(s) to the newest Debian kernel package

boards: qemu-x86_64 (default), qemu-aarch64, generic-x86_64, generic-arm64
  (the generic boards are for real hardware; without --board, test and qemu-test
  run on them only the scenarios their board file names: nvme-ahci)";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    command: String,
    board: Option<String>,
    disk: Option<PathBuf>,
    runs: usize,
    samples: usize,
    rest: Vec<String>,
    fast: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let command = it.next().unwrap_or_default();
    let mut a = Args { command, board: None, disk: None, runs: 3, samples: 200, rest: Vec::new(), fast: false };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--board" => a.board = Some(it.next().context("--board needs a name")?),
            "--fast" => a.fast = true,
            "--disk" => a.disk = Some(PathBuf::from(it.next().context("--disk needs a path")?)),
            "--runs" => {
                a.runs = it.next().context("--runs needs a number")?.parse().context("--runs needs a number")?
            }
            "--samples" => {
                a.samples =
                    it.next().context("--samples needs a number")?.parse().context("--samples needs a number")?
            }
            "-h" | "--help" => a.command = "help".into(),
            s if s.starts_with('-') => bail!("unknown option {s}\n\n{USAGE}"),
            _ => a.rest.push(arg),
        }
    }
    Ok(a)
}

fn board(name: Option<&str>) -> Result<&'static Board> {
    let name = name.unwrap_or(cairn_board::DEFAULT_BOARD);
    cairn_board::by_name(name)
        .with_context(|| format!("unknown board {name:?}; boards: {}", cairn_board::names().join(", ")))
}

fn run() -> Result<ExitCode> {
    let a = parse_args()?;
    match a.command.as_str() {
        "run" => run_demo(board(a.board.as_deref())?, a.disk.as_deref(), a.fast),
        "build" => {
            let b = board(a.board.as_deref())?;
            let art = prepare(b)?;
            let disk = demo_disk(b, &art)?;
            println!("xtask: demo disk {}", disk.display());
            Ok(ExitCode::SUCCESS)
        }
        "qemu-test" => {
            // Some scenarios make layers with mksquashfs (squashfs-tools).
            host_deps::ensure_test_tools()?;
            qemu_test(a.board.as_deref(), &a.rest)
        }
        "test" => {
            host_deps::ensure_test_tools()?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(repo_root())
                .args(["test", "--workspace"])
                .status()
                .context("running cargo test")?;
            anyhow::ensure!(status.success(), "host unit tests failed");
            qemu_test(a.board.as_deref(), &a.rest)
        }
        "bench" if a.rest.first().is_some_and(|w| w == "layers") => {
            let group = bench_layers::bench(&build_dir())?;
            let r = bench::report::Report { board: "host".into(), facts: vec![], groups: vec![group] };
            std::fs::create_dir_all(bench::out_dir())?;
            let (md, json) = bench::write(&bench::report::Report { board: "layers".into(), ..r })?;
            println!("xtask: wrote {} and {}", md.display(), json.display());
            Ok(ExitCode::SUCCESS)
        }
        "bench" if a.rest.first().is_some_and(|w| w == "verity") => {
            let b = board(a.board.as_deref())?;
            let art = prepare(b)?;
            bench_verity::bench(b, &art, &build_dir().join(b.name).join("bench-verity"), a.runs)?;
            Ok(ExitCode::SUCCESS)
        }
        "bench" => {
            let boards = match a.board.as_deref() {
                Some(name) => vec![board(Some(name))?],
                None => cairn_board::all().into_iter().filter(|b| b.test_suite == TestSuite::All).collect(),
            };
            let fresh = a.rest.iter().any(|w| w == "fresh");
            let which = a.rest.into_iter().filter(|w| w != "fresh").collect();
            bench::run(&bench::Options { boards, runs: a.runs, samples: a.samples, which, fresh })?;
            Ok(ExitCode::SUCCESS)
        }
        "kernel-update" => {
            let boards = match a.board.as_deref() {
                Some(name) => vec![board(Some(name))?],
                None => cairn_board::all().to_vec(),
            };
            for b in boards {
                let (package, version) = kernel::newest_kernel(b)?;
                let file = repo_root().join("board/src").join(format!("{}.rs", b.name.replace('-', "_")));
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                let new = kernel::repin(&text, &package, &version)?;
                std::fs::write(&file, new).with_context(|| format!("writing {}", file.display()))?;
                println!(
                    "xtask: {} kernel {package}={version} (was {}={})",
                    b.name, b.kernel_package, b.kernel_version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "scenarios" => {
            for s in cairn_qemu_tests::all() {
                println!("{}", s.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        "help" | "" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn build_dir() -> PathBuf {
    repo_root().join("build")
}

/// The development signing key, generated on first use.
/// The development signing key's secret key file.
fn dev_key_path() -> PathBuf {
    build_dir().join("keys").join("cairn-DEVELOPMENT-ONLY.key")
}

fn dev_key() -> Result<ed25519_dalek::SigningKey> {
    let path = dev_key_path();
    let (key, fresh) = keys::load_or_generate(&path)?;
    if fresh {
        eprintln!("xtask: ************************************************************");
        eprintln!("xtask: generated a DEVELOPMENT signing key: {}", path.display());
        eprintln!("xtask: images signed with it are for development only; never ship");
        eprintln!("xtask: an initramfs that trusts it. It is not committed (build/ is ignored).");
        eprintln!("xtask: ************************************************************");
    }
    Ok(key)
}

/// The product string the development initramfs carries, and of every
/// appliance file in the repository (`compatible = "cairn-qemu-dev"`).
const DEV_COMPATIBLE: &str = "cairn-qemu-dev";

/// Build everything a board boots, except the disk.
fn prepare(b: &'static Board) -> Result<Artifacts> {
    prepare_with(b, false)
}

/// [`prepare`], and with `test_hooks` also the boot kit whose cairn-init
/// has the `test-hooks` feature ([`Artifacts::test_hooks_kit`]).
fn prepare_with(b: &'static Board, test_hooks: bool) -> Result<Artifacts> {
    host_deps::ensure_rust_target(b.rust_target)?;
    let qemu = host_deps::ensure_qemu(b)?;
    let kernel = kernel::fetch_kernel(b, &build_dir().join("kernels"))?;
    let key = dev_key()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The test-hooks variant first, copied aside: the normal build below
    // then puts the production binary back in place (only cairn-init is
    // compiled again for the feature; its dependencies are shared).
    let hooked = test_hooks.then(|| build_test_hooks_init(b)).transpose()?;
    let status =
        device_build::cargo_build(b.rust_target, &["cairn-init", "cairn-payload", "cairn-ctl", "cairn-agent"], &[])
            .status()
            .context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build for {} failed", b.rust_target);
    let status = Command::new(&cargo)
        .current_dir(repo_root())
        .args(["build", "-p", "cairn-cli"])
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build -p cairn-cli failed");
    let out = repo_root().join("target").join(b.rust_target).join("release");
    let dir = build_dir().join(b.name);
    let payload_root = dir.join("payload-root");
    std::fs::create_dir_all(payload_root.join("bin"))?;
    std::fs::copy(out.join("cairn-payload"), payload_root.join("bin/cairn-payload"))
        .context("copying cairn-payload")?;
    let agent_root = dir.join("agent-root");
    std::fs::create_dir_all(agent_root.join("bin"))?;
    std::fs::copy(out.join("cairn-agent"), agent_root.join("bin/cairn-agent")).context("copying cairn-agent")?;
    let busybox_root = busybox_root(b, &dir)?;
    let initramfs = dir.join("initramfs.cpio.gz");
    let init = out.join("cairn-init");
    // The init holds no key and no product: the initramfs carries them.
    // A development build: it honours `cairn.console=ctl`.
    let trust = initramfs::Trust {
        development: true,
        ..initramfs::Trust::new(vec![key.verifying_key().to_bytes()], DEV_COMPATIBLE)?
    };
    initramfs::write_with_on_demand(&init, &kernel.modules, &kernel.on_demand, &trust, &initramfs)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "xtask: {}: kernel {} ({}) | cairn-init {} bytes | initramfs {} bytes | modules {} | on demand {}",
        b.name,
        kernel.version,
        kernel.package,
        size(&init),
        size(&initramfs),
        kernel.modules.iter().filter_map(|m| m.file_stem()).map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(","),
        kernel.on_demand.all().filter_map(|m| m.file_stem()).map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(",")
    );
    let kernel_tree = kernel.vmlinuz.parent().and_then(Path::parent).map(Path::to_owned).unwrap_or_default();
    let firmware = host_deps::ensure_firmware(b)?;
    let (kit, systemd_boot) = boot_kit(b, &kernel, std::fs::read(&initramfs).context("reading the initramfs")?)?;
    let test_hooks_kit = match hooked {
        Some(init) => {
            let bytes = initramfs::build_with_on_demand(&init, &kernel.modules, &kernel.on_demand, &trust)?;
            Some(BootKit { initramfs: bytes, ..kit.clone() })
        }
        None => None,
    };
    Ok(Artifacts {
        boot: BootFiles { qemu, kernel: kernel.vmlinuz, initramfs, firmware: Some(firmware) },
        kit,
        systemd_boot,
        payload_root,
        agent_root,
        busybox_root,
        key,
        key_file: dev_key_path(),
        init,
        kernel_tree,
        cli: repo_root().join("target").join("debug").join("cairn"),
        work_dir: dir.join("scenarios"),
        test_hooks_kit,
    })
}

/// Build cairn-init with the `test-hooks` feature and copy it to
/// `build/<board>/test-hooks/cairn-init`, which is returned.
fn build_test_hooks_init(b: &Board) -> Result<PathBuf> {
    let started = std::time::Instant::now();
    let status = device_build::cargo_build(b.rust_target, &["cairn-init"], &["--features", "cairn-init/test-hooks"])
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build of cairn-init with test-hooks for {} failed", b.rust_target);
    let built = device_build::built(b.rust_target, "cairn-init");
    let dir = build_dir().join(b.name).join("test-hooks");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("cairn-init");
    std::fs::copy(&built, &copy).with_context(|| format!("copying {}", built.display()))?;
    eprintln!("xtask: {}: cairn-init with test-hooks built in {:.1}s", b.name, started.elapsed().as_secs_f64());
    Ok(copy)
}

/// Debian's `busybox-static` for the board's architecture (fetched like the
/// kernel) as a layer tree: `bin/busybox` and the applets the uplink
/// pattern uses (`sh`, `udhcpc`, `ip`) as links to it (the `build:busybox`
/// layer; docs/appliance.md, "The device's uplink").
fn busybox_root(b: &Board, dir: &Path) -> Result<PathBuf> {
    let debs = host_deps::fetch_debs(&["busybox-static"], b.deb_arch, &build_dir().join("debs"))?;
    let tree = debs.first().map(|d| d.tree.clone()).context("busybox-static")?;
    let root = dir.join("busybox-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy(tree.join("bin/busybox"), root.join("bin/busybox")).context("copying busybox")?;
    for applet in ["sh", "udhcpc", "ip"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}

/// The board's boot kit: its systemd-boot and systemd-stub (Debian's
/// `systemd-boot-efi` for the board's architecture, fetched like the
/// kernel), the kernel, the initramfs and the command line.
fn boot_kit(b: &Board, kernel: &kernel::Kernel, initramfs: Vec<u8>) -> Result<(BootKit, PathBuf)> {
    let arch =
        EfiArch::from_suffix(b.efi_arch).with_context(|| format!("board {}: efi_arch {:?}", b.name, b.efi_arch))?;
    let debs = host_deps::fetch_debs(&["systemd-boot-efi"], b.deb_arch, &build_dir().join("debs"))?;
    let tree = debs.first().map(|d| d.tree.clone()).context("systemd-boot-efi")?;
    let kit = BootKit::from_files(arch, &tree, &kernel.vmlinuz, &kernel.version, initramfs, &b.cmdline(""))?;
    Ok((kit, tree))
}

fn demo_disk(b: &Board, art: &Artifacts) -> Result<PathBuf> {
    let dir = build_dir().join(b.name).join("demo");
    let sources = art.build_sources();
    let toml = repo_root().join("images/examples/demo/appliance.toml");
    let app = assemble::build_appliance(&toml, &sources, &art.key, &dir.join("layers"))?;
    for l in &app.layers {
        eprintln!("xtask: layer {:<8} {} {} bytes", l.name, l.digest, l.size);
    }
    let disk = dir.join("disk.img");
    let esp = art.kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
    assemble::assemble_disk(&app, &disk, assemble::DiskOptions::default(), Some(&esp))?;
    Ok(disk)
}

fn run_demo(b: &'static Board, disk: Option<&Path>, fast: bool) -> Result<ExitCode> {
    let art = prepare(b)?;
    let disk = match disk {
        Some(d) => d.to_path_buf(),
        None => demo_disk(b, &art)?,
    };
    eprintln!("xtask: booting {} on {} (Ctrl-A X quits QEMU)", disk.display(), b.name);
    let mut boot = art.boot.clone();
    if fast {
        // The kernel and initramfs straight from QEMU, skipping the firmware
        // and the disk's loader. `cairn image assemble` writes the
        // initramfs (with the keys and product of its --trust and
        // --product) beside the disk; use it when it is there.
        let beside = disk.with_extension("initramfs");
        if beside.is_file() {
            eprintln!("xtask: using the initramfs beside the disk: {}", beside.display());
            boot.initramfs = beside;
        }
        match qemu::disk_arg(&disk) {
            Some(arg) => eprintln!("xtask: --fast: kernel command line gets {arg}"),
            None => eprintln!("xtask: {} has no readable GPT: booting without cairn.disk=", disk.display()),
        }
    } else {
        eprintln!("xtask: the firmware boots the disk: its loader, its slot's kernel, initramfs and command line");
    }
    let opts = qemu::BootOptions { direct_kernel: fast, ..qemu::BootOptions::default() };
    let mut cmd = qemu::command_with(b, &boot, &disk, &opts);
    cmd.args(["-serial", "mon:stdio"]);
    let status = cmd.status().context("starting QEMU")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The scenarios to run on each board: with `--board`, the ones named (all
/// when none); without, each board's suite (`Board::test_suite`), narrowed
/// to the ones named. Boards left with nothing to run are left out.
fn plan(board_name: Option<&str>, scenarios: &[String]) -> Result<Vec<(&'static Board, Vec<String>)>> {
    if let Some(n) = board_name {
        return Ok(vec![(board(Some(n))?, scenarios.to_vec())]);
    }
    Ok(cairn_board::all()
        .into_iter()
        .filter_map(|b| match b.test_suite {
            TestSuite::All => Some((b, scenarios.to_vec())),
            TestSuite::Only(only) => {
                let names: Vec<String> = only
                    .iter()
                    .map(|s| (*s).to_owned())
                    .filter(|s| scenarios.is_empty() || scenarios.contains(s))
                    .collect();
                (!names.is_empty()).then_some((b, names))
            }
        })
        .collect())
}

/// Boards whose suites run at once: `CAIRN_TEST_JOBS`, else 2 on a
/// machine with two cores or more. A TCG guest keeps about one core busy,
/// so two boards on two cores take about the slower board's time, not the
/// sum; each scenario's timeouts allow for a guest that shares the cores.
fn test_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let default = cores.clamp(1, 2);
    std::env::var("CAIRN_TEST_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(default).max(1)
}

fn qemu_test(board_name: Option<&str>, scenarios: &[String]) -> Result<ExitCode> {
    // Every board is built first (cargo and the downloads, one at a time),
    // then the suites run, `test_jobs` boards at once, the longest first.
    let mut prepared = Vec::new();
    for (b, scenarios) in plan(board_name, scenarios)? {
        let art = prepare_with(b, cairn_qemu_tests::needs_test_hooks(&scenarios))?;
        let _ = std::fs::remove_dir_all(&art.work_dir);
        prepared.push((b, art, scenarios));
    }
    let jobs = test_jobs();
    if prepared.len() > 1 && jobs > 1 {
        println!("xtask: running {} boards' suites, {jobs} at once (CAIRN_TEST_JOBS)", prepared.len());
    }
    let queue = std::sync::Mutex::new(prepared.iter().collect::<std::collections::VecDeque<_>>());
    let (passed, failed) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
    let worker = || -> Result<()> {
        loop {
            let next = queue.lock().map_err(|_| anyhow::anyhow!("a suite panicked"))?.pop_front();
            let Some((b, art, scenarios)) = next else { return Ok(()) };
            cairn_qemu_tests::run(b, art, scenarios, &mut |o| match &o.result {
                Ok(()) => {
                    passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    println!("ok   {:<14} {:<13} {:>6.1}s", o.name, b.name, o.elapsed.as_secs_f64());
                }
                Err(e) => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    println!(
                        "FAIL {:<14} {:<13} {:>6.1}s  {e:#}\n     console log: {}",
                        o.name,
                        b.name,
                        o.elapsed.as_secs_f64(),
                        art.work_dir.join(o.name).display()
                    );
                }
            })?;
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs.min(prepared.len()).max(1)).map(|_| s.spawn(worker)).collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a suite panicked"))?)
    })?;
    let (passed, failed) = (passed.into_inner(), failed.into_inner());
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(plan: &[(&'static Board, Vec<String>)]) -> Vec<(&'static str, Vec<String>)> {
        plan.iter().map(|(b, s)| (b.name, s.clone())).collect()
    }

    #[test]
    fn the_full_suite_runs_on_the_qemu_boards_and_nvme_ahci_on_the_generic_ones() {
        let p = plan(None, &[]).unwrap();
        let one = |s: &str| vec![s.to_owned()];
        assert_eq!(
            names(&p),
            [
                ("qemu-x86_64", vec![]),
                ("qemu-aarch64", vec![]),
                ("generic-x86_64", one("nvme-ahci")),
                ("generic-arm64", one("nvme-ahci"))
            ]
        );
        let p = plan(None, &one("boot-demo")).unwrap();
        assert_eq!(names(&p), [("qemu-x86_64", one("boot-demo")), ("qemu-aarch64", one("boot-demo"))]);
        let p = plan(Some("generic-arm64"), &one("boot-demo")).unwrap();
        assert_eq!(names(&p), [("generic-arm64", one("boot-demo"))], "--board runs what is named");
        assert!(plan(Some("pdp-11"), &[]).is_err());
    }

    #[test]
    fn boards_name_only_known_scenarios() {
        let known: Vec<&str> = cairn_qemu_tests::all().iter().map(|s| s.name).collect();
        for b in cairn_board::all() {
            if let TestSuite::Only(names) = b.test_suite {
                for n in names {
                    assert!(known.contains(n), "{}: no scenario {n}", b.name);
                }
            }
        }
    }
}
