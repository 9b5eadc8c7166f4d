//! Structured console events: one line each, `cairn: t=<seconds> event=<name>`
//! followed by `key=value` fields, escaped as logfmt: a value that is empty
//! or holds a space, `=`, `"`, `\` or a control character is quoted, and
//! inside the quotes `\` `"` tab CR LF are written `\\` `\"` `\t` `\r` `\n`
//! and every other control character `\xNN`. So one event is always one
//! line, and nothing in a value can end it or start another field.
//! The timestamp is CLOCK_BOOTTIME, so boot time reads straight off the log.
//!
//! Lines are not written to the console directly: they go into PID 1's
//! console ring ([`crate::ring`]) and out through PID 1's own non-blocking
//! open of `/dev/console` (see [`open_console`]), as the console takes them.

use core::fmt::{Display, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ring::{Kind, Ring, CAPACITY};

/// An event being built.
pub struct Event {
    line: String,
}

/// Start an event.
pub fn event(name: &str) -> Event {
    let mut line = String::with_capacity(128);
    let _ = write!(line, "cairn: t={} event={name}", uptime());
    Event { line }
}

/// Seconds since boot with millisecond precision, e.g. "1.234".
pub fn uptime() -> String {
    use nix::time::{clock_gettime, ClockId};
    let (s, ns) = clock_gettime(ClockId::CLOCK_BOOTTIME).map_or((0, 0), |t| (t.tv_sec(), t.tv_nsec()));
    format!("{s}.{:03}", ns / 1_000_000)
}

/// True if a logfmt value must be quoted.
fn needs_quotes(v: &str) -> bool {
    v.is_empty() || v.chars().any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control())
}

