//! A receiver's writer with a bounded byte rate: objects are confirmed to the protocol only once
//! written, so a slow disk holds the receiver's `low` as a real engine's would.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One object's write: when it finished, which object, how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) done: Instant,
    pub(crate) index: u32,
    pub(crate) bytes: u64,
}

/// A FIFO writer at `rate` bytes/s.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    /// Bytes/s.
    pub(crate) rate: u64,
    busy_until: Option<Instant>,
    pending: VecDeque<Write>,
    /// Finished writes, in order.
    pub(crate) written: Vec<Write>,
}

impl Disk {
    pub(crate) fn new(rate: u64) -> Self {
        assert!(rate > 0, "a disk needs a rate");
        Self {
            rate,
            busy_until: None,
            pending: VecDeque::new(),
            written: Vec::new(),
        }
    }

    /// Time to write `bytes`.
    pub(crate) fn write_time(&self, bytes: u64) -> Duration {
        Duration::from_nanos((u128::from(bytes) * 1_000_000_000 / u128::from(self.rate)) as u64)
    }

    /// Queues object `index` of `bytes` at `now`; returns when it will be written.
    pub(crate) fn queue(&mut self, now: Instant, index: u32, bytes: u64) -> Instant {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let done = start + self.write_time(bytes);
        self.busy_until = Some(done);
        self.pending.push_back(Write { done, index, bytes });
        done
    }

    /// When the next queued write finishes.
    pub(crate) fn next_done(&self) -> Option<Instant> {
        self.pending.front().map(|w| w.done)
    }

    /// The next write finished by `now`, if any (recorded in `written`).
    pub(crate) fn pop_done(&mut self, now: Instant) -> Option<u32> {
        if self.pending.front()?.done > now {
            return None;
        }
        let w = self.pending.pop_front()?;
        self.written.push(w);
        Some(w.index)
    }

    /// Nothing waiting to be written.
    pub(crate) fn idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets queued writes (the run they belonged to is over for this receiver).
    pub(crate) fn discard(&mut self) {
        self.pending.clear();
        self.busy_until = None;
    }
}
