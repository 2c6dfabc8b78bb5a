//! Sockets: the interface choice, the group socket and the unicast socket.
//!
//! Each device opens two UDP sockets. The *group socket* is bound to the
//! group address and port, so it receives only that session's multicast (two
//! sessions on one port never see each other's traffic; `IP_MULTICAST_ALL` is
//! off for the same reason). The *unicast socket* is bound to the interface
//! address on an ephemeral port; everything is sent from it, and the peer's
//! unicast replies (registrations, status, acknowledgements) arrive on it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::EngineError;

/// The interface a session uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Its IPv4 address, used to join the group and as the source address.
    pub addr: Ipv4Addr,
    /// Link MTU; datagrams are sized so they never fragment.
    pub mtu: u32,
}

impl Interface {
    /// Largest UDP payload that fits the MTU without fragmenting (IPv4 20 + UDP 8
    /// bytes of headers, and room for IP options some networks add).
    pub fn max_payload(&self) -> usize {
        (self.mtu as usize).saturating_sub(52).clamp(512, 8952)
    }

    /// A loopback interface (`lo`, 127.0.0.0/8): every process on it shares one host.
    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }

    /// Its hardware address from sysfs, sent in Register so a master (or the imaging server)
    /// can name the machine even across a router; `None` for loopback or an all-zero address.
    pub fn mac(&self) -> Option<[u8; 6]> {
        let text = std::fs::read_to_string(format!("/sys/class/net/{}/address", self.name)).ok()?;
        parse_mac(text.trim()).filter(|m| m != &[0; 6])
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), exactly six two-digit hex bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as lower-case `aa:bb:cc:dd:ee:ff`, as `ip link` shows it.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Finds the interface to use: the named one, or the one of the route to the
/// group (asked of the kernel with a connected UDP socket, which sends nothing).
pub fn choose_interface(name: Option<&str>, group: Ipv4Addr) -> Result<Interface, EngineError> {
    let addrs = ipv4_addresses()?;
    let (if_name, addr) = match name {
        Some(wanted) => addrs
            .iter()
            .find(|(n, _)| n == wanted)
            .cloned()
            .ok_or_else(|| EngineError::Interface {
                what: format!(
                    "interface '{wanted}' not found or has no IPv4 address (have: {})",
                    list_names(&addrs)
                ),
            })?,
        None => {
            let routed = route_interface(group);
            let by_route = routed
                .as_deref()
                .and_then(|n| addrs.iter().find(|(name, _)| name == n).cloned());
            match by_route {
                Some(found) => found,
                None => probe_route(group, &addrs)?,
            }
        }
    };
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{if_name}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500);
    Ok(Interface {
        name: if_name,
        addr,
        mtu,
    })
}

/// The interface of the most specific IPv4 route to `dest` in `/proc/net/route`
/// (where a multicast route such as `224.0.0.0/4 dev eth0` lives).
fn route_interface(dest: Ipv4Addr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let d = u32::from(dest);
    let mut best: Option<(u32, String)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The file holds addresses as native-endian hex of network-order words.
        let parse = |h: &str| {
            u32::from_str_radix(h, 16)
                .ok()
                .map(|v| u32::from_be(v.to_le()))
        };
        let (Some(net), Some(mask)) = (parse(f[1]), parse(f[7])) else {
            continue;
        };
        if d & mask == net
            && best
                .as_ref()
                .is_none_or(|(m, _)| mask.count_ones() > m.count_ones())
        {
            best = Some((mask, f[0].to_string()));
        }
    }
    best.map(|(_, name)| name)
}

/// Asks the kernel which source address it would use towards the group (a
/// connected UDP socket sends nothing).
fn probe_route(
    group: Ipv4Addr,
    addrs: &[(String, Ipv4Addr)],
) -> Result<(String, Ipv4Addr), EngineError> {
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| EngineError::io("opening a probe socket", e))?;
    probe
        .connect((group, 9))
        .map_err(|e| EngineError::Interface {
            what: format!(
                "no route to multicast group {group} ({e}); name one with -interface=NAME"
            ),
        })?;
    let local = match probe.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    addrs
        .iter()
        .find(|(_, a)| *a == local)
        .cloned()
        .ok_or_else(|| EngineError::Interface {
            what: format!(
            "no interface found for the route to {group}; name one with -interface=NAME (have: {})",
            list_names(addrs)
        ),
        })
}

fn list_names(addrs: &[(String, Ipv4Addr)]) -> String {
    let names: Vec<String> = addrs.iter().map(|(n, a)| format!("{n} {a}")).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn ipv4_addresses() -> Result<Vec<(String, Ipv4Addr)>, EngineError> {
    let ifaddrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| EngineError::io("listing interfaces", std::io::Error::from(e)))?;
    let mut out = Vec::new();
    for ifa in ifaddrs {
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.push((ifa.interface_name.clone(), sin.ip()));
        }
    }
    Ok(out)
}

/// How often a thread blocked on a socket looks at its stop flag: a finished session's process
/// exits at most this long after it (it was 200 ms, a fifth of a second on every run's end).
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(20);

/// Wakes a thread blocked reading `sock` (its read returns at once, empty): Linux marks even an
/// unconnected UDP or raw socket shut for reading and wakes its readers, though the call itself
/// reports `ENOTCONN`. Sending on the socket is not affected.
pub(crate) fn wake_reader(sock: &UdpSocket) {
    let _ = socket2::SockRef::from(sock).shutdown(std::net::Shutdown::Read);
}

/// Receive buffer asked for: a burst of a whole chunk's packets at line rate
/// must fit while the receive thread is descheduled.
pub const RECV_BUFFER: usize = 32 << 20;

