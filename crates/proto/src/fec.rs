//! Systematic RaptorQ per object: source symbols are the object itself; repair symbols come from a
//! lazily built encoder. One object is one source block (K ≤ [`MAX_K`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use raptorq::{
    extended_source_block_symbols, EncodingPacket, ObjectTransmissionInformation, PayloadId,
    SourceBlockDecoder, SourceBlockEncoder, SourceBlockEncodingPlan,
};

/// Most source symbols in one block (RFC 6330 K'max).
pub const MAX_K: u32 = 56_403;
/// Extra symbols beyond K a receiver asks for after failed decodes before it stops raising its need.
const MAX_EXTRA: u32 = 64;

/// Number of source symbols of an object of `len` bytes (an empty object still has one).
pub(crate) fn source_count(len: u32, symbol_size: u16) -> u32 {
    len.div_ceil(u32::from(symbol_size)).max(1)
}

fn oti(k: u32, t: u16) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(u64::from(k) * u64::from(t), t, 1, 1, 1)
}

/// The XOR of source symbols `esis` of `data` (zero-padded like [`source_symbol`]): a Patch.
pub(crate) fn xor_sources(data: &[u8], esis: &[u32], t: u16) -> Vec<u8> {
    let t = usize::from(t);
    let mut out = vec![0u8; t];
    for &e in esis {
        let start = (e as usize * t).min(data.len());
        let end = (start + t).min(data.len());
        for (a, b) in out.iter_mut().zip(&data[start..end]) {
            *a ^= b;
        }
    }
    out
}

/// Source symbol `esi` of `data`, zero-padded to `t` bytes.
pub(crate) fn source_symbol(data: &[u8], esi: u32, t: u16) -> Vec<u8> {
    let t = usize::from(t);
    let start = (esi as usize * t).min(data.len());
    let end = (start + t).min(data.len());
    let mut s = data[start..end].to_vec();
    s.resize(t, 0);
    s
}

/// The repair encoder of one object of `k` source symbols.
///
/// RaptorQ solves for the intermediate symbols over K' (RFC 6330's extended block: the next
/// supported size ≥ K, padded with zero symbols), and the plan of that solve depends only on K'.
/// raptorq 2 caches plans by K, 64 of them first in first out, and compressed 1 MiB objects have
/// hundreds of distinct K over 66 distinct K' above 200: nearly every build generated its plan again, which
/// costs as much as the build. So the block is handed over padded to K', with a plan from
/// [`PlanCache`]. Its intermediate symbols, and so each repair symbol, are the same bytes; only
/// the ESIs raptorq labels them with start at K' instead of K.
pub(crate) struct Encoder {
    inner: SourceBlockEncoder,
    k: u32,
}

/// Encoding plans by K', least recently used out, within a budget of summed K' (a plan takes
/// about 1 KB per symbol of K', more for large blocks: 32 MB for the 66 sizes from 200 to 800).
struct PlanCache {
    plans: HashMap<u32, (Arc<SourceBlockEncodingPlan>, u64)>,
    clock: u64,
}

/// Summed K' of the cached plans: every size of objects up to 1 MiB fits (103 sizes, summed
/// 34,596).
const PLAN_BUDGET: u64 = 64 * 1024;

impl PlanCache {
    fn global() -> &'static Mutex<Self> {
        static CACHE: OnceLock<Mutex<PlanCache>> = OnceLock::new();
        CACHE.get_or_init(|| {
            Mutex::new(Self {
                plans: HashMap::new(),
                clock: 0,
            })
        })
    }

    /// The plan for `extended` (a K'), generated outside the lock when missing.
    fn get(extended: u32) -> Arc<SourceBlockEncodingPlan> {
        let lock = || {
            Self::global()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        {
            let mut c = lock();
            c.clock += 1;
            let now = c.clock;
            if let Some((plan, used)) = c.plans.get_mut(&extended) {
                *used = now;
                return Arc::clone(plan);
            }
        }
        // K' ≤ MAX_K < 2^16.
        let plan = Arc::new(SourceBlockEncodingPlan::generate(extended as u16));
        if u64::from(extended) > PLAN_BUDGET {
            return plan;
        }
        let mut c = lock();
        let now = c.clock;
        c.plans.insert(extended, (Arc::clone(&plan), now));
        while c.plans.keys().map(|&k| u64::from(k)).sum::<u64>() > PLAN_BUDGET {
            let Some(oldest) = c
                .plans
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            c.plans.remove(&oldest);
        }
        plan
    }
}

