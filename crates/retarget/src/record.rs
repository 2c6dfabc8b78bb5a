//! The image-safe record: which image a restored disk received, in one
//! fixed-size, checksummed block (docs/IMAGE-SAFE.md has every byte).
//!
//! ```text
//!  off  len   field
//!    0    8   magic "IMGCSAFE"
//!    8    2   format version (1), u16 LE
//!   10    2   flags (0; any set bit is refused)
//!   12    4   body length L, u32 LE (at most 4008)
//!   16    8   written_at, unix seconds, u64 LE
//!   24   32   root hash of the image (BLAKE3)
//!   56    L   fields: tag u8, length u16 LE, UTF-8 bytes
//! 56+L  ...   zeros up to 4064
//! 4064   32   BLAKE3 of bytes 0..4064
//! ```
//!
//! The parser is total: it never panics, reads nothing past its 4096
//! bytes, and refuses lying lengths; a block without the magic is "no
//! record", a block with it that fails any check is a [`RecordError`].

use std::fmt;

use imgcast_image::codec::{DecodeError, Reader};
use serde::{Deserialize, Serialize};

use crate::RetargetError;

/// Size of the record on disk: one 4 KiB sector, eight 512-byte sectors.
pub const RECORD_LEN: usize = 4096;
/// The record's first bytes.
pub const RECORD_MAGIC: [u8; 8] = *b"IMGCSAFE";
/// The format version this build writes and reads.
pub const RECORD_VERSION: u16 = 1;

const FIXED_LEN: usize = 56;
const SUM_AT: usize = RECORD_LEN - 32;
const BODY_MAX: usize = SUM_AT - FIXED_LEN;

const TAG_IMAGE: u8 = 1;
const TAG_VERSION: u8 = 2;
const TAG_SESSION: u8 = 3;
const TAG_MASTER: u8 = 4;

/// Longest image, session or master name we store.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest imgcast version string we store.
pub const MAX_VERSION_LEN: usize = 64;

/// What a restore records on the disk it wrote ("image-safe data").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSafeRecord {
    /// The image's name (file name, or the name the server gave it).
    pub image: String,
    /// The image's root hash.
    #[serde(with = "hex32")]
    pub root_hash: [u8; 32],
    /// The multicast session's name, when it came by multicast.
    pub session: Option<String>,
    /// The master that sent it (host or address), when it came by multicast.
    pub master: Option<String>,
    /// When the restore finished, in unix seconds.
    pub written_at: u64,
    /// The imgcast version that wrote it.
    pub version: String,
}

