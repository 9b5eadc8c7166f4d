//! Exit codes and signals: how the supervisor sees a container end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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

/// Sleep `ms`, then exec `argv` (it does not return unless the exec fails).
pub fn after(ms: u64, argv: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    sys::sleep_ms(ms);
    let Some((prog, args)) = argv.split_first() else {
        say!("event=after-failed errno=0");
        return 1;
    };
    let e = std::process::Command::new(prog).args(args).exec();
    say!("event=after-failed errno={}", e.raw_os_error().unwrap_or(0));
    1
}

/// The catchable signals 1..=31: all but SIGKILL, SIGSTOP and SIGCHLD.
const CATCHABLE: [i32; 28] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGUSR1,
    libc::SIGSEGV,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGSTKFLT,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGWINCH,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSYS,
];

/// How long `sigcount` waits for all of them.
const SIGCOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Deliveries per signal number, written by [`on_count`].
static COUNTS: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

extern "C" fn on_count(sig: libc::c_int) {
    if let Some(c) = usize::try_from(sig).ok().and_then(|i| COUNTS.get(i)) {
        c.fetch_add(1, Ordering::SeqCst);
    }
}

/// Catch `sig` with [`on_count`] (SA_RESTART, every signal blocked while it runs).
fn count_signal(sig: i32) -> Result<(), i32> {
    // SAFETY: the sigaction is a local, zeroed then initialised before use; the
    // handler only increments an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_count as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigfillset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(sys::errno());
        }
    }
    Ok(())
}

/// Block every signal (those arriving meanwhile stay pending); the empty
/// set to sleep with.
fn block_all() -> (libc::sigset_t, libc::sigset_t) {
    // SAFETY: both sets are locals initialised by sigfillset / sigemptyset
    // before sigprocmask reads them.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        (all, none)
    }
}

/// Sleep with every signal unblocked until a handler ran or `timeout` passed
/// (ppoll: the race-free sigsuspend with a timeout).
fn wait_signal(unblocked: &libc::sigset_t, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(1 << 30),
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: no fds are passed; `ts_ptr` is NULL or points at a live timespec
    // and `unblocked` is an initialised sigset_t.
    let _ = unsafe { libc::ppoll(std::ptr::null_mut(), 0, ts_ptr, unblocked) };
}

/// Print one line per delivery of `sig` not printed yet.
fn report(sig: i32, role: &str, printed: &mut [u32; 65]) {
    let Some(i) = usize::try_from(sig).ok().filter(|&i| i < 65) else {
        return;
    };
    let now = COUNTS.get(i).map_or(0, |c| c.load(Ordering::SeqCst));
    if let Some(p) = printed.get_mut(i) {
        while *p < now {
            *p += 1;
            say!("event=got-signal sig={sig} role={role} count={p}");
        }
    }
}

/// `sigcount [group]`: count every catchable signal until each has come
/// at least once (exit 0) or 60 s passed (exit 1).
pub fn sigcount(group: bool) -> i32 {
    let (_, unblocked) = block_all();
    if group {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        if let Err(e) = sys::fork_child(move || sigcount_child(parent, &unblocked)) {
            say!("event=error step=fork errno={e}");
            return 1;
        }
    }
    for sig in CATCHABLE {
        if let Err(e) = count_signal(sig) {
            say!("event=error step=sigaction sig={sig} errno={e}");
            return 1;
        }
    }
    say!("event=sigcount-ready role=main");
    let deadline = Instant::now() + SIGCOUNT_TIMEOUT;
    let mut printed = [0u32; 65];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            wait_signal(&unblocked, Some(left));
        }
        for sig in CATCHABLE {
            report(sig, "main", &mut printed);
        }
        let distinct = CATCHABLE
            .iter()
            .filter(|&&s| usize::try_from(s).ok().and_then(|i| printed.get(i)).is_some_and(|&n| n > 0))
            .count();
        if distinct == CATCHABLE.len() {
            say!("event=sigcount-done distinct={distinct}");
            return 0;
        }
        if left.is_zero() {
            say!("event=sigcount-timeout distinct={distinct}");
            return 1;
        }
    }
}

/// The `group` child: SIGKILLed when the parent dies; counts SIGUSR1 only,
/// every other signal is ignored.
fn sigcount_child(parent: i32, unblocked: &libc::sigset_t) -> i32 {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes plain integers.
    let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if sys::ppid() != parent {
        return 0;
    }
    for sig in 1..=31 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP && sig != libc::SIGUSR1 {
            let _ = sys::ignore(sig);
        }
    }
    if let Err(e) = count_signal(libc::SIGUSR1) {
        say!("event=error step=sigaction sig={} role=child errno={e}", libc::SIGUSR1);
        return 1;
    }
    say!("event=sigcount-ready role=child");
    let mut printed = [0u32; 65];
    loop {
        wait_signal(unblocked, None);
        report(libc::SIGUSR1, "child", &mut printed);
    }
}

/// `leave-children <label>`: fork child A (SIGTERM: `event=child-term
/// role=a`, exit 0) and child B (SIGTERM ignored, sleeps forever), then exit
/// 0 after 1 s, leaving both to the namespace init.
pub fn leave_children(label: &str) -> i32 {
    let a = sys::fork_child(|| {
        let wait = match sys::catch_term() {
            Ok(w) => w,
            Err(e) => {
                say!("event=error step=sigaction role=a errno={e}");
                return 1;
            }
        };
        sys::wait_term(&wait);
        say!("event=child-term role=a");
        0
    });
    if let Err(e) = a {
        say!("event=error step=fork role=a errno={e}");
    }
    let b = sys::fork_child(|| {
        if let Err(e) = sys::ignore(libc::SIGTERM) {
            say!("event=error step=ignore-sigterm role=b errno={e}");
            return 1;
        }
        say!("event=child-ignoring role=b");
        sys::pause_forever()
    });
    if let Err(e) = b {
        say!("event=error step=fork role=b errno={e}");
    }
    sys::sleep_ms(1000);
    say!("event=entrypoint-exiting label={}", V(label));
    0
}
