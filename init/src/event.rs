//! Structured console events: one line each, `cairn: t=<seconds> event=<name>`
//! followed by `key=value` fields. Values with spaces or quotes are quoted.
//! The timestamp is CLOCK_BOOTTIME, so boot time reads straight off the log.

use core::fmt::{Display, Write};

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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    format!("{}.{:03}", ts.tv_sec, ts.tv_nsec / 1_000_000)
}

impl Event {
    /// Add a field.
    pub fn kv(mut self, key: &str, value: impl Display) -> Self {
        let start = self.line.len() + key.len() + 2;
        let _ = write!(self.line, " {key}={value}");
        let needs_quotes = self.line.get(start..).is_some_and(|v| v.is_empty() || v.contains([' ', '"', '\n']));
        if needs_quotes {
            let raw: String = self.line.get(start..).unwrap_or("").to_owned();
            self.line.truncate(start);
            self.line.push('"');
            for ch in raw.chars() {
                match ch {
                    '"' => self.line.push_str("\\\""),
                    '\n' => self.line.push_str("\\n"),
                    c => self.line.push(c),
                }
            }
            self.line.push('"');
        }
        self
    }

    /// The finished line (without newline).
    #[cfg(test)]
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Print it on the console with one write.
    pub fn emit(mut self) {
        self.line.push('\n');
        console_write(self.line.as_bytes());
    }
}

/// Write `bytes` to the console (PID 1's stdout), retrying short writes;
/// a failed write is dropped (there is nowhere to report it).
pub fn console_write(mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        buf = buf.get(n as usize..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_key_value_and_quoted_when_needed() {
        let e = event("container.failed").kv("name", "web").kv("reason", "layer \"x\" bad").kv("empty", "");
        let line = e.line();
        assert!(line.starts_with("cairn: t="), "{line}");
        assert!(line.ends_with(r#" event=container.failed name=web reason="layer \"x\" bad" empty="""#), "{line}");
    }
}
