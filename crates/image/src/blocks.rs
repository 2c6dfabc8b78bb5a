//! Block maps: which blocks of one chunk are *used* (the image promises to
//! restore them) and which of those are *data* (used and not all zero).
//!
//! A map is a bitmap, bit `i` of byte `i / 8` (least significant first) for
//! block `i`, with the padding bits of the last byte zero. In a record each
//! map is [`MapEncoding::Empty`], [`MapEncoding::Full`] or an explicit
//! [`MapEncoding::Bitmap`], whichever is exact, so every pair of maps has one
//! encoding (see `docs/FORMAT.md`).

use std::ops::Range;

use crate::codec::DecodeError;
use crate::format::MapEncoding;

/// A set of blocks of one chunk.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BlockMap {
    blocks: u32,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for BlockMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockMap({}/{})", self.count(), self.blocks)
    }
}

impl BlockMap {
    /// No block of `blocks`.
    pub fn empty(blocks: u32) -> Self {
        Self {
            blocks,
            bytes: vec![0; blocks.div_ceil(8) as usize],
        }
    }

    /// Every block of `blocks`.
    pub fn full(blocks: u32) -> Self {
        let mut m = Self {
            blocks,
            bytes: vec![0xFF; blocks.div_ceil(8) as usize],
        };
        m.clear_padding();
        m
    }

    /// Parses a bitmap of `blocks` bits; the length must be exact and the
    /// padding bits zero.
    pub fn from_bitmap(blocks: u32, bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != blocks.div_ceil(8) as usize {
            return Err(DecodeError::Invalid {
                field: "bitmap length",
                value: bytes.len() as u64,
            });
        }
        let m = Self {
            blocks,
            bytes: bytes.to_vec(),
        };
        let mut padded = m.clone();
        padded.clear_padding();
        if padded != m {
            return Err(DecodeError::Invalid {
                field: "bitmap padding",
                value: u64::from(bytes.last().copied().unwrap_or(0)),
            });
        }
        Ok(m)
    }

    fn clear_padding(&mut self) {
        let tail = self.blocks % 8;
        if tail != 0 {
            if let Some(last) = self.bytes.last_mut() {
                *last &= (1u8 << tail) - 1;
            }
        }
    }

