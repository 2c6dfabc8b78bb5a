//! The socket side of a session: receive threads feeding one channel, and the
//! send path, so the protocol loop waits on a single queue with a deadline.
//!
//! Receiving is batched: each receive thread reads with `recvmmsg` into a
//! [`Slab`] (one buffer of fixed-size slots, taken from a pool) and hands the
//! filled slab to the protocol loop as one [`Batch`], one wake-up for many
//! datagrams. The datagrams of a batch borrow their bytes from it
//! ([`Payload`]); when the last of them is dropped, the slab goes back to its
//! pool, so the receive path allocates nothing per datagram.
//!
//! A client's group socket asks for UDP GRO: the kernel may then hand over a
//! run of equal-sized datagrams of one sender as one buffer (what a NIC or a
//! veth with NAPI aggregated), which the slab splits back into datagrams: one
//! trip through the stack and one `recvmmsg` slot for up to 44 wire datagrams.
//! System time was about 60% of a lone client's CPU at line rate.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn};

use crate::net::{self, Interface};
use crate::session::NetConfig;
use crate::{igmp, EngineError};

/// A datagram as it arrived.
pub(crate) struct Datagram {
    pub(crate) at: Instant,
    pub(crate) from: SocketAddr,
    pub(crate) data: Payload,
}

/// A datagram's bytes, borrowed from the slab it was received into.
pub(crate) struct Payload {
    filled: Arc<Filled>,
    start: usize,
    len: usize,
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.filled.slab.buf[self.start..self.start + self.len]
    }
}

/// The datagrams of one receive, in one slab; iterate it for [`Datagram`]s.
#[derive(Default)]
pub(crate) struct Batch(Option<Arc<Filled>>);

impl IntoIterator for Batch {
    type Item = Datagram;
    type IntoIter = BatchIter;
    fn into_iter(self) -> BatchIter {
        BatchIter {
            filled: self.0,
            next: 0,
        }
    }
}

/// The datagrams of a [`Batch`], in arrival order.
pub(crate) struct BatchIter {
    filled: Option<Arc<Filled>>,
    next: usize,
}

impl Iterator for BatchIter {
    type Item = Datagram;
    fn next(&mut self) -> Option<Datagram> {
        let filled = self.filled.as_ref()?;
        let m = filled.slab.meta.get(self.next)?;
        self.next += 1;
        Some(Datagram {
            at: m.at,
            from: m.from,
            data: Payload {
                filled: filled.clone(),
                start: m.start,
                len: m.len,
            },
        })
    }
}

/// Where a datagram lies in its slab, and when and whence it came.
struct Meta {
    at: Instant,
    from: SocketAddr,
    start: usize,
    len: usize,
}

/// A receive buffer of `slots` slots of `slot_len` bytes, and what was read into it.
#[derive(Default)]
struct Slab {
    buf: Vec<u8>,
    slot_len: usize,
    meta: Vec<Meta>,
}

/// A slab on its way to the protocol loop; it goes home to its pool when dropped.
struct Filled {
    slab: Slab,
    home: Sender<Slab>,
}

impl Drop for Filled {
    fn drop(&mut self) {
        let mut slab = std::mem::take(&mut self.slab);
        slab.meta.clear();
        // The pool's channel holds every slab it made: this never blocks, and
        // fails only when the receive thread has ended.
        let _ = self.home.try_send(slab);
    }
}

/// The slabs of one receive thread: made on demand up to `max`, reused after.
struct Pool {
    free: Receiver<Slab>,
    home: Sender<Slab>,
    made: usize,
    max: usize,
    slots: usize,
    slot_len: usize,
}

impl Pool {
    fn new(slots: usize, slot_len: usize, max_bytes: usize) -> Self {
        let max = (max_bytes / (slots * slot_len)).clamp(4, 256);
        let (home, free) = bounded(max);
        Self {
            free,
            home,
            made: 0,
            max,
            slots,
            slot_len,
        }
    }

    /// A free slab. When all are out (the protocol loop is behind), waits for
    /// one: meanwhile the socket's own buffer queues, and drops, as it would.
    fn take(&mut self, stop: &AtomicBool) -> Option<Slab> {
        if let Ok(s) = self.free.try_recv() {
            return Some(s);
        }
        if self.made < self.max {
            self.made += 1;
            return Some(Slab {
                buf: vec![0; self.slots * self.slot_len],
                slot_len: self.slot_len,
                meta: Vec::with_capacity(self.slots),
            });
        }
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = self.free.recv_timeout(net::STOP_CHECK) {
                return Some(s);
            }
        }
        None
    }
}

