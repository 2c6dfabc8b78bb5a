//! Deterministic end-to-end tests of the protocol on a simulated network.
//!
//! The scale run at 1,000 receivers is `#[ignore]`d (about 22 min of one core, up to 16 GB); run it with
//! `cargo test -p imgcast-proto --test sim scale_1000_receivers -- --ignored --nocapture`.
//! `scale_200_receivers` runs with the rest.

mod disk;
mod links;
mod net;

use std::time::Duration;

use imgcast_proto::wire::{self, Announce, Body, Header, Packet, Phase, MASTER};
use imgcast_proto::{
    DropReason, PacketKey, ReceiverError, ReceiverEvent, SenderEvent, SessionKey, SlowPolicy,
};
use links::{Bottleneck, GilbertElliott, QueueLimit, Rng, FRAME_OVERHEAD};
use net::{addr, name, objects, receiver_cfg, sender_cfg, Link, Sim};
use proptest::prelude::*;

/// Bytes per symbol of the sessions here: the default 1448-byte payload less the data overhead.
const SYMBOL: usize = 1448 - wire::DATA_OVERHEAD;

/// A mix of hole-sized, odd and multi-symbol objects.
fn mixed_sizes(n: usize) -> Vec<usize> {
    [50, 3000, 1, 20_000, 0, 1401, 1402, 9000, 50, 6000]
        .iter()
        .cycle()
        .take(n)
        .copied()
        .collect()
}

/// One master with `objs`, `n` clients on `link` both ways, started when all registered.
fn session(seed: u64, n: usize, objs: Vec<Vec<u8>>, down: Link, up: Link) -> Sim {
    session_with(seed, n, objs, down, up, |_| {})
}

fn session_with(
    seed: u64,
    n: usize,
    objs: Vec<Vec<u8>>,
    down: Link,
    up: Link,
    adjust: impl FnOnce(&mut imgcast_proto::SenderConfig),
) -> Sim {
    let mut sim = Sim::new(seed);
    let mut cfg = sender_cfg("lab3", 0xA11CE + seed, &objs);
    cfg.min_clients = Some(n as u32);
    adjust(&mut cfg);
    cfg.session_info = b"disk=1G".to_vec();
    sim.add_sender(cfg, objs, b"root-hash".to_vec());
    for i in 0..n {
        let mut rc = receiver_cfg("lab3", 100 + i as u64);
        rc.seed = seed * 1000 + i as u64;
        let mut down = down;
        // Per-receiver loss varies: 0.5x .. 1.5x the nominal rate.
        down.loss *= 0.5 + (i % 3) as f64 * 0.5;
        sim.add_receiver(rc, down, up, 0);
    }
    sim
}

fn run_to_finish(sim: &mut Sim, max_steps: u64) {
    sim.drive_bounded(max_steps, |s| s.finished(0));
    // Linger, as the engine does, so lost report acks are re-sent (reports repeat every 300 ms).
    let t = sim.now + Duration::from_secs(5);
    sim.run_until(t);
}

#[test]
fn one_receiver_clean_link_sends_each_symbol_once() {
    let objs = objects(1, &mixed_sizes(20));
    let mut sim = session(1, 1, objs, Link::clean(), Link::clean());
    run_to_finish(&mut sim, 200_000);
    sim.assert_exact(0, 0);
    let st = sim.senders[0].tx.stats();
    assert_eq!(st.source_sent, sim.source_symbols(0));
    assert_eq!(st.repair_sent, 0);
    // The wire counters agree with the endpoints' own.
    let c = sim.counters;
    assert_eq!(c.data_packets, st.source_sent);
    assert_eq!(c.bytes_sent(), st.bytes_sent);
    assert_eq!(c.group_packets + c.unicast_packets, st.packets_sent);
    assert_eq!(c.feedback.packets(), st.packets_received);
    assert_eq!(
        c.feedback.packets(),
        sim.receivers[0].rx.stats().packets_sent
    );
    assert!(c.feedback.register >= 1 && c.feedback.report >= 1 && c.feedback.other == 0);
    assert_eq!(st.encoders_built, 0, "no loss: no encoder may be built");
    assert!(sim
        .sender_saw(0, |e| matches!(
            e,
            SenderEvent::ClientDone { client_id: 100, .. }
        ))
        .is_some());
    let announced = sim.receivers[0].events.iter().find_map(|(_, e)| match e {
        ReceiverEvent::Announced {
            session_info,
            object_count,
            ..
        } => Some((session_info.clone(), *object_count)),
        _ => None,
    });
    assert_eq!(announced, Some((b"disk=1G".to_vec(), 20)));
}

#[test]
fn the_run_s_last_client_says_bye_and_the_master_need_not_linger() {
    let objs = objects(2, &mixed_sizes(12));
    let mut sim = session(2, 1, objs, Link::clean(), Link::clean());
    sim.drive_bounded(200_000, |s| s.finished(0));
    let quiet = Duration::from_millis(400);
    let t = sim.now + Duration::from_millis(50);
    sim.run_until(t);
    assert_eq!(sim.counters.feedback.bye, 2, "{:?}", sim.counters.feedback);
    assert!(
        sim.senders[0].tx.nothing_to_repeat(sim.now, quiet),
        "the client said Bye within 50 ms"
    );
}

#[test]
fn four_receivers_with_loss_reorder_and_duplication() {
    let objs = objects(2, &mixed_sizes(30));
    let mut sim = session(2, 4, objs, Link::lossy(0.10), Link::lossy(0.10));
    run_to_finish(&mut sim, 2_000_000);
    for r in 0..4 {
        sim.assert_exact(0, r);
    }
    assert!(sim.senders[0].tx.stats().repair_sent > 0);
}

#[test]
fn hundred_receivers() {
    let mut sizes = vec![14_000; 16];
    sizes.extend([50, 50, 3000]);
    let objs = objects(3, &sizes);
    let mut sim = session(3, 100, objs, Link::lossy(0.03), Link::lossy(0.03));
    run_to_finish(&mut sim, 3_000_000);
    for r in 0..100 {
        sim.assert_exact(0, r);
    }
    let st = sim.senders[0].tx.stats().clone();
    let src = sim.source_symbols(0);
    let total = st.source_sent + st.repair_sent;
    println!(
        "100 receivers, 1.5-4.5% loss: {total} symbols for {src} source ({:.3}x)",
        total as f64 / src as f64
    );
    // Status traffic stays paced: well under one status per receiver per 50 ms.
    let secs = (sim.now - sim.t0).as_secs_f64();
    let per_rx_per_s = st.packets_received as f64 / 100.0 / secs;
    assert!(
        per_rx_per_s < 20.0,
        "feedback implosion: {per_rx_per_s:.1} packets/receiver/s"
    );
}

#[test]
fn repair_overhead_follows_the_worst_receiver_not_the_union() {
    let objs = objects(4, &[60_000; 12]);
    let mut link = Link::lossy(0.05);
    link.dup = 0.0;
    link.reorder = 0.0;
    let mut sim = Sim::new(4);
    let mut cfg = sender_cfg("lab3", 77, &objs);
    cfg.min_clients = Some(20);
    sim.add_sender(cfg, objs, vec![1]);
    for i in 0..20 {
        sim.add_receiver(receiver_cfg("lab3", 500 + i), link, Link::lossy(0.05), 0);
    }
    run_to_finish(&mut sim, 3_000_000);
    for r in 0..20 {
        sim.assert_exact(0, r);
    }
    let st = sim.senders[0].tx.stats();
    let src = sim.source_symbols(0);
    let total = st.source_sent + st.repair_sent;
    let ratio = total as f64 / src as f64;
    println!(
        "20 receivers at 5% loss: {} source + {} repair = {:.3}x; union of losses would be ~{:.2}x; encoders built {}",
        st.source_sent, st.repair_sent, ratio, 1.0 + 20.0 * 0.05, st.encoders_built
    );
    assert!(ratio < 1.3, "repair overhead {ratio:.3}x");
}

#[test]
fn late_joiner_is_queued_and_the_rest_finish() {
    let objs = objects(5, &[30_000; 40]);
    // Paced so the run lasts past the next Announce (every 500 ms) the late client hears.
    let mut sim = session_with(5, 2, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_millis(1));
    });
    let late = sim.add_receiver(receiver_cfg("lab3", 999), Link::clean(), Link::clean(), 300);
    run_to_finish(&mut sim, 500_000);
    sim.assert_exact(0, 0);
    sim.assert_exact(0, 1);
    let n = &sim.receivers[late];
    assert!(n.saw(|e| matches!(e, ReceiverEvent::Queued)));
    assert!(!n.saw(|e| matches!(e, ReceiverEvent::Started | ReceiverEvent::Object { .. })));
    assert!(sim
        .sender_saw(0, |e| matches!(
            e,
            SenderEvent::ClientQueued { client_id: 999, .. }
        ))
        .is_some());
    // It ignores the run it was queued for and registers with the next run of the name.
    let objs2 = objects(6, &[100, 200]);
    let mut cfg = sender_cfg("lab3", 0xBEEF, &objs2);
    cfg.min_clients = Some(1);
    let s2 = sim.add_sender(cfg, objs2, b"second".to_vec());
    sim.drive_bounded(200_000, |s| s.finished(s2));
    let t = sim.now + Duration::from_secs(5);
    sim.run_until(t);
    sim.assert_exact(s2, late);
}

