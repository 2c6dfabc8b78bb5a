//! Packet formats and the one codec every packet goes through (see docs/PROTOCOL.md, "Packets").
//!
//! Parsers never panic and never trust a length: every malformed input is a [`DecodeError`].
//! [`seal`] protects a packet with its run's [`PacketKey`]; [`open`] checks that protection before
//! it parses anything beyond the header.

use crate::protect::{PacketKey, TAG_LEN};

/// First four bytes of every packet.
pub const MAGIC: [u8; 4] = *b"IMGC";
/// Protocol version carried by every packet (3: the master's Data packets have a short header;
/// 4: Status lists the holes of an object, and Patch packets fill them).
pub const VERSION: u8 = 4;
/// Bytes of the long header: magic, version, type, flags, name hash, session id, sender, seq.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 1 + 8 + 8 + 8 + 8;
/// Bytes of the short header of the master's Data packets: magic, version, type, flags, session
/// id and a 48-bit seq. The name hash is bound by the tag (its key is derived from it) and the
/// sender is the master, so the 18 bytes they take are spared on nearly every packet.
pub const SHORT_HEADER_LEN: usize = 4 + 1 + 1 + 1 + 8 + 6;
/// Bytes of a data packet around its symbol: short header, object, object length, symbol id,
/// sent-through, and the tag.
pub const DATA_OVERHEAD: usize = SHORT_HEADER_LEN + 4 + 4 + 4 + 4 + TAG_LEN;
/// Largest opaque session info carried by an Announce.
pub const MAX_SESSION_INFO: usize = 512;
/// Largest opaque trailer carried by an End packet.
pub const MAX_TRAILER: usize = 1024;
/// Longest client label (host name) in a Register.
pub const MAX_LABEL: usize = 64;
/// Longest reason text in a Report or Abort.
pub const MAX_REASON: usize = 256;
/// Most need entries in one Status.
pub const MAX_NEEDS: usize = 64;
/// Most objects whose holes one Status lists.
pub const MAX_HOLED: usize = 64;
/// Most holes listed for one object: beyond this, RaptorQ repair is the cheaper answer.
pub const MAX_HOLES: usize = 128;
/// Bytes of a Patch's packed symbol ids: with them a Patch is exactly as long as a Data packet.
pub const PATCH_ID_BYTES: usize = 11;
/// Most symbol ids one Patch combines (4 bits count them).
pub const MAX_PATCH_IDS: usize = 15;
/// Symbol ids are 24-bit (RFC 6330).
pub const MAX_ESI: u32 = 1 << 24;
/// Need value meaning "I have no symbol of this object yet (its length is unknown to me)".
pub const NEED_ALL: u16 = u16::MAX;
/// Sender id of the master; clients use their random non-zero client id.
pub const MASTER: u64 = 0;

/// Flag bit 0: the packet is encrypted and authenticated with the session key (`-key`).
const FLAG_KEYED: u8 = 1;
/// Flag bit 1: the packet went to one peer, not to the group. Group and unicast packets of the
/// master are numbered separately, so a receiver can measure group loss from the gaps.
const FLAG_UNICAST: u8 = 2;
/// Flag bit 2: the short header (no name hash, no sender, 48-bit seq). Sealed packets use it
/// exactly when [`short_form`] says so, so every packet has one encoding.
const FLAG_SHORT: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_KEYED | FLAG_UNICAST | FLAG_SHORT;
/// Sequence numbers the short header can carry.
const SHORT_SEQ_LIMIT: u64 = 1 << 48;

/// Whether a sealed packet of this type, sender and number has the short header: the master's
/// Data and Patch packets, while its number fits in 48 bits.
fn short_form(kind: u8, sender: u64, seq: u64) -> bool {
    (kind == Body::DATA || kind == Body::PATCH) && sender == MASTER && seq < SHORT_SEQ_LIMIT
}

/// Why bytes are not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet ends inside a field.
    #[error("packet truncated in field {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The packet does not start with [`MAGIC`].
    #[error("not an imgcast packet (bad magic)")]
    BadMagic,
    /// Another protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Unknown packet type.
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    /// A length field exceeds its bound.
    #[error("field {field} is {len} long; at most {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field holds a value outside its range.
    #[error("field {field} has an invalid value")]
    BadValue {
        /// The field.
        field: &'static str,
    },
    /// Bytes remain after the last field.
    #[error("{0} unexpected bytes after the packet")]
    TrailingBytes(usize),
}

/// Counts datagrams of another protocol version, so that an endpoint says once that a peer runs
/// another imgcast release: they are refused as malformed, and a session would otherwise wait in
/// silence (boot media of an older release beside a newer master, say).
#[derive(Debug, Default)]
pub(crate) struct OtherVersions {
    seen: u64,
}

impl OtherVersions {
    /// Datagrams of another version before it is reported: one alone may be a corrupted packet.
    const REPORT_AFTER: u64 = 3;

    /// Notes why a datagram's header was refused; returns the version to report, once.
    pub(crate) fn note(&mut self, err: &DecodeError) -> Option<u8> {
        let DecodeError::Version(v) = *err else {
            return None;
        };
        self.seen += 1;
        (self.seen == Self::REPORT_AFTER).then_some(v)
    }
}

/// One codec for every wire type, so every parser is fuzzable the same way.
pub trait Codec: Sized {
    /// Appends the wire form to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Parses exactly `buf`.
    fn decode(buf: &[u8]) -> Result<Self, DecodeError>;
}

