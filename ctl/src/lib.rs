//! `cairn-ctl`'s pure part: command line to request line, reply to output
//! (for people, or JSON with `--json`). The protocol is `cairn/1`
//! (docs/control.md).

pub mod client;

/// The protocol word.
pub const VERSION: &str = "cairn/1";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The request line, protocol word included.
    pub request: String,
    /// Print JSON.
    pub json: bool,
    /// A stream (`logs`, `events`): print every message until the end.
    pub stream: bool,
    /// The request is `ps` (a table).
    pub ps: bool,
    /// Socket path.
    pub socket: String,
    /// `update FILE`: the file whose descriptor goes with the request.
    pub pass: Option<String>,
    /// `exec`: after `ok`, pass stdin/stdout/stderr and exit with the
    /// command's code.
    pub exec: bool,
    /// `exec -t`: give the command a pseudo-terminal and relay it.
    pub tty: bool,
}

/// Default socket path inside a container; `CAIRN_CONTROL` overrides it.
pub const DEFAULT_SOCKET: &str = "/run/cairn/control";
/// The socket path on the host.
pub const HOST_SOCKET: &str = "/run/cairn/control/control";

/// Usage text.
pub const USAGE: &str = "usage: cairn-ctl [--json] [--socket PATH] COMMAND
commands:
  status | ps
  start NAME | stop NAME | restart NAME
  pause NAME | resume NAME
  heartbeat                 (a container's own health check)
  signal NAME SIG[,SIG...]
  poweroff | reboot
  logs NAME [--since SECONDS] [--follow]
  events [--follow]
  update BUNDLE    (a file or block device; its descriptor is passed)
  volume prune     (delete the data of volumes the manifest no longer names)
  dns [--search DOMAIN]... [ADDR]...
                   (the name servers of containers on networks with egress;
                    none: clear them)
  exec [-t] [-e KEY=VAL]... [-u UID[:GID]] NAME -- CMD [ARG...]
                   (exits with CMD's code; 125 if it could not run; -t: a
                    pseudo-terminal, relayed; -e: an environment entry; -u:
                    run as these ids, GID the entrypoint's if not given)
  shell            (one command per line from stdin: the development console)";

/// `exec`'s options and container name (the words between `exec` and `--`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ExecHead<'a> {
    tty: bool,
    env: Vec<&'a str>,
    user: Option<&'a str>,
    name: &'a str,
}

fn exec_head<'a>(words: &[&'a str]) -> Option<ExecHead<'a>> {
    let mut h = ExecHead::default();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match *w {
            "-t" | "--tty" if !h.tty => h.tty = true,
            "-e" | "--env" => h.env.push(it.next()?),
            "-u" | "--user" if h.user.is_none() => h.user = Some(it.next()?),
            name if h.name.is_empty() && !name.starts_with('-') => h.name = name,
            _ => return None,
        }
    }
    (!h.name.is_empty()).then_some(h)
}

/// Parse `args` (without the program name).
pub fn parse_args(args: &[String], socket_env: Option<String>) -> Result<Command, String> {
    let mut json = false;
    let mut socket = socket_env;
    let mut words: Vec<&str> = Vec::new();
    let mut it = args.iter();
    let mut argv: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            // Everything after `exec NAME --` is the command, as it is.
            "--" if words.first() == Some(&"exec") && exec_head(words.get(1..).unwrap_or_default()).is_some() => {
                words.push("--");
                argv.extend(it.by_ref().map(|a| encode_arg(a)));
            }
            "--json" if words.is_empty() => json = true,
            "--socket" if words.is_empty() => socket = Some(it.next().ok_or("--socket needs a path")?.clone()),
            "-h" | "--help" => return Err(USAGE.into()),
            w => words.push(w),
        }
    }
    let ok = match words.as_slice() {
        ["status" | "ps" | "poweroff" | "reboot"] => true,
        ["start" | "stop" | "restart", _] => true,
        ["pause" | "resume", _] | ["heartbeat"] => true,
        ["signal", _, _] => true,
        ["events"] | ["events", "--follow"] => true,
        ["logs", _, rest @ ..] => logs_options_ok(rest),
        ["update", _] => true,
        ["volume", "prune"] => true,
        ["dns", ..] => true,
        ["exec", .., "--"] => !argv.is_empty(),
        _ => false,
    };
    if !ok {
        return Err(USAGE.into());
    }
    let first = words.first().copied().unwrap_or_default();
    let socket = socket.unwrap_or_else(|| {
        if std::path::Path::new(HOST_SOCKET).exists() {
            HOST_SOCKET.into()
        } else {
            DEFAULT_SOCKET.into()
        }
    });
    // The bundle is not named in the request: its descriptor goes with it.
    let (request_words, pass) = match words.as_slice() {
        ["update", file] => (&words[..1], Some((*file).to_owned())),
        _ => (&words[..], None),
    };
    let head = match words.as_slice() {
        ["exec", head @ .., "--"] => exec_head(head),
        _ => None,
    };
    let tty = head.as_ref().is_some_and(|h| h.tty);
    let mut request = match head {
        Some(h) => {
            let mut r = format!("{VERSION} exec {}", h.name);
            if h.tty {
                r.push_str(" --tty");
            }
            for e in h.env {
                r.push_str(" --env ");
                r.push_str(&encode_arg(e));
            }
            if let Some(u) = h.user {
                r.push_str(" --user ");
                r.push_str(&encode_arg(u));
            }
            r.push_str(" --");
            r
        }
        None => format!("{VERSION} {}", request_words.join(" ")),
    };
    for a in &argv {
        request.push(' ');
        request.push_str(a);
    }
    Ok(Command {
        request,
        exec: first == "exec",
        tty,
        json,
        stream: matches!(first, "logs" | "events" | "update"),
        ps: first == "ps",
        socket,
        pass,
    })
}

