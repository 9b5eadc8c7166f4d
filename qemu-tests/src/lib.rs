//! QEMU scenarios: each boots a real kernel with a real disk image built for
//! it, and asserts on what the device prints (and on the disk afterwards).

#![forbid(unsafe_code)]

pub mod console;
pub mod http;
pub mod oci_fixture;
pub mod qemu;
mod scenarios;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_board::Board;
use cairn_build::assemble::{self, BuiltAppliance, DiskOptions};
use cairn_build::bootkit::BootKit;
use cairn_build::esp::EspContents;
use cairn_build::gpt::DiskLayout;
use ed25519_dalek::SigningKey;

pub use qemu::{BootFiles, Ending, Run};

/// What the build produced for one board.
pub struct Artifacts {
    /// Kernel, initramfs, firmware, QEMU.
    pub boot: BootFiles,
    /// What the disks' boot slots are made of.
    pub kit: BootKit,
    /// The unpacked `systemd-boot-efi` package of the board's architecture.
    pub systemd_boot: PathBuf,
    /// Directory holding `bin/cairn-payload` for the board (the `build:payload` layer).
    pub payload_root: PathBuf,
    /// Directory holding `bin/cairn-agent`, the update agent (the
    /// `build:agent` layer).
    pub agent_root: PathBuf,
    /// Directory holding Debian's static busybox and the uplink applets
    /// (the `build:busybox` layer).
    pub busybox_root: PathBuf,
    /// The key the board's initramfs trusts (`/etc/cairn/trusted-keys`).
    pub key: SigningKey,
    /// Its secret key file (for the `cairn` command).
    pub key_file: PathBuf,
    /// The board's cairn-init binary (it holds no key: the initramfs does).
    pub init: PathBuf,
    /// The board's kernel package, unpacked (holds `lib/modules/VERSION`).
    pub kernel_tree: PathBuf,
    /// The host `cairn` command.
    pub cli: PathBuf,
    /// Scratch space for this board's scenarios.
    pub work_dir: PathBuf,
    /// The boot kit with a cairn-init built with the `test-hooks` feature
    /// (`cairn.test.hang=`): built only when a scenario of
    /// [`NEEDS_TEST_HOOKS`] runs. Never a device's image.
    pub test_hooks_kit: Option<BootKit>,
}

/// The scenarios that boot the `test-hooks` build of cairn-init.
pub const NEEDS_TEST_HOOKS: &[&str] = &["watchdog", "ota-watchdog", "ota-install"];

/// Whether running `names` (every scenario when empty) needs the
/// `test-hooks` build.
pub fn needs_test_hooks(names: &[String]) -> bool {
    NEEDS_TEST_HOOKS.iter().any(|n| names.is_empty() || names.iter().any(|m| m == n))
}

/// One scenario.
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// The test.
    pub run: fn(&Ctx) -> Result<()>,
    /// Which boards run it when their whole suite runs.
    pub boards: Boards,
}

/// Which boards run a scenario when their whole suite runs (a scenario
/// named on the command line runs on whatever board is asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boards {
    /// Every board.
    Every,
    /// Only the board named: the scenario is among the slowest, and what it
    /// checks is the same on every architecture (cairn's own logic, on
    /// kernel and firmware paths no board does differently), so a second
    /// run would cost minutes of the suite and find nothing the first
    /// cannot.
    One(&'static str),
}

impl Boards {
    /// Whether `board`'s whole suite runs the scenario.
    pub fn include(self, board: &str) -> bool {
        match self {
            Boards::Every => true,
            Boards::One(name) => name == board,
        }
    }
}

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    scenarios::all()
}

/// What a scenario may use.
pub struct Ctx<'a> {
    /// The board.
    pub board: &'static Board,
    /// The build products.
    pub art: &'a Artifacts,
    /// This scenario's directory.
    pub dir: PathBuf,
}

/// Directory of the scenario appliance files.
pub fn appliances_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("appliances")
}

impl Artifacts {
    /// What appliance files name as `build:NAME` layer sources.
    pub fn build_sources(&self) -> BTreeMap<String, PathBuf> {
        BTreeMap::from([
            ("payload".to_owned(), self.payload_root.clone()),
            ("agent".to_owned(), self.agent_root.clone()),
            ("busybox".to_owned(), self.busybox_root.clone()),
        ])
    }
}

