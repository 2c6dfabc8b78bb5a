//! A receiver's objects: partial assemblies, what was decoded, what the engine confirmed written,
//! and what it threw away.
//!
//! Every symbol names its object's length. Symbols that disagree about it cannot all be right:
//! they go into separate *candidate* assemblies (at most [`MAX_CANDIDATES`] per object, the one
//! with the fewest symbols evicted first), and the first candidate to decode is handed to the
//! engine, which checks the chunk's hash. A candidate the engine rejects is gone; the others, and
//! new symbols, go on — so a symbol with a wrong length can neither lock an object nor replace a
//! good one. Only failures of the object's *first-seen* length count toward the bound on
//! failures: a rival length that fails is simply dropped.

use std::collections::{BTreeMap, BTreeSet};

use crate::fec::{Added, Assembly, DecodeJob};
use crate::wire::{Need, MAX_NEEDS, NEED_ALL};
use raptorq::SourceBlockDecoder;

/// Candidate assemblies (distinct object lengths) kept per object.
pub(crate) const MAX_CANDIDATES: usize = 2;

/// Objects below `low` are all in; those above it are listed.
#[derive(Debug, Default)]
pub(crate) struct DoneSet {
    pub(crate) low: u32,
    above: BTreeSet<u32>,
}

impl DoneSet {
    pub(crate) fn contains(&self, i: u32) -> bool {
        i < self.low || self.above.contains(&i)
    }

    pub(crate) fn insert(&mut self, i: u32) -> bool {
        if self.contains(i) {
            return false;
        }
        self.above.insert(i);
        while self.above.remove(&self.low) {
            self.low += 1;
        }
        true
    }

    /// Takes `i` out; everything between it and the old `low` is then listed (at most a window).
    pub(crate) fn remove(&mut self, i: u32) -> bool {
        if i < self.low {
            self.above.extend(i + 1..self.low);
            self.low = i;
            true
        } else {
            self.above.remove(&i)
        }
    }
}

/// What a symbol did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// The object is already decoded, or the symbol already held.
    Duplicate,
    /// Kept; more symbols are needed.
    Stored,
    /// The object decoded: hand these bytes to the engine.
    Complete(Vec<u8>),
    /// Enough symbols for a decode, which runs elsewhere (offloaded).
    Decode(DecodeJob),
}

/// The objects of one run.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    partial: BTreeMap<u32, Vec<Assembly>>,
    /// Decoded and handed to the engine (confirmed or not).
    pub(crate) decoded: DoneSet,
    /// Confirmed written by the engine.
    pub(crate) confirmed: DoneSet,
    /// Lengths of objects decoded but not yet confirmed.
    lens: BTreeMap<u32, u32>,
    /// Times each unconfirmed object was rejected in its first-seen length.
    failures: BTreeMap<u32, u32>,
    /// The length each unconfirmed object was first seen with.
    first_len: BTreeMap<u32, u32>,
    pub(crate) rejected: u32,
    pub(crate) objects_done: u32,
    pub(crate) bytes_done: u64,
}

impl Objects {
    /// Adds symbol `esi` of `object` (whose length this packet says is `len`); the caller checked
    /// the length against its bounds and the symbol's size.
    pub(crate) fn offer(
        &mut self,
        object: u32,
        len: u32,
        esi: u32,
        symbol: &[u8],
        symbol_size: u16,
        offload: Option<u64>,
    ) -> Offer {
        if self.decoded.contains(object) {
            return Offer::Duplicate;
        }
        self.first_len.entry(object).or_insert(len);
        let candidates = self.partial.entry(object).or_default();
        let pos = match candidates.iter().position(|a| a.len == len) {
            Some(p) => p,
            None => {
                if candidates.len() >= MAX_CANDIDATES {
                    // The real length collects symbols fastest; a stray one is evicted.
                    if let Some(weakest) =
                        (0..candidates.len()).min_by_key(|&i| candidates[i].held())
                    {
                        candidates.swap_remove(weakest);
                    }
                }
                candidates.push(Assembly::new(len, symbol_size));
                candidates.len() - 1
            }
        };
        let added = candidates[pos].add(esi, symbol, offload);
        self.settle(object, pos, len, added)
    }

