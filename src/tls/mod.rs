//! HTTPS: TLS 1.3 and 1.2 around the HTTP session, without I/O.
//!
//! rustls' [`rustls::ServerConnection`] is itself sans-I/O: ciphertext in,
//! plaintext out and back. [`TlsSession`] wraps it around the HTTP
//! [`Session`], so an engine only moves ciphertext, exactly as it moves
//! plaintext for a plain connection; engines reach both through
//! [`crate::protocol::Protocol`] and have no TLS logic of their own.
//!
//! The steps, per batch of received bytes ([`TlsSession::on_input`]):
//! 1. hand all the ciphertext to rustls (`read_tls`), which decrypts each
//!    complete record; handshake messages advance the handshake;
//! 2. move the decrypted bytes into `plain_in`;
//! 3. once the handshake is done, run the HTTP session over `plain_in`
//!    (what it leaves is a partial head, kept for the next batch), and queue
//!    its responses as plaintext pieces (`pending`), in order.
//!
//! Then, until it says [`Pull::Done`], the engine asks for output
//! ([`TlsSession::pull_output`]) and sends it: handshake messages and
//! alerts rustls queued, then the pending responses sealed into records. A
//! body in memory is encrypted straight from the snapshot's refcounted bytes
//! (no plaintext copy first), at most [`SEAL_BUDGET_BYTES`] per pull so a
//! large body never doubles in memory. A body streamed from disk
//! ([`Piece::File`]) comes back as [`Pull::ReadFile`]: the engine reads that
//! chunk (at most [`FILE_CHUNK_BYTES`]) with its own file I/O and hands it
//! to [`TlsSession::seal_file_chunk`], which encrypts it into the output; so
//! a connection holds at most one chunk of plaintext and its ciphertext.
//!
//! **Deadlines**: the handshake is bounded by the head deadline. Until it
//! completes, the session reports no buffered request bytes, so the core's
//! rule ([`crate::http::deadline`]) for a connection that has not spoken
//! applies: a silent close at the head deadline (a `408` cannot be sent
//! before there is a channel to send it on: [`TlsSession::on_head_timeout`]
//! answers [`Next::Close`]).
//!
//! **Bad input**: any TLS error (plain HTTP on the TLS port, garbage, an
//! oversized or malformed handshake message) makes rustls queue a fatal
//! alert; the session then sends the alert and asks the engine to close
//! ([`Next::Close`]) at once, without touching any other connection.
//!
//! **Application protocol**: ALPN offers [`ALPN_PROTOCOLS`] (`http/1.1`);
//! what was negotiated is turned into an [`AppProtocol`] after the
//! handshake, the one place where `h2` would branch to another session type.
//!
//! **Resumption**: stateless tickets (rustls' rotating ticketer, keys
//! rotated every six hours in the process) and a bounded session cache, both
//! kept across certificate reloads ([`certs::TlsState`]).
//!
//! **Next step: kernel TLS (kTLS).** With kTLS the kernel encrypts records
//! itself, so the engines could send plaintext, and stream files with
//! `sendfile`/splice instead of read-seal-send. It cannot be built or tested
//! on the machines this was written on: their kernels have no TLS ULP
//! (`setsockopt(fd, SOL_TCP, TCP_ULP, "tls")` fails with `ENOENT`). The seam
//! is the end of the handshake, in [`TlsSession::on_input`] where
//! `is_handshaking()` turns false: there the connection would be taken apart
//! with rustls' `dangerous_extract_secrets()` (feature `secret_extraction`),
//! the engine would set `TCP_ULP` "tls" and hand the traffic keys, IVs and
//! sequence numbers to `TLS_TX`/`TLS_RX`, and the connection would continue
//! as a [`crate::protocol::Protocol::Plain`] session on a socket whose bytes
//! the kernel encrypts. (TLS 1.3 key updates and post-handshake tickets then
//! need the kernel's control-message path; rustls must not send tickets
//! after the extraction.)
//!
//! Not yet done for speed: rustls' buffered API copies each sealed record
//! once more into the engine's output; the unbuffered API
//! (`UnbufferedServerConnection`) would encrypt straight into it.

