//! Events of PID 1's forked helpers (the update installer, exec helpers,
//! the volume pruner) reach the console through PID 1, not beside it.
//!
//! A helper that wrote `/dev/console` itself lost lines: its non-blocking
//! write failed with EAGAIN or wrote half a line whenever PID 1's own
//! output filled the console, and two helpers' halves interleaved. Now PID 1
//! opens one pipe at boot ([`open`]); a forked child calls [`become_helper`]
//! and from then on every event it emits is one `write` of one whole line
//! (at most `PIPE_BUF` bytes, so the kernel never splits or interleaves
//! it). PID 1 polls the read end and [`drain`]s it into its console ring
//! and the `events --follow` record, like its own events, and drains it
//! again before it reaps a child, so a helper's last events come before
//! what PID 1 says about its exit.
//!
//! The helper's write blocks while the pipe is full: a helper waits on PID 1,
//! which always drains, never on the console.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

/// The longest line one write carries whole (POSIX `PIPE_BUF` on Linux).
pub const LINE_MAX: usize = 4096;

struct Channel {
    /// PID 1's end; `None` in a helper.
    rx: Option<OwnedFd>,
    /// The helpers' end (close-on-exec: nothing a helper runs inherits it).
    tx: Option<OwnedFd>,
    /// This process is a helper: events go to `tx`.
    helper: bool,
    /// Bytes of a line not yet complete (a read can end mid-line).
    partial: Lines,
}

/// PID 1's threads that load modules at boot emit events too (they are no
/// helpers: they write the console); PID 1 is single-threaded otherwise.
static CHANNEL: Mutex<Channel> =
    Mutex::new(Channel { rx: None, tx: None, helper: false, partial: Lines { buf: Vec::new() } });

fn with<T>(f: impl FnOnce(&mut Channel) -> T) -> T {
    let mut guard = CHANNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// In PID 1, at boot, before any helper is forked. False if the pipe could
/// not be made (helpers then write the console themselves, as best they can).
pub fn open() -> bool {
    let Ok((rx, tx)) = cairn_runtime::sys::pipe() else { return false };
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_RDONLY;
    if nix::fcntl::fcntl(&rx, nix::fcntl::FcntlArg::F_SETFL(flags)).is_err() {
        return false;
    }
    with(|c| {
        c.rx = Some(rx);
        c.tx = Some(tx);
    });
    true
}

/// In a child PID 1 just forked: its events go to PID 1 from now on. Also
/// forgets the console lines PID 1 had queued (they are PID 1's to write).
/// Returns the descriptor the child must keep open: the channel, or
/// without one the console (written as PID 1 writes it).
pub fn become_helper() -> i32 {
    crate::event::forget_queued();
    let channel = with(|c| {
        c.helper = true;
        c.rx = None;
        c.tx.as_ref().map(AsRawFd::as_raw_fd)
    });
    channel.unwrap_or_else(crate::event::console_fd)
}

/// In a helper: send one event line (without its newline) to PID 1. False
/// if this process is not a helper or has no channel (the caller writes
/// the console itself).
pub fn send(line: &str) -> bool {
    with(|c| {
        let Some(tx) = c.tx.as_ref().filter(|_| c.helper) else { return false };
        let _ = cairn_runtime::sys::write_all(tx, &framed(line));
        true
    })
}

/// `line` with its newline, cut (at a character boundary, marked `…`) to
/// [`LINE_MAX`] bytes so that one write carries it whole.
fn framed(line: &str) -> Vec<u8> {
    let mut out = line.as_bytes().to_vec();
    if out.len() + 1 > LINE_MAX {
        let mut end = LINE_MAX - 1 - "…".len();
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.extend_from_slice("…".as_bytes());
    }
    out.push(b'\n');
    out
}

/// PID 1's end, to poll for POLLIN.
pub fn fd() -> Option<i32> {
    with(|c| c.rx.as_ref().map(AsRawFd::as_raw_fd))
}

/// In PID 1: move every whole line the helpers sent into the console and
/// the event record. Never blocks.
pub fn drain() {
    let mut lines = Vec::new();
    with(|c| {
        let Some(rx) = c.rx.as_ref() else { return };
        let mut buf = [0u8; LINE_MAX];
        while let Ok(n @ 1..) = nix::unistd::read(rx, &mut buf) {
            c.partial.push(buf.get(..n).unwrap_or_default(), |l| lines.push(l.to_vec()));
        }
    });
    // Outside the lock: emitting records the event and may log.
    for line in lines {
        let text = String::from_utf8_lossy(&line);
        crate::control::record_event(&text);
        let mut bytes = text.into_owned().into_bytes();
        bytes.push(b'\n');
        crate::event::console_line(&bytes, crate::ring::Kind::Event);
    }
}

/// Whole lines out of a byte stream; a line longer than [`LINE_MAX`]
/// (which no helper writes) is dropped rather than grown without bound.
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Take `bytes`; call `line` with each line completed (without `\n`).
    fn push(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            if let Some(body) = chunk.strip_suffix(b"\n") {
                if self.buf.is_empty() {
                    line(body);
                } else if self.buf.len() + body.len() <= LINE_MAX {
                    self.buf.extend_from_slice(body);
                    line(&self.buf);
                }
                self.buf.clear();
            } else if self.buf.len() + chunk.len() <= LINE_MAX {
                self.buf.extend_from_slice(chunk);
            } else {
                // Too long: drop it, and what follows until its end.
                self.buf.clear();
                self.buf.resize(LINE_MAX + 1, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut l = Lines { buf: Vec::new() };
        let mut out = Vec::new();
        for c in chunks {
            l.push(c, |line| out.push(String::from_utf8_lossy(line).into_owned()));
        }
        out
    }

    #[test]
    fn whole_lines_come_out_once_complete() {
        assert_eq!(lines(&[b"a=1\nb=2\n"]), ["a=1", "b=2"]);
        assert_eq!(lines(&[b"a=1\nb=", b"2\nc"]), ["a=1", "b=2"]);
        assert_eq!(lines(&[b"a", b"b", b"c\n"]), ["abc"]);
        assert_eq!(lines(&[b"\n"]), [""]);
    }

    #[test]
    fn a_line_over_the_bound_is_dropped_and_the_next_is_whole() {
        let long = vec![b'x'; LINE_MAX];
        assert_eq!(lines(&[&long, b"yy", b"\nnext\n"]), ["next"]);
        assert_eq!(lines(&[&long[..LINE_MAX - 1], b"\n"]).first().map(String::len), Some(LINE_MAX - 1));
    }

    #[test]
    fn a_long_event_is_cut_at_a_character_to_one_write() {
        let line = format!("cairn: t=1.000 event=x v={}", "é".repeat(LINE_MAX));
        let f = framed(&line);
        assert!(f.len() <= LINE_MAX, "{}", f.len());
        let text = std::str::from_utf8(&f).expect("utf-8");
        assert!(text.ends_with("…\n"), "{}", &text[text.len() - 8..]);
        assert_eq!(framed("a=1"), b"a=1\n");
    }
}
