//! Network namespace probes: what a container sees of its network, and
//! TCP on 127.0.0.1 between containers (loopback is per namespace, so only
//! containers sharing one namespace reach each other).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::out::V;
use crate::say;
use crate::sys::{self, Errno};

/// `readlink /proc/self/ns/net`, e.g. `net:[4026531840]`.
fn netns() -> String {
    std::fs::read_link("/proc/self/ns/net").map_or_else(|e| format!("error:{e}"), |p| p.display().to_string())
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(0))
}

/// Is interface `name` up (SIOCGIFFLAGS)? `None` if it cannot be asked.
fn is_up(name: &str) -> Option<bool> {
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().take(libc::IFNAMSIZ - 1).zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the valid ifreq given; fd is ours.
    let (rc, flags) = unsafe {
        let rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        libc::close(fd);
        (rc, req.ifr_ifru.ifru_flags)
    };
    (rc == 0).then_some(flags & libc::IFF_UP as libc::c_short != 0)
}

/// `net-info [fail-first]`: `event=net-info netns=N ifaces=<names from
/// /proc/net/dev, comma separated> lo_up=<0|1|?>`; exit 0, or 1 on the
/// first run (`CAIRN_RESTART_COUNT=0`) with `fail-first`.
pub fn info(fail_first: bool) -> i32 {
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    let ifaces: Vec<&str> = dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    let lo = match is_up("lo") {
        Some(true) => "1",
        Some(false) => "0",
        None => "?",
    };
    say!("event=net-info netns={} ifaces={} lo_up={lo}", V(&netns()), V(&ifaces.join(",")));
    let first_run = std::env::var("CAIRN_RESTART_COUNT").is_ok_and(|n| n == "0");
    i32::from(fail_first && first_run)
}

fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// `host:port` resolved (`/etc/hosts` for a container name), else
/// 127.0.0.1:port for no host.
fn target(host: Option<&str>, port: u16) -> std::io::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    match host {
        None => Ok(local(port).into()),
        Some(h) => (h, port).to_socket_addrs()?.next().ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT)),
    }
}

/// `net-serve <port> <hold_ms>`: listen on 127.0.0.1:port
/// (`event=net-listening port=P netns=N`), accept one connection (at most
/// 60 s), read its message and answer `pong`
/// (`event=net-accepted msg=M`), keep listening hold_ms more, then
/// `event=net-serve-done`; exit 0. Failures: `event=net-serve error=STEP errno=E`, exit 1.
pub fn serve(port: u16, hold_ms: u64, any: bool) -> i32 {
    let at = if any { SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port) } else { local(port) };
    let listener = match TcpListener::bind(at) {
        Ok(l) => l,
        Err(e) => {
            say!("event=net-serve error=bind errno={}", errno_of(&e));
            return 1;
        }
    };
    say!("event=net-listening port={port} netns={}", V(&netns()));
    let _ = listener.set_nonblocking(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => sys::sleep_ms(50),
            Err(e) => {
                say!("event=net-serve error=accept errno={}", errno_of(&e));
                return 1;
            }
        }
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).unwrap_or(0);
    let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned();
    let _ = conn.write_all(b"pong");
    say!("event=net-accepted msg={}", V(msg.trim()));
    drop(conn);
    sys::sleep_ms(hold_ms);
    drop(listener);
    say!("event=net-serve-done");
    0
}

/// `net-connect <port>`: connect to 127.0.0.1:port, retrying every 100 ms
/// for up to 30 s, send `ping`, read the answer:
/// `event=net-connect result=ok reply=R attempts=N netns=NS`, exit 0; or
/// `event=net-connect result=<ENAME> attempts=N netns=NS`, exit 1.
pub fn connect(port: u16, host: Option<&str>) -> i32 {
    let mut attempts = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        attempts += 1;
        match target(host, port).and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2))) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.write_all(b"ping");
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).unwrap_or(0);
                let reply = String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned();
                say!("event=net-connect result=ok reply={} attempts={attempts} netns={}", V(&reply), V(&netns()));
                return 0;
            }
            Err(e) if Instant::now() >= deadline => {
                say!("event=net-connect result={} attempts={attempts} netns={}", errno_of(&e), V(&netns()));
                return 1;
            }
            Err(_) => sys::sleep_ms(100),
        }
    }
}

