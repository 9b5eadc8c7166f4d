//! The console ring: a bounded in-memory queue of whole lines waiting for
//! the console. PID 1 appends lines and writes them out without blocking as
//! the console takes them; a line that does not fit is dropped whole and
//! counted, so a stalled or flooded console costs output, never PID 1's
//! time.
//!
//! PID 1's own events may fill the whole ring; container output only
//! [`Ring::output_cap`] of it, and each container at most
//! [`Ring::per_source_cap`], so a container flooding its stdout crowds out
//! neither the events about it nor the other containers' lines.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cairn_format::manifest::MAX_CONTAINERS;

/// Bytes the ring holds.
pub const CAPACITY: usize = 64 * 1024;
/// Least time between two notices of dropped lines.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Who wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event of PID 1.
    Event,
    /// A line of container number `.0`'s output (below `MAX_CONTAINERS`).
    Output(usize),
}

/// Lines waiting for the console.
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
    /// Per line still (partly) in `buf`: its container and bytes left.
    lines: VecDeque<(Option<usize>, usize)>,
    /// Bytes in `buf` per container.
    held: [usize; MAX_CONTAINERS],
    /// When the last notice was queued.
    last_notice: Option<Instant>,
}

impl Ring {
    /// An empty ring of `cap` bytes (allocated once).
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap),
            cap,
            dropped: 0,
            lines: VecDeque::new(),
            held: [0; MAX_CONTAINERS],
            last_notice: None,
        }
    }

    /// How much of the ring container output may fill.
    pub fn output_cap(&self) -> usize {
        self.cap / 2
    }

    /// How much of the ring one container's output may fill.
    pub fn per_source_cap(&self) -> usize {
        self.cap / 8
    }

    fn output_len(&self) -> usize {
        self.held.iter().sum()
    }

    /// Append one whole line (with its newline), or drop and count it.
    pub fn push(&mut self, line: &[u8], kind: Kind) -> bool {
        let fits = match kind {
            Kind::Event => self.buf.len() + line.len() <= self.cap,
            Kind::Output(i) => {
                let mine = self.held.get(i).copied().unwrap_or(usize::MAX);
                self.buf.len() + line.len() <= self.cap
                    && self.output_len() + line.len() <= self.output_cap()
                    && mine.saturating_add(line.len()) <= self.per_source_cap()
            }
        };
        if !fits || line.is_empty() {
            self.dropped += u64::from(!fits);
            return fits;
        }
        let source = match kind {
            Kind::Event => None,
            Kind::Output(i) => Some(i),
        };
        if let Some(h) = source.and_then(|i| self.held.get_mut(i)) {
            *h += line.len();
        }
        self.lines.push_back((source, line.len()));
        self.buf.extend(line);
        true
    }

    /// If lines were dropped and room has returned (the ring is at most a
    /// quarter full) and the last notice is [`NOTICE_INTERVAL`] old (so
    /// notices do not crowd the console themselves): how many. The caller
    /// queues the notice with [`Ring::notice_queued`].
    pub fn notice_due(&self, now: Instant) -> Option<u64> {
        let quiet = self.last_notice.is_none_or(|t| now.saturating_duration_since(t) >= NOTICE_INTERVAL);
        (self.dropped > 0 && self.buf.len() <= self.cap / 4 && quiet).then_some(self.dropped)
    }

    /// The notice for `n` dropped lines is in the ring: count from zero.
    pub fn notice_queued(&mut self, n: u64, now: Instant) {
        self.dropped = self.dropped.saturating_sub(n);
        self.last_notice = Some(now);
    }

    /// Lines dropped since the last notice.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The oldest bytes, contiguous (the next write's buffer).
    pub fn front(&self) -> &[u8] {
        self.buf.as_slices().0
    }

    /// `n` bytes were written.
    pub fn consume(&mut self, n: usize) {
        let mut n = n.min(self.buf.len());
        self.buf.drain(..n);
        while n > 0 {
            let Some((source, left)) = self.lines.front_mut() else { break };
            let take = n.min(*left);
            *left -= take;
            n -= take;
            if let Some(h) = source.and_then(|i| self.held.get_mut(i)) {
                *h = h.saturating_sub(take);
            }
            if *left == 0 {
                self.lines.pop_front();
            }
        }
    }

    /// Drop everything waiting (the console is gone), counting the lines.
    pub fn discard(&mut self) {
        let lines = self.buf.iter().filter(|&&b| b == b'\n').count();
        self.dropped += lines as u64;
        self.buf.clear();
        self.lines.clear();
        self.held = [0; MAX_CONTAINERS];
    }
}

