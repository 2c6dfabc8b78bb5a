//! The master's window of objects and its repair scheduling.
//!
//! The first pass sends each object's source symbols once. Receivers report how many symbols they
//! still lack per object; for each object the master owes the **maximum** need over receivers,
//! minus what is still in flight to the reporter, and pays it with **new** repair symbols (ids are
//! never reused), so one repair symbol heals different losses at different receivers. Encoders are
//! built lazily, cached (at most [`MAX_ENCODERS`]) and freed when idle. Repair goes before new data.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fec::{self, EncodeJob, Encoded};
use crate::wire::{patch_capacity, Need, MAX_ESI, NEED_ALL};
use crate::Stats;

/// Repair encoders kept at once; each costs about twice its object in memory.
const MAX_ENCODERS: usize = 8;
/// An encoder unused this long is freed.
const ENCODER_IDLE: Duration = Duration::from_secs(2);
/// Repair symbols generated per encoder call.
const REPAIR_BATCH: u32 = 32;
/// Sequence numbers remembered per object to tell in-flight symbols from lost ones.
const MAX_SEQS_PER_OBJECT: usize = 4096;
/// A receiver that reports a need above K asks for at most this many more (RaptorQ needs a symbol
/// or two beyond K now and then; more is a receiver that threw the object away).
const MAX_NEED_ABOVE_K: u32 = 64;

/// Loss above this is not planned for in a receiver's repair (an outlier's is its follow-up's).
const MAX_PLANNED_LOSS: f64 = 0.5;

/// The repair sent ahead at the end, over what the loss alone says a receiver lacks: a receiver
/// whose loss ran above its average on an object still finishes without a round.
const TAIL_MARGIN: f64 = 1.5;

/// What to send so that `count` symbols reach a receiver that loses `loss` of them: `count`
/// alone would leave that share for another round of feedback.
pub(crate) fn with_loss(count: u16, loss: f64) -> u16 {
    if count == NEED_ALL || loss <= 0.0 {
        return count;
    }
    let planned = (f64::from(count) / (1.0 - loss.min(MAX_PLANNED_LOSS))).ceil();
    planned.min(f64::from(NEED_ALL - 1)) as u16
}

/// One receiver's open holes of an object, reported for Patches.
struct HoleReport {
    client: u64,
    holes: Vec<u32>,
    /// Its need planned for its loss: what RaptorQ repair would send it instead.
    count: u16,
    highest: u64,
    recent: Option<Instant>,
}

/// How long the master gathers the holes of an object after the first report: receivers look for
/// needs every 20 ms and report after a back-off of at most 40 ms.
const GATHER: Duration = Duration::from_millis(70);
/// The same for a later round of the object: its holes are the few Patches some receiver lost,
/// and a receiver that got all of its own reports nothing, so waiting for everyone would only
/// hold the last objects of a session (the simulator's rooms of 8, 30 MB: 0.33 → 0.29 s at 2%
/// loss, 0.40 → 0.32 s at 5%, 0.49 → 0.37 s at 10%, for 0.3–1.1% more bytes).
const REGATHER: Duration = Duration::from_millis(20);
/// Patches remembered per object to tell in-flight ones from lost ones.
const MAX_PATCH_LOG: usize = 1024;

/// What a report of holes did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Holed {
    /// Out of the window, in its first pass, or nothing left open.
    Ignored,
    /// Kept; this many receivers reported the object in this round.
    Gathering(usize),
    /// The object is repaired with RaptorQ: treated as a need (whether what is owed grew).
    Raptor(bool),
}

struct Obj {
    /// Shared with an encoder build running elsewhere.
    data: Arc<Vec<u8>>,
    k: u32,
    /// Repair symbols still to send (includes `pending`).
    owed: u32,
    next_repair: u32,
    pending: VecDeque<(u32, Vec<u8>)>,
    enc: Option<(fec::Encoder, Instant)>,
    /// Its encoder is being built elsewhere (offload).
    building: bool,
    /// Sequence numbers and send times of the data packets sent for this object, ascending.
    seqs: VecDeque<(u64, Instant)>,
    /// It got its share of the repair sent ahead of the needs at the end ([`Window::owe_tail`]).
    tail: bool,
    /// Holes reported in this gathering round, one report per receiver.
    reports: Vec<HoleReport>,
    /// When this round is planned even if not every receiver reported.
    gather_until: Option<Instant>,
    /// Planned Patches (source ids), not yet sent.
    patches: VecDeque<Vec<u32>>,
    /// Sent Patches: seq, time and ids, ascending.
    patch_log: VecDeque<(u64, Instant, Vec<u32>)>,
    /// A need without holes came: RaptorQ repairs this object from now on.
    raptor: bool,
    /// Rounds of Patches planned.
    rounds: u32,
}

