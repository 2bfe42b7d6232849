//! systemd integration, without libsystemd: socket activation and the
//! `sd_notify` protocol, both small and stable enough to speak directly.
//!
//! - **Socket activation** ([`inherited_listener`]): when `LISTEN_PID` is
//!   this process and `LISTEN_FDS` is 1, descriptor 3 is a listening socket
//!   systemd (or `systemd-socket-activate`) opened for us. The server serves
//!   it instead of binding `--listen`; every worker accepts on a duplicate of
//!   it (one shared accept queue instead of one `SO_REUSEPORT` queue per
//!   worker). The variables are left in the environment: they name this
//!   process's PID, so no child could mistake them for its own.
//! - **Notification** ([`Notifier`]): when `NOTIFY_SOCKET` is set (a unit
//!   with `Type=notify` or `Type=notify-reload`), one datagram per state
//!   change: `READY=1` once serving, `RELOADING=1` with `MONOTONIC_USEC` when
//!   a reload starts and `READY=1` when it ends, `STOPPING=1` on the stop
//!   signal. Without `NOTIFY_SOCKET`, nothing is sent.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Descriptor 3 may be taken once: a second [`OwnedFd`] for it would close it twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The listening socket systemd passed, if any (see the module doc).
/// Errors: more than one socket, or descriptor 3 not a listening TCP socket.
pub fn inherited_listener() -> Result<Option<TcpListener>, String> {
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match count.trim().parse::<i32>() {
        Ok(0) => return Ok(None),
        Ok(1) => {}
        _ => {
            return Err(format!(
                "systemd passed LISTEN_FDS={count}: ringserve serves exactly one socket (give the socket unit one ListenStream=)"
            ));
        }
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err("the socket from systemd was already taken".to_owned());
    }
    // SAFETY: LISTEN_PID names this process, so systemd's contract is that
    // descriptor 3 is open and ours; `TAKEN` makes this the only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    check_listening_tcp(&fd).map_err(|why| format!("descriptor 3 from systemd: {why}"))?;
    let listener = TcpListener::from(fd);
    set_cloexec(&listener).map_err(|e| format!("descriptor 3 from systemd: {e}"))?;
    Ok(Some(listener))
}

fn check_listening_tcp(fd: &OwnedFd) -> Result<(), String> {
    let socket = socket2::SockRef::from(fd);
    let kind = socket.r#type().map_err(|e| format!("not a socket ({e})"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    if kind != socket2::Type::STREAM || local.as_socket().is_none() {
        return Err("not a TCP socket (use ListenStream= with an address or port)".to_owned());
    }
    if !socket.is_listener().map_err(|e| e.to_string())? {
        return Err("not listening (Accept=yes is not supported; use Accept=no)".to_owned());
    }
    Ok(())
}

fn set_cloexec(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).set_cloexec(true)
}

/// Sends `sd_notify` datagrams to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, UnixAddr)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
    /// Without it (or with one that cannot be used) a notifier that sends nothing.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.into_vec();
            let addr = match name.strip_prefix(b"@") {
                Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name),
                None => UnixAddr::from_pathname(std::ffi::OsStr::from_bytes(&name)),
            };
            let socket = UnixDatagram::unbound();
            match (addr, socket) {
                (Ok(addr), Ok(socket)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("ringserve: NOTIFY_SOCKET cannot be used: {e}");
                    None
                }
            }
        });
        Notifier { target }
    }

    /// The server is serving.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// A reload started (`READY=1` follows when it ends, whatever its outcome).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The server is stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            eprintln!("ringserve: cannot notify the service manager: {e}");
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("ringserve-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                UnixAddr::from_pathname(&path).unwrap(),
            )),
        };
        notifier.ready();
        notifier.reloading();
        notifier.stopping();
        let mut buffer = [0u8; 256];
        let mut next = || {
            let n = listener.recv(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        };
        assert!(next().starts_with("READY=1"));
        let reloading = next();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert_eq!(next(), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_socket_means_no_notifications() {
        Notifier { target: None }.ready();
    }
}
