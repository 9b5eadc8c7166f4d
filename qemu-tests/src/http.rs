//! A small HTTP/1.1 file server for the guest on the host's loopback
//! (QEMU's user network shows 127.0.0.1 to the guest as 10.0.2.2). It
//! serves one file with `Range: bytes=N-` and `If-Range`, and can drop
//! connections on purpose: connection K (0-based) is cut once the file's
//! offset `drops[K]` has been sent. It counts what it sent, so a scenario
//! can check that an interrupted download resumed instead of restarting.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// The file's validator.
pub const ETAG: &str = "\"cairn-test-bundle\"";

/// One request served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The offset it asked from (0 without a usable range).
    pub from: u64,
    /// Body bytes written to the socket.
    pub sent: u64,
    /// Cut on purpose.
    pub dropped: bool,
}

/// A running server (stopped when dropped).
pub struct Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    served: Arc<Mutex<Vec<Served>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `file` at every path, cutting connection K at `drops[K]`.
    pub fn start(file: PathBuf, drops: Vec<u64>) -> Result<Server> {
        Self::start_on(0, file, drops)
    }

    /// [`Server::start`] on 127.0.0.1:`port` (0: any free port).
    pub fn start_on(port: u16, file: PathBuf, drops: Vec<u64>) -> Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port)).context("binding the test HTTP server")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let served = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let k = s.lock().map_or(0, |v| v.len());
                        if let Some(record) = serve(conn, &body, drops.get(k).copied()) {
                            if let Ok(mut v) = s.lock() {
                                v.push(record);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Server { port, served, stop, thread: Some(thread) })
    }

    /// What it served so far.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one connection. `None` if no request came.
fn serve(mut conn: TcpStream, body: &[u8], drop_at: Option<u64>) -> Option<Served> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
        head.extend_from_slice(buf.get(..n)?);
        if head.len() > 16 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
    let if_range_ok = header("if-range:").is_none_or(|v| v == ETAG.to_ascii_lowercase());
    let total = body.len() as u64;
    let asked = header("range:")
        .and_then(|r| r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<u64>().ok()));
    let from = match asked {
        Some(n) if if_range_ok => n,
        _ => 0,
    };
    let reply = if from >= total && from > 0 {
        format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nConnection: close\r\n\r\n")
    } else if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{total}\r\nContent-Length: {}\r\nETag: {ETAG}\r\nConnection: close\r\n\r\n",
            total - 1,
            total - from
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nETag: {ETAG}\r\nConnection: close\r\n\r\n")
    };
    conn.write_all(reply.as_bytes()).ok()?;
    let end = match drop_at {
        Some(d) if d > from && d < total => d,
        _ => total,
    };
    let mut sent = 0u64;
    let mut at = from;
    while at < end {
        let n = (end - at).min(64 * 1024);
        let chunk = body.get(at as usize..(at + n) as usize)?;
        if conn.write_all(chunk).is_err() {
            break;
        }
        at += n;
        sent += n;
    }
    let dropped = end < total;
    let _ = conn.shutdown(Shutdown::Both);
    Some(Served { from, sent, dropped })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn get(port: u16, extra: &str) -> (String, Vec<u8>) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(format!("GET /b HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes()).unwrap();
        let mut all = Vec::new();
        let _ = c.read_to_end(&mut all);
        let i = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8_lossy(&all[..i]).into_owned(), all[i + 4..].to_vec())
    }

    #[test]
    fn ranges_resume_and_drops_cut() {
        let dir = std::env::temp_dir().join(format!("cairn-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b");
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let s = Server::start(file, vec![100_000]).unwrap();
        let (h, b) = get(s.port, "");
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b, data[..100_000], "the first connection is cut at its drop point");
        let (h, b) = get(s.port, &format!("Range: bytes=100000-\r\nIf-Range: {ETAG}\r\n"));
        assert!(h.contains("Content-Range: bytes 100000-299999/300000"), "{h}");
        assert_eq!(b, data[100_000..]);
        let (h, _) = get(s.port, "Range: bytes=5-\r\nIf-Range: \"other\"\r\n");
        assert!(h.starts_with("HTTP/1.1 200"), "a changed validator gets the whole file: {h}");
        let (h, _) = get(s.port, "Range: bytes=300000-\r\n");
        assert!(h.starts_with("HTTP/1.1 416"), "{h}");
        let served = s.served();
        assert_eq!(
            served.iter().map(|x| (x.from, x.sent, x.dropped)).take(2).collect::<Vec<_>>(),
            [(0, 100_000, true), (100_000, 200_000, false)]
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