    /// A Patch of `object`: it applies to the candidate of the object's first-seen length (a
    /// rival length is a stranger's, and a Patch names none).
    pub(crate) fn patch(
        &mut self,
        object: u32,
        esis: &[u32],
        symbol: &[u8],
        offload: Option<u64>,
    ) -> Offer {
        if self.decoded.contains(object) {
            return Offer::Duplicate;
        }
        let Some(&len) = self.first_len.get(&object) else {
            return Offer::Duplicate;
        };
        let Some(candidates) = self.partial.get_mut(&object) else {
            return Offer::Duplicate;
        };
        let Some(pos) = candidates.iter().position(|a| a.len == len) else {
            return Offer::Duplicate;
        };
        let added = candidates[pos].patch(esis, symbol, offload);
        self.settle(object, pos, len, added)
    }

    /// The holes of `object` in its first-seen length, if they may be listed (see
    /// [`Assembly::holes`]).
    pub(crate) fn holes(&self, object: u32, max: usize) -> Option<Vec<u16>> {
        let len = self.first_len.get(&object)?;
        let a = self.partial.get(&object)?.iter().find(|a| a.len == *len)?;
        a.holes(max)
    }

    fn settle(&mut self, object: u32, pos: usize, len: u32, added: Added) -> Offer {
        match added {
            Added::Duplicate => Offer::Duplicate,
            Added::Stored => Offer::Stored,
            Added::Decode(mut job) => {
                job.object = object;
                Offer::Decode(job)
            }
            Added::Complete(bytes) => {
                // The finished candidate is spent; rivals stay in case the engine rejects it.
                if let Some(c) = self.partial.get_mut(&object) {
                    c.swap_remove(pos);
                }
                self.decoded.insert(object);
                self.lens.insert(object, len);
                Offer::Complete(bytes)
            }
        }
    }

    /// An offloaded decode of `object` at length `len` ended: the bytes when it worked, else its
    /// decoder, to go on with.
    pub(crate) fn decode_done(
        &mut self,
        object: u32,
        len: u32,
        outcome: Result<Vec<u8>, Box<SourceBlockDecoder>>,
        offload: Option<u64>,
    ) -> Offer {
        if self.decoded.contains(object) {
            return Offer::Duplicate;
        }
        let Some(pos) = self
            .partial
            .get(&object)
            .and_then(|c| c.iter().position(|a| a.len == len))
        else {
            // Evicted or thrown away meanwhile.
            return Offer::Duplicate;
        };
        let added = match outcome {
            Ok(b) => Added::Complete(b),
            Err(dec) => match self.partial.get_mut(&object) {
                Some(c) => c[pos].decode_failed_then(dec, offload),
                None => Added::Stored,
            },
        };
        self.settle(object, pos, len, added)
    }

    /// The engine wrote `object`. Returns whether that was news.
    pub(crate) fn confirm(&mut self, object: u32) -> bool {
        if !self.decoded.contains(object) || !self.confirmed.insert(object) {
            return false;
        }
        self.objects_done += 1;
        self.bytes_done += u64::from(self.lens.remove(&object).unwrap_or(0));
        self.partial.remove(&object);
        self.failures.remove(&object);
        self.first_len.remove(&object);
        true
    }

    /// The engine threw `object` away (its chunk failed its check): it is wanted again. Returns
    /// how many times it has failed in its first-seen length (a rival length's failure does not
    /// count), or `None` when it was not awaiting confirmation.
    pub(crate) fn reject(&mut self, object: u32) -> Option<u32> {
        if !self.decoded.contains(object) || self.confirmed.contains(object) {
            return None;
        }
        self.decoded.remove(object);
        let len = self.lens.remove(&object);
        self.rejected = self.rejected.saturating_add(1);
        let n = self.failures.entry(object).or_insert(0);
        if len.is_some() && len == self.first_len.get(&object).copied() {
            *n += 1;
            // The next length seen is the one to trust next.
            self.first_len.remove(&object);
        }
        Some(*n)
    }

