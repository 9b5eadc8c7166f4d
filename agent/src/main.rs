//! `cairn-agent URL DIR [--socket PATH] [--max-backoff SECONDS]`: fetch the
//! bundle at URL into DIR (a persistent volume), resuming after every
//! dropped connection, reboot or power cut, then pass it to cairn-init with
//! an `update` request and print what the installer says. Exit 0 once the
//! update is staged (the device then reboots into its trial), 1 when the
//! bundle was refused for good (it is deleted), 2 on a usage error.
//!
//! Lines on stdout: `cairn-agent event=NAME key=value ...`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_agent::{backoff_s, parse_head, parse_url, plan, request, Plan, Url};
use cairn_ctl::client::{connect, open_passed, recv, send_request};
use cairn_ctl::{split_reply, stream_end, DEFAULT_SOCKET};

/// Flush the partial file to the medium at least this often.
const SYNC_EVERY: u64 = 1 << 20;
/// A connection that sends nothing for this long is dropped and retried.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest response head read.
const HEAD_MAX: usize = 16 * 1024;

struct Args {
    url: Url,
    dir: PathBuf,
    socket: String,
    max_backoff: u64,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "cairn-agent {line}").and_then(|()| out.flush());
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cairn-agent: {e}\nusage: cairn-agent URL DIR [--socket PATH] [--max-backoff SECONDS]");
            std::process::exit(2);
        }
    };
    let bundle = args.dir.join("bundle");
    let mut failures = 0u32;
    if !bundle.exists() {
        let mut requests = 0u32;
        loop {
            requests += 1;
            match fetch_once(&args, &mut requests) {
                Ok(true) => break,
                Ok(false) => failures = 0,
                Err(e) => {
                    let wait = backoff_s(failures, args.max_backoff);
                    say(&format!("event=fetch-retry error={e:?} wait_s={wait}"));
                    failures = failures.saturating_add(1);
                    std::thread::sleep(Duration::from_secs(wait));
                }
            }
        }
    }
    failures = 0;
    loop {
        match install(&args, &bundle) {
            Outcome::Staged => {
                forget(&args.dir);
                std::process::exit(0);
            }
            Outcome::Refused(reason) => {
                say(&format!("event=update-refused reason={reason} effect=bundle-deleted"));
                forget(&args.dir);
                std::process::exit(1);
            }
            Outcome::Later(why) => {
                let wait = backoff_s(failures, args.max_backoff);
                say(&format!("event=update-retry error={why:?} wait_s={wait}"));
                failures = failures.saturating_add(1);
                std::thread::sleep(Duration::from_secs(wait));
            }
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut words = Vec::new();
    let mut socket = std::env::var("CAIRN_CONTROL").unwrap_or_else(|_| DEFAULT_SOCKET.into());
    let mut max_backoff = 30;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = it.next().ok_or("--socket needs a path")?,
            "--max-backoff" => {
                max_backoff = it.next().and_then(|s| s.parse().ok()).ok_or("--max-backoff needs seconds")?;
            }
            _ => words.push(a),
        }
    }
    let [url, dir] = <[String; 2]>::try_from(words).map_err(|_| "URL and DIR are needed".to_owned())?;
    Ok(Args { url: parse_url(&url)?, dir: dir.into(), socket, max_backoff: max_backoff.max(1) })
}

/// The partial file and its validator.
fn part_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("bundle.part"), dir.join("bundle.validator"))
}

/// Delete the bundle and what was fetched of it.
fn forget(dir: &Path) {
    let (part, validator) = part_paths(dir);
    for p in [dir.join("bundle"), part, validator] {
        let _ = std::fs::remove_file(p);
    }
}

