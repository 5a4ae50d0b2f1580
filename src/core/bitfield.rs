//! A sliding set of sequence numbers: which segments a neighbour holds, which headers went out
//! on a connection. Bounded in span, so a neighbour cannot make us allocate without limit.

use std::collections::VecDeque;

/// Widest span kept: older entries fall off when a newer one would not fit. Far more than any
/// playback window (4,096 segments is over half an hour of 0.5 s segments).
const MAX_SPAN: u64 = 4096;

/// Bit `i` of word `w` stands for `base + 64 * w + i`; `base` is a multiple of 64.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqBits {
    base: u64,
    words: VecDeque<u64>,
}

impl SeqBits {
    /// Whether `seq` is in the set.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let off = seq - self.base;
        self.words
            .get((off / 64) as usize)
            .is_some_and(|w| w & (1 << (off % 64)) != 0)
    }

    /// Adds `seq`; entries more than [`MAX_SPAN`] older than it are forgotten.
    pub(crate) fn insert(&mut self, seq: u64) {
        if self.words.is_empty() {
            self.base = seq & !63;
        }
        if seq < self.base {
            return;
        }
        if seq - self.base >= MAX_SPAN {
            self.forget_below(seq.saturating_add(1).saturating_sub(MAX_SPAN));
            if self.words.is_empty() {
                self.base = seq & !63;
            }
        }
        let off = seq - self.base;
        let w = (off / 64) as usize;
        while self.words.len() <= w {
            self.words.push_back(0);
        }
        self.words[w] |= 1 << (off % 64);
    }

    /// Drops every entry below `seq` (rounded down to a word).
    pub(crate) fn forget_below(&mut self, seq: u64) {
        while let Some(next) = self.base.checked_add(64) {
            if seq < next || self.words.is_empty() {
                break;
            }
            self.words.pop_front();
            self.base = next;
        }
        if self.words.is_empty() && seq > self.base {
            self.base = seq & !63;
        }
    }

    /// The highest entry, if any.
    pub(crate) fn max(&self) -> Option<u64> {
        let (i, w) = self
            .words
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)?;
        Some(self.base + 64 * i as u64 + 63 - w.leading_zeros() as u64)
    }

    /// Adds the segments of a wire bitfield (bit `i`, LSB first per byte, stands for `base + i`).
    pub(crate) fn insert_bitfield(&mut self, base: u64, bits: &[u8]) {
        for (i, byte) in bits.iter().enumerate() {
            for b in 0..8 {
                if byte & (1 << b) != 0 {
                    if let Some(seq) = base.checked_add(i as u64 * 8 + b) {
                        self.insert(seq);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_max_and_forget() {
        let mut s = SeqBits::default();
        assert_eq!(s.max(), None);
        for seq in [100, 101, 163, 300] {
            s.insert(seq);
        }
        assert!(s.contains(100) && s.contains(163) && s.contains(300));
        assert!(!s.contains(99) && !s.contains(102) && !s.contains(10_000));
        assert_eq!(s.max(), Some(300));
        s.forget_below(200);
        assert!(!s.contains(100) && s.contains(300));
    }

    #[test]
    fn extreme_sequence_numbers_do_not_overflow() {
        let mut s = SeqBits::default();
        s.insert(u64::MAX);
        s.insert(u64::MAX - 64);
        s.forget_below(u64::MAX);
        s.insert(0);
        assert!(!s.contains(1));
        let _ = s.max();
        s.insert_bitfield(u64::MAX - 3, &[0xff; 4]);
    }

    #[test]
    fn span_stays_bounded() {
        let mut s = SeqBits::default();
        s.insert(0);
        s.insert(u64::MAX - 1);
        assert!(s.contains(u64::MAX - 1));
        assert!(!s.contains(0));
        assert!(s.words.len() as u64 <= MAX_SPAN / 64 + 1);
    }

    #[test]
    fn wire_bitfields_are_read_lsb_first() {
        let mut s = SeqBits::default();
        s.insert_bitfield(10, &[0b0000_0101, 0b1000_0000]);
        assert!(s.contains(10) && s.contains(12) && s.contains(25));
        assert!(!s.contains(11) && !s.contains(24));
    }
}
