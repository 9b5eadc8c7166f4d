//! Health checks, live OOM events and the freezer (issue 14 item 2 and
//! the pause/resume requests): `heartbeat`, `oom-child`, `count`.
//!
//! Times are `t_ms`, CLOCK_BOOTTIME in ms: the clock of PID 1's `t=` (no
//! time namespace), so a scenario can compare them with the events'.

use crate::out::V;
use crate::{ctl, say, sys};

/// CLOCK_BOOTTIME in ms.
pub fn now_ms() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

/// `heartbeat <every_ms> <for_ms> [delay_ms]`: after `delay_ms` (default
/// 0), sends `heartbeat` on the control socket every `every_ms` for
/// `for_ms` (`event=heartbeat-first ok=0|1 t_ms=T` after the first), then
/// stops: `event=heartbeat-stopped beats=N failed=F t_ms=T` and waits for
/// SIGTERM (`event=stopping label=heartbeat`, exit 0).
pub fn heartbeat(every_ms: u64, for_ms: u64, delay_ms: u64) -> i32 {
    let wait = match sys::catch_term() {
        Ok(w) => w,
        Err(e) => {
            say!("event=error step=sigaction errno={e}");
            return 1;
        }
    };
    sys::sleep_ms(delay_ms);
    let path = std::env::var("CAIRN_CONTROL").unwrap_or_else(|_| ctl::DEFAULT_PATH.into());
    let start = now_ms();
    let (mut beats, mut failed) = (0u32, 0u32);
    while now_ms().saturating_sub(start) < for_ms {
        match ctl::exchange(path.as_bytes(), b"heartbeat") {
            Ok(r) if r.starts_with(b"ok") => beats += 1,
            Ok(r) => {
                failed += 1;
                say!("event=heartbeat-refused reply={}", V(&String::from_utf8_lossy(&r)));
            }
            Err((step, errno)) => {
                failed += 1;
                say!("event=heartbeat-failed step={step} errno={errno}");
            }
        }
        if beats + failed == 1 {
            say!("event=heartbeat-first ok={beats} t_ms={}", now_ms());
        }
        sys::sleep_ms(every_ms);
    }
    say!("event=heartbeat-stopped beats={beats} failed={failed} t_ms={}", now_ms());
    sys::wait_term(&wait);
    say!("event=stopping label=heartbeat");
    0
}

/// `oom-child <mib>`: forks a child that allocates `mib` MiB (past the
/// container's memory.max, so the OOM killer takes it); the entrypoint
/// survives: `event=oom-child-ended signal=S code=C t_ms=T` when it reaps it,
/// then after 3 s `event=oom-survived t_ms=T`, exit 0.
pub fn oom_child(mib: u64) -> i32 {
    let child = sys::fork_child(|| crate::limits::alloc(4, mib));
    let pid = match child {
        Ok(pid) => pid,
        Err(e) => {
            say!("event=oom-child-ended error=fork errno={e}");
            return 1;
        }
    };
    let status = sys::wait_pid(pid).unwrap_or(-1);
    let t = now_ms();
    let (signal, code) =
        if libc::WIFSIGNALED(status) { (libc::WTERMSIG(status), -1) } else { (0, libc::WEXITSTATUS(status)) };
    say!("event=oom-child-ended signal={signal} code={code} t_ms={t}");
    sys::sleep_ms(3000);
    say!("event=oom-survived t_ms={}", now_ms());
    0
}

/// `count <period_ms>`: forever, every period `event=count n=N t_ms=T`
/// (N from 1).
pub fn count(period_ms: u64) -> ! {
    let mut n: u64 = 0;
    loop {
        n += 1;
        say!("event=count n={n} t_ms={}", now_ms());
        sys::sleep_ms(period_ms);
    }
}

/// `exists <path>`: exit 0 if `path` exists, 1 if not (a health check
/// command; silent: a probe's output goes to /dev/null anyway).
pub fn exists(path: &str) -> i32 {
    i32::from(std::fs::symlink_metadata(path).is_err())
}

/// `health-file <path> <for_ms>`: create `path` (`event=health-file
/// state=created t_ms=T`), remove it after `for_ms` (`state=removed`),
/// then wait for SIGTERM (`event=stopping label=health-file`, exit 0).
pub fn health_file(path: &str, for_ms: u64) -> i32 {
    let wait = match sys::catch_term() {
        Ok(w) => w,
        Err(e) => {
            say!("event=error step=sigaction errno={e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::write(path, b"ok\n") {
        say!("event=error step=create errno={}", e.raw_os_error().unwrap_or(0));
        return 1;
    }
    say!("event=health-file state=created t_ms={}", now_ms());
    sys::sleep_ms(for_ms);
    let _ = std::fs::remove_file(path);
    say!("event=health-file state=removed t_ms={}", now_ms());
    sys::wait_term(&wait);
    say!("event=stopping label=health-file");
    0
}

/// `census <label>`: every 20 ms, count the processes of this pid
/// namespace; print `event=census label=L n=N t_ms=T` whenever the count
/// changes (the first count too). Runs until killed.
pub fn census(label: &str) -> i32 {
    let mut last = None;
    loop {
        match crate::procs::count_pids() {
            Ok(n) if last != Some(n) => {
                say!("event=census label={} n={n} t_ms={}", V(label), now_ms());
                last = Some(n);
            }
            Ok(_) => {}
            Err(e) => {
                say!("event=error step=census errno={e}");
                return 1;
            }
        }
        sys::sleep_ms(20);
    }
}
