//! Workloads that run into the container's cgroup limits (memory.max,
//! pids.max, cpu.max), and the `demo` ticker that shows a neighbour keeps going.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::out::V;
use crate::{say, sys};

/// `demo <label> <period_ms>`: tick forever.
pub fn demo(label: &str, period_ms: u64) -> ! {
    let mut n: u64 = 0;
    loop {
        n += 1;
        say!("event=tick label={} n={n} pid={} ppid={}", V(label), sys::pid(), sys::ppid());
        sys::sleep_ms(period_ms);
    }
}

/// `alloc <mib_step> <max_mib>`: grow resident memory until `max_mib` (or the
/// OOM killer). Every byte is written, so every page is really resident.
pub fn alloc(step_mib: u64, max_mib: u64) -> i32 {
    let mut keep: Vec<Vec<u8>> = Vec::new();
    let mut total: u64 = 0;
    while total < max_mib {
        let mib = step_mib.min(max_mib - total);
        let Some(bytes) = mib.checked_mul(1 << 20).and_then(|b| usize::try_from(b).ok()) else {
            say!("event=alloc-failed total_mib={total} want_mib={mib} reason=size");
            return 1;
        };
        let mut block = Vec::new();
        if block.try_reserve_exact(bytes).is_err() || keep.try_reserve(1).is_err() {
            say!("event=alloc-failed total_mib={total} want_mib={mib} reason=enomem");
            return 1;
        }
        block.resize(bytes, 0xa5);
        // Keep the optimiser from reasoning the stores away.
        black_box(&mut block);
        keep.push(block);
        total += mib;
        say!("event=alloc total_mib={total}");
        sys::sleep_ms(50);
    }
    black_box(&keep);
    say!("event=alloc-survived total_mib={total}");
    0
}

/// `forkbomb <n>`: fork up to `n` sleeping children, report, then kill and
/// reap them all.
pub fn forkbomb(n: u32) -> i32 {
    let mut kids = Vec::with_capacity(n as usize);
    let mut failed = 0u32;
    let mut first_errno = 0;
    for _ in 0..n {
        match sys::fork_child(|| {
            sys::sleep_ms(30_000);
            0
        }) {
            Ok(pid) => kids.push(pid),
            Err(e) => {
                failed += 1;
                if first_errno == 0 {
                    first_errno = e;
                }
            }
        }
    }
    say!("event=forkbomb forked={} failed={failed} failed_errno={first_errno}", kids.len());
    for &pid in &kids {
        sys::kill(pid, libc::SIGKILL);
    }
    let reaped = kids.iter().filter(|&&pid| sys::wait_pid(pid).is_ok()).count();
    say!("event=forkbomb-done reaped={reaped}");
    0
}

/// `spin <seconds>`: burn CPU for that much wall time, then report the
/// cgroup's throttling counters from cpu.stat.
pub fn spin(seconds: u64) -> i32 {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut x: u64 = 1;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407));
        }
    }
    black_box(x);

    // cgroup v2 line of /proc/self/cgroup: "0::<path>". Inside a cgroup
    // namespace that is "/" and /sys/fs/cgroup is the container's own cgroup.
    let cgroup = sys::read_trim("/proc/self/cgroup")
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
        .unwrap_or_else(|| "missing".to_owned());
    let mut candidates = Vec::new();
    if cgroup.starts_with('/') && cgroup != "/" {
        candidates.push(format!("/sys/fs/cgroup{cgroup}/cpu.stat"));
    }
    candidates.push("/sys/fs/cgroup/cpu.stat".to_owned());
    let stats: Vec<(String, String)> =
        candidates.into_iter().filter_map(|p| sys::read_trim(&p).map(|s| (p, s))).collect();
    let chosen = stats.iter().find(|(_, s)| stat_value(s, "nr_throttled").is_some()).or_else(|| stats.first());
    match chosen {
        Some((path, stat)) => {
            let get = |k: &str| stat_value(stat, k).unwrap_or("missing");
            say!(
                "event=spin seconds={seconds} nr_throttled={} throttled_usec={} usage_usec={} cgroup={} source={}",
                V(get("nr_throttled")),
                V(get("throttled_usec")),
                V(get("usage_usec")),
                V(&cgroup),
                V(path)
            );
        }
        None => say!("event=spin seconds={seconds} cpu_stat=missing cgroup={}", V(&cgroup)),
    }
    0
}

/// The value of `key` in a flat-keyed cgroup file ("key value" lines).
fn stat_value<'a>(stat: &'a str, key: &str) -> Option<&'a str> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then_some(v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::stat_value;

    #[test]
    fn cpu_stat_keys() {
        let s = "usage_usec 10\nnr_periods 5\nnr_throttled 3\nthrottled_usec 700\n";
        assert_eq!(stat_value(s, "nr_throttled"), Some("3"));
        assert_eq!(stat_value(s, "throttled_usec"), Some("700"));
        assert_eq!(stat_value(s, "nr_burst"), None);
    }
}
