//! Booting a board in QEMU (software emulation) and reading its console.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_board::{Board, DiskBus};

use crate::console::Console;

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Kernel image.
    pub kernel: PathBuf,
    /// initramfs.
    pub initramfs: PathBuf,
    /// UEFI firmware (code, variable store template): QEMU boots the disk
    /// through it. `None`: the kernel and initramfs above, given to QEMU.
    pub firmware: Option<(PathBuf, PathBuf)>,
}

/// Disks and command line of a boot beyond the boot disk.
#[derive(Debug, Clone, Default)]
pub struct BootOptions<'a> {
    /// More disks, attached after the boot disk (vdb, vdc, ...).
    pub extra_disks: &'a [&'a Path],
    /// Attach the extra disks before the boot disk (the boot disk is then
    /// the last virtio disk).
    pub extra_first: bool,
    /// Leave `cairn.disk=` off the command line.
    pub no_disk_guid: bool,
    /// More kernel command line words (direct kernel boots only: a disk
    /// booted through the firmware has its command line in its signed
    /// boot slot).
    pub cmdline: &'a str,
    /// Boot the kernel and initramfs directly (`-kernel`), not the disk
    /// through the firmware, even when there is firmware.
    pub direct_kernel: bool,
    /// Where the firmware's variable store copy goes (UEFI boots); by
    /// default beside the boot disk (`DISK.vars`).
    pub vars: Option<&'a Path>,
    /// The bus every disk is attached to (virtio unless a scenario asks).
    pub bus: DiskBus,
    /// Boot through this firmware instead of the board's (Secure Boot).
    pub secure: Option<SecureFirmware<'a>>,
    /// A guest reset reboots the machine (the firmware boots the disk
    /// again) instead of ending QEMU (`-no-reboot`, the default): for
    /// watchdog resets seen in one console.
    pub allow_reset: bool,
    /// More `-drive` options for the boot disk (e.g. write throttling, so a
    /// power cut lands between two writes).
    pub boot_drive_options: &'a str,
    /// A virtio NIC on QEMU's user-mode network: the guest reaches the
    /// host's loopback as 10.0.2.2 (and nothing else the tests use).
    pub net: bool,
    /// Typed on the serial console, in order: each `(after, text)` sends
    /// `text` once a console line contains `after` (the development
    /// console's session, say).
    pub typing: &'a [(&'a str, &'a str)],
    /// With `net`: `(PROTO, HOST, GUEST)` ports (`"tcp"` or `"udp"`)
    /// forwarded from the host's 127.0.0.1:HOST (bound to loopback only)
    /// to the guest's GUEST port (QEMU's `hostfwd`; the guest sees the
    /// traffic come from 10.0.2.2).
    pub hostfwd: &'a [(&'a str, u16, u16)],
}

/// A Secure Boot firmware run: code, a variable store with keys enrolled
/// (used as is), and the QEMU arguments it needs (after the board's).
#[derive(Debug, Clone, Copy)]
pub struct SecureFirmware<'a> {
    /// Firmware code.
    pub code: &'a Path,
    /// The enrolled variable store (written by the firmware).
    pub vars: &'a Path,
    /// More QEMU arguments (`-machine q35,smm=on`, ...).
    pub args: &'a [&'a str],
}

/// The QEMU arguments that attach disk image `path` as disk number `index`
/// on `bus`: the `-drive` (raw, `id=disk<index>`) and the controller and
/// device on that bus. Each disk gets its own controller where the bus needs
/// one, so disks of any buses can be mixed. The firmware boots the `boot`
/// disk first (`bootindex=0`).
pub fn disk_device_args(bus: DiskBus, index: usize, path: &Path, boot: bool) -> Vec<String> {
    let drive = format!("disk{index}");
    let mut a = vec!["-drive".to_owned(), format!("file={},if=none,id={drive},format=raw", path.display())];
    let devices = match bus {
        DiskBus::Virtio => vec![format!("virtio-blk-pci,drive={drive}")],
        // QEMU's NVMe controller needs a serial number (20 characters at most).
        DiskBus::Nvme => vec![format!("nvme,serial=cairn{index},drive={drive}")],
        DiskBus::Ahci => vec![format!("ahci,id=ahci{index}"), format!("ide-hd,drive={drive},bus=ahci{index}.0")],
        DiskBus::Usb => {
            vec![format!("qemu-xhci,id=xhci{index}"), format!("usb-storage,drive={drive},bus=xhci{index}.0")]
        }
    };
    let last = devices.len().saturating_sub(1);
    for (k, d) in devices.into_iter().enumerate() {
        a.push("-device".to_owned());
        a.push(if boot && k == last { format!("{d},bootindex=0") } else { d });
    }
    a
}

