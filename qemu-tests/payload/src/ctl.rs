//! `ctl`: one request over the init's control socket (AF_UNIX, SOCK_SEQPACKET:
//! one message each way).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::out::V;
use crate::{say, sys};

/// Default socket path; `CAIRN_CONTROL` overrides it.
pub const DEFAULT_PATH: &str = "/run/cairn/control";
/// Largest reply read.
const REPLY_MAX: usize = 64 * 1024;
/// Connect attempts while the socket is not there yet (100 ms apart).
const CONNECT_TRIES: u32 = 20;

/// Send `words` joined by spaces, print the reply; exit 0 if it starts with "ok".
pub fn run(delay_ms: u64, words: &[String]) -> i32 {
    if delay_ms > 0 {
        sys::sleep_ms(delay_ms);
    }
    let request = words.join(" ");
    let path = std::env::var_os("CAIRN_CONTROL").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    // A `poweroff` is answered, then this container is stopped at once:
    // hold SIGTERM until the reply is printed (it is delivered after).
    let held = hold_term();
    let code = report(&request, &path, exchange(path.as_bytes(), request.as_bytes()));
    release_term(held);
    code
}

/// Block SIGTERM; returns the previous mask.
fn hold_term() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use;
    // sigprocmask gets valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Restore the mask [`hold_term`] returned (a pending SIGTERM acts now).
fn release_term(old: libc::sigset_t) {
    // SAFETY: `old` is a mask sigprocmask filled in.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
}

/// Print the outcome of a request; 0 if the reply starts with "ok".
fn report(request: &str, path: &std::ffi::OsStr, outcome: Result<Vec<u8>, (&'static str, i32)>) -> i32 {
    match outcome {
        Ok(reply) => {
            let reply = String::from_utf8_lossy(&reply);
            let reply = reply.trim();
            say!("event=ctl request={} reply={}", V(request), V(reply));
            if reply.starts_with("ok") {
                0
            } else {
                1
            }
        }
        Err((step, errno)) => {
            say!("event=ctl request={} error={step} errno={errno} path={}", V(request), V(&path.to_string_lossy()));
            1
        }
    }
}

/// The protocol word (docs/control.md).
pub const VERSION: &[u8] = b"cairn/1 ";

/// Send `request` (with the protocol word put in front unless it starts
/// with `cairn/`) and return the reply without the protocol word.
pub fn exchange(path: &[u8], request: &[u8]) -> Result<Vec<u8>, (&'static str, i32)> {
    let mut full = Vec::with_capacity(request.len() + VERSION.len());
    if !request.starts_with(b"cairn/") {
        full.extend_from_slice(VERSION);
    }
    full.extend_from_slice(request);
    let (_fd, reply) = exchange_raw(path, &full)?;
    Ok(reply.strip_prefix(VERSION).map(<[u8]>::to_vec).unwrap_or(reply))
}

/// Connect (retrying briefly while the socket is absent), send, receive
/// the first reply; the connection is returned for a stream's next
/// messages. Errors name the step and carry errno.
pub fn exchange_raw(path: &[u8], request: &[u8]) -> Result<(OwnedFd, Vec<u8>), (&'static str, i32)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= addr.sun_path.len() || path.contains(&0) {
        return Err(("path", libc::ENAMETOOLONG));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src as libc::c_char;
    }
    let addr_len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;

    let mut tries = 0;
    let fd = loop {
        tries += 1;
        // SAFETY: socket takes plain integers and returns a new fd or -1.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(("socket", sys::errno()));
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `addr` is an initialised sockaddr_un and `addr_len` covers the
        // family and the NUL-terminated path inside it.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), addr_len) };
        if rc == 0 {
            break fd;
        }
        let e = sys::errno();
        let transient = matches!(e, libc::ENOENT | libc::ECONNREFUSED | libc::EAGAIN | libc::EINTR);
        if !transient || tries >= CONNECT_TRIES {
            return Err(("connect", e));
        }
        drop(fd);
        sys::sleep_ms(100);
    };

    // A reply that never comes should not hang the container forever.
    let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
    // SAFETY: `timeout` is a live timeval and the length passed is its size.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };

    // SAFETY: `request` is a live slice; send reads at most its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(("send", sys::errno()));
    }

    let reply = recv(&fd)?;
    Ok((fd, reply))
}