/// `net-probe <port> <ms>`: try to connect to 127.0.0.1:port every 100 ms
/// for ms milliseconds; then
/// `event=net-probe attempts=N connected=C refused=R last=<ENAME|ok> netns=NS`; exit 0.
pub fn probe(port: u16, ms: u64, host: Option<&str>) -> i32 {
    let (mut attempts, mut connected, mut refused) = (0, 0, 0);
    let mut last = String::from("-");
    let deadline = Instant::now() + Duration::from_millis(ms);
    while attempts == 0 || Instant::now() < deadline {
        attempts += 1;
        match target(host, port).and_then(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500))) {
            Ok(_) => {
                connected += 1;
                last = "ok".into();
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    refused += 1;
                }
                // connect_timeout's own timeout carries no errno.
                last = match e.kind() {
                    std::io::ErrorKind::TimedOut if e.raw_os_error().is_none() => "ETIMEDOUT".into(),
                    _ => errno_of(&e).to_string(),
                };
            }
        }
        sys::sleep_ms(100);
    }
    say!(
        "event=net-probe attempts={attempts} connected={connected} refused={refused} last={last} netns={}",
        V(&netns())
    );
    0
}

/// `net-get <host> <port> <ms>`: `GET /` over HTTP/1.0 from host:port
/// (an address), retrying every 200 ms for up to ms milliseconds (the
/// device's uplink may come up after this container). An attempt waits
/// 1 s to connect and 2 s for the reply, so one that is lost is retried
/// well inside the scenario's time; each failed one is
/// `event=net-get-failed attempt=N error=<ENAME> ms=<since the first>`.
/// `event=net-get result=ok status=<code> bytes=<body bytes> attempts=N`,
/// exit 0; or `event=net-get result=<ENAME> attempts=N`, exit 1.
pub fn get(host: &str, port: u16, ms: u64) -> i32 {
    let Ok(ip) = host.parse::<Ipv4Addr>() else {
        say!("event=net-get result=bad-host attempts=0");
        return 1;
    };
    let at = SocketAddrV4::new(ip, port).into();
    let begun = Instant::now();
    let deadline = begun + Duration::from_millis(ms);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let got = TcpStream::connect_timeout(&at, Duration::from_millis(1000)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
            let mut all = Vec::new();
            s.read_to_end(&mut all)?;
            Ok(all)
        });
        match got {
            Ok(all) => {
                let text = String::from_utf8_lossy(&all);
                let status = text.split_whitespace().nth(1).unwrap_or("-").to_string();
                let body = text.find("\r\n\r\n").map_or(0, |i| all.len() - i - 4);
                say!("event=net-get result=ok status={} bytes={body} attempts={attempts}", V(&status));
                return 0;
            }
            Err(e) => {
                let name = match e.kind() {
                    std::io::ErrorKind::TimedOut if e.raw_os_error().is_none() => "ETIMEDOUT".to_string(),
                    _ => errno_of(&e).to_string(),
                };
                if Instant::now() >= deadline {
                    say!("event=net-get result={name} attempts={attempts}");
                    return 1;
                }
                // Each failed attempt, for a scenario's failure message.
                let ms = begun.elapsed().as_millis();
                say!("event=net-get-failed attempt={attempts} error={name} ms={ms}");
                sys::sleep_ms(200);
            }
        }
    }
}

/// `net-udp <port> <ms>`: bind UDP 0.0.0.0:port
/// (`event=net-udp-listening port=P`), wait up to ms for one datagram,
/// answer `pong` to its sender: `event=net-udp-got msg=M`, exit 0; or
/// `event=net-udp-got result=<ENAME>`, exit 1.
pub fn udp(port: u16, ms: u64) -> i32 {
    let sock = match std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
        Ok(s) => s,
        Err(e) => {
            say!("event=net-udp-got result={}", errno_of(&e));
            return 1;
        }
    };
    say!("event=net-udp-listening port={port}");
    let _ = sock.set_read_timeout(Some(Duration::from_millis(ms.max(1))));
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            let _ = sock.send_to(b"pong", from);
            let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned();
            say!("event=net-udp-got msg={}", V(msg.trim()));
            0
        }
        Err(e) => {
            say!("event=net-udp-got result={}", errno_of(&e));
            1
        }
    }
}