/// A bounds-checked cursor.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    /// The rest of a Data or Patch body: its symbol, never empty.
    fn symbol(&mut self) -> Result<&'a [u8], DecodeError> {
        let symbol = self.take(self.buf.len(), "symbol")?;
        if symbol.is_empty() {
            return Err(DecodeError::Truncated { field: "symbol" });
        }
        Ok(symbol)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    /// A list's count byte (`field`), refused as `list` too long above `max`.
    fn count8(
        &mut self,
        field: &'static str,
        list: &'static str,
        max: usize,
    ) -> Result<usize, DecodeError> {
        let len = usize::from(self.u8(field)?);
        if len > max {
            return Err(DecodeError::TooLong {
                field: list,
                len,
                max,
            });
        }
        Ok(len)
    }
    fn bytes16(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        Ok(self.take(len, field)?.to_vec())
    }
    fn text(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes16(field, max)?).map_err(|_| DecodeError::BadValue { field })
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8], max: usize) {
    // Encoders clamp instead of failing: callers validate, and a clamped field still parses.
    let b = &b[..b.len().min(max)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Truncates text to at most `max` bytes on a character boundary.
pub(crate) fn clamp_text(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The common header of every packet, readable before the packet's tag is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type code (see [`Body::kind`]).
    pub kind: u8,
    /// Bit 0: keyed (encrypted); bit 1: unicast; bit 2: short header. Other bits must be 0.
    pub flags: u8,
    /// First 8 bytes of BLAKE3 of the session name; `None` in a short header, whose receiver
    /// knows its session by the session id (and [`open`] fills it in from the key).
    pub name_hash: Option<[u8; 8]>,
    /// The master's random per-run session id (client packets carry their master's).
    pub session_id: u64,
    /// [`MASTER`] (0) for the master; the client id for a client. Implied by a short header.
    pub sender: u64,
    /// The sender's packet number, from 1, one sequence per sender and channel (group or unicast).
    pub seq: u64,
}

impl Header {
    /// Whether the packet is protected with the session key.
    pub fn keyed(&self) -> bool {
        self.flags & FLAG_KEYED != 0
    }

    /// Whether the packet was sent to one peer rather than to the group.
    pub fn unicast(&self) -> bool {
        self.flags & FLAG_UNICAST != 0
    }

    /// Whether this is a short header.
    pub fn short(&self) -> bool {
        self.flags & FLAG_SHORT != 0
    }

    /// Bytes of this header on the wire.
    pub fn encoded_len(&self) -> usize {
        if self.short() {
            SHORT_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.array::<4>("magic")? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = r.u8("type")?;
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::BadValue { field: "flags" });
        }
        if flags & FLAG_SHORT != 0 {
            if kind != Body::DATA && kind != Body::PATCH {
                return Err(DecodeError::BadValue { field: "flags" });
            }
            let session_id = r.u64("session id")?;
            let mut seq = [0u8; 8];
            seq[2..].copy_from_slice(r.take(6, "seq")?);
            return Ok(Self {
                kind,
                flags,
                name_hash: None,
                session_id,
                sender: MASTER,
                seq: u64::from_be_bytes(seq),
            });
        }
        Ok(Self {
            kind,
            flags,
            name_hash: Some(r.array("name hash")?),
            session_id: r.u64("session id")?,
            sender: r.u64("sender")?,
            seq: r.u64("seq")?,
        })
    }

    /// Writes the header in the form its flags name (a long header without a name hash, which
    /// only a caller's mistake makes, gets zeros).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind);
        out.push(self.flags);
        if self.short() {
            out.extend_from_slice(&self.session_id.to_be_bytes());
            out.extend_from_slice(&self.seq.to_be_bytes()[2..]);
            return;
        }
        out.extend_from_slice(&self.name_hash.unwrap_or_default());
        out.extend_from_slice(&self.session_id.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
    }

    /// The header a sealed packet carries: the short form where [`short_form`] says so, the
    /// keyed flag as the key's, and a missing name hash from the key.
    fn canonical(mut self, key: &PacketKey) -> Self {
        self.flags &= FLAG_UNICAST;
        if key.keyed() {
            self.flags |= FLAG_KEYED;
        }
        if short_form(self.kind, self.sender, self.seq) {
            self.flags |= FLAG_SHORT;
            self.name_hash = None;
        } else {
            self.name_hash = Some(self.name_hash.unwrap_or(key.name_hash()));
        }
        self
    }

    /// Parses only the header, to find the run's key and filter by name before any further work.
    pub fn peek(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::read(&mut Reader { buf })
    }

    /// The AEAD nonce under the sender's own key: its sequence number, flags and type, unique
    /// per packet of that sender (it never reuses a number in a channel; flags name the channel).
    fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&self.seq.to_be_bytes());
        n[8] = self.flags;
        n[9] = self.kind;
        n
    }
}

/// Session phase as announced by the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Registrations are accepted.
    Gathering,
    /// The transfer runs; registrations are answered Queued.
    Running,
}

/// Multicast by the master about every 500 ms: who it is and the session's geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Gathering or running.
    pub phase: Phase,
    /// The master gives way to an earlier master of the same name (it was made by the `m` key).
    pub yields: bool,
    /// Number of objects of the session.
    pub object_count: u32,
    /// Bytes per symbol in data packets.
    pub symbol_size: u16,
    /// Most objects the master keeps in flight: receivers bound their buffers with it.
    pub window: u16,
    /// Opaque engine data (disk size, chunk size...).
    pub session_info: Vec<u8>,
}

/// Client to master: please count me in (the client id is the packet's sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Fresh for each registration: the master's Ack must echo it, so a replayed Ack of an earlier
    /// run cannot register a client with a master that is not there.
    pub nonce: u64,
    /// Host name or other label shown by the master.
    pub label: String,
    /// The MAC of the interface the client registers through, where it can read it: a master
    /// (or imaging server) on another segment cannot learn it from its neighbour table.
    pub mac: Option<[u8; 6]>,
}

/// What an [`Ack`] acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// The registration is accepted for this run.
    Registered,
    /// The run has started: wait for the next run of this name.
    Queued,
    /// The final report was recorded.
    Report,
    /// The client was dropped (silent or too slow): wait for the next run.
    Dropped,
    /// The client was moved to the follow-up run (its goodput or its loss set it apart from the
    /// group): wait for the next run, which the master serves right after this one.
    Moved,
    /// The final report was recorded and no live client is left: the run is over, answer `Bye`.
    Last,
}

/// Master to one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The client addressed.
    pub client_id: u64,
    /// What is acknowledged.
    pub kind: AckKind,
    /// The nonce of the client's latest Register.
    pub nonce: u64,
}

/// One symbol of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Object index.
    pub object: u32,
    /// Object length in bytes.
    pub object_len: u32,
    /// RaptorQ encoding symbol id: below K a source symbol, from K on a repair symbol.
    pub esi: u32,
    /// Every object below this one has had all its source symbols sent: a receiver may ask for
    /// what it lacks of them.
    pub sent_through: u32,
    /// Exactly `symbol_size` bytes (the last source symbol is zero-padded).
    pub symbol: Vec<u8>,
}

/// A [`Data`] body borrowed from its datagram: the receiver's per-symbol path parses this, so a
/// symbol is copied once, into its object, and not into a packet first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRef<'a> {
    /// Object index.
    pub object: u32,
    /// Object length in bytes.
    pub object_len: u32,
    /// RaptorQ encoding symbol id.
    pub esi: u32,
    /// See [`Data::sent_through`].
    pub sent_through: u32,
    /// The symbol's bytes.
    pub symbol: &'a [u8],
}