/// Builds the (expensive) repair encoder of one object.
pub(crate) fn encoder(data: &[u8], t: u16) -> Encoder {
    let k = source_count(data.len() as u32, t);
    let extended = extended_source_block_symbols(k);
    let mut padded = data.to_vec();
    padded.resize(extended as usize * usize::from(t), 0);
    let plan = PlanCache::get(extended);
    Encoder {
        inner: SourceBlockEncoder::with_encoding_plan(0, &oti(extended, t), &padded, &plan),
        k,
    }
}

/// A repair encoder the master wants built, handed to the engine when
/// `SenderConfig::offload_encoders` is set: a build costs a millisecond or two per MiB, which the
/// loop that paces the sends must not spend. The engine runs [`EncodeJob::run`] on a worker and
/// hands the [`Encoded`] result to `Sender::encoder_done`.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodeJob {
    pub(crate) session: u64,
    pub(crate) object: u32,
    data: Arc<Vec<u8>>,
    t: u16,
}

impl std::fmt::Debug for EncodeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeJob")
            .field("session", &self.session)
            .field("object", &self.object)
            .field("len", &self.data.len())
            .finish()
    }
}

impl EncodeJob {
    pub(crate) fn new(session: u64, object: u32, data: Arc<Vec<u8>>, t: u16) -> Self {
        Self {
            session,
            object,
            data,
            t,
        }
    }

    /// The object whose encoder it builds.
    pub fn object(&self) -> u32 {
        self.object
    }

    /// Builds the encoder (the expensive part).
    pub fn run(self) -> Encoded {
        Encoded {
            session: self.session,
            object: self.object,
            enc: encoder(&self.data, self.t),
        }
    }
}

/// The outcome of an [`EncodeJob`].
pub struct Encoded {
    pub(crate) session: u64,
    pub(crate) object: u32,
    pub(crate) enc: Encoder,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("session", &self.session)
            .field("object", &self.object)
            .finish()
    }
}

/// Repair symbols `first..first+n` (ids relative to K) as (esi, bytes).
pub(crate) fn repair(enc: &Encoder, first: u32, n: u32) -> Vec<(u32, Vec<u8>)> {
    enc.inner
        .repair_packets(first, n)
        .into_iter()
        .zip(first..)
        .map(|(p, i)| (enc.k + i, p.split().1))
        .collect()
}

/// A receiver's partial object.
///
/// Its symbols are copied once, from the datagram: source symbols into `buf`, in place, and repair
/// symbols into `pending`. The first decode job takes both away (moved, not copied); a failed
/// decode hands back its RaptorQ decoder, which keeps every symbol it was given, so a retry gives
/// it only what arrived since.
#[derive(Debug)]
pub(crate) struct Assembly {
    pub(crate) len: u32,
    pub(crate) k: u32,
    t: u16,
    /// The object in place, source symbols where they belong; empty once handed to a decode.
    buf: Vec<u8>,
    /// Source symbols held (in `buf`, `pending` or a decoder).
    have: Vec<bool>,
    sources: u32,
    /// Ids of the repair symbols held, wherever their bytes are.
    repair_ids: Vec<u32>,
    /// Symbols held but neither in `buf` nor given to a decoder.
    pending: Vec<(u32, Vec<u8>)>,
    /// The decoder of a failed attempt, holding every symbol given to it.
    decoder: Option<Box<SourceBlockDecoder>>,
    extra: u32,
    /// A decode of what it holds runs elsewhere ([`DecodeJob`]); new symbols are still kept.
    decoding: bool,
}

/// What a decode starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Feed {
    /// The object in place with its holes, and which source symbols it holds.
    Fresh { buf: Vec<u8>, have: Vec<bool> },
    /// The decoder of a failed attempt.
    Resume(Box<SourceBlockDecoder>),
}

/// A RaptorQ decode to run off the protocol thread: the symbols of one object, enough to try,
/// moved out of its assembly. The engine runs [`DecodeJob::run`] on a worker and hands the
/// [`Decoded`] result to `Receiver::decode_done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeJob {
    pub(crate) session: u64,
    pub(crate) object: u32,
    len: u32,
    k: u32,
    t: u16,
    feed: Feed,
    /// Symbols beyond the feed's.
    packets: Vec<(u32, Vec<u8>)>,
}

/// The outcome of a [`DecodeJob`].
#[derive(Debug, Clone)]
pub struct Decoded {
    pub(crate) session: u64,
    pub(crate) object: u32,
    pub(crate) len: u32,
    /// The object, or the decoder when RaptorQ needs a symbol more.
    pub(crate) outcome: Result<Vec<u8>, Box<SourceBlockDecoder>>,
}

impl DecodeJob {
    /// The object it decodes.
    pub fn object(&self) -> u32 {
        self.object
    }

