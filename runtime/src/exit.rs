//! How a process ended, as a shell reports it.

use core::fmt;

/// Exit code of a namespace init whose setup failed.
pub const SETUP_FAILED: i32 = 125;

/// The end of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Exit {
    /// Decode a `waitpid` status. `None` for stop/continue reports.
    pub fn from_wait_status(status: i32) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The shell convention: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    /// Success is exit code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "code={c}"),
            Exit::Signal(s) => write!(f, "signal={s} code={}", 128 + s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode_like_a_shell() {
        // Encodings per the Linux ABI: exit code in bits 8..16, signal in 0..7.
        assert_eq!(Exit::from_wait_status(42 << 8), Some(Exit::Code(42)));
        assert_eq!(Exit::from_wait_status(9), Some(Exit::Signal(9)));
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Code(42).code(), 42);
        assert!(Exit::Code(0).success());
        assert!(!Exit::Signal(15).success());
        // Stopped (0x7f in the low byte) is not an end.
        assert_eq!(Exit::from_wait_status((19 << 8) | 0x7f), None);
        assert_eq!(format!("{}", Exit::Signal(9)), "signal=9 code=137");
    }
}