/// One `exec` argument on the wire: `%XX` for `%` and any byte outside
/// `!`..`~` (spaces, controls, non-ASCII).
pub fn encode_arg(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    for b in arg.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The end of an `exec`: `cairn/1 exit CODE[ WHY]` as (code, why).
pub fn exec_exit(msg: &str) -> Option<(i32, &str)> {
    let rest = msg.strip_prefix(VERSION)?.strip_prefix(" exit ")?;
    let (code, why) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((code.parse().ok()?, why))
}

fn logs_options_ok(rest: &[&str]) -> bool {
    let mut it = rest.iter();
    while let Some(o) = it.next() {
        match *o {
            "--follow" | "-f" => {}
            "--since" => {
                if it.next().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// A reply split: `Ok(body)` after `cairn/1 ok`, `Err(reason)` after
/// `cairn/1 error`.
pub fn split_reply(reply: &str) -> Result<&str, String> {
    let rest = reply.strip_prefix(VERSION).map(str::trim_start).ok_or_else(|| format!("bad reply {reply:?}"))?;
    if let Some(body) = rest.strip_prefix("ok") {
        Ok(body.strip_prefix(['\n', ' ']).unwrap_or(body))
    } else if let Some(reason) = rest.strip_prefix("error") {
        Err(reason.trim().into())
    } else {
        Err(format!("bad reply {reply:?}"))
    }
}

/// `key=value` fields of a line (values without spaces).
pub fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split(' ').filter_map(|kv| kv.split_once('=')).collect()
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value for a `ps` field: numbers as numbers, `-` as null.
fn json_value(key: &str, v: &str) -> String {
    if v == "-" {
        "null".into()
    } else if key != "name"
        && key != "state"
        && key != "last_exit"
        && key != "health"
        && v.bytes().all(|b| b.is_ascii_digit())
    {
        v.into()
    } else {
        json_string(v)
    }
}

/// `ps` body as a JSON array of objects.
pub fn ps_json(body: &str) -> String {
    let rows: Vec<String> = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<String> =
                fields(l).iter().map(|(k, v)| format!("{}:{}", json_string(k), json_value(k, v))).collect();
            format!("{{{}}}", f.join(","))
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// Bytes for people: `512B`, `12.3K`, `4.0M`.
pub fn human_bytes(v: &str) -> String {
    let Ok(n) = v.parse::<u64>() else { return v.into() };
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{:.1}K", n as f64 / 1024.0),
        _ => format!("{:.1}M", n as f64 / 1_048_576.0),
    }
}

/// One line of `cairn-ctl shell` as words: split at blanks; `'...'` and
/// `"..."` quote (no escapes inside single quotes), `\` escapes the next
/// character outside them.
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => w.push(x),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or("a \\ at the end of the line")?),
                        Some(x) => w.push(x),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next().ok_or("a \\ at the end of the line")?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// `ps` body as a table for people.
pub fn ps_table(body: &str) -> String {
    let cols = [
        ("NAME", "name"),
        ("STATE", "state"),
        ("PID", "pid"),
        ("UPTIME", "uptime_ms"),
        ("RESTARTS", "restarts"),
        ("LAST EXIT", "last_exit"),
        ("MEM", "memory"),
        ("PEAK", "memory_peak"),
        ("CPU", "cpu_us"),
        ("PIDS", "pids"),
        ("OOM", "oom_kills"),
        ("HEALTH", "health"),
    ];
    let rows: Vec<Vec<String>> = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f = fields(l);
            cols.iter()
                .map(|(_, key)| {
                    let v = f.iter().find(|(k, _)| k == key).map_or("-", |(_, v)| v);
                    match *key {
                        "memory" | "memory_peak" => human_bytes(v),
                        "uptime_ms" => v.parse::<u64>().map_or(v.into(), |ms| format!("{}s", ms / 1000)),
                        "cpu_us" => v.parse::<u64>().map_or(v.into(), |us| format!("{:.2}s", us as f64 / 1e6)),
                        _ => v.into(),
                    }
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = cols.iter().map(|(h, _)| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(cols.iter().map(|(h, _)| *h).collect())];
    for r in &rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// How a stream ends: `cairn/1 end[ BODY]` (`Ok(BODY)`) or, from the
/// update installer, `cairn/1 error REASON` (`Err(REASON)`); `None` for a
/// line of the stream.
pub fn stream_end(msg: &str) -> Option<Result<&str, &str>> {
    let rest = msg.strip_prefix(VERSION)?.strip_prefix(' ')?;
    if rest == "end" {
        return Some(Ok(""));
    }
    if let Some(body) = rest.strip_prefix("end ") {
        return Some(Ok(body));
    }
    rest.strip_prefix("error ").map(Err)
}

/// One stream message for output: a log or event line as it is, JSON as
/// `{"line": ...}`; `cairn/1 lost N` as a note.
pub fn stream_line(msg: &str, json: bool) -> String {
    match (msg.strip_prefix("cairn/1 lost "), json) {
        (Some(n), false) => format!("-- {n} lines lost --"),
        (Some(n), true) => format!("{{\"lost\":{}}}", n.parse::<u64>().unwrap_or(0)),
        (None, false) => msg.into(),
        (None, true) => format!("{{\"line\":{}}}", json_string(msg)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').filter(|w| !w.is_empty()).map(String::from).collect()
    }

    #[test]
    fn command_lines_become_requests() {
        let c = parse_args(&args("--json ps"), Some("/s".into())).unwrap();
        assert_eq!(
            (c.request.as_str(), c.json, c.ps, c.stream, c.socket.as_str()),
            ("cairn/1 ps", true, true, false, "/s")
        );
        let c = parse_args(&args("logs web --since 12.5 --follow"), Some("/s".into())).unwrap();
        assert_eq!(c.request, "cairn/1 logs web --since 12.5 --follow");
        assert!(c.stream);
        let c = parse_args(&args("pause web"), Some("/s".into())).unwrap();
        assert_eq!(c.request, "cairn/1 pause web");
        assert_eq!(parse_args(&args("heartbeat"), Some("/s".into())).unwrap().request, "cairn/1 heartbeat");
        assert_eq!(parse_args(&args("volume prune"), Some("/s".into())).unwrap().request, "cairn/1 volume prune");
        let c = parse_args(&args("dns --search lan 10.0.2.3"), Some("/s".into())).unwrap();
        assert_eq!((c.request.as_str(), c.stream), ("cairn/1 dns --search lan 10.0.2.3", false));
        assert_eq!(parse_args(&args("dns"), Some("/s".into())).unwrap().request, "cairn/1 dns");
        for bad in ["volume", "volume ls", "volume prune db"] {
            assert!(parse_args(&args(bad), Some("/s".into())).is_err(), "{bad}");
        }
        let c = parse_args(&args("--socket /x restart web"), None).unwrap();
        assert_eq!((c.request.as_str(), c.socket.as_str()), ("cairn/1 restart web", "/x"));
        let c = parse_args(&args("exec web -- /bin/sh -c x%y --json -h"), Some("/s".into())).unwrap();
        assert_eq!(c.request, "cairn/1 exec web -- /bin/sh -c x%25y --json -h");
        assert!(c.exec && !c.stream && !c.tty);
        let c = parse_args(&args("exec -t web -- sh"), Some("/s".into())).unwrap();
        assert_eq!(c.request, "cairn/1 exec web --tty -- sh");
        assert!(c.exec && c.tty);
        let c = parse_args(&args("exec -e A=1 -u 1000:50 -e B=x%y -t web -- sh -u 0"), Some("/s".into())).unwrap();
        assert_eq!(c.request, "cairn/1 exec web --tty --env A=1 --env B=x%25y --user 1000:50 -- sh -u 0");
        assert!(c.exec && c.tty);
        let c = parse_args(&args("exec --user 7 web -- id"), Some("/s".into())).unwrap();
        assert_eq!(c.request, "cairn/1 exec web --user 7 -- id");
        assert!(!c.tty);
        assert_eq!(encode_arg("a b\u{e9}"), "a%20b%C3%A9");
        assert_eq!(exec_exit("cairn/1 exit 7"), Some((7, "")));
        assert_eq!(exec_exit("cairn/1 exit 127 exec ENOENT"), Some((127, "exec ENOENT")));
        assert_eq!(exec_exit("cairn/1 ok"), None);
        assert_eq!(exec_exit("cairn/1 error container stopped"), None);
        for bad in [
            "exec web --",
            "exec web sh",
            "exec -- sh",
            "exec",
            "exec -t web",
            "exec -x web -- sh",
            "exec -e web -- sh",
            "exec -u 1 -u 2 web -- sh",
            "exec web other -- sh",
            "exec -t -t web -- sh",
        ] {
            assert!(parse_args(&args(bad), None).is_err(), "{bad}");
        }
        for bad in ["", "rm -rf /", "logs", "logs web --tail", "logs web --since", "start", "signal web", "--socket"] {
            assert!(parse_args(&args(bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_split_and_render() {
        assert_eq!(split_reply("cairn/1 ok"), Ok(""));
        assert_eq!(split_reply("cairn/1 ok a=b"), Ok("a=b"));
        assert_eq!(split_reply("cairn/1 ok\nx=1\ny=2"), Ok("x=1\ny=2"));
        assert_eq!(split_reply("cairn/1 error not permitted"), Err("not permitted".into()));
        assert!(split_reply("ok").is_err());
        let body = "name=web state=running pid=42 uptime_ms=61000 restarts=1 last_exit=code=1 memory=4096 memory_peak=2097152 cpu_us=1500000 pids=3 oom_kills=- health=healthy";
        assert_eq!(
            ps_json(body),
            r#"[{"name":"web","state":"running","pid":42,"uptime_ms":61000,"restarts":1,"last_exit":"code=1","memory":4096,"memory_peak":2097152,"cpu_us":1500000,"pids":3,"oom_kills":null,"health":"healthy"}]"#
        );
        let t = ps_table(body);
        let mut lines = t.lines();
        assert!(lines.next().unwrap().starts_with("NAME  STATE    PID  UPTIME  RESTARTS  LAST EXIT  MEM"));
        assert_eq!(
            lines.next().unwrap(),
            "web   running  42   61s     1         code=1     4.0K  2.0M  1.50s  3     -    healthy"
        );
        assert_eq!(stream_line("12.000 hi \"x\"", true), r#"{"line":"12.000 hi \"x\""}"#);
        assert_eq!(stream_line("cairn/1 lost 3", false), "-- 3 lines lost --");
        let w = |l: &str| split_line(l).unwrap();
        assert_eq!(w("  ps \n"), ["ps"]);
        assert_eq!(
            w("exec app -- sh -c 'echo a  b' \"x y\"z a\\ b"),
            ["exec", "app", "--", "sh", "-c", "echo a  b", "x yz", "a b"]
        );
        assert_eq!(w("''"), [""]);
        assert_eq!(w(""), Vec::<String>::new());
        assert!(split_line("logs 'app").is_err());
        assert!(split_line("logs \"app").is_err());
        assert!(split_line("logs app\\").is_err());
        assert_eq!(json_string("a\u{1}"), "\"a\\u0001\"");
        assert_eq!(stream_end("cairn/1 end"), Some(Ok("")));
        assert_eq!(stream_end("cairn/1 end staged slot=b effect=reboot"), Some(Ok("staged slot=b effect=reboot")));
        assert_eq!(stream_end("cairn/1 error not-newer: version 1"), Some(Err("not-newer: version 1")));
        assert_eq!(stream_end("12.000 cairn/1 end"), None);
        assert_eq!(stream_end("cairn/1 endless"), None);
    }

    #[test]
    fn update_passes_the_file_not_its_name() {
        let c = parse_args(&args("update /data/v2.bundle"), Some("/s".into())).unwrap();
        assert_eq!(
            (c.request.as_str(), c.pass.as_deref(), c.stream),
            ("cairn/1 update", Some("/data/v2.bundle"), true)
        );
        for bad in ["update", "update a b"] {
            assert!(parse_args(&args(bad), None).is_err(), "{bad}");
        }
    }
}
