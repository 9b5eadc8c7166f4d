//! Booting a board in QEMU (software emulation) and reading its console.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_board::Board;

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
}

/// The QEMU command line for a board and disk.
pub fn command(board: &Board, files: &BootFiles, disk: &Path, extra_cmdline: &str) -> Command {
    let mut c = Command::new(&files.qemu);
    c.args(board.qemu_args)
        .args(["-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&files.kernel)
        .arg("-initrd")
        .arg(&files.initramfs)
        .arg("-append")
        .arg(board.cmdline(extra_cmdline))
        .arg("-drive")
        .arg(format!("file={},if=none,id=disk0,format=raw", disk.display()))
        .args(["-device", "virtio-blk-pci,drive=disk0"]);
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
pub fn capture(mut cmd: Command, log: &Path, timeout: Duration, stop: &dyn Fn(&Console) -> bool) -> Result<Run> {
    cmd.args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
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
    let ending = loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break Ending::TimedOut;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                let _ = logf.write_all(line.as_bytes());
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
    Ok(Run { console, ending, elapsed: start.elapsed() })
}

fn finish(child: &mut Child, ending: Ending) {
    if ending != Ending::Exited {
        let _ = child.kill();
    }
    let _ = child.wait();
}
