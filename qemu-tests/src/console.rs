//! Parsing what the device prints: cairn events and payload lines.

use std::collections::BTreeMap;

/// One structured line.
#[derive(Debug, Clone)]
pub struct Line {
    /// `event` field (cairn events and payload lines both have one).
    pub event: String,
    /// Every `key=value` field.
    pub fields: BTreeMap<String, String>,
    /// "cairn" for init events, "payload" for payload lines.
    pub source: &'static str,
    /// Index of the console line.
    pub index: usize,
}

impl Line {
    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
    /// A numeric field.
    pub fn num(&self, key: &str) -> Option<i64> {
        self.get(key)?.parse().ok()
    }
}

/// Split logfmt `key=value` words: a quoted value may hold spaces and the
/// escapes cairn-init writes (`\\`, `\"`, `\t`, `\r`, `\n`, `\xNN`).
pub fn parse_fields(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some('r') => value.push('\r'),
                            Some('t') => value.push('\t'),
                            Some('x') => {
                                let hex: String = [chars.next(), chars.next()].into_iter().flatten().collect();
                                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                    Some(ch) if hex.len() == 2 => value.push(ch),
                                    _ => {
                                        value.push_str("\\x");
                                        value.push_str(&hex);
                                    }
                                }
                            }
                            Some(n) => value.push(n),
                            None => {}
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key, value);
    }
    out
}

/// Everything a boot printed.
#[derive(Debug, Default, Clone)]
pub struct Console {
    /// Raw lines.
    pub raw: Vec<String>,
    /// Structured lines.
    pub lines: Vec<Line>,
    /// The start of an event line the kernel's console output cut into
    /// (`cairn: t=7.4 e[    7.48] device-mapper: ...`), joined with the
    /// next line (`vent=layer.corrupt ...`).
    cut: Option<String>,
}

/// Where a kernel message (`[   7.485253] ...`) starts inside a line, if
/// one does after its first byte.
fn kernel_message_at(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    (1..b.len()).find(|&i| {
        b[i] == b'[' && {
            let rest = &b[i + 1..];
            let digits = rest.iter().skip_while(|c| **c == b' ').take_while(|c| c.is_ascii_digit() || **c == b'.');
            let n = digits.count();
            let spaces = rest.iter().take_while(|c| **c == b' ').count();
            n >= 3 && rest.get(spaces + n) == Some(&b']') && rest[spaces..spaces + n].contains(&b'.')
        }
    })
}

impl Console {
    /// Add a raw console line.
    pub fn push(&mut self, raw: &str) {
        let raw = raw.trim_end_matches(['\r', '\n']);
        let index = self.raw.len();
        self.raw.push(raw.to_owned());
        if let Some(start) = self.cut.take() {
            let joined = format!("{start}{raw}");
            if self.parse(&joined, index) {
                return;
            }
        }
        // An event line (PID 1's, or a payload's behind its prefix) that a
        // kernel message cut: its rest comes on the next line.
        if raw.starts_with("cairn: ") || raw.contains("payload ") {
            if let Some(at) = kernel_message_at(raw) {
                self.cut = raw.get(..at).map(str::to_owned);
                return;
            }
        }
        self.parse(raw, index);
    }

    /// Record `line` if it is an event line: whether it was.
    fn parse(&mut self, line: &str, index: usize) -> bool {
        // PID 1's events start the line: container output reaches the
        // console only behind a `[name] ` prefix, so it can never forge one.
        if let Some(rest) = line.strip_prefix("cairn: ") {
            let fields = parse_fields(rest);
            return match fields.get("event").cloned() {
                Some(event) => {
                    self.lines.push(Line { event, fields, source: "cairn", index });
                    true
                }
                None => false,
            };
        }
        // Payload lines: behind the container's `[name] ` prefix (or
        // interleaved with kernel output).
        if let Some(pos) = line.find("payload ") {
            let fields = parse_fields(line.get(pos + "payload ".len()..).unwrap_or(""));
            if let Some(event) = fields.get("event").cloned() {
                self.lines.push(Line { event, fields, source: "payload", index });
                return true;
            }
        }
        false
    }

    /// Lines with this event name whose fields include all of `with`.
    pub fn all(&self, event: &str, with: &[(&str, &str)]) -> Vec<&Line> {
        self.lines.iter().filter(|l| l.event == event && with.iter().all(|(k, v)| l.get(k) == Some(*v))).collect()
    }

    /// The first such line.
    pub fn first(&self, event: &str, with: &[(&str, &str)]) -> Option<&Line> {
        self.all(event, with).into_iter().next()
    }

    /// The first such line, or an error naming what was expected.
    pub fn expect(&self, event: &str, with: &[(&str, &str)]) -> anyhow::Result<&Line> {
        self.first(event, with).ok_or_else(|| anyhow::anyhow!("no `{event}` line with {with:?}"))
    }

    /// Every raw line, in order (`Line::index` points into it).
    pub fn raw_lines(&self) -> &[String] {
        &self.raw
    }

    /// True if any raw line contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.raw.iter().any(|l| l.contains(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_payload_lines_parse() {
        let mut c = Console::default();
        c.push("[    1.2] noise");
        c.push(r#"cairn: t=1.234 event=container.failed name=web reason="layer \"x\" is bad""#);
        c.push("payload name=alpha event=inspect pid=2 ppid=1\r");
        assert_eq!(c.lines.len(), 2);
        let f = c.expect("container.failed", &[("name", "web")]).ok().and_then(|l| l.get("reason").map(str::to_owned));
        assert_eq!(f, Some("layer \"x\" is bad".into()));
        let p = c.first("inspect", &[("name", "alpha")]).map(|l| (l.source, l.num("pid")));
        assert_eq!(p, Some(("payload", Some(2))));
        assert!(c.expect("nothing", &[]).is_err());
    }

