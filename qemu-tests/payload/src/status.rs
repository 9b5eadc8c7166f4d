//! `sigstate` and `caps`: the process state the runtime handed over, as
//! /proc/self/status shows it.
//!
//! Rust's runtime changes some signal dispositions before `main` (SIGPIPE
//! to ignored; handlers for SIGSEGV and SIGBUS to report stack overflows).
//! A function in `.init_array`, which libc runs before `main`, records what
//! they were at exec, and `sigstate` puts them back before reading the
//! status, so it shows what the runtime gave, not what Rust did.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::out::V;
use crate::{say, sys};

/// The signals whose disposition Rust's runtime may change before `main`.
const RUNTIME_SIGNALS: [libc::c_int; 3] = [libc::SIGPIPE, libc::SIGSEGV, libc::SIGBUS];
/// Not recorded (the init hook did not run or sigaction failed).
const UNKNOWN: usize = usize::MAX;
/// Their handlers at exec (SIG_DFL or SIG_IGN: exec resets handlers).
static AT_EXEC: [AtomicUsize; 3] = [const { AtomicUsize::new(UNKNOWN) }; 3];

extern "C" fn record_at_exec() {
    for (sig, slot) in RUNTIME_SIGNALS.iter().zip(&AT_EXEC) {
        // SAFETY: sigaction is plain old data; all-zero is a valid value, and
        // a NULL new action only queries the current one.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `old` is writable.
        if unsafe { libc::sigaction(*sig, std::ptr::null(), &mut old) } == 0 {
            slot.store(old.sa_sigaction, Ordering::SeqCst);
        }
    }
}

/// Run by libc before `main` (and so before Rust's runtime set-up).
#[used]
#[link_section = ".init_array"]
static RECORD_AT_EXEC: extern "C" fn() = record_at_exec;

/// Put back the dispositions recorded at exec.
fn restore_at_exec() {
    for (sig, slot) in RUNTIME_SIGNALS.iter().zip(&AT_EXEC) {
        let handler = slot.load(Ordering::SeqCst);
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            continue;
        }
        // SAFETY: the sigaction is zeroed then initialised; SIG_DFL and SIG_IGN
        // are valid dispositions for these catchable signals.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            libc::sigemptyset(&mut sa.sa_mask);
            let _ = libc::sigaction(*sig, &sa, std::ptr::null_mut());
        }
    }
}

/// /proc/self/status, or "" if it cannot be read.
fn status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

/// `sigstate`: blocked, ignored and caught signals (hex masks as in
/// /proc/self/status), process group, session, pid.
pub fn sigstate() -> i32 {
    restore_at_exec();
    let st = status();
    let get = |k: &str| sys::status_field(&st, k).unwrap_or_else(|| "missing".into());
    // SAFETY: getpgid(0) and getsid(0) take plain integers and only query.
    let (pgid, sid) = unsafe { (libc::getpgid(0), libc::getsid(0)) };
    say!(
        "event=sigstate blocked={} ignored={} caught={} pgid={pgid} sid={sid} pid={}",
        V(&get("SigBlk")),
        V(&get("SigIgn")),
        V(&get("SigCgt")),
        sys::pid()
    );
    0
}

/// `caps`: capability sets, no_new_privs and seccomp mode.
pub fn caps() -> i32 {
    let st = status();
    let get = |k: &str| sys::status_field(&st, k).unwrap_or_else(|| "missing".into());
    say!(
        "event=caps eff={} prm={} inh={} bnd={} amb={} nnp={} seccomp={}",
        V(&get("CapEff")),
        V(&get("CapPrm")),
        V(&get("CapInh")),
        V(&get("CapBnd")),
        V(&get("CapAmb")),
        V(&get("NoNewPrivs")),
        V(&get("Seccomp")),
    );
    0
}