#[test]
fn dead_receiver_is_dropped_and_the_others_finish() {
    let objs = objects(7, &[20_000; 200]);
    // The group waits for it (-slow=wait): only silence ends it.
    let mut sim = session_with(7, 3, objs, Link::lossy(0.02), Link::lossy(0.02), |c| {
        c.slow = SlowPolicy::Wait
    });
    let die = sim.at(150);
    sim.receivers[2].die_at = Some(die);
    run_to_finish(&mut sim, 3_000_000);
    sim.assert_exact(0, 0);
    sim.assert_exact(0, 1);
    let dropped = sim
        .sender_saw(0, |e| {
            matches!(
                e,
                SenderEvent::ClientDropped {
                    client_id: 102,
                    reason: DropReason::Silent
                }
            )
        })
        .expect("dead client dropped");
    let waited = dropped - die;
    // Dropped drop_after (10 s) after its last Status, sent at most 200 ms before it died.
    assert!(
        waited >= Duration::from_millis(9800) && waited < Duration::from_millis(10_200),
        "{waited:?}"
    );
}

#[test]
fn client_whose_disk_is_stuck_is_dropped_as_too_slow() {
    let objs = objects(8, &[5000; 150]);
    let mut sim = session_with(8, 2, objs, Link::clean(), Link::clean(), |c| {
        c.slow = SlowPolicy::Wait
    });
    sim.receivers[1].policy.confirm = false;
    run_to_finish(&mut sim, 1_000_000);
    sim.assert_exact(0, 0);
    let dropped = sim
        .sender_saw(0, |e| {
            matches!(
                e,
                SenderEvent::ClientDropped {
                    client_id: 101,
                    reason: DropReason::NoProgress
                }
            )
        })
        .expect("stuck client dropped");
    assert!(
        dropped - sim.t0 >= Duration::from_secs(10),
        "-slow=wait waits drop_after"
    );
    assert!(sim.receivers[1].saw(|e| matches!(e, ReceiverEvent::Dropped)));
}

#[test]
fn done_is_refused_until_the_engine_confirmed_every_object() {
    // Every object decoded and the trailer in, but the engine has confirmed none: a report of done
    // now would call a copy complete whose chunks were never verified.
    let objs = objects(12, &[3000; 5]);
    let mut sim = session(12, 2, objs, Link::clean(), Link::clean());
    sim.receivers[1].policy.confirm = false;
    let t = sim.now + Duration::from_secs(2);
    sim.run_until(t);
    assert!(sim.receivers[1].trailer.is_some(), "the trailer arrived");
    assert!(sim
        .sender_saw(0, |e| matches!(
            e,
            SenderEvent::ClientDone { client_id: 100, .. }
        ))
        .is_some());
    assert!(sim
        .sender_saw(0, |e| matches!(
            e,
            SenderEvent::ClientDone { client_id: 101, .. }
        ))
        .is_none());
    let now = sim.now;
    assert_eq!(
        sim.receivers[1].rx.report_done(now, String::new()),
        Err(ReceiverError::Incomplete)
    );
}

#[test]
fn client_whose_disk_is_stuck_is_moved_to_the_follow_up_run() {
    let objs = objects(8, &[5000; 150]);
    let mut sim = session(8, 2, objs, Link::clean(), Link::clean());
    sim.receivers[1].policy.confirm = false;
    run_to_finish(&mut sim, 1_000_000);
    sim.assert_exact(0, 0);
    let moved = sim
        .sender_saw(0, |e| {
            matches!(
                e,
                SenderEvent::ClientDropped {
                    client_id: 101,
                    reason: DropReason::Slow
                }
            )
        })
        .expect("stuck client moved");
    assert!(
        moved - sim.t0 < Duration::from_secs(4),
        "moved once it held the full window for 2 s: {:?}",
        moved - sim.t0
    );
    assert!(sim.receivers[1].saw(|e| matches!(e, ReceiverEvent::Moved)));
}

fn gathering(min_clients: Option<u32>, timeout_s: u64, joins_ms: &[u64]) -> Sim {
    let objs = objects(9, &[1000, 1000]);
    let mut sim = Sim::new(9);
    let mut cfg = sender_cfg("lab3", 1, &objs);
    cfg.min_clients = min_clients;
    cfg.timeout = Duration::from_secs(timeout_s);
    sim.add_sender(cfg, objs, vec![]);
    for (i, j) in joins_ms.iter().enumerate() {
        sim.add_receiver(
            receiver_cfg("lab3", 10 + i as u64),
            Link::clean(),
            Link::clean(),
            *j,
        );
    }
    sim
}

fn started_at(sim: &Sim) -> Option<std::time::Instant> {
    sim.sender_saw(0, |e| matches!(e, SenderEvent::Started { .. }))
}

fn registered_at(sim: &Sim, client_id: u64) -> std::time::Instant {
    sim.sender_saw(
        0,
        |e| matches!(e, SenderEvent::ClientRegistered { client_id: c, .. } if *c == client_id),
    )
    .expect("registered")
}

#[test]
fn start_rule_count_reached() {
    let mut sim = gathering(Some(3), 300, &[0, 1000, 2000]);
    sim.run_until(sim.at(1900));
    assert_eq!(started_at(&sim), None, "2 of 3 registered");
    sim.run_until(sim.at(3000));
    assert_eq!(started_at(&sim), Some(registered_at(&sim, 12)));
    assert!(sim
        .sender_saw(0, |e| matches!(e, SenderEvent::Started { clients: 3 }))
        .is_some());
}

#[test]
fn start_rule_timeout_counts_from_the_last_registration() {
    let mut sim = gathering(Some(5), 2, &[0, 1500]);
    let last = sim.at(1500);
    sim.run_until(last + Duration::from_millis(1900));
    // 2 s after the FIRST registration has passed: must not have started.
    assert_eq!(started_at(&sim), None);
    sim.run_until(last + Duration::from_secs(3));
    let expected = registered_at(&sim, 11) + Duration::from_secs(2);
    assert_eq!(started_at(&sim), Some(expected));
    sim.drive_bounded(100_000, |s| s.finished(0));
}

#[test]
fn start_rule_timeout_needs_a_registration() {
    let mut sim = gathering(Some(5), 1, &[]);
    sim.run_until(sim.at(5000));
    assert_eq!(started_at(&sim), None);
}

#[test]
fn start_now_starts_at_once_and_without_rule_nothing_starts() {
    let mut sim = gathering(None, 1, &[0, 100]);
    sim.run_until(sim.at(60_000));
    assert_eq!(
        started_at(&sim),
        None,
        "no min_clients: only start_now starts"
    );
    let now = sim.now;
    sim.senders[0].tx.start_now(now);
    sim.wake_sender(0);
    sim.step();
    assert_eq!(started_at(&sim), Some(now));
    sim.drive_bounded(100_000, |s| s.finished(0));
    let t = sim.now + Duration::from_secs(5);
    sim.run_until(t);
    sim.assert_exact(0, 0);
    sim.assert_exact(0, 1);
}

#[test]
fn two_sessions_on_one_group_do_not_cross_talk() {
    let a = objects(10, &[3000; 5]);
    let b = objects(11, &[2000; 7]);
    let mut sim = Sim::new(10);
    let mut ca = sender_cfg("lab3", 5, &a);
    ca.min_clients = Some(2);
    let mut cb = sender_cfg("lab4", 6, &b);
    cb.min_clients = Some(1);
    sim.add_sender(ca, a, b"A".to_vec());
    sim.add_sender(cb, b, b"B".to_vec());
    sim.add_receiver(receiver_cfg("lab3", 1), Link::lossy(0.05), Link::clean(), 0);
    sim.add_receiver(receiver_cfg("lab3", 2), Link::lossy(0.05), Link::clean(), 0);
    sim.add_receiver(receiver_cfg("lab4", 3), Link::lossy(0.05), Link::clean(), 0);
    sim.drive_bounded(1_000_000, |s| s.finished(0) && s.finished(1));
    let t = sim.now + Duration::from_secs(5);
    sim.run_until(t);
    sim.assert_exact(0, 0);
    sim.assert_exact(0, 1);
    sim.assert_exact(1, 2);
    assert!(sim.receivers[2].rx.stats().dropped_stray > 0);
    assert_eq!(sim.senders[1].tx.client_count(), 1);
}

#[test]
fn wrong_key_never_registers() {
    let objs = objects(12, &[1000]);
    let mut sim = Sim::new(12);
    let n = name("lab3");
    let mut cfg = sender_cfg("lab3", 9, &objs);
    cfg.key = Some(SessionKey::derive("right", &n).unwrap());
    cfg.min_clients = Some(1);
    sim.add_sender(cfg, objs, vec![]);
    let mut wrong = receiver_cfg("lab3", 1);
    wrong.key = Some(SessionKey::derive("wrong", &n).unwrap());
    sim.add_receiver(wrong, Link::clean(), Link::clean(), 0);
    let keyless = receiver_cfg("lab3", 2);
    sim.add_receiver(keyless, Link::clean(), Link::clean(), 0);
    sim.run_until(sim.at(5000));
    assert_eq!(sim.senders[0].tx.client_count(), 0);
    assert_eq!(started_at(&sim), None);
    for r in 0..2 {
        let events: Vec<_> = sim.receivers[r]
            .events
            .iter()
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(
            events,
            vec![ReceiverEvent::AuthFailures { count: 3 }],
            "receiver {r}"
        );
        assert!(sim.receivers[r].rx.stats().auth_failures >= 9);
    }
    // The right key works.
    let mut right = receiver_cfg("lab3", 3);
    right.key = Some(SessionKey::derive("right", &n).unwrap());
    let r = sim.add_receiver(right, Link::lossy(0.05), Link::lossy(0.05), 5000);
    sim.drive_bounded(100_000, |s| s.finished(0));
    let t = sim.now + Duration::from_secs(5);
    sim.run_until(t);
    sim.assert_exact(0, r);
}

