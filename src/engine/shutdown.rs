//! The stop signal every worker watches.
//!
//! One [`Shutdown`] is shared by the process: `main`'s signal handler (or a
//! test) triggers it once, and each worker stops accepting, lets in-flight
//! responses finish within the grace period, and returns. Tokio-based engines
//! await [`Shutdown::wait`]; a native io_uring loop polls the eventfd, which
//! becomes readable when the signal fires.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    triggered: AtomicBool,
    notify: Notify,
    eventfd: File,
}

impl Shutdown {
    pub fn new() -> io::Result<Shutdown> {
        // SAFETY: eventfd(2) takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created above and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Shutdown {
            inner: Arc::new(Inner {
                triggered: AtomicBool::new(false),
                notify: Notify::new(),
                eventfd: File::from(owned),
            }),
        })
    }

    /// Fires the signal; later calls do nothing.
    pub fn trigger(&self) {
        if !self.inner.triggered.swap(true, Ordering::AcqRel) {
            self.inner.notify.notify_waiters();
            // An eventfd write of 1 cannot fail short of counter overflow.
            let _ = (&self.inner.eventfd).write_all(&1u64.to_ne_bytes());
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// Completes once the signal has fired (at once if it already has).
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }

    /// An eventfd that is readable once the signal has fired.
    pub fn eventfd(&self) -> BorrowedFd<'_> {
        self.inner.eventfd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_after_trigger_from_another_thread() {
        let shutdown = Shutdown::new().unwrap();
        let remote = shutdown.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let trigger = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            remote.trigger();
        });
        runtime.block_on(shutdown.wait());
        trigger.join().unwrap();
        assert!(shutdown.is_triggered());
        let mut counter = [0u8; 8];
        use std::io::Read;
        (&File::from(shutdown.eventfd().try_clone_to_owned().unwrap()))
            .read_exact(&mut counter)
            .unwrap();
        assert_eq!(u64::from_ne_bytes(counter), 1);
    }
}
