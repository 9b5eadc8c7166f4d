//! `console-abuse` scenario: a container abusing its stdout and the console,
//! and one abusing the control socket.
//!
//! - `console-abuse <mib>`: `event=console-open errno=E err=N` (opening
//!   `/dev/console` must fail; if it opens, it is stopped with TCOOFF, the
//!   attack itself), `event=console-tcooff errno=E err=N` (TCXONC TCOOFF on
//!   stdout), then a forged event line and a line with a raw CR, then stdout
//!   made O_NONBLOCK (`event=console-nonblock rc=R`) and `mib` MiB of lines
//!   written (EAGAIN waits in poll), then blocking again and 1.5 s later:
//!   `event=console-flood-done mib=M lines=L eagain=K`; exit 0.
//! - `control-abuse <idle> <target> <count>`: opens `idle` non-blocking
//!   connections that send nothing (`event=control-idle connected=C refused=R err=N`),
//!   waits 2.5 s and counts the idle ones PID 1 closed
//!   (`event=control-idle-closed closed=K of=C`), sends
//!   `signal <target> 28,...` (`count` times SIGWINCH) on a fresh one and
//!   times the reply (`event=control-signal reply=Y elapsed_ms=T`); then passes an O_PATH fd of
//!   the socket over the abstract socket `@cairn-abuse` (network shared with
//!   a `control-borrow` container) and sleeps forever.
//! - `control-borrow <request>`: receives that fd, connects through
//!   `/proc/self/fd/N` (so PID 1 sees this container as the peer) and sends
//!   the request: `event=control-borrow reply=Y` or `error=STEP errno=E`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::out::V;
use crate::sys::{self, Errno};
use crate::{ctl, say};

const ABSTRACT: &[u8] = b"\0cairn-abuse";

pub fn console(mib: u64) -> i32 {
    match sys::open_str("/dev/console", libc::O_WRONLY | libc::O_NOCTTY) {
        Ok(fd) => {
            // The attack: stop the device console's output.
            // SAFETY: ioctl with an integer argument on our own fd.
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCXONC as _, libc::TCOOFF) };
            say!("event=console-open errno=0 err=- result=ALLOWED");
        }
        Err(e) => say!("event=console-open errno={e} err={}", Errno(e)),
    }
    // SAFETY: as above, on stdout.
    let rc = unsafe { libc::ioctl(1, libc::TCXONC as _, libc::TCOOFF) };
    let e = if rc == 0 { 0 } else { sys::errno() };
    say!("event=console-tcooff errno={e} err={}", Errno(e));
    sys::write_all(1, b"cairn: t=0.001 event=forged-event kind=poweroff\n");
    sys::write_all(1, b"junk\rcairn: t=0.002 event=forged-cr kind=poweroff\n");
    // SAFETY: fcntl on stdout.
    let rc = unsafe { libc::fcntl(1, libc::F_SETFL, libc::fcntl(1, libc::F_GETFL) | libc::O_NONBLOCK) };
    say!("event=console-nonblock rc={rc}");
    let mut line = [b'x'; 100];
    if let Some(last) = line.last_mut() {
        *last = b'\n';
    }
    let total = mib * 1024 * 1024;
    let (mut written, mut lines, mut eagain) = (0u64, 0u64, 0u64);
    while written < total {
        let tag = format!("flood {lines:08} ");
        if let Some(head) = line.get_mut(..tag.len()) {
            head.copy_from_slice(tag.as_bytes());
        }
        let mut buf: &[u8] = &line;
        while !buf.is_empty() {
            match sys::write_once(1, buf) {
                Ok(n) => buf = buf.get(n..).unwrap_or(&[]),
                Err(libc::EAGAIN) => {
                    eagain += 1;
                    let mut p = libc::pollfd { fd: 1, events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 1000) };
                }
                Err(_) => return 1,
            }
        }
        written += line.len() as u64;
        lines += 1;
    }
    // SAFETY: fcntl on stdout.
    unsafe { libc::fcntl(1, libc::F_SETFL, libc::fcntl(1, libc::F_GETFL) & !libc::O_NONBLOCK) };
    // The tail of the flood may still fill this container's share of the
    // console ring (a line that does not fit is dropped): let it drain.
    sys::sleep_ms(1500);
    say!("event=console-flood-done mib={mib} lines={lines} eagain={eagain}");
    0
}

fn socket(flags: i32) -> Result<OwnedFd, i32> {
    // SAFETY: socket takes plain integers.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | flags, 0) };
    if raw < 0 {
        return Err(sys::errno());
    }
    // SAFETY: fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn addr(path: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: plain data; zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in a.sun_path.iter_mut().zip(path) {
        *d = s as libc::c_char;
    }
    let nul = usize::from(path.first() != Some(&0));
    ((a), (std::mem::size_of::<libc::sa_family_t>() + path.len().min(107) + nul) as libc::socklen_t)
}

