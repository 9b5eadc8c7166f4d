//! Copying a container's pseudo-terminal output to the device console.
//!
//! PID 1 holds the master side of each `console = true` container's pty
//! (non-blocking). Whenever poll says it is readable, [`Tap::pump`] reads
//! what is there and writes every complete line to the console as
//! `[<name>] <line>`, one write each. A partial line waits in a bounded
//! buffer; a line longer than [`LINE_MAX`] is cut into pieces. When the
//! last process holding the slave is gone the master reads EIO (hung up):
//! what is left is flushed and the tap is closed.

use std::os::fd::{AsRawFd, OwnedFd};

/// Longest line kept before it is written out in pieces.
pub const LINE_MAX: usize = 512;
/// Most bytes read per readiness report, so one chatty container cannot
/// hold PID 1's loop.
const READ_BUDGET: usize = 16 * 1024;

/// One container's console output being copied.
pub struct Tap {
    fd: OwnedFd,
    pending: Vec<u8>,
}

impl Tap {
    /// Copy from this master.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd, pending: Vec::with_capacity(LINE_MAX) }
    }

    /// The master's descriptor, for poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Read what is available and print the complete lines. Returns false
    /// when the terminal is hung up (or broken): the caller drops the tap.
    pub fn pump(&mut self, name: &str) -> bool {
        let mut buf = [0u8; 1024];
        let mut total = 0;
        while total < READ_BUDGET {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let got = buf.get(..n as usize).unwrap_or(&[]);
                total += got.len();
                for line in split_lines(&mut self.pending, got) {
                    print(name, &line);
                }
                continue;
            }
            let errno = cairn_runtime::sys::errno();
            if n < 0 && (errno == libc::EAGAIN || errno == libc::EINTR) {
                return true;
            }
            // 0 or EIO: hung up; anything else: unusable.
            self.flush(name);
            return false;
        }
        true
    }

    /// Print a partial line left in the buffer.
    pub fn flush(&mut self, name: &str) {
        if !self.pending.is_empty() {
            let rest = core::mem::take(&mut self.pending);
            print(name, &rest);
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

/// One console line, `[name] text`, written at once.
fn print(name: &str, text: &[u8]) {
    let mut line = Vec::with_capacity(name.len() + text.len() + 4);
    line.push(b'[');
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b"] ");
    line.extend_from_slice(text);
    line.push(b'\n');
    crate::event::console_write(&line);
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
}