/// A packet of run `sid` of session `name`, sealed as its master would seal it (keyless).
fn sealed(
    name_hash: [u8; 8],
    sid: u64,
    sender: u64,
    seq: u64,
    unicast: bool,
    body: Body,
) -> Vec<u8> {
    let key = PacketKey::new(None, &name_hash, sid);
    wire::seal(
        &Packet {
            name_hash,
            session_id: sid,
            sender,
            seq,
            unicast,
            body,
        },
        &key,
    )
}

#[test]
fn stray_garbage_replayed_and_mutated_datagrams_cost_only_bandwidth() {
    let objs = objects(13, &[5000; 40]);
    let mut sim = session_with(13, 2, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_micros(300));
    });
    sim.tap_limit = 400;
    let mut rng = Rng::new(99);
    let stranger = addr(4242);
    let lab3 = name("lab3").hash();
    let sid = sim.senders[0].tx.session_id();
    for round in 0..3000u64 {
        sim.step();
        let to = Some((round % 2) as usize);
        // Random garbage, to both sides.
        let len = (rng.next_u64() % 80) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        sim.inject(to, stranger, junk.clone());
        sim.inject(None, stranger, junk);
        // Well-formed and correctly sealed, but of an earlier run or another name.
        let data = Body::Data(wire::Data {
            object: 0,
            object_len: 5000,
            esi: 0,
            sent_through: 0,
            symbol: vec![0; SYMBOL],
        });
        sim.inject(
            Some(0),
            stranger,
            sealed(lab3, sid ^ 1, MASTER, round + 1, false, data.clone()),
        );
        sim.inject(
            Some(1),
            stranger,
            sealed(name("other").hash(), sid, MASTER, round + 1, false, data),
        );
        // A client nobody registered.
        let status = Body::Status(wire::Status {
            low: 9,
            objects_done: 9,
            bytes: 1,
            highest_seq: 1,
            held_us: 0,
            lost: 0,
            expected: 0,
            rejected: 0,
            needs: vec![],
            holes: vec![],
        });
        sim.inject(
            None,
            stranger,
            sealed(lab3, sid, 12345, round + 1, true, status),
        );
        // The session's own packets, captured: replayed, bit-flipped, cut short, padded.
        if !sim.tap.is_empty() {
            let pick = sim.tap[(rng.next_u64() % sim.tap.len() as u64) as usize].clone();
            let mut flipped = pick.clone();
            let i = (rng.next_u64() % flipped.len() as u64) as usize;
            flipped[i] ^= 1 << (rng.next_u64() % 8);
            let cut = pick[..(rng.next_u64() % pick.len() as u64) as usize].to_vec();
            let mut padded = pick.clone();
            padded.extend_from_slice(&[0; 7]);
            for d in [pick, flipped, cut, padded] {
                sim.inject(to, stranger, d);
            }
        }
    }
    run_to_finish(&mut sim, 2_000_000);
    sim.assert_exact(0, 0);
    sim.assert_exact(0, 1);
    let s = sim.senders[0].tx.stats();
    assert!(
        s.dropped_malformed > 2000 && s.dropped_stray >= 3000,
        "{s:?}"
    );
    for r in 0..2 {
        let st = sim.receivers[r].rx.stats();
        println!("receiver {r}: {st:?}");
        assert!(st.dropped_malformed > 500, "{st:?}");
        // Receiver 0 got Data of another run (stray by its session id); receiver 1 got Data of
        // our run's id under another session's name: a short header carries no name, so that
        // fails the tag instead (its key is derived from the name).
        let (stray, failures) = if r == 0 { (1500, 1000) } else { (0, 2500) };
        assert!(st.dropped_stray >= stray, "{st:?}");
        assert!(
            st.check_failures >= failures,
            "flipped, cut and padded copies: {st:?}"
        );
        assert!(st.replays >= 500, "replayed copies: {st:?}");
        assert_eq!(
            sim.receivers[r].rejected, 0,
            "nothing wrong reached the engine"
        );
    }
}

fn corrupted_run(seed: u64, corrupt: f64, forge: f64) -> Sim {
    let objs = objects(seed, &mixed_sizes(30));
    let mut down = Link::lossy(0.02);
    down.corrupt = corrupt;
    down.forge = forge;
    let mut up = Link::lossy(0.02);
    up.corrupt = corrupt;
    // The group waits for a client fetching forged chunks again: this is about the bound.
    let mut sim = session_with(seed, 3, objs, down, up, |c| c.slow = SlowPolicy::Wait);
    run_to_finish(&mut sim, 3_000_000);
    sim
}

#[test]
fn corrupted_datagrams_are_dropped_like_loss() {
    for (seed, p) in [(31, 0.01), (32, 0.10)] {
        let sim = corrupted_run(seed, p, 0.0);
        for r in 0..3 {
            sim.assert_exact(0, r);
            let st = sim.receivers[r].rx.stats();
            assert!(st.check_failures > 0, "{p}: {st:?}");
            assert_eq!(sim.receivers[r].rejected, 0, "the check caught every one");
        }
    }
}

#[test]
fn forged_symbols_are_thrown_away_and_fetched_again_or_fail_at_the_bound() {
    for (seed, p) in [(33, 0.01), (34, 0.10)] {
        let sim = corrupted_run(seed, 0.0, p);
        let mut rejected = 0;
        for r in 0..3 {
            let n = &sim.receivers[r];
            rejected += n.rejected;
            match &n.gave_up {
                None => sim.assert_exact(0, r),
                Some(why) => {
                    // Beyond the bound: the documented message, and the master lists the failure.
                    assert!(why.contains("failed its check 4 times"), "{why}");
                    let id = 100 + r as u64;
                    assert!(sim
                        .sender_saw(0, |e| matches!(
                            e,
                            SenderEvent::ClientFailed { client_id, reason } if *client_id == id && reason == why
                        ))
                        .is_some());
                }
            }
            // Whatever was kept is exactly the master's (the engine keeps only verified objects).
            for (i, o) in &n.objects {
                assert_eq!(o, &sim.senders[0].objects[*i as usize]);
            }
        }
        println!("forged {p}: {rejected} objects thrown away and fetched again");
        assert!(rejected > 0);
        if p < 0.05 {
            for r in 0..3 {
                assert!(sim.receivers[r].gave_up.is_none(), "1%: everyone finishes");
            }
        }
        // The master counted the rejections per client.
        let counted: u32 = sim.senders[0]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                SenderEvent::ClientProgress { rejected, .. } => Some(*rejected),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        assert!(counted > 0, "ClientProgress carries the rejections");
    }
}

#[test]
fn a_forged_end_and_forged_lengths_do_not_derail_the_session() {
    let objs = objects(35, &[20_000; 30]);
    let mut sim = session_with(35, 2, objs, Link::lossy(0.02), Link::clean(), |c| {
        c.throttle = Some(Duration::from_micros(200));
    });
    let lab3 = name("lab3").hash();
    let sid = sim.senders[0].tx.session_id();
    let stranger = addr(777);
    // A forger who knows the check key could also use sequence numbers above the master's and push
    // its packets out of the replay window (documented: that is what -key is for); these reuse
    // low numbers, as a replay of the run's own numbering would.
    for round in 0..2000u64 {
        sim.step();
        if round % 50 == 0 {
            let end = Body::End {
                trailer: b"forged root".to_vec(),
            };
            for r in 0..2 {
                sim.inject(
                    Some(r),
                    stranger,
                    sealed(lab3, sid, MASTER, round + 1, false, end.clone()),
                );
            }
        }
        // One symbol of every object, first, with a length the master never used: it must
        // neither lock the object nor be written.
        if round < 30 {
            let d = Body::Data(wire::Data {
                object: round as u32,
                object_len: 1234,
                esi: 0,
                sent_through: 0,
                symbol: vec![0xEE; SYMBOL],
            });
            for r in 0..2 {
                sim.inject(
                    Some(r),
                    stranger,
                    sealed(lab3, sid, MASTER, round + 2, false, d.clone()),
                );
            }
        }
    }
    run_to_finish(&mut sim, 2_000_000);
    for r in 0..2 {
        sim.assert_exact(0, r);
        assert!(
            sim.receivers[r].rejected >= 1,
            "the forged lengths were decoded and thrown away"
        );
        assert!(
            sim.receivers[r].saw(|e| matches!(e, ReceiverEvent::Trailer(t) if t == b"forged root")),
            "the forged trailer reached the engine, which did not obey it"
        );
    }
}