impl<'a> DataRef<'a> {
    /// Parses a Data body; the symbol is the rest of the body and never empty.
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let object = r.u32("object")?;
        let object_len = r.u32("object length")?;
        let esi = r.u32("symbol id")?;
        if esi >= MAX_ESI {
            return Err(DecodeError::BadValue { field: "symbol id" });
        }
        let sent_through = r.u32("sent through")?;
        let symbol = r.symbol()?;
        Ok(Self {
            object,
            object_len,
            esi,
            sent_through,
            symbol,
        })
    }

    /// The owned form.
    pub fn to_data(&self) -> Data {
        Data {
            object: self.object,
            object_len: self.object_len,
            esi: self.esi,
            sent_through: self.sent_through,
            symbol: self.symbol.to_vec(),
        }
    }
}

/// A Patch: the byte-wise XOR of some source symbols of one object. A receiver that holds all of
/// them but one recovers that one; the master picks the symbols from the holes receivers listed,
/// at most one hole of each receiver per Patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Object index.
    pub object: u32,
    /// The source symbol ids combined, ascending (1 to [`patch_capacity`] of them).
    pub esis: Vec<u32>,
    /// Exactly `symbol_size` bytes: their XOR.
    pub symbol: Vec<u8>,
}

/// Bits one id takes in a Patch whose largest id is `max`.
pub(crate) fn patch_id_width(max: u32) -> u32 {
    (32 - max.leading_zeros()).max(1)
}

/// Most ids a Patch carries when its largest id is below `k`.
pub fn patch_capacity(k: u32) -> usize {
    let w = patch_id_width(k.saturating_sub(1)) as usize;
    (PATCH_ID_BYTES * 8 / w).min(MAX_PATCH_IDS)
}

/// Packs ascending `esis` (at most 16 bits each) as `n << 4 | (width - 1)` and
/// [`PATCH_ID_BYTES`] bytes of big-endian bit fields; `None` if they do not fit.
fn pack_patch_ids(esis: &[u32]) -> Option<(u8, [u8; PATCH_ID_BYTES])> {
    let max = *esis.iter().max()?;
    let w = patch_id_width(max);
    if w > 16 || esis.len() > MAX_PATCH_IDS || esis.len() * w as usize > PATCH_ID_BYTES * 8 {
        return None;
    }
    let mut bits = 0u128;
    for &e in esis {
        bits = (bits << w) | u128::from(e);
    }
    bits <<= PATCH_ID_BYTES as u32 * 8 - esis.len() as u32 * w;
    let mut out = [0; PATCH_ID_BYTES];
    out.copy_from_slice(&bits.to_be_bytes()[16 - PATCH_ID_BYTES..]);
    Some(((esis.len() as u8) << 4 | (w - 1) as u8, out))
}

/// The inverse of [`pack_patch_ids`]; refuses every encoding it would not make (no ids, ids not
/// ascending, a width wider than the largest id needs, bits set past the last id).
fn unpack_patch_ids(nw: u8, packed: [u8; PATCH_ID_BYTES]) -> Result<Vec<u32>, DecodeError> {
    let bad = Err(DecodeError::BadValue { field: "patch ids" });
    let (n, w) = (u32::from(nw >> 4), u32::from(nw & 15) + 1);
    if n == 0 || n * w > PATCH_ID_BYTES as u32 * 8 {
        return bad;
    }
    let mut full = [0u8; 16];
    full[16 - PATCH_ID_BYTES..].copy_from_slice(&packed);
    let bits = u128::from_be_bytes(full);
    let unused = PATCH_ID_BYTES as u32 * 8 - n * w;
    if unused > 0 && bits & ((1u128 << unused) - 1) != 0 {
        return bad;
    }
    let mask = (1u128 << w) - 1;
    let esis: Vec<u32> = (0..n)
        .map(|i| ((bits >> (PATCH_ID_BYTES as u32 * 8 - (i + 1) * w)) & mask) as u32)
        .collect();
    let max = esis.last().copied().unwrap_or(0);
    if !esis.windows(2).all(|p| p[0] < p[1]) || patch_id_width(max) != w {
        return bad;
    }
    Ok(esis)
}

/// The holes of one object a receiver lists: every source symbol id it lacks, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holes {
    /// Object index.
    pub object: u32,
    /// 1 to [`MAX_HOLES`] source symbol ids, ascending.
    pub esis: Vec<u16>,
}

/// "I still lack `count` symbols of `object`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Object index.
    pub object: u32,
    /// Symbols still lacking, or [`NEED_ALL`].
    pub count: u16,
}

/// Client feedback, paced and jittered (the client id is the packet's sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Every object below this one is done (decoded and taken by the engine).
    pub low: u32,
    /// Objects done.
    pub objects_done: u32,
    /// Object bytes done.
    pub bytes: u64,
    /// Highest group sequence number seen from the master.
    pub highest_seq: u64,
    /// Microseconds between the arrival of `highest_seq` and this Status: the master subtracts it
    /// to measure the round-trip time.
    pub held_us: u32,
    /// Group packets missing from the sequence since the previous Status.
    pub lost: u32,
    /// Group packets expected since the previous Status.
    pub expected: u32,
    /// Objects this client decoded but had to throw away (their chunk failed its check), so far.
    pub rejected: u32,
    /// Incomplete objects, most urgent first.
    pub needs: Vec<Need>,
    /// For some of those (in a small group), exactly which source symbols are missing: the master
    /// may answer them with Patches instead of RaptorQ repair, which costs the receiver a decode.
    pub holes: Vec<Holes>,
}

/// Master to group, while running: what receivers need to pace their feedback and to keep quiet
/// about needs the master already knows (NORM's repair advertisement, RFC 5740 §5.5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Live clients of the run: the feedback interval grows with it.
    pub clients: u32,
    /// Least time, in ms, each receiver keeps between two Status packets.
    pub interval_ms: u16,
    /// Every live client has every object below this one (the window's base).
    pub base: u32,
    /// Objects pushed so far: with `base`, how full the window is (receivers report their
    /// progress only when the master needs it to move on).
    pub pushed: u32,
    /// Repair symbols the master will still send per object, oldest first (at most
    /// [`MAX_NEEDS`]).
    pub owed: Vec<Need>,
}

/// Client to master: the engine's verdict (the client id is the packet's sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Everything verified.
    pub ok: bool,
    /// Why not, when `ok` is false; a short note (e.g. about the image-safe record) when true.
    pub reason: String,
}

