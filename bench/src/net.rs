//! TCP throughput through cairn's container networks (issue 16's
//! measurement), `cairn.bench.mode=net`: a sink and a source container,
//! started with the runtime as cairn-init starts them, move
//! `cairn.bench.mib` MiB over one connection; the sink times it from the
//! accept to the end of the stream. Three paths, interleaved:
//!
//! - `host`: both containers in the guest's own namespace (`network =
//!   "host"`), over loopback: what host networking gives;
//! - `bridge`: container to container on one bridge (two veth pairs);
//! - `to-device`: a container to a listener in the guest's own namespace,
//!   through its veth pair to the bridge's `.1` (a network with egress).
//!
//! The bench guest has no firewall (cairn-init's table holds no per-packet
//! rule on these paths but conntrack; see docs/bench.md).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cairn_runtime::seccomp::Filter;
use cairn_runtime::spawn::{self as spawning, Setup};
use cairn_runtime::spec::{ContainerSpec, NetAttach, Network};
use cairn_runtime::{sys, Cgroup};

use crate::{err, wait, Res};

/// The port the sink listens on.
const PORT: u16 = 5001;
/// Bytes per read and write.
const CHUNK: usize = 256 * 1024;

/// `cairn-bench tcp-sink PORT`: listen, say `listening`, take one
/// connection to its end, say `bytes=N us=T` (accept to EOF), exit.
pub fn sink(port: u16) -> i32 {
    let l = match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
        Ok(l) => l,
        Err(e) => {
            println!("error bind {e}");
            return 1;
        }
    };
    println!("listening");
    let _ = std::io::stdout().flush();
    let Ok((mut s, _)) = l.accept() else {
        println!("error accept");
        return 1;
    };
    let t0 = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                println!("error read {e}");
                return 1;
            }
        }
    }
    println!("bytes={bytes} us={}", t0.elapsed().as_micros());
    0
}

/// `cairn-bench tcp-source ADDR PORT MIB`: connect (retrying while
/// refused, up to 5 s) and send `MIB` MiB of zeros.
pub fn source(addr: &str, port: u16, mib: u64) -> i32 {
    let Ok(ip) = addr.parse::<Ipv4Addr>() else { return 2 };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match TcpStream::connect(SocketAddrV4::new(ip, port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                println!("error connect {e}");
                return 1;
            }
        }
    };
    let buf = vec![0u8; CHUNK];
    let mut left = mib << 20;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        if let Err(e) = s.write_all(buf.get(..n).unwrap_or_default()) {
            println!("error write {e}");
            return 1;
        }
        left -= n as u64;
    }
    0
}

/// One path: the sink's and the source's specs, and where the source connects.
struct Path {
    name: &'static str,
    sink: ContainerSpec,
    source: ContainerSpec,
}

fn attach(last: u8, gateway: bool) -> NetAttach {
    NetAttach {
        bridge: "cairn-br0".into(),
        iface: "eth0".into(),
        address: [10, 89, 3, last],
        prefix: 24,
        gateway: gateway.then_some([10, 89, 3, 1]),
    }
}

fn paths(base: &ContainerSpec, mib: u64) -> Res<Vec<Path>> {
    let argv = |words: &[&str]| -> Res<Vec<std::ffi::CString>> {
        words.iter().map(|w| std::ffi::CString::new(*w).map_err(err)).collect()
    };
    let port = PORT.to_string();
    let mib = mib.to_string();
    let spec = |name: &str, words: &[&str], network: Network, nets: Vec<NetAttach>| -> Res<ContainerSpec> {
        let mut s = base.clone();
        s.name = name.into();
        s.hostname = name.into();
        s.argv = argv(words)?;
        s.network = network;
        s.networks = nets;
        Ok(s)
    };
    let sink = |network, nets| spec("sink", &["/bin/cairn-bench", "tcp-sink", &port], network, nets);
    let source =
        |to: &str, network, nets| spec("source", &["/bin/cairn-bench", "tcp-source", to, &port, &mib], network, nets);
    Ok(vec![
        Path { name: "host", sink: sink(Network::Host, vec![])?, source: source("127.0.0.1", Network::Host, vec![])? },
        Path {
            name: "bridge",
            sink: sink(Network::None, vec![attach(2, false)])?,
            source: source("10.89.3.2", Network::None, vec![attach(3, false)])?,
        },
        Path {
            name: "to-device",
            sink: sink(Network::Host, vec![])?,
            source: source("10.89.3.1", Network::None, vec![attach(3, true)])?,
        },
    ])
}

