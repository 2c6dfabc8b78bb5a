//! IGMP on the session's interface: noticing that no querier answers there, and
//! being one when asked (`-querier`), as Frisbee carries one.
//!
//! Switches that snoop IGMP forward a group only to the ports whose hosts
//! answered a recent membership query. With snooping on and no querier on the
//! segment, nobody asks, the memberships expire (about 260 s with the IGMPv2
//! defaults) and the group stops reaching the clients mid-session. So every
//! device watches for membership queries on a raw `IPPROTO_IGMP` socket and
//! warns once if none came within [`QUERIER_WINDOW`]; a master with `-querier`
//! sends IGMPv2 General Queries itself (RFC 2236) and steps back when a querier
//! with a lower address is heard, as the RFC's election says.
//!
//! A raw socket needs `CAP_NET_RAW`. Without it nothing is watched and nothing is
//! said (a `-querier` that can't be honoured is said once); the session runs as
//! it would have.
//!
//! ```text
//!  raw IGMP socket ─▶ parse ─▶ Querier::heard ─▶ notes ─▶ the protocol loop's events
//!                                 Querier::poll ─▶ general_query ─▶ 224.0.0.1 (TTL 1, Router Alert)
//! ```

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::net::Interface;

/// The IGMPv2 default Query Interval (RFC 2236 §8.2): how often a querier asks.
pub const QUERY_INTERVAL: Duration = Duration::from_secs(125);
/// How long a device waits for a membership query before it warns: one
/// [`QUERY_INTERVAL`] and a margin for a querier whose timer was just reset.
pub const QUERIER_WINDOW: Duration = Duration::from_secs(130);
/// RFC 2236 §8.5 Other Querier Present Interval (2 × 125 s + 10 s / 2): a
/// querier that stepped back for a lower address takes over again after this
/// long without hearing it.
pub const OTHER_QUERIER_PRESENT: Duration = Duration::from_secs(255);
/// Max Response Time of our General Queries, in tenths of a second (10 s, the
/// RFC 2236 default).
pub const MAX_RESPONSE_TENTHS: u8 = 100;
/// Test only: milliseconds to use instead of [`QUERIER_WINDOW`], so the
/// end-to-end test of the warning takes seconds rather than minutes.
pub const TEST_WINDOW_ENV: &str = "IMGCAST_TEST_QUERIER_WINDOW_MS";

/// All Systems on this subnet: where General Queries go.
pub const ALL_HOSTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
/// IGMP message type of a membership query (every version).
pub const MEMBERSHIP_QUERY: u8 = 0x11;
const IPPROTO_IGMP: u8 = 2;
/// IP option Router Alert (RFC 2113), copied flag set, length 4, value 0.
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// The Internet checksum (RFC 1071) of `bytes`: the one's complement of the
/// one's-complement sum of 16-bit words.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IGMPv2 General Query from `src`, as a whole IPv4 packet (for a raw socket
/// with `IP_HDRINCL`): TTL 1, the Router Alert option that RFC 2236 asks for,
/// to 224.0.0.1, group 0.0.0.0, Max Response Time 10 s, both checksums set.
pub fn general_query(src: Ipv4Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 0x46; // version 4, header of 6 words (20 bytes and the option)
    p[1] = 0xc0; // DSCP CS6, as the kernel's own IGMP uses
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    p[8] = 1; // TTL
    p[9] = IPPROTO_IGMP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&ALL_HOSTS.octets());
    p[20..24].copy_from_slice(&ROUTER_ALERT);
    let ip_sum = checksum(&p[..24]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[24] = MEMBERSHIP_QUERY;
    p[25] = MAX_RESPONSE_TENTHS;
    // p[28..32]: group 0.0.0.0, a General Query.
    let igmp_sum = checksum(&p[24..32]);
    p[26..28].copy_from_slice(&igmp_sum.to_be_bytes());
    p
}

