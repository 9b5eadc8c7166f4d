//! Copying a container's output to the device console.
//!
//! PID 1 holds, non-blocking, the master side of each `console = true`
//! container's pty, or the read end of the pipe that is every other
//! container's stdout and stderr. Whenever poll says it is readable,
//! [`Tap::pump`] reads what is there and queues every complete line for the
//! console as `[<name>] <line>` (so a container's line never starts with
//! `cairn: `). A partial line waits in a bounded buffer; a line longer than
//! [`LINE_MAX`] is cut into pieces. When the last writer is gone the
//! descriptor reads EOF (pipe) or EIO (pty, hung up): what is left is
//! flushed and the tap is closed. Lines the console ring has no room for
//! are dropped and counted (see [`crate::ring`]); PID 1 never waits for
//! the console. Every line is also kept, with the time it was read, in
//! the container's log ring ([`LogRing`], for `logs` requests), which
//! evicts its oldest lines: memory stays bounded however fast it writes.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::ring::LogRing;

/// Longest line kept before it is written out in pieces.
pub const LINE_MAX: usize = 512;
/// Most bytes read per readiness report, so one chatty container cannot
/// hold PID 1's loop.
const READ_BUDGET: usize = 16 * 1024;

/// One container's console output being copied.
pub struct Tap {
    fd: OwnedFd,
    pending: Vec<u8>,
    /// The container's index, for its share of the console ring.
    source: usize,
}

impl Tap {
    /// Copy from this descriptor (a pty master or a pipe's read end, non-blocking).
    pub fn new(fd: OwnedFd, source: usize) -> Self {
        Self { fd, pending: Vec::with_capacity(LINE_MAX), source }
    }

    /// The descriptor, for poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Read what is available and print the complete lines. Returns false
    /// when the terminal is hung up (or broken): the caller drops the tap.
    pub fn pump(&mut self, name: &str, log: &mut LogRing) -> bool {
        let mut buf = [0u8; 1024];
        let mut total = 0;
        while total < READ_BUDGET {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(n) if n > 0 => {
                    let got = buf.get(..n).unwrap_or(&[]);
                    total += got.len();
                    let t = crate::control::now_ms();
                    for line in split_lines(&mut self.pending, got) {
                        log.push(t, &line);
                        print(self.source, name, &line);
                    }
                    continue;
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return true,
                _ => {}
            }
            // 0 or EIO: hung up; anything else: unusable.
            self.flush(name, log);
            return false;
        }
        true
    }

    /// Print a partial line left in the buffer.
    pub fn flush(&mut self, name: &str, log: &mut LogRing) {
        if !self.pending.is_empty() {
            let rest = core::mem::take(&mut self.pending);
            log.push(crate::control::now_ms(), &rest);
            print(self.source, name, &rest);
        }
    }
}

/// Append `data` to `pending` and take out every finished line (without
/// its `\n` or `\r`); a line reaching [`LINE_MAX`] is taken as it is.
pub fn split_lines(pending: &mut Vec<u8>, data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for &b in data {
        match b {
            b'\n' => out.push(core::mem::take(pending)),
            b'\r' => {}
            b => {
                pending.push(b);
                if pending.len() >= LINE_MAX {
                    out.push(core::mem::take(pending));
                }
            }
        }
    }
    out
}

/// One console line, `[name] text\n`.
pub fn framed(name: &str, text: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(name.len() + text.len() + 4);
    line.push(b'[');
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b"] ");
    line.extend_from_slice(text);
    line.push(b'\n');
    line
}

/// Queue one container line for the console.
fn print(source: usize, name: &str, text: &[u8]) {
    crate::event::console_line(&framed(name, text), crate::ring::Kind::Output(source));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_crlf_dropped_and_long_lines_cut() {
        let mut p = Vec::new();
        assert_eq!(split_lines(&mut p, b"one\r\ntw"), vec![b"one".to_vec()]);
        assert_eq!(p, b"tw");
        assert_eq!(split_lines(&mut p, b"o\r\n\r\n"), vec![b"two".to_vec(), Vec::new()]);
        assert!(p.is_empty());
        let long = vec![b'x'; LINE_MAX + 10];
        let out = split_lines(&mut p, &long);
        assert_eq!(out.len(), 1);
        assert_eq!(out.first().map(Vec::len), Some(LINE_MAX));
        assert_eq!(p.len(), 10);
    }

    #[test]
    fn a_forged_event_stays_behind_the_prefix() {
        let mut p = Vec::new();
        let lines = split_lines(&mut p, b"x\rcairn: t=1.0 event=shutdown.complete kind=poweroff\n");
        assert_eq!(lines.len(), 1);
        let line = lines.first().map(|l| framed("evil", l)).unwrap_or_default();
        assert_eq!(line, b"[evil] xcairn: t=1.0 event=shutdown.complete kind=poweroff\n");
    }

    #[test]
    fn a_pipe_is_pumped_line_by_line_until_eof() {
        let pipe = cairn_runtime::sys::pipe();
        assert!(pipe.is_ok(), "{pipe:?}");
        let Ok((rd, wr)) = pipe else { return };
        assert_eq!(cairn_runtime::sys::set_nonblocking(&rd), Ok(()));
        let mut tap = Tap::new(rd, 0);
        let mut log = LogRing::new(4096);
        assert!(cairn_runtime::sys::write_all(&wr, b"one\ntw").is_ok());
        assert!(tap.pump("t", &mut log), "a live pipe with nothing more to read keeps the tap");
        assert_eq!(tap.pending, b"tw");
        drop(wr);
        assert!(!tap.pump("t", &mut log), "EOF closes the tap");
        assert!(tap.pending.is_empty(), "the partial line was flushed");
        let lines: Vec<Vec<u8>> = (0..log.next_seq()).filter_map(|k| log.get(k).map(|(_, l)| l.to_vec())).collect();
        assert_eq!(lines, [b"one".to_vec(), b"tw".to_vec()], "both lines are in the log");
    }
}