/// Bytes a log line costs beyond its text (its timestamp and bookkeeping),
/// counted against the ring's size so the bound is on memory, not text.
pub const LOG_LINE_OVERHEAD: usize = 40;

/// One container's log: its newest output lines with the time each was
/// read (ms since boot), at most `cap` bytes counting
/// [`LOG_LINE_OVERHEAD`] per line. Appending evicts the oldest lines; a
/// single line never exceeds `cap` (it is cut by the tap long before).
pub struct LogRing {
    lines: VecDeque<(u64, Box<[u8]>)>,
    used: usize,
    cap: usize,
    /// Lines evicted so far.
    pub evicted: u64,
}

impl LogRing {
    /// An empty log of `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self { lines: VecDeque::new(), used: 0, cap, evicted: 0 }
    }

    /// Bytes in use (text plus overhead), never above the cap.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used
    }

    /// Append a line read at `t_ms`, evicting the oldest lines to make room.
    pub fn push(&mut self, t_ms: u64, line: &[u8]) {
        let cost = line.len() + LOG_LINE_OVERHEAD;
        if cost > self.cap {
            return;
        }
        while self.used + cost > self.cap {
            match self.lines.pop_front() {
                Some((_, old)) => {
                    self.used -= old.len() + LOG_LINE_OVERHEAD;
                    self.evicted += 1;
                }
                None => break,
            }
        }
        self.lines.push_back((t_ms, line.into()));
        self.used += cost;
    }

    /// The lines read at or after `since_ms`, oldest first.
    #[cfg(test)]
    pub fn since(&self, since_ms: u64) -> impl Iterator<Item = &(u64, Box<[u8]>)> {
        self.lines.range(self.seq_since(since_ms).saturating_sub(self.evicted) as usize..)
    }

    /// Sequence number of the first line read at or after `since_ms` (each
    /// line pushed gets the next number; the oldest kept is `evicted`).
    pub fn seq_since(&self, since_ms: u64) -> u64 {
        // Lines are appended in time order.
        self.evicted + self.lines.partition_point(|(t, _)| *t < since_ms) as u64
    }

    /// Sequence number the next line pushed will get.
    pub fn next_seq(&self) -> u64 {
        self.evicted + self.lines.len() as u64
    }

    /// Line number `seq`, if it is still kept.
    pub fn get(&self, seq: u64) -> Option<&(u64, Box<[u8]>)> {
        let k = usize::try_from(seq.checked_sub(self.evicted)?).ok()?;
        self.lines.get(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_lines_within_its_bound() {
        let mut log = LogRing::new(4096);
        for k in 0..10_000u64 {
            log.push(k, format!("line {k}").as_bytes());
            assert!(log.used() <= 4096);
        }
        let kept: Vec<_> = log.since(0).cloned().collect();
        let last = kept.last().map(|(t, l)| (*t, l.to_vec()));
        assert_eq!(last, Some((9999, b"line 9999".to_vec())));
        assert!(kept.len() > 50, "{}", kept.len());
        assert_eq!(log.evicted + kept.len() as u64, 10_000);
        assert_eq!(log.since(9998).count(), 2);
        assert_eq!(log.since(10_000).count(), 0);
        assert_eq!(log.next_seq(), 10_000);
        assert_eq!(log.get(9999).map(|(t, _)| *t), Some(9999));
        assert!(log.get(log.evicted - 1).is_none() && log.get(10_000).is_none());
        assert_eq!(log.seq_since(9998), 9998);
        // A line bigger than the whole log is not kept (and evicts nothing).
        log.push(10_000, &[b'x'; 5000]);
        assert_eq!(log.since(0).count(), kept.len());
    }

    fn drain(r: &mut Ring) -> Vec<u8> {
        let mut out = Vec::new();
        while !r.is_empty() {
            let f = r.front().to_vec();
            out.extend_from_slice(&f);
            r.consume(f.len());
        }
        out
    }

    #[test]
    fn lines_that_do_not_fit_are_dropped_whole_and_counted() {
        let mut r = Ring::new(96); // output 48, 12 per container
        assert_eq!((r.output_cap(), r.per_source_cap()), (48, 12));
        let line = b"0123456789\n";
        assert!(r.push(line, Kind::Output(0)));
        assert!(!r.push(line, Kind::Output(0)), "over container 0's share");
        for i in 1..4 {
            assert!(r.push(line, Kind::Output(i)));
        }
        assert!(!r.push(line, Kind::Output(4)), "over the output half");
        let event = [b'e'; 40];
        assert!(r.push(&event, Kind::Event), "events may use the rest");
        assert!(!r.push(&event[..20], Kind::Event), "but not more than the ring");
        assert_eq!(r.dropped(), 3);
        // No notice while the ring is more than a quarter full.
        let t0 = Instant::now();
        assert_eq!(r.notice_due(t0), None);
        assert_eq!(drain(&mut r).len(), 84);
        assert_eq!(r.notice_due(t0), Some(3));
        r.notice_queued(3, t0);
        assert_eq!(r.notice_due(t0), None);
        assert_eq!(r.dropped(), 0);
        // At most one notice per interval.
        assert!(!r.push(&[b'z'; 13], Kind::Output(0)));
        assert_eq!(r.notice_due(t0 + NOTICE_INTERVAL / 2), None);
        assert_eq!(r.notice_due(t0 + NOTICE_INTERVAL), Some(1));
        r.notice_queued(1, t0 + NOTICE_INTERVAL);
        assert!(r.push(line, Kind::Output(0)), "room again once written");
    }

    #[test]
    fn one_flooding_container_leaves_room_for_the_others() {
        let mut r = Ring::new(64); // output 32, 8 per container
        assert!(r.push(b"aaaaaa\n", Kind::Output(0)));
        assert!(!r.push(b"a\n", Kind::Output(0)), "container 0 is at its share");
        assert!(r.push(b"bbbbbb\n", Kind::Output(1)), "container 1 still has its own");
        r.consume(3); // 4 of container 0's bytes are left
        assert!(r.push(b"a\n", Kind::Output(0)), "room for what was written");
        assert!(!r.push(b"aa\n", Kind::Output(0)));
        r.consume(11); // the rest of its first line and container 1's line
        assert!(r.push(b"aa\n", Kind::Output(0)));
        assert!(!r.push(b"x\n", Kind::Output(MAX_CONTAINERS)), "unknown source");
        assert_eq!(r.dropped(), 3);
        assert_eq!(drain(&mut r), b"a\naa\n");
    }

    #[test]
    fn partial_writes_keep_order_across_the_wrap() {
        let mut r = Ring::new(16);
        assert!(r.push(b"abcdef\n", Kind::Event));
        r.consume(5);
        assert!(r.push(b"ghijklmn\n", Kind::Event));
        assert!(r.push(b"op\n", Kind::Event)); // wraps in the deque
        assert_eq!(r.len(), 14);
        assert_eq!(drain(&mut r), b"f\nghijklmn\nop\n");
    }

    #[test]
    fn discard_counts_the_lines_lost() {
        let mut r = Ring::new(64);
        r.push(b"a\nb\n", Kind::Event);
        r.discard();
        assert!(r.is_empty());
        assert_eq!(r.dropped(), 2);
    }
}
