//! Sets of byte ranges of a disk: which bytes an image promises to restore.
//!
//! One type shared by the filesystem maps (`imgcast-fsmap` produces it from
//! bitmaps and partition tables) and the image encoder (which stores only the
//! blocks inside it), so "used" means the same thing on both sides.

use std::fmt;

/// A half-open byte range `[start, end)` of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// One past the last byte; `end > start`.
    pub end: u64,
}

impl Extent {
    /// `[start, start + len)`; `None` when empty or when it would pass `u64::MAX`.
    pub fn new(start: u64, len: u64) -> Option<Self> {
        let end = start.checked_add(len)?;
        (len > 0).then_some(Self { start, end })
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Never true for a valid extent; present for the `len`/`is_empty` pair.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Sorted, disjoint, non-adjacent byte ranges (adjacent ranges are merged).
///
/// Built by [`Extents::insert`] in any order; queried by range with
/// [`Extents::within`], which the encoder calls once per chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extents {
    ranges: Vec<Extent>,
}

impl Extents {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The whole of `[0, size)` (empty for size 0).
    pub fn full(size: u64) -> Self {
        let mut e = Self::new();
        e.insert(0, size);
        e
    }

    /// Adds `[start, start + len)`, merging with overlapping or adjacent ranges.
    /// An empty range, or one that would pass `u64::MAX`, is clamped or ignored.
    pub fn insert(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if end <= start {
            return;
        }
        // First range that ends at or after `start` (it may touch or overlap).
        let i = self.ranges.partition_point(|r| r.end < start);
        // Ranges from i that start at or before `end` merge with the new one.
        let j = i + self.ranges[i..].partition_point(|r| r.start <= end);
        let mut merged = Extent { start, end };
        if i < j {
            merged.start = merged.start.min(self.ranges[i].start);
            merged.end = merged.end.max(self.ranges[j - 1].end);
        }
        self.ranges.splice(i..j, [merged]);
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &Self) {
        for r in &other.ranges {
            self.insert(r.start, r.len());
        }
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[Extent] {
        &self.ranges
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no byte is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes in the set.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(Extent::len).sum()
    }

    /// One past the last byte in the set (0 when empty).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// Whether byte `offset` is in the set.
    pub fn contains(&self, offset: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= offset);
        self.ranges.get(i).is_some_and(|r| r.start <= offset)
    }

    /// The parts of the set inside `[start, end)`, clipped to it, ascending.
    pub fn within(&self, start: u64, end: u64) -> impl Iterator<Item = Extent> + '_ {
        let i = self.ranges.partition_point(|r| r.end <= start);
        self.ranges[i..]
            .iter()
            .take_while(move |r| r.start < end)
            .map(move |r| Extent {
                start: r.start.max(start),
                end: r.end.min(end),
            })
    }

    /// The set clipped to `[0, size)`.
    pub fn clipped(&self, size: u64) -> Self {
        Self {
            ranges: self.within(0, size).collect(),
        }
    }

    /// Largest power of two, at most `max`, that divides every boundary: the
    /// block size at which the set can be stored without rounding. The empty
    /// set gives the largest power of two not above `max`.
    pub fn alignment(&self, max: u64) -> u64 {
        let max = max.max(1);
        let mut bits = self
            .ranges
            .iter()
            .flat_map(|r| [r.start, r.end])
            .fold(0u64, |acc, b| acc | b);
        if bits == 0 {
            return prev_power_of_two(max);
        }
        bits &= bits.wrapping_neg(); // lowest set bit
        bits.min(prev_power_of_two(max))
    }

    /// The set grown outwards to whole blocks of `block` bytes (a power of
    /// two), clipped to `[0, size)`: conservative, never drops a used byte.
    pub fn rounded_out(&self, block: u64, size: u64) -> Self {
        let block = block.max(1);
        let mut out = Self::new();
        for r in &self.ranges {
            let start = r.start - r.start % block;
            let end = r.end.div_ceil(block).saturating_mul(block).min(size);
            if end > start {
                out.insert(start, end - start);
            }
        }
        out
    }
}

fn prev_power_of_two(x: u64) -> u64 {
    if x == 0 {
        1
    } else {
        1 << (63 - x.leading_zeros())
    }
}

impl FromIterator<Extent> for Extents {
    fn from_iter<I: IntoIterator<Item = Extent>>(iter: I) -> Self {
        let mut e = Self::new();
        for r in iter {
            e.insert(r.start, r.len());
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(e: &Extents) -> Vec<(u64, u64)> {
        e.ranges().iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent_in_any_order() {
        let mut e = Extents::new();
        e.insert(100, 10);
        e.insert(0, 10);
        e.insert(50, 0);
        assert_eq!(spans(&e), [(0, 10), (100, 110)]);
        e.insert(10, 5); // adjacent to the first
        assert_eq!(spans(&e), [(0, 15), (100, 110)]);
        e.insert(14, 90); // bridges both
        assert_eq!(spans(&e), [(0, 110)]);
        e.insert(200, 1);
        e.insert(150, 10);
        e.insert(120, 1);
        assert_eq!(spans(&e), [(0, 110), (120, 121), (150, 160), (200, 201)]);
        e.insert(119, 100); // swallows three
        assert_eq!(spans(&e), [(0, 110), (119, 219)]);
        assert_eq!(e.total(), 210);
        assert_eq!(e.end(), 219);
        e.insert(u64::MAX - 1, 10); // clamped, not wrapped
        assert_eq!(e.end(), u64::MAX);
    }

    #[test]
    fn contains_within_clipped() {
        let e: Extents = [(0, 4096), (8192, 4096), (65536, 1)]
            .iter()
            .filter_map(|&(s, l)| Extent::new(s, l))
            .collect();
        assert!(e.contains(0) && e.contains(4095) && !e.contains(4096));
        assert!(e.contains(8192) && !e.contains(12288) && e.contains(65536));
        let w: Vec<_> = e.within(2048, 9000).map(|r| (r.start, r.end)).collect();
        assert_eq!(w, [(2048, 4096), (8192, 9000)]);
        assert_eq!(e.within(4096, 8192).count(), 0);
        assert_eq!(spans(&e.clipped(10_000)), [(0, 4096), (8192, 10_000)]);
    }

    #[test]
    fn alignment_and_rounding() {
        let mut e = Extents::new();
        assert_eq!(e.alignment(1 << 20), 1 << 20);
        e.insert(1 << 20, 8 << 20);
        assert_eq!(e.alignment(65536), 65536);
        e.insert(20 << 20, 3 * 4096);
        assert_eq!(e.alignment(65536), 4096);
        e.insert(40 << 20, 512);
        assert_eq!(e.alignment(65536), 512);
        let r = e.rounded_out(4096, 40 << 20 | 100);
        assert_eq!(
            spans(&r),
            [
                (1 << 20, 9 << 20),
                (20 << 20, (20 << 20) + 3 * 4096),
                (40 << 20, (40 << 20) + 100)
            ]
        );
        assert_eq!(Extent::new(5, 0), None);
        assert_eq!(Extent::new(u64::MAX, 2), None);
        assert_eq!(Extents::full(0).len(), 0);
    }
}