/// One symbol ready to go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Symbol {
    pub(crate) object: u32,
    pub(crate) object_len: u32,
    pub(crate) esi: u32,
    pub(crate) bytes: Vec<u8>,
    /// A Patch of these source ids (`bytes` is their XOR; `esi` is unused).
    pub(crate) patch: Option<Vec<u32>>,
}

/// The objects between `base` (every live client has everything below) and `pushed`.
pub(crate) struct Window {
    objects: VecDeque<Obj>,
    pub(crate) base: u32,
    pub(crate) pushed: u32,
    /// The first pass is at symbol `next_esi` of object `next_obj`.
    pub(crate) next_obj: u32,
    next_esi: u32,
    symbol_size: u16,
    /// With offload, the session id encoder builds carry; they wait in `jobs` for the engine.
    pub(crate) offload: Option<u64>,
    jobs: VecDeque<EncodeJob>,
    /// Something owed grew, or an encoder went idle, since `start_builds` last looked.
    look: bool,
    /// An object's repair was all sent since the engine last asked ([`Window::take_paid`]).
    paid: bool,
}

impl Window {
    pub(crate) fn new(symbol_size: u16) -> Self {
        Self {
            objects: VecDeque::new(),
            base: 0,
            pushed: 0,
            next_obj: 0,
            next_esi: 0,
            symbol_size,
            offload: None,
            jobs: VecDeque::new(),
            look: false,
            paid: false,
        }
    }

    /// Objects held.
    pub(crate) fn held(&self) -> u32 {
        self.pushed - self.base
    }

    /// Appends the next object (the caller checked its index and size).
    pub(crate) fn push(&mut self, data: Vec<u8>) {
        let k = fec::source_count(data.len() as u32, self.symbol_size);
        self.objects.push_back(Obj {
            data: Arc::new(data),
            k,
            owed: 0,
            next_repair: 0,
            pending: VecDeque::new(),
            enc: None,
            building: false,
            seqs: VecDeque::new(),
            tail: false,
            reports: Vec::new(),
            gather_until: None,
            patches: VecDeque::new(),
            patch_log: VecDeque::new(),
            raptor: false,
            rounds: 0,
        });
        self.pushed += 1;
    }

