//! The socket side of a session: receive threads feeding one channel, and the
//! send path, so the protocol loop waits on a single queue with a deadline.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};

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
    pub(crate) incoming: Receiver<Datagram>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Send failures that were not fatal (e.g. a transient ENOBUFS).
    pub(crate) send_errors: u64,
}

/// Datagrams queued between the receive threads and the protocol loop: about
/// 90 MB of packets, a few hundred milliseconds at line rate.
const QUEUE: usize = 64 * 1024;

impl Net {
    pub(crate) fn open(iface: Interface, group: Ipv4Addr, port: u16) -> Result<Self, EngineError> {
        let group_sock = net::group_socket(&iface, group, port)?;
        let unicast = net::unicast_socket(&iface, 1)?;
        let (tx, rx) = bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (name, sock) in [
            ("imgcast-recv-group", group_sock),
            (
                "imgcast-recv-unicast",
                unicast
                    .try_clone()
                    .map_err(|e| EngineError::io("cloning the unicast socket", e))?,
            ),
        ] {
            let tx = tx.clone();
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        match sock.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                let d = Datagram {
                                    at: Instant::now(),
                                    from,
                                    data: buf[..n].to_vec(),
                                };
                                // A full queue drops the datagram like a full socket
                                // buffer would; repair heals it. Never block here.
                                if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                                    tx.try_send(d)
                                {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock
                                        | std::io::ErrorKind::TimedOut
                                        | std::io::ErrorKind::Interrupted
                                ) => {}
                            // ICMP errors from earlier sends surface here; they are not ours to act on.
                            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                        }
                    }
                })
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