/// Send buffer of the sending socket: small, so a master sending faster than its own link is held
/// back by the kernel (a blocking send) before the interface's queue overflows and drops.
pub const SEND_BUFFER: usize = 256 << 10;

/// The socket that receives the session's multicast.
pub fn group_socket(
    iface: &Interface,
    group: Ipv4Addr,
    port: u16,
) -> Result<UdpSocket, EngineError> {
    let ctx = |what: &str| format!("{what} (group {group}:{port} on {})", iface.name);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| EngineError::io(ctx("opening the group socket"), e))?;
    s.set_reuse_address(true)
        .map_err(|e| EngineError::io(ctx("SO_REUSEADDR"), e))?;
    s.set_reuse_port(true)
        .map_err(|e| EngineError::io(ctx("SO_REUSEPORT"), e))?;
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    s.bind(&SockAddr::from(SocketAddrV4::new(group, port)))
        .map_err(|e| EngineError::io(ctx("binding the group socket"), e))?;
    s.set_multicast_all_v4(false)
        .map_err(|e| EngineError::io(ctx("IP_MULTICAST_ALL"), e))?;
    s.join_multicast_v4(&group, &iface.addr)
        .map_err(|e| EngineError::io(ctx("joining the multicast group"), e))?;
    s.set_read_timeout(Some(STOP_CHECK))
        .map_err(|e| EngineError::io(ctx("socket timeout"), e))?;
    Ok(s.into())
}

/// Asks the kernel to hand over GRO aggregates on `sock` (Linux 5.0 and
/// later); false where it cannot, and the socket reads datagram by datagram.
pub(crate) fn enable_gro(sock: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok()
}

/// What an endpoint says, once, when imgcast packets of another protocol version reach it: they
/// are refused, so without this a mixed room would only wait.
pub(crate) fn other_version_note(version: u8, from: SocketAddr) -> String {
    format!(
        "{from} sends imgcast protocol version {version}, this img speaks version {}: it is another \
         imgcast release and cannot join this session; run the same release on the master and the \
         clients",
        imgcast_proto::wire::VERSION
    )
}

/// When the group socket got less receive buffer than [`RECV_BUFFER`] (the
/// kernel caps `SO_RCVBUF` at `net.core.rmem_max`), the line that tells the
/// admin, with the sysctl that lifts the cap.
pub fn recv_buffer_shortfall(sock: &UdpSocket) -> Option<String> {
    // Linux reports twice what it granted (the doubling covers its bookkeeping).
    let granted = socket2::SockRef::from(sock).recv_buffer_size().ok()? / 2;
    if granted >= RECV_BUFFER {
        return None;
    }
    let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    let cap = rmem_max.map_or(String::new(), |m| format!(", net.core.rmem_max = {m}"));
    Some(format!(
        "the socket receive buffer is {} KiB{cap}, below the {} MiB that a burst at line rate \
         needs: packets will be lost at high rates. As root: sysctl -w net.core.rmem_max={RECV_BUFFER}",
        granted >> 10,
        RECV_BUFFER >> 20
    ))
}

/// The socket everything is sent from; unicast replies arrive on it. `ttl`
/// bounds how many routers the group's datagrams cross; `multicast_loop`
/// delivers them to this host's own sockets too.
pub fn unicast_socket(
    iface: &Interface,
    ttl: u32,
    multicast_loop: bool,
) -> Result<UdpSocket, EngineError> {
    let ctx = |what: &str| format!("{what} (interface {} {})", iface.name, iface.addr);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| EngineError::io(ctx("opening the unicast socket"), e))?;
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    let _ = s.set_send_buffer_size(SEND_BUFFER);
    s.bind(&SockAddr::from(SocketAddrV4::new(iface.addr, 0)))
        .map_err(|e| EngineError::io(ctx("binding the unicast socket"), e))?;
    s.set_multicast_if_v4(&iface.addr)
        .map_err(|e| EngineError::io(ctx("IP_MULTICAST_IF"), e))?;
    s.set_multicast_ttl_v4(ttl)
        .map_err(|e| EngineError::io(ctx("IP_MULTICAST_TTL"), e))?;
    s.set_multicast_loop_v4(multicast_loop)
        .map_err(|e| EngineError::io(ctx("IP_MULTICAST_LOOP"), e))?;
    s.set_read_timeout(Some(STOP_CHECK))
        .map_err(|e| EngineError::io(ctx("socket timeout"), e))?;
    Ok(s.into())
}

#[cfg(test)]
mod mac_tests {
    use super::*;

    #[test]
    fn macs_parse_strictly_and_format_back() {
        let m = parse_mac("52:54:00:AB:cd:0f").expect("valid");
        assert_eq!(m, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(format_mac(&m), "52:54:00:ab:cd:0f");
        assert_eq!(parse_mac("52-54-00-ab-cd-0f"), Some(m));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:+1",
            "52:54:00:ab:cd:f",
            "52:54:00:ab:cd:0g",
            "525400abcd0f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn loopback_has_no_mac() {
        let lo = Interface {
            name: "lo".into(),
            addr: Ipv4Addr::LOCALHOST,
            mtu: 65536,
        };
        assert_eq!(lo.mac(), None);
    }
}

#[cfg(test)]
mod wake_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_blocked_read_returns_at_once_when_woken() {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = sock.try_clone().expect("clone");
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let _ = reader.recv(&mut buf);
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        wake_reader(&sock);
        let took = thread.join().expect("reader");
        assert!(took < Duration::from_secs(2), "the read waited {took:?}");
        // The socket still sends.
        let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        sock.send_to(b"x", peer.local_addr().expect("addr"))
            .expect("send after the wake");
    }
}
