//! Console output. The serial console is shared with the host's init and with
//! other containers, so every line goes out as one `write(2)` of a full line,
//! straight to fd 1 (no buffering), and starts with `payload name=<hostname> `.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use crate::sys;

static HOST: OnceLock<String> = OnceLock::new();

/// Read the hostname once; every later line carries it.
pub fn init() {
    let _ = HOST.get_or_init(|| V(&sys::hostname()).to_string());
}

/// The (cleaned) hostname read at start.
pub fn host() -> &'static str {
    HOST.get().map_or("-", String::as_str)
}

/// Format one line and write it with a single `write(2)` to fd 1.
pub fn emit(args: fmt::Arguments<'_>) {
    let mut line = String::with_capacity(160);
    let _ = write!(line, "payload name={} ", host());
    let _ = line.write_fmt(args);
    line.push('\n');
    sys::write_all(libc::STDOUT_FILENO, line.as_bytes());
}

/// Print one `payload name=<host> ...` line; takes `format!` arguments.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::emit(::core::format_args!($($arg)*))
    };
}

/// A value made safe for a `key=value` field: whitespace and control
/// characters become `_`, `"` becomes `'` (the test parser treats a leading
/// `"` as a quoted value), and an empty value is shown as `-`.
#[derive(Debug, Clone, Copy)]
pub struct V<'a>(pub &'a str);

impl fmt::Display for V<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_char('-');
        }
        for c in self.0.chars() {
            let c = match c {
                c if c.is_whitespace() || c.is_control() => '_',
                '"' => '\'',
                c => c,
            };
            f.write_char(c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::V;

    #[test]
    fn values_are_single_words() {
        assert_eq!(V("ok  done\n").to_string(), "ok__done_");
        assert_eq!(V("\"x\"").to_string(), "'x'");
        assert_eq!(V("").to_string(), "-");
        assert_eq!(V("plain").to_string(), "plain");
    }
}
