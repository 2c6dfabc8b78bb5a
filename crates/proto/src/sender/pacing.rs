//! Pacing of data packets: a fixed gap (`-throttle`) or an adaptive rate.
//!
//! The adaptive rate starts below most line rates ([`SenderConfig::initial_rate`]) and probes up:
//! ×2 every 50 ms until the first sign of a queue, then 5% every 100 ms. It backs off only on
//! the signs of a full queue, never on a steady random loss that repair absorbs (DESIGN §4):
//!
//! * **Loss that grows with the rate.** A receiver's loss above its accepted level (at first
//!   none) cuts the rate to what that receiver's reports say it got (what its newest report's
//!   packets delivered per second of their send times; else its delivery rate over its recent
//!   reports; or, before it has two, or when that stretch was sent too slowly to have met a
//!   queue, what its loss share says). The cut is judged on the reports sent after
//!   it, while the rate holds (no growth, no other receiver's loss cut): behind a queue the
//!   delivered share rises as the rate falls, behind a random loss it stays. If it stayed, the loss
//!   was not the rate's doing: it becomes the accepted level of that receiver and of all (at most
//!   a quarter), and the rate goes back to where it was. A loss that rose at the lower rate gives
//!   no verdict (the sample before the cut was taken while the rate still climbed). Above the
//!   capacity a confirmed queue showed, the rate grows only 1% a step. While the rate still
//!   probes up and reports come often, a first loss of at most a quarter is tested by the probe's
//!   own next step instead: a stretch sent 1.2× faster that loses no more makes it accepted,
//!   one that loses more (as behind a queue) cuts.
//! * **A growing delay**: a receiver's round-trip time (from the send log, minus the time it held
//!   the packet) well above the lowest seen from it.
//!
//! [`SenderConfig::initial_rate`]: super::SenderConfig

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Interval between rate increases after the first queue sign.
const INCREASE_EVERY: Duration = Duration::from_millis(100);
/// Interval between increases while probing up from the start.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Growth per step while probing up, and after.
const PROBE_GROWTH: f64 = 2.0;
const GROWTH: f64 = 1.05;
/// Growth per step above the capacity a queue showed (a slow look for more)...
const CEILING_GROWTH: f64 = 1.02;
/// ...for this long after the queue was confirmed (a capacity seen while a receiver's CPU
/// stalled must not slow the climb for good).
const CEILING_FOR: Duration = Duration::from_millis(1500);
/// Decreases are spaced so one burst of bad reports costs one step.
const DECREASE_EVERY: Duration = Duration::from_millis(200);
/// A cut keeps this share of what the receiver's delivery ratio says got through, so the queue
/// drains.
const DRAIN: f64 = 0.95;
/// A cut on the loss share alone never goes below this share of the rate at once.
const MAX_CUT: f64 = 0.5;
/// A cut to what a receiver's reports say it got never goes below this share of the rate.
const MAX_DELIVERY_CUT: f64 = 0.05;
/// A report's stretch sent below this share of the rate being cut, and losing no more than a
/// path may of its own ([`MAX_ACCEPTED`]), says nothing of a queue above its own rate (what it
/// delivered is what it was sent at, less a random loss): its loss cuts by the lost share alone.
/// A master that stalled on its CPU or disk sends such stretches, and a random-loss draw on one
/// had cut a 2%-lossy session to a twentieth of its rate, then climbed back for 2 s. (A stretch
/// of a probe past a queue is sent slower than the rate the probe has reached by then too, but
/// loses far more.)
const INFORMATIVE_STRETCH: f64 = 0.5;
/// A receiver's delivery rate is measured over its newest reports that span at least this...
const DELIVERY_SPAN: Duration = Duration::from_millis(150);
/// ...and none older than this.
const DELIVERY_WINDOW: Duration = Duration::from_millis(600);
/// Reports kept for it.
const DELIVERY_REPORTS: usize = 16;
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
/// A cut is judged a queue's when the delivered share rose by at least this part (in log terms)
/// of what a queue of fixed capacity would give: a queue delivers the same bits at any rate above
/// its capacity, a random loss the same share.
const QUEUE_SHARE: f64 = 0.5;
/// Delay above the lowest seen by this much (or the lowest itself, if larger) is a queue sign.
const LAG_SLACK: Duration = Duration::from_millis(25);
/// Weight of a new loss sample in a receiver's smoothed loss.
const LOSS_GAIN: f64 = 0.3;
/// Loss above this is never accepted as the path's own.
const MAX_ACCEPTED: f64 = 0.25;
/// While a receiver's cut is being judged the rate does not grow (growth would blur the
/// judgement); each of its reports holds it this much longer, so a receiver that goes away
/// does not hold it for ever.
const HOLD: Duration = Duration::from_millis(250);
/// Weight of a new delay sample in a receiver's smoothed delay.
const LAG_GAIN: f64 = 0.25;
/// While probing up, a loss a path could have of its own is tested by the probe's next step
/// before any cut: a stretch sent at least this much faster...
const PROBE_TEST_STEP: f64 = 1.2;
/// ...within this long (else the cut and its trial decide, as after the probe).
const PROBE_TEST_FOR: Duration = Duration::from_millis(250);
/// ...and only on reports that cover at most this much of sending.
const PROBE_TEST_FEEDBACK: Duration = Duration::from_millis(100);