/// One nfnetlink message: header, nfgenmsg (family, version 0, resource
/// id big-endian), attributes.
fn nfnl(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(1 | flags).to_ne_bytes()); // NLM_F_REQUEST
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0]);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// `nft-delete <table>`: `nft delete table ip TABLE` over nfnetlink, as a
/// container with CAP_NET_ADMIN in the device's namespace could:
/// `event=nft-delete table=T result=<ok|ENAME>`; exit 0.
pub fn nft_delete(table: &str) -> i32 {
    // NFTA_TABLE_NAME, NUL-terminated, padded to 4.
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let mut attr = ((4 + name.len()) as u16).to_ne_bytes().to_vec();
    attr.extend_from_slice(&1u16.to_ne_bytes());
    attr.extend_from_slice(&name);
    attr.resize(attr.len().next_multiple_of(4), 0);
    let mut batch = nfnl(16, 0, 0, 0, 10, &[]); // NFNL_MSG_BATCH_BEGIN, subsystem nf_tables
    batch.extend(nfnl((10 << 8) | 2, 4, 1, 2, 0, &attr)); // NFT_MSG_DELTABLE, ack, ip
    batch.extend(nfnl(17, 0, 2, 0, 10, &[])); // NFNL_MSG_BATCH_END
                                              // SAFETY: socket/send/recv/close take integers and buffers we own.
    let result = unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER);
        if fd < 0 {
            Errno(sys::errno()).to_string()
        } else {
            let sent = libc::send(fd, batch.as_ptr().cast(), batch.len(), 0);
            let mut buf = [0u8; 512];
            let n = if sent < 0 { -1 } else { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let e = sys::errno();
            libc::close(fd);
            match n {
                n if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 => {
                    match -i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]) {
                        0 => "ok".to_string(),
                        err => Errno(err).to_string(),
                    }
                }
                n if n < 0 => Errno(e).to_string(),
                _ => "no-answer".to_string(),
            }
        }
    };
    say!("event=nft-delete table={} result={result}", V(table));
    0
}

/// An `ifreq` for `iface` with `data` at the union (offset 16).
fn ifreq(iface: &str, data: &[u8]) -> [u8; 40] {
    let mut r = [0u8; 40];
    let name = iface.as_bytes();
    let n = name.len().min(15);
    r[..n].copy_from_slice(&name[..n]);
    let d = data.len().min(24);
    r[16..16 + d].copy_from_slice(&data[..d]);
    r
}

/// A `sockaddr_in` for `a` (port 0).
fn sockaddr_in(a: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    s[4..8].copy_from_slice(&a.octets());
    s
}

