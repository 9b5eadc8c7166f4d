//! The socket side of a client: connect, send a request (with a
//! descriptor), read messages. Shared by `cairn-ctl` and `cairn-agent`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Largest message read.
pub const MESSAGE_MAX: usize = 64 * 1024;

/// The current errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The file `update` passes, opened read-only.
pub fn open_passed(path: &str) -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open(path)?.into())
}

/// Send the request, with `passed`'s descriptor (`SCM_RIGHTS`) if any.
/// Returns what `sendmsg` returned.
pub fn send_request(fd: &OwnedFd, request: &str, passed: Option<&OwnedFd>) -> isize {
    let raw: Vec<i32> = passed.iter().map(|p| p.as_raw_fd()).collect();
    send_with(fd, request.as_bytes(), &raw)
}

/// Most descriptors one message carries (`exec`'s stdin, stdout, stderr).
pub const PASS_MAX: usize = 3;

/// Send one message with `fds` (`SCM_RIGHTS`, at most [`PASS_MAX`]; none:
/// no control message). Returns what `sendmsg` returned.
pub fn send_with(fd: &OwnedFd, message: &[u8], fds: &[i32]) -> isize {
    let mut iov = libc::iovec { iov_base: message.as_ptr().cast_mut().cast(), iov_len: message.len() };
    // Room for one control message of PASS_MAX descriptors, aligned as
    // cmsghdr wants.
    let mut space = [0u64; 5];
    let fds = fds.get(..fds.len().min(PASS_MAX)).unwrap_or(&[]);
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        // SAFETY: CMSG_SPACE computes a size from its argument.
        let len = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = len.min(std::mem::size_of_val(&space)) as _;
        // SAFETY: msg_control points at `space`, large enough for one
        // cmsghdr with PASS_MAX ints (CMSG_SPACE(12) is 32 bytes on 64-bit
        // targets, `space` 40); CMSG_FIRSTHDR returns a pointer inside it,
        // and CMSG_DATA one past its header.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            if c.is_null() {
                return -1;
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
        }
    }
    // SAFETY: `msg` points at `iov` (the live message) and, if set, at
    // `space`; both outlive the call.
    unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) }
}

pub fn connect(path: &str) -> Result<OwnedFd, (&'static str, i32)> {
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
pub fn recv(fd: &OwnedFd) -> Option<String> {
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