/// An IGMP message as read from a raw socket, with what the IP header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heard {
    /// Source address of the IP packet (the querier's, for a query).
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP time to live.
    pub ttl: u8,
    /// Whether the IP header carried the Router Alert option.
    pub router_alert: bool,
    /// IGMP type (0x11 query, 0x16 v2 report, 0x17 leave, 0x22 v3 report).
    pub kind: u8,
    /// Max Response Time (code), in tenths of a second for v2.
    pub max_resp: u8,
    /// Group address field (0.0.0.0 in a General Query).
    pub group: Ipv4Addr,
    /// Length of the IGMP message: 8 for v1/v2, 12 and more for a v3 query.
    pub len: usize,
}

impl Heard {
    /// A General Query of any version (group 0.0.0.0).
    pub fn is_general_query(&self) -> bool {
        self.kind == MEMBERSHIP_QUERY && self.group.is_unspecified()
    }
}

/// Why a packet read from the raw socket is not a valid IGMP message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than its headers say, or than an IGMP message.
    #[error("truncated IGMP packet ({0} bytes)")]
    Truncated(usize),
    /// Not IPv4, or not protocol 2.
    #[error("not an IPv4 IGMP packet")]
    NotIgmp,
    /// The IP header's checksum is wrong.
    #[error("bad IP header checksum")]
    IpChecksum,
    /// The IGMP message's checksum is wrong.
    #[error("bad IGMP checksum")]
    IgmpChecksum,
}

/// Parses an IPv4 packet carrying IGMP, as a raw socket delivers it (IP header
/// included), checking both checksums.
pub fn parse(packet: &[u8]) -> Result<Heard, ParseError> {
    if packet.len() < 20 {
        return Err(ParseError::Truncated(packet.len()));
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet[0] >> 4 != 4 || ihl < 20 || packet[9] != IPPROTO_IGMP {
        return Err(ParseError::NotIgmp);
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if packet.len() < ihl + 8 || total < ihl + 8 || total > packet.len() {
        return Err(ParseError::Truncated(packet.len()));
    }
    if checksum(&packet[..ihl]) != 0 {
        return Err(ParseError::IpChecksum);
    }
    let igmp = &packet[ihl..total];
    if checksum(igmp) != 0 {
        return Err(ParseError::IgmpChecksum);
    }
    let ip4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let mut router_alert = false;
    let mut opts = &packet[20..ihl];
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = &opts[1..],
            _ => {
                let len = usize::from(opts.get(1).copied().unwrap_or(0));
                if len < 2 || len > opts.len() {
                    break;
                }
                router_alert |= kind == ROUTER_ALERT[0];
                opts = &opts[len..];
            }
        }
    }
    Ok(Heard {
        src: ip4(&packet[12..16]),
        dst: ip4(&packet[16..20]),
        ttl: packet[8],
        router_alert,
        kind: igmp[0],
        max_resp: igmp[1],
        group: ip4(&igmp[4..8]),
        len: igmp.len(),
    })
}

/// What the watch decided on a step.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// Send a General Query now.
    pub(crate) send_query: bool,
    /// A line for the user.
    pub(crate) note: Option<String>,
}

/// The querier watch and election, without sockets or clock: time is passed in.
#[derive(Debug)]
pub(crate) struct Querier {
    iface: String,
    own: Ipv4Addr,
    window: Duration,
    started: Instant,
    /// `-querier` was given.
    asked: bool,
    /// A query from someone else was heard.
    heard_other: bool,
    missing_warned: bool,
    /// When a querier with a lower address was last heard.
    lower_heard: Option<(Instant, Ipv4Addr)>,
    yield_said: bool,
    next_query: Option<Instant>,
}

impl Querier {
    pub(crate) fn new(
        iface: &str,
        own: Ipv4Addr,
        asked: bool,
        window: Duration,
        now: Instant,
    ) -> Self {
        Self {
            iface: iface.to_string(),
            own,
            window,
            started: now,
            asked,
            heard_other: false,
            missing_warned: false,
            lower_heard: None,
            yield_said: false,
            next_query: asked.then_some(now),
        }
    }