pub mod certs;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use rustls::{ServerConfig, ServerConnection};

use crate::engine::FILE_CHUNK_BYTES;
use crate::files::Snapshot;
use crate::http::response::Piece;
use crate::http::{Limits, Next, Observer, Output, Progress, Session};

pub use certs::{CertError, CertPaths, LoadedCert, TlsHandle};

/// Application protocols offered in ALPN, in order of preference. `h2`
/// would go first once there is an HTTP/2 session ([`AppProtocol`]).
pub const ALPN_PROTOCOLS: &[&[u8]] = &[b"http/1.1"];

/// Plaintext sealed into records per [`TlsSession::pull_output`]: the most
/// ciphertext a connection holds at once (the same bound as a file chunk).
pub const SEAL_BUDGET_BYTES: usize = FILE_CHUNK_BYTES;

/// What the client and server agreed to speak inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// `http/1.1` by ALPN, or no ALPN at all.
    Http1,
}

impl AppProtocol {
    /// The protocol for what ALPN negotiated (rustls refuses a handshake
    /// whose offers overlap none of [`ALPN_PROTOCOLS`]).
    pub fn negotiated(alpn: Option<&[u8]>) -> AppProtocol {
        match alpn {
            Some(b"http/1.1") | None => AppProtocol::Http1,
            Some(_) => AppProtocol::Http1,
        }
    }
}

/// A chunk of a file the engine must read, then hand to
/// [`TlsSession::seal_file_chunk`].
#[derive(Debug, Clone)]
pub struct FileChunk {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    /// At most [`FILE_CHUNK_BYTES`].
    pub len: usize,
}

/// What the engine does after [`TlsSession::pull_output`].
#[derive(Debug, Clone)]
pub enum Pull {
    /// The output holds bytes: send them, then pull again.
    Send,
    /// Read this chunk of a file, seal it ([`TlsSession::seal_file_chunk`]),
    /// send the output (which may already hold bytes), then pull again.
    ReadFile(FileChunk),
    /// Nothing more to send for now.
    Done,
}

/// How the connection's TLS stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Open,
    /// The last response is queued: send `close_notify` after it.
    CloseNotifyDue,
    /// `close_notify` (or a fatal alert) is queued; nothing follows.
    Closed,
}

/// One HTTPS connection: rustls around an HTTP [`Session`].
pub struct TlsSession {
    tls: ServerConnection,
    http: Session,
    /// Decrypted bytes the HTTP session has not consumed (a partial head, or
    /// requests held back by output back-pressure).
    plain_in: Vec<u8>,
    /// Responses not yet sealed, in order.
    pending: VecDeque<Piece>,
    /// Scratch the HTTP session answers into, reused.
    plain_out: Output,
    ending: Ending,
    /// The handshake's end has been reported to the observer.
    handshake_reported: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.tls.is_handshaking())
            .field("plain_in", &self.plain_in.len())
            .field("pending", &self.pending.len())
            .field("ending", &self.ending)
            .finish()
    }
}

/// Writes into an [`Output`] (rustls' `write_tls` target).
struct OutputWriter<'a>(&'a mut Output);

