//! `cairn-agent`'s pure part: the URL, the HTTP/1.1 request for the bytes
//! still missing, and what a response means for the partial file.
//!
//! The download is resumable by construction: the file on the agent's
//! volume holds a prefix of the bundle, and every request asks for the
//! rest (`Range: bytes=N-`), guarded by the validator the server gave
//! (`If-Range: ETAG`), so a bundle replaced on the server restarts from
//! zero instead of splicing two bundles. A dropped connection, a reboot or
//! a power cut loses at most what was in flight.

/// An `http://HOST[:PORT]/PATH` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address.
    pub host: String,
    /// Port (80 by default).
    pub port: u16,
    /// Path with query, starting with `/`.
    pub path: String,
}

/// Parse `http://HOST[:PORT][/PATH]`. Only plain HTTP: the bundle is
/// signed, so the transport needs no integrity of its own (it gives no
/// confidentiality either: see docs/ota.md).
pub fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are fetched"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("{url}: bad port {p:?}"))?),
        None => (authority, 80),
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-');
    if host.is_empty() || !host.chars().all(ok) {
        return Err(format!("{url}: bad host {host:?}"));
    }
    if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!("{url}: bad path"));
    }
    Ok(Url { host: host.into(), port, path: path.into() })
}

/// The GET for the bytes from `offset` on (`If-Range` with the validator
/// the partial file was fetched under, if any).
pub fn request(url: &Url, offset: u64, validator: Option<&str>) -> String {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: cairn-agent/1\r\nConnection: close\r\n",
        url.path, url.host, url.port
    );
    if offset > 0 {
        r.push_str(&format!("Range: bytes={offset}-\r\n"));
        if let Some(v) = validator {
            r.push_str(&format!("If-Range: {v}\r\n"));
        }
    }
    r.push_str("\r\n");
    r
}

/// A response's head, as far as the agent cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Length`.
    pub length: Option<u64>,
    /// `Content-Range: bytes START-END/TOTAL`.
    pub range: Option<(u64, u64, u64)>,
    /// `ETag`, else `Last-Modified` (what `If-Range` takes).
    pub validator: Option<String>,
}

/// Parse a response head (the bytes before the blank line). `None` if it
/// is not HTTP/1.x.
pub fn parse_head(text: &str) -> Option<Head> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut words = status_line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let mut head = Head { status, length: None, range: None, validator: None };
    let mut modified = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.length = value.parse().ok(),
            "content-range" => head.range = parse_content_range(value),
            "etag" => head.validator = Some(value.into()),
            "last-modified" => modified = Some(value.to_owned()),
            _ => {}
        }
    }
    if head.validator.is_none() {
        head.validator = modified;
    }
    Some(head)
}

fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, total.parse().ok()?))
}

/// What to do with the body of a response to a request from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Append the body at `offset`; the bundle is `total` bytes.
    Append {
        /// Its whole size.
        total: u64,
    },
    /// The server sent the whole bundle (no range, or a changed bundle):
    /// start the file again from zero.
    Restart {
        /// Its whole size.
        total: u64,
    },
    /// The file already holds all of it (416 for a range at its end).
    Complete,
    /// Not usable: why.
    Fail(String),
}

/// Decide from a head what the body means for a file holding `offset`
/// bytes.
pub fn plan(head: &Head, offset: u64) -> Plan {
    match head.status {
        206 => match head.range {
            Some((start, end, total)) if start == offset && end < total && end >= start => Plan::Append { total },
            Some(r) => Plan::Fail(format!("asked from {offset}, got range {r:?}")),
            None => Plan::Fail("206 without Content-Range".into()),
        },
        200 => match head.length {
            Some(total) => Plan::Restart { total },
            None => Plan::Fail("200 without Content-Length".into()),
        },
        416 if offset > 0 && head.range.is_none_or(|(_, _, total)| total == offset) => Plan::Complete,
        s => Plan::Fail(format!("HTTP status {s}")),
    }
}

/// Seconds to wait before attempt `n` (0-based) after a failure: 1, 2, 4,
/// ... capped at `max`.
pub fn backoff_s(n: u32, max: u64) -> u64 {
    1u64.checked_shl(n.min(16)).unwrap_or(u64::MAX).min(max)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://10.0.2.2:8080/v2.bundle").unwrap();
        assert_eq!(u, Url { host: "10.0.2.2".into(), port: 8080, path: "/v2.bundle".into() });
        assert_eq!(parse_url("http://updates.example").unwrap().path, "/");
        assert_eq!(parse_url("http://h/x?y=1").unwrap().port, 80);
        for bad in ["https://h/x", "ftp://h", "http://:80/x", "http://h:99999/", "http://h/a b", "http://h\r\nX: y/"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_ask_for_the_rest_under_the_validator() {
        let u = parse_url("http://h:1/b").unwrap();
        let r = request(&u, 0, Some("\"v2\""));
        assert!(r.starts_with("GET /b HTTP/1.1\r\nHost: h:1\r\n") && !r.contains("Range") && r.ends_with("\r\n\r\n"));
        let r = request(&u, 4096, Some("\"v2\""));
        assert!(r.contains("\r\nRange: bytes=4096-\r\nIf-Range: \"v2\"\r\n"), "{r}");
    }

    #[test]
    fn heads_and_plans() {
        let h = parse_head(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/200\r\nETag: \"a\"\r\nContent-Length: 100",
        )
        .unwrap();
        assert_eq!((h.status, h.range, h.validator.as_deref()), (206, Some((100, 199, 200)), Some("\"a\"")));
        assert_eq!(plan(&h, 100), Plan::Append { total: 200 });
        assert!(matches!(plan(&h, 50), Plan::Fail(_)), "a range that does not start at the file's end");
        let h = parse_head("HTTP/1.0 200 OK\r\ncontent-length: 200\r\nLast-Modified: x").unwrap();
        assert_eq!((plan(&h, 100), h.validator.as_deref()), (Plan::Restart { total: 200 }, Some("x")));
        let h = parse_head("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */200").unwrap();
        assert_eq!(plan(&h, 200), Plan::Complete);
        assert!(matches!(plan(&h, 0), Plan::Fail(_)));
        let h = parse_head("HTTP/1.1 404 Not Found").unwrap();
        assert_eq!(plan(&h, 0), Plan::Fail("HTTP status 404".into()));
        assert!(parse_head("SSH-2.0").is_none());
        let h = parse_head("HTTP/1.1 200 OK").unwrap();
        assert!(matches!(plan(&h, 0), Plan::Fail(_)), "a body of unknown length is not taken");
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!((0..7).map(|n| backoff_s(n, 30)).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff_s(u32::MAX, 30), 30);
    }
}