/// The first loss of the probe, waiting for a faster stretch to tell a queue's from the path's.
#[derive(Debug, Clone, Copy)]
struct ProbeLoss {
    /// What the stretch that lost it was sent at (bits per second, by the send log).
    sent_rate: f64,
    loss: f64,
    at: Instant,
}

/// What the probe's loss test says of a report's loss.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ProbeVerdict {
    /// No test applies (not probing, the loss is more than a path's own, no send times), or the
    /// loss grew with the rate: cut as usual.
    Cut,
    /// Keep probing; the next faster stretch tells.
    Wait,
    /// The faster stretch lost no more: this much loss is the path's own.
    Random(f64),
}

/// A loss cut whose cause is still to be judged.
#[derive(Debug, Clone)]
struct Trial {
    loss: f64,
    rate_before: f64,
    /// What was really sent before the cut, and the rate after it: their ratio is the gain in
    /// delivered share a queue would show.
    sent_before: f64,
    rate_after: f64,
    at: Instant,
    /// Reports count only once the one before them came after this: sooner, they still cover
    /// packets sent before the cut.
    settled: Instant,
    /// Whether the rate was still probing up when cut: an undone cut resumes the probe.
    probing_before: bool,
    /// What the receiver's delivery rate said the path carries, if it said.
    through: Option<f64>,
    /// What it said reached the receiver (`through` before the accepted loss is taken out): a
    /// queue passes at least this, so at a rate below it no loss is the queue's.
    delivered: Option<f64>,
    /// Loss samples since the cut: their mean is the loss at the lower rate.
    sum: f64,
    samples: u32,
}

impl Trial {
    /// Whether the loss `after` the cut says the loss before it was a queue's: the delivered share
    /// rose by a good part of what it would behind a queue of fixed capacity (there it grows as
    /// the rate falls, up to all but the `accepted` random loss), where behind a random loss it
    /// stays the same.
    fn was_a_queue(&self, after: f64, accepted: f64) -> bool {
        let before = (1.0 - self.loss).max(0.01);
        let gain = (1.0 - after).max(0.01) / before;
        let queue_gain =
            (self.sent_before / self.rate_after.max(1.0)).min((1.0 - accepted).max(0.01) / before);
        queue_gain > 1.0 && gain.ln() >= QUEUE_SHARE * queue_gain.ln()
    }
}

/// What one report says of the packets since the receiver's last one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) lost: u32,
    pub(crate) expected: u32,
    /// How long the master took to send them, if its send log still knows.
    pub(crate) sent_over: Option<Duration>,
}

impl Sample {
    /// `lost` of `expected`, their send times unknown.
    #[cfg(test)]
    pub(crate) fn of(lost: u32, expected: u32) -> Self {
        Self {
            lost,
            expected,
            sent_over: None,
        }
    }
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
    /// When its last report came.
    last_report: Option<Instant>,
    /// Its recent reports: when each came and how many packets it says it got.
    deliveries: VecDeque<(Instant, u32)>,
    /// The probe's first loss from it, being tested.
    probe_loss: Option<ProbeLoss>,
}

