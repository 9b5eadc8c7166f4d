//! One board's benchmark report: the console table, `<board>.md` and
//! `<board>.json`. Pure code, tested on the host.

use std::fmt::Write as _;

use super::stats::{summarize, Summary};

/// Everything measured on one board in one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Board name (or `host` for host-only benchmarks).
    pub board: String,
    /// What ran where: kernel, QEMU version, guest memory, date, ...
    pub facts: Vec<(String, String)>,
    /// The benchmarks, in the order run.
    pub groups: Vec<Group>,
}

/// One benchmark: several contenders (or metrics) measured the same way.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Short name (`container-start`), used as the JSON key.
    pub name: String,
    /// One line saying what is timed, from where to where.
    pub title: String,
    /// Unit of the samples (`ms`, `s`, `KiB`).
    pub unit: String,
    /// The rows, in display order.
    pub rows: Vec<Row>,
    /// The row the others are compared with (`cairn`): each other row gets
    /// the ratio of this row's p50 (and p99) to its own.
    pub subject: Option<String>,
    /// Free-text notes shown under the table.
    pub notes: Vec<String>,
}

/// One contender or metric and its samples.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Name shown in the first column.
    pub name: String,
    /// Raw samples, in the order measured.
    pub samples: Vec<f64>,
}

impl Row {
    /// A row of samples.
    pub fn new(name: &str, samples: Vec<f64>) -> Self {
        Self { name: name.to_owned(), samples }
    }
}

impl Group {
    /// Whether every row holds at most one sample (a list of values, such
    /// as sizes: shown without the statistics columns).
    pub fn single(&self) -> bool {
        self.rows.iter().all(|r| r.samples.len() <= 1)
    }

    /// The subject's summary, when there is a subject with samples.
    fn subject_summary(&self) -> Option<Summary> {
        let name = self.subject.as_deref()?;
        summarize(&self.rows.iter().find(|r| r.name == name)?.samples)
    }

    /// `subject p50 / row p50` and `subject p99 / row p99` for each other
    /// row with samples.
    pub fn ratios(&self) -> Vec<(String, f64, f64)> {
        let Some(s) = self.subject_summary() else { return Vec::new() };
        self.rows
            .iter()
            .filter(|r| Some(r.name.as_str()) != self.subject.as_deref())
            .filter_map(|r| {
                let o = summarize(&r.samples)?;
                (o.p50 > 0.0 && o.p99 > 0.0).then(|| (r.name.clone(), s.p50 / o.p50, s.p99 / o.p99))
            })
            .collect()
    }
}

/// A number with a precision that suits its size.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A ratio: `0.12x`, `3.4x`.
fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}x")
    } else if r >= 1.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

const COLUMNS: [&str; 7] = ["n", "min", "p50", "p90", "p99", "max", "mean"];

fn cells(s: &Summary) -> [String; 7] {
    [s.n.to_string(), num(s.min), num(s.p50), num(s.p90), num(s.p99), num(s.max), num(s.mean)]
}

/// The ratio cell of `row` in `group` (empty for the subject or no ratio).
fn ratio_cell(group: &Group, ratios: &[(String, f64, f64)], row: &str) -> String {
    match ratios.iter().find(|(n, ..)| n == row) {
        Some((_, p50, p99)) => format!("{} / {}", ratio(*p50), ratio(*p99)),
        None if group.subject.as_deref() == Some(row) => "1".into(),
        None => String::new(),
    }
}

