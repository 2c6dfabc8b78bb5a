//! Pacing of data packets: a fixed gap (`-throttle`) or an adaptive rate.
//!
//! The adaptive rate starts below most line rates ([`SenderConfig::initial_rate`]) and probes up:
//! ×1.5 every 50 ms until the first sign of a queue, then 5% every 100 ms. It backs off only on
//! the signs of a full queue, never on a steady random loss that repair absorbs (DESIGN §4):
//!
//! * **Loss that grows with the rate.** A receiver's loss above its accepted level (at first
//!   none) cuts the rate to what that receiver's delivery ratio says got through. If its loss does
//!   not fall at the lower rate, the loss was not the rate's doing: it becomes that receiver's
//!   accepted level, and the rate goes back to where it was.
//! * **A growing delay**: a receiver's round-trip time (from the send log, minus the time it held
//!   the packet) well above the lowest seen from it.
//!
//! [`SenderConfig::initial_rate`]: super::SenderConfig

use std::time::{Duration, Instant};

/// Interval between rate increases after the first queue sign.
const INCREASE_EVERY: Duration = Duration::from_millis(100);
/// Interval between increases while probing up from the start.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Growth per step while probing up, and after.
const PROBE_GROWTH: f64 = 1.5;
const GROWTH: f64 = 1.05;
/// Decreases are spaced so one burst of bad reports costs one step.
const DECREASE_EVERY: Duration = Duration::from_millis(200);
/// A cut keeps this share of what the receiver's delivery ratio says got through, so the queue
/// drains.
const DRAIN: f64 = 0.95;
/// A cut never goes below this share of the rate at once.
const MAX_CUT: f64 = 0.5;
/// Loss above a receiver's accepted level by this much (or half the level) is a queue sign.
const LOSS_SLACK: f64 = 0.03;
/// Packets a loss sample must cover to be believed.
const MIN_EXPECTED: u32 = 64;
/// Calls of `on_busy` further apart than this were not one busy stretch.
const BUSY_GAP: Duration = Duration::from_millis(5);
/// The target grows only while what was sent is at least its share of it.
const KEEPING_UP: f64 = 1.0 / 0.8;
/// After a loss cut, the loss at the lower rate is judged after this long.
const JUDGE_AFTER: Duration = Duration::from_millis(300);
/// ...on at least this many samples (one sample of a bursty loss says little).
const JUDGE_SAMPLES: u32 = 4;
/// A loss that stays above this share of what it was after a cut did not come from the rate.
const LOSS_KEPT: f64 = 0.7;
/// Delay above the lowest seen by this much (or the lowest itself, if larger) is a queue sign.
const LAG_SLACK: Duration = Duration::from_millis(25);
/// Weight of a new loss sample in a receiver's smoothed loss.
const LOSS_GAIN: f64 = 0.3;
/// Loss above this is never accepted as the path's own.
const MAX_ACCEPTED: f64 = 0.5;
/// Weight of a new delay sample in a receiver's smoothed delay.
const LAG_GAIN: f64 = 0.25;

/// A loss cut whose cause is still to be judged.
#[derive(Debug, Clone)]
struct Trial {
    loss: f64,
    rate_before: f64,
    at: Instant,
    /// Loss samples since the cut: their mean is the loss at the lower rate.
    sum: f64,
    samples: u32,
}

