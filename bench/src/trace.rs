//! `cairn.bench.mode=trace`: where one container start spends its time,
//! from the kernel's own trace (tracefs: every syscall's entry and exit,
//! and the process fork, exec and exit events) of `cairn` starts.
//!
//! The start is cut into the phases of its critical path, each ending at
//! an event the kernel records:
//!
//! 1. `caller`: start requested → the caller enters `clone3` (state
//!    directory, cgroup with its limits and device program, pipes, the
//!    rootfs plan);
//! 2. `clone3`: → the container init's first instruction (the kernel
//!    copies the caller and makes the namespaces);
//! 3. `init`: → the init forks the entrypoint's process (loopback, signal
//!    mask);
//! 4. `rootfs`: → the init lets the entrypoint go (its `write` on the
//!    go-ahead pipe: the rootfs plan, hostname);
//! 5. `entry`: → the entrypoint's exec (what it had left to do once let
//!    go: its working directory, execve);
//! 6. `payload`: → the entrypoint's exit (`/bin/true` itself);
//! 7. `reap`: → the init's exit (it reaps the entrypoint and exits);
//! 8. `teardown`: → the caller's `wait4` returns (the kernel tears the
//!    namespaces and mounts down as the init exits).
//!
//! Beside the path, `entry-ready`: the entrypoint's process from its fork
//! to its wait for the go-ahead (signals, rlimits, bounding set, seccomp,
//! identity, capabilities, no_new_privs), which runs while the init builds
//! the filesystem; it is on the critical path only if it ends after it.
//!
//! In each phase the critical process's syscalls are summed by name; what
//! is left of the phase is `(user)`: its own instructions, page faults, and
//! waiting for a CPU. The parser is pure and unit-tested on the host.

use std::collections::BTreeMap;

/// One trace event of interest.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// The task the event happened in (global pid).
    pub pid: u32,
    /// Trace clock, µs.
    pub us: f64,
    /// What happened.
    pub kind: Kind<'a>,
}