    /// Forgets the objects below `new_base` (clamped to what was pushed).
    pub(crate) fn release_below(&mut self, new_base: u32) {
        let new_base = new_base.min(self.pushed);
        while self.base < new_base {
            self.objects.pop_front();
            self.base += 1;
        }
        if self.next_obj < self.base {
            self.next_obj = self.base;
            self.next_esi = 0;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.objects.clear();
    }

    /// Whether a symbol is ready (ignoring pacing).
    pub(crate) fn has_data(&self) -> bool {
        self.objects.iter().any(|o| self.ready(o)) || self.next_obj < self.pushed
    }

    /// Whether repair of `o` can go now: it is owed, and (with offload) its encoder is here.
    fn ready(&self, o: &Obj) -> bool {
        !o.patches.is_empty()
            || o.owed > 0 && (self.offload.is_none() || o.enc.is_some() || !o.pending.is_empty())
    }

    /// With offload: queues a build for each owed object without an encoder, at most
    /// [`MAX_ENCODERS`] built or building at once (the least recently used idle one is freed).
    pub(crate) fn start_builds(&mut self) {
        let Some(session) = self.offload else { return };
        if !std::mem::take(&mut self.look) {
            return;
        }
        for pos in 0..self.objects.len() {
            let o = &self.objects[pos];
            if o.owed == 0 || o.enc.is_some() || o.building || !o.pending.is_empty() {
                continue;
            }
            let held = self
                .objects
                .iter()
                .filter(|o| o.enc.is_some() || o.building)
                .count();
            if held >= MAX_ENCODERS {
                let victim = self
                    .objects
                    .iter_mut()
                    .filter(|o| o.enc.is_some() && o.owed == 0)
                    .min_by_key(|o| o.enc.as_ref().map(|(_, t)| *t));
                match victim {
                    Some(v) => v.enc = None,
                    None => return,
                }
            }
            let o = &mut self.objects[pos];
            o.building = true;
            let object = self.base + pos as u32;
            self.jobs.push_back(EncodeJob::new(
                session,
                object,
                o.data.clone(),
                self.symbol_size,
            ));
        }
    }

    /// Whether some object's repair was all sent since the last call: the advertisement that
    /// still lists it would keep its receivers from asking for what of it was lost.
    pub(crate) fn take_paid(&mut self) -> bool {
        std::mem::take(&mut self.paid)
    }

    /// The next encoder build for the engine.
    pub(crate) fn take_job(&mut self) -> Option<EncodeJob> {
        self.jobs.pop_front()
    }

    /// A build finished: its object's repair may go (ignored if the object is gone).
    pub(crate) fn encoder_done(&mut self, now: Instant, done: Encoded, stats: &mut Stats) {
        if self.offload != Some(done.session) || done.object < self.base {
            return;
        }
        if let Some(o) = self.objects.get_mut((done.object - self.base) as usize) {
            if o.building {
                o.building = false;
                stats.encoders_built += 1;
                o.enc = Some((done.enc, now));
            }
        }
    }

    /// One receiver lacks `count` symbols of `object` ([`NEED_ALL`]: all of them), having seen the
    /// group up to `highest`: owe the max need over receivers, minus what is still in flight to it
    /// (sent after `highest`, and after `recent` when known). Returns whether what is owed grew.
    pub(crate) fn on_need(
        &mut self,
        object: u32,
        count: u16,
        highest: u64,
        recent: Option<Instant>,
    ) -> bool {
        if object < self.base || object >= self.pushed || object > self.next_obj {
            return false;
        }
        let in_first_pass = object == self.next_obj;
        let next_esi = self.next_esi;
        let Some(o) = self.obj_mut(object) else {
            return false;
        };
        // Source symbols not sent yet will still come: they are not repair.
        let unsent_sources = if in_first_pass { o.k - next_esi } else { 0 };
        let count = if count == NEED_ALL {
            o.k
        } else {
            u32::from(count).min(o.k + MAX_NEED_ABOVE_K)
        };
        let in_flight = o
            .seqs
            .iter()
            .rev()
            .take_while(|(q, t)| *q > highest && recent.is_none_or(|r| *t > r))
            .count() as u32;
        let room = (MAX_ESI - o.k).saturating_sub(o.next_repair + o.owed);
        let extra = count
            .saturating_sub(in_flight + unsent_sources)
            .min(o.owed + room);
        let raised = extra > o.owed;
        o.owed = o.owed.max(extra);
        self.look |= raised;
        raised
    }

    /// At the end of the run, once every object's first pass is sent and nothing is owed, the
    /// link would stand idle for a feedback round while the last objects' needs come back: each
    /// object last sent after `since` (whose needs cannot all be back yet) and owed nothing gets,
    /// once, the repair a receiver losing `loss` would ask for, and a margin, less the repair it
    /// already had (that reached every receiver), so a typical receiver finishes a round earlier.
    /// What a receiver then still lacks comes by its needs as before, less what of this is in
    /// flight to it. Returns whether any was owed.
    pub(crate) fn owe_tail(&mut self, loss: f64, since: Instant) -> bool {
        if loss <= 0.0 || self.next_obj < self.pushed {
            return false;
        }
        let mut owed = false;
        for o in self.objects.iter_mut().filter(|o| !o.tail) {
            o.tail = true;
            // Owed: its repair is on the way, planned for the loss (`with_loss`).
            if o.owed > 0
                || !o.reports.is_empty()
                || !o.patches.is_empty()
                || o.seqs.back().is_none_or(|&(_, t)| t < since)
            {
                continue;
            }
            let want =
                (f64::from(o.k) * loss.min(MAX_PLANNED_LOSS) * TAIL_MARGIN).ceil() as u32 + 1;
            // An object whose needs came back while the last objects went out was paid for them:
            // a second allowance on top of that repair went to receivers that had it all (8
            // simulated clients at 10% loss: 115 symbols more per such object, after 94 that
            // completed it).
            let sent = o.next_repair.saturating_sub(o.pending.len() as u32);
            let room = (MAX_ESI - o.k).saturating_sub(o.next_repair);
            o.owed = want.saturating_sub(sent).min(room);
            owed |= o.owed > 0;
        }
        self.look |= owed;
        owed
    }

    /// What is still owed, oldest object first (at most `max` objects), for the advertisement.
    pub(crate) fn owed_list(&self, max: usize) -> Vec<Need> {
        self.objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o.owed > 0 || !o.patches.is_empty())
            .take(max)
            .map(|(i, o)| Need {
                object: self.base + i as u32,
                count: u16::try_from(o.owed + o.patches.len() as u32).unwrap_or(NEED_ALL - 1),
            })
            .collect()
    }