/// The body of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Type 1.
    Announce(Announce),
    /// Type 2.
    Register(Register),
    /// Type 3.
    Ack(Ack),
    /// Type 4: the run started with this many clients.
    Start {
        /// Registered clients.
        clients: u32,
    },
    /// Type 5.
    Data(Data),
    /// Type 6.
    Status(Status),
    /// Type 7: every object was sent once; here is the trailer.
    End {
        /// Opaque trailer (e.g. the root hash).
        trailer: Vec<u8>,
    },
    /// Type 8.
    Report(Report),
    /// Type 9: the master gave up.
    Abort {
        /// Why.
        reason: String,
    },
    /// Type 10.
    Advert(Advert),
    /// Type 11: the client heard its Report acknowledged as the run's last (`AckKind::Last`) and
    /// leaves (sent twice): a master need not linger for a repeat of that Report.
    Bye,
    /// Type 12.
    Patch(Patch),
}

impl Body {
    /// The type code of [`Body::Data`], the one type parsed by borrowing ([`Opened::data`]).
    pub const DATA: u8 = 5;
    /// The type code of [`Body::Patch`], which shares Data's short header.
    pub const PATCH: u8 = 12;

    /// The type code on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Announce(_) => 1,
            Self::Register(_) => 2,
            Self::Ack(_) => 3,
            Self::Start { .. } => 4,
            Self::Data(_) => Self::DATA,
            Self::Status(_) => 6,
            Self::End { .. } => 7,
            Self::Report(_) => 8,
            Self::Abort { .. } => 9,
            Self::Advert(_) => 10,
            Self::Bye => 11,
            Self::Patch(_) => Self::PATCH,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Announce(a) => {
                out.push(match a.phase {
                    Phase::Gathering => 0,
                    Phase::Running => 1,
                });
                out.push(u8::from(a.yields));
                out.extend_from_slice(&a.object_count.to_be_bytes());
                out.extend_from_slice(&a.symbol_size.to_be_bytes());
                out.extend_from_slice(&a.window.to_be_bytes());
                put_bytes16(out, &a.session_info, MAX_SESSION_INFO);
            }
            Self::Register(r) => {
                out.extend_from_slice(&r.nonce.to_be_bytes());
                put_bytes16(out, clamp_text(&r.label, MAX_LABEL).as_bytes(), MAX_LABEL);
                match r.mac {
                    Some(mac) => {
                        out.push(1);
                        out.extend_from_slice(&mac);
                    }
                    None => out.push(0),
                }
            }
            Self::Ack(a) => {
                out.extend_from_slice(&a.client_id.to_be_bytes());
                out.push(match a.kind {
                    AckKind::Registered => 0,
                    AckKind::Queued => 1,
                    AckKind::Report => 2,
                    AckKind::Dropped => 3,
                    AckKind::Moved => 4,
                    AckKind::Last => 5,
                });
                out.extend_from_slice(&a.nonce.to_be_bytes());
            }
            Self::Start { clients } => out.extend_from_slice(&clients.to_be_bytes()),
            Self::Data(d) => {
                out.extend_from_slice(&d.object.to_be_bytes());
                out.extend_from_slice(&d.object_len.to_be_bytes());
                out.extend_from_slice(&d.esi.to_be_bytes());
                out.extend_from_slice(&d.sent_through.to_be_bytes());
                out.extend_from_slice(&d.symbol);
            }
            Self::Status(s) => {
                out.extend_from_slice(&s.low.to_be_bytes());
                out.extend_from_slice(&s.objects_done.to_be_bytes());
                out.extend_from_slice(&s.bytes.to_be_bytes());
                out.extend_from_slice(&s.highest_seq.to_be_bytes());
                out.extend_from_slice(&s.held_us.to_be_bytes());
                out.extend_from_slice(&s.lost.to_be_bytes());
                out.extend_from_slice(&s.expected.to_be_bytes());
                out.extend_from_slice(&s.rejected.to_be_bytes());
                put_needs(out, &s.needs);
                let holes = &s.holes[..s.holes.len().min(MAX_HOLED)];
                out.push(holes.len() as u8);
                for h in holes {
                    let esis = &h.esis[..h.esis.len().min(MAX_HOLES)];
                    out.extend_from_slice(&h.object.to_be_bytes());
                    out.push(esis.len() as u8);
                    for e in esis {
                        out.extend_from_slice(&e.to_be_bytes());
                    }
                }
            }
            Self::Patch(p) => {
                out.extend_from_slice(&p.object.to_be_bytes());
                // The sender plans within `patch_capacity`; ids that do not fit are a bug, and
                // encode as a malformed Patch (no ids) that every receiver refuses.
                let (nw, ids) = pack_patch_ids(&p.esis).unwrap_or((0, [0; PATCH_ID_BYTES]));
                out.push(nw);
                out.extend_from_slice(&ids);
                out.extend_from_slice(&p.symbol);
            }
            Self::Advert(a) => {
                out.extend_from_slice(&a.clients.to_be_bytes());
                out.extend_from_slice(&a.interval_ms.to_be_bytes());
                out.extend_from_slice(&a.base.to_be_bytes());
                out.extend_from_slice(&a.pushed.to_be_bytes());
                put_needs(out, &a.owed);
            }
            Self::End { trailer } => put_bytes16(out, trailer, MAX_TRAILER),
            Self::Report(r) => {
                out.push(u8::from(r.ok));
                put_bytes16(
                    out,
                    clamp_text(&r.reason, MAX_REASON).as_bytes(),
                    MAX_REASON,
                );
            }
            Self::Abort { reason } => {
                put_bytes16(out, clamp_text(reason, MAX_REASON).as_bytes(), MAX_REASON);
            }
            Self::Bye => {}
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let body = match kind {
            1 => Self::Announce(Announce {
                phase: match r.u8("phase")? {
                    0 => Phase::Gathering,
                    1 => Phase::Running,
                    _ => return Err(DecodeError::BadValue { field: "phase" }),
                },
                yields: match r.u8("yields")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::BadValue { field: "yields" }),
                },
                object_count: r.u32("object count")?,
                symbol_size: nonzero16(r.u16("symbol size")?, "symbol size")?,
                window: nonzero16(r.u16("window")?, "window")?,
                session_info: r.bytes16("session info", MAX_SESSION_INFO)?,
            }),
            2 => Self::Register(Register {
                nonce: r.u64("nonce")?,
                label: r.text("label", MAX_LABEL)?,
                mac: match r.u8("mac flag")? {
                    0 => None,
                    1 => Some(r.array("mac")?),
                    _ => return Err(DecodeError::BadValue { field: "mac flag" }),
                },
            }),
            3 => Self::Ack(Ack {
                client_id: r.u64("client id")?,
                kind: match r.u8("ack kind")? {
                    0 => AckKind::Registered,
                    1 => AckKind::Queued,
                    2 => AckKind::Report,
                    3 => AckKind::Dropped,
                    4 => AckKind::Moved,
                    5 => AckKind::Last,
                    _ => return Err(DecodeError::BadValue { field: "ack kind" }),
                },
                nonce: r.u64("nonce")?,
            }),
            4 => Self::Start {
                clients: r.u32("clients")?,
            },
            Self::DATA => Self::Data(DataRef::read(r)?.to_data()),
            6 => {
                let s = Status {
                    low: r.u32("low")?,
                    objects_done: r.u32("objects done")?,
                    bytes: r.u64("bytes")?,
                    highest_seq: r.u64("highest seq")?,
                    held_us: r.u32("held")?,
                    lost: r.u32("lost")?,
                    expected: r.u32("expected")?,
                    rejected: r.u32("rejected")?,
                    needs: read_needs(r)?,
                    holes: read_holes(r)?,
                };
                Self::Status(s)
            }
            7 => Self::End {
                trailer: r.bytes16("trailer", MAX_TRAILER)?,
            },
            8 => Self::Report(Report {
                ok: match r.u8("ok")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::BadValue { field: "ok" }),
                },
                reason: r.text("reason", MAX_REASON)?,
            }),
            9 => Self::Abort {
                reason: r.text("reason", MAX_REASON)?,
            },
            10 => Self::Advert(Advert {
                clients: r.u32("clients")?,
                interval_ms: r.u16("interval")?,
                base: r.u32("base")?,
                pushed: r.u32("pushed")?,
                owed: read_needs(r)?,
            }),
            11 => Self::Bye,
            Self::PATCH => {
                let object = r.u32("object")?;
                let nw = r.u8("patch ids")?;
                let esis = unpack_patch_ids(nw, r.array("patch ids")?)?;
                Self::Patch(Patch {
                    object,
                    esis,
                    symbol: r.symbol()?.to_vec(),
                })
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.end()?;
        Ok(body)
    }
}