impl Write for OutputWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            self.0.push(buf);
            total += buf.len();
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsSession {
    /// A connection accepted now, with the current configuration.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        let mut tls = ServerConnection::new(config)?;
        // We bound what we hand rustls ourselves (SEAL_BUDGET_BYTES per pull).
        tls.set_buffer_limit(None);
        Ok(TlsSession {
            tls,
            http: Session::new(),
            plain_in: Vec::new(),
            pending: VecDeque::new(),
            plain_out: Output::new(),
            ending: Ending::Open,
            handshake_reported: false,
        })
    }

    pub fn session(&self) -> &Session {
        &self.http
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// What was agreed by ALPN (after the handshake).
    pub fn app_protocol(&self) -> AppProtocol {
        AppProtocol::negotiated(self.tls.alpn_protocol())
    }

    /// The negotiated TLS version, after the handshake.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    /// Decrypted request bytes waiting for the HTTP session (for the
    /// deadline rules): none during the handshake.
    pub fn buffered_plaintext(&self) -> usize {
        self.plain_in.len()
    }

    /// Takes `input` (ciphertext; always consumed whole) and answers every
    /// complete request in it; the output is then pulled with
    /// [`TlsSession::pull_output`].
    pub fn on_input<O: Observer>(
        &mut self,
        input: &[u8],
        snapshot: &Snapshot,
        limits: &Limits,
        observer: &mut O,
    ) -> Progress {
        let consumed = input.len();
        if self.ending != Ending::Open {
            // After the last response (or an alert) nothing is read.
            return Progress {
                consumed,
                next: Next::Close,
            };
        }
        let mut rest = input;
        while !rest.is_empty() {
            if self.tls.read_tls(&mut rest).is_err() {
                return self.fail(consumed, observer);
            }
            match self.tls.process_new_packets() {
                Ok(state) => {
                    let available = state.plaintext_bytes_to_read();
                    if available > 0 {
                        let start = self.plain_in.len();
                        self.plain_in.resize(start + available, 0);
                        if self.tls.reader().read_exact(&mut self.plain_in[start..]).is_err() {
                            return self.fail(consumed, observer);
                        }
                    }
                }
                Err(_) => return self.fail(consumed, observer),
            }
        }
        if self.tls.is_handshaking() {
            return Progress {
                consumed,
                next: Next::Read,
            };
        }
        // The handshake is done: the kTLS seam (see the module doc).
        if !self.handshake_reported {
            self.handshake_reported = true;
            observer.on_tls_handshake(true);
        }
        let AppProtocol::Http1 = self.app_protocol();
        let progress =
            self.http
                .on_input_observed(&self.plain_in, snapshot, limits, &mut self.plain_out, observer);
        self.plain_in.drain(..progress.consumed);
        if self.plain_in.is_empty() && self.plain_in.capacity() > 0 {
            // An idle connection holds no input buffer.
            self.plain_in = Vec::new();
        }
        self.pending.extend(self.plain_out.take_pieces());
        // The pieces share the staging buffer's allocation; a fresh (empty,
        // unallocated) one lets it be freed once they are sealed, so an idle
        // connection holds no staging memory.
        self.plain_out = Output::new();
        if matches!(progress.next, Next::Close | Next::Linger) {
            self.ending = Ending::CloseNotifyDue;
        }
        Progress {
            consumed,
            next: progress.next,
        }
    }

    /// A TLS error: rustls has queued a fatal alert; send it and close.
    fn fail<O: Observer>(&mut self, consumed: usize, observer: &mut O) -> Progress {
        if !self.handshake_reported {
            self.handshake_reported = true;
            observer.on_tls_handshake(false);
        }
        self.pending.clear();
        self.plain_in = Vec::new();
        self.ending = Ending::Closed;
        Progress {
            consumed,
            next: Next::Close,
        }
    }

    /// The head deadline passed: during the handshake, close without a
    /// word; after it, the HTTP session's `408`, sealed, then linger.
    pub fn on_head_timeout<O: Observer>(&mut self, observer: &mut O) -> Next {
        if self.tls.is_handshaking() || self.ending != Ending::Open {
            if !self.handshake_reported {
                self.handshake_reported = true;
                observer.on_tls_handshake(false);
            }
            self.ending = Ending::Closed;
            return Next::Close;
        }
        let next = self
            .http
            .on_head_timeout(&self.plain_in, &mut self.plain_out, observer);
        self.plain_in = Vec::new();
        self.pending.extend(self.plain_out.take_pieces());
        self.ending = Ending::CloseNotifyDue;
        next
    }

    /// Appends the next ciphertext to `out`; see [`Pull`].
    pub fn pull_output(&mut self, out: &mut Output) -> Pull {
        self.drain_records(out);
        let mut budget = SEAL_BUDGET_BYTES;
        while budget > 0 {
            match self.pending.front_mut() {
                None => break,
                Some(Piece::Bytes(bytes)) => {
                    let take = bytes.len().min(budget);
                    let part: Bytes = if take == bytes.len() {
                        let Some(Piece::Bytes(whole)) = self.pending.pop_front() else {
                            unreachable!("the front piece is bytes")
                        };
                        whole
                    } else {
                        bytes.split_to(take)
                    };
                    budget -= take;
                    self.seal(&part, out);
                }
                Some(Piece::File(range)) => {
                    if range.len == 0 {
                        self.pending.pop_front();
                        continue;
                    }
                    let len =
                        usize::try_from(range.len).map_or(FILE_CHUNK_BYTES, |l| l.min(FILE_CHUNK_BYTES));
                    return Pull::ReadFile(FileChunk {
                        file: Arc::clone(&range.file),
                        offset: range.offset,
                        len,
                    });
                }
            }
        }
        if self.pending.is_empty() && self.ending == Ending::CloseNotifyDue {
            self.tls.send_close_notify();
            self.ending = Ending::Closed;
            self.drain_records(out);
        }
        if out.is_empty() { Pull::Done } else { Pull::Send }
    }

    /// Seals `data`, the bytes an engine read for the [`Pull::ReadFile`]
    /// it was given, into `out`. `false` (the response cannot be completed:
    /// the file ended early or no file chunk was asked for) means close.
    pub fn seal_file_chunk(&mut self, data: &[u8], out: &mut Output) -> bool {
        let Some(Piece::File(range)) = self.pending.front_mut() else {
            return false;
        };
        if data.is_empty() || data.len() as u64 > range.len {
            return false;
        }
        range.offset += data.len() as u64;
        range.len -= data.len() as u64;
        if range.len == 0 {
            self.pending.pop_front();
        }
        self.seal(data, out);
        true
    }

    fn seal(&mut self, plain: &[u8], out: &mut Output) {
        // Cannot fail: the buffer limit is off and the handshake is done.
        let _ = self.tls.writer().write_all(plain);
        self.drain_records(out);
    }

    /// Moves every record rustls has queued into `out`.
    fn drain_records(&mut self, out: &mut Output) {
        let mut writer = OutputWriter(out);
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut writer).is_err() {
                break;
            }
        }
    }

    /// Whether the connection has nothing queued to send.
    pub fn is_output_idle(&self) -> bool {
        self.pending.is_empty() && !self.tls.wants_write() && self.ending != Ending::CloseNotifyDue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection};

    use crate::files::LoadOptions;
    use crate::http::Limits;
    use crate::tls::certs::{LoadedCert, TlsState};

    /// A server configuration for a fresh self-signed `localhost`
    /// certificate, and a client configuration that trusts it.
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let signer = certs::provider()
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            ))
            .unwrap();
        let loaded = LoadedCert {
            key: Arc::new(rustls::sign::CertifiedKey::new(vec![der.clone()], signer)),
            not_after: None,
        };
        let server = TlsState::new().unwrap().server_config(&loaded).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = ClientConfig::builder_with_provider(certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (server, Arc::new(client))
    }

    #[test]
    fn a_tls_connection_always_lingers() {
        use crate::engine::policy::{End, ending};
        let (server, _) = configs();
        let tls = crate::protocol::Protocol::tls(server).unwrap();
        assert_eq!(ending(Next::Close, &tls, 0), Some(End::Linger));
        assert_eq!(ending(Next::Linger, &tls, 0), Some(End::Linger));
    }

    /// Plays the engine: hands `input` to the session `split` bytes at a
    /// time, then pulls everything (reading file chunks with `pread`).
    fn exchange(server: &mut TlsSession, snapshot: &Snapshot, input: &[u8], split: usize) -> (Vec<u8>, Next) {
        let mut next = Next::Read;
        let mut sent = Vec::new();
        for part in input.chunks(split.max(1)) {
            let progress = server.on_input(part, snapshot, &Limits::default(), &mut ());
            assert_eq!(
                progress.consumed,
                part.len(),
                "ciphertext is always consumed whole"
            );
            next = progress.next;
            sent.extend(pull_all(server));
        }
        if input.is_empty() {
            sent.extend(pull_all(server));
        }
        (sent, next)
    }

    fn pull_all(server: &mut TlsSession) -> Vec<u8> {
        let mut sent = Vec::new();
        let mut out = Output::new();
        loop {
            match server.pull_output(&mut out) {
                Pull::Done => return sent,
                Pull::Send => {}
                Pull::ReadFile(chunk) => {
                    assert!(chunk.len <= FILE_CHUNK_BYTES);
                    let mut buffer = vec![0; chunk.len];
                    let n =
                        std::os::unix::fs::FileExt::read_at(&*chunk.file, &mut buffer, chunk.offset).unwrap();
                    assert!(server.seal_file_chunk(&buffer[..n], &mut out));
                }
            }
            assert!(out.as_contiguous().is_some(), "TLS output is plain bytes");
            sent.extend(out.to_vec_blocking().unwrap());
            out.clear();
        }
    }

    /// Runs a client against the session until `request` is answered;
    /// returns the plaintext the client received.
    fn fetch(snapshot: &Snapshot, request: &[u8], split: usize) -> Vec<u8> {
        let (server_config, client_config) = configs();
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client =
            ClientConnection::new(client_config, ServerName::try_from("localhost").unwrap()).unwrap();
        client.writer().write_all(request).unwrap();
        let mut received = Vec::new();
        for _ in 0..20 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            let (to_client, _) = exchange(&mut server, snapshot, &to_server, split);
            let mut reader = &to_client[..];
            while !reader.is_empty() {
                client.read_tls(&mut reader).unwrap();
                client.process_new_packets().unwrap();
                let _ = client.reader().read_to_end(&mut received);
            }
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
        }
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        received
    }

    #[test]
    fn a_request_is_answered_inside_tls_whatever_the_ciphertext_splits() {
        let snapshot = Snapshot::from_memory(&[("/a.txt", b"hello")], 0);
        for split in [usize::MAX, 1000, 7, 1] {
            let received = fetch(&snapshot, b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", split);
            let text = String::from_utf8_lossy(&received);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "split {split}: {text}");
            assert!(text.ends_with("\r\n\r\nhello"), "split {split}: {text}");
        }
    }

    #[test]
    fn files_on_disk_are_sealed_chunk_by_chunk() {
        let dir = std::env::temp_dir().join(format!("ringserve-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..FILE_CHUNK_BYTES * 2 + 1234)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(dir.join("big.bin"), &content).unwrap();
        let mut options = LoadOptions::new(&dir);
        options.max_cached_file_bytes = 1024;
        let snapshot = Snapshot::load(&options).unwrap();
        let received = fetch(&snapshot, b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", usize::MAX);
        let body_at = memchr::memmem::find(&received, b"\r\n\r\n").unwrap() + 4;
        assert!(received[body_at..] == content[..], "the sealed file differs");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn plain_http_and_garbage_get_an_alert_and_close() {
        let snapshot = Snapshot::from_memory(&[("/a.txt", b"hello")], 0);
        let inputs: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0xff; 100],
            &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3],
        ];
        for input in inputs {
            let mut server = TlsSession::new(configs().0).unwrap();
            let (sent, next) = exchange(&mut server, &snapshot, input, usize::MAX);
            assert_eq!(next, Next::Close, "{input:?}");
            assert_eq!(sent.first(), Some(&0x15), "an alert record for {input:?}");
            // Nothing more is read or answered.
            let progress = server.on_input(b"more", &snapshot, &Limits::default(), &mut ());
            assert_eq!(progress.next, Next::Close);
        }
    }

    #[test]
    fn the_head_deadline_during_the_handshake_closes_without_a_word() {
        let snapshot = Snapshot::from_memory(&[("/a.txt", b"hello")], 0);
        let mut server = TlsSession::new(configs().0).unwrap();
        // The start of a ClientHello.
        let (sent, next) = exchange(&mut server, &snapshot, &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01], 1);
        assert!(sent.is_empty());
        assert_eq!(next, Next::Read);
        assert!(server.is_handshaking());
        assert_eq!(
            server.buffered_plaintext(),
            0,
            "the handshake is not a partial head"
        );
        assert_eq!(server.on_head_timeout(&mut ()), Next::Close);
        assert!(pull_all(&mut server).is_empty(), "no 408 before a handshake");
    }
}