    /// The next symbol to send: repairs first (they hold the window back), then the first pass.
    pub(crate) fn next(&mut self, now: Instant, stats: &mut Stats) -> Option<Symbol> {
        let symbol_size = self.symbol_size;
        if let Some(pos) = self.objects.iter().position(|o| self.ready(o)) {
            let o = &mut self.objects[pos];
            if let Some(esis) = o.patches.pop_front() {
                let done = o.patches.is_empty() && o.owed == 0;
                self.look |= done;
                self.paid |= done;
                stats.patches += 1;
                return Some(Symbol {
                    object: self.base + pos as u32,
                    object_len: o.data.len() as u32,
                    esi: 0,
                    bytes: fec::xor_sources(&o.data, &esis, symbol_size),
                    patch: Some(esis),
                });
            }
            if self.objects[pos].pending.is_empty() {
                self.refill(pos, now, stats);
            }
            let o = &mut self.objects[pos];
            o.owed = o.owed.saturating_sub(1);
            self.look |= o.owed == 0;
            self.paid |= o.owed == 0;
            if let Some((esi, bytes)) = o.pending.pop_front() {
                stats.repair_sent += 1;
                return Some(Symbol {
                    object: self.base + pos as u32,
                    object_len: o.data.len() as u32,
                    esi,
                    bytes,
                    patch: None,
                });
            }
        }
        while self.next_obj < self.pushed {
            let o = self.objects.get((self.next_obj - self.base) as usize)?;
            if self.next_esi >= o.k {
                self.next_obj += 1;
                self.next_esi = 0;
                continue;
            }
            let bytes = fec::source_symbol(o.data.as_slice(), self.next_esi, symbol_size);
            let sym = Symbol {
                object: self.next_obj,
                object_len: o.data.len() as u32,
                esi: self.next_esi,
                bytes,
                patch: None,
            };
            self.next_esi += 1;
            if self.next_esi >= o.k {
                self.next_obj += 1;
                self.next_esi = 0;
            }
            stats.source_sent += 1;
            return Some(sym);
        }
        None
    }

    /// Generates the next batch of repair symbols of the object at `pos`, building (and caching)
    /// its encoder; evicts the least recently used encoder beyond [`MAX_ENCODERS`].
    fn refill(&mut self, pos: usize, now: Instant, stats: &mut Stats) {
        let live = self.objects.iter().filter(|o| o.enc.is_some()).count();
        if self.objects[pos].enc.is_none() && live >= MAX_ENCODERS {
            if let Some(victim) = self
                .objects
                .iter_mut()
                .filter(|o| o.enc.is_some())
                .min_by_key(|o| o.enc.as_ref().map(|(_, t)| *t))
            {
                victim.enc = None;
            }
        }
        let symbol_size = self.symbol_size;
        let o = &mut self.objects[pos];
        let enc = match o.enc.take() {
            Some((e, _)) => e,
            None => {
                stats.encoders_built += 1;
                fec::encoder(&o.data, symbol_size)
            }
        };
        let n = o.owed.min(REPAIR_BATCH);
        o.pending.extend(fec::repair(&enc, o.next_repair, n));
        o.next_repair += n;
        o.enc = Some((enc, now));
    }

