//! The console ring: a bounded in-memory queue of whole lines waiting for
//! the console. PID 1 appends lines and writes them out without blocking as
//! the console takes them; a line that does not fit is dropped whole and
//! counted, so a stalled or flooded console costs output, never PID 1's
//! time.
//!
//! PID 1's own events may fill the whole ring; container output only
//! [`Ring::output_cap`] of it, so a container flooding its stdout cannot
//! crowd out the events about it.

use std::collections::VecDeque;

/// Bytes the ring holds.
pub const CAPACITY: usize = 64 * 1024;

/// Who wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event of PID 1.
    Event,
    /// A line of a container's output.
    Output,
}

/// Lines waiting for the console.
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Ring {
    /// An empty ring of `cap` bytes (allocated once).
    pub fn new(cap: usize) -> Self {
        Self { buf: VecDeque::with_capacity(cap), cap, dropped: 0 }
    }

    /// How much of the ring container output may fill.
    pub fn output_cap(&self) -> usize {
        self.cap / 2
    }

    /// Append one whole line (with its newline), or drop and count it.
    pub fn push(&mut self, line: &[u8], kind: Kind) -> bool {
        let limit = match kind {
            Kind::Event => self.cap,
            Kind::Output => self.output_cap(),
        };
        if self.buf.len() + line.len() > limit {
            self.dropped += 1;
            return false;
        }
        self.buf.extend(line);
        true
    }

    /// If lines were dropped and room has returned (the ring is at most a
    /// quarter full, so notices do not crowd the console themselves): how
    /// many. The caller queues the notice with [`Ring::notice_queued`].
    pub fn notice_due(&self) -> Option<u64> {
        (self.dropped > 0 && self.buf.len() <= self.cap / 4).then_some(self.dropped)
    }

    /// The notice for `n` dropped lines is in the ring: count from zero.
    pub fn notice_queued(&mut self, n: u64) {
        self.dropped = self.dropped.saturating_sub(n);
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
        self.buf.drain(..n.min(self.buf.len()));
    }

    /// Drop everything waiting (the console is gone), counting the lines.
    pub fn discard(&mut self) {
        let lines = self.buf.iter().filter(|&&b| b == b'\n').count();
        self.dropped += lines as u64;
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = Ring::new(40);
        assert!(r.push(b"0123456789\n", Kind::Output)); // 11 of 20 for output
        assert!(!r.push(b"0123456789\n", Kind::Output)); // 22 > 20: dropped
        assert!(r.push(b"event-one\n", Kind::Event)); // 21 <= 40
        assert!(!r.push(b"a-long-event-line-too-long\n", Kind::Event)); // 48 > 40
        assert_eq!(r.dropped(), 2);
        // No notice while the ring is more than a quarter full.
        assert_eq!(r.notice_due(), None);
        assert_eq!(drain(&mut r), b"0123456789\nevent-one\n");
        assert_eq!(r.notice_due(), Some(2));
        r.notice_queued(2);
        assert_eq!(r.notice_due(), None);
        assert_eq!(r.dropped(), 0);
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