impl PeerRate {
    /// While the rate probes up, a first loss is not cut on but tested by the probe's own next
    /// step: behind a queue of capacity C a stretch sent at S loses 1 - C/S, so a stretch sent
    /// faster loses more; a random loss stays. (A cut and its trial tell the same, but hold the
    /// rate low for a few hundred milliseconds and restart the probe from below: at the start of
    /// a 10% lossy 1 Gbit/s session that cost about 0.4 s.)
    fn probe_test(
        &mut self,
        probing: bool,
        sample: f64,
        sent_rate: Option<f64>,
        now: Instant,
    ) -> ProbeVerdict {
        let Some(sent_rate) = sent_rate.filter(|&r| probing && r > 0.0 && sample <= MAX_ACCEPTED)
        else {
            self.probe_loss = None;
            return ProbeVerdict::Cut;
        };
        let Some(first) = self.probe_loss else {
            self.probe_loss = Some(ProbeLoss {
                sent_rate,
                loss: sample,
                at: now,
            });
            return ProbeVerdict::Wait;
        };
        if sent_rate >= first.sent_rate * PROBE_TEST_STEP {
            self.probe_loss = None;
            // What a queue that delivered the first stretch's share would lose of this one.
            let queue = 1.0 - (1.0 - first.loss) * first.sent_rate / sent_rate;
            if sample > (first.loss + queue) / 2.0 {
                ProbeVerdict::Cut
            } else {
                ProbeVerdict::Random((first.loss + sample) / 2.0)
            }
        } else if now.saturating_duration_since(first.at) >= PROBE_TEST_FOR {
            self.probe_loss = None;
            ProbeVerdict::Cut
        } else {
            ProbeVerdict::Wait
        }
    }

    /// Packets per second it got over its recent reports, once they span enough time: behind a
    /// queue this is the queue's capacity, whatever the master sent.
    fn delivery_rate(&mut self, now: Instant) -> Option<f64> {
        while self.deliveries.len() > DELIVERY_REPORTS
            || self
                .deliveries
                .front()
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) > DELIVERY_WINDOW)
        {
            self.deliveries.pop_front();
        }
        // The newest reports back to the first that starts far enough back (what that one
        // counts came before it).
        let mut got = 0u64;
        for &(t, n) in self.deliveries.iter().rev() {
            let span = now.saturating_duration_since(t);
            if span >= DELIVERY_SPAN {
                return Some(got as f64 / span.as_secs_f64());
            }
            got += u64::from(n);
        }
        None
    }
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
    /// No growth, and no other loss cut, before this: a cut is being judged.
    hold_until: Option<Instant>,
    /// Random loss one receiver's trial showed at a rate every receiver saw: accepted of all.
    floor: f64,
    /// The capacity of the last queue a trial confirmed, and when: above it the rate grows
    /// slowly for a while.
    ceiling: Option<(f64, Instant)>,
    /// Bytes of a full data packet, to turn a receiver's packet counts into a rate.
    packet_bytes: usize,
}