    /// Decodes (the expensive part: milliseconds per MiB).
    pub fn run(self) -> Decoded {
        let t = usize::from(self.t);
        let packets = |p: Vec<(u32, Vec<u8>)>| {
            p.into_iter()
                .map(|(e, d)| EncodingPacket::new(PayloadId::new(0, e), d))
        };
        let (dec, bytes) = match self.feed {
            Feed::Fresh { mut buf, have } => {
                // Few holes: solved for directly, no decoder.
                if direct::solve(&mut buf, &have, self.k, self.t, &self.packets) {
                    buf.truncate(self.len as usize);
                    return Decoded {
                        session: self.session,
                        object: self.object,
                        len: self.len,
                        outcome: Ok(buf),
                    };
                }
                let mut dec = Box::new(SourceBlockDecoder::new(
                    0,
                    &oti(self.k, self.t),
                    u64::from(self.k) * u64::from(self.t),
                ));
                // RaptorQ wants each symbol as its own vector: cut here, on the worker.
                let sources = have.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| {
                    EncodingPacket::new(
                        PayloadId::new(0, i as u32),
                        buf[i * t..(i + 1) * t].to_vec(),
                    )
                });
                let bytes = dec.decode(sources.chain(packets(self.packets)));
                (dec, bytes)
            }
            Feed::Resume(mut dec) => {
                let bytes = dec.decode(packets(self.packets));
                (dec, bytes)
            }
        };
        let outcome = match bytes {
            Some(mut out) => {
                out.truncate(self.len as usize);
                Ok(out)
            }
            None => Err(dec),
        };
        Decoded {
            session: self.session,
            object: self.object,
            len: self.len,
            outcome,
        }
    }
}

/// What adding a symbol did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// Already had it.
    Duplicate,
    /// Stored; more are needed.
    Stored,
    /// The object is complete.
    Complete(Vec<u8>),
    /// Enough symbols to try a decode: run it elsewhere (only with `offload`).
    Decode(DecodeJob),
}

impl Assembly {
    /// A new assembly; the caller validated `len` (K ≤ MAX_K) and the symbol size.
    pub(crate) fn new(len: u32, t: u16) -> Self {
        let k = source_count(len, t);
        Self {
            len,
            k,
            t,
            buf: vec![0; k as usize * usize::from(t)],
            have: vec![false; k as usize],
            sources: 0,
            repair_ids: Vec::new(),
            pending: Vec::new(),
            decoder: None,
            extra: 0,
            decoding: false,
        }
    }

    /// Distinct symbols held.
    pub(crate) fn held(&self) -> u32 {
        self.sources + self.repair_ids.len() as u32
    }

    /// Symbols still needed before a decode is worth trying.
    pub(crate) fn need(&self) -> u32 {
        (self.k + self.extra).saturating_sub(self.held())
    }

    /// Whether the source symbols still lie in `buf` (no decode has taken them).
    fn in_place(&self) -> bool {
        self.buf.len() == self.k as usize * usize::from(self.t)
    }

    /// Adds symbol `esi` (exactly `t` bytes). With `offload` (the session id of the job), a
    /// decode is handed out as a job instead of run here.
    pub(crate) fn add(&mut self, esi: u32, symbol: &[u8], offload: Option<u64>) -> Added {
        let t = usize::from(self.t);
        if esi < self.k {
            let i = esi as usize;
            if self.have[i] {
                return Added::Duplicate;
            }
            self.have[i] = true;
            self.sources += 1;
            if !self.in_place() {
                self.pending.push((esi, symbol.to_vec()));
            } else {
                self.buf[i * t..(i + 1) * t].copy_from_slice(symbol);
                if self.sources == self.k {
                    let mut out = std::mem::take(&mut self.buf);
                    out.truncate(self.len as usize);
                    return Added::Complete(out);
                }
            }
        } else {
            if self.repair_ids.contains(&esi) {
                return Added::Duplicate;
            }
            self.repair_ids.push(esi);
            self.pending.push((esi, symbol.to_vec()));
        }
        self.try_decode(offload)
    }

    /// The source symbols it lacks, ascending, when they may be listed for Patches: the object is
    /// in place (no decode has taken it), at most `max` are missing and ids fit in 16 bits.
    pub(crate) fn holes(&self, max: usize) -> Option<Vec<u16>> {
        let missing = (self.k - self.sources) as usize;
        if !self.in_place() || missing == 0 || missing > max || self.k > 1 << 16 {
            return None;
        }
        let holes = self.have.iter().enumerate().filter(|(_, h)| !**h);
        Some(holes.map(|(i, _)| i as u16).collect())
    }

