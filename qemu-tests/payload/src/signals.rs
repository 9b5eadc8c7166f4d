//! Exit codes and signals: how the supervisor sees a container end.

use crate::out::V;
use crate::{say, sys};

/// `exit <code>`.
pub fn exit(code: i32) -> i32 {
    say!("event=exiting code={code}");
    code
}

/// `kill-self <sig>`: raise the signal; if that does not end the process,
/// say so and exit 1.
pub fn kill_self(sig: i32) -> i32 {
    say!("event=killing-self sig={sig}");
    let rc = sys::raise(sig);
    say!("event=still-alive sig={sig} rc={rc}");
    1
}

/// `ignore-term`: SIGTERM is ignored; only SIGKILL ends this.
pub fn ignore_term() -> i32 {
    if let Err(e) = sys::ignore(libc::SIGTERM) {
        say!("event=error step=ignore-sigterm errno={e}");
        return 1;
    }
    say!("event=ignoring-term");
    sys::pause_forever()
}

/// `term-log <label>`: run until SIGTERM, then log and exit 0.
pub fn term_log(label: &str) -> i32 {
    let wait = match sys::catch_term() {
        Ok(w) => w,
        Err(e) => {
            say!("event=error step=sigaction errno={e}");
            return 1;
        }
    };
    say!("event=running label={}", V(label));
    sys::wait_term(&wait);
    say!("event=stopping label={}", V(label));
    0
}

/// `sleep <ms>`.
pub fn sleep(ms: u64) -> i32 {
    sys::sleep_ms(ms);
    say!("event=slept ms={ms}");
    0
}
