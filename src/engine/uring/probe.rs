//! Can this process run the `uring` engine? Asked once at start by
//! `--engine auto` (the default), before any worker exists.
//!
//! Container runtimes (Docker's, containerd's and so Kubernetes' default
//! seccomp profiles), hardened kernels (`kernel.io_uring_disabled`) and old
//! kernels refuse io_uring in different ways; the only reliable question is
//! the one the engine itself asks. So the probe does what a worker does at
//! start, on a small ring:
//! 1. `io_uring_setup` with the engine's flags (`SINGLE_ISSUER`,
//!    `COOP_TASKRUN`, `SUBMIT_ALL`, and `DEFER_TASKRUN` unless switched off):
//!    ENOSYS, EPERM (seccomp, or the sysctl), EACCES, or EINVAL (a kernel
//!    before 6.1) all mean no;
//! 2. `IORING_REGISTER_PROBE`: every opcode the engine submits must be
//!    supported (accept, receive, send, sendmsg, read, timeout and its
//!    update, async cancel, close, poll). Multishot accept (5.19) and
//!    multishot receive (6.0) are flags, not opcodes; a kernel that accepts
//!    `DEFER_TASKRUN` (6.1) has both;
//! 3. registering a provided-buffer ring (5.19), as the engine does.
//!
//! A refusal is an explanation for the start line, not an error: `auto`
//! then runs the `epoll` engine. An explicit `--engine uring` does not probe;
//! it fails at worker start with the engine's own message.

use std::io;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

use super::UringOptions;
use super::buffers::{BUFFER_GROUP, BufRing};

/// The opcodes the `uring` engine submits, by name for the explanation.
const NEEDED_OPCODES: [(u8, &str); 10] = [
    (opcode::Accept::CODE, "accept"),
    (opcode::Recv::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::SendMsg::CODE, "sendmsg"),
    (opcode::Read::CODE, "read"),
    (opcode::Timeout::CODE, "timeout"),
    (opcode::TimeoutUpdate::CODE, "timeout update"),
    (opcode::AsyncCancel::CODE, "async cancel"),
    (opcode::Close::CODE, "close"),
    (opcode::PollAdd::CODE, "poll"),
];

/// `Ok` if the `uring` engine can run here with `options`; otherwise why
/// not, in words fit for the start line.
pub fn probe(options: &UringOptions) -> Result<(), String> {
    let mut builder = IoUring::<squeue::Entry, cqueue::Entry>::builder();
    builder
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_submit_all();
    if options.defer_taskrun {
        builder.setup_defer_taskrun();
    }
    let ring = builder.build(8).map_err(|e| setup_refusal(&e))?;

    let mut supported = Probe::new();
    ring.submitter()
        .register_probe(&mut supported)
        .map_err(|e| format!("the io_uring opcode probe failed ({e})"))?;
    let missing: Vec<&str> = NEEDED_OPCODES
        .iter()
        .filter(|(code, _)| !supported.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(format!("io_uring lacks the opcodes {}", missing.join(", ")));
    }

    if options.buffer_ring {
        let buffers = BufRing::new(8, 64).map_err(|e| format!("cannot allocate a buffer ring ({e})"))?;
        // SAFETY: `buffers` outlives the registration: it is unregistered
        // below, before `buffers` drops, and no operation was submitted.
        unsafe { buffers.register(&ring.submitter()) }
            .map_err(|e| format!("io_uring refused a provided-buffer ring ({e}; needs Linux 5.19)"))?;
        let _ = ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        drop(buffers);
    }
    Ok(())
}

/// Why `io_uring_setup` failed, naming the likely cause.
fn setup_refusal(error: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|value| value != "0");
    match (error.raw_os_error(), disabled) {
        (Some(libc::EPERM | libc::EACCES), Some(value)) => {
            format!("io_uring_setup: {error}; kernel.io_uring_disabled = {value}")
        }
        (Some(libc::EPERM | libc::EACCES), None) => {
            format!(
                "io_uring_setup: {error}; perhaps a seccomp filter, as container runtimes install by default"
            )
        }
        (Some(libc::ENOSYS), _) => format!("io_uring_setup: {error}; the kernel has no io_uring"),
        (Some(libc::EINVAL), _) => {
            format!("io_uring_setup: {error}; the kernel is older than 6.1 (no DEFER_TASKRUN)")
        }
        _ => format!("io_uring_setup: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_their_cause() {
        let eperm = setup_refusal(&io::Error::from_raw_os_error(libc::EPERM));
        assert!(
            eperm.contains("io_uring_setup") && eperm.contains("not permitted"),
            "{eperm}"
        );
        let enosys = setup_refusal(&io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(enosys.contains("no io_uring"), "{enosys}");
        let einval = setup_refusal(&io::Error::from_raw_os_error(libc::EINVAL));
        assert!(einval.contains("6.1"), "{einval}");
    }
}