/// Both sockets of a device and their receive threads.
pub(crate) struct Net {
    pub(crate) group: SocketAddr,
    unicast: UdpSocket,
    /// The group socket, to wake its receive thread when stopping.
    group_wake: Option<UdpSocket>,
    incoming: Receiver<Batch>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Send failures that were not fatal (e.g. a transient ENOBUFS).
    pub(crate) send_errors: u64,
    /// Equal-sized group datagrams waiting to leave in one UDP GSO send.
    gso: GsoBatch,
    /// Lines for the user from the sockets' side (buffer caps, IGMP).
    notes: Receiver<String>,
    /// The IGMP watch (and querier); stops with the sockets.
    _igmp: Option<igmp::Watch>,
}

/// Which end of the session a [`Net`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Sends the group's data; does not need to hear it.
    Master,
    /// Receives the group's data.
    Client,
}

/// Consecutive group datagrams of one size, sent with one `sendmsg` and a
/// `UDP_SEGMENT` control message: the kernel cuts them into datagrams of that
/// size, so the per-packet cost of the send path is paid once per batch.
#[derive(Default)]
struct GsoBatch {
    buf: Vec<u8>,
    seg_len: usize,
    count: usize,
    /// Set when the kernel or the interface refused GSO: plain sends from then on.
    unsupported: bool,
}

/// Datagrams in one GSO send (the kernel allows 64).
const GSO_MAX_SEGMENTS: usize = 32;
/// Bytes in one GSO send (an IP packet's limit, with room for headers).
const GSO_MAX_BYTES: usize = 60 * 1024;

/// Batches queued between the receive threads and the protocol loop (the
/// slab pools bound them first).
const QUEUE: usize = 4096;
/// Datagrams one `recvmmsg` on the group socket reads at most: one wake-up of
/// the protocol loop.
const GROUP_SLOTS: usize = 64;
/// A group slot: the largest datagram an imgcast sender makes
/// ([`Interface::max_payload`] is at most 8952 bytes), rounded up. A longer
/// datagram is cut (`MSG_TRUNC`) and dropped; it is nobody's we expect.
const GROUP_SLOT: usize = 9216;
/// With GRO, a slot takes one aggregate: up to 64 KiB of datagrams.
const GRO_SLOTS: usize = 32;
const GRO_SLOT: usize = 65536;
/// Unicast datagrams (registrations, status) are few; a slot takes any UDP payload.
const UNICAST_SLOTS: usize = 8;
const UNICAST_SLOT: usize = 65536;
/// Memory one receive thread's slabs may take, beside the socket buffer.
const POOL_BYTES: usize = 32 << 20;
/// Lines the socket side may have waiting for the protocol loop.
const NOTES: usize = 16;
/// Shortest wait: the sender's pacing credit (1 ms) makes up for sleeping a
/// little past a packet's time, and shorter waits only spin.
const MIN_WAIT: Duration = Duration::from_micros(400);

/// Reads the socket into slabs, one channel message (one wake-up of the
/// protocol loop) per `recvmmsg`. A non-blocking socket (`drain`) is read for
/// what is queued and waited on with `poll`; a blocking one (with a read
/// timeout) waits in `recvmmsg` for its first datagram (`MSG_WAITFORONE`).
fn receive_loop(
    sock: &UdpSocket,
    drain: bool,
    gro: bool,
    mut pool: Pool,
    tx: &Sender<Batch>,
    stop: &AtomicBool,
) {
    let mut headers = Headers::new(pool.slots, gro);
    let flags = if drain {
        MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::MSG_WAITFORONE
    };
    let mut spare: Option<Slab> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut slab) = spare.take().or_else(|| pool.take(stop)) else {
            return;
        };
        let result = read_into(sock, &mut headers, &mut slab, flags);
        if slab.meta.is_empty() {
            spare = Some(slab);
            match result {
                Err(nix::errno::Errno::EINTR) => {}
                // Drained, or an error that is not ours to act on (ICMP errors
                // of earlier sends): wait for more.
                _ if drain => {
                    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(
                        &mut fds,
                        PollTimeout::try_from(net::STOP_CHECK).unwrap_or(PollTimeout::MAX),
                    );
                }
                // The read timeout passed (or such an error): look at `stop`.
                _ => {}
            }
            continue;
        }
        let batch = Batch(Some(Arc::new(Filled {
            slab,
            home: pool.home.clone(),
        })));
        // A full queue drops the batch like a full socket buffer would;
        // repair heals it. Never block here.
        if let Err(TrySendError::Disconnected(_)) = tx.try_send(batch) {
            return;
        }
    }
}

