//! How often receivers may talk: one rule for both sides, so the master's silence timeout always
//! agrees with the receivers' beat.
//!
//! RTCP's interval rule (RFC 3550 §6.2): the master announces the group size and an interval that
//! keeps the Status packets of the whole group at [`SHARE`] of the data packets; each receiver then
//! sends at most one Status per (jittered) interval, and only when it has something to say —
//! needs the master's repair advertisement does not already cover (NORM's suppression, RFC 5740
//! §5.5.1), progress the master does not know yet, or its slow liveness beat.

use std::time::Duration;

/// Status packets of the whole group, as a share of the data packets.
pub(crate) const SHARE: f64 = 0.01;
/// Shortest interval: a small group reports its progress this often, so the master's window
/// moves on quickly.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest interval, whatever the group size.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// A receiver with nothing to say still sends this often at least.
const MIN_BEAT: Duration = Duration::from_secs(1);
/// Beats a receiver may miss before the master calls it silent.
const BEATS_BEFORE_SILENT: u32 = 4;
/// A receiver looks this often for needs the master does not know...
pub(crate) const NEED_CHECK: Duration = Duration::from_millis(20);
/// ...and reports one after a back-off of at most this (a few LAN round trips plus the master's
/// 5 ms advertisement delay), so the first report's advertisement silences the rest.
pub(crate) const NEED_BACKOFF: Duration = Duration::from_millis(40);

/// Receivers of a group of at most this many list their holes (which source symbols they lack)
/// for Patches: feedback that grows with the losses is affordable for a room, not for a hall.
pub(crate) const PATCH_GROUP: u32 = 32;

/// The feedback interval for `clients` live receivers of a master sending `data_pps` data packets
/// per second.
pub(crate) fn interval(clients: usize, data_pps: f64) -> Duration {
    if clients == 0 || !data_pps.is_finite() || data_pps <= 0.0 {
        return MIN_INTERVAL;
    }
    let secs = clients as f64 / (SHARE * data_pps);
    Duration::from_secs_f64(secs.min(MAX_INTERVAL.as_secs_f64())).max(MIN_INTERVAL)
}

/// The liveness beat of a receiver whose interval is `interval`.
pub(crate) fn beat(interval: Duration) -> Duration {
    (interval * 2).max(MIN_BEAT)
}

/// How long the master waits before it calls a receiver silent: never less than `drop_after`, and
/// never less than a few of the receivers' beats.
pub(crate) fn silent_after(interval: Duration, drop_after: Duration) -> Duration {
    drop_after.max(beat(interval) * BEATS_BEFORE_SILENT)
}

/// A jittered interval: uniform in [½, 1½] × `interval` (RFC 3550's randomisation), from `u` in
/// [0, 1), so receivers that started together drift apart.
pub(crate) fn jittered(interval: Duration, u: f64) -> Duration {
    interval.mul_f64(0.5 + u.clamp(0.0, 1.0))
}

/// NORM's back-off (RFC 5740 §5.5.1): a truncated exponential over [0, `max`] that puts most
/// receivers of a group of `group` near `max` and few near 0, so one report is usually heard before
/// the others are due. `u` is uniform in [0, 1).
pub(crate) fn backoff(max: Duration, group: u32, u: f64) -> Duration {
    let lambda = f64::from(group.max(1)).ln() + 1.0;
    let t = (1.0 + u.clamp(0.0, 1.0) * (lambda.exp() - 1.0)).ln() / lambda;
    max.mul_f64(t.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_sends_at_most_its_share_of_the_data_packets() {
        for clients in [1usize, 4, 40, 200, 1000, 4096] {
            for pps in [8_600.0, 86_000.0] {
                let i = interval(clients, pps);
                let status_per_s = clients as f64 / i.as_secs_f64();
                let capped = i == MAX_INTERVAL || i == MIN_INTERVAL;
                assert!(
                    status_per_s <= SHARE * pps * 1.0001 || capped,
                    "{clients} clients at {pps} pps: {status_per_s}/s"
                );
            }
        }
        assert_eq!(interval(1, 86_000.0), MIN_INTERVAL);
        assert_eq!(interval(1000, 0.0), MIN_INTERVAL);
        let i = interval(1000, 86_000.0);
        assert!(i > Duration::from_millis(1100) && i < Duration::from_millis(1200));
    }

    #[test]
    fn the_master_waits_for_several_beats() {
        assert_eq!(beat(MIN_INTERVAL), MIN_BEAT);
        let d = Duration::from_secs(10);
        assert_eq!(silent_after(MIN_INTERVAL, d), d);
        assert_eq!(
            silent_after(Duration::from_secs(5), d),
            Duration::from_secs(40)
        );
        assert_eq!(
            jittered(Duration::from_millis(100), 0.0),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn the_back_off_is_bounded_and_few_receivers_answer_early() {
        let max = Duration::from_millis(40);
        assert_eq!(backoff(max, 200, 0.0), Duration::ZERO);
        assert_eq!(backoff(max, 200, 1.0), max);
        let early = (0..1000)
            .filter(|i| backoff(max, 200, f64::from(*i) / 1000.0) < max / 2)
            .count();
        assert!(early < 60, "{early} of 1000 before half the back-off");
    }
}
