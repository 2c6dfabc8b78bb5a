//! The session info a master announces: the image geometry a client needs to
//! check its target before it registers (the image crate's own encoding of
//! it: format, disk, chunk and block size, smallest target, level).

use imgcast_image::codec::Codec;
use imgcast_image::Geometry;

/// Layout version of the session info (2: the image crate's geometry codec).
const VERSION: u8 = 2;

/// Encodes the geometry for the Announce packet.
pub(crate) fn encode(g: &Geometry) -> Vec<u8> {
    let mut out = vec![VERSION];
    g.encode(&mut out);
    out
}

/// Decodes what `encode` wrote; `None` for anything else (another version, garbage).
pub(crate) fn decode(b: &[u8]) -> Option<Geometry> {
    match b.split_first() {
        Some((&VERSION, rest)) => Geometry::from_bytes(rest).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use imgcast_image::Level;

    #[test]
    fn round_trip_and_garbage() {
        let g =
            Geometry::new(10 << 20 | 5, 1 << 20, Level::new(6).expect("level")).expect("geometry");
        assert_eq!(decode(&encode(&g)), Some(g));
        assert_eq!(decode(&[]), None);
        let mut bad = encode(&g);
        bad[25] ^= 1; // the chunk count
        assert_eq!(decode(&bad), None);
        let mut old = encode(&g);
        old[0] = 1;
        assert_eq!(decode(&old), None);
    }
}