    /// Number of blocks the map covers (set or not).
    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// The bitmap bytes (`ceil(blocks / 8)` of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether block `i` is in the set (false past the end).
    pub fn get(&self, i: u32) -> bool {
        i < self.blocks && self.bytes[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Adds block `i` (ignored past the end).
    pub fn set(&mut self, i: u32) {
        if i < self.blocks {
            self.bytes[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    /// Adds blocks `range` (clipped to the map).
    pub fn set_range(&mut self, range: Range<u32>) {
        for i in range.start..range.end.min(self.blocks) {
            self.set(i);
        }
    }

    /// Blocks in the set.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether no block is in the set.
    pub fn is_empty(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    /// Whether every block is in the set.
    pub fn is_full(&self) -> bool {
        self.count() == self.blocks
    }

    /// Whether every block of `self` is in `other` (same size).
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.blocks == other.blocks
            && self
                .bytes
                .iter()
                .zip(&other.bytes)
                .all(|(a, b)| a & !b == 0)
    }

    /// The maximal runs of consecutive blocks in the set, ascending.
    pub fn runs(&self) -> Runs<'_> {
        Runs { map: self, next: 0 }
    }

    /// How the used map is encoded in a record (`self` as the used map).
    pub(crate) fn used_encoding(&self) -> MapEncoding {
        if self.is_empty() {
            MapEncoding::Empty
        } else if self.is_full() {
            MapEncoding::Full
        } else {
            MapEncoding::Bitmap
        }
    }

    /// How the data map is encoded, given the used map.
    pub(crate) fn data_encoding(&self, used: &Self) -> MapEncoding {
        if self.is_empty() {
            MapEncoding::Empty
        } else if self == used {
            MapEncoding::Full
        } else {
            MapEncoding::Bitmap
        }
    }

    /// Bytes covered by the set in a chunk of `raw_len` bytes cut into
    /// blocks of `block_size` (the last block may be short).
    pub fn bytes_in(&self, raw_len: u32, block_size: u32) -> u32 {
        let mut n = self.count().saturating_mul(block_size);
        if self.blocks > 0 && self.get(self.blocks - 1) {
            let last = raw_len - (self.blocks - 1) * block_size;
            n = n - block_size + last;
        }
        n
    }
}

/// Iterator over the runs of a [`BlockMap`].
#[derive(Debug)]
pub struct Runs<'a> {
    map: &'a BlockMap,
    next: u32,
}

impl Iterator for Runs<'_> {
    type Item = Range<u32>;

    fn next(&mut self) -> Option<Range<u32>> {
        let m = self.map;
        let mut i = self.next;
        // Skip whole zero bytes quickly; maps are mostly all-set or all-clear.
        while i < m.blocks && !m.get(i) {
            if i % 8 == 0 && m.bytes[(i / 8) as usize] == 0 {
                i += 8;
            } else {
                i += 1;
            }
        }
        if i >= m.blocks {
            self.next = m.blocks;
            return None;
        }
        let start = i;
        while i < m.blocks && m.get(i) {
            if i % 8 == 0 && m.bytes[(i / 8) as usize] == 0xFF {
                i += 8;
            } else {
                i += 1;
            }
        }
        let end = i.min(m.blocks);
        self.next = end;
        Some(start..end)
    }
}

/// Writes the explicit bitmaps the two encodings call for (used first).
pub(crate) fn encode_maps(used: &BlockMap, data: &BlockMap, out: &mut Vec<u8>) {
    if used.used_encoding() == MapEncoding::Bitmap {
        out.extend_from_slice(used.as_bytes());
    }
    if data.data_encoding(used) == MapEncoding::Bitmap {
        out.extend_from_slice(data.as_bytes());
    }
}

/// Bytes of bitmaps a record with these encodings carries for `blocks`.
pub(crate) fn maps_len(used: MapEncoding, data: MapEncoding, blocks: u32) -> u32 {
    let one = blocks.div_ceil(8);
    u32::from(used == MapEncoding::Bitmap) * one + u32::from(data == MapEncoding::Bitmap) * one
}

/// Rebuilds both maps from their encodings and bitmap bytes, refusing any
/// encoding that is not the exact one (an all-set bitmap, data outside the
/// used blocks, a data bitmap equal to the used map).
pub(crate) fn decode_maps(
    used_enc: MapEncoding,
    data_enc: MapEncoding,
    blocks: u32,
    bytes: &[u8],
) -> Result<(BlockMap, BlockMap), DecodeError> {
    let expect = maps_len(used_enc, data_enc, blocks) as usize;
    if bytes.len() != expect {
        return Err(DecodeError::Invalid {
            field: "maps length",
            value: bytes.len() as u64,
        });
    }
    let one = blocks.div_ceil(8) as usize;
    let (used_bytes, data_bytes) = match used_enc {
        MapEncoding::Bitmap => bytes.split_at(one),
        _ => bytes.split_at(0),
    };
    let used = match used_enc {
        MapEncoding::Empty => BlockMap::empty(blocks),
        MapEncoding::Full => BlockMap::full(blocks),
        MapEncoding::Bitmap => BlockMap::from_bitmap(blocks, used_bytes)?,
    };
    let data = match data_enc {
        MapEncoding::Empty => BlockMap::empty(blocks),
        MapEncoding::Full => used.clone(),
        MapEncoding::Bitmap => BlockMap::from_bitmap(blocks, data_bytes)?,
    };
    let invalid = |field| DecodeError::Invalid {
        field,
        value: u64::from(blocks),
    };
    if used.used_encoding() != used_enc {
        return Err(invalid("used map (not in its exact encoding)"));
    }
    if !data.is_subset_of(&used) {
        return Err(invalid("data map (blocks outside the used map)"));
    }
    if data.data_encoding(&used) != data_enc {
        return Err(invalid("data map (not in its exact encoding)"));
    }
    Ok((used, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(blocks: u32, set: &[u32]) -> BlockMap {
        let mut m = BlockMap::empty(blocks);
        for &i in set {
            m.set(i);
        }
        m
    }

    fn spans(m: &BlockMap) -> Vec<(u32, u32)> {
        m.runs().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn runs_and_counts() {
        let m = map(20, &[0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 19]);
        assert_eq!(spans(&m), [(0, 3), (5, 6), (8, 17), (19, 20)]);
        assert_eq!(m.count(), 14);
        assert_eq!(spans(&BlockMap::full(13)), [(0, 13)]);
        assert_eq!(BlockMap::empty(13).runs().count(), 0);
        assert_eq!(BlockMap::full(0).runs().count(), 0);
        assert!(BlockMap::full(0).is_full() && BlockMap::full(0).is_empty());
        assert_eq!(BlockMap::full(13).as_bytes(), [0xFF, 0x1F]);
        // A short last block counts for what it holds.
        assert_eq!(map(3, &[2]).bytes_in(4096 * 2 + 100, 4096), 100);
        assert_eq!(map(3, &[0, 2]).bytes_in(4096 * 2 + 100, 4096), 4196);
        assert_eq!(BlockMap::full(3).bytes_in(4096 * 2 + 100, 4096), 8292);
    }

    #[test]
    fn maps_encode_exactly_once() -> Result<(), DecodeError> {
        let cases = [
            (BlockMap::empty(10), BlockMap::empty(10)),
            (BlockMap::full(10), BlockMap::empty(10)),
            (BlockMap::full(10), BlockMap::full(10)),
            (BlockMap::full(10), map(10, &[3])),
            (map(10, &[1, 2, 3]), map(10, &[1, 2, 3])),
            (map(10, &[1, 2, 3]), map(10, &[2])),
            (map(10, &[1, 2, 3]), BlockMap::empty(10)),
        ];
        for (used, data) in cases {
            let (ue, de) = (used.used_encoding(), data.data_encoding(&used));
            let mut bytes = Vec::new();
            encode_maps(&used, &data, &mut bytes);
            assert_eq!(bytes.len() as u32, maps_len(ue, de, 10));
            assert_eq!(decode_maps(ue, de, 10, &bytes)?, (used, data));
        }
        Ok(())
    }

    #[test]
    fn inexact_or_lying_maps_are_refused() {
        use MapEncoding::*;
        // All-set bitmap, all-clear bitmap, data outside used, data bitmap = used,
        // padding bits, wrong lengths, data without used.
        let bad: [(MapEncoding, MapEncoding, Vec<u8>); 8] = [
            (Bitmap, Empty, vec![0xFF, 0x03]),
            (Bitmap, Empty, vec![0, 0]),
            (Bitmap, Bitmap, vec![0x01, 0, 0x02, 0]),
            (Bitmap, Bitmap, vec![0x03, 0, 0x03, 0]),
            (Bitmap, Empty, vec![0x01, 0x04]),
            (Bitmap, Empty, vec![0x01]),
            (Full, Empty, vec![0]),
            (Empty, Full, vec![]),
        ];
        for (u, d, bytes) in bad {
            assert!(
                decode_maps(u, d, 10, &bytes).is_err(),
                "{u:?} {d:?} {bytes:?}"
            );
        }
    }
}