/// Per-receiver congestion memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerRate {
    /// Loss accepted as the path's own (random loss repair absorbs).
    accepted: f64,
    /// Smoothed loss: one sample is noisy (a lost burst of segments), a queue's loss persists.
    loss: Option<f64>,
    trial: Option<Trial>,
    min_lag: Option<Duration>,
    lag: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct Pacer {
    fixed: Option<Duration>,
    rate: f64,
    min: f64,
    max: f64,
    /// Still probing up from the start (no queue sign seen yet).
    probing: bool,
    /// Data bytes sent since the last growth step, and the rate that step measured: the target
    /// grows only while the master reaches it (a CPU-bound master must not run its target off to
    /// `max`, where a cut would change nothing), and cuts start from what was really sent.
    sent_bytes: u64,
    achieved: Option<f64>,
    /// Time spent with data waiting since the last growth step, and the last such moment.
    busy: Duration,
    last_busy: Option<Instant>,
    last_decrease: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(throttle: Option<Duration>, initial: u64, min: u64, max: u64) -> Self {
        let max = max.max(1) as f64;
        let min = (min.max(1) as f64).min(max);
        Self {
            fixed: throttle,
            rate: (initial as f64).clamp(min, max),
            min,
            max,
            probing: true,
            sent_bytes: 0,
            achieved: None,
            busy: Duration::ZERO,
            last_busy: None,
            last_decrease: None,
        }
    }

    /// Bits per second now (the throttle's equivalent for a packet of `packet_bytes`).
    pub(crate) fn rate(&self, packet_bytes: usize) -> u64 {
        match self.fixed {
            Some(gap) if !gap.is_zero() => (packet_bytes as f64 * 8.0 / gap.as_secs_f64()) as u64,
            Some(_) => u64::MAX,
            None => self.rate as u64,
        }
    }

    /// Gap between two data packets of `packet_bytes`.
    pub(crate) fn gap(&self, packet_bytes: usize) -> Duration {
        match self.fixed {
            Some(gap) => gap,
            None => Duration::from_secs_f64(packet_bytes as f64 * 8.0 / self.rate),
        }
    }

    /// Nothing waits to be sent: what is sent while idle says nothing of the rate reached.
    pub(crate) fn on_idle(&mut self) {
        self.last_busy = None;
    }

    /// A data packet of `bytes` went out.
    pub(crate) fn on_sent(&mut self, bytes: usize) {
        self.sent_bytes += bytes as u64;
    }

    /// Called while data waits to be sent: grow, while the master keeps up with its target.
    ///
    /// Only the time with data waiting counts, so a master that waits for its reader or for
    /// feedback is not taken for one that cannot send faster.
    pub(crate) fn on_busy(&mut self, now: Instant) {
        if let Some(prev) = self.last_busy {
            let dt = now.saturating_duration_since(prev);
            if dt <= BUSY_GAP {
                self.busy += dt;
            }
        }
        self.last_busy = Some(now);
        let (every, growth) = if self.probing {
            (PROBE_EVERY, PROBE_GROWTH)
        } else {
            (INCREASE_EVERY, GROWTH)
        };
        if self.busy >= every {
            let busy = std::mem::take(&mut self.busy);
            let achieved = std::mem::take(&mut self.sent_bytes) as f64 * 8.0 / busy.as_secs_f64();
            self.achieved = Some(achieved);
            let calm = self
                .last_decrease
                .is_none_or(|d| now.saturating_duration_since(d) >= DECREASE_EVERY);
            if calm && self.rate <= achieved * KEEPING_UP {
                self.rate = (self.rate * growth).min(self.max);
            }
        }
    }

    /// The rate a cut starts from: the target, or what was really sent if that was less.
    fn base(&self) -> f64 {
        self.achieved.map_or(self.rate, |a| a.min(self.rate))
    }

    /// One receiver's report: `lost` of `expected` packets since its last one, and its round trip.
    pub(crate) fn on_report(
        &mut self,
        peer: &mut PeerRate,
        lost: u32,
        expected: u32,
        lag: Duration,
        now: Instant,
    ) {
        if self.fixed.is_some() {
            return;
        }
        let mut cut: Option<f64> = None;
        if expected >= MIN_EXPECTED {
            let sample = f64::from(lost.min(expected)) / f64::from(expected);
            let smooth = peer
                .loss
                .map_or(sample, |l| l * (1.0 - LOSS_GAIN) + sample * LOSS_GAIN);
            peer.loss = Some(smooth);
            if let Some(mut t) = peer.trial.take() {
                if t.at != now {
                    t.sum += sample;
                    t.samples += 1;
                }
                if now.saturating_duration_since(t.at) < JUDGE_AFTER || t.samples < JUDGE_SAMPLES {
                    peer.trial = Some(t);
                } else {
                    let after = t.sum / f64::from(t.samples);
                    peer.loss = Some(after);
                    if after >= t.loss * LOSS_KEPT {
                        // And it did not fall: the whole level is the path's; undo the cut.
                        peer.accepted = peer.accepted.max(t.loss.min(MAX_ACCEPTED));
                        self.rate = self.rate.max(t.rate_before).min(self.max);
                    }
                }
            }
            // A queue's loss persists (the smoothed loss shows it); the cut follows the sample.
            let persistent = smooth - peer.accepted > LOSS_SLACK.max(peer.accepted * 0.5);
            let over = (sample - peer.accepted).max(0.0);
            if peer.trial.is_none() && persistent && over > 0.0 {
                let base = self.base();
                let target = base * (1.0 - over).max(0.0) * DRAIN;
                cut = Some(target.max(base * MAX_CUT));
                peer.trial = Some(Trial {
                    loss: smooth,
                    rate_before: self.rate,
                    at: now,
                    sum: 0.0,
                    samples: 0,
                });
            }
        }
        let min_lag = peer.min_lag.map_or(lag, |m| m.min(lag));
        peer.min_lag = Some(min_lag);
        let smooth = peer
            .lag
            .map_or(lag, |l| l.mul_f64(1.0 - LAG_GAIN) + lag.mul_f64(LAG_GAIN));
        peer.lag = Some(smooth);
        if smooth > min_lag + LAG_SLACK.max(min_lag) {
            cut = Some(cut.unwrap_or(self.rate).min(self.base() * 0.85));
        }
        let Some(to) = cut else { return };
        let ok = self
            .last_decrease
            .is_none_or(|d| now.saturating_duration_since(d) >= DECREASE_EVERY);
        if ok {
            self.probing = false;
            self.last_decrease = Some(now);
            self.rate = to.clamp(self.min, self.max);
        } else if peer.trial.as_ref().is_some_and(|t| t.at == now) {
            // No cut was made: nothing to judge.
            peer.trial = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Data waits the whole 50 ms after `t`.
    fn busy_for_50ms(p: &mut Pacer, t: Instant) {
        for k in 1..=50 {
            p.on_busy(t + MS * k);
        }
    }

    /// Drives a pacer against a path of `capacity` bit/s (drop-tail: what exceeds it is lost)
    /// with `random` loss on top, for `secs`; returns the mean rate of the last half.
    fn run(capacity: f64, random: f64, secs: u64) -> f64 {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 200_000_000, 1_000_000, 10_000_000_000);
        let mut peer = PeerRate::default();
        let (mut sum, mut n) = (0.0, 0);
        for i in 0..secs * 20 {
            let now = t0 + MS * 50 * i as u32;
            let rate = p.rate(1448) as f64;
            p.on_sent((rate * 0.05 / 8.0) as usize);
            busy_for_50ms(&mut p, now);
            let over = ((rate - capacity) / rate).max(0.0);
            let loss = 1.0 - (1.0 - over) * (1.0 - random);
            let expected = (rate * 0.05 / (1448.0 * 8.0)) as u32;
            let lost = (f64::from(expected) * loss) as u32;
            p.on_report(&mut peer, lost, expected, MS, now);
            if i >= secs * 10 {
                sum += p.rate(1448) as f64;
                n += 1;
            }
        }
        sum / f64::from(n)
    }

    #[test]
    fn a_bottleneck_below_the_start_rate_is_found_and_held() {
        let held = run(100e6, 0.0, 20);
        assert!(
            (90e6..=101e6).contains(&held),
            "held {:.1} Mbit/s",
            held / 1e6
        );
    }

    #[test]
    fn steady_random_loss_does_not_lower_the_rate() {
        // A 1 Gbit/s link with 10% random loss: the rate climbs to the link and stays there.
        let clean = run(1e9, 0.0, 10);
        let lossy = run(1e9, 0.10, 10);
        assert!(clean >= 0.9e9, "clean {:.0} Mbit/s", clean / 1e6);
        assert!(
            lossy >= clean * 0.95,
            "10% random loss lowered the rate: {:.0} vs {:.0} Mbit/s",
            lossy / 1e6,
            clean / 1e6
        );
    }

    #[test]
    fn a_growing_delay_is_congestion() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 100_000_000, 1_000_000, 1_000_000_000);
        let mut peer = PeerRate::default();
        p.on_report(&mut peer, 0, 100, MS, t0);
        let before = p.rate(1448);
        for i in 1..10u32 {
            p.on_report(&mut peer, 0, 100, MS * 200, t0 + MS * 50 * i);
        }
        assert!(
            p.rate(1448) < before,
            "a queue of 200 ms must slow the master"
        );
    }

    #[test]
    fn throttle_is_fixed() {
        let p = Pacer::new(Some(Duration::from_micros(100)), 1, 1, 2);
        assert_eq!(p.gap(1000), Duration::from_micros(100));
        assert_eq!(p.rate(1000), 80_000_000);
    }

    #[test]
    fn a_master_that_cannot_reach_its_target_does_not_raise_it() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 200_000_000, 1_000_000, 10_000_000_000);
        for i in 1..100u32 {
            // It manages 300 Mbit/s, whatever the target.
            p.on_sent((300e6 * 0.05 / 8.0) as usize);
            busy_for_50ms(&mut p, t0 + MS * 50 * i);
        }
        assert!(
            p.rate(1448) <= 600_000_000,
            "target ran off: {}",
            p.rate(1448)
        );
    }

    #[test]
    fn bursty_random_loss_does_not_lower_the_rate() {
        // 10% on average, but in bursts: samples of 0%, 20%, 5% and 15% in turn.
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 200_000_000, 1_000_000, 1_000_000_000);
        let mut peer = PeerRate::default();
        let mut late = Vec::new();
        for i in 0..200u32 {
            let now = t0 + MS * 50 * i;
            let rate = p.rate(1448) as f64;
            p.on_sent((rate * 0.05 / 8.0) as usize);
            busy_for_50ms(&mut p, now);
            let expected = (rate * 0.05 / (1448.0 * 8.0)) as u32;
            let share = [0.0, 0.20, 0.05, 0.15][i as usize % 4];
            p.on_report(
                &mut peer,
                (f64::from(expected) * share) as u32,
                expected,
                MS,
                now,
            );
            if i >= 100 {
                late.push(p.rate(1448) as f64);
            }
        }
        let mean = late.iter().sum::<f64>() / late.len() as f64;
        assert!(
            mean >= 0.9e9,
            "bursty 10% loss held the rate at {:.0} Mbit/s",
            mean / 1e6
        );
    }
}
