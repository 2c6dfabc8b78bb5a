//! One codec for every on-disk and on-wire record, in the style of rustls:
//! `encode(&self, &mut Vec<u8>)` appends, `read(&mut Reader)` parses from a
//! byte slice without I/O, so every parser can be fuzzed the same way.

use std::fmt;

/// Why a record failed to parse. The caller adds where it was (chunk index,
/// image offset) when turning this into an [`crate::ImageError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended `needed` bytes short.
    Truncated {
        /// Bytes still needed.
        needed: usize,
    },
    /// The record does not start with its magic bytes.
    BadMagic,
    /// The record's checksum does not match its bytes.
    Checksum,
    /// A field holds a value that is not allowed.
    Invalid {
        /// The field name.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed } => write!(f, "truncated ({needed} more bytes needed)"),
            Self::BadMagic => f.write_str("bad magic"),
            Self::Checksum => f.write_str("checksum mismatch"),
            Self::Invalid { field, value } => write!(f, "invalid {field} ({value})"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes consumed so far (what a checksum covers).
    pub fn consumed(&self) -> &'a [u8] {
        &self.buf[..self.pos]
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Checks that the next bytes are `magic`.
    pub fn expect_magic(&mut self, magic: &[u8]) -> Result<(), DecodeError> {
        if self.take(magic.len())? == magic {
            Ok(())
        } else {
            Err(DecodeError::BadMagic)
        }
    }

    /// Reads an 8-byte checksum and checks it against everything consumed
    /// since `start`.
    pub fn expect_checksum8(&mut self, start: usize) -> Result<(), DecodeError> {
        let covered = &self.buf[start..self.pos];
        let want = checksum8(covered);
        if self.array::<8>()? == want {
            Ok(())
        } else {
            Err(DecodeError::Checksum)
        }
    }
}

/// A type with one wire form.
pub trait Codec: Sized {
    /// Appends the encoded form to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Parses one value, advancing the reader.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Encodes into a fresh vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Parses a value that must use all of `bytes`.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        if r.remaining() != 0 {
            return Err(DecodeError::Invalid {
                field: "trailing bytes",
                value: r.remaining() as u64,
            });
        }
        Ok(v)
    }
}

/// The first 8 bytes of BLAKE3: the checksum of fixed-size records. They
/// only need to catch accidents (bit rot, truncation), not adversaries —
/// chunk data is covered by full 32-byte hashes.
pub fn checksum8(bytes: &[u8]) -> [u8; 8] {
    let h = blake3::hash(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}

/// Appends the 8-byte checksum of `out[start..]`.
pub(crate) fn push_checksum8(out: &mut Vec<u8>, start: usize) {
    let c = checksum8(&out[start..]);
    out.extend_from_slice(&c);
}
