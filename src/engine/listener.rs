//! Listening sockets: one per worker, all bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads incoming connections across workers
//! and no accept queue is shared between threads.
//!
//! Options set here are inherited by accepted sockets on Linux (`TCP_NODELAY`
//! among them), which saves every engine a `setsockopt` per connection.
//!
//! **Port ownership.** `SO_REUSEPORT` lets any socket of the same user join
//! the group, so a second server on the same port would silently take part
//! of the traffic. Before binding its group, a server therefore:
//! 1. claims the address among ringserve processes: it binds a Unix socket
//!    in the abstract namespace named after the address (atomic, per network
//!    namespace like the port itself, released by the kernel when the process
//!    dies), so two servers started at the same instant cannot both pass;
//! 2. binds a probe socket to the address *without* `SO_REUSEPORT` (with
//!    `SO_REUSEADDR`, so connections of an earlier run in TIME_WAIT do not
//!    block a restart): the kernel refuses it if any socket listens there,
//!    whatever its options and owner; the probe is closed at once;
//! 3. binds its own listeners with `SO_REUSEPORT`.
//!
//! What is left: a program other than ringserve that binds the port *with*
//! `SO_REUSEPORT`, as the same user, in the microseconds between steps 2 and
//! 3, would share it. Every other case is refused with "address in use".
//! Port 0 needs none of this (the kernel hands out a port nobody holds), and
//! a socket inherited from systemd is the service manager's business.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source.kind() {
            io::ErrorKind::AddrInUse => {
                write!(f, "cannot listen on {}: the address is already in use", self.addr)
            }
            io::ErrorKind::AddrNotAvailable => {
                write!(
                    f,
                    "cannot listen on {}: no local interface has this address",
                    self.addr
                )
            }
            io::ErrorKind::PermissionDenied => {
                write!(
                    f,
                    "cannot listen on {}: permission denied (ports below 1024 need privileges)",
                    self.addr
                )
            }
            _ => write!(f, "cannot listen on {}: {}", self.addr, self.source),
        }
    }
}

impl std::error::Error for BindError {}

/// The listeners of one server and its claim on their address.
#[derive(Debug)]
pub struct Listeners {
    pub sockets: Vec<TcpListener>,
    /// Held as long as the server runs (see the module doc); `None` for port 0.
    pub claim: Option<PortClaim>,
}

/// Step 1 of port ownership: an abstract Unix socket named after the address.
#[derive(Debug)]
pub struct PortClaim(#[allow(dead_code)] UnixDatagram);

impl PortClaim {
    fn take(addr: SocketAddr) -> io::Result<PortClaim> {
        let name = format!("ringserve/tcp/{addr}");
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        UnixDatagram::bind_addr(&address).map(PortClaim)
    }
}

/// Binds `count` listeners to `addr`, after making sure no other socket
/// listens there (see the module doc). With port 0, the first listener picks
/// a free port and the others bind to the same one.
pub fn bind_listeners(addr: SocketAddr, count: usize, backlog: u32) -> Result<Listeners, BindError> {
    let claim = if addr.port() == 0 {
        None
    } else {
        let claim = PortClaim::take(addr).map_err(|source| BindError { addr, source })?;
        probe_unshared(addr).map_err(|source| BindError { addr, source })?;
        Some(claim)
    };
    Ok(Listeners {
        sockets: bind_group(addr, count, backlog)?,
        claim,
    })
}

/// Step 2 of port ownership: a bind without `SO_REUSEPORT` fails if any
/// socket listens on `addr`.
fn probe_unshared(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// `count` listeners for the workers, all on one inherited socket (systemd
/// socket activation): each worker gets a duplicate descriptor of the same
/// socket, so they share its accept queue.
pub fn share_inherited(listener: &TcpListener, count: usize) -> io::Result<Vec<TcpListener>> {
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(listener).set_tcp_nodelay(true)?;
    (0..count.max(1)).map(|_| listener.try_clone()).collect()
}

fn bind_group(addr: SocketAddr, count: usize, backlog: u32) -> Result<Vec<TcpListener>, BindError> {
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let listener = bind_one(addr, backlog).map_err(|source| BindError { addr, source })?;
        if addr.port() == 0 {
            addr = listener
                .local_addr()
                .map_err(|source| BindError { addr, source })?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Sets `TCP_USER_TIMEOUT` to the send timeout on `listeners`, inherited by
/// every accepted socket: the kernel drops a connection whose sent data has
/// gone unacknowledged, or stayed unsent behind a zero window, for that long.
///
/// The engines' own send deadline covers a write that is waiting for room in
/// the socket; this covers what they cannot see: a response that fitted in the
/// kernel's send buffer (megabytes) while the client stopped reading. Without
/// it such a connection looked idle and lived until the idle timeout, then
/// lingered in FIN-WAIT-1 with its unsent data. A slow reader that keeps
/// reading keeps acknowledging, so it is never cut off.
pub fn set_send_timeout(listeners: &[TcpListener], timeout: std::time::Duration) -> io::Result<()> {
    for listener in listeners {
        socket2::SockRef::from(listener).set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Inherited by every accepted socket: responses leave without Nagle delay.
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_all_listeners() {
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 128)
            .unwrap()
            .sockets;
        let port = listeners[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let listener = bind_listeners("127.0.0.1:0".parse().unwrap(), 1, 16)
            .unwrap()
            .sockets
            .remove(0);
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(socket2::SockRef::from(&accepted).tcp_nodelay().unwrap());
    }

    #[test]
    fn accepted_sockets_inherit_the_send_timeout() {
        let listener = bind_listeners("127.0.0.1:0".parse().unwrap(), 1, 16)
            .unwrap()
            .sockets
            .remove(0);
        set_send_timeout(
            std::slice::from_ref(&listener),
            std::time::Duration::from_millis(2500),
        )
        .unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(
            socket2::SockRef::from(&accepted).tcp_user_timeout().unwrap(),
            Some(std::time::Duration::from_millis(2500))
        );
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_listeners(taken.local_addr().unwrap(), 1, 128).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }

    #[test]
    fn a_port_held_by_a_reuseport_socket_is_in_use_too() {
        // Another server's listeners (SO_REUSEPORT, same user) would accept
        // a plain reuseport bind; ours must refuse.
        let first = bind_listeners("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        let addr = first.sockets[0].local_addr().unwrap();
        let err = bind_listeners(addr, 2, 16).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
        let held = bind_listeners(free_port(), 2, 16).unwrap();
        let err = bind_listeners(held.sockets[0].local_addr().unwrap(), 1, 16).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }

    #[test]
    fn a_released_port_can_be_taken_again() {
        let addr = free_port();
        let first = bind_listeners(addr, 2, 16).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        drop(first);
        bind_listeners(addr, 2, 16).expect("a port freed by a stopped server can be reused");
    }

    #[test]
    fn inherited_sockets_are_shared_by_duplicates() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = share_inherited(&listener, 3).unwrap();
        assert_eq!(shared.len(), 3);
        for socket in &shared {
            assert_eq!(socket.local_addr().unwrap(), listener.local_addr().unwrap());
        }
    }

    fn free_port() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }
}
