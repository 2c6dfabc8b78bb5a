//! The session info a master announces: the image geometry, and what a client needs to check its
//! target before it registers, and to know the session's own end when it comes.

use imgcast_image::codec::Codec;
use imgcast_image::Geometry;

/// Layout version of the session info (3: the image crate's geometry codec, a root commitment
/// and an image name).
const VERSION: u8 = 3;
/// Bytes of the image crate's geometry encoding.
const GEOMETRY_LEN: usize = 40;
/// Flag bit 0: the root hash is committed in the Announce (the master knows it before sending).
const FLAG_ROOT: u8 = 1;
/// Longest image name carried.
pub const MAX_IMAGE_NAME: usize = 200;

/// What the master announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Disk size and chunking.
    pub geometry: Geometry,
    /// The image's root hash when the master knows it before the transfer (an image file): a
    /// client then accepts only an End that carries it.
    pub root: Option<[u8; 32]>,
    /// A name for what is sent (the image file's name, or the master's disk), for the record the
    /// client keeps.
    pub image: String,
}

/// Why an Announce's session info is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InfoError {
    /// Cut short or padded.
    #[error("its session info is cut short or padded")]
    Length,
    /// Another layout version.
    #[error("it speaks session info version {0}; this img knows version {VERSION}")]
    Version(u8),
    /// A field out of range, or fields that disagree.
    #[error("its geometry is impossible: {0}")]
    Geometry(String),
}

impl SessionInfo {
    /// The bytes carried in the Announce.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + GEOMETRY_LEN + 34 + self.image.len());
        out.push(VERSION);
        self.geometry.encode(&mut out);
        out.push(if self.root.is_some() { FLAG_ROOT } else { 0 });
        if let Some(r) = &self.root {
            out.extend_from_slice(r);
        }
        let mut end = self.image.len().min(MAX_IMAGE_NAME);
        while !self.image.is_char_boundary(end) {
            end -= 1;
        }
        let name = &self.image.as_bytes()[..end];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out
    }

    /// Decodes what `encode` wrote, checking every field (the bytes come from the network).
    pub fn decode(b: &[u8]) -> Result<Self, InfoError> {
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], InfoError> {
            if r.len() < n {
                return Err(InfoError::Length);
            }
            let (head, rest) = r.split_at(n);
            r = rest;
            Ok(head)
        };
        let version = take(1)?[0];
        if version != VERSION {
            return Err(InfoError::Version(version));
        }
        let geometry = Geometry::from_bytes(take(GEOMETRY_LEN)?)
            .map_err(|e| InfoError::Geometry(e.to_string()))?;
        let flags = take(1)?[0];
        if flags & !FLAG_ROOT != 0 {
            return Err(InfoError::Geometry(format!("unknown flags {flags:#x}")));
        }
        let root = if flags & FLAG_ROOT != 0 {
            let mut h = [0u8; 32];
            h.copy_from_slice(take(32)?);
            Some(h)
        } else {
            None
        };
        let name_len = usize::from(take(1)?[0]);
        if name_len > MAX_IMAGE_NAME {
            return Err(InfoError::Length);
        }
        let image = String::from_utf8(take(name_len)?.to_vec())
            .map_err(|_| InfoError::Geometry("the image name is not UTF-8".into()))?;
        if !r.is_empty() {
            return Err(InfoError::Length);
        }
        if geometry.chunk_count > u64::from(u32::MAX) {
            return Err(InfoError::Geometry(format!(
                "{} chunks, more than a session carries",
                geometry.chunk_count
            )));
        }
        Ok(Self {
            geometry,
            root,
            image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use imgcast_image::Level;

    fn info(root: Option<[u8; 32]>) -> SessionInfo {
        SessionInfo {
            geometry: Geometry::new(10 << 20 | 5, 1 << 20, Level::new(6).expect("level"))
                .expect("geometry"),
            root,
            image: "lab3.img".into(),
        }
    }

    #[test]
    fn round_trip_and_every_cut_or_change_is_checked() {
        for i in [info(None), info(Some([7; 32]))] {
            let b = i.encode();
            assert_eq!(SessionInfo::decode(&b), Ok(i.clone()));
            for cut in 0..b.len() {
                assert!(SessionInfo::decode(&b[..cut]).is_err(), "cut at {cut}");
            }
            let mut padded = b.clone();
            padded.push(0);
            assert_eq!(SessionInfo::decode(&padded), Err(InfoError::Length));
        }
        let mut bad = info(None).encode();
        bad[1 + 24] ^= 1; // chunk count
        assert!(matches!(
            SessionInfo::decode(&bad),
            Err(InfoError::Geometry(_))
        ));
        let mut bad = info(None).encode();
        bad[0] = 2;
        assert_eq!(SessionInfo::decode(&bad), Err(InfoError::Version(2)));
        let mut bad = info(None).encode();
        bad[1 + 4..1 + 8].copy_from_slice(&7u32.to_le_bytes()); // chunk size
        assert!(matches!(
            SessionInfo::decode(&bad),
            Err(InfoError::Geometry(_))
        ));
        // A huge disk is a valid geometry here; the client refuses it against its target.
        let mut huge = info(None);
        huge.geometry = Geometry::new(1 << 62, 64 << 20, Level::new(1).expect("level")).expect("g");
        assert!(SessionInfo::decode(&huge.encode()).is_err(), "2^36 chunks");
    }
}