/// A count byte and up to [`MAX_NEEDS`] (object u32, count u16) pairs.
fn put_needs(out: &mut Vec<u8>, needs: &[Need]) {
    let needs = &needs[..needs.len().min(MAX_NEEDS)];
    out.push(needs.len() as u8);
    for n in needs {
        out.extend_from_slice(&n.object.to_be_bytes());
        out.extend_from_slice(&n.count.to_be_bytes());
    }
}

fn read_needs(r: &mut Reader<'_>) -> Result<Vec<Need>, DecodeError> {
    let n = r.count8("need count", "needs", MAX_NEEDS)?;
    (0..n)
        .map(|_| {
            Ok(Need {
                object: r.u32("need object")?,
                count: r.u16("need count")?,
            })
        })
        .collect()
}

/// A count byte and up to [`MAX_HOLED`] (object u32, m u8, m × id u16) lists, ids ascending.
fn read_holes(r: &mut Reader<'_>) -> Result<Vec<Holes>, DecodeError> {
    let n = r.count8("holed count", "holes", MAX_HOLED)?;
    (0..n)
        .map(|_| {
            let object = r.u32("holed object")?;
            let m = usize::from(r.u8("hole count")?);
            if m == 0 || m > MAX_HOLES {
                return Err(DecodeError::BadValue {
                    field: "hole count",
                });
            }
            let esis = (0..m)
                .map(|_| r.u16("hole"))
                .collect::<Result<Vec<_>, _>>()?;
            if !esis.windows(2).all(|p| p[0] < p[1]) {
                return Err(DecodeError::BadValue { field: "holes" });
            }
            Ok(Holes { object, esis })
        })
        .collect()
}

fn nonzero16(v: u16, field: &'static str) -> Result<u16, DecodeError> {
    if v == 0 {
        Err(DecodeError::BadValue { field })
    } else {
        Ok(v)
    }
}

/// A whole packet, as its sender means it (before protection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Name hash of the session.
    pub name_hash: [u8; 8],
    /// The master's session id.
    pub session_id: u64,
    /// [`MASTER`] or the sending client's id.
    pub sender: u64,
    /// The sender's packet number in its channel (group or unicast), from 1.
    pub seq: u64,
    /// Sent to one peer rather than to the group.
    pub unicast: bool,
    /// Type-specific content.
    pub body: Body,
}

impl Packet {
    fn header(&self, keyed: bool) -> Header {
        let mut flags = 0;
        if keyed {
            flags |= FLAG_KEYED;
        }
        if self.unicast {
            flags |= FLAG_UNICAST;
        }
        Header {
            kind: self.body.kind(),
            flags,
            name_hash: Some(self.name_hash),
            session_id: self.session_id,
            sender: self.sender,
            seq: self.seq,
        }
    }

    fn from_parts(h: &Header, name_hash: [u8; 8], body: Body) -> Self {
        Self {
            name_hash,
            session_id: h.session_id,
            sender: h.sender,
            seq: h.seq,
            unicast: h.unicast(),
            body,
        }
    }
}

impl Codec for Packet {
    /// The unprotected form: long header and body, no tag (tests and fuzzing; [`seal`] is what is
    /// sent).
    fn encode(&self, out: &mut Vec<u8>) {
        self.header(false).write(out);
        self.body.encode(out);
    }

    /// Parses the unprotected form; a packet flagged keyed or short is refused (use [`open`]).
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf };
        let h = Header::read(&mut r)?;
        let Some(name_hash) = h.name_hash.filter(|_| !h.keyed()) else {
            return Err(DecodeError::BadValue { field: "flags" });
        };
        let body = Body::read(h.kind, &mut r)?;
        Ok(Self::from_parts(&h, name_hash, body))
    }
}

/// Encodes `packet` and protects it with its run's key: the tag is appended and, when keyed, the
/// body encrypted.
pub fn seal(packet: &Packet, key: &PacketKey) -> Vec<u8> {
    let header = packet.header(key.keyed()).canonical(key);
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    header.write(&mut out);
    packet.body.encode(&mut out);
    key.seal(
        &mut out,
        header.encoded_len(),
        header.sender,
        header.nonce(),
    );
    out
}

/// Protects an already encoded packet (a long or short header and body, with any body bytes):
/// writes the header as [`seal`] would (keyed flag to match `key`, short or long form, a short
/// header's name hash from `key`) and appends the tag. For tools and tests that build packets
/// byte by byte; [`seal`] is the normal way.
pub fn seal_encoded(encoded: &[u8], key: &PacketKey) -> Result<Vec<u8>, DecodeError> {
    let peeked = Header::peek(encoded)?;
    let h = peeked.canonical(key);
    let mut out = Vec::with_capacity(encoded.len() + TAG_LEN);
    h.write(&mut out);
    out.extend_from_slice(&encoded[peeked.encoded_len()..]);
    key.seal(&mut out, h.encoded_len(), h.sender, h.nonce());
    Ok(out)
}

