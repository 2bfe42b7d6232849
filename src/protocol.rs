//! What an engine drives for each connection: plain HTTP, or HTTP inside
//! TLS. The one engine-facing type that hides the difference.
//!
//! Engines call, at a few fixed points:
//! 1. [`Protocol::on_input`] with the received bytes not yet consumed; it
//!    answers into the `Output` (plain) or queues the answers (TLS) and says
//!    what to do next, as [`Session::on_input`] does;
//! 2. send the `Output` (a plain one may hold file ranges, streamed as
//!    before), then [`Protocol::pull_output`] until it says [`Pull::Done`]:
//!    for TLS this yields ciphertext to send, or a file chunk to read and
//!    hand to [`Protocol::seal_file_chunk`]; for plain HTTP it is always
//!    `Done`;
//! 3. the deadline rules take [`Protocol::session`] and
//!    [`Protocol::buffered`]; on the head deadline,
//!    [`Protocol::on_head_timeout`] (whose [`Next::Close`] means: close
//!    without a word, the TLS handshake never completed).
//!
//! Which protocol a connection speaks is fixed by the listener that
//! accepted it ([`ListenKind`]).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::files::Snapshot;
use crate::http::{Limits, Next, Observer, Output, Progress, Session};
use crate::tls::{Pull, TlsHandle, TlsSession};

/// What a listening address serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    /// Plain HTTP.
    Http,
    /// HTTPS (needs a certificate).
    Https,
    /// Plain HTTP that answers every request with a `308` to the same URL on
    /// `https://`, at this port.
    HttpRedirect { https_port: u16 },
}

/// One address to listen on, and what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub kind: ListenKind,
}

impl Listen {
    pub fn http(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            kind: ListenKind::Http,
        }
    }

    pub fn https(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            kind: ListenKind::Https,
        }
    }

    /// `http://` or `https://`, for messages.
    pub fn scheme(&self) -> &'static str {
        match self.kind {
            ListenKind::Https => "https",
            ListenKind::Http | ListenKind::HttpRedirect { .. } => "http",
        }
    }
}

#[derive(Debug)]
pub enum Protocol {
    Plain(Session),
    Tls(Box<TlsSession>),
}

impl Protocol {
    /// The protocol for a connection accepted on a `kind` listener; `None`
    /// if it is HTTPS and no TLS configuration exists (or rustls refused it).
    pub fn new(kind: ListenKind, tls: Option<&TlsHandle>) -> Option<Protocol> {
        match kind {
            ListenKind::Http => Some(Protocol::Plain(Session::new())),
            ListenKind::HttpRedirect { https_port } => {
                Some(Protocol::Plain(Session::redirecting(https_port)))
            }
            ListenKind::Https => {
                let config = tls?.current();
                TlsSession::new(config).ok().map(|s| Protocol::Tls(Box::new(s)))
            }
        }
    }

    /// A TLS connection with `config` (tests).
    pub fn tls(config: Arc<rustls::ServerConfig>) -> Option<Protocol> {
        TlsSession::new(config).ok().map(|s| Protocol::Tls(Box::new(s)))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Tls(_))
    }

    pub fn session(&self) -> &Session {
        match self {
            Protocol::Plain(session) => session,
            Protocol::Tls(tls) => tls.session(),
        }
    }

    /// Request bytes received and not yet answered, for the deadline rules,
    /// given `unconsumed` bytes the engine still holds. During a TLS
    /// handshake: none, so the handshake is bounded like a connection that
    /// has not spoken (closed silently at the head deadline).
    pub fn buffered(&self, unconsumed: usize) -> usize {
        match self {
            Protocol::Plain(_) => unconsumed,
            Protocol::Tls(tls) if tls.is_handshaking() => 0,
            Protocol::Tls(tls) => tls.buffered_plaintext() + unconsumed,
        }
    }

    /// Whether bytes this protocol took may still be answered without more
    /// input (TLS keeps decrypted requests held back by back-pressure).
    pub fn has_unanswered_input(&self) -> bool {
        match self {
            Protocol::Plain(_) => false,
            Protocol::Tls(tls) => tls.buffered_plaintext() > 0,
        }
    }

    pub fn on_input(
        &mut self,
        input: &[u8],
        snapshot: &Snapshot,
        limits: &Limits,
        out: &mut Output,
    ) -> Progress {
        self.on_input_observed(input, snapshot, limits, out, &mut ())
    }

    /// See the module doc, step 1.
    pub fn on_input_observed<O: Observer>(
        &mut self,
        input: &[u8],
        snapshot: &Snapshot,
        limits: &Limits,
        out: &mut Output,
        observer: &mut O,
    ) -> Progress {
        match self {
            Protocol::Plain(session) => session.on_input_observed(input, snapshot, limits, out, observer),
            Protocol::Tls(tls) => tls.on_input(input, snapshot, limits, observer),
        }
    }

    /// The head deadline passed with `partial` unconsumed: the `408` (or,
    /// before a TLS handshake completed, [`Next::Close`] and no output).
    pub fn on_head_timeout<O: Observer>(
        &mut self,
        partial: &[u8],
        out: &mut Output,
        observer: &mut O,
    ) -> Next {
        match self {
            Protocol::Plain(session) => session.on_head_timeout(partial, out, observer),
            Protocol::Tls(tls) => tls.on_head_timeout(observer),
        }
    }

    /// See the module doc, step 2.
    #[inline]
    pub fn pull_output(&mut self, out: &mut Output) -> Pull {
        match self {
            Protocol::Plain(_) => Pull::Done,
            Protocol::Tls(tls) => tls.pull_output(out),
        }
    }

    /// Seals a file chunk read for a [`Pull::ReadFile`]; `false`: close.
    pub fn seal_file_chunk(&mut self, data: &[u8], out: &mut Output) -> bool {
        match self {
            Protocol::Plain(_) => false,
            Protocol::Tls(tls) => tls.seal_file_chunk(data, out),
        }
    }
}