    /// A packet arrived on the interface.
    pub(crate) fn heard(&mut self, now: Instant, h: &Heard) -> Step {
        if h.kind != MEMBERSHIP_QUERY || h.src == self.own {
            return Step::default();
        }
        self.heard_other = true;
        // RFC 2236 §3: the querier with the lowest address wins.
        if self.asked && u32::from(h.src) < u32::from(self.own) {
            self.lower_heard = Some((now, h.src));
            if !self.yield_said {
                self.yield_said = true;
                return Step {
                    send_query: false,
                    note: Some(format!(
                        "IGMP: querier {} (a lower address than ours, {}) is on {}; our querier \
                         stays quiet while it is heard (RFC 2236 election)",
                        h.src, self.own, self.iface
                    )),
                };
            }
        }
        Step::default()
    }

    /// Whether our querier is the one that speaks now.
    fn active(&self, now: Instant) -> bool {
        self.asked
            && self
                .lower_heard
                .is_none_or(|(at, _)| now.duration_since(at) >= OTHER_QUERIER_PRESENT)
    }

    /// What is due at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if self.active(now) {
            if self.next_query.is_none_or(|t| now >= t) {
                step.send_query = true;
                self.next_query = Some(now + QUERY_INTERVAL);
            }
        } else if self.asked {
            // Speak at once when the other querier has been silent long enough.
            self.next_query = None;
        }
        if !self.asked
            && !self.heard_other
            && !self.missing_warned
            && now.duration_since(self.started) >= self.window
        {
            self.missing_warned = true;
            step.note = Some(format!(
                "IGMP: no membership query heard on {} in {} s: if a switch on this segment \
                 snoops IGMP and nothing acts as querier, it stops forwarding the session's \
                 multicast after a few minutes and clients stall. Enable an IGMP querier on the \
                 switch or router, or run the master with -querier.",
                self.iface,
                self.window.as_secs()
            ));
        }
        step
    }
}

/// The window before the missing-querier warning: [`QUERIER_WINDOW`], or
/// [`TEST_WINDOW_ENV`] in tests.
fn window() -> Duration {
    std::env::var(TEST_WINDOW_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(QUERIER_WINDOW, Duration::from_millis)
}

/// The raw socket's thread; stops and joins when dropped.
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    /// The thread's socket, to wake its blocked read when stopping.
    wake: Option<Socket>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Tells the thread to stop and wakes its read at once (see [`crate::net::wake_reader`]),
    /// without waiting for it.
    pub(crate) fn signal(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = &self.wake {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the raw IGMP socket on `iface`, bound to it, ready to send our own
/// queries when `querier` (they are sent with `IP_HDRINCL`, so the Router Alert
/// option and TTL 1 are ours to set).
fn open_raw(iface: &Interface, querier: bool) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(IPPROTO_IGMP))),
    )?;
    s.bind_device(Some(iface.name.as_bytes()))?;
    s.set_read_timeout(Some(crate::net::STOP_CHECK))?;
    if querier {
        s.set_header_included_v4(true)?;
        s.set_multicast_if_v4(&iface.addr)?;
        s.set_multicast_loop_v4(false)?;
    }
    Ok(s)
}

