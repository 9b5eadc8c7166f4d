//! Sample statistics and the result lines the bench guest prints. Pure
//! code, tested on the host.

use std::collections::BTreeMap;

/// Order statistics of one set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The `p`th percentile of sorted samples by the nearest-rank method: the
/// smallest sample with at least `p`% of the samples at or below it. Always
/// one of the samples (no interpolation), so a p99 of 200 samples is the
/// second largest.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Summarise samples (any order); `None` for none. NaNs are dropped.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    Some(Summary {
        n: s.len(),
        min: *s.first()?,
        p50: percentile(&s, 50.0)?,
        p90: percentile(&s, 90.0)?,
        p99: percentile(&s, 99.0)?,
        max: *s.last()?,
        mean: s.iter().sum::<f64>() / s.len() as f64,
    })
}

/// Samples the guest printed, by (contender, metric), in the order printed.
pub type Samples = BTreeMap<(String, String), Vec<f64>>;

/// Collect `bench-sample <contender> <metric> <value>` lines from console
/// output; anything else (kernel messages, partial lines) is skipped. The
/// marker may come after other text on the same line (a kernel message
/// printed in the middle of ours).
pub fn parse_samples<'a>(lines: impl IntoIterator<Item = &'a str>) -> Samples {
    let mut out = Samples::new();
    for line in lines {
        let Some(at) = line.find("bench-sample ") else { continue };
        let mut w = line[at..].split_whitespace().skip(1);
        let (Some(who), Some(metric), Some(value), None) = (w.next(), w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else { continue };
        out.entry((who.to_owned(), metric.to_owned())).or_default().push(v);
    }
    out
}

/// `key=value` words of the first line holding `marker` (e.g. the guest's
/// `bench-info` line), in order.
pub fn parse_info<'a>(lines: impl IntoIterator<Item = &'a str>, marker: &str) -> Vec<(String, String)> {
    let Some(line) = lines.into_iter().find(|l| l.contains(marker)) else { return Vec::new() };
    let start = line.find(marker).map_or(0, |i| i + marker.len());
    line[start..]
        .split_whitespace()
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let sum = summarize(&s).unwrap();
        assert_eq!((sum.n, sum.min, sum.p50, sum.p90, sum.p99, sum.max), (100, 1.0, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(sum.mean, 50.5);
        // 200 samples: p99 is the 198th, i.e. the third largest is not it.
        let s: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let sum = summarize(&s).unwrap();
        assert_eq!((sum.p50, sum.p90, sum.p99), (100.0, 180.0, 198.0));
        // One sample is every percentile.
        let one = summarize(&[7.0]).unwrap();
        assert_eq!((one.min, one.p50, one.p99, one.max), (7.0, 7.0, 7.0, 7.0));
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 100.0), Some(3.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        // Rank 6.3 rounds up: the 7th of 7, not the 6th.
        let seven: Vec<f64> = (1..=7).map(f64::from).collect();
        assert_eq!(percentile(&seven, 90.0), Some(7.0));
    }

    #[test]
    fn sample_lines_are_collected_in_order() {
        let console = [
            "[    1.0] random: crng init done",
            "bench-sample cairn reaped 1200",
            "bench-sample crun reaped 50000.5",
            "noise bench-sample cairn reaped 1300",
            "bench-sample cairn exec 900",
            "bench-sample cairn reaped",
            "bench-sample cairn reaped x",
            "bench-sample cairn reaped 1 extra",
        ];
        let s = parse_samples(console);
        assert_eq!(s.len(), 3);
        assert_eq!(s[&("cairn".into(), "reaped".into())], [1200.0, 1300.0]);
        assert_eq!(s[&("crun".into(), "reaped".into())], [50000.5]);
        assert_eq!(s[&("cairn".into(), "exec".into())], [900.0]);
    }

    #[test]
    fn info_line_fields() {
        let lines = ["x", "bench-info n=200 kernel=6.1.0 order=a,b", "bench-info n=1"];
        let info = parse_info(lines, "bench-info");
        assert_eq!(
            info,
            [("n".into(), "200".into()), ("kernel".into(), "6.1.0".into()), ("order".into(), "a,b".into())]
        );
        assert!(parse_info(lines, "nothing").is_empty());
    }
}