#[test]
fn a_replayed_announce_of_an_earlier_keyed_run_registers_nobody() {
    let n = name("lab3");
    let key = SessionKey::derive("secret", &n).unwrap();
    let objs = objects(36, &[3000; 5]);
    let mut sim = Sim::new(36);
    let mut cfg = sender_cfg("lab3", 0x0EA1, &objs);
    cfg.key = Some(key.clone());
    cfg.min_clients = Some(1);
    sim.add_sender(cfg, objs.clone(), b"old".to_vec());
    let mut rc = receiver_cfg("lab3", 1);
    rc.key = Some(key.clone());
    sim.add_receiver(rc, Link::clean(), Link::clean(), 0);
    sim.tap_limit = 100_000;
    run_to_finish(&mut sim, 200_000);
    sim.assert_exact(0, 0);
    let announces: Vec<Vec<u8>> = sim
        .tap
        .iter()
        .filter(|d| Header::peek(d).is_ok_and(|h| h.kind == 1))
        .cloned()
        .collect();
    assert!(!announces.is_empty());
    // The earlier run is over; a waiting client hears its Announces replayed, for 20 s.
    sim.senders.clear();
    let mut rc = receiver_cfg("lab3", 2);
    rc.key = Some(key.clone());
    let late = sim.add_receiver(rc, Link::clean(), Link::clean(), 0);
    let replayer = addr(666);
    let until = sim.now + Duration::from_secs(20);
    let mut i = 0;
    while sim.now < until {
        let t = sim.now + Duration::from_millis(500);
        sim.inject(Some(late), replayer, announces[i % announces.len()].clone());
        i += 1;
        sim.run_until(t);
    }
    let node = &sim.receivers[late];
    assert!(node.saw(|e| matches!(e, ReceiverEvent::Announced { .. })));
    assert!(!node.saw(|e| matches!(e, ReceiverEvent::Registered | ReceiverEvent::Started)));
    assert!(node.saw(|e| matches!(e, ReceiverEvent::Unanswered { master } if *master == replayer)));
    // A real master of the name then serves it.
    let objs2 = objects(37, &[4000; 6]);
    let mut cfg = sender_cfg("lab3", 0x0EA2, &objs2);
    cfg.key = Some(key);
    cfg.min_clients = Some(1);
    let s2 = sim.add_sender(cfg, objs2, b"new".to_vec());
    sim.drive_bounded(500_000, |s| s.finished(s2));
    let t = sim.now + Duration::from_secs(5);
    sim.run_until(t);
    sim.assert_exact(s2, late);
}

#[test]
fn a_master_gone_before_the_start_sends_its_client_back_to_listening() {
    for abort in [false, true] {
        let objs = objects(38, &[3000; 5]);
        let mut sim = Sim::new(38);
        let mut cfg = sender_cfg("lab3", 0x51, &objs);
        cfg.min_clients = Some(2); // never reached
        sim.add_sender(cfg, objs, b"one".to_vec());
        sim.add_receiver(receiver_cfg("lab3", 1), Link::clean(), Link::clean(), 0);
        sim.run_until(sim.at(2000));
        assert!(sim.receivers[0].saw(|e| matches!(e, ReceiverEvent::Registered)));
        if abort {
            let now = sim.now;
            sim.senders[0].tx.abort(now, "operator pressed q");
            sim.wake_sender(0);
            sim.run_until(sim.at(3000));
        }
        sim.senders.clear();
        sim.run_until(sim.at(60_000));
        let node = &sim.receivers[0];
        let reason = if abort {
            "aborted: operator pressed q"
        } else {
            "fell silent"
        };
        assert!(
            node.saw(|e| matches!(e, ReceiverEvent::MasterGone { reason: r, .. } if r == reason)),
            "{:?}",
            node.events
        );
        assert!(!node.saw(|e| matches!(
            e,
            ReceiverEvent::MasterLost | ReceiverEvent::Aborted { .. } | ReceiverEvent::Started
        )));
        // A new master of the name, a minute later, serves it.
        let objs2 = objects(39, &[4000; 6]);
        let mut cfg = sender_cfg("lab3", 0x52, &objs2);
        cfg.min_clients = Some(1);
        let s2 = sim.add_sender(cfg, objs2, b"two".to_vec());
        sim.drive_bounded(500_000, |s| s.finished(s2));
        let t = sim.now + Duration::from_secs(5);
        sim.run_until(t);
        sim.assert_exact(s2, 0);
    }
}

#[test]
fn objects_decoded_before_the_registration_is_acknowledged_wait_for_the_start() {
    // The master counts both clients in and starts; client 1's first acknowledgements are lost, so
    // data reaches it while it still registers. Its objects must reach the engine after
    // `Started`, when the target is open — not before, and not never.
    let objs = objects(41, &[3000; 30]);
    let mut sim = session_with(41, 2, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_micros(500));
    });
    sim.receivers[1].lose_unicast = 4;
    run_to_finish(&mut sim, 1_000_000);
    sim.assert_exact(0, 0);
    sim.assert_exact(0, 1);
    let events = &sim.receivers[1].events;
    let started = events
        .iter()
        .position(|(_, e)| matches!(e, ReceiverEvent::Started))
        .expect("started");
    let first_object = events
        .iter()
        .position(|(_, e)| matches!(e, ReceiverEvent::Object { .. }))
        .expect("objects");
    assert!(
        first_object > started,
        "an object before the start: {events:?}"
    );
    let registered_at = sim.receivers[1]
        .events
        .iter()
        .find(|(_, e)| matches!(e, ReceiverEvent::Registered))
        .map(|(t, _)| *t)
        .expect("registered");
    assert!(
        registered_at > sim.at(900),
        "the acks were lost for a while: {:?}",
        registered_at - sim.t0
    );
}

#[test]
fn an_announce_the_protocol_cannot_follow_is_refused() {
    let mut sim = Sim::new(40);
    sim.add_receiver(receiver_cfg("lab3", 1), Link::clean(), Link::clean(), 0);
    let lab3 = name("lab3").hash();
    let bad = |window: u16, symbol_size: u16| {
        Body::Announce(Announce {
            phase: Phase::Gathering,
            yields: false,
            object_count: u32::MAX,
            symbol_size,
            window,
            session_info: vec![],
        })
    };
    sim.inject(
        Some(0),
        addr(9),
        sealed(lab3, 5, MASTER, 1, false, bad(60_000, SYMBOL as u16)),
    );
    sim.inject(
        Some(0),
        addr(9),
        sealed(lab3, 6, MASTER, 1, false, bad(64, 3)),
    );
    sim.run_until(sim.at(1000));
    let refusals: Vec<String> = sim.receivers[0]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ReceiverEvent::Refused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].contains("window of 60000"), "{refusals:?}");
    assert!(refusals[1].contains("symbol size of 3"), "{refusals:?}");
    assert!(!sim.receivers[0].saw(|e| matches!(e, ReceiverEvent::Announced { .. })));
}

#[test]
fn conflicting_masters_from_the_m_key_resolve_to_one() {
    let objs = objects(14, &[100]);
    let mut sim = Sim::new(14);
    let mut a = sender_cfg("lab3", 50, &objs);
    a.yield_to_earlier = true;
    let mut b = sender_cfg("lab3", 40, &objs);
    b.yield_to_earlier = true;
    sim.add_sender(a, objs.clone(), vec![]);
    sim.add_sender(b, objs.clone(), vec![]);
    sim.run_until(sim.at(2000));
    assert!(sim
        .sender_saw(0, |e| matches!(
            e,
            SenderEvent::ConflictingMaster {
                winner_session: 40,
                ..
            }
        ))
        .is_some());
    assert!(sim
        .sender_saw(1, |e| matches!(e, SenderEvent::ConflictingMaster { .. }))
        .is_none());
    assert!(sim.senders[0].tx.is_closed());
    assert!(imgcast_proto::tie_break(40, 50) && !imgcast_proto::tie_break(50, 40));

    // A master started with -master never yields, even with the higher id.
    let mut sim = Sim::new(15);
    let mut m = sender_cfg("lab3", 90, &objs);
    m.yield_to_earlier = false;
    let mut k = sender_cfg("lab3", 10, &objs);
    k.yield_to_earlier = true;
    sim.add_sender(m, objs.clone(), vec![]);
    sim.add_sender(k, objs, vec![]);
    sim.run_until(sim.at(2000));
    assert!(sim
        .sender_saw(1, |e| matches!(
            e,
            SenderEvent::ConflictingMaster {
                winner_session: 90,
                ..
            }
        ))
        .is_some());
    assert!(sim
        .sender_saw(0, |e| matches!(e, SenderEvent::ConflictingMaster { .. }))
        .is_none());
}