/// One message from the socket.
pub fn recv(fd: &OwnedFd) -> Result<Vec<u8>, (&'static str, i32)> {
    let mut buf = vec![0u8; REPLY_MAX];
    loop {
        // SAFETY: `buf` is writable for its full length; recv writes at most that.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            buf.truncate(n.unsigned_abs());
            return Ok(buf);
        }
        let e = sys::errno();
        if e != libc::EINTR {
            return Err(("recv", e));
        }
    }
}

/// `ctl-each [--delay-ms N] REQUEST...`: each argument one request (words
/// separated by spaces), sent in order on its own connection:
/// `event=ctl request=R reply=Y` each, Y the reply's first line; each
/// further line L as `event=ctl-line request=R line=L`. An argument
/// `sleep:MS` pauses instead. Exit 0.
pub fn run_each(delay_ms: u64, requests: &[String]) -> i32 {
    if delay_ms > 0 {
        sys::sleep_ms(delay_ms);
    }
    let path = std::env::var_os("CAIRN_CONTROL").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let held = hold_term();
    for request in requests {
        if let Some(ms) = request.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
            sys::sleep_ms(ms);
            continue;
        }
        match exchange(path.as_bytes(), request.as_bytes()) {
            Ok(reply) => {
                let reply = String::from_utf8_lossy(&reply);
                let mut lines = reply.lines();
                say!("event=ctl request={} reply={}", V(request), V(lines.next().unwrap_or("").trim()));
                for l in lines {
                    say!("event=ctl-line request={} line={}", V(request), V(l));
                }
            }
            Err(e) => {
                report(request, &path, Err(e));
            }
        }
    }
    release_term(held);
    0
}

/// Every message of a stream request until `cairn/1 end` (or the
/// connection ends): the first reply, then the lines.
fn stream(path: &[u8], request: &str) -> Result<(String, Vec<String>), (&'static str, i32)> {
    let mut full = VERSION.to_vec();
    full.extend_from_slice(request.as_bytes());
    let (fd, first) = exchange_raw(path, &full)?;
    let mut lines = Vec::new();
    loop {
        let m = recv(&fd)?;
        if m.is_empty() || m == b"cairn/1 end" {
            break;
        }
        lines.push(String::from_utf8_lossy(&m).into_owned());
    }
    Ok((String::from_utf8_lossy(&first).into_owned(), lines))
}

/// A field `key=value` of a `ps` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ').find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// `logs-check NAME [AFTER...]`: waits (up to 120 s) until `ps` shows
/// NAME stopped, then prints PID 1's memory from `ps`
/// (`event=init-memory rss=B hwm=B`), reads `logs NAME` whole
/// (`event=logs lines=N lost=K first_t=T last=L before_last=L2`), then
/// `logs NAME --since T` with T the time of the middle line
/// (`event=logs-since since=T lines=M older=O`, O lines older than T),
/// waits (up to 120 s each) until every AFTER is stopped too, and asks for
/// `poweroff`. Exit 0, or 1 on a failed request.
pub fn logs_check(name: &str, after: &[String]) -> i32 {
    let path = std::env::var_os("CAIRN_CONTROL").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let path = path.as_bytes();
    let ps = match wait_stopped(path, name) {
        Ok(ps) => ps,
        Err((step, errno)) => {
            say!("event=logs-check error={step} errno={errno}");
            return 1;
        }
    };
    let init = ps.lines().find(|l| field(l, "name") == Some("cairn-init")).unwrap_or("");
    say!(
        "event=init-memory rss={} hwm={}",
        V(field(init, "memory").unwrap_or("-")),
        V(field(init, "memory_peak").unwrap_or("-"))
    );
    let (first, lines) = match stream(path, &format!("logs {name}")) {
        Ok(x) => x,
        Err((step, errno)) => {
            say!("event=logs error={step} errno={errno}");
            return 1;
        }
    };
    let lost: u64 =
        lines.iter().filter_map(|l| l.strip_prefix("cairn/1 lost ")).filter_map(|n| n.parse::<u64>().ok()).sum();
    let text: Vec<&String> = lines.iter().filter(|l| !l.starts_with("cairn/1 ")).collect();
    let t_of = |l: &str| l.split(' ').next().unwrap_or("").to_owned();
    let strip = |l: &str| l.split_once(' ').map_or(String::new(), |(_, r)| r.chars().take(60).collect());
    say!(
        "event=logs reply={} lines={} lost={lost} first_t={} last={} before_last={}",
        V(&first),
        text.len(),
        V(&text.first().map(|l| t_of(l)).unwrap_or_default()),
        V(&text.last().map(|l| strip(l)).unwrap_or_default()),
        V(&text.len().checked_sub(2).and_then(|k| text.get(k)).map(|l| strip(l)).unwrap_or_default())
    );
    let since = text.get(text.len() / 2).map(|l| t_of(l)).unwrap_or_default();
    let ms = |t: &str| -> u64 {
        let (s, f) = t.split_once('.').unwrap_or((t, "0"));
        s.parse::<u64>().unwrap_or(0) * 1000 + f.parse::<u64>().unwrap_or(0)
    };
    match stream(path, &format!("logs {name} --since {since}")) {
        Ok((first, lines)) => {
            let text: Vec<&String> = lines.iter().filter(|l| !l.starts_with("cairn/1 ")).collect();
            let older = text.iter().filter(|l| ms(&t_of(l)) < ms(&since)).count();
            say!("event=logs-since reply={} since={} lines={} older={older}", V(&first), V(&since), text.len());
        }
        Err((step, errno)) => say!("event=logs-since error={step} errno={errno}"),
    }
    match stream(path, "logs @kernel") {
        Ok((first, lines)) => {
            let linux = lines.iter().any(|l| l.contains(" Linux version "));
            say!("event=kernel-log reply={} lines={} linux={}", V(&first), lines.len(), u8::from(linux));
        }
        Err((step, errno)) => say!("event=kernel-log error={step} errno={errno}"),
    }
    for other in after {
        if let Err((step, errno)) = wait_stopped(path, other) {
            say!("event=logs-check error={step} errno={errno}");
            return 1;
        }
    }
    run_each(0, &["poweroff".to_owned()])
}