/// The `cairn.disk=GUID` word for a disk image: its GPT disk GUID.
pub fn disk_arg(disk: &Path) -> Option<String> {
    cairn_build::gpt::read_layout(disk).ok().map(|l| format!("cairn.disk={}", l.disk_guid_text()))
}

/// The QEMU command line for a board and disk. The kernel command line
/// names the disk's GPT disk GUID (`cairn.disk=`), so the device takes its
/// system partitions from that disk only.
pub fn command(board: &Board, files: &BootFiles, disk: &Path, extra_cmdline: &str) -> Command {
    command_with(board, files, disk, &BootOptions { cmdline: extra_cmdline, ..BootOptions::default() })
}

/// [`command`] with more disks or without `cairn.disk=`.
///
/// With firmware (and not `direct_kernel`), QEMU starts the UEFI firmware
/// with a fresh copy of its variable store (no boot entries: it boots the
/// removable-media path of the disk it is pointed at, `bootindex=0`), and
/// the disk's own loader and boot slot do the rest. Otherwise the kernel,
/// initramfs and command line come from `files` and the disk GUID is passed
/// as `cairn.disk=` (unless `no_disk_guid`).
pub fn command_with(board: &Board, files: &BootFiles, disk: &Path, opts: &BootOptions<'_>) -> Command {
    let mut c = Command::new(&files.qemu);
    c.args(board.qemu_args).args(["-accel", "tcg", "-nodefaults", "-display", "none"]);
    if !opts.allow_reset {
        c.arg("-no-reboot");
    }
    let uefi = (files.firmware.is_some() || opts.secure.is_some()) && !opts.direct_kernel;
    match (&files.firmware, opts.direct_kernel) {
        (_, false) if opts.secure.is_some() => {
            if let Some(sf) = opts.secure {
                c.args(sf.args)
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", sf.code.display()))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", sf.vars.display()));
            }
        }
        (Some((code, template)), false) => {
            let vars = opts.vars.map(Path::to_owned).unwrap_or_else(|| disk.with_extension("vars"));
            // A failed copy shows as QEMU's own error about the file.
            let _ = std::fs::copy(template, &vars);
            c.arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        }
        _ => {
            let mut words: Vec<String> = Vec::new();
            if !opts.no_disk_guid {
                words.extend(disk_arg(disk));
            }
            if !opts.cmdline.is_empty() {
                words.push(opts.cmdline.to_owned());
            }
            c.arg("-kernel")
                .arg(&files.kernel)
                .arg("-initrd")
                .arg(&files.initramfs)
                .arg("-append")
                .arg(board.cmdline(&words.join(" ")));
        }
    }
    let mut disks: Vec<&Path> = opts.extra_disks.to_vec();
    if opts.extra_first {
        disks.push(disk);
    } else {
        disks.insert(0, disk);
    }
    for (i, d) in disks.iter().enumerate() {
        // `-kernel` takes boot index 0 itself (its option ROM).
        let mut args = disk_device_args(opts.bus, i, d, uefi && *d == disk);
        if *d == disk && !opts.boot_drive_options.is_empty() {
            if let Some(drive) = args.iter_mut().find(|a| a.starts_with("file=")) {
                drive.push(',');
                drive.push_str(opts.boot_drive_options);
            }
        }
        c.args(args);
    }
    if opts.net {
        // No option ROM: the firmware boots the disk, never the network.
        let mut netdev = String::from("user,id=net0");
        for (proto, host, guest) in opts.hostfwd {
            netdev.push_str(&format!(",hostfwd={proto}:127.0.0.1:{host}-:{guest}"));
        }
        c.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]);
    }
    c
}

/// How a captured boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited by itself (power off, reboot with -no-reboot, panic).
    Exited,
    /// The stop condition matched; QEMU was killed.
    Stopped,
    /// The timeout passed; QEMU was killed.
    TimedOut,
}

/// A finished boot.
#[derive(Debug)]
pub struct Run {
    /// What was printed.
    pub console: Console,
    /// How it ended.
    pub ending: Ending,
    /// Wall time.
    pub elapsed: Duration,
}

/// Boot with the console captured. Stops when QEMU exits, when `stop`
/// returns true for the console so far, or at `timeout`. The raw console is
/// written to `log`.
pub fn capture(cmd: Command, log: &Path, timeout: Duration, stop: &dyn Fn(&Console) -> bool) -> Result<Run> {
    capture_typing(cmd, log, timeout, stop, &[])
}

/// How long a guest may go without one line from its userspace (PID 1,
/// a payload) before the boot counts as stalled in the emulator.
pub const STALL: Duration = Duration::from_secs(90);