/// The message headers of `recvmmsg`, with room for the GRO segment size
/// when the socket asks for GRO.
struct Headers {
    slots: usize,
    /// Control bytes per message (nix takes the capacity of an empty `Vec`).
    cmsg: Option<usize>,
    reused: MultiHeaders<SockaddrIn>,
}

impl Headers {
    fn new(slots: usize, gro: bool) -> Self {
        let cmsg = gro.then(|| nix::cmsg_space!(i32).capacity());
        Self {
            slots,
            reused: MultiHeaders::preallocate(slots, cmsg.map(Vec::with_capacity)),
            cmsg,
        }
    }

    /// Headers for the next call. nix's `recvmmsg` leaves each header's
    /// control length at what the last call received (0 after a datagram GRO
    /// did not join), which would cut off the next aggregate's segment size
    /// (`MSG_CTRUNC`): with GRO they are made afresh, one small allocation per
    /// call.
    fn next(&mut self) -> &mut MultiHeaders<SockaddrIn> {
        if let Some(c) = self.cmsg {
            self.reused = MultiHeaders::preallocate(self.slots, Some(Vec::with_capacity(c)));
        }
        &mut self.reused
    }
}

/// One `recvmmsg` into the slab's slots; records each datagram's place, and
/// the places of the datagrams a GRO aggregate holds.
fn read_into(
    sock: &UdpSocket,
    headers: &mut Headers,
    slab: &mut Slab,
    flags: MsgFlags,
) -> Result<(), nix::errno::Errno> {
    let slot_len = slab.slot_len;
    let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = slab
        .buf
        .chunks_mut(slot_len)
        .map(|slot| [std::io::IoSliceMut::new(slot)])
        .collect();
    let got = recvmmsg(
        sock.as_raw_fd(),
        headers.next(),
        iovs.iter_mut(),
        flags,
        None,
    )?;
    let at = Instant::now();
    for (i, m) in got.enumerate() {
        if m.flags.contains(MsgFlags::MSG_TRUNC) {
            continue;
        }
        let Some(from) = m.address else {
            continue;
        };
        let from = SocketAddr::V4(SocketAddrV4::new(from.ip(), from.port()));
        let seg = gro_segment(&m).unwrap_or(m.bytes);
        split(m.bytes, seg, |start, len| {
            slab.meta.push(Meta {
                at,
                from,
                start: i * slot_len + start,
                len,
            })
        });
    }
    Ok(())
}

/// The datagram size of a GRO aggregate, if the kernel made one.
fn gro_segment(m: &nix::sys::socket::RecvMsg<'_, '_, SockaddrIn>) -> Option<usize> {
    use nix::sys::socket::ControlMessageOwned;
    m.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok().filter(|&s| s > 0),
        _ => None,
    })
}

/// Cuts `bytes` into datagrams of `seg` bytes (the last may be shorter), as
/// `(start, len)`: how GRO joined them.
fn split(bytes: usize, seg: usize, mut each: impl FnMut(usize, usize)) {
    let seg = seg.max(1);
    let mut start = 0;
    while start < bytes {
        let len = seg.min(bytes - start);
        each(start, len);
        start += len;
    }
}