    /// Receiver `client` lacks source symbols `holes` of `object` (its need, planned for its loss,
    /// is `count`), having seen the group up to `highest`: kept for this round's Patches, less
    /// what Patches planned or still in flight to it (sent after `highest`, after `recent`) hold.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_holes(
        &mut self,
        now: Instant,
        object: u32,
        client: u64,
        holes: &[u16],
        count: u16,
        highest: u64,
        recent: Option<Instant>,
    ) -> Holed {
        if object < self.base || object >= self.next_obj.min(self.pushed) {
            return Holed::Ignored;
        }
        let Some(o) = self.obj_mut(object) else {
            return Holed::Ignored;
        };
        if o.raptor {
            return Holed::Raptor(self.on_need(object, count, highest, recent));
        }
        let mut covered: Vec<u32> = o.patches.iter().flatten().copied().collect();
        for (q, t, esis) in o.patch_log.iter().rev() {
            if *q <= highest || recent.is_some_and(|r| *t <= r) {
                break;
            }
            covered.extend_from_slice(esis);
        }
        covered.sort_unstable();
        let holes: Vec<u32> = holes
            .iter()
            .map(|&e| u32::from(e))
            .filter(|e| *e < o.k && covered.binary_search(e).is_err())
            .collect();
        o.reports.retain(|r| r.client != client);
        if holes.is_empty() {
            return Holed::Ignored;
        }
        o.reports.push(HoleReport {
            client,
            holes,
            count,
            highest,
            recent,
        });
        let gather = if o.rounds == 0 { GATHER } else { REGATHER };
        o.gather_until.get_or_insert(now + gather);
        Holed::Gathering(o.reports.len())
    }

    /// A need without holes for `object`: RaptorQ repairs it from now on, and the holes already
    /// reported count as needs.
    pub(crate) fn use_raptorq(&mut self, object: u32) -> bool {
        let Some(o) = self.obj_mut(object) else {
            return false;
        };
        o.raptor = true;
        o.gather_until = None;
        let reports = std::mem::take(&mut o.reports);
        let mut raised = false;
        for r in reports {
            raised |= self.on_need(object, r.count, r.highest, r.recent);
        }
        raised
    }

    /// Plans the Patches of `object` from this round's reports: each combines at most one open
    /// hole of each receiver, greedily, most holes first. If they would cost much more than the
    /// RaptorQ repair the same reports ask for (a larger group, overlapping holes), the object
    /// goes to RaptorQ instead. Returns whether anything was planned or owed.
    pub(crate) fn plan(&mut self, object: u32) -> bool {
        let Some(o) = self.obj_mut(object) else {
            return false;
        };
        o.gather_until = None;
        if o.reports.is_empty() {
            return false;
        }
        let reports = std::mem::take(&mut o.reports);
        let raptor_cost = reports
            .iter()
            .map(|r| u32::from(r.count))
            .max()
            .unwrap_or(0);
        let patches = plan_patches(
            o.k,
            &reports
                .iter()
                .map(|r| r.holes.as_slice())
                .collect::<Vec<_>>(),
        );
        if reports.len() > 64 || patches.len() as u32 > raptor_cost + raptor_cost / 4 + 1 {
            o.reports = reports;
            return self.use_raptorq(object);
        }
        o.patches.extend(patches);
        o.rounds += 1;
        self.look = true;
        true
    }

    /// Plans every object whose gathering time is up; returns whether anything was planned.
    pub(crate) fn plan_due(&mut self, now: Instant) -> bool {
        let due: Vec<u32> = (self.objects.iter().enumerate())
            .filter(|(_, o)| o.gather_until.is_some_and(|t| now >= t))
            .map(|(i, _)| self.base + i as u32)
            .collect();
        let mut any = false;
        for object in due {
            any |= self.plan(object);
        }
        any
    }

    /// The earliest gathering deadline.
    pub(crate) fn next_gather(&self) -> Option<Instant> {
        self.objects.iter().filter_map(|o| o.gather_until).min()
    }

    /// Remembers that group packet `seq` was a Patch of `esis` of `object`.
    pub(crate) fn record_patch(&mut self, object: u32, seq: u64, now: Instant, esis: Vec<u32>) {
        let Some(o) = self.obj_mut(object) else {
            return;
        };
        if o.patch_log.len() >= MAX_PATCH_LOG {
            o.patch_log.pop_front();
        }
        o.patch_log.push_back((seq, now, esis));
    }

    /// Remembers that group packet `seq` carried a symbol of `object`.
    pub(crate) fn record_seq(&mut self, object: u32, seq: u64, now: Instant) {
        let Some(o) = self.obj_mut(object) else {
            return;
        };
        if o.seqs.len() >= MAX_SEQS_PER_OBJECT {
            o.seqs.pop_front();
        }
        o.seqs.push_back((seq, now));
    }

    /// Frees encoders nobody asked for lately.
    pub(crate) fn free_idle_encoders(&mut self, now: Instant) {
        for o in &mut self.objects {
            if o.owed == 0
                && o.enc
                    .as_ref()
                    .is_some_and(|(_, used)| now.saturating_duration_since(*used) >= ENCODER_IDLE)
            {
                o.enc = None;
            }
        }
    }

    /// The window's entry for `object`, if it is in the window.
    fn obj_mut(&mut self, object: u32) -> Option<&mut Obj> {
        let i = object.checked_sub(self.base)?;
        self.objects.get_mut(i as usize)
    }

    #[cfg(test)]
    fn encoders(&self) -> usize {
        self.objects.iter().filter(|o| o.enc.is_some()).count()
    }

    #[cfg(test)]
    fn owed(&self, object: u32) -> u32 {
        self.objects[(object - self.base) as usize].owed
    }
}

