//! The session info a master announces: the image geometry a client needs to
//! check its target before it registers.

use imgcast_image::{Geometry, Level};

/// Layout version of the session info.
const VERSION: u8 = 1;
/// Encoded length.
const LEN: usize = 1 + 8 + 4 + 8 + 1;

/// Encodes the geometry for the Announce packet.
pub(crate) fn encode(g: &Geometry) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN);
    out.push(VERSION);
    out.extend_from_slice(&g.disk_size.to_le_bytes());
    out.extend_from_slice(&g.chunk_size.to_le_bytes());
    out.extend_from_slice(&g.chunk_count.to_le_bytes());
    out.push(g.level.get());
    out
}

/// Decodes what `encode` wrote; `None` for anything else (another version, garbage).
pub(crate) fn decode(b: &[u8]) -> Option<Geometry> {
    if b.len() < LEN || b[0] != VERSION {
        return None;
    }
    let disk_size = u64::from_le_bytes(b[1..9].try_into().ok()?);
    let chunk_size = u32::from_le_bytes(b[9..13].try_into().ok()?);
    let chunk_count = u64::from_le_bytes(b[13..21].try_into().ok()?);
    let level = Level::new(b[21])?;
    let g = Geometry::new(disk_size, chunk_size, level).ok()?;
    (g.chunk_count == chunk_count).then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let g =
            Geometry::new(10 << 20 | 5, 1 << 20, Level::new(6).expect("level")).expect("geometry");
        assert_eq!(decode(&encode(&g)), Some(g));
        assert_eq!(decode(&[]), None);
        let mut bad = encode(&g);
        bad[13] ^= 1;
        assert_eq!(decode(&bad), None);
    }
}
