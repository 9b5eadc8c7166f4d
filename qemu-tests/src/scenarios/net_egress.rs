//! `net-egress` (issue 16 item 3), egress and published ports in one boot:
//! the firewall PID 1 makes over nf_tables for a manifest with a network
//! with egress. A container on `out` fetches from the harness's HTTP
//! server (127.0.0.1 on the host, 10.0.2.2 from the guest) through the
//! device's masquerade; the harness connects to 127.0.0.1:P (QEMU's
//! `hostfwd`, bound to loopback) and reaches web through the device's
//! published TCP port 18080 (DNAT), and dns through UDP 15353. What must not work, each probed while its
//! target listens: a container on an internal network reaching out (no
//! route: ENETUNREACH), a container on another network with egress
//! reaching web (forward drop: ETIMEDOUT), and containers reaching the
//! device's own service through the device's side of their bridge or its
//! uplink address (input drop: ETIMEDOUT), which the harness itself
//! reaches through the uplink; and a host-network container with
//! CAP_NET_ADMIN deleting table `cairn` (EPERM: PID 1's socket owns it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{powered_off, BOOT_TIMEOUT};
use crate::console::Console;
use crate::http::Server;
use crate::qemu::BootOptions;
use crate::Ctx;

/// A free port of 127.0.0.1 (bound, read, released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free UDP port of 127.0.0.1.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Send `hello` to 127.0.0.1:`port` over UDP until an answer comes (up
/// to 30 s: a datagram sent before the guest is ready is lost).
fn exchange_udp(port: u16) -> String {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else { return "no socket".into() };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 16];
    while Instant::now() < deadline {
        let _ = sock.send_to(b"hello", ("127.0.0.1", port));
        if let Ok(n) = sock.recv(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    "no answer".into()
}

/// Connect to 127.0.0.1:`port`, send `hello`, read the answer; retried
/// for up to 30 s (QEMU accepts at once and closes if the guest does not
/// answer yet). Only ever the host's loopback. Each failed attempt is
/// told to `tried` (for the failure message).
fn exchange(port: u16, tried: &dyn Fn(String)) -> String {
    let begun = Instant::now();
    let deadline = begun + Duration::from_secs(30);
    let mut last = String::from("never tried");
    while Instant::now() < deadline {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hello")?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        match got {
            Ok(r) if !r.is_empty() => return r,
            Ok(_) => last = "closed without an answer".into(),
            Err(e) => last = e.to_string(),
        }
        tried(format!("{last} after {:.1}s", begun.elapsed().as_secs_f64()));
        std::thread::sleep(Duration::from_millis(300));
    }
    format!("no answer: {last}")
}

/// What the harness serves `fetch`.
const BODY: &[u8] = b"hello from the harness\n";

