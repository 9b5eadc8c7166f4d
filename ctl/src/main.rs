//! `cairn-ctl`: a small static client of cairn-init's control socket.
//! Output for people by default, `--json` for scripts. Exit 0 on `ok`, 1
//! on an error reply, 2 on a usage or connection problem.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

mod pty;

use cairn_ctl::{parse_args, ps_json, ps_table, split_reply, stream_line, Command};

/// Largest message read.
const MESSAGE_MAX: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args, std::env::var("CAIRN_CONTROL").ok()) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    std::process::exit(run(&cmd));
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn run(cmd: &Command) -> i32 {
    let fd = match connect(&cmd.socket) {
        Ok(fd) => fd,
        Err((step, e)) => {
            eprintln!("cairn-ctl: {step} {}: {}", cmd.socket, std::io::Error::from_raw_os_error(e));
            return 2;
        }
    };
    // SAFETY: `request` is a live slice; send reads at most its length.
    let sent =
        unsafe { libc::send(fd.as_raw_fd(), cmd.request.as_ptr().cast(), cmd.request.len(), libc::MSG_NOSIGNAL) };
    if sent < 0 {
        eprintln!("cairn-ctl: send: {}", std::io::Error::last_os_error());
        return 2;
    }
    let Some(reply) = recv(&fd) else {
        eprintln!("cairn-ctl: no reply");
        return if cmd.exec { EXEC_FAILED } else { 2 };
    };
    if cmd.exec {
        return exec(&fd, &reply, cmd.tty);
    }
    let body = match split_reply(&reply) {
        Ok(body) => body,
        Err(reason) => {
            if cmd.json {
                println!("{{\"error\":{}}}", cairn_ctl::json_string(&reason));
            } else {
                eprintln!("cairn-ctl: {reason}");
            }
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    if cmd.stream {
        while let Some(msg) = recv(&fd) {
            if msg.is_empty() || msg == "cairn/1 end" {
                break;
            }
            if writeln!(out, "{}", stream_line(&msg, cmd.json)).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
        return 0;
    }
    let text = match (cmd.ps, cmd.json) {
        (true, true) => ps_json(body),
        (true, false) => ps_table(body),
        (false, true) => format!("{{\"ok\":{}}}", cairn_ctl::json_string(body)),
        (false, false) => body.to_owned(),
    };
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    0
}

/// `exec`'s code when the command could not be run (as `docker run`).
const EXEC_FAILED: i32 = 125;

/// After `exec`'s first reply: pass stdin, stdout, stderr (the command
/// writes to them itself), then wait for `exit CODE` and exit with it.
fn exec(fd: &OwnedFd, reply: &str, tty: bool) -> i32 {
    if let Err(reason) = split_reply(reply) {
        eprintln!("cairn-ctl: {reason}");
        return EXEC_FAILED;
    }
    let pty = if tty {
        match pty::open() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("cairn-ctl: opening a pseudo-terminal: {e}");
                return EXEC_FAILED;
            }
        }
    } else {
        None
    };
    let stdio = pty.as_ref().map_or([0, 1, 2], |(_, slave)| [slave.as_raw_fd(); 3]);
    if let Err(e) = send_stdio(fd, stdio) {
        eprintln!("cairn-ctl: sending stdio: {e}");
        return EXEC_FAILED;
    }
    if let Some((master, slave)) = pty {
        // The command holds the slave now; ours would keep the master open.
        drop(slave);
        let raw = pty::Raw::stdin();
        pty::relay(&master, fd);
        drop(raw);
    }
    let Some(end) = recv(fd).filter(|m| !m.is_empty()) else {
        eprintln!("cairn-ctl: connection closed before the command's end");
        return EXEC_FAILED;
    };
    if let Some((code, why)) = cairn_ctl::exec_exit(&end) {
        if !why.is_empty() {
            eprintln!("cairn-ctl: {why}");
        }
        return code;
    }
    match split_reply(&end) {
        Err(reason) => eprintln!("cairn-ctl: {reason}"),
        Ok(_) => eprintln!("cairn-ctl: unexpected reply {end:?}"),
    }
    EXEC_FAILED
}

/// One message `stdio` carrying `fds` (SCM_RIGHTS): the command's 0, 1, 2.
fn send_stdio(fd: &OwnedFd, fds: [libc::c_int; 3]) -> std::io::Result<()> {
    let payload = b"stdio";
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, which has room for one header
    // and three descriptors (CMSG_SPACE above); CMSG_FIRSTHDR is non-null
    // for a control buffer that large, and CMSG_DATA lies inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), std::mem::size_of_val(&fds));
    }
    // SAFETY: `msg` and everything it points at are live for the call.
    if unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn connect(path: &str) -> Result<OwnedFd, (&'static str, i32)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(("path", libc::ENAMETOOLONG));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(("socket", errno()));
    }
    // SAFETY: `raw` is a freshly created fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `addr` is an initialised sockaddr_un and `len` covers the
    // family and the NUL-terminated path inside it.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(("connect", errno()));
    }
    Ok(fd)
}

/// One message (None on error or hang-up).
fn recv(fd: &OwnedFd) -> Option<String> {
    let mut buf = vec![0u8; MESSAGE_MAX];
    loop {
        // SAFETY: `buf` is writable for its full length; recv writes at most that.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            buf.truncate(n.unsigned_abs());
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if errno() != libc::EINTR {
            return None;
        }
    }
}
