//! Pacing of data packets: a fixed gap (`-throttle`) or an adaptive rate.
//!
//! Random loss is not congestion (DESIGN §4): a receiver's steady loss becomes its baseline and is
//! absorbed by repair. The rate falls only when a receiver's loss rises clearly above its own
//! baseline, or when its lag (packets sent but not yet seen, as time) grows well beyond the lowest
//! lag seen from it — the signs of a full queue. Otherwise it grows 10% every 100 ms while there is
//! data to send.

use std::time::{Duration, Instant};

/// Interval between rate increases.
const INCREASE_EVERY: Duration = Duration::from_millis(100);
/// Decreases are spaced so one burst of bad reports costs one step.
const DECREASE_EVERY: Duration = Duration::from_millis(200);
/// Lag above the lowest lag seen that counts as a growing queue.
const LAG_SLACK: Duration = Duration::from_millis(200);

/// Per-receiver congestion memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerRate {
    loss_base: Option<f64>,
    min_lag: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct Pacer {
    fixed: Option<Duration>,
    rate: f64,
    min: f64,
    max: f64,
    last_increase: Option<Instant>,
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
            last_increase: None,
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

    /// Called while data waits to be sent: grow.
    pub(crate) fn on_busy(&mut self, now: Instant) {
        let last = *self.last_increase.get_or_insert(now);
        if now.saturating_duration_since(last) >= INCREASE_EVERY {
            self.last_increase = Some(now);
            let calm = self
                .last_decrease
                .is_none_or(|d| now.saturating_duration_since(d) >= DECREASE_EVERY);
            if calm {
                self.rate = (self.rate * 1.10).min(self.max);
            }
        }
    }

    /// One receiver's report: `lost` of `expected` packets since its last one, and its lag.
    pub(crate) fn on_report(
        &mut self,
        peer: &mut PeerRate,
        lost: u32,
        expected: u32,
        lag: Duration,
        now: Instant,
    ) {
        let mut congested = false;
        if expected >= 32 {
            let sample = f64::from(lost.min(expected)) / f64::from(expected);
            let base = *peer.loss_base.get_or_insert(sample);
            congested |= sample > base + (base * 0.5).max(0.03);
            peer.loss_base = Some(base * 0.95 + sample * 0.05);
        }
        let min_lag = peer.min_lag.map_or(lag, |m| m.min(lag));
        peer.min_lag = Some(min_lag);
        congested |= lag > min_lag + LAG_SLACK;
        if congested && self.fixed.is_none() {
            let ok = self
                .last_decrease
                .is_none_or(|d| now.saturating_duration_since(d) >= DECREASE_EVERY);
            if ok {
                self.last_decrease = Some(now);
                self.rate = (self.rate * 0.8).max(self.min);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_loss_is_not_congestion_but_rising_loss_is() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, 100_000_000, 1_000_000, 1_000_000_000);
        let mut peer = PeerRate::default();
        for i in 0..50u64 {
            let now = t0 + Duration::from_millis(50 * i);
            p.on_busy(now);
            p.on_report(&mut peer, 10, 100, Duration::from_millis(5), now);
        }
        let grown = p.rate(1448);
        assert!(
            grown > 100_000_000,
            "steady 10% loss must not cut the rate: {grown}"
        );
        let now = t0 + Duration::from_secs(10);
        p.on_report(&mut peer, 40, 100, Duration::from_millis(5), now);
        assert!(
            p.rate(1448) < grown,
            "loss rising from 10% to 40% is congestion"
        );
        let cut = p.rate(1448);
        p.on_report(
            &mut peer,
            1,
            100,
            Duration::from_millis(500),
            now + Duration::from_secs(1),
        );
        assert!(p.rate(1448) < cut, "a growing lag is congestion");
    }

    #[test]
    fn throttle_is_fixed() {
        let p = Pacer::new(Some(Duration::from_micros(100)), 1, 1, 2);
        assert_eq!(p.gap(1000), Duration::from_micros(100));
        assert_eq!(p.rate(1000), 80_000_000);
    }
}