/// The kinds of events a start is cut by.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind<'a> {
    /// Syscall entry (`sys_NAME(...)`).
    Enter(&'a str),
    /// Syscall exit (`sys_NAME -> RET`).
    Exit(&'a str),
    /// `sched_process_fork`: the task forked `child`.
    Fork(u32),
    /// `sched_process_exec`.
    Exec,
    /// `sched_process_exit`.
    ProcessExit,
    /// A `trace_marker` write.
    Mark(&'a str),
}

/// Parse one line of tracefs' `trace` file (default options: the task,
/// pid, CPU, optional irq flags, timestamp, event). `None` for headers and
/// events of no interest.
pub fn parse_line(line: &str) -> Option<Event<'_>> {
    let open = line.find(" [")?;
    let (task, rest) = line.split_at(open);
    let (_, pid) = task.trim().rsplit_once('-')?;
    let pid = pid.parse().ok()?;
    let rest = rest.get(rest.find(']')? + 1..)?;
    let mut words = rest.trim_start().splitn(2, ' ');
    let mut first = words.next()?;
    let mut tail = words.next()?.trim_start();
    if !first.ends_with(':') {
        // The irq-info flags; the timestamp follows.
        let mut w = tail.splitn(2, ' ');
        first = w.next()?;
        tail = w.next()?.trim_start();
    }
    let us = first.strip_suffix(':')?.parse::<f64>().ok()? * 1e6;
    let kind = if let Some(m) = tail.strip_prefix("tracing_mark_write: ") {
        Kind::Mark(m.trim_end())
    } else if let Some(f) = tail.strip_prefix("sched_process_fork: ") {
        Kind::Fork(field(f, "child_pid")?.parse().ok()?)
    } else if tail.starts_with("sched_process_exec: ") {
        Kind::Exec
    } else if tail.starts_with("sched_process_exit: ") {
        Kind::ProcessExit
    } else if let Some(s) = tail.strip_prefix("sys_") {
        match s.find([' ', '(']) {
            Some(i) if s.get(i..)?.starts_with(" -> ") => Kind::Exit(s.get(..i)?),
            Some(i) if s.get(i..)?.starts_with('(') => Kind::Enter(s.get(..i)?),
            _ => return None,
        }
    } else {
        return None;
    };
    Some(Event { pid, us, kind })
}

/// The value of `key=` in a `key=value ...` event.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The phases, in order (see the module's documentation).
pub const PHASES: [&str; 8] = ["caller", "clone3", "init", "rootfs", "entry", "payload", "reap", "teardown"];

/// One start, cut into its phases.
#[derive(Debug, Default, PartialEq)]
pub struct Start {
    /// Each phase's length, µs, in [`PHASES`] order.
    pub phases: Vec<f64>,
    /// Per phase: time in each syscall of its critical process (µs, by
    /// name) and `(user)`, the rest of the phase.
    pub syscalls: Vec<BTreeMap<String, f64>>,
    /// `entry-ready`, beside the path: its length (µs) and syscalls.
    pub entry_ready: (f64, BTreeMap<String, f64>),
}

/// Cut the events between the marks `start` and `end` of one start by
/// `caller` into phases.
pub fn cut(events: &[Event<'_>], caller: u32) -> Result<Start, String> {
    let at = |what: &str, found: Option<&Event<'_>>| found.map(|e| e.us).ok_or(format!("no {what} in the trace"));
    let t0 = at("start mark", events.iter().find(|e| e.kind == Kind::Mark("start")))?;
    let clone = events.iter().position(|e| e.pid == caller && e.kind == Kind::Enter("clone3"));
    let clone_us = at("clone3 by the caller", clone.and_then(|i| events.get(i)))?;
    let after_clone = events.get(clone.unwrap_or(0)..).unwrap_or(&[]);
    let fork_of = |parent: u32| {
        after_clone.iter().find_map(|e| match e.kind {
            Kind::Fork(child) if e.pid == parent => Some(child),
            _ => None,
        })
    };
    let init = fork_of(caller).ok_or("the caller's clone3 forked nothing")?;
    let init_first = at("the init's first event", after_clone.iter().find(|e| e.pid == init))?;
    let entry = fork_of(init).ok_or("the init forked no entrypoint")?;
    let forked =
        at("the entrypoint's fork", after_clone.iter().find(|e| e.pid == init && e.kind == Kind::Fork(entry)))?;
    let after_fork = after_clone.iter().filter(|e| e.us >= forked);
    let go = at("the init's go-ahead", after_fork.clone().find(|e| e.pid == init && e.kind == Kind::Enter("write")))?;
    let waits =
        at("the entrypoint's wait", after_fork.clone().find(|e| e.pid == entry && e.kind == Kind::Enter("read")))?;
    let exec = at("the entrypoint's exec", after_clone.iter().find(|e| e.pid == entry && e.kind == Kind::Exec))?;
    let entry_exit =
        at("the entrypoint's exit", after_clone.iter().find(|e| e.pid == entry && e.kind == Kind::ProcessExit))?;
    let init_exit = at("the init's exit", after_clone.iter().find(|e| e.pid == init && e.kind == Kind::ProcessExit))?;
    let reaped = at(
        "the caller's wait4 return",
        after_clone.iter().find(|e| e.pid == caller && e.kind == Kind::Exit("wait4") && e.us >= init_exit),
    )?;
    let bounds = [t0, clone_us, init_first, forked, go, exec, entry_exit, init_exit, reaped];
    let critical = [caller, caller, init, init, entry, entry, init, caller];
    let mut start =
        Start { entry_ready: (waits - forked, in_syscalls(events, entry, forked, waits)), ..Start::default() };
    for (i, pid) in critical.iter().enumerate() {
        let (Some(&from), Some(&to)) = (bounds.get(i), bounds.get(i + 1)) else { continue };
        if to < from {
            return Err(format!("phase {} ends before it begins", PHASES.get(i).unwrap_or(&"?")));
        }
        start.phases.push(to - from);
        start.syscalls.push(in_syscalls(events, *pid, from, to));
    }
    Ok(start)
}

/// Time `pid` spent in each syscall within [from, to] (a call open at
/// either edge counts from or to the edge), and `(user)`: the rest.
fn in_syscalls(events: &[Event<'_>], pid: u32, from: f64, to: f64) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let mut open: Option<(&str, f64)> = None;
    for e in events.iter().filter(|e| e.pid == pid && e.us <= to) {
        match e.kind {
            Kind::Enter(name) => open = Some((name, e.us)),
            // A return without its entry (the child's first return from
            // clone3, or a call entered in the image before an exec) is
            // not counted.
            Kind::Exit(name) if open.is_some_and(|(n, _)| n == name) => {
                if let Some((n, t)) = open.take() {
                    add(&mut out, n, t.max(from), e.us, from);
                }
            }
            // A call that does not return (exit_group), or the execve that
            // replaced the image, ends at the process's exit or exec.
            Kind::ProcessExit | Kind::Exec => {
                if let Some((n, t)) = open.take() {
                    add(&mut out, n, t.max(from), e.us, from);
                }
            }
            _ => {}
        }
    }
    if let Some((n, t)) = open {
        add(&mut out, n, t.max(from), to, from);
    }
    let busy: f64 = out.values().sum();
    out.insert("(user)".into(), (to - from - busy).max(0.0));
    out
}

fn add(out: &mut BTreeMap<String, f64>, name: &str, begin: f64, end: f64, from: f64) {
    if end > from && end > begin {
        *out.entry(name.to_owned()).or_default() += end - begin;
    }
}

/// The label of `entry-ready` (beside phase 4, so it sorts after it).
pub const ENTRY_READY: &str = "4b:entry-ready";

/// Where tracefs is mounted in the guest.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Pause before each start, traced or not (ms).
const SETTLE_MS: u64 = 300;

/// Write one tracefs control file.
fn control(file: &str, value: &str) -> Result<(), String> {
    std::fs::write(format!("{TRACEFS}/{file}"), value).map_err(|e| format!("{TRACEFS}/{file} <- {value}: {e}"))
}

/// Mount tracefs and trace this process and its descendants: every
/// syscall, and the process fork, exec and exit events.
fn set_up() -> Result<(), String> {
    match cairn_runtime::sys::mount("tracefs", Some("tracefs"), TRACEFS, Some("tracefs"), 0, None) {
        Err(e) if e.errno != libc::EBUSY => return Err(e.to_string()),
        _ => {}
    }
    control("tracing_on", "0")?;
    control("buffer_size_kb", "8192")?;
    control("trace_clock", "global")?;
    control("set_event_pid", &std::process::id().to_string())?;
    control("options/event-fork", "1")?;
    for event in ["syscalls", "sched/sched_process_fork", "sched/sched_process_exec", "sched/sched_process_exit"] {
        control(&format!("events/{event}/enable"), "1")?;
    }
    Ok(())
}

/// `rounds` traced starts of `spec`, each followed by an untraced one (the
/// trace's own cost is the difference). Prints each phase and its
/// syscalls as samples, and the first round's events as `bench-trace`.
pub fn run(
    spec: &cairn_runtime::spec::ContainerSpec,
    filter: Option<&cairn_runtime::seccomp::Filter>,
    cgroup: &cairn_runtime::Cgroup,
    ahead: &mut cairn_runtime::Ahead,
    rounds: usize,
) -> Result<(), String> {
    set_up()?;
    let me = std::process::id();
    println!("bench-info trace-rounds={rounds} trace-clock=global");
    // One start unmeasured first (page cache, first-use costs).
    crate::cairn_start(spec, filter, cgroup, ahead, true)?;
    for round in 0..rounds {
        std::thread::sleep(std::time::Duration::from_millis(SETTLE_MS));
        control("trace", "")?;
        control("tracing_on", "1")?;
        control("trace_marker", "start")?;
        let traced = crate::cairn_start(spec, filter, cgroup, ahead, true);
        control("trace_marker", "end")?;
        control("tracing_on", "0")?;
        let text = std::fs::read_to_string(format!("{TRACEFS}/trace")).map_err(|e| format!("trace: {e}"))?;
        if let Err(e) = traced {
            println!("bench-error trace round={round} {e}");
            continue;
        }
        let events: Vec<Event<'_>> = text.lines().filter_map(parse_line).collect();
        match cut(&events, me) {
            Ok(start) => {
                for (i, (name, us)) in PHASES.iter().zip(&start.phases).enumerate() {
                    println!("bench-sample trace-phase {}:{name} {us:.0}", i + 1);
                }
                for (i, (name, calls)) in PHASES.iter().zip(&start.syscalls).enumerate() {
                    for (call, us) in calls {
                        println!("bench-sample trace-sys {}:{name}:{call} {us:.0}", i + 1);
                    }
                }
                let (us, calls) = &start.entry_ready;
                println!("bench-sample trace-phase {ENTRY_READY} {us:.0}");
                for (call, us) in calls {
                    println!("bench-sample trace-sys {ENTRY_READY}:{call} {us:.0}");
                }
                println!("bench-sample trace-phase 0:total {:.0}", start.phases.iter().sum::<f64>());
            }
            Err(e) => println!("bench-error trace round={round} {e}"),
        }
        if round == 0 {
            for line in text.lines().filter(|l| parse_line(l).is_some()) {
                println!("bench-trace {}", line.trim());
            }
        }
        // Let the console drain what was just printed: the serial port
        // under emulation would slow the next start.
        std::thread::sleep(std::time::Duration::from_millis(SETTLE_MS));
        match crate::cairn_start(spec, filter, cgroup, ahead, true) {
            Ok(metrics) => {
                for (metric, us) in metrics {
                    println!("bench-sample untraced {metric} {us:.0}");
                }
            }
            Err(e) => println!("bench-error untraced round={round} {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_irq_flags() {
        let e = parse_line("     cairn-bench-1       [000] .....    12.500000: sys_mount(dev_name: 1, dir_name: 2)")
            .unwrap();
        assert_eq!(e, Event { pid: 1, us: 12_500_000.0, kind: Kind::Enter("mount") });
        let e = parse_line("  my-task-name-42 [001]   3.000001: sys_mount -> 0x0").unwrap();
        assert_eq!((e.pid, e.kind), (42, Kind::Exit("mount")));
        let e = parse_line(
            " cairn-bench-1 [000] d..1. 1.0: sched_process_fork: comm=cairn-bench pid=1 child_comm=cairn-bench child_pid=140",
        )
        .unwrap();
        assert_eq!(e.kind, Kind::Fork(140));
        let e = parse_line(" <...>-7 [001] ..... 2.0: tracing_mark_write: start").unwrap();
        assert_eq!((e.pid, e.kind), (7, Kind::Mark("start")));
        assert_eq!(parse_line("# tracer: nop"), None);
        assert_eq!(parse_line(" x-1 [000] ..... 1.0: sched_switch: prev_comm=x"), None);
    }

    /// A start as the trace shows it, with times in ms.
    fn start_trace() -> String {
        [
            "bench-1 [000] ..... 0.000: tracing_mark_write: start",
            "bench-1 [000] ..... 0.001: sys_mkdir(path: 1)",
            "bench-1 [000] ..... 0.003: sys_mkdir -> 0x0",
            "bench-1 [000] ..... 0.010: sys_clone3(uargs: 1, size: 2)",
            "bench-1 [000] ..... 0.014: sched_process_fork: comm=bench pid=1 child_comm=bench child_pid=9",
            "bench-1 [000] ..... 0.015: sys_clone3 -> 0x9",
            "bench-1 [000] ..... 0.016: sys_poll(ufds: 1)",
            "bench-9 [001] ..... 0.020: sys_clone3 -> 0x0",
            "bench-9 [001] ..... 0.021: sys_clone(flags: 1)",
            "bench-9 [001] ..... 0.023: sched_process_fork: comm=bench pid=9 child_comm=bench child_pid=10",
            "bench-9 [001] ..... 0.024: sys_clone -> 0xa",
            "bench-9 [001] ..... 0.025: sys_mount(dev_name: 1)",
            "bench-10 [000] ..... 0.026: sys_clone -> 0x0",
            "bench-10 [000] ..... 0.027: sys_seccomp(op: 1)",
            "bench-10 [000] ..... 0.030: sys_seccomp -> 0x0",
            "bench-10 [000] ..... 0.032: sys_read(fd: 5)",
            "bench-9 [001] ..... 0.035: sys_mount -> 0x0",
            "bench-9 [001] ..... 0.040: sys_write(fd: 6)",
            "bench-9 [001] ..... 0.041: sys_write -> 0x1",
            "bench-10 [000] ..... 0.042: sys_read -> 0x1",
            "bench-9 [001] ..... 0.044: sys_rt_sigtimedwait(uthese: 1)",
            "bench-10 [000] ..... 0.050: sys_execve(filename: 1)",
            "true-10 [000] ..... 0.060: sched_process_exec: filename=/bin/true pid=10 old_pid=10",
            "true-10 [000] ..... 0.061: sys_execve -> 0x0",
            "true-10 [000] ..... 0.062: sys_exit_group(error_code: 0)",
            "bench-1 [000] ..... 0.063: sys_poll -> 0x1",
            "bench-1 [000] ..... 0.064: sys_wait4(upid: 9)",
            "true-10 [000] ..... 0.065: sched_process_exit: comm=true pid=10 prio=120",
            "bench-9 [001] ..... 0.070: sys_rt_sigtimedwait -> 0x11",
            "bench-9 [001] ..... 0.075: sys_exit_group(error_code: 0)",
            "bench-9 [001] ..... 0.076: sched_process_exit: comm=bench pid=9 prio=120",
            "bench-1 [000] ..... 0.090: sys_wait4 -> 0x9",
            "bench-1 [000] ..... 0.091: tracing_mark_write: end",
        ]
        .join("\n")
    }

    #[test]
    fn a_start_is_cut_into_its_phases() {
        let text = start_trace();
        let events: Vec<Event<'_>> = text.lines().filter_map(parse_line).collect();
        let s = cut(&events, 1).unwrap();
        let ms: Vec<f64> = s.phases.iter().map(|us| (us / 100.0).round() / 10.0).collect();
        // caller 0→10, clone3 10→20, init 20→23, rootfs 23→40, entry
        // 40→60, payload 60→65, reap 65→76, teardown 76→90.
        assert_eq!(ms, [10.0, 10.0, 3.0, 17.0, 20.0, 5.0, 11.0, 14.0]);
        let ms_of = |phase: usize, name: &str| (s.syscalls[phase][name] / 100.0).round() / 10.0;
        assert_eq!(ms_of(0, "mkdir"), 2.0);
        assert_eq!(ms_of(0, "(user)"), 8.0);
        // The fork's call is cut at the phase's end (the fork event).
        assert_eq!(ms_of(2, "clone"), 2.0);
        assert_eq!(ms_of(3, "mount"), 10.0);
        assert_eq!(ms_of(3, "clone"), 1.0);
        // The entrypoint's wait counts from the go-ahead; execve ends at
        // the exec event; the entrypoint's own exit call at its exit.
        assert_eq!(ms_of(4, "read"), 2.0);
        assert_eq!(ms_of(4, "execve"), 10.0);
        assert!(!s.syscalls[4].contains_key("seccomp"), "done before the go-ahead: beside the path");
        assert_eq!(ms_of(5, "exit_group"), 3.0);
        assert_eq!(ms_of(6, "rt_sigtimedwait"), 5.0);
        assert_eq!(ms_of(6, "exit_group"), 1.0);
        assert_eq!(ms_of(7, "wait4"), 14.0);
        // Beside: fork 23 → the wait at 32, seccomp 3 of it.
        assert_eq!((s.entry_ready.0 / 100.0).round() / 10.0, 9.0);
        assert_eq!((s.entry_ready.1["seccomp"] / 100.0).round() / 10.0, 3.0);
        for (phase, total) in s.phases.iter().zip(&s.syscalls) {
            assert!((total.values().sum::<f64>() - phase).abs() < 1e-6);
        }
    }

    #[test]
    fn a_start_without_its_exec_is_an_error() {
        let text: String =
            start_trace().lines().filter(|l| !l.contains("sched_process_exec")).collect::<Vec<_>>().join("\n");
        let events: Vec<Event<'_>> = text.lines().filter_map(parse_line).collect();
        assert!(cut(&events, 1).unwrap_err().contains("exec"));
    }
}
