//! Process-table views (`/proc`) and `orphans`: the namespace init must reap
//! processes reparented to it.

use std::fs;

use crate::{say, sys};

/// Numeric directories in /proc: the processes visible in this pid namespace.
pub fn count_pids() -> Result<usize, i32> {
    Ok(pids()?.len())
}

/// The pids visible in this pid namespace (numeric directories of /proc).
pub fn pids() -> Result<Vec<u32>, i32> {
    let dir = fs::read_dir("/proc").map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (true, Some(pid)) = (is_dir, entry.file_name().to_str().and_then(|s| s.parse().ok())) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// Pids whose /proc/<pid>/stat state is `Z`.
pub fn zombies() -> Result<Vec<u32>, i32> {
    let mut out = Vec::new();
    for pid in pids()? {
        let Ok(stat) = fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Format: "pid (comm) S ..."; comm may hold spaces and parens, so take
        // the state after the last ')'.
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            continue;
        };
        let state = stat.get(close + 1..).and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()));
        if state == Some(&b'Z') {
            out.push(pid);
        }
    }
    Ok(out)
}

/// `orphans <n> [code]`.
pub fn orphans(n: u32, code: i32) -> i32 {
    let mut created = 0u32;
    let mut failed = 0u32;
    let mut first_errno = 0;
    let mut seed = (sys::pid().unsigned_abs()).wrapping_mul(2_654_435_761) | 1;
    for _ in 0..n {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let delay_ms = u64::from((seed >> 8) % 201);
        // The child forks the grandchild and exits at once, so the grandchild
        // is orphaned and reparented to the nearest reaper (the namespace init).
        let forked = sys::fork_child(move || {
            match sys::fork_child(move || {
                sys::sleep_ms(delay_ms);
                0
            }) {
                Ok(_) => 0,
                Err(e) => e.clamp(1, 255),
            }
        });
        let result = forked.and_then(|pid| {
            let status = sys::wait_pid(pid)?;
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(()),
                (true, e) => Err(e),
                _ => Err(-1),
            }
        });
        match result {
            Ok(()) => created += 1,
            Err(e) => {
                failed += 1;
                if first_errno == 0 {
                    first_errno = e;
                }
            }
        }
    }

    sys::sleep_ms(1000);
    match zombies() {
        Ok(z) => {
            let list: Vec<String> = z.iter().take(16).map(u32::to_string).collect();
            let list = if list.is_empty() { "-".to_owned() } else { list.join(",") };
            say!(
                "event=orphans created={created} zombies={} failed={failed} failed_errno={first_errno} zombie_pids={list}",
                z.len()
            );
        }
        Err(e) => say!("event=orphans created={created} zombies=-1 failed={failed} failed_errno={first_errno} err={e}"),
    }

    let wait = match sys::catch_term() {
        Ok(w) => w,
        Err(e) => {
            say!("event=error step=sigaction errno={e}");
            return 1;
        }
    };
    say!("event=waiting-for-term");
    sys::wait_term(&wait);
    say!("event=got-signal sig={}", libc::SIGTERM);
    code
}