/// [`capture`], typing on the console as [`BootOptions::typing`] says.
///
/// A boot whose guest prints nothing from userspace for [`STALL`] (only
/// firmware and kernel lines, or nothing) is run once more from the start,
/// with a line saying so in the log and on stderr. Under TCG the guest
/// kernel sometimes never reaches its init (RCU stalls: "timer wakeup
/// didn't happen" on a vCPU): seen twice in one full CI run, never
/// reproduced alone. Nothing of cairn's has run at that point, so what
/// the scenario checks is unchanged; a boot that stalls twice fails.
pub fn capture_typing(
    cmd: Command,
    log: &Path,
    timeout: Duration,
    stop: &dyn Fn(&Console) -> bool,
    typing: &[(&str, &str)],
) -> Result<Run> {
    let again = clone_command(&cmd);
    let stall = (timeout > STALL).then_some(STALL);
    match capture_once(cmd, log, timeout, stop, typing, stall)? {
        Attempt::Ran(run) => Ok(run),
        Attempt::Stalled(lines) => {
            let say = format!(
                "qemu-tests: no line from the guest's userspace in {}s ({lines} firmware or kernel lines): \
                 stalled before its init; booting again\n",
                STALL.as_secs()
            );
            eprint!("{say}");
            let first = log.with_extension("stalled.log");
            let _ = std::fs::rename(log, &first);
            let _ = std::fs::OpenOptions::new().append(true).open(&first).and_then(|mut f| f.write_all(say.as_bytes()));
            match capture_once(again, log, timeout, stop, typing, None)? {
                Attempt::Ran(run) => Ok(run),
                Attempt::Stalled(_) => anyhow::bail!("the boot stalled twice"),
            }
        }
    }
}

/// How one boot ended.
enum Attempt {
    /// It ran (whatever it did).
    Ran(Run),
    /// Nothing from userspace within the stall limit (firmware and kernel
    /// lines seen).
    Stalled(usize),
}

/// A copy of `cmd` (program, arguments, environment, directory).
fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// A console line from the firmware, the kernel or QEMU itself, not from
/// the guest's userspace.
pub fn before_userspace(line: &str) -> bool {
    let t = line.trim_start_matches(|c: char| c == '\x1b' || c.is_whitespace());
    let kernel = t.strip_prefix('[').and_then(|r| r.split_once(']')).is_some_and(|(stamp, _)| {
        let stamp = stamp.trim();
        !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    });
    t.is_empty()
        || kernel
        || t.contains("BdsDxe")
        || t.starts_with("UEFI firmware")
        || t.starts_with("qemu-system")
        || t.starts_with('[') && t.contains("[=3h")
}

fn capture_once(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
    stop: &dyn Fn(&Console) -> bool,
    typing: &[(&str, &str)],
    stall: Option<Duration>,
) -> Result<Attempt> {
    let input = if typing.is_empty() { Stdio::null() } else { Stdio::piped() };
    cmd.args(["-serial", "stdio", "-monitor", "none"]).stdin(input).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut keyboard = child.stdin.take();
    let mut typed = 0;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().context("qemu stdout")?;
    let err = child.stderr.take().context("qemu stderr")?;
    for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            }
        });
    }
    drop(tx);
    let mut console = Console::default();
    let mut logf = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (mut userspace, mut early) = (false, 0usize);
    let ending = loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break Ending::TimedOut;
        }
        if !userspace && stall.is_some_and(|s| start.elapsed() >= s) {
            finish(&mut child, Ending::TimedOut);
            return Ok(Attempt::Stalled(early));
        }
        // A stop that waits on a delay is asked again at least every 50 ms.
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(line) => {
                let _ = logf.write_all(line.as_bytes());
                match before_userspace(&line) {
                    true => early += 1,
                    false => userspace = true,
                }
                if let (Some((after, text)), Some(k)) = (typing.get(typed), keyboard.as_mut()) {
                    if line.contains(after) {
                        typed += 1;
                        let _ = k.write_all(text.as_bytes()).and_then(|()| k.flush());
                    }
                }
                console.push(&line);
                if stop(&console) {
                    break Ending::Stopped;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if stop(&console) {
                    break Ending::Stopped;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ending::Exited,
        }
    };
    finish(&mut child, ending);
    Ok(Attempt::Ran(Run { console, ending, elapsed: start.elapsed() }))
}