impl Net {
    /// Opens both sockets on `iface` and starts their receive threads, and the
    /// IGMP watch (a querier too, when `cfg.querier` on a master).
    pub(crate) fn open(
        iface: Interface,
        group: Ipv4Addr,
        cfg: &NetConfig,
        role: Role,
    ) -> Result<Self, EngineError> {
        let port = cfg.port;
        let group_sock = net::group_socket(&iface, group, port)?;
        // Only a client reads the group at line rate; a master hears only its
        // own multicast on loopback, where GRO does nothing.
        let gro = role == Role::Client && net::enable_gro(&group_sock);
        // Our own multicast is no use to a master: it would only receive and
        // check it. Kept on a loopback interface, where a master and clients
        // share one host (tests, a demo on `lo`) and must hear each other.
        let multicast_loop = role == Role::Client || iface.is_loopback();
        let unicast = net::unicast_socket(&iface, cfg.ttl, multicast_loop)?;
        let (notes_tx, notes) = bounded(NOTES);
        if role == Role::Client {
            if let Some(n) = net::recv_buffer_shortfall(&group_sock) {
                let _ = notes_tx.try_send(n);
            }
        }
        let (tx, rx) = bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // The group socket carries the data: it is drained in batches. The
        // unicast socket is also the sending socket, and must stay blocking so
        // that a full send queue holds the sender back instead of dropping.
        group_sock
            .set_nonblocking(true)
            .map_err(|e| EngineError::io("making the group socket non-blocking", e))?;
        let group_wake = group_sock.try_clone().ok();
        let unicast_rx = unicast
            .try_clone()
            .map_err(|e| EngineError::io("cloning the unicast socket", e))?;
        // A GRO slot holds one datagram when nothing was joined (a NIC that
        // does not, a slow stretch): twice the memory keeps 1,024 of them in
        // the pool, against 3,584 in plain slots. Pages are touched only when used.
        let group_pool = if gro {
            Pool::new(GRO_SLOTS, GRO_SLOT, 2 * POOL_BYTES)
        } else {
            Pool::new(GROUP_SLOTS, GROUP_SLOT, POOL_BYTES)
        };
        for (name, sock, drain, gro, pool) in [
            ("imgcast-recv-group", group_sock, true, gro, group_pool),
            (
                "imgcast-recv-unicast",
                unicast_rx,
                false,
                false,
                Pool::new(UNICAST_SLOTS, UNICAST_SLOT, POOL_BYTES / 4),
            ),
        ] {
            let tx = tx.clone();
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || receive_loop(&sock, drain, gro, pool, &tx, &stop))
                .map_err(|e| EngineError::io("starting a receive thread", e))?;
            threads.push(handle);
        }
        let igmp = igmp::start(&iface, role == Role::Master && cfg.querier, &notes_tx);
        Ok(Self {
            group: SocketAddr::V4(SocketAddrV4::new(group, port)),
            unicast,
            group_wake,
            incoming: rx,
            stop,
            threads,
            send_errors: 0,
            gso: GsoBatch::default(),
            notes,
            _igmp: igmp,
        })
    }

    /// A line for the user from the socket side, if one is waiting (each is said once).
    pub(crate) fn take_note(&self) -> Option<String> {
        self.notes.try_recv().ok()
    }

    /// A batch that has arrived, without waiting.
    pub(crate) fn try_batch(&self) -> Option<Batch> {
        self.incoming.try_recv().ok()
    }

    /// Waits for a batch until `deadline` (at least [`MIN_WAIT`]).
    pub(crate) fn wait_batch(&self, deadline: Instant) -> Result<Option<Batch>, EngineError> {
        let deadline = deadline.max(Instant::now() + MIN_WAIT);
        match self.incoming.recv_deadline(deadline) {
            Ok(b) => Ok(Some(b)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(EngineError::Session("the receive threads stopped".into()))
            }
        }
    }
    /// As [`Net::wait_batch`], but also returns (with no batch) as soon as `other` holds a
    /// message, which stays there for the caller.
    pub(crate) fn wait_batch_or<T>(
        &self,
        deadline: Instant,
        other: &Receiver<T>,
    ) -> Result<Option<Batch>, EngineError> {
        self.wait_batch_or_either(deadline, other, None::<&Receiver<T>>)
    }

    /// As [`Net::wait_batch_or`], waking on `also` too when given.
    pub(crate) fn wait_batch_or_either<T, U>(
        &self,
        deadline: Instant,
        other: &Receiver<T>,
        also: Option<&Receiver<U>>,
    ) -> Result<Option<Batch>, EngineError> {
        if !other.is_empty() || also.is_some_and(|a| !a.is_empty()) {
            return Ok(self.try_batch());
        }
        let deadline = deadline.max(Instant::now() + MIN_WAIT);
        let mut sel = crossbeam_channel::Select::new();
        let net = sel.recv(&self.incoming);
        sel.recv(other);
        if let Some(a) = also {
            sel.recv(a);
        }
        match sel.ready_deadline(deadline) {
            Ok(i) if i == net => match self.incoming.try_recv() {
                Ok(b) => Ok(Some(b)),
                Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Err(EngineError::Session("the receive threads stopped".into()))
                }
            },
            _ => Ok(None),
        }
    }

    /// Sends what the protocol asked for, to the group or to one peer. Group
    /// datagrams of equal size are gathered for one GSO send: call
    /// [`Net::flush`] before waiting.
    pub(crate) fn transmit(&mut self, t: &imgcast_proto::Transmit) -> Result<(), EngineError> {
        match t.dest {
            imgcast_proto::Dest::Group if !self.gso.unsupported => {
                let len = t.payload.len();
                let g = &self.gso;
                if g.count > 0
                    && (len != g.seg_len
                        || g.count >= GSO_MAX_SEGMENTS
                        || g.buf.len() + len > GSO_MAX_BYTES)
                {
                    self.flush()?;
                }
                if self.gso.count == 0 {
                    self.gso.seg_len = len;
                }
                self.gso.buf.extend_from_slice(&t.payload);
                self.gso.count += 1;
                Ok(())
            }
            imgcast_proto::Dest::Group => {
                let to = self.group;
                self.send(to, &t.payload)
            }
            imgcast_proto::Dest::Peer(a) => {
                self.flush()?;
                self.send(a, &t.payload)
            }
        }
    }

    /// Sends the gathered group datagrams.
    pub(crate) fn flush(&mut self) -> Result<(), EngineError> {
        let count = std::mem::take(&mut self.gso.count);
        if count == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.gso.buf);
        let seg = self.gso.seg_len;
        let to = self.group;
        let result = if count == 1 {
            self.send(to, &buf)
        } else {
            match self.send_gso(&buf, seg) {
                Ok(()) => Ok(()),
                Err(
                    nix::errno::Errno::EIO
                    | nix::errno::Errno::EINVAL
                    | nix::errno::Errno::EOPNOTSUPP
                    | nix::errno::Errno::ENOPROTOOPT,
                ) => {
                    // No GSO here (old kernel, a device without it): send one by one, from now on too.
                    self.gso.unsupported = true;
                    buf.chunks(seg).try_for_each(|d| self.send(to, d))
                }
                Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EAGAIN) => {
                    self.send_errors += 1;
                    Ok(())
                }
                Err(e) => Err(EngineError::io(
                    format!("sending to {to}"),
                    std::io::Error::from(e),
                )),
            }
        };
        let mut buf = buf;
        buf.clear();
        self.gso.buf = buf;
        result
    }

    fn send_gso(&self, buf: &[u8], seg: usize) -> Result<(), nix::errno::Errno> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
        let SocketAddr::V4(group) = self.group else {
            return Err(nix::errno::Errno::EINVAL);
        };
        let seg = u16::try_from(seg).map_err(|_| nix::errno::Errno::EINVAL)?;
        let addr = SockaddrIn::from(group);
        let iov = [std::io::IoSlice::new(buf)];
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        sendmsg(
            self.unicast.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(|_| ())
    }

    /// Sends one datagram; a full send buffer (`ENOBUFS`/`EAGAIN`) is counted
    /// and treated as a loss, which the protocol repairs like any other.
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), EngineError> {
        match self.unicast.send_to(payload, to) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN))
                    || e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                self.send_errors += 1;
                Ok(())
            }
            Err(e) => Err(EngineError::io(format!("sending to {to}"), e)),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Every thread is told first and woken, then joined: the process ends at once rather
        // than a read timeout per thread later (40 ms at the end of every client's run).
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = &self._igmp {
            w.signal();
        }
        net::wake_reader(&self.unicast);
        if let Some(g) = &self.group_wake {
            net::wake_reader(g);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    fn one_recvmmsg_reads_a_burst_and_the_slab_goes_home_when_dropped() {
        let (rx, tx) = pair();
        let sent: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; 1 + usize::from(i) * 300])
            .collect();
        for d in &sent {
            tx.send(d).unwrap();
        }
        let mut pool = Pool::new(GROUP_SLOTS, GROUP_SLOT, POOL_BYTES);
        let stop = AtomicBool::new(false);
        let mut headers = Headers::new(pool.slots, false);
        let mut slab = pool.take(&stop).unwrap();
        read_into(&rx, &mut headers, &mut slab, MsgFlags::MSG_DONTWAIT).unwrap();
        assert_eq!(slab.meta.len(), sent.len());
        let batch = Batch(Some(Arc::new(Filled {
            slab,
            home: pool.home.clone(),
        })));
        let got: Vec<Datagram> = batch.into_iter().collect();
        for (d, want) in got.iter().zip(&sent) {
            assert_eq!(&*d.data, &want[..]);
            assert_eq!(d.from, tx.local_addr().unwrap());
        }
        // Still borrowed by the datagrams: not home yet.
        assert!(pool.free.try_recv().is_err());
        drop(got);
        let back = pool.free.try_recv().expect("the slab came home");
        assert!(back.meta.is_empty() && back.buf.len() == GROUP_SLOTS * GROUP_SLOT);
        // Drained: the next read finds nothing and says so.
        let mut slab = back;
        assert_eq!(
            read_into(&rx, &mut headers, &mut slab, MsgFlags::MSG_DONTWAIT),
            Err(nix::errno::Errno::EAGAIN)
        );
    }

    #[test]
    fn a_datagram_longer_than_a_slot_is_dropped() {
        let (rx, tx) = pair();
        tx.send(&vec![7; GROUP_SLOT + 1]).unwrap();
        tx.send(b"short").unwrap();
        let mut pool = Pool::new(GROUP_SLOTS, GROUP_SLOT, POOL_BYTES);
        let mut headers = Headers::new(pool.slots, false);
        let mut slab = pool.take(&AtomicBool::new(false)).unwrap();
        read_into(&rx, &mut headers, &mut slab, MsgFlags::MSG_DONTWAIT).unwrap();
        assert_eq!(slab.meta.len(), 1);
        assert_eq!(slab.meta[0].len, 5);
    }

    #[test]
    fn gro_aggregates_are_split_back_into_their_datagrams() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let (rx, tx) = pair();
        assert!(net::enable_gro(&rx), "UDP_GRO needs Linux 5.0");
        // Five datagrams of 1000 bytes and one of 300 in one GSO send: on
        // loopback it reaches a GRO socket as one aggregate.
        let sent: Vec<u8> = (0..5300u32).map(|i| (i / 1000 * 31 + i) as u8).collect();
        let seg = 1000u16;
        let send_gso = || {
            sendmsg::<SockaddrIn>(
                tx.as_raw_fd(),
                &[std::io::IoSlice::new(&sent)],
                &[ControlMessage::UdpGsoSegments(&seg)],
                MsgFlags::empty(),
                None,
            )
            .unwrap()
        };
        let mut pool = Pool::new(GRO_SLOTS, GRO_SLOT, POOL_BYTES);
        let mut headers = Headers::new(pool.slots, true);
        let stop = AtomicBool::new(false);
        // An aggregate, a lone datagram, an aggregate: the second aggregate
        // must still come with its segment size after a read without one.
        for round in 0..3 {
            if round == 1 {
                tx.send(b"alone").unwrap();
            } else {
                send_gso();
            }
            let mut slab = pool.take(&stop).unwrap();
            read_into(&rx, &mut headers, &mut slab, MsgFlags::MSG_DONTWAIT).unwrap();
            let places: Vec<(usize, usize)> = slab.meta.iter().map(|m| (m.start, m.len)).collect();
            let batch = Batch(Some(Arc::new(Filled {
                slab,
                home: pool.home.clone(),
            })));
            if round == 1 {
                assert_eq!(places, [(0, 5)]);
                continue;
            }
            // One slot held them all: the kernel did aggregate, and we cut it up.
            assert_eq!(
                places,
                [
                    (0, 1000),
                    (1000, 1000),
                    (2000, 1000),
                    (3000, 1000),
                    (4000, 1000),
                    (5000, 300)
                ],
                "round {round}"
            );
            for (d, want) in batch.into_iter().zip(sent.chunks(1000)) {
                assert_eq!(&*d.data, want);
                assert_eq!(d.from, tx.local_addr().unwrap());
            }
        }
    }

    #[test]
    fn split_cuts_whole_segments_and_a_shorter_last() {
        let cut = |bytes, seg| {
            let mut v = Vec::new();
            split(bytes, seg, |s, l| v.push((s, l)));
            v
        };
        assert_eq!(cut(3, 3), [(0, 3)]);
        assert_eq!(cut(7, 3), [(0, 3), (3, 3), (6, 1)]);
        assert_eq!(cut(0, 3), []);
        // A zero segment size (never sent by a kernel) does not loop forever.
        assert_eq!(cut(2, 0), [(0, 1), (1, 1)]);
    }

    #[test]
    fn the_pool_is_bounded_and_waits_for_a_slab_to_come_home() {
        let mut pool = Pool::new(UNICAST_SLOTS, UNICAST_SLOT, 0);
        let stop = AtomicBool::new(false);
        let out: Vec<Slab> = (0..pool.max).map(|_| pool.take(&stop).unwrap()).collect();
        assert_eq!(pool.made, 4);
        stop.store(true, Ordering::Relaxed);
        assert!(pool.take(&stop).is_none());
        drop(Filled {
            slab: out.into_iter().next().unwrap(),
            home: pool.home.clone(),
        });
        assert!(pool.take(&stop).is_some());
    }
}
