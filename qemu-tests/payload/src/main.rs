//! `cairn-payload`: a multi-call test program, the entrypoint of containers in
//! the QEMU scenarios. Inside a container it is pid 2, the child of cairn's
//! namespace init (pid 1).
//!
//! Every line goes to stdout (the serial console) as one `write(2)` and reads
//! `payload name=<hostname> event=<event> key=value ...`; values never hold
//! spaces (whitespace and control characters become `_`, `"` becomes `'`,
//! an empty value is `-`).
//!
//! Subcommands (`argv[1]`) and what they print after `payload name=H `:
//!
//! - `demo <label> <period_ms>`: forever, every period:
//!   `event=tick label=L n=<count from 1> pid=P ppid=PP`.
//! - `inspect [stay]`:
//!   `event=inspect pid=P ppid=PP pid1_comm=C hostname=H layer=<cat /etc/cairn-layer|missing> base=<cat /etc/cairn-base|missing> uid=U gid=G cwd=D`,
//!   then writes `/cairn-upper-test` ("written by H") and overwrites
//!   `/etc/cairn-base` ("shadowed"), reads both back:
//!   `event=upper-write ok=1` or `event=upper-write ok=0 err=<errno|mismatch> path=F`,
//!   then `event=procs count=<numeric dirs in /proc>` (`count=-1 err=E` on error),
//!   then `event=inspect-done`. With `stay` it then sleeps forever, else exits 0.
//! - `alloc <mib_step> <max_mib>`: after each resident step `event=alloc total_mib=N`
//!   (50 ms apart); at max `event=alloc-survived total_mib=N`, exit 0. If the
//!   allocator refuses: `event=alloc-failed total_mib=N want_mib=M reason=R`, exit 1.
//! - `forkbomb <n>`: forks up to n sleeping children, then
//!   `event=forkbomb forked=K failed=F failed_errno=E` (E = errno of the first
//!   failure, 0 if none), kills and reaps them: `event=forkbomb-done reaped=K`, exit 0.
//! - `spin <seconds>`: busy loop, then from cpu.stat
//!   `event=spin seconds=S nr_throttled=N throttled_usec=M usage_usec=U cgroup=<0:: path> source=<file>`
//!   (a key absent from the file is `missing`), or
//!   `event=spin seconds=S cpu_stat=missing cgroup=P`; exit 0.
//! - `orphans <n> [code]`: n children each fork a grandchild (sleeping 0-200 ms)
//!   and exit; after 1 s:
//!   `event=orphans created=N zombies=Z failed=F failed_errno=E zombie_pids=<up to 16, comma separated|->`,
//!   then `event=waiting-for-term`; on SIGTERM `event=got-signal sig=15`, exit
//!   `code` (default 42).
//! - `exit <code>`: `event=exiting code=C`, exit C.
//! - `kill-self <sig>`: `event=killing-self sig=S`, raise(S); if still alive
//!   `event=still-alive sig=S rc=R`, exit 1.
//! - `ignore-term`: SIGTERM ignored, `event=ignoring-term`, sleeps forever.
//! - `term-log <label>`: `event=running label=L`; on SIGTERM
//!   `event=stopping label=L`, exit 0.
//! - `ctl [--delay-ms N] <request...>`: sleeps N ms, sends the words joined by
//!   spaces as one message on the SOCK_SEQPACKET socket `$CAIRN_CONTROL`
//!   (default `/run/cairn/control`), reads one reply (at most 4096 bytes):
//!   `event=ctl request=R reply=Y`; exit 0 if the reply starts with `ok`,
//!   else 1. On failure `event=ctl request=R error=<socket|connect|send|recv|path> errno=E path=P`, exit 1.
//! - `ctl-each [--delay-ms N] <request>...`: each argument one request, in
//!   order: `event=ctl request=R reply=Y` each; exit 0.
//! - `logs-check <name> [<after>...]`: see `ctl::logs_check` (the `logs` scenario).
//! - `flood <mib>`: see `ctl::flood`.
//! - `ctl-hold <seconds> <request>...`: see `ctl::hold`.
//! - `sleep <ms>`: `event=slept ms=N`, exit 0.
//! - `after <ms> <program> <args>...`: sleeps, then execs the program (its
//!   exit is the container's); `event=after-failed errno=E` if it cannot.
//! - `hostile`: as root in a hardened container, tries escapes and kernel
//!   interfaces one by one (see `hostile.rs` for exactly what each does); per
//!   attempt `event=attempt name=N result=<blocked|ALLOWED> errno=E err=ENAME`
//!   (errno 0 and `err=-` when not applicable; an ALLOWED line may add
//!   `detail=D`, `sethostname` adds `scope=own-uts`), in this order: mount,
//!   umount, raw-block-open, mknod-block, mknod-char, module-load, kexec,
//!   reboot, sysrq, clock-set, sethostname, ptrace-hidden, ptrace-init, keyctl,
//!   bpf, userns, cgroup-write, chroot-escape, proc-other-container,
//!   rlimit-raise, proc-exe-write, proc-exe-opath, proc-sys-write, dev-mem.
//!   Then `event=hostile-done attempts=N allowed=M`; exit 0, or 1 if M > 0.
//!   Anything that gets through is undone where possible; nothing is ever
//!   written to a device, /proc/1/exe or sysrq-trigger.
//! - `sigcount [group]`: catches every signal 1..=31 but KILL, STOP and CHLD
//!   (28; SA_RESTART), `event=sigcount-ready role=main`, then per delivery
//!   `event=got-signal sig=S role=main count=<deliveries of S so far>`
//!   (SIGTERM too; it keeps running). When all 28 have come:
//!   `event=sigcount-done distinct=28`, exit 0; after 60 s
//!   `event=sigcount-timeout distinct=K`, exit 1. With `group` it first forks
//!   a child in its process group (PR_SET_PDEATHSIG=SIGKILL) that ignores
//!   every signal but SIGUSR1, prints `event=sigcount-ready role=child`, then
//!   `event=got-signal sig=10 role=child count=N` per SIGUSR1.
//! - `sigstate`: `event=sigstate blocked=<SigBlk> ignored=<SigIgn> caught=<SigCgt> pgid=G sid=S pid=P`
//!   (hex masks from /proc/self/status, with the dispositions Rust's runtime
//!   changes before `main` put back as they were at exec); exit 0.
//! - `leave-children <label>`: forks child A (on SIGTERM
//!   `event=child-term role=a`, exit 0) and child B (SIGTERM ignored,
//!   `event=child-ignoring role=b`, sleeps forever); after 1 s
//!   `event=entrypoint-exiting label=L`, exit 0 without waiting for them.
//! - `fill-tmpfs <dir>`: writes 64 KiB chunks to `<dir>/fill` until a write
//!   (or the open) fails: `event=fill-tmpfs wrote_kib=K errno=E err=ENAME`; exit 0.
//! - `read-rate <device> <mib>`: O_DIRECT reads of 1 MiB, timed:
//!   `event=read-rate device=D mib=N seconds=S.SSS kib_per_sec=K`, or
//!   `event=read-rate device=D error=<ENAME|EOF> errno=E`; exit 0.
//! - `open-files <max>`: opens /dev/null until failure or max:
//!   `event=open-files opened=N errno=E err=ENAME soft_limit=<RLIMIT_NOFILE soft|inf>`; exit 0.
//! - `rlimits`: `event=rlimits nofile=S/H nproc=S/H core=S/H` (`inf` for
//!   unlimited); exit 0.
//! - `caps`: from /proc/self/status
//!   `event=caps eff=<CapEff> prm=<CapPrm> inh=<CapInh> bnd=<CapBnd> amb=<CapAmb> nnp=<NoNewPrivs> seccomp=<Seccomp>`; exit 0.
//! - `cat <path>...`: per file `event=cat path=P value=<content, trimmed>`
//!   or `event=cat path=P error=ENAME errno=E`; exit 1 if any failed, else 0.
//! - `read-file <path>...`: reads each file whole, in order:
//!   `event=read-file path=P bytes=N` or `event=read-file path=P error=ENAME errno=E`;
//!   exit 1 if any failed, else 0.
//!
//! - `exit-seq <plan>`: ends the way item number `$CAIRN_RESTART_COUNT` of
//!   the plan (comma separated: `N` exit code, `A-B` each code in turn, `sN`
//!   death by signal N) says: `event=exit-seq restart_count=K action=code:N|signal:S`;
//!   past the end `event=exit-seq-past-end`, exit 0 (see `seq.rs`).
//! - `await-stopped <names> <request...>`: polls `status` on the control
//!   socket until every named container is stopped, then sends the request
//!   like `ctl` (`event=await-stopped ...` first).
//! - `tty-check`: the terminal as the entrypoint sees it and ^C through the
//!   line discipline (see `tty.rs`).
//! - `net-info [fail-first]`, `net-serve <port> <hold_ms> [any]`, `net-connect <port> [host]`,
//!   `net-probe <port> <ms> [host]`: network namespace probes (see `net.rs`;
//!   127.0.0.1 unless `any` (0.0.0.0) or a host, resolved by /etc/hosts).
//! - `net-up <iface> <ipv4> <prefix>`: address the interface and bring it
//!   up (ioctls; needs CAP_NET_ADMIN in its network namespace):
//!   `event=net-up iface=I addr=A/P` or `event=net-up-failed step=S errno=E`.
//!
//! - `userns`: the container's ids, id maps, and what its root may do to
//!   host-owned files (see `userns.rs`).
//!
//! - `console-abuse <mib>`, `control-abuse <idle> <target> <count>`,
//!   `control-borrow <request...>`: abuse of the console and of the control
//!   socket (see `abuse.rs`).
//!
//! - `volume check-write|readonly|absent|fill ...`: volumes as a container
//!   sees them (see `volume.rs`).
//!
//! - `heartbeat <every_ms> <for_ms> [delay_ms]`, `oom-child <mib>`, `count <period_ms>`:
//!   health checks, live OOM events and the freezer (see `health.rs`).
//! - `whoami <label> [stay]`: what the `exec` scenario compares between an
//!   entrypoint and a command run with `cairn-ctl exec` (see `exec.rs`).
//!
//! errno names (`err=`, `error=`) are the symbolic names (`EPERM`, ...),
//! `E<n>` for one not in the table.
//!
//! Unknown subcommands and bad arguments: `event=usage-error detail=D`, exit 2.