#[test]
fn abort_reaches_clients_and_silence_is_master_lost() {
    let objs = objects(16, &[50_000; 50]);
    let mut sim = session_with(16, 2, objs, Link::lossy(0.05), Link::clean(), |c| {
        c.throttle = Some(Duration::from_millis(1));
    });
    sim.run_until(sim.at(100));
    let now = sim.now;
    sim.senders[0].tx.abort(now, "operator pressed q");
    sim.wake_sender(0);
    sim.run_until(sim.at(2000));
    for r in 0..2 {
        assert!(sim.receivers[r].saw(
            |e| matches!(e, ReceiverEvent::Aborted { reason } if reason == "operator pressed q")
        ));
    }

    // A master that vanishes: MasterLost exactly master_timeout after its last packet.
    let objs = objects(17, &[50_000; 50]);
    let mut sim = session_with(17, 1, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_millis(1));
    });
    sim.run_until(sim.at(100));
    let mut t = sim.now;
    sim.senders.clear();
    sim.drive_bounded(100_000, |s| {
        s.receivers[0].saw(|e| matches!(e, ReceiverEvent::MasterLost))
    });
    let lost = sim.receivers[0]
        .events
        .iter()
        .find(|(_, e)| matches!(e, ReceiverEvent::MasterLost))
        .map(|(t, _)| *t);
    // The last packet arrived within one link latency of the master's removal.
    t += Duration::from_secs(15);
    let lost = lost.expect("lost");
    assert!(
        lost >= t - Duration::from_millis(50) && lost <= t + Duration::from_millis(1),
        "{:?}",
        lost - t
    );
}

#[test]
fn steady_random_loss_does_not_collapse_the_rate() {
    // Long enough (about a second of data) for the master to judge its trial cuts.
    let objs = objects(18, &[100_000; 300]);
    let mut sim = session(18, 3, objs, Link::lossy(0.10), Link::clean());
    let initial = sim.senders[0].tx.current_rate();
    run_to_finish(&mut sim, 2_000_000);
    let end = sim.senders[0].tx.current_rate();
    println!("rate under steady 5-15% loss: {initial} -> {end} bit/s");
    assert!(
        end >= initial,
        "steady loss cut the rate: {initial} -> {end}"
    );
    for r in 0..3 {
        sim.assert_exact(0, r);
    }
}

#[test]
fn throttle_paces_data_exactly() {
    let objs = objects(19, &[10 * SYMBOL; 4]); // 10 symbols each
    let mut sim = Sim::new(19);
    let mut cfg = sender_cfg("lab3", 3, &objs);
    cfg.min_clients = Some(1);
    cfg.throttle = Some(Duration::from_millis(2));
    sim.add_sender(cfg, objs, vec![]);
    sim.add_receiver(receiver_cfg("lab3", 1), Link::clean(), Link::clean(), 0);
    sim.drive_bounded(100_000, |s| s.finished(0));
    let started = started_at(&sim).unwrap();
    let first_trailer = sim.receivers[0]
        .events
        .iter()
        .find(|(_, e)| matches!(e, ReceiverEvent::Trailer(_)))
        .unwrap()
        .0;
    // 40 packets, 2 ms apart (1 ms of start-up credit at most).
    let took = first_trailer - started;
    assert!(
        took >= Duration::from_millis(77) && took < Duration::from_millis(85),
        "{took:?}"
    );
    assert_eq!(sim.senders[0].tx.current_rate(), 1448 * 8 * 500);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_seed_and_loss_delivers_exactly(seed in 0u64..1_000_000, loss_pct in 0u32..=30, n in 1usize..=4) {
        let objs = objects(seed, &mixed_sizes(12));
        let loss = f64::from(loss_pct) / 100.0;
        let mut sim = session(seed, n, objs, Link::lossy(loss), Link::lossy(loss));
        run_to_finish(&mut sim, 3_000_000);
        for r in 0..n {
            sim.assert_exact(0, r);
        }
    }
}

/// What a large session cost, for the scaling targets of issue 12.
#[derive(Debug, Clone)]
pub(crate) struct ScaleResult {
    pub(crate) receivers: usize,
    /// Bytes of the stored image (sum of object lengths).
    pub(crate) image_bytes: u64,
    /// Source symbols of the image, and their bytes (what a perfect run carries).
    pub(crate) source_symbols: u64,
    pub(crate) source_bytes: u64,
    /// Symbols the master sent (source and repair).
    pub(crate) symbols_sent: u64,
    /// Every byte the master sent (group and unicast UDP payloads).
    pub(crate) bytes_sent: u64,
    pub(crate) counters: net::Counters,
    /// Virtual time from the start of the simulation (gathering included) to the master's
    /// `Finished`.
    pub(crate) virtual_time: Duration,
    /// Receivers' completion times (virtual, from the start of the simulation).
    pub(crate) completions: Vec<Duration>,
    pub(crate) wall: Duration,
    pub(crate) steps: u64,
}

impl ScaleResult {
    /// Bytes sent per byte of stored image.
    pub(crate) fn bytes_ratio(&self) -> f64 {
        self.bytes_sent as f64 / self.image_bytes as f64
    }
    /// Client → master datagrams per group Data packet.
    pub(crate) fn feedback_ratio(&self) -> f64 {
        self.counters.feedback.packets() as f64 / self.counters.data_packets as f64
    }
    /// Symbols sent (source and repair) per source symbol of the image.
    pub(crate) fn symbols_ratio(&self) -> f64 {
        self.symbols_sent as f64 / self.source_symbols as f64
    }
    /// Status packets (the feedback that scales with the transfer) per group Data packet.
    pub(crate) fn status_ratio(&self) -> f64 {
        self.counters.feedback.status as f64 / self.counters.data_packets as f64
    }

    /// The targets of issue 12, as far as they can be met (see docs/PERFORMANCE.md):
    /// * what is sent for the image — source and repair symbols — is at most 1.05× its source
    ///   symbols (the wire bytes add the 71-byte header and tag of every packet, 5.2%, which the
    ///   packet check of every datagram costs);
    /// * Status packets are at most 2% of the data packets at any group size;
    /// * with the one Register and one Report each receiver sends per run (1.1% at these image
    ///   sizes, and nothing on a real disk of gigabytes), client packets are at most 3%.
    pub(crate) fn assert_targets(&self) {
        assert!(
            self.symbols_ratio() <= 1.05,
            "symbols {:.4}x",
            self.symbols_ratio()
        );
        assert!(
            self.status_ratio() <= 0.02,
            "status {:.4}",
            self.status_ratio()
        );
        assert!(
            self.feedback_ratio() <= 0.03,
            "feedback {:.4}",
            self.feedback_ratio()
        );
    }
}

/// Objects of the scale runs: chunks of 1 MiB, as the image format's default.
const SCALE_OBJECT: usize = 1 << 20;

/// The master's window in the scale runs: the default. A receiver buffers every partial object at
/// full size until repair completes it; with needs reported after NORM's back-off (not at the
/// feedback interval) that is a few objects, and the 200-receiver run peaks near 1 GB.
const SCALE_WINDOW: u16 = 64;

/// Objects in a scale run of `receivers`: 48 MiB per 200 receivers. Every receiver sends at least a
/// Register and a Report, so feedback can never fall below 2 × receivers / data packets; growing the
/// image with the group keeps that floor at 1.1% (400 of 36,576 at 200 receivers, 2,000 of 182,880
/// at 1,000), below the 2% target, so the target measures the Status traffic, not the image size.
fn scale_objects(receivers: usize) -> usize {
    48 * receivers.div_ceil(200).max(1)
}

/// One master, `receivers` clients with independent `loss` both ways on a LAN, an image of
/// [`scale_objects`] objects of 1 MiB; runs to the end and checks every copy exactly.
pub(crate) fn scale_run(receivers: usize, loss: f64, seed: u64) -> ScaleResult {
    let wall = std::time::Instant::now();
    let objs = objects(seed, &vec![SCALE_OBJECT; scale_objects(receivers)]);
    let image_bytes = objs.iter().map(|o| o.len() as u64).sum();
    let mut sim = Sim::new(seed);
    let mut cfg = sender_cfg("scale", 0x5CA1E + seed, &objs);
    cfg.min_clients = Some(receivers as u32);
    cfg.window = SCALE_WINDOW;
    sim.add_sender(cfg, objs, b"root".to_vec());
    let mut link = Link::clean();
    link.loss = loss;
    link.jitter = Duration::from_micros(100);
    for i in 0..receivers {
        let mut rc = receiver_cfg("scale", 10_000 + i as u64);
        rc.seed = seed * 100_000 + i as u64;
        sim.add_receiver(rc, link, link, 0);
    }
    // Bounded: a step per delivery (jitter spreads them) and some slack for feedback and repair.
    let max_steps = 8 * receivers as u64 * (image_bytes / 1000 + 1000);
    run_to_finish(&mut sim, max_steps);
    for r in 0..receivers {
        sim.assert_exact(0, r);
    }
    let finished = sim.sender_saw(0, |e| matches!(e, SenderEvent::Finished));
    let st = sim.senders[0].tx.stats().clone();
    let source_symbols = sim.source_symbols(0);
    ScaleResult {
        receivers,
        image_bytes,
        source_symbols,
        source_bytes: source_symbols * u64::from(sim.senders[0].tx.symbol_size()),
        symbols_sent: st.source_sent + st.repair_sent,
        bytes_sent: sim.counters.bytes_sent(),
        counters: sim.counters,
        virtual_time: finished.unwrap_or(sim.now) - sim.t0,
        completions: (0..receivers)
            .map(|r| sim.completion(r).expect("every receiver completed"))
            .collect(),
        wall: wall.elapsed(),
        steps: sim.steps,
    }
}