/// Asks `ps` every 200 ms, up to 600 times, until it shows `name`
/// stopped; the last `ps` reply.
fn wait_stopped(path: &[u8], name: &str) -> Result<String, (&'static str, i32)> {
    let mut ps = String::new();
    for _ in 0..600 {
        ps = String::from_utf8_lossy(&exchange(path, b"ps")?).into_owned();
        if ps.lines().any(|l| field(l, "name") == Some(name) && field(l, "state") == Some("stopped")) {
            break;
        }
        sys::sleep_ms(200);
    }
    Ok(ps)
}

/// `flood <mib>`: writes `mib` MiB of 100-byte lines `flood N xxx...` to
/// stdout as fast as it can (64 KiB writes), then
/// `event=flood-done lines=N bytes=B`; exit 0.
pub fn flood(mib: u64) -> i32 {
    let total = mib * 1024 * 1024;
    let (mut written, mut n) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(64 * 1024 + 128);
    while written < total {
        buf.clear();
        while buf.len() < 64 * 1024 {
            let mut line = format!("flood {n:08} ");
            line.extend(std::iter::repeat_n('x', 99 - line.len()));
            line.push('\n');
            buf.extend_from_slice(line.as_bytes());
            n += 1;
        }
        sys::write_all(1, &buf);
        written += buf.len() as u64;
    }
    say!("event=flood-done lines={n} bytes={written}");
    0
}

/// `ctl-hold <seconds> <request>...`: sends the request (a stream), prints
/// `event=hold reply=R`, reads nothing for `seconds`, then reads what is
/// there until the connection ends: `event=hold-done messages=N end=<eof|errno>`.
pub fn hold(seconds: u64, words: &[String]) -> i32 {
    let path = std::env::var_os("CAIRN_CONTROL").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let mut full = VERSION.to_vec();
    full.extend_from_slice(words.join(" ").as_bytes());
    let (fd, first) = match exchange_raw(path.as_bytes(), &full) {
        Ok(x) => x,
        Err((step, errno)) => {
            say!("event=hold error={step} errno={errno}");
            return 1;
        }
    };
    say!("event=hold reply={}", V(&String::from_utf8_lossy(&first)));
    sys::sleep_ms(seconds * 1000);
    let mut messages = 0u64;
    let end = loop {
        match recv(&fd) {
            Ok(m) if m.is_empty() => break "eof".to_owned(),
            Ok(_) => messages += 1,
            Err((_, errno)) => break errno.to_string(),
        }
    };
    say!("event=hold-done messages={messages} end={end}");
    0
}