impl Ctx<'_> {
    /// Build a scenario appliance (`appliances/NAME.toml`), signed with `key`.
    pub fn build_signed(&self, name: &str, key: &SigningKey) -> Result<BuiltAppliance> {
        let sources = self.art.build_sources();
        let path = appliances_dir().join(format!("{name}.toml"));
        assemble::build_appliance(&path, &sources, key, &self.layers_dir(name))
            .with_context(|| format!("building appliance {}", path.display()))
    }

    /// Where [`Ctx::build`] writes appliance `name`'s layers: one directory
    /// per appliance, since two appliances of a scenario (an update and its
    /// base) may name different layers alike.
    pub fn layers_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("layers-{name}"))
    }

    /// Build a scenario appliance signed with the trusted key.
    pub fn build(&self, name: &str) -> Result<BuiltAppliance> {
        self.build_signed(name, &self.art.key)
    }

    /// Assemble a disk image for a built appliance (with a 4 MiB empty
    /// `app-data` partition after `cairn-data`, for `partition:` sources),
    /// booting by itself: the board's boot kit in slot `a`.
    pub fn disk(&self, app: &BuiltAppliance, file: &str) -> Result<(PathBuf, DiskLayout)> {
        let esp = self.art.kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
        self.disk_with_esp(app, file, &esp)
    }

    /// [`Ctx::disk`] whose slot `a` has more kernel command line words (the
    /// command line is part of the signed slot image: a disk booted through
    /// the firmware takes none from outside).
    pub fn disk_with_cmdline(&self, app: &BuiltAppliance, file: &str, words: &str) -> Result<(PathBuf, DiskLayout)> {
        let kit = BootKit { cmdline: format!("{} {words}", self.art.kit.cmdline), ..self.art.kit.clone() };
        let esp = kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
        self.disk_with_esp(app, file, &esp)
    }

    /// [`Ctx::disk`] with these boot slots.
    pub fn disk_with_esp(&self, app: &BuiltAppliance, file: &str, esp: &EspContents) -> Result<(PathBuf, DiskLayout)> {
        let path = self.dir.join(file);
        let opts = DiskOptions { app_data_bytes: 4 << 20, ..DiskOptions::default() };
        let layout = assemble::assemble_disk(app, &path, opts, Some(esp))
            .with_context(|| format!("assembling {}", path.display()))?;
        Ok((path, layout))
    }

    /// Boot a disk until QEMU exits, `stop` matches, or `timeout`.
    pub fn boot(&self, disk: &Path, timeout: Duration, stop: &dyn Fn(&console::Console) -> bool) -> Result<Run> {
        let log = disk.with_extension("log");
        let cmd = qemu::command(self.board, &self.art.boot, disk, "");
        qemu::capture(cmd, &log, timeout, stop)
    }

    /// Boot with more disks or without `cairn.disk=`; the console goes to
    /// `log` (in the scenario directory).
    pub fn boot_with(
        &self,
        disk: &Path,
        opts: &qemu::BootOptions<'_>,
        log: &str,
        timeout: Duration,
        stop: &dyn Fn(&console::Console) -> bool,
    ) -> Result<Run> {
        let cmd = qemu::command_with(self.board, &self.art.boot, disk, opts);
        qemu::capture_typing(cmd, &self.dir.join(log), timeout, stop, opts.typing)
    }
}

/// Result of one scenario on one board.
pub struct Outcome {
    /// Scenario name.
    pub name: &'static str,
    /// Pass, or the first failed assertion.
    pub result: Result<()>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Run the named scenarios (all when `names` is empty) on one board.
pub fn run(
    board: &'static Board,
    art: &Artifacts,
    names: &[String],
    report: &mut dyn FnMut(&Outcome),
) -> Result<Vec<Outcome>> {
    let known = all();
    for n in names {
        anyhow::ensure!(
            known.iter().any(|s| s.name == n),
            "unknown scenario {n:?}; scenarios: {}",
            known.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    }
    let (chosen, elsewhere): (Vec<Scenario>, Vec<Scenario>) = known
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .partition(|s| !names.is_empty() || s.boards.include(board.name));
    for s in &elsewhere {
        if let Boards::One(on) = s.boards {
            eprintln!("{}: {} runs on {on} only in the whole suite (name it to run it here)", board.name, s.name);
        }
    }
    let mut out = Vec::new();
    for s in chosen {
        let dir = art.work_dir.join(s.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ctx = Ctx { board, art, dir };
        let start = Instant::now();
        let result = (s.run)(&ctx);
        let o = Outcome { name: s.name, result, elapsed: start.elapsed() };
        if o.result.is_ok() && std::env::var_os("CAIRN_KEEP_SCENARIOS").is_none() {
            keep_only_logs(&ctx.dir);
        }
        report(&o);
        out.push(o);
    }
    Ok(out)
}

/// A passed scenario keeps its console logs and drops its disks, firmware
/// variable stores and layers (a board's suite would otherwise hold gigabytes:
/// an aarch64 variable store alone is 64 MiB). `CAIRN_KEEP_SCENARIOS=1` keeps
/// everything; a failed scenario always keeps everything.
fn keep_only_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let is_log = path.extension().is_some_and(|x| x == "log");
        let _ = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) if !is_log => std::fs::remove_file(&path),
            _ => Ok(()),
        };
    }
}
