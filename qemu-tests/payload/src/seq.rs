//! `exit-seq` (one exit status per start, chosen by the start count cairn
//! passes in `CAIRN_RESTART_COUNT`) and `await-stopped` (wait over the
//! control socket until containers have stopped, then send a request).

use crate::out::V;
use crate::sys::{self, Errno};
use crate::{ctl, say};

/// One planned end of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// exit(code).
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Parse `N`, `A-B` (inclusive, ascending) and `sN` items, comma separated.
pub fn parse_plan(spec: &str) -> Result<Vec<End>, String> {
    let mut out = Vec::new();
    for item in spec.split(',') {
        let bad = || format!("exit-seq:bad_item:{item}");
        if let Some(sig) = item.strip_prefix('s') {
            out.push(End::Signal(sig.parse().map_err(|_| bad())?));
        } else if let Some((a, b)) = item.split_once('-') {
            let a: i32 = a.parse().map_err(|_| bad())?;
            let b: i32 = b.parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            out.extend((a..=b).map(End::Code));
        } else {
            out.push(End::Code(item.parse().map_err(|_| bad())?));
        }
    }
    Ok(out)
}

/// `exit-seq <plan>`: end the way item number `$CAIRN_RESTART_COUNT` of the
/// plan says.
pub fn exit_seq(spec: &str) -> Result<i32, String> {
    let plan = parse_plan(spec)?;
    let Some(count) = std::env::var("CAIRN_RESTART_COUNT").ok().and_then(|v| v.parse::<usize>().ok()) else {
        say!("event=exit-seq error=no_restart_count");
        return Ok(3);
    };
    match plan.get(count) {
        None => {
            say!("event=exit-seq-past-end restart_count={count} steps={}", plan.len());
            Ok(0)
        }
        Some(End::Code(c)) => {
            say!("event=exit-seq restart_count={count} action=code:{c}");
            Ok(*c)
        }
        Some(End::Signal(s)) => {
            say!("event=exit-seq restart_count={count} action=signal:{s}");
            // Rust's runtime ignores SIGPIPE and handles SIGSEGV/SIGBUS:
            // put the default action back so the signal kills.
            // SAFETY: SIG_DFL is a valid disposition; the sigset is
            // initialised by sigemptyset before use.
            unsafe {
                libc::signal(*s, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            }
            let rc = sys::raise(*s);
            say!("event=still-alive sig={s} rc={rc} errno={}", Errno(sys::errno()));
            Ok(1)
        }
    }
}

/// `await-stopped <name,name...> <request...>`: ask `status` every 200 ms
/// until each named container is `stopped` (at most 120 s), print
/// `event=await-stopped names=N polls=P timeout=<0|1>`, then send the
/// request like `ctl`; with `exec PROGRAM ARGS...` instead of a request,
/// exec that.
pub fn await_stopped(names: &str, request: &[String]) -> i32 {
    let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
    let mut polls = 0;
    let mut timeout = 1;
    while polls < 600 {
        polls += 1;
        if let Ok(reply) = ctl::exchange(ctl_path().as_bytes(), b"status") {
            let reply = String::from_utf8_lossy(&reply).into_owned();
            let stopped = |n: &str| reply.split_whitespace().any(|w| w == format!("{n}=stopped"));
            if names.iter().all(|n| stopped(n)) {
                timeout = 0;
                break;
            }
        }
        sys::sleep_ms(200);
    }
    say!("event=await-stopped names={} polls={polls} timeout={timeout}", V(&names.join(",")));
    if let [exec, prog, args @ ..] = request {
        if exec == "exec" {
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(prog).args(args).exec();
            say!("event=await-stopped-exec-failed errno={}", e.raw_os_error().unwrap_or(0));
            return 1;
        }
    }
    ctl::run(0, request)
}

fn ctl_path() -> String {
    std::env::var("CAIRN_CONTROL").unwrap_or_else(|_| ctl::DEFAULT_PATH.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_expand() {
        assert_eq!(
            parse_plan("3-5,s9,0"),
            Ok(vec![End::Code(3), End::Code(4), End::Code(5), End::Signal(9), End::Code(0)])
        );
        assert!(parse_plan("5-3").is_err());
        assert!(parse_plan("x").is_err());
    }
}