/// Starts watching `iface` (and querying on it when `querier`); lines for the
/// user go to `notes`. `None` when there is nothing to watch: a loopback
/// interface, or no raw socket (no `CAP_NET_RAW`) — then only a `-querier` that
/// can't be honoured is said.
pub(crate) fn start(iface: &Interface, querier: bool, notes: &Sender<String>) -> Option<Watch> {
    if iface.addr.is_loopback() {
        return None;
    }
    let sock = match open_raw(iface, querier) {
        Ok(s) => s,
        Err(e) => {
            if querier {
                let _ = notes.try_send(format!(
                    "-querier: can't open a raw IGMP socket on {} ({e}; it needs root or \
                     CAP_NET_RAW): no IGMP queries are sent",
                    iface.name
                ));
            }
            return None;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let wake = sock.try_clone().ok();
    let mut q = Querier::new(&iface.name, iface.addr, querier, window(), Instant::now());
    let (name, notes, flag) = (iface.name.clone(), notes.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("imgcast-igmp".into())
        .spawn(move || run(&sock, &mut q, &name, &notes, &flag))
        .ok()?;
    Some(Watch {
        stop,
        wake,
        thread: Some(thread),
    })
}

fn run(sock: &Socket, q: &mut Querier, iface: &str, notes: &Sender<String>, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    let mut send_failed = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let step = q.poll(now);
        if step.send_query {
            let to = SockAddr::from(SocketAddrV4::new(ALL_HOSTS, 0));
            let packet = general_query(q.own);
            if let Err(e) = sock.send_to(&packet, &to) {
                if !send_failed {
                    send_failed = true;
                    let _ = notes.try_send(format!(
                        "-querier: sending an IGMP query on {iface} failed ({e})"
                    ));
                }
            }
        }
        if let Some(n) = step.note {
            let _ = notes.try_send(n);
        }
        // Bounded by the socket's read timeout: the stop flag is seen within STOP_CHECK.
        let mut reader = sock;
        match reader.read(&mut buf) {
            Ok(n) => {
                if let Ok(h) = parse(&buf[..n]) {
                    if let Some(n) = q.heard(Instant::now(), &h).note {
                        let _ = notes.try_send(n);
                    }
                }
            }
            Err(e) if is_timeout(&e) => {}
            // Anything else (the interface went away) ends the watch quietly.
            Err(_) => return,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IGMPv2 General Query as a Cisco switch sends it, captured (192.168.1.1).
    const CAPTURED_V2: [u8; 32] = [
        0x46, 0xc0, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x82, 0x6d, 192, 168, 1, 1,
        224, 0, 0, 1, 0x94, 0x04, 0x00, 0x00, 0x11, 0x64, 0xee, 0x9b, 0, 0, 0, 0,
    ];
    /// An IGMPv3 General Query (QRV 2, QQIC 125) from a Linux router (10.1.0.254).
    const CAPTURED_V3: [u8; 36] = [
        0x46, 0xc0, 0x00, 0x24, 0x00, 0x00, 0x40, 0x00, 0x01, 0x02, 0xf9, 0x13, 10, 1, 0, 254, 224,
        0, 0, 1, 0x94, 0x04, 0x00, 0x00, 0x11, 0x64, 0xec, 0x1e, 0, 0, 0, 0, 0x02, 0x7d, 0x00,
        0x00,
    ];

    #[test]
    fn a_captured_v2_query_parses() {
        let h = parse(&CAPTURED_V2).unwrap();
        assert_eq!(h.src, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(h.dst, ALL_HOSTS);
        assert_eq!((h.ttl, h.kind, h.max_resp, h.len), (1, 0x11, 100, 8));
        assert!(h.router_alert && h.is_general_query());
    }

    #[test]
    fn a_captured_v3_query_parses() {
        let h = parse(&CAPTURED_V3).unwrap();
        assert_eq!(h.src, Ipv4Addr::new(10, 1, 0, 254));
        assert_eq!(h.len, 12);
        assert!(h.is_general_query());
    }

    #[test]
    fn our_query_is_the_captured_one_from_our_address() {
        let ours = general_query(Ipv4Addr::new(192, 168, 1, 1));
        // Only the DF bit (and so the IP checksum) differs from the capture.
        assert_eq!(ours[24..], CAPTURED_V2[24..]);
        assert_eq!(&ours[..6], &CAPTURED_V2[..6]);
        assert_eq!(&ours[12..24], &CAPTURED_V2[12..24]);
        assert_eq!(checksum(&ours[..24]), 0);
        assert_eq!(checksum(&ours[24..]), 0);
        let h = parse(&ours).unwrap();
        assert_eq!(
            (h.ttl, h.max_resp, h.group),
            (1, 100, Ipv4Addr::UNSPECIFIED)
        );
        assert!(h.router_alert && h.is_general_query());
    }

    #[test]
    fn checksum_of_the_rfc_1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2 (checksum 220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        assert_eq!(checksum(&[0xff]), 0x00ff);
    }

    #[test]
    fn damaged_packets_are_refused() {
        let mut p = CAPTURED_V2;
        p[31] ^= 1;
        assert_eq!(parse(&p), Err(ParseError::IgmpChecksum));
        let mut p = CAPTURED_V2;
        p[15] ^= 1;
        assert_eq!(parse(&p), Err(ParseError::IpChecksum));
        assert_eq!(parse(&CAPTURED_V2[..30]), Err(ParseError::Truncated(30)));
        let mut p = CAPTURED_V2;
        p[9] = 17;
        assert_eq!(parse(&p), Err(ParseError::NotIgmp));
        // A total length that lies past the end.
        let mut p = CAPTURED_V2;
        p[3] = 0x40;
        assert_eq!(parse(&p), Err(ParseError::Truncated(32)));
    }

    fn query_from(src: Ipv4Addr) -> Heard {
        parse(&general_query(src)).unwrap()
    }

    #[test]
    fn no_query_in_the_window_warns_once() {
        let t0 = Instant::now();
        let own = Ipv4Addr::new(10, 0, 0, 5);
        let mut q = Querier::new("eth0", own, false, QUERIER_WINDOW, t0);
        assert_eq!(q.poll(t0 + Duration::from_secs(129)), Step::default());
        let note = q.poll(t0 + QUERIER_WINDOW).note.unwrap();
        assert!(note.contains("eth0") && note.contains("-querier"), "{note}");
        assert_eq!(q.poll(t0 + Duration::from_secs(400)), Step::default());
    }

    #[test]
    fn a_heard_query_silences_the_warning_but_our_own_does_not() {
        let t0 = Instant::now();
        let own = Ipv4Addr::new(10, 0, 0, 5);
        let mut q = Querier::new("eth0", own, false, QUERIER_WINDOW, t0);
        q.heard(t0, &query_from(own));
        assert!(q.poll(t0 + QUERIER_WINDOW).note.is_some());
        let mut q = Querier::new("eth0", own, false, QUERIER_WINDOW, t0);
        q.heard(t0, &query_from(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(q.poll(t0 + QUERIER_WINDOW), Step::default());
    }

    #[test]
    fn the_querier_asks_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut q = Querier::new("eth0", Ipv4Addr::new(10, 0, 0, 5), true, QUERIER_WINDOW, t0);
        assert!(q.poll(t0).send_query);
        assert!(!q.poll(t0 + Duration::from_secs(124)).send_query);
        assert!(q.poll(t0 + QUERY_INTERVAL).send_query);
        // A querier never warns that there is none.
        assert_eq!(q.poll(t0 + Duration::from_secs(200)).note, None);
    }

    #[test]
    fn a_lower_address_wins_the_election_and_a_higher_one_does_not() {
        let t0 = Instant::now();
        let own = Ipv4Addr::new(10, 0, 0, 5);
        let mut q = Querier::new("eth0", own, true, QUERIER_WINDOW, t0);
        assert!(q.poll(t0).send_query);
        assert_eq!(
            q.heard(t0, &query_from(Ipv4Addr::new(10, 0, 0, 9))),
            Step::default()
        );
        let t1 = t0 + Duration::from_secs(1);
        let said = q.heard(t1, &query_from(Ipv4Addr::new(10, 0, 0, 1))).note;
        assert!(said.unwrap().contains("10.0.0.1"));
        // Said once; quiet while the lower querier is heard.
        assert_eq!(
            q.heard(t1, &query_from(Ipv4Addr::new(10, 0, 0, 1))).note,
            None
        );
        assert!(!q.poll(t0 + Duration::from_secs(200)).send_query);
        // It fell silent for the Other Querier Present Interval: ours speaks again.
        assert!(q.poll(t1 + OTHER_QUERIER_PRESENT).send_query);
    }
}
