//! The socket side of a session: receive threads feeding one channel, and the
//! send path, so the protocol loop waits on a single queue with a deadline.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::net::{self, Interface};
use crate::EngineError;

/// A datagram as it arrived.
pub(crate) struct Datagram {
    pub(crate) at: Instant,
    pub(crate) from: SocketAddr,
    pub(crate) data: Vec<u8>,
}

/// Both sockets of a device and their receive threads.
pub(crate) struct Net {
    pub(crate) group: SocketAddr,
    unicast: UdpSocket,
    incoming: Receiver<Vec<Datagram>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Send failures that were not fatal (e.g. a transient ENOBUFS).
    pub(crate) send_errors: u64,
    /// Equal-sized group datagrams waiting to leave in one UDP GSO send.
    gso: GsoBatch,
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

/// Batches queued between the receive threads and the protocol loop.
const QUEUE: usize = 4096;
/// Largest batch: what one wake-up of the protocol loop handles at most.
const BATCH: usize = 256;
/// Shortest wait: the sender's pacing credit (1 ms) makes up for sleeping a
/// little past a packet's time, and shorter waits only spin.
const MIN_WAIT: Duration = Duration::from_micros(400);

/// Reads the socket into batches, one channel message (one wake-up of the
/// protocol loop) per batch rather than per packet. A non-blocking socket
/// (`drain`) is emptied into each batch and waited on with `poll`; a blocking
/// one (with a read timeout) gives batches of one.
fn receive_loop(sock: &UdpSocket, drain: bool, tx: &Sender<Vec<Datagram>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    let limit = if drain { BATCH } else { 1 };
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        while batch.len() < limit {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => batch.push(Datagram {
                    at: Instant::now(),
                    from,
                    data: buf[..n].to_vec(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: drained. Anything else (ICMP errors of earlier
                // sends) is not ours to act on.
                Err(_) => break,
            }
        }
        if batch.is_empty() && drain {
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(200u16));
            continue;
        }
        if batch.is_empty() {
            continue;
        }
        // A full queue drops the batch like a full socket buffer would;
        // repair heals it. Never block here.
        if let Err(TrySendError::Disconnected(_)) = tx.try_send(batch) {
            return;
        }
    }
}

impl Net {
    pub(crate) fn open(iface: Interface, group: Ipv4Addr, port: u16) -> Result<Self, EngineError> {
        let group_sock = net::group_socket(&iface, group, port)?;
        let unicast = net::unicast_socket(&iface, 1)?;
        let (tx, rx) = bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // The group socket carries the data: it is drained in batches. The
        // unicast socket is also the sending socket, and must stay blocking so
        // that a full send queue holds the sender back instead of dropping.
        group_sock
            .set_nonblocking(true)
            .map_err(|e| EngineError::io("making the group socket non-blocking", e))?;
        let unicast_rx = unicast
            .try_clone()
            .map_err(|e| EngineError::io("cloning the unicast socket", e))?;
        for (name, sock, drain) in [
            ("imgcast-recv-group", group_sock, true),
            ("imgcast-recv-unicast", unicast_rx, false),
        ] {
            let tx = tx.clone();
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || receive_loop(&sock, drain, &tx, &stop))
                .map_err(|e| EngineError::io("starting a receive thread", e))?;
            threads.push(handle);
        }
        Ok(Self {
            group: SocketAddr::V4(SocketAddrV4::new(group, port)),
            unicast,
            incoming: rx,
            stop,
            threads,
            send_errors: 0,
            gso: GsoBatch::default(),
        })
    }

    /// A batch that has arrived, without waiting.
    pub(crate) fn try_batch(&self) -> Option<Vec<Datagram>> {
        self.incoming.try_recv().ok()
    }

    /// Waits for a batch until `deadline` (at least [`MIN_WAIT`]).
    pub(crate) fn wait_batch(
        &self,
        deadline: Instant,
    ) -> Result<Option<Vec<Datagram>>, EngineError> {
        let deadline = deadline.max(Instant::now() + MIN_WAIT);
        match self.incoming.recv_deadline(deadline) {
            Ok(b) => Ok(Some(b)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(EngineError::Session("the receive threads stopped".into()))
            }
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
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