    /// A Patch: the XOR of source symbols `esis` (ascending). When it holds all of them but one,
    /// that one is this XOR with the others; anything else (it lacks none, or two, or the object
    /// is not in place) is of no use here.
    pub(crate) fn patch(&mut self, esis: &[u32], symbol: &[u8], offload: Option<u64>) -> Added {
        let t = usize::from(self.t);
        if symbol.len() != t || !self.in_place() || esis.iter().any(|&e| e >= self.k) {
            return Added::Duplicate;
        }
        let mut lacking = esis.iter().filter(|&&e| !self.have[e as usize]);
        let (Some(&hole), None) = (lacking.next(), lacking.next()) else {
            return Added::Duplicate;
        };
        let mut recovered = symbol.to_vec();
        for &e in esis.iter().filter(|&&e| e != hole) {
            let e = e as usize;
            for (a, b) in recovered.iter_mut().zip(&self.buf[e * t..(e + 1) * t]) {
                *a ^= b;
            }
        }
        self.add(hole, &recovered, offload)
    }

    /// Decodes (or hands out the job) once enough symbols are held and none is running.
    fn try_decode(&mut self, offload: Option<u64>) -> Added {
        if self.need() > 0 || self.decoding {
            return Added::Stored;
        }
        let job = self.job(offload.unwrap_or(0));
        if offload.is_some() {
            self.decoding = true;
            return Added::Decode(job);
        }
        match job.run().outcome {
            Ok(out) => Added::Complete(out),
            Err(dec) => {
                self.decode_failed(dec);
                Added::Stored
            }
        }
    }

    /// A decode needed more: RaptorQ occasionally needs a symbol or two beyond K, so ask for one
    /// more; with `offload`, try again at once if more arrived meanwhile. `dec` holds the symbols
    /// the failed attempt had.
    pub(crate) fn decode_failed_then(
        &mut self,
        dec: Box<SourceBlockDecoder>,
        offload: Option<u64>,
    ) -> Added {
        self.decode_failed(dec);
        self.try_decode(offload)
    }

    fn decode_failed(&mut self, dec: Box<SourceBlockDecoder>) {
        self.decoder = Some(dec);
        self.decoding = false;
        self.extra = (self.extra + 1).min(MAX_EXTRA);
    }

    /// The next decode: everything held not yet given to a decoder, moved into the job.
    fn job(&mut self, session: u64) -> DecodeJob {
        let feed = match self.decoder.take() {
            Some(dec) => Feed::Resume(dec),
            None => Feed::Fresh {
                buf: std::mem::take(&mut self.buf),
                have: self.have.clone(),
            },
        };
        DecodeJob {
            session,
            object: 0,
            len: self.len,
            k: self.k,
            t: self.t,
            feed,
            packets: std::mem::take(&mut self.pending),
        }
    }
}

/// The missing source symbols solved for directly, when few are missing.
///
/// RaptorQ's encoding is linear over GF(256), byte by byte: a repair symbol of the object is that
/// repair symbol of the object with its missing source symbols zeroed plus, for each missing
/// symbol, a coefficient times it. One encoder build from a cached plan ([`encoder`]), over
/// symbols widened by one byte per missing symbol (a 1 in its own byte), gives both: each repair
/// symbol of it is the zeroed object's, followed by its coefficients. What is left is an m × m
/// system for the m missing symbols, eliminated with raptorq's vectorised GF(256) arithmetic.
///
/// The build costs about what one of the master's encoder builds costs, the elimination m² symbol
/// multiply-adds; RaptorQ's decoder costs about two builds. Timed in one loop (1 MiB objects,
/// K = 739): 1.4 ms at m = 15 (2% loss), 1.8 at 80 (10%), 2.4 at 120, where the decoder took 2.4
/// to 2.5 ms whatever m. With 256 KiB objects the two met near m = 70 (K = 185), with 64 KiB near
/// m = 28 (K = 47): about m² = 17 K to 26 K. So the direct solve runs while m² ≤ [`WORTH`] × K.
mod direct {
    use super::{extended_source_block_symbols, oti, PlanCache, SourceBlockEncoder};
    use raptorq::{Octet, Symbol};

    /// Most missing source symbols solved for directly, whatever K.
    pub(super) const MAX_MISSING: usize = 128;

    /// The direct solve runs while m² ≤ `WORTH` × K: below where it met the decoder in the timings
    /// above, with room for a slower host.
    const WORTH: usize = 12;

    /// Whether `m` missing of `k` are solved for directly.
    pub(super) fn worth(m: usize, k: u32) -> bool {
        m <= MAX_MISSING && m * m <= WORTH * k as usize
    }

    /// The widened block is kept for the next solve on the thread up to this size (a 1 MiB
    /// object's is 1.1 MB): a fresh one per object cost page faults and the kernel's zeroing.
    const KEEP_WIDE: usize = 4 << 20;