/// The guest's net mode: `n` transfers of `mib` MiB per path, interleaved,
/// each a `bench-sample PATH mibps VALUE` line.
pub fn run(base: &ContainerSpec, n: usize, mib: u64) -> Res<()> {
    // The containers run this very program.
    std::fs::copy("/proc/self/exe", format!("{}/bin/cairn-bench", crate::ROOTFS)).map_err(err)?;
    crate::bridge_up().map_err(err)?;
    // The device's loopback, as cairn-init leaves it (host networking).
    cairn_runtime::network::loopback_up().map_err(err)?;
    let paths = paths(base, mib)?;
    // The filter cairn-init would load for these containers.
    let filter = spawning::seccomp_filter(base).map_err(err)?;
    println!("bench-info n={n} mib={mib} paths={}", paths.iter().map(|p| p.name).collect::<Vec<_>>().join(","));
    for round in 0..=n {
        for p in &paths {
            match transfer(p, filter.as_ref()) {
                Ok((bytes, us)) if round > 0 => {
                    let mibps = bytes as f64 / f64::from(1u32 << 20) / (us as f64 / 1e6);
                    println!("bench-sample {} mibps {mibps:.1}", p.name);
                }
                Ok(_) => println!("bench-warmup {} ok", p.name),
                Err(e) => println!("bench-error {} round={round} {e}", p.name),
            }
        }
    }
    Ok(())
}

/// A started container: its init and its output pipe.
struct Running {
    pid: libc::pid_t,
    output: OwnedFd,
    cgroup: Cgroup,
}

fn start(spec: &ContainerSpec, filter: Option<&Filter>) -> Res<Running> {
    let cgroup = Cgroup::for_container(&spec.name);
    let started = cairn_runtime::spawn(spec, filter, &cgroup, &mut cairn_runtime::Ahead::new(), None).map_err(err)?;
    let mut pfd = libc::pollfd { fd: started.report.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 10_000) } <= 0 && sys::errno() != libc::EINTR {
            return Err(format!("{}: no report", spec.name));
        }
        match spawning::poll_report(&started.report) {
            Setup::Pending => continue,
            Setup::Done => break,
            Setup::ExecFailed(e) => return Err(format!("{}: exec failed: {}", spec.name, sys::errno_name(e))),
            Setup::Failed(e) => return Err(format!("{}: setup failed: {e}", spec.name)),
        }
    }
    let output = started.output.ok_or("no output pipe")?;
    Ok(Running { pid: started.pid, output, cgroup })
}

/// read(2) of a non-blocking pipe: bytes read, 0 at its end, -1 (EAGAIN)
/// when nothing waits.
fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> isize {
    // SAFETY: the pointer and length describe `buf`; the descriptor is open.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
}

/// Read `r`'s output until it holds `want` or `ms` passed.
fn read_until(r: &Running, out: &mut String, want: &str, ms: i32) -> Res<()> {
    let end = Instant::now() + Duration::from_millis(ms as u64);
    let mut buf = [0u8; 512];
    while !out.contains(want) {
        let left = end.saturating_duration_since(Instant::now()).as_millis() as i32;
        if left == 0 {
            return Err(format!("no {want:?} (output {out:?})"));
        }
        let mut pfd = libc::pollfd { fd: r.output.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left) };
        match read_some(&r.output, &mut buf) {
            0 => return Err(format!("output ended without {want:?} ({out:?})")),
            n if n > 0 => out.push_str(&String::from_utf8_lossy(buf.get(..n as usize).unwrap_or_default())),
            _ => {}
        }
    }
    Ok(())
}

/// Reap `r`'s init, take the rest of its output, remove its cgroup.
fn finish(r: &Running, out: &mut String) -> Res<i32> {
    let status = wait(r.pid)?;
    let mut buf = [0u8; 512];
    loop {
        let n = read_some(&r.output, &mut buf);
        if n <= 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(buf.get(..n as usize).unwrap_or_default()));
    }
    for _ in 0..100 {
        match r.cgroup.remove() {
            Err(e) if e.errno == libc::EBUSY => std::thread::sleep(Duration::from_millis(1)),
            other => {
                other.map_err(err)?;
                break;
            }
        }
    }
    Ok(status)
}

/// One transfer on path `p`: (bytes, µs) as the sink measured them.
fn transfer(p: &Path, filter: Option<&Filter>) -> Res<(u64, u64)> {
    let sink = start(&p.sink, filter)?;
    let mut out = String::new();
    if let Err(e) = read_until(&sink, &mut out, "listening", 10_000) {
        let _ = sys::kill(sink.pid, libc::SIGKILL);
        let _ = finish(&sink, &mut out);
        return Err(format!("sink: {e}"));
    }
    let source = match start(&p.source, filter) {
        Ok(s) => s,
        Err(e) => {
            let _ = sys::kill(sink.pid, libc::SIGKILL);
            let _ = finish(&sink, &mut out);
            return Err(e);
        }
    };
    let mut said = String::new();
    let source_status = finish(&source, &mut said)?;
    // The sink ends with the stream; a source that never connected leaves
    // it waiting: it is killed.
    let read = read_until(&sink, &mut out, " us=", 60_000);
    if read.is_err() {
        let _ = sys::kill(sink.pid, libc::SIGKILL);
    }
    let sink_status = finish(&sink, &mut out)?;
    if source_status != 0 {
        return Err(format!("source exited {source_status:#x}: {said:?}"));
    }
    read?;
    if sink_status != 0 {
        return Err(format!("sink exited {sink_status:#x}: {out:?}"));
    }
    let field = |k: &str| -> Option<u64> {
        out.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.trim().parse().ok())
    };
    match (field("bytes="), field("us=")) {
        (Some(b), Some(us)) if us > 0 => Ok((b, us)),
        _ => Err(format!("sink said {out:?}")),
    }
}