/// Prints a scale run's counters, one measure per line.
fn print_scale(r: &ScaleResult) {
    let f = &r.counters.feedback;
    let mut done = r.completions.clone();
    done.sort();
    let secs = |d: Option<&Duration>| d.map_or(0.0, Duration::as_secs_f64);
    println!("scale run, {} receivers:", r.receivers);
    println!(
        "  wall {:.1} s for {:.2} s of virtual time, {} steps",
        r.wall.as_secs_f64(),
        r.virtual_time.as_secs_f64(),
        r.steps
    );
    println!(
        "  bytes sent / stored image: {:.4} ({} / {} B; {} B of source symbols)",
        r.bytes_ratio(),
        r.bytes_sent,
        r.image_bytes,
        r.source_bytes
    );
    println!(
        "  symbols sent / source symbols: {:.4} ({} / {})",
        r.symbols_sent as f64 / r.source_symbols as f64,
        r.symbols_sent,
        r.source_symbols
    );
    println!(
        "  feedback / data packets: {:.4} ({} / {}: {} register, {} status, {} report, {} other; {} B)",
        r.feedback_ratio(),
        f.packets(),
        r.counters.data_packets,
        f.register,
        f.status,
        f.report,
        f.other,
        f.bytes
    );
    println!(
        "  completed: first {:.3} s, median {:.3} s, last {:.3} s",
        secs(done.first()),
        secs(done.get(done.len() / 2)),
        secs(done.last())
    );
}

#[test]
fn scale_200_receivers() {
    let r = scale_run(200, 0.01, 200);
    print_scale(&r);
    assert_eq!(r.completions.len(), 200);
    r.assert_targets();
}

#[test]
#[ignore = "about 22 min of one core and up to 16 GB: run with --ignored (see the top of this file)"]
fn scale_1000_receivers() {
    let r = scale_run(1000, 0.01, 1000);
    print_scale(&r);
    assert_eq!(r.completions.len(), 1000);
    r.assert_targets();
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let objs = objects(50, &mixed_sizes(20));
        let mut down = Link::lossy(0.08);
        down.burst = Some(GilbertElliott::bursts(0.02, 4.0));
        let mut sim = session(seed, 3, objs, down, Link::lossy(0.05));
        run_to_finish(&mut sim, 1_000_000);
        let done: Vec<_> = (0..3).map(|r| sim.completion(r)).collect();
        (sim.counters, sim.steps, done, sim.now - sim.t0)
    };
    let a = run(51);
    assert_eq!(a, run(51));
    assert_ne!(a, run(52), "another seed, another run");
}

#[test]
fn bottleneck_serialises_then_drops_at_its_limit() {
    let t0 = std::time::Instant::now();
    let ms = Duration::from_millis;
    // 1,000 bytes on the wire at 8 Mbit/s: 1 ms each.
    let payload = 1000 - FRAME_OVERHEAD as usize;
    let mut q = Bottleneck::new(8_000_000, QueueLimit::Bytes(10_000));
    assert_eq!(q.serialisation(payload), ms(1));
    let burst: Vec<_> = (0..12).map(|_| q.offer(t0, payload)).collect();
    let expected: Vec<_> = (1..=10)
        .map(|k| Some(t0 + ms(k)))
        .chain([None, None])
        .collect();
    assert_eq!(
        burst, expected,
        "ten fit in 10,000 bytes, the rest are dropped"
    );
    assert_eq!((q.passed, q.dropped), (10, 2));
    assert_eq!(q.backlog(t0 + ms(4)), 6000);
    // Drained by half: room again, served after the ones still queued.
    assert_eq!(q.offer(t0 + ms(5), payload), Some(t0 + ms(11)));
    // After idle time a datagram waits only for its own serialisation.
    assert_eq!(q.offer(t0 + ms(100), payload), Some(t0 + ms(101)));
    assert_eq!(q.max_wait, ms(9));

    // A limit in time (tbf `latency`): at most 3 ms of waiting.
    let mut q = Bottleneck::new(8_000_000, QueueLimit::Time(ms(3)));
    let accepted = (0..10).filter_map(|_| q.offer(t0, payload)).count();
    assert_eq!(accepted, 4);
}

#[test]
fn a_receiver_behind_a_bottleneck_gets_at_most_its_rate() {
    let objs = objects(60, &[200_000; 10]);
    // The master sends about 116 Mbit/s; one client's port carries 20 Mbit/s with 30 kB of queue.
    let mut sim = session_with(60, 2, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_micros(100));
    });
    let rate = 20_000_000;
    sim.receivers[1].downlink = Some(Bottleneck::new(rate, QueueLimit::Bytes(30_000)));
    sim.run_until(sim.at(400));
    let q = sim.receivers[1].downlink.as_ref().expect("bottleneck");
    assert!(
        q.passed > 100 && q.dropped > q.passed,
        "{} passed, {} dropped",
        q.passed,
        q.dropped
    );
    // A full 30 kB queue at 20 Mbit/s is 12 ms of waiting, never more.
    assert!(
        q.max_wait > Duration::from_millis(10) && q.max_wait <= Duration::from_millis(12),
        "{:?}",
        q.max_wait
    );
    let got = sim.receivers[1].rx.stats().bytes_received;
    let frames = sim.receivers[1].rx.stats().packets_received * FRAME_OVERHEAD;
    let allowed = rate / 8 * 400 / 1000;
    assert!(
        got + frames <= allowed,
        "{got} B in 400 ms through {rate} bit/s"
    );
    let free = sim.receivers[0].rx.stats().bytes_received;
    assert!(
        free > 3 * got,
        "the other client is not limited: {free} vs {got} B"
    );

    // The master's own uplink at the same rate: everyone is limited, by one queue.
    let objs = objects(61, &[200_000; 10]);
    let mut sim = session_with(61, 2, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_micros(100));
    });
    sim.senders[0].uplink = Some(Bottleneck::new(rate, QueueLimit::Bytes(30_000)));
    sim.run_until(sim.at(400));
    let q = sim.senders[0].uplink.as_ref().expect("uplink");
    assert!(
        q.dropped > q.passed,
        "{} passed, {} dropped",
        q.passed,
        q.dropped
    );
    for r in 0..2 {
        let st = sim.receivers[r].rx.stats();
        let got = st.bytes_received + st.packets_received * FRAME_OVERHEAD;
        assert!(got <= allowed, "receiver {r}: {got} B in 400 ms");
        assert!(got > allowed / 2, "receiver {r}: the link is used, {got} B");
    }
    let sent = sim.counters.group_packets + sim.counters.unicast_packets;
    assert_eq!(
        q.passed + q.dropped,
        sent,
        "everything the master sends meets its uplink"
    );
}

/// Lengths of the runs of consecutive losses in `n` draws.
fn loss_runs(n: usize, mut lose: impl FnMut() -> bool) -> (u64, Vec<u64>) {
    let (mut lost, mut runs, mut run) = (0, Vec::new(), 0);
    for _ in 0..n {
        if lose() {
            lost += 1;
            run += 1;
        } else if run > 0 {
            runs.push(run);
            run = 0;
        }
    }
    (lost, runs)
}

#[test]
fn burst_loss_comes_in_bursts_with_the_configured_mean() {
    let n = 1_000_000;
    let mut rng = Rng::new(70);
    let mut ge = GilbertElliott::bursts(0.05, 8.0);
    assert!((ge.mean_loss() - 0.05).abs() < 1e-12);
    let (lost, runs) = loss_runs(n, || ge.lose(&mut rng));
    let loss = lost as f64 / n as f64;
    let mean_run = lost as f64 / runs.len() as f64;
    println!(
        "Gilbert-Elliott 5%, bursts of 8: {loss:.4} lost, mean run {mean_run:.2}, longest {:?}",
        runs.iter().max()
    );
    assert!((loss - 0.05).abs() < 0.005, "mean loss {loss}");
    assert!((mean_run - 8.0).abs() < 0.6, "mean burst {mean_run}");
    // Independent loss at the same rate: runs of about 1 / (1 - p).
    let mut link = Link::clean();
    link.loss = 0.05;
    let (lost, runs) = loss_runs(n, || link.lose(&mut rng));
    let mean_run = lost as f64 / runs.len() as f64;
    assert!((lost as f64 / n as f64 - 0.05).abs() < 0.002);
    assert!(mean_run < 1.1, "independent loss has no bursts: {mean_run}");

    // A session through bursts of 20 still delivers every copy exactly.
    let objs = objects(71, &mixed_sizes(30));
    let mut down = Link::clean();
    down.burst = Some(GilbertElliott::bursts(0.05, 20.0));
    let mut sim = session(71, 3, objs, down, Link::lossy(0.02));
    run_to_finish(&mut sim, 2_000_000);
    for r in 0..3 {
        sim.assert_exact(0, r);
    }
}