fn connect(fd: &OwnedFd, path: &[u8]) -> Result<(), i32> {
    let (a, len) = addr(path);
    // SAFETY: `a` is an initialised sockaddr_un of at least `len` bytes.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const a).cast(), len) } == 0 {
        Ok(())
    } else {
        Err(sys::errno())
    }
}

pub fn control(idle: u32, target: &str, count: u32) -> i32 {
    let path = ctl::DEFAULT_PATH.as_bytes();
    let mut held = Vec::new();
    let (mut refused, mut err) = (0, 0);
    for _ in 0..idle {
        match socket(libc::SOCK_NONBLOCK).and_then(|s| connect(&s, path).map(|()| s)) {
            Ok(s) => held.push(s),
            Err(e) => {
                refused += 1;
                err = e;
            }
        }
    }
    say!("event=control-idle connected={} refused={refused} err={}", held.len(), Errno(err));
    sys::sleep_ms(2500);
    let closed = held
        .iter()
        .filter(|s| {
            let mut b = [0u8; 8];
            // SAFETY: `b` is writable for its length.
            let n = unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
            n == 0
        })
        .count();
    say!("event=control-idle-closed closed={closed} of={}", held.len());
    let list = vec!["28"; count as usize].join(",");
    let t0 = Instant::now();
    let reply = ctl::exchange(path, format!("signal {target} {list}").as_bytes());
    let ms = t0.elapsed().as_millis();
    match reply {
        Ok(r) => say!("event=control-signal reply={} elapsed_ms={ms}", V(String::from_utf8_lossy(&r).trim())),
        Err((step, e)) => say!("event=control-signal error={step} errno={e} elapsed_ms={ms}"),
    }
    drop(held);
    lend()
}

/// Serve an O_PATH fd of the control socket to whoever connects to `@cairn-abuse`.
fn lend() -> i32 {
    let Ok(sock) = sys::open_str(ctl::DEFAULT_PATH, libc::O_PATH) else {
        say!("event=control-lend error=open errno={}", sys::errno());
        return 1;
    };
    let Ok(l) = socket(0) else { return 1 };
    let (a, len) = addr(ABSTRACT);
    // SAFETY: valid sockaddr_un of `len` bytes; listen on our own socket.
    let bound =
        unsafe { libc::bind(l.as_raw_fd(), (&raw const a).cast(), len) == 0 && libc::listen(l.as_raw_fd(), 4) == 0 };
    if !bound {
        say!("event=control-lend error=bind errno={}", sys::errno());
        return 1;
    }
    say!("event=control-lend ready=1");
    loop {
        // SAFETY: accept on our listening socket.
        let c = unsafe { libc::accept4(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c < 0 {
            continue;
        }
        // SAFETY: fresh fd.
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        send_fd(&c, sock.as_raw_fd());
    }
}

fn send_fd(to: &OwnedFd, fd: i32) {
    let mut byte = [b'f'];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; the control buffer is large enough for
    // one int of SCM_RIGHTS (CMSG_SPACE(4) <= 64 bytes).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        libc::sendmsg(to.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
    }
}

fn recv_fd(from: &OwnedFd) -> Result<OwnedFd, i32> {
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    // SAFETY: as in send_fd; the kernel fills at most msg_controllen bytes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        if libc::recvmsg(from.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return Err(sys::errno());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(libc::EBADMSG);
        }
        Ok(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>())))
    }
}

pub fn borrow(request: &str) -> i32 {
    let mut tries = 0;
    let lent = loop {
        tries += 1;
        let got = socket(0).and_then(|s| connect(&s, ABSTRACT).map(|()| s)).and_then(|s| recv_fd(&s));
        match got {
            Ok(fd) => break fd,
            Err(e) if tries >= 100 => {
                say!("event=control-borrow error=borrow errno={e} err={}", Errno(e));
                return 1;
            }
            Err(_) => sys::sleep_ms(200),
        }
    };
    let path = format!("/proc/self/fd/{}", lent.as_raw_fd());
    match ctl::exchange(path.as_bytes(), request.as_bytes()) {
        Ok(r) => {
            say!("event=control-borrow request={} reply={}", V(request), V(String::from_utf8_lossy(&r).trim()));
            0
        }
        Err((step, e)) => {
            say!("event=control-borrow request={} error={step} errno={e} err={}", V(request), Errno(e));
            1
        }
    }
}