/// Why a datagram was refused by [`open`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Keyed where we are keyless, or the other way round: a different `-key` setting.
    #[error("packet is keyed differently (wrong or missing -key)")]
    KeyMismatch,
    /// The tag is wrong: corrupted, cut, padded, forged, or protected with another key.
    #[error("packet fails its check")]
    BadTag,
}

/// Checks `buf`'s protection with `key` (the key of the run its header names) and decodes it.
/// Nothing but the header is parsed before the tag has been verified.
pub fn open(buf: &[u8], key: &PacketKey) -> Result<Packet, OpenError> {
    let mut scratch = Vec::new();
    Ok(open_borrowed(buf, key, &mut scratch)?.packet()?)
}

/// A datagram whose protection has been checked, its body not yet parsed.
#[derive(Debug, Clone, Copy)]
pub struct Opened<'a> {
    /// Its header, with the key's name hash filled in where a short header leaves it out (the
    /// tag proved it).
    pub header: Header,
    /// The body's plain bytes.
    body: &'a [u8],
}

impl<'a> Opened<'a> {
    /// Parses the body into an owned packet.
    pub fn packet(&self) -> Result<Packet, DecodeError> {
        let body = Body::read(self.header.kind, &mut Reader { buf: self.body })?;
        let name_hash = self.header.name_hash.unwrap_or_default();
        Ok(Packet::from_parts(&self.header, name_hash, body))
    }

    /// Parses a Data body by borrowing (`None` for other types).
    pub fn data(&self) -> Option<Result<DataRef<'a>, DecodeError>> {
        (self.header.kind == Body::DATA).then(|| {
            let mut r = Reader { buf: self.body };
            let d = DataRef::read(&mut r)?;
            r.end()?;
            Ok(d)
        })
    }
}