/// Greedy Patches for receivers' open `holes` (ids below `k`, at most 64 receivers): each Patch
/// takes, for receivers in order of most holes left, one hole whose other lackers are not yet
/// served by it, so no receiver lacks two of its ids; at most [`patch_capacity`] ids each.
pub(crate) fn plan_patches(k: u32, holes: &[&[u32]]) -> Vec<Vec<u32>> {
    let cap = patch_capacity(k);
    let mut lack = vec![0u64; k as usize];
    let mut left: Vec<usize> = vec![0; holes.len()];
    for (c, hs) in holes.iter().enumerate().take(64) {
        for &e in hs.iter().filter(|&&e| e < k) {
            if lack[e as usize] & (1 << c) == 0 {
                lack[e as usize] |= 1 << c;
                left[c] += 1;
            }
        }
    }
    let mut patches = Vec::new();
    loop {
        let mut order: Vec<usize> = (0..left.len()).filter(|&c| left[c] > 0).collect();
        if order.is_empty() {
            break;
        }
        order.sort_by_key(|&c| std::cmp::Reverse(left[c]));
        let (mut set, mut served) = (Vec::new(), 0u64);
        for c in order {
            if set.len() >= cap {
                break;
            }
            if served & (1 << c) != 0 {
                continue;
            }
            let pick = holes[c].iter().copied().find(|&e| {
                e < k && lack[e as usize] & (1 << c) != 0 && lack[e as usize] & served == 0
            });
            if let Some(e) = pick {
                let lackers = std::mem::take(&mut lack[e as usize]);
                served |= lackers;
                for (d, l) in left.iter_mut().enumerate() {
                    if lackers & (1 << d) != 0 {
                        *l -= 1;
                    }
                }
                set.push(e);
            }
        }
        set.sort_unstable();
        patches.push(set);
    }
    patches
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u16 = 100;

    fn window(objects: usize, len: usize) -> Window {
        let mut w = Window::new(T);
        for i in 0..objects {
            w.push(vec![i as u8; len]);
        }
        w
    }

    /// Sends the whole first pass, recording seqs from 1.
    fn first_pass(w: &mut Window, now: Instant) -> Vec<Symbol> {
        let mut stats = Stats::default();
        let mut out = Vec::new();
        let mut seq = 0;
        while let Some(s) = w.next(now, &mut stats) {
            seq += 1;
            w.record_seq(s.object, seq, now);
            out.push(s);
        }
        out
    }

    #[test]
    fn a_patch_holds_at_most_one_hole_of_each_receiver_and_all_are_covered() {
        let k = 752;
        let mut rng = crate::Rng::new(7);
        for receivers in [1usize, 3, 8, 12, 40] {
            let holes: Vec<Vec<u32>> = (0..receivers)
                .map(|_| {
                    let mut h: Vec<u32> = (0..k).filter(|_| rng.unit() < 0.03).collect();
                    h.dedup();
                    h
                })
                .collect();
            let refs: Vec<&[u32]> = holes.iter().map(Vec::as_slice).collect();
            let patches = plan_patches(k, &refs);
            let mut covered: Vec<Vec<u32>> = vec![Vec::new(); receivers];
            for p in &patches {
                assert!(!p.is_empty() && p.len() <= patch_capacity(k));
                assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
                for (c, h) in holes.iter().enumerate() {
                    let mine: Vec<u32> = p.iter().copied().filter(|e| h.contains(e)).collect();
                    assert!(mine.len() <= 1, "receiver {c} lacks {mine:?} of one patch");
                    covered[c].extend(mine);
                }
            }
            for (c, h) in holes.iter().enumerate() {
                covered[c].sort_unstable();
                assert_eq!(&covered[c], h, "receiver {c}");
            }
            let most = holes.iter().map(Vec::len).max().unwrap_or(0);
            // Each Patch fills at most one hole of a receiver.
            assert!(patches.len() >= most);
            if receivers <= 8 {
                // Holes rarely meet at 3%: about one Patch per hole of the worst receiver.
                assert!(
                    patches.len() <= most + most / 4 + 2,
                    "{} for {most}",
                    patches.len()
                );
            }
        }
    }

    #[test]
    fn first_pass_sends_every_source_symbol_once_in_order() {
        let now = Instant::now();
        let mut w = window(3, 250); // K = 3 each
        let sent = first_pass(&mut w, now);
        let ids: Vec<_> = sent.iter().map(|s| (s.object, s.esi)).collect();
        assert_eq!(
            ids,
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (1, 0),
                (1, 1),
                (1, 2),
                (2, 0),
                (2, 1),
                (2, 2)
            ]
        );
        assert!(sent.iter().all(|s| s.bytes.len() == usize::from(T)));
        assert_eq!(&sent[2].bytes[..50], &[0; 50], "the last symbol is padded");
        assert!(!w.has_data());
    }

    #[test]
    fn need_is_the_max_over_receivers_minus_in_flight_and_repairs_are_new() {
        let now = Instant::now();
        let mut w = window(2, 1000); // K = 10
        first_pass(&mut w, now);
        // A receiver that saw everything (highest 20) lacks 3 of object 0, another 5: owe 5.
        w.on_need(0, 3, 20, None);
        w.on_need(0, 5, 20, None);
        w.on_need(0, 2, 20, None);
        assert_eq!(w.owed(0), 5);
        // A receiver that has seen only up to seq 5 lacks 9 of object 0: symbols 6..=10 may still
        // be on their way to it.
        let mut w2 = window(2, 1000);
        first_pass(&mut w2, now);
        w2.on_need(0, 9, 5, None);
        assert_eq!(w2.owed(0), 4);
        // NEED_ALL asks for K.
        w2.on_need(1, NEED_ALL, 20, None);
        assert_eq!(w2.owed(1), 10);
        // Repairs come before anything else and never reuse an id.
        let mut stats = Stats::default();
        let mut ids = Vec::new();
        while let Some(s) = w.next(now, &mut stats) {
            assert!(s.esi >= 10);
            ids.push(s.esi);
        }
        assert_eq!(ids, [10, 11, 12, 13, 14]);
        w.on_need(0, 2, 100, None);
        let more: Vec<_> = std::iter::from_fn(|| w.next(now, &mut stats))
            .map(|s| s.esi)
            .collect();
        assert_eq!(more, [15, 16]);
        assert_eq!(stats.repair_sent, 7);
        assert_eq!(stats.encoders_built, 1);
    }

    #[test]
    fn needs_outside_the_window_or_ahead_of_the_first_pass_are_ignored() {
        let now = Instant::now();
        let mut w = window(4, 1000);
        let mut stats = Stats::default();
        for _ in 0..12 {
            w.next(now, &mut stats); // object 0 whole, object 1 partly
        }
        w.on_need(3, NEED_ALL, 0, None);
        assert_eq!(w.owed(3), 0, "not reached by the first pass");
        w.on_need(1, 9, 12, None);
        assert_eq!(w.owed(1), 1, "8 sources still unsent: only one is repair");
        w.release_below(1);
        w.on_need(0, NEED_ALL, 12, None); // below the base: released
        assert_eq!(w.base, 1);
        assert_eq!(w.held(), 3);
    }

    #[test]
    fn the_tail_s_repair_is_owed_once_per_object_after_the_first_pass() {
        let now = Instant::now();
        let later = now + Duration::from_millis(100);
        let mut w = window(4, 1000);
        let k = w.objects[0].k;
        let mut stats = Stats::default();
        let mut seq = 0;
        let mut send = |w: &mut Window, stats: &mut Stats| {
            let s = w.next(now, stats)?;
            seq += 1;
            // Object 0 went out long ago, the others just now.
            w.record_seq(s.object, seq, if s.object == 0 { now } else { later });
            Some(())
        };
        send(&mut w, &mut stats);
        assert!(!w.owe_tail(0.1, now), "the first pass is not over");
        while send(&mut w, &mut stats).is_some() {}
        assert!(!w.owe_tail(0.0, later), "no loss: nothing ahead");
        w.on_need(2, 2, 1000, None);
        assert!(w.owe_tail(0.1, later));
        let want = (f64::from(k) * 0.1 * TAIL_MARGIN).ceil() as u32 + 1;
        assert_eq!(
            (w.owed(0), w.owed(1), w.owed(2), w.owed(3)),
            (0, want, 2, want),
            "an old object gets none, an owed one keeps its need"
        );
        while w.next(later, &mut stats).is_some() {}
        assert!(!w.owe_tail(0.1, now), "once per object");
    }

    #[test]
    fn the_tail_counts_the_repair_an_object_already_had() {
        let now = Instant::now();
        let mut w = window(3, 1000);
        let k = w.objects[0].k;
        let want = (f64::from(k) * 0.4 * TAIL_MARGIN).ceil() as u32 + 1;
        first_pass(&mut w, now);
        // Object 1's needs came back and were paid before the end; object 2's went over the tail.
        w.on_need(1, 3, 1000, None);
        w.on_need(2, 40, 1000, None);
        let mut stats = Stats::default();
        let mut seq = 1000;
        while let Some(s) = w.next(now, &mut stats) {
            seq += 1;
            w.record_seq(s.object, seq, now);
        }
        assert_eq!(stats.repair_sent, 43);
        assert!(w.owe_tail(0.4, now));
        assert_eq!(
            (w.owed(0), w.owed(1), w.owed(2)),
            (want, want - 3, 0),
            "the allowance less what each already had"
        );
    }

    #[test]
    fn offloaded_repair_waits_for_its_encoder_which_is_asked_for_once() {
        let now = Instant::now();
        let mut w = window(12, 1000);
        w.offload = Some(7);
        first_pass(&mut w, now);
        let mut stats = Stats::default();
        w.on_need(0, 2, 1000, None);
        assert!(!w.has_data(), "nothing to send before the encoder is built");
        w.start_builds();
        w.start_builds();
        let job = w.take_job().expect("one build asked for");
        assert_eq!((job.session, job.object()), (7, 0));
        assert!(w.take_job().is_none(), "asked for once");
        assert!(w.next(now, &mut stats).is_none());
        // A build of another session is ignored; this one's is used.
        let mut stale = job.clone();
        stale.session = 8;
        w.encoder_done(now, stale.run(), &mut stats);
        assert!(!w.has_data());
        w.encoder_done(now, job.run(), &mut stats);
        let ids: Vec<_> = std::iter::from_fn(|| w.next(now, &mut stats))
            .map(|s| (s.object, s.esi))
            .collect();
        assert_eq!(ids, [(0, 10), (0, 11)]);
        assert_eq!(stats.encoders_built, 1);
        // No more than MAX_ENCODERS built or building at once; a released object's build is dropped.
        for o in 1..12 {
            w.on_need(o, 1, 1000, None);
        }
        w.start_builds();
        let jobs: Vec<_> = std::iter::from_fn(|| w.take_job()).collect();
        assert_eq!(
            jobs.len(),
            MAX_ENCODERS,
            "the idle encoder of object 0 made room"
        );
        assert_eq!(jobs[0].object(), 1);
        w.release_below(2);
        for j in jobs {
            w.encoder_done(now, j.run(), &mut stats);
        }
        assert_eq!(w.encoders(), MAX_ENCODERS - 1);
        assert_eq!(w.next(now, &mut stats).map(|s| s.object), Some(2));
    }

    #[test]
    fn encoders_are_bounded_and_freed_when_idle() {
        let now = Instant::now();
        let mut w = window(12, 1000);
        first_pass(&mut w, now);
        let mut stats = Stats::default();
        for o in 0..12 {
            w.on_need(o, 1, 1000, None);
            assert!(w.next(now, &mut stats).is_some());
            assert!(w.encoders() <= MAX_ENCODERS);
        }
        assert_eq!(w.encoders(), MAX_ENCODERS);
        w.free_idle_encoders(now + ENCODER_IDLE);
        assert_eq!(w.encoders(), 0);
    }

    #[test]
    fn repair_is_planned_for_the_receiver_s_loss() {
        assert_eq!(with_loss(100, 0.0), 100);
        assert_eq!(with_loss(100, 0.10), 112);
        assert_eq!(with_loss(1, 0.01), 2, "any loss plans a spare symbol");
        assert_eq!(with_loss(NEED_ALL, 0.2), NEED_ALL, "all of them stays all");
        assert_eq!(
            with_loss(10, 0.9),
            20,
            "an outlier's loss is planned only up to half"
        );
        assert_eq!(with_loss(NEED_ALL - 1, 0.3), NEED_ALL - 1);
    }

    #[test]
    fn a_paid_repair_is_told_once() {
        let now = Instant::now();
        let mut w = window(2, 1000); // K = 10
        first_pass(&mut w, now);
        assert!(!w.take_paid(), "a first pass pays no repair");
        w.on_need(0, 2, 20, None);
        let mut stats = Stats::default();
        assert!(w.next(now, &mut stats).is_some());
        assert!(!w.take_paid(), "one of two sent");
        assert!(w.next(now, &mut stats).is_some());
        assert!(w.take_paid());
        assert!(!w.take_paid());
    }
}
