//! The replay window: each sender numbers its packets; a receiver accepts each number once.
//!
//! Multicast reorders little, so a window of the last [`WINDOW`] numbers (as IPsec and WireGuard
//! keep) lets reordered packets in and keeps every copy of an old one out. A number older than the
//! window is refused too: it can only be a replay or a packet so late that repair has replaced it.

/// Sequence numbers remembered below the highest one seen.
pub(crate) const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

/// Which of the last [`WINDOW`] sequence numbers of one sender were seen.
#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    /// Highest number accepted; 0 before the first.
    top: u64,
    /// Bit `n % WINDOW` is set when `n` (within the window) was seen.
    bits: Box<[u64; WORDS]>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            top: 0,
            bits: Box::new([0; WORDS]),
        }
    }
}

impl ReplayWindow {
    /// Records `seq` and says whether it is new. Number 0 is never valid (senders start at 1).
    pub(crate) fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            let advance = seq - self.top;
            if advance >= WINDOW {
                self.bits.fill(0);
            } else {
                for n in self.top + 1..seq {
                    self.clear(n);
                }
            }
            self.top = seq;
            self.set(seq);
            return true;
        }
        if self.top - seq >= WINDOW || self.is_set(seq) {
            return false;
        }
        self.set(seq);
        true
    }

    fn slot(n: u64) -> (usize, u64) {
        let i = n % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }
    fn set(&mut self, n: u64) {
        let (w, b) = Self::slot(n);
        self.bits[w] |= b;
    }
    fn clear(&mut self, n: u64) {
        let (w, b) = Self::slot(n);
        self.bits[w] &= !b;
    }
    fn is_set(&self, n: u64) -> bool {
        let (w, b) = Self::slot(n);
        self.bits[w] & b != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_once_reordering_allowed_old_refused() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(3), "reordered: still new");
        assert!(!w.accept(3));
        assert!(w.accept(4));
        assert!(w.accept(6));
        assert!(w.accept(5 + WINDOW));
        assert!(!w.accept(5), "fell out of the window");
        assert!(w.accept(6 + 1), "inside the window and unseen");
        assert!(!w.accept(6), "six is still inside the window, and was seen");
        // A jump of more than a window forgets everything below.
        assert!(w.accept(10 * WINDOW));
        assert!(w.accept(10 * WINDOW - 1));
        assert!(!w.accept(10 * WINDOW - 1));
        assert!(!w.accept(9 * WINDOW), "older than the window");
    }

    #[test]
    fn a_long_in_order_stream_with_duplicates_is_exact() {
        let mut w = ReplayWindow::default();
        let mut accepted = 0;
        for n in 1..=20_000u64 {
            accepted += u32::from(w.accept(n));
            if n % 7 == 0 {
                assert!(!w.accept(n - 3), "duplicate of {}", n - 3);
            }
            if n % 11 == 0 {
                assert!(!w.accept(n));
            }
        }
        assert_eq!(accepted, 20_000);
    }
}