impl Pacer {
    pub(crate) fn new(
        throttle: Option<Duration>,
        initial: u64,
        min: u64,
        max: u64,
        packet_bytes: usize,
    ) -> Self {
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
            hold_until: None,
            floor: 0.0,
            ceiling: None,
            packet_bytes,
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
            let near = self.ceiling.is_some_and(|(c, at)| {
                self.rate >= c && now.saturating_duration_since(at) < CEILING_FOR
            });
            (INCREASE_EVERY, if near { CEILING_GROWTH } else { GROWTH })
        };
        if self.busy >= every {
            let busy = std::mem::take(&mut self.busy);
            let achieved = std::mem::take(&mut self.sent_bytes) as f64 * 8.0 / busy.as_secs_f64();
            self.achieved = Some(achieved);
            let calm = self
                .last_decrease
                .is_none_or(|d| now.saturating_duration_since(d) >= DECREASE_EVERY)
                && self.hold_until.is_none_or(|h| now >= h);
            if calm && self.rate <= achieved * KEEPING_UP {
                self.rate = (self.rate * growth).min(self.max);
            }
        }
    }

    /// The rate a cut starts from: the target, or what was really sent if that was less.
    fn base(&self) -> f64 {
        self.achieved.map_or(self.rate, |a| a.min(self.rate))
    }

    /// One receiver's report and its round trip.
    pub(crate) fn on_report(
        &mut self,
        peer: &mut PeerRate,
        report: Sample,
        lag: Duration,
        now: Instant,
    ) {
        if self.fixed.is_some() {
            return;
        }
        let Sample {
            lost,
            expected,
            sent_over,
        } = report;
        let mut cut: Option<f64> = None;
        let previous = peer.last_report.replace(now);
        let got = expected.saturating_sub(lost);
        peer.deliveries.push_back((now, got));
        let bits = self.packet_bytes as f64 * 8.0;
        // Per packet sent: behind a full queue what passes of a stretch sent at any rate above
        // its capacity is that capacity, and this report's stretch is the newest there is (the
        // receiver's own arrival times would mix in the slower stretches before it).
        let stretch = sent_over.filter(|s| !s.is_zero() && expected >= MIN_EXPECTED);
        let per_sent = stretch.map(|s| f64::from(got) * bits / s.as_secs_f64());
        // What the stretch was sent at.
        let stretch_rate = stretch.map(|s| f64::from(expected) * bits / s.as_secs_f64());
        let delivered = per_sent
            .or_else(|| peer.delivery_rate(now).map(|pps| pps * bits))
            .filter(|&bits| bits > 0.0);
        if expected >= MIN_EXPECTED {
            let sample = f64::from(lost.min(expected)) / f64::from(expected);
            let mut smooth = peer
                .loss
                .map_or(sample, |l| l * (1.0 - LOSS_GAIN) + sample * LOSS_GAIN);
            peer.loss = Some(smooth);
            if let Some(mut t) = peer.trial.take() {
                if previous.is_some_and(|p| p >= t.settled) {
                    t.sum += sample;
                    t.samples += 1;
                }
                if now.saturating_duration_since(t.at) < JUDGE_AFTER || t.samples < JUDGE_SAMPLES {
                    peer.trial = Some(t);
                } else {
                    let after = t.sum / f64::from(t.samples);
                    // The loss at the lower rate replaces the smoothed one, for this report's
                    // checks too: the smoothed loss still holds the samples from before the cut,
                    // and would cut again at once (and start the next trial from a loss too high
                    // to tell it from a queue's).
                    smooth = after;
                    peer.loss = Some(after);
                    // Judged: the rate may move again (another trial's reports hold it anew).
                    self.hold_until = None;
                    // Another receiver's cut moved the rate meanwhile: this trial says nothing.
                    let held = (self.rate - t.rate_after).abs() <= t.rate_after * 0.02;
                    let queue = t.was_a_queue(after, peer.accepted.max(self.floor));
                    if held && queue {
                        // At the lower rate what is left is at most the path's own loss.
                        let below = t.delivered.is_some_and(|d| self.rate <= d);
                        if below && after <= MAX_ACCEPTED {
                            // ...and below what the queue passed it is all the path's own.
                            peer.accepted = after;
                            self.floor = self.floor.max(after);
                        } else {
                            peer.accepted = peer.accepted.min(after);
                            self.floor = self.floor.min(after);
                        }
                        if let Some(c) = t.through {
                            self.ceiling = Some((c, now));
                        }
                    } else if held && after <= MAX_ACCEPTED && after <= t.loss * 1.25 + 0.02 {
                        // (A loss that rose at the lower rate says the sample before was stale,
                        // taken while the rate still climbed: no verdict, the cut stays.)
                        // The delivered share did not rise with the cut: the loss is the path's
                        // (what is left of it at the lower rate); undo the cut. (A loss above
                        // MAX_ACCEPTED is never the path's: the cut stays, and the next one will
                        // know what got through.)
                        peer.accepted = peer.accepted.max(after);
                        // Every receiver saw this rate: the loss is theirs to accept too.
                        self.floor = self.floor.max(after);
                        self.rate = self.rate.max(t.rate_before).min(self.max);
                        self.probing |= t.probing_before;
                    }
                }
            }
            // A queue's loss persists (the smoothed loss shows it); the cut follows the sample.
            let accepted = peer.accepted.max(self.floor);
            let persistent = smooth - accepted > LOSS_SLACK.max(accepted * 0.5);
            let over = (sample - accepted).max(0.0);
            // One trial at a time: a cut while another is judged would void that judgement.
            let judging = self.hold_until.is_some_and(|h| now < h);
            let excess = peer.trial.is_none() && !judging && persistent && over > 0.0;
            let verdict = if excess {
                // (Only where reports come often enough for the test to end before the probe
                // has run far past a queue: else the cut decides, as always.)
                let sent_rate = sent_over
                    .filter(|s| !s.is_zero() && *s <= PROBE_TEST_FEEDBACK)
                    .map(|s| f64::from(expected) * bits / s.as_secs_f64());
                peer.probe_test(self.probing, sample, sent_rate, now)
            } else {
                peer.probe_loss = None;
                ProbeVerdict::Cut
            };
            if let ProbeVerdict::Random(level) = verdict {
                // As an undone trial: the path's own, of this receiver and (capped) of all.
                let level = level.min(MAX_ACCEPTED);
                peer.accepted = peer.accepted.max(level);
                self.floor = self.floor.max(level);
            }
            if excess && verdict == ProbeVerdict::Cut {
                let base = self.base();
                let target = (base * (1.0 - over).max(0.0) * DRAIN).max(base * MAX_CUT);
                // What it got is the better guide: the share lost says little when the rate
                // ran far past a queue before the first report came back.
                // (Less the path's own loss, which comes after any queue.)
                // (Not from a stretch sent too slowly to have met a queue above its own rate.)
                let slow = sample <= MAX_ACCEPTED
                    && stretch_rate.is_some_and(|r| r < base * INFORMATIVE_STRETCH);
                let through = delivered
                    .filter(|_| !slow)
                    .map(|d| d / (1.0 - accepted).max(0.01));
                // Measured on the newest stretch by its send times it is the capacity itself;
                // the lost share of a rate far past it would cut below (a probe step of 1.5x
                // loses a third at once).
                let target = through.map_or(target, |t| {
                    let by_delivery = t * DRAIN;
                    let t = if per_sent.is_some() {
                        by_delivery.min(base)
                    } else {
                        target.min(by_delivery)
                    };
                    t.max(base * MAX_DELIVERY_CUT)
                });
                cut = Some(target);
                peer.trial = Some(Trial {
                    // Smoothed, not the sample that crossed the line: that one is the high draw
                    // of a random loss, and would make any cut look like a queue's. (When the
                    // rate just rose the smoothed loss lags; a loss that then rises after the cut
                    // gives no verdict.)
                    loss: smooth,
                    rate_before: self.rate,
                    sent_before: base,
                    rate_after: base,
                    at: now,
                    settled: now + peer.lag.unwrap_or(lag).max(lag),
                    probing_before: self.probing,
                    through,
                    delivered,
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
        if peer.trial.is_some() {
            self.hold_until = Some(now + HOLD);
        }
        let Some(to) = cut else { return };
        let ok = self
            .last_decrease
            .is_none_or(|d| now.saturating_duration_since(d) >= DECREASE_EVERY);
        if ok {
            self.probing = false;
            self.last_decrease = Some(now);
            self.rate = to.clamp(self.min, self.max);
            if let Some(t) = peer.trial.as_mut().filter(|t| t.at == now) {
                t.rate_after = self.rate;
                self.hold_until = Some(now + HOLD);
            }
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
    /// The tests start where a session does.
    const START: u64 = crate::sender::config::INITIAL_RATE;

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
        let mut p = Pacer::new(None, START, 1_000_000, 10_000_000_000, 1448);
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
            let sent_over = Some(MS * 50);
            p.on_report(
                &mut peer,
                Sample {
                    lost,
                    expected,
                    sent_over,
                },
                MS,
                now,
            );
            if i >= secs * 10 {
                sum += p.rate(1448) as f64;
                n += 1;
            }
        }
        sum / f64::from(n)
    }

    /// Like [`run`], on a 1 ms clock with feedback as the lab gives it: each of `peers` receivers
    /// reports every `every_ms` (staggered), on the packets sent `delay_ms` before, so the first
    /// reports come after the probe has overshot and the first report after a cut still covers
    /// packets sent before it. Returns the mean rate from `secs / 2` on.
    fn run_late(
        capacity: f64,
        random: f64,
        secs: u64,
        every_ms: u64,
        delay_ms: u64,
        peers: u64,
    ) -> f64 {
        let rates = trace_late(capacity, random, secs, every_ms, delay_ms, peers);
        let late = &rates[rates.len() / 2..];
        late.iter().sum::<f64>() / late.len() as f64
    }

    /// [`run_late`]'s rate in each millisecond.
    fn trace_late(
        capacity: f64,
        random: f64,
        secs: u64,
        every_ms: u64,
        delay_ms: u64,
        peers: u64,
    ) -> Vec<f64> {
        trace_from(START, capacity, random, secs, (every_ms, delay_ms, peers))
    }

    /// [`trace_late`] from a start rate of `start`; `feedback` is (every, delay, peers).
    fn trace_from(
        start: u64,
        capacity: f64,
        random: f64,
        secs: u64,
        (every_ms, delay_ms, peers): (u64, u64, u64),
    ) -> Vec<f64> {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, start, 1_000_000, 10_000_000_000, 1448);
        let mut ps = vec![PeerRate::default(); peers as usize];
        // Packets sent and lost in each millisecond.
        let (mut sent, mut lost) = (Vec::new(), Vec::new());
        let mut rates = Vec::new();
        for ms in 0..secs * 1000 {
            let now = t0 + MS * ms as u32;
            let rate = p.rate(1448) as f64;
            let pkts = rate * 0.001 / (1448.0 * 8.0);
            p.on_sent((rate * 0.001 / 8.0) as usize);
            p.on_busy(now);
            let over = ((rate - capacity) / rate).max(0.0);
            sent.push(pkts);
            lost.push(pkts * (1.0 - (1.0 - over) * (1.0 - random)));
            for (k, peer) in ps.iter_mut().enumerate() {
                let phase = (k as u64 * every_ms) / peers;
                if ms < delay_ms + every_ms || (ms + phase) % every_ms != 0 {
                    continue;
                }
                let to = (ms - delay_ms) as usize;
                let from = to - every_ms as usize;
                let e: f64 = sent[from..to].iter().sum();
                let l: f64 = lost[from..to].iter().sum();
                let report = Sample {
                    lost: l as u32,
                    expected: e as u32,
                    sent_over: Some(MS * every_ms as u32),
                };
                p.on_report(peer, report, MS * delay_ms as u32, now);
            }
            rates.push(rate);
        }
        rates
    }

    #[test]
    fn a_loss_on_a_stretch_sent_slowly_cuts_by_the_lost_share_alone() {
        // Past the probe at 400 Mbit/s with 2% random loss, the master stalls: a report's 71
        // packets went out over 60 ms (14 Mbit/s), and 4 of them were lost. What that stretch
        // delivered is its own rate, not a queue's capacity: the cut keeps at least half.
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 400_000_000, 1_000_000, 10_000_000_000, 1448);
        p.probing = false;
        let mut peer = PeerRate::default();
        let mut now = t0;
        for _ in 0..4 {
            p.on_sent(2_500_000);
            busy_for_50ms(&mut p, now);
            now += MS * 50;
            let sample = Sample {
                lost: 34,
                expected: 1727,
                sent_over: Some(MS * 50),
            };
            p.on_report(&mut peer, sample, MS, now);
        }
        let before = p.rate(1448) as f64;
        assert!(before >= 380e6, "{before}");
        for _ in 0..3 {
            now += MS * 60;
            let slow = Sample {
                lost: 4,
                expected: 71,
                sent_over: Some(MS * 60),
            };
            p.on_report(&mut peer, slow, MS, now);
        }
        let after = p.rate(1448) as f64;
        assert!(after < before, "the loss above the slack cuts: {after}");
        assert!(
            after >= before * MAX_CUT * 0.99,
            "cut to {:.1} Mbit/s",
            after / 1e6
        );
    }

    #[test]
    fn a_bottleneck_is_found_with_late_feedback() {
        let cases = [
            (50, 5, 1),
            (100, 10, 2),
            (200, 20, 2),
            (200, 40, 1),
            (50, 20, 4),
            (150, 60, 3),
            (300, 10, 2),
        ];
        for (every, delay, peers) in cases {
            for random in [0.0, 0.02] {
                let held = run_late(100e6, random, 10, every, delay, peers);
                assert!(
                    (90e6..=106e6).contains(&held),
                    "held {:.1} Mbit/s (reports every {every} ms, {delay} ms late, {peers} \
                     peers, {random} random loss)",
                    held / 1e6
                );
            }
        }
    }

    #[test]
    fn random_loss_at_the_start_does_not_slow_the_climb() {
        // A cut that random loss provokes at the start is undone, and the probe goes on: the
        // rate is near the 1 Gbit/s link within a second, as without loss.
        for (every, delay, peers) in [(50, 5, 1), (100, 10, 2), (200, 20, 2)] {
            let early = run_late(1e9, 0.10, 2, every, delay, peers);
            assert!(
                early >= 0.85e9,
                "{:.0} Mbit/s from 1 s to 2 s (reports every {every} ms, {delay} ms late)",
                early / 1e6
            );
        }
    }

    #[test]
    fn the_loss_left_below_what_a_queue_passed_is_the_path_s_own() {
        // Slow feedback lets the probe run far past a 1 Gbit/s link with 10% random loss; the
        // cut to what got through is judged a queue's, and the 10% left at the lower rate is the
        // path's own: no second cut (one judged on the stale smoothed loss cut twice more, to
        // 580 Mbit/s, and held there for a second).
        for (start, every, delay, peers) in [(400, 200, 20, 2), (START / 1_000_000, 300, 10, 1)] {
            let rates = trace_from(start * 1_000_000, 1e9, 0.10, 3, (every, delay, peers));
            let first_cut = rates
                .windows(2)
                .position(|w| w[1] < w[0])
                .expect("the probe past the link is cut");
            let after = rates[first_cut + 1];
            let low = rates[first_cut + 1..]
                .iter()
                .copied()
                .fold(f64::MAX, f64::min);
            assert!(
                low >= after * 0.99,
                "cut to {:.0} Mbit/s, then to {:.0} (reports every {every} ms)",
                after / 1e6,
                low / 1e6
            );
        }
    }

    #[test]
    fn random_loss_at_the_start_is_told_by_the_probe_without_a_cut() {
        // Reports as one lab client sends them. A cut on the first loss, held for its trial and
        // undone, then probing again from the start rate, reached the link 0.3 s later.
        let reach = |random: f64| {
            let rates = trace_late(1e9, random, 2, 45, 5, 1);
            rates
                .iter()
                .position(|&r| r >= 0.9e9)
                .unwrap_or(rates.len())
        };
        let (clean, lossy) = (reach(0.0), reach(0.10));
        // (From 200 Mbit/s at x1.5 the climb took 200 ms: 0.12 s of line rate lost per session.)
        assert!(clean <= 110, "the rate reached 900 Mbit/s after {clean} ms");
        assert!(
            lossy <= clean + 60,
            "at 10% random loss the rate reached 900 Mbit/s after {lossy} ms, {clean} ms without"
        );
    }

    #[test]
    fn a_queue_the_probe_s_loss_test_meets_is_still_found() {
        // Queues the probe steps past with a loss under a quarter: the next step loses more, and
        // the rate is cut to the queue as without the test.
        for capacity in [250e6, 400e6, 700e6] {
            for random in [0.0, 0.02, 0.10] {
                let held = run_late(capacity, random, 10, 45, 5, 1);
                assert!(
                    (0.9 * capacity..=1.06 * capacity).contains(&held),
                    "held {:.1} Mbit/s of {:.0} ({random} random loss)",
                    held / 1e6,
                    capacity / 1e6
                );
            }
        }
    }

    #[test]
    fn the_probe_s_loss_test_tells_a_queue_by_a_faster_stretch() {
        let t0 = Instant::now();
        let test = |second: f64, rate: f64, after: Duration| {
            let mut peer = PeerRate::default();
            let first = peer.probe_test(true, 0.10, Some(200e6), t0);
            (first, peer.probe_test(true, second, Some(rate), t0 + after))
        };
        let wait = ProbeVerdict::Wait;
        // A queue that let 90% of 200 Mbit/s through loses 40% of 300.
        assert_eq!(test(0.40, 300e6, MS * 50), (wait, ProbeVerdict::Cut));
        match test(0.11, 300e6, MS * 50) {
            (ProbeVerdict::Wait, ProbeVerdict::Random(l)) => assert!((l - 0.105).abs() < 1e-9),
            other => panic!("a loss that stayed is the path's own: {other:?}"),
        }
        // Not faster yet: wait, up to a limit.
        assert_eq!(test(0.10, 220e6, MS * 50), (wait, wait));
        assert_eq!(test(0.10, 220e6, MS * 300), (wait, ProbeVerdict::Cut));
        // Not probing, more than a path's own loss, no send times: no test.
        let mut peer = PeerRate::default();
        assert_eq!(
            peer.probe_test(false, 0.1, Some(2e8), t0),
            ProbeVerdict::Cut
        );
        assert_eq!(peer.probe_test(true, 0.3, Some(2e8), t0), ProbeVerdict::Cut);
        assert_eq!(peer.probe_test(true, 0.1, None, t0), ProbeVerdict::Cut);
    }

    #[test]
    fn random_loss_does_not_lower_the_rate_with_late_feedback() {
        for (every, delay, peers) in [(50, 5, 1), (200, 20, 2), (100, 40, 3), (300, 10, 1)] {
            let clean = run_late(1e9, 0.0, 10, every, delay, peers);
            let lossy = run_late(1e9, 0.10, 10, every, delay, peers);
            assert!(clean >= 0.9e9, "clean {:.0} Mbit/s", clean / 1e6);
            // Against the link, not the clean run (which may sit a few % above the link).
            assert!(
                lossy >= 0.92e9,
                "10% random loss lowered the rate: {:.0} Mbit/s ({:.0} without; reports every \
                 {every} ms, {delay} ms late, {peers} peers)",
                lossy / 1e6,
                clean / 1e6
            );
        }
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
    fn a_probe_past_a_queue_is_cut_to_what_its_newest_packets_delivered() {
        // A 1 Gbit/s queue. The report covers 50 ms sent at 1.5 Gbit/s (a third lost) and comes
        // back after the probe's next step, at 2.25 Gbit/s.
        let cut_with = |sent_over: Option<Duration>| {
            let t0 = Instant::now();
            let mut p = Pacer::new(None, 2_250_000_000, 1_000_000, 10_000_000_000, 1448);
            let mut peer = PeerRate::default();
            p.on_sent(2_250_000_000 / 8 / 20);
            busy_for_50ms(&mut p, t0);
            let expected = (1.5e9 * 0.05 / (1448.0 * 8.0)) as u32;
            let report = Sample {
                lost: expected / 3,
                expected,
                sent_over,
            };
            p.on_report(&mut peer, report, MS, t0 + MS * 50);
            p.rate(1448) as f64
        };
        let by_send_times = cut_with(Some(MS * 50));
        assert!(
            (0.9e9..=1.0e9).contains(&by_send_times),
            "cut to {:.0} Mbit/s",
            by_send_times / 1e6
        );
        // Without send times only the lost share guides it (the receiver's arrivals span too
        // little yet), and a third off the newer rate stays above the queue.
        let by_share = cut_with(None);
        assert!(by_share > 1.2e9, "cut to {:.0} Mbit/s", by_share / 1e6);
    }

    #[test]
    fn a_growing_delay_is_congestion() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 100_000_000, 1_000_000, 1_000_000_000, 1448);
        let mut peer = PeerRate::default();
        p.on_report(&mut peer, Sample::of(0, 100), MS, t0);
        let before = p.rate(1448);
        for i in 1..10u32 {
            p.on_report(&mut peer, Sample::of(0, 100), MS * 200, t0 + MS * 50 * i);
        }
        assert!(
            p.rate(1448) < before,
            "a queue of 200 ms must slow the master"
        );
    }

    #[test]
    fn throttle_is_fixed() {
        let p = Pacer::new(Some(Duration::from_micros(100)), 1, 1, 2, 1448);
        assert_eq!(p.gap(1000), Duration::from_micros(100));
        assert_eq!(p.rate(1000), 80_000_000);
    }

    #[test]
    fn a_master_that_cannot_reach_its_target_does_not_raise_it() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, START, 1_000_000, 10_000_000_000, 1448);
        // It manages the start rate, whatever the target: one step up, no more.
        let manages = START as f64;
        for i in 1..100u32 {
            p.on_sent((manages * 0.05 / 8.0) as usize);
            busy_for_50ms(&mut p, t0 + MS * 50 * i);
        }
        assert!(
            p.rate(1448) as f64 <= manages * PROBE_GROWTH * 1.001,
            "target ran off: {}",
            p.rate(1448)
        );
    }

    #[test]
    fn bursty_random_loss_does_not_lower_the_rate() {
        // 10% on average, but in bursts: samples of 0%, 20%, 5% and 15% in turn.
        let t0 = Instant::now();
        let mut p = Pacer::new(None, START, 1_000_000, 1_000_000_000, 1448);
        let mut peer = PeerRate::default();
        let mut late = Vec::new();
        for i in 0..200u32 {
            let now = t0 + MS * 50 * i;
            let rate = p.rate(1448) as f64;
            p.on_sent((rate * 0.05 / 8.0) as usize);
            busy_for_50ms(&mut p, now);
            let expected = (rate * 0.05 / (1448.0 * 8.0)) as u32;
            let share = [0.0, 0.20, 0.05, 0.15][i as usize % 4];
            let lost = (f64::from(expected) * share) as u32;
            p.on_report(&mut peer, Sample::of(lost, expected), MS, now);
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