/// Append `value` to `out` as a logfmt value (quoted and escaped if needed).
pub fn push_value(out: &mut String, value: &str) {
    if !needs_quotes(value) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                // Control characters are below 0x100 except none: C0, DEL
                // and C1 (0x80..0x9f) all fit two hex digits.
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Event {
    /// Add a field.
    pub fn kv(mut self, key: &str, value: impl Display) -> Self {
        let value = value.to_string();
        self.line.push(' ');
        self.line.push_str(key);
        self.line.push('=');
        push_value(&mut self.line, &value);
        self
    }

    /// The finished line (without newline).
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Queue it for the console as one line.
    pub fn emit(mut self) {
        // In a forked helper: to PID 1, which writes and records it.
        if crate::helper_events::send(&self.line) {
            return;
        }
        crate::control::record_event(&self.line); // control: events --follow
        self.line.push('\n');
        console_line(self.line.as_bytes(), Kind::Event);
    }
}

/// PID 1's console: the ring and the descriptor it drains into.
struct Console {
    /// The kernel's fd 1 until [`open_console`] replaces it.
    fd: i32,
    own: Option<OwnedFd>,
    ring: Option<Ring>,
    /// A write failed with something other than EAGAIN: output is dropped.
    broken: bool,
}

/// Shared by the threads that load modules at boot (modules.rs); PID 1
/// is single-threaded otherwise.
static CONSOLE: Mutex<Console> = Mutex::new(Console { fd: 1, own: None, ring: None, broken: false });

fn with_console<T>(f: impl FnOnce(&mut Console, &mut Ring) -> T) -> T {
    let mut guard = CONSOLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = &mut *guard;
    let mut ring = c.ring.take().unwrap_or_else(|| Ring::new(CAPACITY));
    let out = f(c, &mut ring);
    c.ring = Some(ring);
    out
}

/// Queue one line (ending in `\n`) for the console and write what the
/// console takes now. A line that does not fit is dropped and counted; a
/// `console.dropped lines=N` event follows when room returns.
pub fn console_line(line: &[u8], kind: Kind) {
    with_console(|c, ring| {
        // Container output waiting behind earlier bytes: the event loop
        // writes when poll says the console can take more (no write per line).
        let write_now = kind == Kind::Event || ring.is_empty();
        queue_notice(ring);
        ring.push(line, kind);
        if write_now {
            c.flush(ring);
        }
    });
}

fn queue_notice(ring: &mut Ring) {
    let now = Instant::now();
    if let Some(n) = ring.notice_due(now) {
        let mut e = event("console.dropped").kv("lines", n);
        e.line.push('\n');
        if ring.push(e.line.as_bytes(), Kind::Event) {
            ring.notice_queued(n, now);
        }
    }
}

impl Console {
    /// Write what the console takes without blocking.
    fn flush(&mut self, ring: &mut Ring) {
        while !ring.is_empty() {
            if self.broken {
                ring.discard();
                return;
            }
            let front = ring.front();
            // SAFETY: the pointer and length describe `front`. Raw libc:
            // until `open_console` the descriptor is the kernel's fd 1,
            // which PID 1 does not own, and nix's write takes an owner.
            let n = unsafe { libc::write(self.fd, front.as_ptr().cast(), front.len()) };
            if n > 0 {
                ring.consume(n as usize);
                continue;
            }
            let errno = cairn_runtime::sys::errno();
            if n < 0 && errno == libc::EINTR {
                continue;
            }
            if n < 0 && errno == libc::EAGAIN {
                return;
            }
            // Gone or unusable: stop trying, so poll does not spin on it.
            self.broken = true;
        }
        queue_notice(ring);
    }
}

/// Open `/dev/console` for PID 1 alone (non-blocking, close-on-exec, not
/// as controlling terminal) and write events there from now on; PID 1's
/// inherited fds 0-2 become `/dev/null`, so nothing can block on them.
/// Does nothing once it has succeeded; returns false if it failed (the
/// kernel's fd 1 stays in use: no container exists yet).
pub fn open_console() -> bool {
    let mut guard = CONSOLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.own.is_some() {
        return true;
    }
    let flags = libc::O_WRONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let Ok(fd) = cairn_runtime::sys::open("/dev/console", flags) else {
        return false;
    };
    if let Ok(null) = cairn_runtime::sys::open("/dev/null", libc::O_RDWR) {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    guard.fd = fd.as_raw_fd();
    guard.own = Some(fd);
    guard.broken = false;
    true
}

/// In a child PID 1 just forked: drop the lines PID 1 had queued (PID 1
/// writes them; the child's copy would write them twice).
pub fn forget_queued() {
    with_console(|_, ring| *ring = Ring::new(CAPACITY));
}

/// The descriptor events are written to.
pub fn console_fd() -> i32 {
    with_console(|c, _| c.fd)
}

/// The console's descriptor if bytes are waiting for it (poll it for POLLOUT).
pub fn console_waiting() -> Option<i32> {
    with_console(|c, ring| (!ring.is_empty() && !c.broken).then_some(c.fd))
}

/// The console can take more: write what it takes.
pub fn console_flush() {
    with_console(|c, ring| c.flush(ring));
}

/// Before reboot: write what is waiting, waiting at most `limit` in all.
pub fn console_drain(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        console_flush();
        let Some(fd) = console_waiting() else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: `p` is one valid pollfd. Raw libc: the console's
        // descriptor may be the kernel's fd 1, which nix's PollFd cannot borrow.
        unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32 + 1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: Event) -> String {
        let line = e.line().to_owned();
        assert!(line.starts_with("cairn: t="), "{line}");
        line.split_once(" event=").map(|(_, rest)| rest.to_owned()).unwrap_or_default()
    }

    #[test]
    fn fields_are_key_value_and_quoted_when_needed() {
        let e = event("container.failed").kv("name", "web").kv("reason", "layer \"x\" bad").kv("empty", "");
        assert_eq!(fields(e), r#"container.failed name=web reason="layer \"x\" bad" empty="""#);
    }

    #[test]
    fn a_dropped_notice_is_queued_when_room_returns() {
        let mut ring = Ring::new(512); // 64 per container
        assert!(ring.push(&[b'x'; 64], Kind::Output(0)));
        assert!(ring.push(&[b'x'; 100], Kind::Event));
        assert!(!ring.push(&[b'y'; 10], Kind::Output(0)), "over its share");
        queue_notice(&mut ring);
        assert_eq!(ring.front().len(), 164, "no notice while the ring is more than a quarter full");
        ring.consume(164);
        queue_notice(&mut ring);
        let queued = String::from_utf8_lossy(ring.front()).into_owned();
        assert!(queued.starts_with("cairn: t=") && queued.ends_with(" event=console.dropped lines=1\n"), "{queued}");
        assert_eq!(ring.notice_due(Instant::now()), None);
    }

    #[test]
    fn hostile_values_are_escaped_and_stay_on_one_line() {
        let e = event("x")
            .kv("nl", "a\nb")
            .kv("cr", "a\rcairn: t=0 event=forged")
            .kv("tab", "a\tb")
            .kv("eq", "k=v")
            .kv("bs", "c:\\dir")
            .kv("ctl", "\u{1b}[2J\u{0}\u{7f}\u{85}")
            .kv("utf8", "grüße")
            .kv("plain", "ok-1.5");
        assert_eq!(
            fields(e),
            r#"x nl="a\nb" cr="a\rcairn: t=0 event=forged" tab="a\tb" eq="k=v" bs="c:\\dir" ctl="\x1b[2J\x00\x7f\x85" utf8=grüße plain=ok-1.5"#
        );
    }
}