/// Why a block that starts with [`RECORD_MAGIC`] is not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer than [`RECORD_LEN`] bytes.
    #[error("only {len} of {RECORD_LEN} bytes")]
    Short {
        /// Bytes present.
        len: usize,
    },
    /// The BLAKE3 checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// A format version this build does not read.
    #[error("format version {0} (this build reads {RECORD_VERSION})")]
    Version(u16),
    /// Flags this build does not understand.
    #[error("unknown flags {0:#06x}")]
    Flags(u16),
    /// A body length that does not fit the block.
    #[error("body length {0} exceeds the {BODY_MAX} bytes available")]
    BodyLength(u32),
    /// A field that runs past the body, is not UTF-8, or repeats.
    #[error("field {tag} at byte {at}: {reason}")]
    Field {
        /// The field's tag.
        tag: u8,
        /// Where it starts in the block.
        at: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A required field is absent.
    #[error("no {0} field")]
    Missing(&'static str),
    /// Non-zero bytes after the body.
    #[error("non-zero padding at byte {0}")]
    Padding(usize),
}

impl ImageSafeRecord {
    /// Encodes the record into its [`RECORD_LEN`] bytes. Refuses fields
    /// longer than [`MAX_NAME_LEN`] (or [`MAX_VERSION_LEN`]) rather than
    /// cutting them.
    pub fn encode(&self) -> Result<Vec<u8>, RetargetError> {
        let mut fields: Vec<(u8, &'static str, &str, usize)> = vec![
            (TAG_IMAGE, "image", &self.image, MAX_NAME_LEN),
            (TAG_VERSION, "version", &self.version, MAX_VERSION_LEN),
        ];
        if let Some(s) = &self.session {
            fields.push((TAG_SESSION, "session", s, MAX_NAME_LEN));
        }
        if let Some(m) = &self.master {
            fields.push((TAG_MASTER, "master", m, MAX_NAME_LEN));
        }
        let mut body = Vec::new();
        for (tag, field, value, max) in fields {
            if value.len() > max {
                return Err(RetargetError::FieldTooLong {
                    field,
                    len: value.len(),
                    max,
                });
            }
            body.push(tag);
            body.extend_from_slice(&(value.len() as u16).to_le_bytes());
            body.extend_from_slice(value.as_bytes());
        }
        // 4 fields of at most 3 + 1024 bytes always fit in BODY_MAX.
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(&RECORD_MAGIC);
        out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.written_at.to_le_bytes());
        out.extend_from_slice(&self.root_hash);
        out.extend_from_slice(&body);
        out.resize(SUM_AT, 0);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Parses a block: `Ok(None)` when it does not start with the magic
    /// (zeros, or someone else's bytes), an error when it does but fails a
    /// check.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, RecordError> {
        if !bytes.starts_with(&RECORD_MAGIC) {
            return Ok(None);
        }
        if bytes.len() < RECORD_LEN {
            return Err(RecordError::Short { len: bytes.len() });
        }
        let block = &bytes[..RECORD_LEN];
        if blake3::hash(&block[..SUM_AT]).as_bytes() != &block[SUM_AT..] {
            return Err(RecordError::Checksum);
        }
        Self::parse(&block[..SUM_AT]).map(Some)
    }

    /// Parses the checksummed part (`SUM_AT` bytes, magic included).
    fn parse(b: &[u8]) -> Result<Self, RecordError> {
        // The Reader cannot run short within SUM_AT bytes for the fixed
        // part; field reads map running short to a Field error.
        let short = |_: DecodeError| RecordError::Short { len: b.len() };
        let mut r = Reader::new(b);
        r.take(RECORD_MAGIC.len()).map_err(short)?;
        let version = r.u16().map_err(short)?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let flags = r.u16().map_err(short)?;
        if flags != 0 {
            return Err(RecordError::Flags(flags));
        }
        let body_len = r.u32().map_err(short)?;
        if body_len as usize > BODY_MAX {
            return Err(RecordError::BodyLength(body_len));
        }
        let written_at = r.u64().map_err(short)?;
        let root_hash = r.array::<32>().map_err(short)?;
        let body = r.take(body_len as usize).map_err(short)?;
        if let Some(i) = b[FIXED_LEN + body.len()..].iter().position(|&x| x != 0) {
            return Err(RecordError::Padding(FIXED_LEN + body.len() + i));
        }

        let mut fields: [Option<String>; 4] = Default::default();
        let mut f = Reader::new(body);
        while f.remaining() > 0 {
            let at = FIXED_LEN + f.position();
            let field_err = |tag, reason| RecordError::Field { tag, at, reason };
            let tag = f.u8().map_err(|_| field_err(0, "cut short"))?;
            let len = f.u16().map_err(|_| field_err(tag, "length cut short"))?;
            let value = f
                .take(usize::from(len))
                .map_err(|_| field_err(tag, "length runs past the body"))?;
            let value = std::str::from_utf8(value).map_err(|_| field_err(tag, "not UTF-8"))?;
            // Tags this version does not know are skipped: a later writer
            // may add fields that do not change these.
            let Some(slot) = usize::from(tag)
                .checked_sub(1)
                .and_then(|i| fields.get_mut(i))
            else {
                continue;
            };
            if slot.is_some() {
                return Err(field_err(tag, "appears twice"));
            }
            *slot = Some(value.to_string());
        }
        let [image, version, session, master] = fields;
        Ok(Self {
            image: image.ok_or(RecordError::Missing("image"))?,
            root_hash,
            session,
            master,
            written_at,
            version: version.ok_or(RecordError::Missing("version"))?,
        })
    }

    /// The record as "field: value" lines, for `img info zisd`.
    pub fn describe(&self) -> Vec<String> {
        let none = || "(none)".to_string();
        vec![
            format!("image: {}", printable(&self.image)),
            format!("root hash: {}", hex(&self.root_hash)),
            format!(
                "session: {}",
                self.session.as_deref().map(printable).unwrap_or_else(none)
            ),
            format!(
                "master: {}",
                self.master.as_deref().map(printable).unwrap_or_else(none)
            ),
            format!(
                "written: {} ({} unix seconds)",
                utc(self.written_at),
                self.written_at
            ),
            format!("imgcast version: {}", printable(&self.version)),
        ]
    }
}