/// [`open`] without copying: a keyless datagram is checked where it lies and its body borrowed
/// from it; a keyed one is decrypted into `scratch` (reused by the caller, so nothing is
/// allocated per packet).
pub fn open_borrowed<'a>(
    buf: &'a [u8],
    key: &PacketKey,
    scratch: &'a mut Vec<u8>,
) -> Result<Opened<'a>, OpenError> {
    let mut header = Header::peek(buf)?;
    if header.keyed() != key.keyed() {
        return Err(OpenError::KeyMismatch);
    }
    // One encoding per packet: the short form exactly where seal uses it.
    if header.short() != short_form(header.kind, header.sender, header.seq) {
        return Err(DecodeError::BadValue { field: "flags" }.into());
    }
    let header_len = header.encoded_len();
    let body = if key.keyed() {
        scratch.clear();
        scratch.extend_from_slice(buf);
        let len = key
            .open(scratch, header_len, header.sender, header.nonce())
            .ok_or(OpenError::BadTag)?;
        let scratch: &'a Vec<u8> = scratch;
        &scratch[header_len..len]
    } else {
        let len = key.check(buf, header_len).ok_or(OpenError::BadTag)?;
        &buf[header_len..len]
    };
    header.name_hash.get_or_insert(key.name_hash());
    Ok(Opened { header, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_count_above_its_bound_is_refused_before_its_items() {
        let over = [MAX_NEEDS as u8 + 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            read_needs(&mut Reader { buf: &over }),
            Err(DecodeError::TooLong {
                field: "needs",
                len: MAX_NEEDS + 1,
                max: MAX_NEEDS
            })
        );
        let over = [MAX_HOLED as u8 + 1, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(
            read_holes(&mut Reader { buf: &over }),
            Err(DecodeError::TooLong {
                field: "holes",
                len: MAX_HOLED + 1,
                max: MAX_HOLED
            })
        );
        // At the bound the items are read, and a short list is cut, not too long.
        let at = [MAX_NEEDS as u8, 0, 0, 0, 1, 0, 2];
        assert_eq!(
            read_needs(&mut Reader { buf: &at }),
            Err(DecodeError::Truncated {
                field: "need object"
            })
        );
    }
    use crate::SessionKey;
    use proptest::prelude::*;

    pub(crate) fn samples() -> Vec<Packet> {
        let bodies = vec![
            Body::Announce(Announce {
                phase: Phase::Running,
                yields: true,
                object_count: 7,
                symbol_size: 1377,
                window: 64,
                session_info: vec![1, 2, 3],
            }),
            Body::Register(Register {
                nonce: 0x1234_5678_9abc,
                label: "pc-12".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            }),
            Body::Register(Register {
                nonce: 1,
                label: String::new(),
                mac: None,
            }),
            Body::Ack(Ack {
                client_id: 42,
                kind: AckKind::Dropped,
                nonce: 77,
            }),
            Body::Start { clients: 3 },
            Body::Data(Data {
                object: 1,
                object_len: 3000,
                esi: 2,
                sent_through: 1,
                symbol: vec![7; 100],
            }),
            Body::Status(Status {
                low: 1,
                objects_done: 3,
                bytes: 1 << 40,
                highest_seq: 77,
                held_us: 1000,
                lost: 2,
                expected: 50,
                rejected: 1,
                needs: vec![
                    Need {
                        object: 1,
                        count: 4,
                    },
                    Need {
                        object: 3,
                        count: NEED_ALL,
                    },
                ],
                holes: vec![Holes {
                    object: 1,
                    esis: vec![0, 5, 700, 65_535],
                }],
            }),
            Body::Patch(Patch {
                object: 4,
                esis: vec![3, 17, 600, 751, 752, 1000, 1023, 2047],
                symbol: vec![5; 100],
            }),
            Body::Patch(Patch {
                object: 0,
                esis: vec![0],
                symbol: vec![1; 10],
            }),
            Body::End {
                trailer: vec![9; 32],
            },
            Body::Report(Report {
                ok: false,
                reason: "hash mismatch in chunk 4".into(),
            }),
            Body::Abort {
                reason: "operator".into(),
            },
            Body::Bye,
            Body::Advert(Advert {
                clients: 40,
                interval_ms: 120,
                base: 9,
                pushed: 40,
                owed: vec![Need {
                    object: 9,
                    count: 12,
                }],
            }),
            Body::Ack(Ack {
                client_id: 43,
                kind: AckKind::Moved,
                nonce: 78,
            }),
            Body::Ack(Ack {
                client_id: 44,
                kind: AckKind::Last,
                nonce: 79,
            }),
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Packet {
                name_hash: [1, 2, 3, 4, 5, 6, 7, 8],
                session_id: 0xdead_beef,
                sender: if i % 2 == 0 { MASTER } else { 99 },
                seq: 1000 + i as u64,
                unicast: i % 3 == 0,
                body,
            })
            .collect()
    }

    fn keys() -> [PacketKey; 2] {
        let pass = SessionKey::from_bytes([3; 32]);
        [
            PacketKey::new(None, &[1, 2, 3, 4, 5, 6, 7, 8], 0xdead_beef),
            PacketKey::new(Some(&pass), &[1, 2, 3, 4, 5, 6, 7, 8], 0xdead_beef),
        ]
    }

    #[test]
    fn patch_ids_pack_into_eleven_bytes_and_only_one_way() {
        assert_eq!(patch_capacity(1), MAX_PATCH_IDS);
        assert_eq!(
            patch_capacity(752),
            8,
            "10-bit ids: eight receivers per Patch"
        );
        assert_eq!(patch_capacity(2048), 8);
        assert_eq!(patch_capacity(2049), 7);
        assert_eq!(patch_capacity(56_403), 5);
        for esis in [vec![0], vec![1, 2], vec![0, 511, 1023], (0..15).collect()] {
            let (nw, ids) = pack_patch_ids(&esis).expect("fits");
            assert_eq!(unpack_patch_ids(nw, ids), Ok(esis));
        }
        assert_eq!(pack_patch_ids(&(0..16).collect::<Vec<_>>()), None);
        assert_eq!(pack_patch_ids(&[70_000]), None);
        assert_eq!(pack_patch_ids(&(1000..1009).collect::<Vec<_>>()), None);
        let (nw, ids) = pack_patch_ids(&[3, 9]).expect("fits");
        // Unordered, repeated, too wide a width, a stray bit after the ids, no ids.
        let (w, n) = (nw & 15, nw >> 4);
        let reject = |nw: u8, ids: [u8; PATCH_ID_BYTES]| unpack_patch_ids(nw, ids).is_err();
        let mut swapped = [0u8; PATCH_ID_BYTES];
        swapped[0] = 9 << 4; // ids 9, 3 at width 4
        swapped[0] |= 3;
        assert!(reject(2 << 4 | 3, swapped));
        let mut same = [0u8; PATCH_ID_BYTES];
        same[0] = 9 << 4 | 9;
        assert!(reject(2 << 4 | 3, same));
        assert!(reject(n << 4 | (w + 1), ids));
        let mut stray = ids;
        stray[PATCH_ID_BYTES - 1] |= 1;
        assert!(reject(nw, stray));
        assert!(reject(w, ids));
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        for p in samples() {
            let mut buf = Vec::new();
            p.encode(&mut buf);
            assert_eq!(Packet::decode(&buf), Ok(p.clone()));
            // A data packet's symbol is the rest of the packet: its length is checked by the
            // receiver against the session's symbol size, so only the fixed part must be whole.
            let must_fail = match p.body {
                Body::Data(_) => DATA_OVERHEAD - TAG_LEN + 1,
                Body::Patch(_) => HEADER_LEN + 4 + 1 + PATCH_ID_BYTES + 1,
                _ => buf.len(),
            };
            for cut in 0..must_fail {
                assert!(Packet::decode(&buf[..cut]).is_err(), "{p:?} cut at {cut}");
            }
            let mut longer = buf.clone();
            longer.push(0);
            // Data takes the rest as its symbol; every other type refuses trailing bytes.
            if !matches!(p.body, Body::Data(_) | Body::Patch(_)) {
                assert_eq!(Packet::decode(&longer), Err(DecodeError::TrailingBytes(1)));
            }
        }
    }

    #[test]
    fn sealed_packets_open_only_whole_and_with_their_own_key() {
        let [check, keyed] = keys();
        let other_run = PacketKey::new(None, &[1, 2, 3, 4, 5, 6, 7, 8], 0xdead_bee0);
        for p in samples() {
            for key in [&check, &keyed] {
                let sealed = seal(&p, key);
                assert_eq!(open(&sealed, key), Ok(p.clone()));
                assert_eq!(Header::peek(&sealed).map(|h| h.keyed()), Ok(key.keyed()));
                let other = if key.keyed() { &check } else { &keyed };
                assert_eq!(open(&sealed, other), Err(OpenError::KeyMismatch));
                if !key.keyed() {
                    assert_eq!(open(&sealed, &other_run), Err(OpenError::BadTag));
                }
                for cut in 0..sealed.len() {
                    assert!(open(&sealed[..cut], key).is_err(), "cut at {cut}");
                }
                let mut padded = sealed.clone();
                padded.push(0);
                assert!(open(&padded, key).is_err());
                // Every single bit flip is refused, header included.
                for i in 0..sealed.len() {
                    let mut bad = sealed.clone();
                    bad[i] ^= 1 << (i % 8);
                    assert!(open(&bad, key).is_err(), "{p:?} bit at byte {i}");
                }
            }
        }
        // seal_encoded of the plain encoding is seal.
        for p in samples() {
            let mut plain = Vec::new();
            p.encode(&mut plain);
            for key in [&check, &keyed] {
                assert_eq!(seal_encoded(&plain, key), Ok(seal(&p, key)));
            }
        }
        // Keyed bodies are encrypted: the label of a Register is not readable on the wire.
        let reg = &samples()[1];
        let sealed = seal(reg, &keyed);
        assert!(!sealed.windows(5).any(|w| w == b"pc-12"));
        assert!(seal(reg, &check).windows(5).any(|w| w == b"pc-12"));
    }

    /// The receive path's borrowed parse agrees with the owned one for every packet, keyed or
    /// not, with a scratch buffer that still holds an earlier (longer) packet.
    #[test]
    fn borrowed_opening_agrees_with_open() {
        let [check, keyed] = keys();
        let mut scratch = vec![0xa5; 4000];
        for p in samples() {
            for key in [&check, &keyed] {
                let sealed = seal(&p, key);
                let opened = open_borrowed(&sealed, key, &mut scratch).expect("opens");
                assert_eq!(opened.packet(), Ok(p.clone()));
                match (&p.body, opened.data()) {
                    (Body::Data(d), Some(Ok(r))) => assert_eq!(&r.to_data(), d),
                    (Body::Data(_), other) => panic!("{other:?}"),
                    (_, None) => {}
                    (_, Some(r)) => panic!("{:?} parsed as data: {r:?}", p.body),
                }
                // A refused datagram is refused the same way borrowed.
                let mut bad = sealed.clone();
                bad[HEADER_LEN] ^= 4;
                assert_eq!(
                    open_borrowed(&bad, key, &mut scratch).err(),
                    open(&bad, key).err()
                );
                assert!(open(&bad, key).is_err());
            }
        }
        // An authentic Data packet without a symbol is malformed on both paths.
        let empty = Packet {
            body: Body::Data(Data {
                object: 0,
                object_len: 1,
                esi: 0,
                sent_through: 0,
                symbol: vec![1],
            }),
            ..samples()[0].clone()
        };
        let mut plain = Vec::new();
        empty.encode(&mut plain);
        plain.pop();
        for key in [&check, &keyed] {
            let sealed = seal_encoded(&plain, key).expect("a header");
            let opened = open_borrowed(&sealed, key, &mut scratch).expect("authentic");
            let want = DecodeError::Truncated { field: "symbol" };
            assert_eq!(opened.data(), Some(Err(want.clone())));
            assert_eq!(opened.packet(), Err(want));
        }
    }

    /// The master's Data goes out with the short header, which still binds the session name:
    /// opened under another name's key (same session id) it fails its tag.
    #[test]
    fn master_data_has_the_short_header_and_one_encoding() {
        let [check, keyed] = keys();
        let data = Data {
            object: 9,
            object_len: 5000,
            esi: 4,
            sent_through: 8,
            symbol: vec![0x5a; 1395],
        };
        let mut p = Packet {
            name_hash: [1, 2, 3, 4, 5, 6, 7, 8],
            session_id: 0xdead_beef,
            sender: MASTER,
            seq: (1 << 48) - 1,
            unicast: false,
            body: Body::Data(data.clone()),
        };
        for key in [&check, &keyed] {
            let sealed = seal(&p, key);
            assert_eq!(sealed.len(), DATA_OVERHEAD + 1395);
            let h = Header::peek(&sealed).expect("a header");
            assert!(h.short());
            assert_eq!((h.name_hash, h.sender, h.seq), (None, MASTER, p.seq));
            assert_eq!(open(&sealed, key), Ok(p.clone()));
            let other_name = PacketKey::new(
                key.keyed()
                    .then(|| SessionKey::from_bytes([3; 32]))
                    .as_ref(),
                &[8, 7, 6, 5, 4, 3, 2, 1],
                0xdead_beef,
            );
            assert_eq!(open(&sealed, &other_name), Err(OpenError::BadTag));

            // The same packet in the long form, with a valid tag, is refused: one encoding.
            let mut long = Vec::new();
            p.encode(&mut long);
            long[6] |= u8::from(key.keyed()) * FLAG_KEYED;
            key.seal(&mut long, HEADER_LEN, MASTER, p.header(key.keyed()).nonce());
            assert_eq!(
                open(&long, key),
                Err(OpenError::Decode(DecodeError::BadValue { field: "flags" }))
            );
        }
        // Past 48 bits the long form carries the number.
        p.seq = 1 << 48;
        for key in [&check, &keyed] {
            let sealed = seal(&p, key);
            assert_eq!(
                sealed.len(),
                DATA_OVERHEAD + 1395 + HEADER_LEN - SHORT_HEADER_LEN
            );
            assert!(!Header::peek(&sealed).expect("a header").short());
            assert_eq!(open(&sealed, key), Ok(p.clone()));
        }
        // A client's Data (none is sent, but it parses) and every other type are long; a short
        // flag on another type is refused before any key is looked for.
        for q in samples() {
            let sealed = seal(&q, &check);
            let short = matches!(q.body, Body::Data(_) | Body::Patch(_)) && q.sender == MASTER;
            assert_eq!(Header::peek(&sealed).map(|h| h.short()), Ok(short));
            if !matches!(q.body, Body::Data(_) | Body::Patch(_)) {
                let mut bad = sealed.clone();
                bad[6] |= FLAG_SHORT;
                assert_eq!(
                    Header::peek(&bad),
                    Err(DecodeError::BadValue { field: "flags" })
                );
            }
        }
        // The unprotected form is always long: a short header there is refused.
        let sealed = seal(&p_short(), &check);
        assert_eq!(
            Packet::decode(&sealed[..sealed.len() - TAG_LEN]),
            Err(DecodeError::BadValue { field: "flags" })
        );
    }

    fn p_short() -> Packet {
        Packet {
            name_hash: [1, 2, 3, 4, 5, 6, 7, 8],
            session_id: 0xdead_beef,
            sender: MASTER,
            seq: 7,
            unicast: true,
            body: Body::Data(Data {
                object: 0,
                object_len: 10,
                esi: 0,
                sent_through: 0,
                symbol: vec![1; 10],
            }),
        }
    }

    #[test]
    fn header_errors_are_specific() {
        let mut buf = Vec::new();
        samples()[3].encode(&mut buf);
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert_eq!(Packet::decode(&bad), Err(DecodeError::BadMagic));
        let mut bad = buf.clone();
        bad[4] = 1;
        assert_eq!(Packet::decode(&bad), Err(DecodeError::Version(1)));
        let mut bad = buf.clone();
        bad[5] = 77;
        assert_eq!(Packet::decode(&bad), Err(DecodeError::UnknownType(77)));
        let mut bad = buf.clone();
        bad[6] = 4;
        assert_eq!(
            Packet::decode(&bad),
            Err(DecodeError::BadValue { field: "flags" })
        );
    }

    #[test]
    fn a_register_with_a_bad_mac_flag_is_refused() {
        let mut buf = Vec::new();
        samples()[1].encode(&mut buf);
        let flag = buf.len() - 7;
        assert_eq!(buf[flag], 1, "samples()[1] is the Register with a MAC");
        for v in [2, 0x80, 0xff] {
            let mut bad = buf.clone();
            bad[flag] = v;
            assert_eq!(
                Packet::decode(&bad),
                Err(DecodeError::BadValue { field: "mac flag" })
            );
        }
        // Flag 0 with the six MAC bytes still there: they are trailing bytes, not a MAC.
        let mut bad = buf.clone();
        bad[flag] = 0;
        assert_eq!(Packet::decode(&bad), Err(DecodeError::TrailingBytes(6)));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Packet::decode(&bytes);
            for k in keys() {
                let _ = open(&bytes, &k);
            }
        }

        #[test]
        fn mutated_packets_never_panic(idx in 0usize..9, pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
            let mut buf = Vec::new();
            samples()[idx].encode(&mut buf);
            let p = pos % buf.len();
            buf[p] = val;
            buf.truncate(cut % (buf.len() + 1));
            let _ = Packet::decode(&buf);
            let [check, _] = keys();
            let _ = open(&buf, &check);
        }
    }
}