#[test]
fn a_slow_disk_confirms_its_objects_at_its_rate() {
    let objs = objects(80, &[100_000; 20]);
    let total: u64 = objs.iter().map(|o| o.len() as u64).sum();
    let mut sim = session(80, 3, objs, Link::lossy(0.01), Link::lossy(0.01));
    let rate = 2_000_000; // bytes/s: the 2 MB image takes 1 s to write
    sim.slow_disk(2, rate);
    run_to_finish(&mut sim, 2_000_000);
    for r in 0..3 {
        sim.assert_exact(0, r);
    }
    let n = &sim.receivers[2];
    let disk = n.disk.as_ref().expect("disk");
    assert_eq!(disk.written.len(), 20);
    assert_eq!(disk.written.iter().map(|w| w.bytes).sum::<u64>(), total);
    assert_eq!(n.rx.objects_done(), 20, "confirmed = written");
    // Each write takes its bytes at the disk's rate after the one before (or its own arrival).
    for w in disk.written.windows(2) {
        assert!(
            w[1].done - w[0].done >= disk.write_time(w[1].bytes),
            "{w:?}"
        );
    }
    let first = disk.written[0];
    let last = disk.written[19];
    let span = last.done - first.done + disk.write_time(first.bytes);
    assert!(span >= disk.write_time(total), "{span:?}");
    // Reported only once everything was written; the fast disks finished no later.
    let slow = n.completed_at.expect("completed");
    assert!(slow > last.done);
    for r in 0..2 {
        let fast = sim.receivers[r].completed_at.expect("completed");
        assert!(fast <= slow, "receiver {r} finished after the slow disk");
        assert!(sim.receivers[r].disk.is_none());
    }
    println!(
        "slow disk at {rate} B/s: wrote {total} B in {span:?}; completed at {:?}, others at {:?}",
        sim.completion(2),
        (0..2).map(|r| sim.completion(r)).collect::<Vec<_>>()
    );
}

/// The receivers' completion times of a session of `objs` with disks of `rates` bytes/s.
fn disk_run(objs: &[Vec<u8>], rates: &[u64]) -> Sim {
    let mut sim = session(61, rates.len(), objs.to_vec(), Link::clean(), Link::clean());
    for (r, &rate) in rates.iter().enumerate() {
        sim.slow_disk(r, rate);
    }
    run_to_finish(&mut sim, 50_000_000);
    sim
}

#[test]
fn a_receiver_at_half_speed_is_moved_and_the_rest_finish_in_their_own_time() {
    // 160 MB through disks of 4 MB/s: 40 s alone; one disk at half that.
    let objs = objects(60, &[200_000; 800]);
    let fast = 4_000_000;
    let alone = disk_run(&objs, &[fast; 4]);
    let with_slow = disk_run(&objs, &[fast, fast, fast, fast, fast / 2]);
    for r in 0..4 {
        with_slow.assert_exact(0, r);
    }
    let moved = with_slow
        .sender_saw(0, |e| {
            matches!(
                e,
                SenderEvent::ClientDropped {
                    client_id: 104,
                    reason: DropReason::Slow
                }
            )
        })
        .expect("the half-speed receiver is moved");
    assert!(with_slow.receivers[4].saw(|e| matches!(e, ReceiverEvent::Moved)));
    let last = |sim: &Sim| {
        (0..4)
            .filter_map(|r| sim.completion(r))
            .max()
            .expect("the fast receivers completed")
    };
    let (a, b) = (last(&alone), last(&with_slow));
    println!(
        "alone {a:?}, beside a half-speed receiver {b:?} (it was moved at {:?})",
        moved - with_slow.t0
    );
    assert!(
        b.as_secs_f64() <= a.as_secs_f64() * 1.10 && b.as_secs_f64() >= a.as_secs_f64() * 0.90,
        "the rest took {b:?} beside it, {a:?} alone"
    );
}

#[test]
fn a_receiver_at_30_percent_loss_does_not_raise_the_repair_of_the_others() {
    // About a second of data: long enough for the master to tell the outlier apart.
    let objs = objects(62, &[60_000; 600]);
    let run = |outlier: bool| {
        let mut sim = Sim::new(62);
        let mut cfg = sender_cfg("lab3", 0x0DD, &objs);
        cfg.min_clients = Some(4 + u32::from(outlier));
        sim.add_sender(cfg, objs.clone(), b"root".to_vec());
        let mut link = Link::clean();
        link.loss = 0.02;
        for i in 0..4 {
            let mut rc = receiver_cfg("lab3", 100 + i);
            rc.seed = 6200 + i;
            sim.add_receiver(rc, link, Link::clean(), 0);
        }
        if outlier {
            link.loss = 0.30;
            sim.add_receiver(receiver_cfg("lab3", 104), link, Link::clean(), 0);
        }
        sim.drive_bounded(5_000_000, |s| (0..4).all(|r| s.completion(r).is_some()));
        for r in 0..4 {
            sim.assert_exact(0, r);
        }
        // In a room this small most repair goes as Patches: they count as repair too.
        let st = sim.senders[0].tx.stats().clone();
        (st.repair_sent + st.patches, sim)
    };
    let (own, _) = run(false);
    let (with_outlier, sim) = run(true);
    println!(
        "repair symbols and Patches: {own} for the four alone, {with_outlier} beside a 30% receiver"
    );
    assert!(
        with_outlier as f64 <= own as f64 * 1.25 + 20.0,
        "the outlier raised the repair: {with_outlier} against {own}"
    );
    assert!(
        sim.sender_saw(0, |e| matches!(
            e,
            SenderEvent::ClientDropped {
                client_id: 104,
                reason: DropReason::Lossy { .. } | DropReason::Slow
            }
        ))
        .is_some()
            || sim.receivers[4].completed_at.is_some(),
        "the outlier is moved to the follow-up run (or finished on what the others' repair gave it)"
    );
}

#[test]
fn offloaded_decodes_give_the_same_copies() {
    let objs = objects(63, &mixed_sizes(40));
    let mut sim = Sim::new(63);
    let mut cfg = sender_cfg("lab3", 0x0FF, &objs);
    cfg.min_clients = Some(3);
    sim.add_sender(cfg, objs, b"root".to_vec());
    for i in 0..3 {
        let mut rc = receiver_cfg("lab3", 100 + i);
        rc.offload_decode = true;
        sim.add_receiver(rc, Link::lossy(0.10), Link::lossy(0.05), 0);
    }
    run_to_finish(&mut sim, 2_000_000);
    let jobs: usize = (0..3)
        .map(|r| {
            sim.assert_exact(0, r);
            sim.receivers[r]
                .events
                .iter()
                .filter(|(_, e)| matches!(e, ReceiverEvent::Decode(_)))
                .count()
        })
        .sum();
    assert!(
        jobs > 0,
        "10% loss needs RaptorQ decodes, handed out as jobs"
    );
}