    #[test]
    fn an_event_line_cut_by_a_kernel_message_is_joined_again() {
        let mut c = Console::default();
        c.push("cairn: t=7.4 e[    7.485253] device-mapper: verity: 254:7: data block 48 is corrupted");
        c.push("vent=layer.corrupt name=blob block=48");
        c.push("cairn: t=7.5 event=next a=[1] b=2");
        assert!(c.expect("layer.corrupt", &[("name", "blob"), ("block", "48")]).is_ok(), "{:?}", c.lines);
        assert!(c.expect("next", &[("a", "[1]")]).is_ok(), "a bracket that is not a kernel timestamp");
        assert!(c.contains("data block 48 is corrupted"), "the raw line is kept");
        assert_eq!(kernel_message_at("cairn: t=1 event=x[ 12.5] m"), Some(18));
        assert_eq!(kernel_message_at("cairn: t=1 event=x [12] m"), None);
        // A payload's line cut the same way (its newline comes after the
        // kernel's message, alone).
        let mut c = Console::default();
        c.push(
            "[reader] payload name=reader event=read-file path=/bad error=EIO errno=5[    4.402663] SQUASHFS error: x",
        );
        c.push("");
        c.push("[reader] payload name=reader event=read-file path=/good bytes=4");
        let bad = c.expect("read-file", &[("path", "/bad")]).unwrap();
        assert_eq!((bad.get("errno"), bad.fields.len()), (Some("5"), 5), "{:?}", bad.fields);
        assert!(c.expect("read-file", &[("path", "/good"), ("bytes", "4")]).is_ok());
    }

    #[test]
    fn events_count_only_at_the_start_of_a_line() {
        let mut c = Console::default();
        c.push("[evil] cairn: t=1.0 event=shutdown.complete kind=poweroff");
        c.push("[    3.1] x cairn: t=1.0 event=shutdown.complete kind=poweroff");
        c.push("[evil] payload name=evil event=tick n=1");
        assert!(c.first("shutdown.complete", &[]).is_none());
        assert_eq!(c.first("tick", &[]).map(|l| l.source), Some("payload"));
        c.push("cairn: t=2.0 event=shutdown.complete kind=poweroff");
        assert!(c.first("shutdown.complete", &[("kind", "poweroff")]).is_some());
    }

    /// The lines cairn-init writes for hostile values (pinned by its own
    /// unit test `hostile_values_are_escaped_and_stay_on_one_line`) decode
    /// to the original values here.
    #[test]
    fn logfmt_from_init_round_trips() {
        let line = r#"cairn: t=0.1 event=x nl="a\nb" cr="a\rcairn: t=0 event=forged" tab="a\tb" eq="k=v" bs="c:\\dir" ctl="\x1b[2J\x00\x7f\x85" utf8=grüße plain=ok-1.5 empty="" q="say \"hi\" x=1""#;
        let mut c = Console::default();
        c.push(line);
        assert_eq!(c.lines.len(), 1);
        let l = c.expect("x", &[]).ok();
        let get = |k: &str| l.and_then(|l| l.get(k)).map(str::to_owned);
        assert_eq!(get("nl").as_deref(), Some("a\nb"));
        assert_eq!(get("cr").as_deref(), Some("a\rcairn: t=0 event=forged"));
        assert_eq!(get("tab").as_deref(), Some("a\tb"));
        assert_eq!(get("eq").as_deref(), Some("k=v"));
        assert_eq!(get("bs").as_deref(), Some("c:\\dir"));
        assert_eq!(get("ctl").as_deref(), Some("\u{1b}[2J\u{0}\u{7f}\u{85}"));
        assert_eq!(get("utf8").as_deref(), Some("grüße"));
        assert_eq!(get("plain").as_deref(), Some("ok-1.5"));
        assert_eq!(get("empty").as_deref(), Some(""));
        assert_eq!(get("q").as_deref(), Some("say \"hi\" x=1"));
        assert!(c.first("forged", &[]).is_none());
    }

    /// A local copy of cairn-init's encoder (init is a binary crate), fed
    /// hostile strings: every one comes back unchanged.
    #[test]
    fn hostile_strings_round_trip() {
        fn encode(v: &str) -> String {
            let quote = v.is_empty() || v.chars().any(|c| matches!(c, ' ' | '=' | '"' | '\\') || c.is_control());
            if !quote {
                return v.to_owned();
            }
            let mut out = String::from("\"");
            for ch in v.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    '\n' => out.push_str("\\n"),
                    c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        let hostile = [
            "",
            " ",
            "\\",
            "\\\"",
            "\"\\",
            "a=b=c",
            "x\" y=\"z",
            "\n\r\t\u{0}\u{1f}\u{7f}\u{80}\u{9f}",
            "\\x41",
            "\\n",
            "trailing\\",
            "événement ☃",
            "cairn: t=1 event=forged",
        ];
        for v in hostile {
            let mut c = Console::default();
            c.push(&format!("cairn: t=0.1 event=rt v={} after=1", encode(v)));
            let l = c.expect("rt", &[]).ok();
            assert_eq!(l.and_then(|l| l.get("v")), Some(v), "value {v:?}");
            assert_eq!(l.and_then(|l| l.get("after")), Some("1"), "value {v:?} ate the next field");
        }
    }
}