/// The plain-text table printed at the end of a run.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== {} ==", r.board);
    for (k, v) in &r.facts {
        let _ = writeln!(out, "  {k}: {v}");
    }
    for g in &r.groups {
        let ratios = g.ratios();
        let _ = writeln!(out, "\n{} ({}): {}", g.name, g.unit, g.title);
        let width = g.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(9);
        if g.single() {
            for row in &g.rows {
                let v = row.samples.first().map_or_else(|| "(none)".into(), |v| num(*v));
                let _ = writeln!(out, "  {:<width$} {v:>12}", row.name);
            }
            for n in &g.notes {
                let _ = writeln!(out, "  note: {n}");
            }
            continue;
        }
        let mut head = format!("  {:<width$}", "");
        for c in COLUMNS {
            let _ = write!(head, " {c:>9}");
        }
        if let Some(s) = &g.subject {
            let _ = write!(head, "  {s} ÷ row (p50 / p99)");
        }
        let _ = writeln!(out, "{}", head.trim_end());
        for row in &g.rows {
            let mut line = format!("  {:<width$}", row.name);
            match summarize(&row.samples) {
                Some(s) => {
                    for c in cells(&s) {
                        let _ = write!(line, " {c:>9}");
                    }
                    if g.subject.is_some() {
                        let _ = write!(line, "  {}", ratio_cell(g, &ratios, &row.name));
                    }
                }
                None => line.push_str(" (no samples)"),
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for n in &g.notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
    out
}

/// `build/bench/<board>.md`.
pub fn render_md(r: &Report) -> String {
    let mut out = format!("# cairn benchmarks: {}\n\n", r.board);
    for (k, v) in &r.facts {
        let _ = writeln!(out, "- {k}: {v}");
    }
    for g in &r.groups {
        let ratios = g.ratios();
        let _ = writeln!(out, "\n## {}\n\n{} (unit: {})\n", g.name, g.title, g.unit);
        if g.single() {
            let _ = writeln!(out, "| | {} |\n|---|---:|", g.unit);
            for row in &g.rows {
                let v = row.samples.first().map_or_else(|| "none".into(), |v| num(*v));
                let _ = writeln!(out, "| {} | {v} |", row.name);
            }
            if !g.notes.is_empty() {
                out.push('\n');
                for n in &g.notes {
                    let _ = writeln!(out, "- {n}");
                }
            }
            continue;
        }
        let mut head = String::from("| |");
        let mut rule = String::from("|---|");
        for c in COLUMNS {
            let _ = write!(head, " {c} |");
            rule.push_str("---:|");
        }
        if let Some(s) = &g.subject {
            let _ = write!(head, " {s} ÷ row (p50 / p99) |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for row in &g.rows {
            let mut line = format!("| {} |", row.name);
            match summarize(&row.samples) {
                Some(s) => {
                    for c in cells(&s) {
                        let _ = write!(line, " {c} |");
                    }
                    if g.subject.is_some() {
                        let _ = write!(line, " {} |", ratio_cell(g, &ratios, &row.name));
                    }
                }
                None => line.push_str(" no samples |"),
            }
            let _ = writeln!(out, "{line}");
        }
        if !g.notes.is_empty() {
            out.push('\n');
            for n in &g.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (`null` for NaN and infinities, which JSON lacks).
fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// `build/bench/<board>.json`: the facts, and per group every row's
/// summary, raw samples and ratio to the subject.
pub fn render_json(r: &Report) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"board\": {},", json_str(&r.board));
    let facts: Vec<String> = r.facts.iter().map(|(k, v)| format!("{}: {}", json_str(k), json_str(v))).collect();
    let _ = writeln!(out, "  \"facts\": {{{}}},", facts.join(", "));
    out.push_str("  \"groups\": [");
    for (gi, g) in r.groups.iter().enumerate() {
        let ratios = g.ratios();
        out.push_str(if gi == 0 { "\n" } else { ",\n" });
        let _ = writeln!(
            out,
            "    {{\"name\": {}, \"title\": {}, \"unit\": {},",
            json_str(&g.name),
            json_str(&g.title),
            json_str(&g.unit)
        );
        let subject = g.subject.as_deref().map_or_else(|| "null".into(), json_str);
        let notes: Vec<String> = g.notes.iter().map(|n| json_str(n)).collect();
        let _ = writeln!(out, "     \"subject\": {subject}, \"notes\": [{}],", notes.join(", "));
        out.push_str("     \"rows\": [");
        for (ri, row) in g.rows.iter().enumerate() {
            out.push_str(if ri == 0 { "\n" } else { ",\n" });
            let _ = write!(out, "       {{\"name\": {}", json_str(&row.name));
            if let Some(s) = summarize(&row.samples) {
                let _ = write!(
                    out,
                    ", \"n\": {}, \"min\": {}, \"p50\": {}, \"p90\": {}, \"p99\": {}, \"max\": {}, \"mean\": {}",
                    s.n,
                    json_num(s.min),
                    json_num(s.p50),
                    json_num(s.p90),
                    json_num(s.p99),
                    json_num(s.max),
                    json_num(s.mean)
                );
            }
            if let Some((_, p50, p99)) = ratios.iter().find(|(n, ..)| *n == row.name) {
                let _ = write!(
                    out,
                    ", \"subject_ratio_p50\": {}, \"subject_ratio_p99\": {}",
                    json_num(*p50),
                    json_num(*p99)
                );
            }
            let samples: Vec<String> = row.samples.iter().map(|v| json_num(*v)).collect();
            let _ = write!(out, ", \"samples\": [{}]}}", samples.join(", "));
        }
        out.push_str("\n     ]}");
    }
    out.push_str("\n  ]\n}\n");
    out
}

/// Read back a report written by [`render_json`] (`None` if it is not one).
pub fn parse_json(text: &str) -> Option<Report> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let facts =
        v.get("facts")?.as_object()?.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect();
    let groups = v
        .get("groups")?
        .as_array()?
        .iter()
        .filter_map(|g| {
            Some(Group {
                name: g.get("name")?.as_str()?.to_owned(),
                title: g.get("title")?.as_str()?.to_owned(),
                unit: g.get("unit")?.as_str()?.to_owned(),
                subject: g.get("subject").and_then(|s| s.as_str()).map(str::to_owned),
                notes: strings(g.get("notes")?),
                rows: g
                    .get("rows")?
                    .as_array()?
                    .iter()
                    .filter_map(|r| {
                        let samples =
                            r.get("samples")?.as_array()?.iter().filter_map(serde_json::Value::as_f64).collect();
                        Some(Row { name: r.get("name")?.as_str()?.to_owned(), samples })
                    })
                    .collect(),
            })
        })
        .collect();
    Some(Report { board: v.get("board")?.as_str()?.to_owned(), facts, groups })
}

/// This run's report with the groups of an earlier one that this run did
/// not measure, after this run's; their names are listed in a fact.
pub fn merge_earlier(mut now: Report, earlier: Option<Report>) -> Report {
    let Some(old) = earlier else { return now };
    let kept: Vec<Group> = old.groups.into_iter().filter(|g| !now.groups.iter().any(|n| n.name == g.name)).collect();
    if !kept.is_empty() {
        let names: Vec<&str> = kept.iter().map(|g| g.name.as_str()).collect();
        now.facts.push(("kept from an earlier run".into(), names.join(", ")));
        now.groups.extend(kept);
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            board: "qemu-x86_64".into(),
            facts: vec![("kernel".into(), "6.1.0-57-cloud-amd64".into()), ("qemu".into(), "QEMU \"7.2\"".into())],
            groups: vec![Group {
                name: "container-start".into(),
                title: "start requested to entrypoint reaped".into(),
                unit: "ms".into(),
                rows: vec![
                    Row::new("cairn", vec![10.0, 20.0, 30.0]),
                    Row::new("crun", vec![100.0, 200.0, 300.0]),
                    Row::new("runc", vec![]),
                ],
                subject: Some("cairn".into()),
                notes: vec!["interleaved".into()],
            }],
        }
    }

    #[test]
    fn ratios_are_subject_over_row() {
        let r = sample();
        let ratios = r.groups[0].ratios();
        assert_eq!(ratios.len(), 1, "no ratio to itself or to a row without samples");
        assert_eq!(ratios[0].0, "crun");
        assert!((ratios[0].1 - 0.1).abs() < 1e-9 && (ratios[0].2 - 0.1).abs() < 1e-9);
        let mut g = r.groups[0].clone();
        g.subject = None;
        assert!(g.ratios().is_empty());
    }

    #[test]
    fn table_and_markdown_show_summaries_and_ratios() {
        let r = sample();
        let t = render_table(&r);
        assert!(t.contains("== qemu-x86_64 =="), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("  crun ") && l.contains("200") && l.ends_with("0.10x / 0.10x")),
            "{t}"
        );
        assert!(t.lines().any(|l| l.starts_with("  runc") && l.contains("(no samples)")), "{t}");
        let md = render_md(&r);
        assert!(md.contains("| cairn | 3 | 10 | 20 | 30 | 30 | 30 | 20 | 1 |"), "{md}");
        assert!(md.contains("| crun | 3 | 100 | 200 | 300 | 300 | 300 | 200 | 0.10x / 0.10x |"), "{md}");
        assert!(md.contains("- interleaved"), "{md}");
    }

    #[test]
    fn json_is_escaped_and_complete() {
        let j = render_json(&sample());
        assert!(j.contains(r#""qemu": "QEMU \"7.2\"""#), "{j}");
        assert!(j.contains(r#""name": "crun", "n": 3, "min": 100, "p50": 200"#), "{j}");
        assert!(j.contains(r#""subject_ratio_p50": 0.1"#), "{j}");
        assert!(j.contains(r#"{"name": "runc", "samples": []}"#), "{j}");
        // Balanced brackets and braces (no string holds one here).
        let count = |c: char| j.chars().filter(|x| *x == c).count();
        assert_eq!(count('{'), count('}'));
        assert_eq!(count('['), count(']'));
        assert_eq!(json_str("a\u{1}\n"), "\"a\\u0001\\n\"");
        assert_eq!(json_num(f64::NAN), "null");
    }

    #[test]
    fn single_value_groups_are_a_list() {
        let g = Group {
            name: "sizes".into(),
            unit: "KiB".into(),
            rows: vec![Row::new("cairn-init", vec![752.8]), Row::new("tini", vec![])],
            ..Group::default()
        };
        assert!(g.single());
        let r = Report { board: "b".into(), facts: vec![], groups: vec![g] };
        let t = render_table(&r);
        assert!(t.contains("  cairn-init        752.8"), "{t}");
        assert!(!t.contains("p50"), "{t}");
        let md = render_md(&r);
        assert!(md.contains("| cairn-init | 752.8 |") && md.contains("| tini | none |"), "{md}");
        assert!(!sample().groups[0].single());
    }

    #[test]
    fn json_reads_back_and_merges() {
        let r = sample();
        let back = parse_json(&render_json(&r)).unwrap();
        assert_eq!(back.board, r.board);
        assert_eq!(back.facts, r.facts);
        assert_eq!(back.groups.len(), 1);
        let (a, b) = (&back.groups[0], &r.groups[0]);
        assert_eq!(
            (&a.name, &a.title, &a.unit, &a.subject, &a.notes),
            (&b.name, &b.title, &b.unit, &b.subject, &b.notes)
        );
        assert_eq!(
            a.rows.iter().map(|r| (&r.name, &r.samples)).collect::<Vec<_>>(),
            b.rows.iter().map(|r| (&r.name, &r.samples)).collect::<Vec<_>>()
        );
        assert!(parse_json("not json").is_none());

        let mut now = Report { board: "qemu-x86_64".into(), ..Report::default() };
        now.groups.push(Group { name: "sizes".into(), ..Group::default() });
        let merged = merge_earlier(now.clone(), Some(back.clone()));
        assert_eq!(merged.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["sizes", "container-start"]);
        assert!(merged.facts.contains(&("kept from an earlier run".into(), "container-start".into())));
        // A group measured now replaces the earlier one.
        now.groups.push(Group { name: "container-start".into(), ..Group::default() });
        let merged = merge_earlier(now, Some(back));
        assert_eq!(merged.groups.len(), 2);
        assert!(merged.groups[1].rows.is_empty());
    }

    #[test]
    fn numbers_get_sensible_precision() {
        assert_eq!(num(1234.56), "1235");
        assert_eq!(num(123.456), "123.5");
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(0.12345), "0.123");
        assert_eq!(num(7.0), "7");
    }
}