    /// The incomplete objects from the first not decoded up to `bound`, oldest first: how many
    /// symbols each still lacks ([`NEED_ALL`] when none is held).
    pub(crate) fn needs(&self, bound: u32) -> Vec<Need> {
        let mut needs = Vec::new();
        for o in self.decoded.low..bound {
            if needs.len() >= MAX_NEEDS {
                break;
            }
            if self.decoded.contains(o) {
                continue;
            }
            // A candidate that holds enough has a decode running (on a busy client, tens of
            // milliseconds in a queue); if it fails, it asks for one more then. Asking for one now
            // cost the master an encoder build for a symbol nobody needed. The other candidate
            // still asks for what it lacks: a rival length kept decoding must not silence it.
            let count = match self.partial.get(&o) {
                None => NEED_ALL,
                Some(c) => match c.iter().map(Assembly::need).filter(|&n| n > 0).min() {
                    Some(n) => n.min(u32::from(NEED_ALL - 1)) as u16,
                    None if c.is_empty() => NEED_ALL,
                    None => continue,
                },
            };
            needs.push(Need { object: o, count });
        }
        needs
    }

    /// Forgets the partial assemblies (the session is over for us).
    pub(crate) fn drop_partial(&mut self) {
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fec;

    const T: u16 = 64;

    fn symbols(data: &[u8]) -> Vec<Vec<u8>> {
        let k = fec::source_count(data.len() as u32, T);
        (0..k).map(|e| fec::source_symbol(data, e, T)).collect()
    }

    #[test]
    fn done_set_remove_reopens_a_gap() {
        let mut d = DoneSet::default();
        for i in 0..10 {
            d.insert(i);
        }
        d.insert(12);
        assert_eq!(d.low, 10);
        assert!(d.remove(4));
        assert_eq!(d.low, 4);
        assert!(!d.contains(4) && d.contains(5) && d.contains(9) && d.contains(12));
        assert!(d.insert(4));
        assert_eq!(d.low, 10);
        assert!(d.remove(12) && !d.remove(12));
    }

    #[test]
    fn a_wrong_length_neither_locks_nor_replaces_the_object() {
        let data = vec![9u8; 300];
        let mut o = Objects::default();
        // A stray symbol claiming another length arrives first.
        assert_eq!(
            o.offer(0, 64, 0, &[1; 64], T, None),
            Offer::Complete(vec![1; 64])
        );
        // The engine rejects what it decoded from it ...
        assert_eq!(o.reject(0), Some(1));
        // ... a rival length failing does not count ...
        assert_eq!(
            o.offer(0, 300, 0, &symbols(&data)[0], T, None),
            Offer::Stored
        );
        assert_eq!(
            o.offer(0, 10, 0, &[2; 64], T, None),
            Offer::Complete(vec![2; 10])
        );
        assert_eq!(o.reject(0), Some(1), "a rival's failure is only dropped");
        // ... and the real symbols decode the real object.
        let syms = symbols(&data);
        let mut out = None;
        for (e, s) in syms.iter().enumerate().skip(1) {
            if let Offer::Complete(b) = o.offer(0, 300, e as u32, s, T, None) {
                out = Some(b);
            }
        }
        assert_eq!(out, Some(data.clone()));
        assert!(o.confirm(0));
        assert_eq!((o.objects_done, o.bytes_done, o.rejected), (1, 300, 2));
        assert_eq!(o.offer(0, 300, 0, &syms[0], T, None), Offer::Duplicate);
    }

    #[test]
    fn rival_lengths_are_bounded_and_the_strongest_survives() {
        let data = vec![5u8; 640]; // K = 10
        let syms = symbols(&data);
        let mut o = Objects::default();
        for (e, s) in syms.iter().enumerate().take(6) {
            assert_eq!(o.offer(3, 640, e as u32, s, T, None), Offer::Stored);
        }
        // Strays with many lengths: each evicts the other stray, never the real candidate.
        for len in 1000..1100u32 {
            o.offer(3, len, 1, &[0; 64], T, None);
            assert!(o.partial[&3].len() <= MAX_CANDIDATES);
        }
        let mut done = None;
        for (e, s) in syms.iter().enumerate().skip(6) {
            if let Offer::Complete(b) = o.offer(3, 640, e as u32, s, T, None) {
                done = Some(b);
            }
        }
        assert_eq!(done, Some(data));
    }

    #[test]
    fn needs_list_missing_objects_and_rejected_ones_again() {
        let mut o = Objects::default();
        let a = vec![1u8; 200]; // K = 4
        for (e, s) in symbols(&a).iter().enumerate().take(3) {
            o.offer(1, 200, e as u32, s, T, None);
        }
        o.offer(0, 10, 0, &symbols(&[2u8; 10])[0], T, None);
        assert_eq!(
            o.needs(4),
            vec![
                Need {
                    object: 1,
                    count: 1
                },
                Need {
                    object: 2,
                    count: NEED_ALL
                },
                Need {
                    object: 3,
                    count: NEED_ALL
                }
            ]
        );
        assert_eq!(o.reject(0), Some(1));
        assert_eq!(
            o.needs(1),
            vec![Need {
                object: 0,
                count: NEED_ALL
            }]
        );
        assert_eq!(o.reject(0), None, "not decoded again yet");
        assert_eq!(o.reject(7), None);
    }

    #[test]
    fn an_offloaded_decode_hands_out_a_job_and_its_result_completes_the_object() {
        let data: Vec<u8> = (0..640u32).map(|i| (i * 13) as u8).collect(); // K = 10
        let syms = symbols(&data);
        let enc = fec::encoder(&data, T);
        let mut o = Objects::default();
        for (e, sym) in syms.iter().enumerate().skip(2) {
            assert_eq!(o.offer(5, 640, e as u32, sym, T, Some(9)), Offer::Stored);
        }
        let mut job = None;
        for (esi, sym) in fec::repair(&enc, 0, 4) {
            match o.offer(5, 640, esi, &sym, T, Some(9)) {
                Offer::Decode(j) => {
                    assert!(job.is_none(), "one job at a time");
                    job = Some(j);
                }
                Offer::Stored => {}
                other => panic!("{other:?}"),
            }
        }
        let job = job.expect("a decode job once K symbols are held");
        assert_eq!(job.object(), 5);
        assert!(
            o.needs(6).iter().all(|n| n.object != 5),
            "nothing is asked for while the decode runs"
        );
        let done = job.run();
        assert_eq!(done.session, 9);
        assert_eq!(
            o.decode_done(5, 640, done.outcome, Some(9)),
            Offer::Complete(data.clone())
        );
        assert!(o.decoded.contains(5));
        // A late result of the same object, or of an object not held, changes nothing.
        let failed = || Err(fec::empty_decoder(640, T));
        assert_eq!(o.decode_done(5, 640, failed(), Some(9)), Offer::Duplicate);
        assert_eq!(o.decode_done(6, 640, failed(), Some(9)), Offer::Duplicate);
        // A failed decode asks for one symbol more, then tries again.
        let mut o = Objects::default();
        for (e, sym) in syms.iter().enumerate().skip(1) {
            o.offer(1, 640, e as u32, sym, T, Some(9));
        }
        let r = fec::repair(&enc, 0, 2);
        assert!(matches!(
            o.offer(1, 640, r[0].0, &r[0].1, T, Some(9)),
            Offer::Decode(_)
        ));
        assert!(o.needs(2).iter().all(|n| n.object != 1));
        // A rival length for the same object asks for what it lacks while the decode runs.
        let rival = symbols(&[3u8; 300]); // K = 5
        o.offer(1, 300, 0, &rival[0], T, Some(9));
        assert_eq!(
            o.needs(2).last(),
            Some(&Need {
                object: 1,
                count: 4
            })
        );
        assert_eq!(o.decode_done(1, 640, failed(), Some(9)), Offer::Stored);
        assert_eq!(
            o.needs(2).last(),
            Some(&Need {
                object: 1,
                count: 1
            }),
            "a failed decode asks for one more"
        );
        assert!(matches!(
            o.offer(1, 640, r[1].0, &r[1].1, T, Some(9)),
            Offer::Decode(_)
        ));
    }
}