    thread_local! {
        static WIDE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Fills the missing source symbols of `buf` (the object of `k` symbols of `t` bytes, zero
    /// where `have` is false) from `repairs` (ESI, bytes). False, with `buf` as it was, when
    /// too many are missing, too few repairs are at hand, or those do not determine them.
    pub(super) fn solve(
        buf: &mut [u8],
        have: &[bool],
        k: u32,
        t: u16,
        repairs: &[(u32, Vec<u8>)],
    ) -> bool {
        let ts = usize::from(t);
        let missing: Vec<usize> = (0..k as usize).filter(|&i| !have[i]).collect();
        let m = missing.len();
        let extended = extended_source_block_symbols(k);
        // raptorq labels the repair symbols of a padded block from K' and asserts 24-bit ids:
        // an id near the top (no master sends one; a stranger may) is left to the decoder.
        let rows: Vec<&(u32, Vec<u8>)> = repairs
            .iter()
            .filter(|(e, d)| {
                *e >= k && d.len() == ts && u64::from(*e - k) + u64::from(extended) < 1 << 24
            })
            .collect();
        if m == 0 || !worth(m, k) || rows.len() < m || buf.len() != k as usize * ts {
            return false;
        }
        let plan = PlanCache::get(extended);
        // One build over symbols widened by m bytes: the object with its holes zeroed, and after
        // each symbol the lanes of the coefficients (a 1 in byte j of missing symbol j). Each
        // repair symbol of it is then that of the zeroed object followed by its coefficient of
        // each missing symbol.
        let wide_t = ts + m;
        let Ok(wide_t16) = u16::try_from(wide_t) else {
            return false;
        };
        let enc = WIDE.with_borrow_mut(|wide| {
            wide.clear();
            for sym in buf.chunks_exact(ts) {
                wide.extend_from_slice(sym);
                wide.resize(wide.len() + m, 0);
            }
            wide.resize(extended as usize * wide_t, 0);
            for (j, &i) in missing.iter().enumerate() {
                // Zeroed here, whatever the object holds where it lacks a symbol.
                wide[i * wide_t..i * wide_t + ts].fill(0);
                wide[i * wide_t + ts + j] = 1;
            }
            let enc =
                SourceBlockEncoder::with_encoding_plan(0, &oti(extended, wide_t16), wide, &plan);
            if wide.capacity() > KEEP_WIDE {
                *wide = Vec::new();
            }
            enc
        });
        // Gauss-Jordan on the coefficient rows, each followed by what it became as a combination
        // of the rows taken, so that the symbols are combined only once, at the end.
        let n = rows.len().min(m + 4);
        let mut a: Vec<Symbol> = Vec::with_capacity(n);
        let mut rest: Vec<Symbol> = Vec::with_capacity(n);
        for (r, (esi, data)) in rows.iter().take(n).enumerate() {
            let Some(mut y) = enc.repair_packets(esi - k, 1).pop().map(|p| p.split().1) else {
                return false;
            };
            if y.len() != wide_t {
                return false;
            }
            let mut c = y.split_off(ts);
            // What the repair holds beyond the object with its holes zeroed.
            y.iter_mut().zip(data).for_each(|(o, s)| *o ^= s);
            rest.push(Symbol::new(y));
            c.resize(m + n, 0);
            c[m + r] = 1;
            a.push(Symbol::new(c));
        }
        let mut pivot_row = Vec::with_capacity(m);
        for col in 0..m {
            let next = pivot_row.len();
            let Some(p) = (next..n).find(|&r| a[r].as_bytes()[col] != 0) else {
                return false;
            };
            a.swap(next, p);
            let f = Octet::one() / Octet::new(a[next].as_bytes()[col]);
            a[next].mulassign_scalar(&f);
            let (above, from) = a.split_at_mut(next);
            let Some((pivot, below)) = from.split_first_mut() else {
                return false;
            };
            for row in above.iter_mut().chain(below) {
                let c = row.as_bytes()[col];
                if c != 0 {
                    row.fused_addassign_mul_scalar(pivot, &Octet::new(c));
                }
            }
            pivot_row.push(next);
        }
        // Only rows taken as pivots enter another row, so each missing symbol combines at most
        // m of the repairs.
        for (col, &i) in missing.iter().enumerate() {
            let row = a[pivot_row[col]].as_bytes();
            let mut out = Symbol::zero(ts);
            for (y, &c) in rest.iter().zip(&row[m..]) {
                if c != 0 {
                    out.fused_addassign_mul_scalar(y, &Octet::new(c));
                }
            }
            buf[i * ts..(i + 1) * ts].copy_from_slice(out.as_bytes());
        }
        true
    }
}

/// A decoder holding no symbol, as a failed decode would hand back (tests).
#[cfg(test)]
pub(crate) fn empty_decoder(len: u32, t: u16) -> Box<SourceBlockDecoder> {
    let k = source_count(len, t);
    Box::new(SourceBlockDecoder::new(
        0,
        &oti(k, t),
        u64::from(k) * u64::from(t),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn an_encoder_padded_to_k_prime_makes_the_repairs_of_the_unpadded_block() {
        let t = 48u16;
        // 10 and 101 are extended sizes themselves; the rest are padded.
        for k in [1u32, 7, 10, 11, 100, 101, 102, 333] {
            let d = data(k as usize * usize::from(t) - 5);
            let plain = SourceBlockEncoder::new(0, &oti(k, t), &{
                let mut p = d.clone();
                p.resize(k as usize * usize::from(t), 0);
                p
            });
            let want: Vec<(u32, Vec<u8>)> = plain
                .repair_packets(3, 20)
                .into_iter()
                .map(|p| {
                    let (id, bytes) = p.split();
                    (id.encoding_symbol_id(), bytes)
                })
                .collect();
            assert_eq!(want[0].0, k + 3);
            assert_eq!(repair(&encoder(&d, t), 3, 20), want, "k {k}");
        }
    }

    #[test]
    fn a_patch_fills_the_one_hole_it_holds_and_nothing_else() {
        let t = 64u16;
        let d = data(1000); // K = 16
        let k = source_count(d.len() as u32, t);
        let mut a = Assembly::new(d.len() as u32, t);
        for e in (0..k).filter(|e| ![3, 9, 15].contains(e)) {
            a.add(e, &source_symbol(&d, e, t), None);
        }
        assert_eq!(a.holes(128), Some(vec![3, 9, 15]));
        assert_eq!(a.holes(2), None, "more holes than may be listed");
        // Two holes in one patch: of no use; no hole: a duplicate.
        assert_eq!(
            a.patch(&[3, 9], &xor_sources(&d, &[3, 9], t), None),
            Added::Duplicate
        );
        assert_eq!(
            a.patch(&[1, 2], &xor_sources(&d, &[1, 2], t), None),
            Added::Duplicate
        );
        assert_eq!(
            a.patch(&[1, 3, 4], &xor_sources(&d, &[1, 3, 4], t), None),
            Added::Stored
        );
        assert_eq!(
            a.patch(&[9, 10], &xor_sources(&d, &[9, 10], t), None),
            Added::Stored
        );
        assert_eq!(a.holes(128), Some(vec![15]));
        // The last symbol is padded: the patch's XOR is of padded symbols.
        match a.patch(&[0, 15], &xor_sources(&d, &[0, 15], t), None) {
            Added::Complete(out) => assert_eq!(out, d),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn source_only_and_repair_decode() {
        let t = 64u16;
        for len in [0usize, 1, 63, 64, 65, 1000, 5000] {
            let d = data(len);
            let k = source_count(len as u32, t);
            // All sources.
            let mut a = Assembly::new(len as u32, t);
            let mut done = None;
            for esi in 0..k {
                if let Added::Complete(v) = a.add(esi, &source_symbol(&d, esi, t), None) {
                    done = Some(v);
                }
            }
            assert_eq!(done.as_deref(), Some(&d[..]));
            // Lose every third source symbol, heal with repairs.
            let enc = encoder(&d, t);
            let mut a = Assembly::new(len as u32, t);
            for esi in (0..k).filter(|e| e % 3 != 0) {
                assert_eq!(a.add(esi, &source_symbol(&d, esi, t), None), Added::Stored);
            }
            if k > 1 {
                assert_eq!(a.add(1, &source_symbol(&d, 1, t), None), Added::Duplicate);
            }
            let mut got = None;
            for (esi, sym) in repair(&enc, 0, a.need() + 4) {
                assert!(esi >= k);
                if let Added::Complete(v) = a.add(esi, &sym, None) {
                    got = Some(v);
                    break;
                }
            }
            assert_eq!(got.as_deref(), Some(&d[..]), "len {len}");
        }
    }

    /// A decode that fails with exactly K symbols goes on from its decoder: the retry gets only
    /// the symbol that arrived since and still yields the object, offloaded or not.
    #[test]
    fn a_failed_decode_resumes_from_its_decoder() {
        let t = 16u16;
        let k = 12u32;
        let d = data(k as usize * usize::from(t) - 3);
        let enc = encoder(&d, t);
        let mut failures = 0;
        // Lose the first four sources and heal with four repairs from varying offsets: about one
        // set in a hundred does not decode with K symbols.
        for first in 0..2_000 {
            for offload in [None, Some(7)] {
                let mut a = Assembly::new(d.len() as u32, t);
                for esi in 4..k {
                    assert_eq!(
                        a.add(esi, &source_symbol(&d, esi, t), offload),
                        Added::Stored
                    );
                }
                let r = repair(&enc, first, 5);
                let mut added = Added::Stored;
                for (esi, sym) in &r[..4] {
                    added = a.add(*esi, sym, offload);
                }
                let failed = match (added, offload) {
                    (Added::Complete(v), None) => {
                        assert_eq!(v, d);
                        false
                    }
                    (Added::Stored, None) => true,
                    (Added::Decode(job), Some(_)) => {
                        assert_eq!(a.add(r[3].0, &r[3].1, offload), Added::Duplicate);
                        match job.run().outcome {
                            Ok(v) => {
                                assert_eq!(v, d);
                                false
                            }
                            Err(dec) => {
                                assert_eq!(a.decode_failed_then(dec, offload), Added::Stored);
                                true
                            }
                        }
                    }
                    (other, _) => panic!("{other:?}"),
                };
                if !failed {
                    continue;
                }
                failures += 1;
                assert_eq!(a.need(), 1);
                // The decoder kept what it had: one more symbol is all the retry carries.
                let got = match a.add(r[4].0, &r[4].1, offload) {
                    Added::Complete(v) => v,
                    Added::Decode(job) => {
                        assert_eq!(job.packets.len(), 1);
                        assert!(matches!(job.feed, Feed::Resume(_)));
                        job.run().outcome.expect("K + 1 symbols decode")
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!(got, d, "first {first}");
            }
            if failures >= 4 {
                return;
            }
        }
        panic!("only {failures} decodes failed with K symbols");
    }

    /// The object, its source symbols with `lose` of them (from `seed`) missing, and its repair
    /// symbols with every third one skipped (as the wire would lose them).
    fn holed(len: usize, t: u16, lose: usize, seed: u64) -> Holed {
        let d = data(len);
        let k = source_count(len as u32, t);
        let mut have = vec![true; k as usize];
        let mut x = seed | 1;
        let mut lost = 0;
        while lost < lose.min(k as usize) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % u64::from(k)) as usize;
            if have[i] {
                have[i] = false;
                lost += 1;
            }
        }
        let mut buf = vec![0; k as usize * usize::from(t)];
        for i in (0..k as usize).filter(|&i| have[i]) {
            let ts = usize::from(t);
            buf[i * ts..(i + 1) * ts].copy_from_slice(&source_symbol(&d, i as u32, t));
        }
        let enc = encoder(&d, t);
        let repairs = repair(&enc, 3, 3 * lose as u32 + 12)
            .into_iter()
            .enumerate()
            .filter(|(n, _)| n % 3 != 2)
            .map(|(_, r)| r)
            .collect();
        Holed {
            d,
            buf,
            have,
            repairs,
        }
    }

    struct Holed {
        d: Vec<u8>,
        buf: Vec<u8>,
        have: Vec<bool>,
        repairs: Vec<(u32, Vec<u8>)>,
    }

    #[test]
    fn few_holes_are_solved_directly_and_exactly() {
        let mut solved = 0;
        let mut tried = 0;
        for (len, t) in [
            (1usize, 16u16),
            (40, 16),
            (1000, 64),
            (5000, 64),
            (100_000, 1395),
            (300_000, 1395),
            (1 << 20, 1420),
        ] {
            let k = source_count(len as u32, t) as usize;
            for lose in [1, 2, 5, 17, most_direct(k as u32)] {
                if lose > k {
                    continue;
                }
                for seed in 1..6u64 {
                    let Holed {
                        d,
                        mut buf,
                        have,
                        repairs,
                    } = holed(len, t, lose, seed * 7919 + lose as u64);
                    let before = buf.clone();
                    tried += 1;
                    if direct::solve(&mut buf, &have, k as u32, t, &repairs[..lose]) {
                        solved += 1;
                        buf.truncate(len);
                        assert_eq!(buf, d, "len {len}, {lose} lost, seed {seed}");
                    } else {
                        // Exactly K symbols do not always determine the object (RaptorQ's
                        // decoder fails on the same sets); four more always did here.
                        assert_eq!(buf, before, "a failed solve leaves the object as it was");
                        assert!(direct::solve(
                            &mut buf,
                            &have,
                            k as u32,
                            t,
                            &repairs[..lose + 4]
                        ));
                        buf.truncate(len);
                        assert_eq!(buf, d, "len {len}, {lose} lost, seed {seed}, K + 4");
                    }
                }
            }
        }
        assert!(
            solved * 10 >= tried * 9,
            "only {solved} of {tried} solved with K symbols"
        );
    }

    #[test]
    fn what_the_object_holds_in_its_holes_does_not_matter() {
        // The assembly leaves holes zero, but the solve must not depend on it.
        let (len, t) = (5000usize, 64u16);
        let k = source_count(len as u32, t);
        let Holed {
            d,
            mut buf,
            have,
            repairs,
        } = holed(len, t, 4, 11);
        let ts = usize::from(t);
        for i in (0..k as usize).filter(|&i| !have[i]) {
            buf[i * ts..(i + 1) * ts].fill(0x5a);
        }
        assert!(direct::solve(&mut buf, &have, k, t, &repairs[..8]));
        buf.truncate(len);
        assert!(
            buf == d,
            "the holes' old bytes leaked into the solved symbols"
        );
    }

    #[test]
    fn a_repair_id_at_the_top_of_the_range_is_left_to_the_decoder() {
        // A stranger's symbol with the highest id the wire allows: raptorq would panic on the id
        // it gives it in a padded block; the direct solve skips it and solves with the rest.
        let (len, t) = (5000usize, 64u16);
        let k = source_count(len as u32, t);
        let Holed {
            d,
            mut buf,
            have,
            mut repairs,
        } = holed(len, t, 3, 5);
        repairs.insert(0, (crate::wire::MAX_ESI - 1, vec![0xa5; usize::from(t)]));
        assert!(direct::solve(&mut buf, &have, k, t, &repairs[..8]));
        buf.truncate(len);
        assert_eq!(buf, d);
    }

    /// The most missing symbols of `k` the direct solve takes.
    fn most_direct(k: u32) -> usize {
        (1..=k as usize)
            .filter(|&m| direct::worth(m, k))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_direct_solve_stops_where_the_decoder_is_cheaper() {
        // K of 1 MiB, 256 KiB and 64 KiB objects of 1420-byte symbols, and the largest K.
        assert_eq!(most_direct(739), 94);
        assert_eq!(most_direct(185), 47);
        assert_eq!(most_direct(47), 23);
        assert_eq!(most_direct(MAX_K), direct::MAX_MISSING);
    }

    #[test]
    fn the_decoder_takes_what_the_direct_solve_does_not() {
        let (len, t) = (100_000usize, 1395u16);
        let k = source_count(len as u32, t);
        let most = most_direct(k);
        // Too many holes, too few repairs: nothing is touched, and a job still decodes.
        for (lose, give) in [(most + 1, most + 5), (6, 5)] {
            let Holed {
                d,
                mut buf,
                have,
                repairs,
            } = holed(len, t, lose, 99);
            let before = buf.clone();
            assert!(!direct::solve(&mut buf, &have, k, t, &repairs[..give]));
            assert_eq!(buf, before);
            let mut a = Assembly::new(len as u32, t);
            for i in (0..k).filter(|&i| have[i as usize]) {
                assert_eq!(a.add(i, &source_symbol(&d, i, t), Some(1)), Added::Stored);
            }
            let mut out = None;
            for (esi, sym) in &repairs {
                match a.add(*esi, sym, Some(1)) {
                    Added::Decode(job) => {
                        out = job.run().outcome.ok();
                        break;
                    }
                    Added::Stored => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(out.as_deref(), Some(&d[..]), "{lose} lost");
        }
    }

    /// How long one decode of a 1 MiB object takes here (`cargo test --release -p imgcast-proto
    /// --lib decode_cost -- --ignored --nocapture`): a measurement, not a check.
    #[test]
    #[ignore]
    fn decode_cost() {
        let t = 1395u16;
        let d: Vec<u8> = (0..1usize << 20)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
            .collect();
        let k = source_count(d.len() as u32, t);
        let enc = encoder(&d, t);
        for loss in [2u32, 10] {
            let mut total = std::time::Duration::ZERO;
            let mut seed = 0x9e37_79b9_u32;
            let rounds = 30;
            for _ in 0..rounds {
                let mut a = Assembly::new(d.len() as u32, t);
                let mut lost = 0;
                for esi in 0..k {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    if (seed >> 16) % 100 < loss {
                        lost += 1;
                    } else {
                        a.add(esi, &source_symbol(&d, esi, t), Some(1));
                    }
                }
                let mut job = None;
                for (esi, sym) in repair(&enc, 0, lost + 8) {
                    if let Added::Decode(j) = a.add(esi, &sym, Some(1)) {
                        job = Some(j);
                        break;
                    }
                }
                let job = job.expect("a decode job");
                let start = std::time::Instant::now();
                let out = job.run();
                total += start.elapsed();
                if let Ok(v) = out.outcome {
                    assert_eq!(v, d);
                }
            }
            eprintln!(
                "{loss}% loss, K {k}: {:.2} ms per MiB",
                total.as_secs_f64() * 1e3 / f64::from(rounds)
            );
        }
    }
}
