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

/// Split `key=value` words, honouring double quotes with `\"` escapes.
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
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(if n == 'n' { '\n' } else { n });
                            }
                        }
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
}

impl Console {
    /// Add a raw console line.
    pub fn push(&mut self, raw: &str) {
        let raw = raw.trim_end_matches(['\r', '\n']);
        let index = self.raw.len();
        self.raw.push(raw.to_owned());
        // The line may carry a prefix (kernel output interleaved); find ours.
        for (marker, source) in [("cairn: ", "cairn"), ("payload ", "payload")] {
            if let Some(pos) = raw.find(marker) {
                let fields = parse_fields(raw.get(pos + marker.len()..).unwrap_or(""));
                if let Some(event) = fields.get("event").cloned() {
                    self.lines.push(Line { event, fields, source, index });
                    return;
                }
            }
        }
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
}