mod abuse;
mod ctl;
mod exec;
mod health;
mod hostile;
mod inspect;
mod limits;
mod net;
mod out;
mod procs;
mod resources;
mod seq;
mod signals;
mod status;
mod sys;
mod tree;
mod tty;
mod userns;
mod volume;

use std::str::FromStr;

use out::V;

fn main() {
    out::init();
    // args_os: a non-UTF-8 argument must not panic.
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let code = match dispatch(&args) {
        Ok(code) => code,
        Err(detail) => {
            say!("event=usage-error detail={}", V(&detail));
            2
        }
    };
    std::process::exit(code);
}

/// Run the subcommand; `Err` is a usage error's detail.
fn dispatch(args: &[String]) -> Result<i32, String> {
    let a = Args(args);
    let Some(cmd) = args.get(1) else {
        return Err("missing_subcommand".into());
    };
    let code = match cmd.as_str() {
        "demo" => {
            let label = a.word(2, "label")?;
            let period: u64 = a.num(3, "period_ms")?;
            if period == 0 {
                return Err("demo:period_ms_must_be_positive".into());
            }
            limits::demo(label, period)
        }
        "inspect" => inspect::run(a.0.get(2).is_some_and(|s| s == "stay")),
        "alloc" => {
            let step: u64 = a.num(2, "mib_step")?;
            let max: u64 = a.num(3, "max_mib")?;
            if step == 0 {
                return Err("alloc:mib_step_must_be_positive".into());
            }
            limits::alloc(step, max)
        }
        "forkbomb" => limits::forkbomb(a.num(2, "n")?),
        "spin" => limits::spin(a.num(2, "seconds")?),
        "orphans" => {
            let n: u32 = a.num(2, "n")?;
            let code: i32 = if a.0.len() > 3 { a.num(3, "code")? } else { 42 };
            procs::orphans(n, code)
        }
        "exit" => signals::exit(a.num(2, "code")?),
        "kill-self" => {
            let sig: i32 = a.num(2, "sig")?;
            if !(1..=64).contains(&sig) {
                return Err(format!("kill-self:bad_signal:{sig}"));
            }
            signals::kill_self(sig)
        }
        "ignore-term" => signals::ignore_term(),
        "term-log" => signals::term_log(a.word(2, "label")?),
        "ctl" => {
            let (delay, first) =
                if a.0.get(2).is_some_and(|s| s == "--delay-ms") { (a.num(3, "delay_ms")?, 4) } else { (0, 2) };
            let words = a.0.get(first..).unwrap_or(&[]);
            if words.is_empty() {
                return Err("ctl:missing_request".into());
            }
            ctl::run(delay, words)
        }
        "ctl-each" => {
            let (delay, first) =
                if a.0.get(2).is_some_and(|s| s == "--delay-ms") { (a.num(3, "delay_ms")?, 4) } else { (0, 2) };
            ctl::run_each(delay, a.0.get(first..).unwrap_or(&[]))
        }
        "logs-check" => ctl::logs_check(a.0.get(2).map_or("", String::as_str), a.0.get(3..).unwrap_or(&[])),
        "flood" => ctl::flood(a.num(2, "mib")?),
        "ctl-hold" => ctl::hold(a.num(2, "seconds")?, a.0.get(3..).unwrap_or(&[])),
        "sleep" => signals::sleep(a.num(2, "ms")?),
        "after" => signals::after(a.num(2, "ms")?, a.0.get(3..).unwrap_or(&[])),
        "hostile" => hostile::run(),
        "attempt" => hostile::one(a.0.get(2).map_or("", String::as_str)),
        "userns" => userns::run(),
        "sigcount" => match a.0.get(2).map(String::as_str) {
            None => signals::sigcount(false),
            Some("group") => signals::sigcount(true),
            Some(other) => return Err(format!("sigcount:bad_mode:{other}")),
        },
        "sigstate" => status::sigstate(),
        "leave-children" => signals::leave_children(a.word(2, "grace_label")?),
        "fill-tmpfs" => resources::fill_tmpfs(a.word(2, "dir")?),
        "volume" => {
            let rest = a.0.get(3..).unwrap_or(&[]);
            match a.word(2, "action")? {
                "check-write" => volume::check_write(rest),
                "readonly" => volume::readonly(rest),
                "absent" => volume::absent(rest),
                "fill" => volume::fill(a.word(3, "full_dir")?, a.word(4, "other_dir")?),
                other => return Err(format!("volume:unknown_action:{other}")),
            }
        }
        "read-rate" => resources::read_rate(a.word(2, "device")?, a.num(3, "mib")?),
        "open-files" => resources::open_files(a.num(2, "max")?),
        "rlimits" => resources::rlimits(),
        "caps" => status::caps(),
        "cat" => {
            let paths = a.0.get(2..).unwrap_or(&[]);
            if paths.is_empty() {
                return Err("cat:missing_path".into());
            }
            resources::cat(paths)
        }
        "tree" => tree::run(a.0.get(2..).unwrap_or(&[])),
        "exit-seq" => seq::exit_seq(a.word(2, "plan")?)?,
        "await-stopped" => {
            let words = a.0.get(3..).unwrap_or(&[]);
            if words.is_empty() {
                return Err("await-stopped:missing_request".into());
            }
            seq::await_stopped(a.word(2, "names")?, words)
        }
        "tty-check" => tty::check(),
        "net-info" => net::info(a.0.get(2).is_some_and(|w| w == "fail-first")),
        "net-up" => net::up(a.word(2, "iface")?, a.word(3, "addr")?, a.num(4, "prefix")?),
        "net-serve" => net::serve(a.num(2, "port")?, a.num(3, "hold_ms")?, a.0.get(4).is_some_and(|w| w == "any")),
        "net-connect" => net::connect(a.num(2, "port")?, a.0.get(3).map(String::as_str)),
        "net-probe" => net::probe(a.num(2, "port")?, a.num(3, "ms")?, a.0.get(4).map(String::as_str)),
        "net-get" => net::get(a.word(2, "host")?, a.num(3, "port")?, a.num(4, "ms")?),
        "net-udp" => net::udp(a.num(2, "port")?, a.num(3, "ms")?),
        "nft-delete" => net::nft_delete(a.word(2, "table")?),
        "dns-serve" => net::dns_serve(a.word(2, "answer")?, a.num(3, "ms")?),
        "resolve" => net::resolve(a.0.get(2..).unwrap_or(&[])),
        "wait-file" => net::wait_file(a.word(2, "path")?, a.word(3, "text")?, a.num(4, "ms")?),
        // console-abuse scenario (console and control socket area).
        "console-abuse" => abuse::console(a.num(2, "mib")?),
        "control-abuse" => abuse::control(a.num(2, "idle")?, a.word(3, "target")?, a.num(4, "count")?),
        "control-borrow" => abuse::borrow(&a.0.get(2..).unwrap_or(&[]).join(" ")),
        // verity-tamper scenario (issue 10).
        "read-file" => resources::read_files(a.0.get(2..).unwrap_or(&[])),
        // health, oom-live and pause scenarios (issue 14 item 2, pause/resume).
        "heartbeat" => {
            let delay = if a.0.len() > 4 { a.num(4, "delay_ms")? } else { 0 };
            health::heartbeat(a.num(2, "every_ms")?, a.num(3, "for_ms")?, delay)
        }
        "oom-child" => health::oom_child(a.num(2, "mib")?),
        "count" => health::count(a.num(2, "period_ms")?),
        "exists" => health::exists(a.word(2, "path")?),
        "health-file" => health::health_file(a.word(2, "path")?, a.num(3, "for_ms")?),
        "census" => health::census(a.word(2, "label")?),
        "whoami" => exec::whoami(a.word(2, "label")?, a.0.get(3).is_some_and(|s| s == "stay")),
        other => return Err(format!("unknown_subcommand:{other}")),
    };
    Ok(code)
}

/// argv with error-returning accessors.
struct Args<'a>(&'a [String]);

impl Args<'_> {
    fn cmd(&self) -> &str {
        self.0.get(1).map_or("-", String::as_str)
    }

    fn word(&self, i: usize, what: &str) -> Result<&str, String> {
        self.0.get(i).map(String::as_str).ok_or_else(|| format!("{}:missing_{what}", self.cmd()))
    }

    fn num<T: FromStr>(&self, i: usize, what: &str) -> Result<T, String> {
        let w = self.word(i, what)?;
        w.parse().map_err(|_| format!("{}:bad_{what}:{w}", self.cmd()))
    }
}