pub fn run(ctx: &Ctx) -> Result<()> {
    let body = ctx.dir.join("hello.txt");
    std::fs::write(&body, BODY)?;
    let server = Server::start(body, Vec::new())?;
    let (web_port, dev_port, dns_port) = (free_port()?, free_port()?, free_udp_port()?);
    let apps = crate::appliances_dir();
    let toml = std::fs::read_to_string(apps.join("net-egress.toml"))?
        .replace("\"../../images/examples/base\"", &format!("{:?}", apps.join("../../images/examples/base")))
        .replace("HTTP_PORT", &server.port.to_string());
    let path = ctx.dir.join("net-egress.toml");
    std::fs::write(&path, toml)?;
    let app = cairn_build::assemble::build_appliance(
        &path,
        &ctx.art.build_sources(),
        &ctx.art.key,
        &ctx.layers_dir("net-egress"),
    )
    .with_context(|| format!("building {}", path.display()))?;
    let (disk, _) = ctx.disk(&app, "disk.img")?;

    // Once the uplink is up and a listener is, the harness connects to it
    // (from a thread: the console keeps being read meanwhile).
    let replies: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    // Failed attempts, for the failure message.
    let attempts: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let started: Mutex<Vec<&'static str>> = Mutex::default();
    let watch = |c: &Console| {
        let up = c.first("net-up", &[("iface", "eth0")]).is_some();
        for (name, port, udp) in [("web", web_port, false), ("devsvc", dev_port, false), ("dns", dns_port, true)] {
            let Ok(mut s) = started.lock() else { continue };
            let listening = if udp { "net-udp-listening" } else { "net-listening" };
            if up && !s.contains(&name) && c.first(listening, &[("name", name)]).is_some() {
                s.push(name);
                let r = replies.clone();
                let a = attempts.clone();
                std::thread::spawn(move || {
                    let tried = |what: String| {
                        if let Ok(mut v) = a.lock() {
                            v.push((name, what));
                        }
                    };
                    let reply = if udp { exchange_udp(port) } else { exchange(port, &tried) };
                    if let Ok(mut v) = r.lock() {
                        v.push((name, reply));
                    }
                });
            }
        }
        false
    };
    let fwd = [("tcp", web_port, 18080), ("tcp", dev_port, 7070), ("udp", dns_port, 15353)];
    let opts = BootOptions { net: true, hostfwd: &fwd, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "console.log", BOOT_TIMEOUT, &watch)?;
    powered_off(&run)?;
    let c = &run.console;

    // The firewall, only the egress networks with the device's address.
    let fw = c.expect("network.firewall", &[("table", "cairn")])?;
    ensure!(fw.get("published") == Some("2"), "{:?}", fw.fields);
    eprintln!("net-egress: firewall {:?}", fw.fields);
    let out = c.expect("network.ready", &[("name", "out"), ("bridge", "cairn-br0"), ("egress", "10.89.3.1/24")])?;
    // The bridge keeps its own address with containers' pairs on it (the
    // kernel would give it the lowest port's, gone when that one stops).
    ensure!(out.get("mac") == Some("02:ca:0a:59:03:01"), "{:?}", out.fields);
    let mac = c.expect("cat", &[("name", "bridge-mac"), ("path", "/sys/class/net/cairn-br0/address")])?;
    ensure!(mac.get("value") == out.get("mac"), "cairn-br0 with its ports: {:?}", mac.fields);
    c.expect("network.ready", &[("name", "other"), ("bridge", "cairn-br1"), ("egress", "10.89.4.1/24")])?;
    let inner = c.expect("network.ready", &[("name", "inner"), ("bridge", "cairn-br2")])?;
    ensure!(inner.get("egress").is_none(), "an internal network got an address: {:?}", inner.fields);
    c.expect("network.publish", &[("container", "web"), ("port", "18080/tcp"), ("to", "10.89.3.10:8080")])?;
    c.expect("network.publish", &[("container", "dns"), ("port", "15353/udp")])?;
    for m in ["nf_tables.ko", "nf_nat.ko", "nft_masq.ko"] {
        c.expect("module.loaded", &[("name", m)])?;
    }

    // Egress: the harness served fetch, through the masquerade. A failed
    // attempt is retried (the uplink may come up after fetch starts): one
    // request served per attempt at most, each in full, and no request
    // from anyone else.
    let failed: Vec<_> = c.all("net-get-failed", &[("name", "fetch")]).iter().map(|l| &l.fields).collect();
    let got =
        c.expect("net-get", &[("name", "fetch")]).with_context(|| format!("fetch's failed attempts: {failed:?}"))?;
    ensure!(got.get("result") == Some("ok") && got.get("status") == Some("200"), "fetch: {:?}", got.fields);
    let tries = got.num("attempts").unwrap_or(0);
    let served = server.served();
    let whole = |s: &crate::http::Served| s.from == 0 && s.sent == BODY.len() as u64 && !s.dropped;
    ensure!(
        !served.is_empty() && served.len() as i64 <= tries && served.iter().all(whole),
        "the harness served {served:?} for fetch's {tries} attempts"
    );

    // Published: the harness reached web through the device's port.
    let replies = replies.lock().map(|v| v.clone()).unwrap_or_default();
    let reply = |name: &str| replies.iter().find(|(n, _)| *n == name).map(|(_, r)| r.clone());
    let tried = |name: &str| -> Vec<String> {
        let v = attempts.lock().map(|v| v.clone()).unwrap_or_default();
        v.into_iter().filter(|(n, _)| *n == name).map(|(_, w)| w).collect()
    };
    ensure!(
        reply("web").as_deref() == Some("pong"),
        "harness -> 18080 -> web: {:?} (failed attempts: {:?})",
        reply("web"),
        tried("web")
    );
    c.expect("net-accepted", &[("name", "web"), ("msg", "hello")])?;
    ensure!(reply("dns").as_deref() == Some("pong"), "harness -> udp 15353 -> dns: {:?}", reply("dns"));
    c.expect("net-udp-got", &[("name", "dns"), ("msg", "hello")])?;
    // The device's own service answers the harness over the uplink.
    ensure!(
        reply("devsvc").as_deref() == Some("pong"),
        "harness -> device:7070: {:?} (failed attempts: {:?})",
        reply("devsvc"),
        tried("devsvc")
    );
    c.expect("net-accepted", &[("name", "devsvc"), ("msg", "hello")])?;

    // The table is PID 1's: not even CAP_NET_ADMIN in its namespace may
    // delete it.
    let meddled = c.expect("nft-delete", &[("name", "meddler"), ("table", "cairn")])?;
    ensure!(meddled.get("result") == Some("EPERM"), "a container deleted the firewall: {:?}", meddled.fields);

    // What must not work, each while its target listened.
    let probe = |name: &str, last: &str, target: &str| -> Result<()> {
        let p = c.expect("net-probe", &[("name", name)])?;
        ensure!(
            p.num("attempts").unwrap_or(0) > 0 && p.num("connected") == Some(0) && p.get("last") == Some(last),
            "{name}: want every attempt to fail with {last}: {:?}",
            p.fields
        );
        let listening = c.expect("net-listening", &[("name", target)])?;
        let done = c.expect("net-serve-done", &[("name", target)])?;
        ensure!(listening.index < p.index && p.index < done.index, "{name} did not probe while {target} listened");
        Ok(())
    };
    // sealed probes the harness's port: no route out of an internal network.
    let sealed = c.expect("net-probe", &[("name", "sealed")])?;
    ensure!(
        sealed.num("connected") == Some(0) && sealed.get("last") == Some("ENETUNREACH"),
        "an internal network reached out: {:?}",
        sealed.fields
    );
    probe("neighbour", "ETIMEDOUT", "web")?;
    probe("nosy", "ETIMEDOUT", "devsvc")?;
    probe("nosy-uplink", "ETIMEDOUT", "devsvc")?;
    for name in ["fetch", "web", "dns", "devsvc", "sealed", "neighbour", "nosy", "nosy-uplink"] {
        let e = c.expect("container.exited", &[("name", name)])?;
        ensure!(e.get("code") == Some("0"), "{name} exited {:?}", e.fields);
    }
    Ok(())
}
