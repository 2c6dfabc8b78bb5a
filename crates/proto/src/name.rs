//! Session names, the name hash every packet carries, and the multicast group derived from a name.

use std::fmt;
use std::net::Ipv4Addr;

/// Longest accepted session name, in bytes: keeps names readable and packets small.
pub const MAX_NAME_LEN: usize = 64;

/// Why a session name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("session name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("session name is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// The name contains a control or whitespace character.
    #[error("session name has a non-printable or blank character {ch:?} at byte {index}")]
    NotPrintable {
        /// Byte offset of the character.
        index: usize,
        /// The offending character.
        ch: char,
    },
}

/// A validated session name: non-empty, at most 64 bytes, printable, no blanks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionName(String);

impl SessionName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len() });
        }
        if let Some((index, ch)) = name
            .char_indices()
            .find(|(_, c)| c.is_control() || c.is_whitespace())
        {
            return Err(NameError::NotPrintable { index, ch });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 8-byte name hash carried by every packet: the first 8 bytes of BLAKE3(name).
    pub fn hash(&self) -> [u8; 8] {
        let h = blake3::hash(self.0.as_bytes());
        let mut out = [0; 8];
        out.copy_from_slice(&h.as_bytes()[..8]);
        out
    }

    /// The multicast group of this session; see [`group_addr`].
    pub fn group_addr(&self) -> Ipv4Addr {
        group_addr(self)
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The multicast group `231.x.y.z` of a session name.
///
/// `x, y, z` are bytes 0, 1, 2 of BLAKE3(UTF-8 name). Groups `231.0.0.*` and `231.128.0.*` map to the
/// same Ethernet MAC addresses as `224.0.0.*`, which switches always flood, so for them `y` is replaced
/// by `1 + (byte 3 mod 255)`.
pub fn group_addr(name: &SessionName) -> Ipv4Addr {
    let h = blake3::hash(name.as_str().as_bytes());
    let b = h.as_bytes();
    let (x, mut y, z) = (b[0], b[1], b[2]);
    if (x == 0 || x == 128) && y == 0 {
        y = 1 + b[3] % 255;
    }
    Ipv4Addr::new(231, x, y, z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(SessionName::new(""), Err(NameError::Empty));
        assert_eq!(
            SessionName::new(&"a".repeat(65)),
            Err(NameError::TooLong { len: 65 })
        );
        assert!(SessionName::new(&"a".repeat(64)).is_ok());
        assert_eq!(
            SessionName::new("lab 3"),
            Err(NameError::NotPrintable { index: 3, ch: ' ' })
        );
        assert!(matches!(
            SessionName::new("a\u{7}"),
            Err(NameError::NotPrintable { index: 1, .. })
        ));
        assert_eq!(SessionName::new("lab3-é").unwrap().as_str(), "lab3-é");
    }

    #[test]
    fn groups_avoid_flooded_ranges_and_are_stable() {
        let lab3 = SessionName::new("lab3").unwrap();
        assert_eq!(group_addr(&lab3), group_addr(&lab3));
        for i in 0..20_000 {
            let n = SessionName::new(&format!("s{i}")).unwrap();
            let o = n.group_addr().octets();
            assert_eq!(o[0], 231);
            assert!(!((o[1] == 0 || o[1] == 128) && o[2] == 0), "{n} -> {o:?}");
        }
        assert_ne!(
            SessionName::new("a").unwrap().hash(),
            SessionName::new("b").unwrap().hash()
        );
    }
}
