//! Listening sockets: one per worker, all bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads incoming connections across workers
//! and no accept queue is shared between threads.
//!
//! Options set here are inherited by accepted sockets on Linux (`TCP_NODELAY`
//! among them), which saves every engine a `setsockopt` per connection.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};

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

/// Binds `count` listeners to `addr`. With port 0, the first listener picks a
/// free port and the others bind to the same one.
pub fn bind_listeners(addr: SocketAddr, count: usize, backlog: u32) -> Result<Vec<TcpListener>, BindError> {
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
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
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
}