impl fmt::Display for ImageSafeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.describe() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// A name with control characters escaped, so a record cannot redraw the
/// terminal that shows it.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `YYYY-MM-DD HH:MM:SS UTC` from unix seconds (proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

mod hex32 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(de::Error::custom("root hash: expected 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let txt = std::str::from_utf8(pair).map_err(de::Error::custom)?;
            out[i] = u8::from_str_radix(txt, 16).map_err(de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> ImageSafeRecord {
        ImageSafeRecord {
            image: "lab3.img".into(),
            root_hash: *blake3::hash(b"lab3").as_bytes(),
            session: Some("lab3".into()),
            master: Some("10.1.2.3".into()),
            written_at: 1_700_000_000,
            version: "0.1.0".into(),
        }
    }

    fn reseal(b: &mut [u8]) {
        let sum = blake3::hash(&b[..SUM_AT]);
        b[SUM_AT..RECORD_LEN].copy_from_slice(sum.as_bytes());
    }

    #[test]
    fn round_trip_and_fixed_layout() {
        let r = sample();
        let b = r.encode().unwrap();
        assert_eq!(b.len(), RECORD_LEN);
        assert_eq!(&b[..8], b"IMGCSAFE");
        assert_eq!(&b[8..10], &1u16.to_le_bytes());
        assert_eq!(&b[16..24], &1_700_000_000u64.to_le_bytes());
        assert_eq!(&b[24..56], &r.root_hash);
        assert_eq!(b[56], TAG_IMAGE);
        assert_eq!(&b[57..59], &8u16.to_le_bytes());
        assert_eq!(&b[59..67], b"lab3.img");
        assert_eq!(ImageSafeRecord::decode(&b), Ok(Some(r.clone())));

        let bare = ImageSafeRecord {
            session: None,
            master: None,
            ..r
        };
        assert_eq!(
            ImageSafeRecord::decode(&bare.encode().unwrap()),
            Ok(Some(bare))
        );
    }

    #[test]
    fn no_magic_is_no_record() {
        assert_eq!(ImageSafeRecord::decode(&[0u8; RECORD_LEN]), Ok(None));
        assert_eq!(ImageSafeRecord::decode(&[0xEB; 3]), Ok(None));
        assert_eq!(ImageSafeRecord::decode(&[]), Ok(None));
    }

    #[test]
    fn every_flipped_bit_after_the_magic_is_caught() {
        let good = sample().encode().unwrap();
        for bit in (64..RECORD_LEN * 8).step_by(7) {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                ImageSafeRecord::decode(&b),
                Err(RecordError::Checksum),
                "bit {bit}"
            );
        }
        let mut b = good;
        b[0] ^= 0x01;
        assert_eq!(ImageSafeRecord::decode(&b), Ok(None));
    }

    #[test]
    fn lying_fields_are_refused_even_with_a_good_checksum() {
        let good = sample().encode().unwrap();
        let case = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            reseal(&mut b);
            ImageSafeRecord::decode(&b)
        };
        assert_eq!(
            case(&|b| b[12..16].copy_from_slice(&u32::MAX.to_le_bytes())),
            Err(RecordError::BodyLength(u32::MAX))
        );
        assert_eq!(
            case(&|b| b[12..16].copy_from_slice(&(BODY_MAX as u32 + 1).to_le_bytes())),
            Err(RecordError::BodyLength(BODY_MAX as u32 + 1))
        );
        // The image field claims more bytes than the body holds.
        assert!(matches!(
            case(&|b| b[57..59].copy_from_slice(&4000u16.to_le_bytes())),
            Err(RecordError::Field {
                tag: 1,
                at: 56,
                reason: "length runs past the body"
            })
        ));
        // Body length shorter than the fields: the rest is non-zero padding.
        assert_eq!(
            case(&|b| b[12..16].copy_from_slice(&5u32.to_le_bytes())),
            Err(RecordError::Padding(61))
        );
        assert!(matches!(
            case(&|b| {
                b[12..16].copy_from_slice(&5u32.to_le_bytes());
                b[61..SUM_AT].fill(0);
            }),
            Err(RecordError::Field {
                tag: 1,
                reason: "length runs past the body",
                ..
            })
        ));
        assert!(matches!(
            case(&|b| b[12..16].copy_from_slice(&11u32.to_le_bytes())),
            Err(RecordError::Padding(67))
        ));
        assert_eq!(case(&|b| b[8] = 2), Err(RecordError::Version(2)));
        assert_eq!(case(&|b| b[10] = 1), Err(RecordError::Flags(1)));
        assert!(matches!(
            case(&|b| b[59] = 0xFF),
            Err(RecordError::Field {
                reason: "not UTF-8",
                ..
            })
        ));
        // The version field's tag turned into a second image field.
        assert!(matches!(
            case(&|b| b[67] = TAG_IMAGE),
            Err(RecordError::Field {
                reason: "appears twice",
                ..
            })
        ));
        // The version field's tag turned into an unknown one: skipped, and
        // then the version is missing.
        assert_eq!(case(&|b| b[67] = 99), Err(RecordError::Missing("version")));
        assert_eq!(
            ImageSafeRecord::decode(&good[..4000]),
            Err(RecordError::Short { len: 4000 })
        );
    }

    #[test]
    fn long_fields_are_refused_not_cut() {
        let r = ImageSafeRecord {
            image: "x".repeat(MAX_NAME_LEN + 1),
            ..sample()
        };
        assert!(matches!(
            r.encode(),
            Err(RetargetError::FieldTooLong { field: "image", .. })
        ));
        let most = ImageSafeRecord {
            image: "i".repeat(MAX_NAME_LEN),
            session: Some("s".repeat(MAX_NAME_LEN)),
            master: Some("m".repeat(MAX_NAME_LEN)),
            version: "v".repeat(MAX_VERSION_LEN),
            ..sample()
        };
        assert_eq!(
            ImageSafeRecord::decode(&most.encode().unwrap()),
            Ok(Some(most))
        );
    }

    #[test]
    fn describe_and_json() {
        let r = ImageSafeRecord {
            master: None,
            image: "evil\x1b[2Jname".into(),
            ..sample()
        };
        let lines = r.describe();
        assert_eq!(lines[0], "image: evil\\u{1b}[2Jname");
        assert_eq!(lines[1], format!("root hash: {}", hex(&r.root_hash)));
        assert_eq!(lines[3], "master: (none)");
        assert_eq!(
            lines[4],
            "written: 2023-11-14 22:13:20 UTC (1700000000 unix seconds)"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["root_hash"], hex(&r.root_hash));
        let back: ImageSafeRecord = serde_json::from_value(j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..RECORD_LEN + 16), magic in any::<bool>()) {
            let mut b = bytes;
            if magic && b.len() >= 8 {
                b[..8].copy_from_slice(&RECORD_MAGIC);
                if b.len() >= RECORD_LEN {
                    reseal(&mut b);
                }
            }
            let _ = ImageSafeRecord::decode(&b);
        }

        #[test]
        fn any_record_round_trips(image in ".{0,200}", session in proptest::option::of(".{0,50}"), t in any::<u64>(), h in any::<[u8; 32]>()) {
            let r = ImageSafeRecord { image, root_hash: h, session, master: None, written_at: t, version: "0.1.0".into() };
            prop_assert_eq!(ImageSafeRecord::decode(&r.encode().unwrap()), Ok(Some(r)));
        }
    }
}