fn finish(child: &mut Child, ending: Ending) {
    if ending != Ending::Exited {
        let _ = child.kill();
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_and_kernel_lines_are_not_the_guests_userspace() {
        for early in [
            "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 \"UEFI Misc Device\"\r\n",
            "UEFI firmware (version  built at 13:10:49 on Nov  5 2024)\r\n",
            "[   22.445150] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\r\n",
            "[    1.0] x\n",
            "\r\n",
            "qemu-system-x86_64: warning: x\n",
        ] {
            assert!(before_userspace(early), "{early:?}");
        }
        for late in [
            "cairn: t=3.558 event=boot.start version=0.1.0 arch=x86_64\r\n",
            "[dnsd] payload name=dnsd event=dns-serving answer=192.0.2.7\r\n",
            "payload name=(none) event=usage-error detail=missing_subcommand\r\n",
            "bench-hello t=2.9 pid=1\n",
        ] {
            assert!(!before_userspace(late), "{late:?}");
        }
    }

    #[test]
    fn a_command_copy_has_the_same_program_arguments_and_environment() {
        let mut c = Command::new("qemu");
        c.args(["-m", "256"]).env("A", "1").env_remove("B").current_dir("/tmp");
        let d = clone_command(&c);
        assert_eq!(d.get_program(), "qemu");
        assert_eq!(d.get_args().collect::<Vec<_>>(), ["-m", "256"]);
        assert_eq!(d.get_envs().collect::<Vec<_>>(), c.get_envs().collect::<Vec<_>>());
        assert_eq!(d.get_current_dir(), Some(Path::new("/tmp")));
    }

    #[test]
    fn each_bus_attaches_the_drive_through_its_own_controller() {
        let p = Path::new("/d/x.img");
        let drive = ["-drive", "file=/d/x.img,if=none,id=disk1,format=raw"];
        let args = |bus| disk_device_args(bus, 1, p, false);
        assert_eq!(args(DiskBus::Virtio), [&drive[..], &["-device", "virtio-blk-pci,drive=disk1"]].concat());
        assert_eq!(args(DiskBus::Nvme), [&drive[..], &["-device", "nvme,serial=cairn1,drive=disk1"]].concat());
        assert_eq!(
            args(DiskBus::Ahci),
            [&drive[..], &["-device", "ahci,id=ahci1", "-device", "ide-hd,drive=disk1,bus=ahci1.0"]].concat()
        );
        assert_eq!(
            args(DiskBus::Usb),
            [&drive[..], &["-device", "qemu-xhci,id=xhci1", "-device", "usb-storage,drive=disk1,bus=xhci1.0"]].concat()
        );
    }

    #[test]
    fn command_with_puts_every_disk_on_the_bus_asked_for() {
        let b = cairn_board::by_name("generic-x86_64").expect("board");
        let files = BootFiles { qemu: "qemu".into(), kernel: "k".into(), initramfs: "i".into(), firmware: None };
        let extra: [&Path; 1] = [Path::new("e.img")];
        let opts =
            BootOptions { extra_disks: &extra, bus: DiskBus::Ahci, no_disk_guid: true, ..BootOptions::default() };
        let c = command_with(b, &files, Path::new("boot.img"), &opts);
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let devices: Vec<&str> = args.windows(2).filter(|w| w[0] == "-device").map(|w| w[1].as_str()).collect();
        assert_eq!(
            devices,
            ["ahci,id=ahci0", "ide-hd,drive=disk0,bus=ahci0.0", "ahci,id=ahci1", "ide-hd,drive=disk1,bus=ahci1.0"]
        );
        assert!(args.contains(&"file=boot.img,if=none,id=disk0,format=raw".to_owned()), "{args:?}");
        let c = command_with(b, &files, Path::new("boot.img"), &BootOptions::default());
        assert!(c.get_args().any(|a| a == "virtio-blk-pci,drive=disk0"), "virtio by default, no boot index");
        assert!(c.get_args().any(|a| a == "-kernel"), "no firmware: the kernel is given to QEMU");
        assert!(c.get_args().any(|a| a == "-no-reboot"), "a reset ends QEMU by default");
        let c =
            command_with(b, &files, Path::new("boot.img"), &BootOptions { allow_reset: true, ..Default::default() });
        assert!(!c.get_args().any(|a| a == "-no-reboot"), "allow_reset: a reset reboots");
        // With firmware, QEMU boots the disk: no kernel, a copy of the variable store.
        let dir = std::env::temp_dir().join(format!("cairn-qemu-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (code, vars) = (dir.join("code.fd"), dir.join("vars.fd"));
        std::fs::write(&vars, b"template").expect("vars");
        let files = BootFiles { firmware: Some((code, vars)), ..files };
        let disk = dir.join("boot.img");
        let c = command_with(b, &files, &disk, &BootOptions::default());
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(!args.contains(&"-kernel".to_owned()), "{args:?}");
        assert!(
            args.contains(&"virtio-blk-pci,drive=disk0,bootindex=0".to_owned()),
            "the firmware boots the disk: {args:?}"
        );
        assert!(args.iter().any(|a| a.starts_with("if=pflash,format=raw,unit=0,readonly=on,file=")), "{args:?}");
        assert_eq!(std::fs::read(dir.join("boot.vars")).expect("vars copy"), b"template");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