/// `net-up IFACE ADDR PREFIX`: the address, its netmask, then IFF_UP. The
/// interface may still be probing when the container starts: ENODEV is
/// retried for 5 s.
pub fn up(iface: &str, addr: &str, prefix: u32) -> i32 {
    let Ok(a) = addr.parse::<Ipv4Addr>() else {
        say!("event=net-up-failed step=parse errno=0");
        return 1;
    };
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0));
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        say!("event=net-up-failed step=socket errno={}", sys::errno());
        return 1;
    }
    let ioctl = |req: libc::Ioctl, r: &mut [u8; 40]| {
        // SAFETY: `r` is a 40-byte ifreq, the size the kernel reads and
        // writes for these requests.
        unsafe { libc::ioctl(fd, req, r.as_mut_ptr()) }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let steps: [(&str, libc::Ioctl, [u8; 16]); 2] = [
        ("address", libc::SIOCSIFADDR as libc::Ioctl, sockaddr_in(a)),
        ("netmask", libc::SIOCSIFNETMASK as libc::Ioctl, sockaddr_in(mask)),
    ];
    for (step, req, data) in steps {
        loop {
            let mut r = ifreq(iface, &data);
            if ioctl(req, &mut r) == 0 {
                break;
            }
            let e = sys::errno();
            if e != libc::ENODEV || Instant::now() > deadline {
                say!("event=net-up-failed step={step} errno={e}");
                return 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut r = ifreq(iface, &[]);
    if ioctl(libc::SIOCGIFFLAGS as libc::Ioctl, &mut r) != 0 {
        say!("event=net-up-failed step=get-flags errno={}", sys::errno());
        return 1;
    }
    let flags = i16::from_ne_bytes([r[16], r[17]]) | libc::IFF_UP as i16;
    r[16..18].copy_from_slice(&flags.to_ne_bytes());
    if ioctl(libc::SIOCSIFFLAGS as libc::Ioctl, &mut r) != 0 {
        say!("event=net-up-failed step=up errno={}", sys::errno());
        return 1;
    }
    say!("event=net-up iface={iface} addr={a}/{prefix}");
    0
}

/// `dns-serve ADDR MS`: a name server on UDP port 53 for `MS` ms that
/// answers every A query with `ADDR` and every other query with no record
/// (what a resolver asks for AAAA gets an empty answer, not an error).
/// Each query is an event: `dns-query name= qtype=`.
pub fn dns_serve(answer: &str, ms: u64) -> i32 {
    let Ok(answer) = answer.parse::<Ipv4Addr>() else {
        say!("event=dns-serve error=bad_address");
        return 2;
    };
    let sock = match std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 53)) {
        Ok(s) => s,
        Err(e) => {
            say!("event=dns-serve result={}", errno_of(&e));
            return 1;
        }
    };
    say!("event=dns-serving answer={answer}");
    let end = Instant::now() + Duration::from_millis(ms);
    let mut buf = [0u8; 512];
    while let Some(left) = end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        let _ = sock.set_read_timeout(Some(left));
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let Some((name, qtype, question_end)) = dns_question(buf.get(..n).unwrap_or_default()) else {
            say!("event=dns-query error=malformed bytes={n}");
            continue;
        };
        say!("event=dns-query qname={} qtype={qtype}", V(&name));
        let mut reply = buf.get(..question_end).unwrap_or_default().to_vec();
        let a = qtype == 1;
        // QR, the query's opcode and RD, RA; one question; one answer for A.
        let flags = 0x8080 | (u16::from_be_bytes([buf[2], buf[3]]) & 0x7900);
        reply[2..4].copy_from_slice(&flags.to_be_bytes());
        reply[4..12].copy_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
        if a {
            // The name by pointer to the question, A, IN, TTL 60, 4 bytes.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&answer.octets());
        }
        let _ = sock.send_to(&reply, from);
    }
    0
}

/// The one question of a DNS query: its name (dotted), type, and where it
/// ends.
fn dns_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || msg.get(4..6) != Some(&[0, 1]) {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).into_owned());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    msg.get(at + 3)?;
    Some((labels.join("."), qtype, at + 4))
}

/// `resolve NAME...`: each name through the C library's resolver (musl's
/// getaddrinfo: /etc/hosts, then the servers of /etc/resolv.conf), and
/// the servers that file names.
pub fn resolve(names: &[String]) -> i32 {
    use std::net::ToSocketAddrs;
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = conf.lines().filter_map(|l| l.strip_prefix("nameserver ")).map(str::trim).collect();
    let servers = if servers.is_empty() { "-".to_owned() } else { servers.join(",") };
    let mut failed = 0;
    for name in names {
        match (name.as_str(), 0).to_socket_addrs() {
            Ok(addrs) => {
                let mut v: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                v.dedup();
                say!("event=resolved host={} addrs={} servers={servers}", V(name), v.join(","));
            }
            Err(e) => {
                failed += 1;
                say!("event=resolved host={} error={} servers={servers}", V(name), V(&e.to_string()));
            }
        }
    }
    i32::from(failed > 0)
}

/// `wait-file PATH TEXT MS`: read `PATH` every 50 ms until it holds
/// `TEXT` (`event=file-holds`, exit 0) or `MS` ms passed (`event=file-lacks`
/// with its last contents' lines, exit 1).
pub fn wait_file(path: &str, text: &str, ms: u64) -> i32 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut reads = 0u32;
    loop {
        reads += 1;
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.contains(text) {
            say!("event=file-holds path={} text={} reads={reads}", V(path), V(text));
            return 0;
        }
        if Instant::now() >= end {
            say!("event=file-lacks path={} text={} last={}", V(path), V(text), V(&now.replace('\n', "|")));
            return 1;
        }
        sys::sleep_ms(50);
    }
}
