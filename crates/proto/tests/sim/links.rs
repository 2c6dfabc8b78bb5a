//! What a datagram meets on its way: seeded randomness, the per-link impairments (independent and
//! burst loss, duplication, reordering, jitter, corruption, forging) and bottleneck queues.

use std::time::{Duration, Instant};

/// SplitMix64: repeatable randomness for the network.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Gilbert–Elliott burst loss: a two-state Markov chain stepped once per datagram, each state with
/// its own loss rate. Real links lose in runs (a full queue, a flapping port), which independent
/// loss never produces and which defeats repair that assumes spread-out holes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GilbertElliott {
    /// Chance per datagram of going from the good state to the bad one.
    pub(crate) p_good_bad: f64,
    /// Chance per datagram of going from the bad state back to the good one.
    pub(crate) p_bad_good: f64,
    /// Loss rate in the good state.
    pub(crate) loss_good: f64,
    /// Loss rate in the bad state.
    pub(crate) loss_bad: f64,
    bad: bool,
}

impl GilbertElliott {
    /// Every datagram lost in the bad state, none in the good one, bursts of `mean_burst`
    /// datagrams on average and `mean_loss` of all datagrams lost in the long run.
    pub(crate) fn bursts(mean_loss: f64, mean_burst: f64) -> Self {
        assert!((0.0..1.0).contains(&mean_loss) && mean_burst >= 1.0);
        let p_bad_good = 1.0 / mean_burst;
        Self {
            // Stationary share of the bad state: p_gb / (p_gb + p_bg) = mean_loss.
            p_good_bad: mean_loss * p_bad_good / (1.0 - mean_loss),
            p_bad_good,
            loss_good: 0.0,
            loss_bad: 1.0,
            bad: false,
        }
    }

    /// The long-run share of datagrams lost.
    pub(crate) fn mean_loss(&self) -> f64 {
        let pi_bad = self.p_good_bad / (self.p_good_bad + self.p_bad_good);
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }

    /// Steps the chain for one datagram; true if it is lost.
    pub(crate) fn lose(&mut self, rng: &mut Rng) -> bool {
        let flip = if self.bad {
            self.p_bad_good
        } else {
            self.p_good_bad
        };
        if rng.unit() < flip {
            self.bad = !self.bad;
        }
        rng.unit()
            < if self.bad {
                self.loss_bad
            } else {
                self.loss_good
            }
    }
}

/// One direction of a path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    /// Independent loss rate.
    pub(crate) loss: f64,
    /// Burst loss, on top of `loss`.
    pub(crate) burst: Option<GilbertElliott>,
    pub(crate) dup: f64,
    pub(crate) reorder: f64,
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    /// Share of datagrams with one bit flipped in flight: the packet check must catch them.
    pub(crate) corrupt: f64,
    /// Share of keyless data packets whose symbol is changed and then re-sealed with a valid tag
    /// and the original header, as an on-path forger (or a faulty master) would: only the
    /// engine's hash check can catch them.
    pub(crate) forge: f64,
}

impl Link {
    pub(crate) fn clean() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            dup: 0.0,
            reorder: 0.0,
            latency: Duration::from_micros(200),
            jitter: Duration::ZERO,
            corrupt: 0.0,
            forge: 0.0,
        }
    }
    pub(crate) fn lossy(loss: f64) -> Self {
        Self {
            loss,
            burst: None,
            dup: 0.01,
            reorder: 0.02,
            latency: Duration::from_micros(300),
            jitter: Duration::from_micros(200),
            corrupt: 0.0,
            forge: 0.0,
        }
    }

    /// Whether the next datagram is lost (steps the burst chain, if any).
    pub(crate) fn lose(&mut self, rng: &mut Rng) -> bool {
        let burst = self.burst.as_mut().is_some_and(|b| b.lose(rng));
        // Always drawn, so adding a burst model leaves the independent draws where they were.
        rng.unit() < self.loss || burst
    }
}

/// Bytes a datagram occupies on an Ethernet link beyond its UDP payload (Ethernet, IPv4 and UDP
/// headers): what `tbf` counts.
pub(crate) const FRAME_OVERHEAD: u64 = 14 + 20 + 8;

/// How much a [`Bottleneck`] may hold before it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueLimit {
    /// At most this many bytes waiting (tbf `limit`).
    Bytes(u64),
    /// At most this much waiting time (tbf `latency`).
    Time(Duration),
}

/// A rate-limited FIFO with a drop-tail queue, as Linux `tbf` with a burst of one packet: a datagram
/// leaves when the ones before it have been serialised at `rate`; one that would find more than
/// `limit` already waiting is dropped. This is what makes a sender that is faster than the
/// narrowest link see delay first, then loss.
#[derive(Debug, Clone)]
pub(crate) struct Bottleneck {
    /// Bit/s.
    pub(crate) rate: u64,
    pub(crate) limit: QueueLimit,
    /// When the last accepted datagram has been serialised.
    busy_until: Option<Instant>,
    /// Datagrams dropped because the queue was full.
    pub(crate) dropped: u64,
    /// Datagrams let through.
    pub(crate) passed: u64,
    /// Longest wait a datagram had in the queue.
    pub(crate) max_wait: Duration,
}

impl Bottleneck {
    pub(crate) fn new(rate: u64, limit: QueueLimit) -> Self {
        assert!(rate > 0, "a bottleneck needs a rate");
        Self {
            rate,
            limit,
            busy_until: None,
            dropped: 0,
            passed: 0,
            max_wait: Duration::ZERO,
        }
    }

    /// Time to put `payload` bytes (plus framing) on the wire.
    pub(crate) fn serialisation(&self, payload: usize) -> Duration {
        let bits = u128::from(payload as u64 + FRAME_OVERHEAD) * 8;
        Duration::from_nanos((bits * 1_000_000_000 / u128::from(self.rate)) as u64)
    }

    /// Bytes waiting at `now` (including what is still being serialised).
    pub(crate) fn backlog(&self, now: Instant) -> u64 {
        let wait = self
            .busy_until
            .map_or(Duration::ZERO, |b| b.saturating_duration_since(now));
        (wait.as_nanos() * u128::from(self.rate) / 8 / 1_000_000_000) as u64
    }

    /// A datagram of `payload` bytes arrives at `now`: when it has left the queue, or `None` if the
    /// queue is full and it is dropped.
    pub(crate) fn offer(&mut self, now: Instant, payload: usize) -> Option<Instant> {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let wait = start - now;
        let full = match self.limit {
            QueueLimit::Bytes(b) => self.backlog(now) + payload as u64 + FRAME_OVERHEAD > b,
            QueueLimit::Time(t) => wait > t,
        };
        if full {
            self.dropped += 1;
            return None;
        }
        self.passed += 1;
        self.max_wait = self.max_wait.max(wait);
        let done = start + self.serialisation(payload);
        self.busy_until = Some(done);
        Some(done)
    }
}