/// Two clients, each behind its own 100 Mbit/s port (a 20 ms queue), adaptive pacing from the
/// 200 Mbit/s start: after the first cuts the master holds the ports' rate to the end. Their
/// needs are covered by the master's repair most of the time, so without a Status for a loss
/// that rises they would be silent for a whole liveness beat while the rate ran past the queue.
#[test]
fn a_bottleneck_is_held_to_the_end() {
    let objs = objects(62, &[1_000_000; 60]);
    let mut sim = session(62, 2, objs, Link::clean(), Link::clean());
    let rate = 100_000_000u64;
    for r in 0..2 {
        sim.receivers[r].downlink = Some(Bottleneck::new(rate, QueueLimit::Bytes(250_000)));
    }
    let mut samples = Vec::new();
    let mut last = 0u64;
    let mut t = sim.now;
    for step in 0..80 {
        t += Duration::from_millis(250);
        sim.run_until(t);
        let sent = sim.senders[0].tx.stats().bytes_sent;
        if step >= 3 && !sim.finished(0) {
            samples.push((sent - last) as f64 * 8.0 * 4.0);
        }
        last = sent;
        if sim.finished(0) {
            break;
        }
    }
    assert!(sim.finished(0), "not finished in 20 s");
    for r in 0..2 {
        sim.assert_exact(0, r);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let top = sorted[sorted.len() - 1];
    let mbit: Vec<u64> = samples.iter().map(|s| (*s / 1e6) as u64).collect();
    println!("Mbit/s per 250 ms: {mbit:?}");
    assert!(
        (0.85e8..=1.1e8).contains(&median) && top <= 1.3e8,
        "held a median of {:.0} Mbit/s, at most {:.0} (every 250 ms: {mbit:?})",
        median / 1e6,
        top / 1e6
    );
}

/// One client behind the master's 1 Gbit/s uplink at 10% loss, the first pass and the last
/// repairs timed apart; then the same without loss.
fn one_lossy_client(loss: f64) -> (Duration, Duration, imgcast_proto::Stats) {
    let objs = objects(70, &[1_000_000; 150]);
    let mut link = Link::lossy(loss * 2.0); // receiver 0 of `session` gets half the nominal loss
    link.dup = 0.0;
    link.reorder = 0.0;
    let mut sim = session(70, 1, objs, link, Link::clean());
    sim.senders[0].uplink = Some(Bottleneck::new(1_000_000_000, QueueLimit::Bytes(500_000)));
    let sources = 150 * 1_000_000u64.div_ceil(u64::from(sim.senders[0].tx.symbol_size()));
    let mut first_pass = None;
    let mut t = sim.now;
    for _ in 0..10_000 {
        t += Duration::from_millis(1);
        sim.run_until(t);
        let st = sim.senders[0].tx.stats();
        if first_pass.is_none() && st.source_sent >= sources {
            first_pass = Some(sim.now);
        }
        if sim.finished(0) {
            break;
        }
    }
    assert!(sim.finished(0), "not finished in 10 s");
    // The master ends at the last report; its acknowledgement is still on the way.
    let end = sim.now + Duration::from_millis(50);
    sim.run_until(end);
    sim.assert_exact(0, 0);
    let start = started_at(&sim).expect("started");
    let fin = sim
        .sender_saw(0, |e| matches!(e, SenderEvent::Finished))
        .expect("finished");
    let first_pass = first_pass.expect("first pass ended");
    let st = sim.senders[0].tx.stats().clone();
    (first_pass - start, fin - first_pass, st)
}

#[test]
fn a_lossy_client_s_last_repairs_take_a_round_or_two_not_an_advertisement_each() {
    let (clean_pass, clean_tail, clean) = one_lossy_client(0.0);
    let (pass, tail, lossy) = one_lossy_client(0.10);
    println!(
        "clean: first pass {clean_pass:?}, then {clean_tail:?}; 10% loss: {pass:?}, then {tail:?}; \
         repair {} of {} source symbols (clean: {})",
        lossy.repair_sent, lossy.source_sent, clean.repair_sent
    );
    // Each round of repair used to wait for the next periodic advertisement (100 ms) that no
    // longer listed the object, and sent only what was asked, so 10% of it was asked again.
    assert!(
        tail <= Duration::from_millis(150),
        "last repairs took {tail:?}"
    );
    // What is planned for the loss is needed: about 1/0.9 of the sources, not much more.
    let needed = lossy.source_sent as f64 / 0.9 - lossy.source_sent as f64;
    assert!(
        (lossy.repair_sent as f64) < needed * 1.6,
        "{} repair symbols for about {needed:.0} lost",
        lossy.repair_sent
    );
}

/// Packets of another protocol version (another imgcast release on the group) are refused, and
/// each side says so once, after the third: a mixed room must not only wait.
#[test]
fn another_protocol_version_is_reported_once_by_each_side() {
    let objs = objects(41, &[5000; 8]);
    let mut sim = session_with(41, 1, objs, Link::clean(), Link::clean(), |c| {
        c.throttle = Some(Duration::from_micros(300));
    });
    let stranger = addr(4343);
    let lab3 = name("lab3").hash();
    let mut old = sealed(lab3, 7, MASTER, 1, false, Body::Start { clients: 1 });
    old[4] = wire::VERSION - 1;
    let other_version = |e: &ReceiverEvent| {
        matches!(e, ReceiverEvent::OtherVersion { version, from }
            if *version == wire::VERSION - 1 && *from == stranger)
    };
    let master_other = |e: &SenderEvent| {
        matches!(e, SenderEvent::OtherVersion { version, from }
            if *version == wire::VERSION - 1 && *from == stranger)
    };
    for i in 0..8 {
        sim.inject(Some(0), stranger, old.clone());
        sim.inject(None, stranger, old.clone());
        for _ in 0..5 {
            sim.step();
        }
        let told = sim.receivers[0]
            .events
            .iter()
            .filter(|(_, e)| other_version(e))
            .count();
        let master_told = sim.senders[0]
            .events
            .iter()
            .filter(|(_, e)| master_other(e))
            .count();
        // A single odd packet may be a corrupted one: the third is the sign.
        let want = usize::from(i >= 2);
        assert_eq!((told, master_told), (want, want), "after {} packets", i + 1);
    }
    run_to_finish(&mut sim, 2_000_000);
    sim.assert_exact(0, 0);
    assert!(sim.receivers[0].rx.stats().dropped_malformed >= 8);
}

/// A found case: at 29% loss each way one receiver's first 12 Registers (3 s) all went
/// unanswered, though the master had registered it and started; it gave the run up. The
/// patience of 20 Registers carries it through.
#[test]
fn a_registration_outlasts_heavy_loss_both_ways() {
    let seed = 104_020;
    let objs = objects(seed, &mixed_sizes(12));
    let mut sim = session(seed, 3, objs, Link::lossy(0.29), Link::lossy(0.29));
    run_to_finish(&mut sim, 3_000_000);
    for r in 0..3 {
        assert!(!sim.receivers[r].saw(|e| matches!(e, ReceiverEvent::Unanswered { .. })));
        sim.assert_exact(0, r);
    }
}

/// A room of 8 receivers at `loss` that decode off their protocol thread (each decode taking
/// `decode`, one after another, when given), run to the end: 30 objects of 1 MB, every copy exact.
fn room_of_eight(seed: u64, loss: f64, decode: Option<Duration>) -> Sim {
    let objs = objects(seed, &[1_000_000; 30]);
    let mut sim = Sim::new(seed);
    let mut cfg = sender_cfg("lab3", 0x5D, &objs);
    cfg.min_clients = Some(8);
    sim.add_sender(cfg, objs, b"root".to_vec());
    for i in 0..8 {
        let mut rc = receiver_cfg("lab3", 100 + i);
        rc.offload_decode = true;
        let r = sim.add_receiver(rc, Link::lossy(loss), Link::clean(), 0);
        sim.receivers[r].decode_time = decode;
    }
    run_to_finish(&mut sim, 5_000_000);
    for r in 0..8 {
        sim.assert_exact(0, r);
    }
    sim
}

/// Clients whose decodes queue behind each other (on a busy host a decode waits tens of
/// milliseconds for a thread) ask for nothing while they run: the master builds no more encoders
/// and sends no more repair than to clients that decode at once. (When a decoding object was
/// asked for as one symbol, every Status meanwhile cost the master a build and a symbol.) At 10%
/// loss, where Patches leave about 90 of the 240 objects to a decode.
#[test]
fn slow_decodes_cost_the_master_no_builds_and_no_repair() {
    let run = |decode: Option<Duration>| {
        let sim = room_of_eight(71, 0.10, decode);
        let st = sim.senders[0].tx.stats();
        (st.encoders_built, st.repair_sent)
    };
    let (builds_fast, repair_fast) = run(None);
    let (builds_slow, repair_slow) = run(Some(Duration::from_millis(25)));
    eprintln!("builds {builds_fast} / {builds_slow}, repair {repair_fast} / {repair_slow}");
    // Without the fix: 81 builds and 2,288 repair symbols against 12 and 1,380.
    assert!(
        builds_slow <= builds_fast + builds_fast / 5 + 2,
        "{builds_slow} encoder builds with slow decodes, {builds_fast} with instant ones"
    );
    assert!(
        repair_slow <= repair_fast + repair_fast / 10 + 8,
        "repair {repair_slow} with slow decodes, {repair_fast} with instant ones"
    );
}

/// A room of 8 at 2% and 10% loss: the master answers the listed holes with Patches, so most
/// objects complete without a RaptorQ decode at any receiver, for a few % more bytes.
#[test]
fn small_rooms_are_repaired_by_patches_without_decodes() {
    for (loss, max_decodes, max_extra) in [(0.02, 48, 0.07), (0.10, 140, 0.25)] {
        let sim = room_of_eight(71, loss, None);
        let st = sim.senders[0].tx.stats().clone();
        let decodes: u64 = (0..8).map(|r| sim.receivers[r].rx.stats().decodes).sum();
        let patched: u64 = (0..8).map(|r| sim.receivers[r].rx.stats().patches).sum();
        let extra = (st.repair_sent + st.patches) as f64 / st.source_sent as f64;
        eprintln!(
            "loss {loss}: {} repair, {} patches, {} builds; receivers: {decodes} decodes, \
             {patched} symbols patched; extra {extra:.3}",
            st.repair_sent, st.patches, st.encoders_built
        );
        // 240 objects received; with RaptorQ alone every one of them is a decode.
        assert!(decodes <= max_decodes, "{decodes} decodes at {loss}");
        assert!(patched > 0 && st.patches > 0);
        assert!(
            extra <= max_extra,
            "{extra:.3} extra symbols per source symbol at {loss}"
        );
    }
}

/// The end of a lossy session costs no timer: a receiver that lost End has it again within
/// 60 ms, not the 500 ms of End's steady repeat, and a later round of an object's Patches waits
/// 20 ms for its few holes, not the 70 ms of a first round. Six rooms of 8 at 5% loss: 30 MB at
/// 1 Gbit/s is 0.25 s. (With End only every 500 ms, some rooms ended 0.4 s late; with 70 ms for
/// every round, the rooms took 0.40 s on average, up to 0.46.)
#[test]
fn the_end_of_a_lossy_session_waits_for_no_timer() {
    for seed in 1..=6 {
        let sim = room_of_eight(seed, 0.05, None);
        let start = started_at(&sim).expect("started");
        let mut last_done = start;
        for r in &sim.receivers {
            let at = |f: &dyn Fn(&ReceiverEvent) -> bool| {
                r.events.iter().filter(|(_, e)| f(e)).map(|(t, _)| *t).max()
            };
            let last_object = at(&|e| matches!(e, ReceiverEvent::Object { .. })).expect("objects");
            let trailer = at(&|e| matches!(e, ReceiverEvent::Trailer(_))).expect("trailer");
            assert!(
                trailer.saturating_duration_since(last_object) <= Duration::from_millis(70),
                "seed {seed}: End came {:?} after the last object",
                trailer - last_object
            );
            last_done = last_done.max(trailer);
        }
        let took = last_done - start;
        assert!(
            took <= Duration::from_millis(400),
            "seed {seed}: the room took {took:?}"
        );
    }
}