/// One request for what the partial file lacks. `Ok(true)`: the bundle is
/// whole (renamed to `bundle`); `Ok(false)`: progress, ask again; `Err`:
/// nothing usable came (wait before asking again).
fn fetch_once(a: &Args, requests: &mut u32) -> Result<bool, String> {
    let (part, vpath) = part_paths(&a.dir);
    let offset = std::fs::metadata(&part).map_or(0, |m| m.len());
    let validator = std::fs::read_to_string(&vpath).ok();
    let addr = (a.url.host.as_str(), a.url.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {e}", a.url.host))?
        .next()
        .ok_or_else(|| format!("resolve {}: no address", a.url.host))?;
    let mut tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.write_all(request(&a.url, offset, validator.as_deref()).as_bytes()).map_err(|e| format!("send: {e}"))?;
    let (head_text, mut body_start) = read_head(&mut tcp)?;
    let head = parse_head(&head_text).ok_or("not an HTTP response")?;
    let (total, from) = match plan(&head, offset) {
        Plan::Append { total } => (total, offset),
        Plan::Restart { total } => (total, 0),
        Plan::Complete => return finish(&a.dir, offset, *requests),
        Plan::Fail(why) => return Err(why),
    };
    say(&format!("event=fetch request={} status={} from={from} total={total}", *requests, head.status));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(from == 0)
        .open(&part)
        .map_err(|e| format!("open {}: {e}", part.display()))?;
    if from == 0 {
        std::fs::write(&vpath, head.validator.unwrap_or_default()).map_err(|e| format!("write validator: {e}"))?;
    }
    let mut have = from;
    let mut synced = from;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = loop {
        let n = if body_start.is_empty() {
            match tcp.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(e.to_string()),
            }
        } else {
            let n = body_start.len().min(buf.len());
            buf[..n].copy_from_slice(&body_start[..n]);
            body_start.drain(..n);
            n
        };
        let take = (n as u64).min(total.saturating_sub(have)) as usize;
        use std::os::unix::fs::FileExt;
        file.write_all_at(&buf[..take], have).map_err(|e| format!("write {}: {e}", part.display()))?;
        have += take as u64;
        if have - synced >= SYNC_EVERY {
            file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
            synced = have;
        }
        if have >= total {
            break None;
        }
    };
    file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
    if have >= total {
        return finish(&a.dir, have, *requests);
    }
    say(&format!("event=fetch-dropped at={have} total={total} error={:?}", ended.unwrap_or_else(|| "closed".into())));
    Ok(false)
}

/// The whole bundle is in `bundle.part`: make it `bundle`.
fn finish(dir: &Path, bytes: u64, requests: u32) -> Result<bool, String> {
    let (part, _) = part_paths(dir);
    std::fs::rename(&part, dir.join("bundle")).map_err(|e| format!("rename: {e}"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    say(&format!("event=fetched bytes={bytes} requests={requests}"));
    Ok(true)
}

/// Read until the blank line; returns the head and the body bytes read
/// with it.
fn read_head(tcp: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = got.split_off(i + 4);
            got.truncate(i);
            return Ok((String::from_utf8_lossy(&got).into_owned(), body));
        }
        if got.len() > HEAD_MAX {
            return Err("response head too long".into());
        }
        match tcp.read(&mut buf) {
            Ok(0) => return Err("closed before the response head".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

enum Outcome {
    Staged,
    /// Refused for good (the reason word): never ask again with this bundle.
    Refused(String),
    /// Not now (busy, a trial pending, the socket not there yet).
    Later(String),
}

/// Pass the bundle to cairn-init and print every step it reports.
fn install(a: &Args, bundle: &Path) -> Outcome {
    let file = match open_passed(&bundle.to_string_lossy()) {
        Ok(f) => f,
        Err(e) => return Outcome::Later(format!("open {}: {e}", bundle.display())),
    };
    let fd = match connect(&a.socket) {
        Ok(fd) => fd,
        Err((step, e)) => return Outcome::Later(format!("{step} {}: errno {e}", a.socket)),
    };
    if send_request(&fd, &format!("{} update", cairn_ctl::VERSION), Some(&file)) < 0 {
        return Outcome::Later("send failed".into());
    }
    let Some(first) = recv(&fd) else { return Outcome::Later("no reply".into()) };
    match split_reply(&first) {
        Ok(body) => say(&format!("event=update {body}")),
        Err(reason) => return judge(&reason),
    }
    while let Some(msg) = recv(&fd) {
        if msg.is_empty() {
            break;
        }
        match stream_end(&msg) {
            Some(Ok(end)) => {
                say(&format!("event=update-end {end}"));
                return Outcome::Staged;
            }
            Some(Err(reason)) => return judge(reason),
            None => say(&format!("event=step {}", msg.strip_prefix("cairn: ").unwrap_or(&msg))),
        }
    }
    Outcome::Later("the installer hung up without an end".into())
}

/// An error reply: `REASON: WHY` (or a bare reason) from PID 1 or the
/// installer. Busy and a trial pending pass; the rest are about the bundle.
fn judge(reason: &str) -> Outcome {
    let word = reason.split([':', ' ']).next().unwrap_or_default();
    match word {
        "busy" | "trial-pending" | "unavailable" => Outcome::Later(reason.into()),
        "not" => Outcome::Later(reason.into()), // "not permitted": the manifest may grant it later
        w => Outcome::Refused(w.into()),
    }
}
