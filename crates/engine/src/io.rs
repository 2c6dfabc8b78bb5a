//! The socket side of a session: receive threads feeding one channel, and the
//! send path, so the protocol loop waits on a single queue with a deadline.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
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
}

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

    /// Sends what the protocol asked for, to the group or to one peer.
    pub(crate) fn transmit(&mut self, t: &imgcast_proto::Transmit) -> Result<(), EngineError> {
        let to = match t.dest {
            imgcast_proto::Dest::Group => self.group,
            imgcast_proto::Dest::Peer(a) => a,
        };
        self.send(to, &t.payload)
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
