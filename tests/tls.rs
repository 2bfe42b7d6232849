//! HTTPS end to end, on every engine: a test CA and server certificate made
//! here (rcgen), real clients (rustls, ureq, curl, openssl s_client), and
//! the bad inputs a TLS port sees (plain HTTP, garbage, truncated and
//! oversized handshakes, clients that stop mid-handshake).
//!
//! In-process servers for behaviour; the binary for what involves the
//! command line, signals, descriptors and memory.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringserve::engine::{EngineKind, Listen, ListenKind, ServerConfig, UringOptions};
use ringserve::files::LoadOptions;
use ringserve::tls::{CertPaths, TlsHandle, certs::load_cert};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use support::process::ServerProcess;
use support::{IO_TIMEOUT, TempSite, TestServer, for_each_engine, static_root};

/// A CA and a server certificate it signed (for `localhost` and
/// `127.0.0.1`), written as PEM files in a temporary directory.
struct Pki {
    _dir: TempSite,
    ca_der: CertificateDer<'static>,
    ca_path: PathBuf,
    paths: CertPaths,
}

fn make_pki(ca_name: &str, expired: bool) -> Pki {
    let dir = TempSite::new();
    let (ca_der, ca_pem, cert_pem, key_pem) = issue(ca_name, expired);
    dir.write("ca.pem", ca_pem.as_bytes());
    dir.write("cert.pem", cert_pem.as_bytes());
    dir.write("key.pem", key_pem.as_bytes());
    Pki {
        ca_path: dir.path().join("ca.pem"),
        paths: CertPaths {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
        ca_der,
        _dir: dir,
    }
}

/// `(CA DER, CA PEM, leaf chain PEM, leaf key PEM)`; ECDSA P-256.
fn issue(ca_name: &str, expired: bool) -> (CertificateDer<'static>, String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    if expired {
        leaf_params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (ca.der().clone(), ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

fn tls_handle(pki: &Pki) -> TlsHandle {
    TlsHandle::from_cert(&load_cert(&pki.paths).unwrap()).unwrap()
}

fn https_server(engine: EngineKind, pki: &Pki, root: &Path) -> TestServer {
    TestServer::with_options(
        ServerConfig::loopback_tls(engine, tls_handle(pki)),
        &LoadOptions::new(root),
    )
}

fn client_config(cas: &[&CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add((*ca).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS client over a blocking socket, with a strict response reader.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    pending: Vec<u8>,
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsClient {
        let socket = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let connection = ClientConnection::new(Arc::clone(config), name).unwrap();
        TlsClient {
            stream: StreamOwned::new(connection, socket),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => 0,
            Err(e) => panic!("TLS read failed: {e}"),
        }
    }

    /// One response; `head_only` for HEAD requests.
    fn read_reply(&mut self, head_only: bool) -> Reply {
        let head_len = loop {
            if let Some(end) = memchr::memmem::find(&self.pending, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(self.fill() > 0, "closed before a response head");
        };
        let head = String::from_utf8(self.pending[..head_len - 4].to_vec()).unwrap();
        self.pending.drain(..head_len);
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut reply = Reply {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = if head_only || status == 304 {
            0
        } else {
            reply.header("content-length").unwrap().parse().unwrap()
        };
        while self.pending.len() < len {
            assert!(self.fill() > 0, "closed inside a body");
        }
        reply.body = self.pending.drain(..len).collect();
        reply
    }

    fn get(&mut self, path: &str) -> Reply {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        self.read_reply(false)
    }

    /// Whether the server closed: end of file (clean TLS close or not).
    fn expect_closed(&mut self) {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

/// One `GET /book` on a new connection: the status, or why it failed
/// (a certificate the client does not trust, a closed connection).
fn try_get_book(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<u16, String> {
    let mut client = TlsClient::connect(addr, config);
    client
        .stream
        .write_all(b"GET /book HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
        match client.stream.read(&mut chunk) {
            Ok(0) => return Err("closed".to_owned()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| text.into_owned())
}

fn book() -> Vec<u8> {
    std::fs::read(static_root().join("book.json")).unwrap()
}

#[test]
fn get_book_over_https_with_rustls_and_ureq_on_every_engine() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    for_each_engine(|engine| {
        let server = https_server(engine, &pki, &static_root());
        let mut client = TlsClient::connect(server.addr(), &config);
        let reply = client.get("/book");
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, book());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(
            client.stream.conn.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "ALPN agrees on HTTP/1.1"
        );

        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![
                ureq::tls::Certificate::from_der(pki.ca_der.as_ref()).to_owned(),
            ])))
            .build();
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .tls_config(tls)
                .timeout_global(Some(IO_TIMEOUT))
                .build(),
        );
        let url = format!("https://localhost:{}/book", server.addr().port());
        let body = agent.get(&url).call().unwrap().body_mut().read_to_vec().unwrap();
        assert_eq!(body, book());
        // Plain HTTP client to the HTTPS port: refused, not served.
        assert!(
            support::http_agent()
                .get(format!("http://{}/book", server.addr()))
                .call()
                .is_err()
        );
    });
}

/// Every switch of the `uring` engine ([`support::uring_variants`]: the
/// issue 15 techniques, the older `--uring-no-*` switches), each in turn and
/// issue 15's all on, over TLS: ciphertext records larger than a provided
/// buffer, pipelined requests with large heads, a head larger than a buffer,
/// keep-alive.
#[test]
fn uring_switches_serve_pipelined_large_heads_over_tls() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    let site = TempSite::new();
    let mid = support::pattern_bytes(40 * 1024);
    site.write("mid.bin", &mid)
        .write("small.txt", b"0123456789abcdef");
    for (name, options) in support::uring_variants(UringOptions::default()) {
        let mut server_config = ServerConfig::loopback_tls(EngineKind::Uring, tls_handle(&pki));
        server_config.uring = options;
        let server = TestServer::with_options(server_config, &LoadOptions::new(site.path()));
        let mut client = TlsClient::connect(server.addr(), &config);
        let mut burst = Vec::new();
        for i in 0..16 {
            let path = if i % 2 == 0 { "/small.txt" } else { "/mid.bin" };
            let pad = "p".repeat(1500 + i * 13);
            burst.extend_from_slice(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Pad: {pad}\r\n\r\n").as_bytes(),
            );
        }
        client.send(&burst);
        for i in 0..16 {
            let reply = client.read_reply(false);
            assert_eq!(reply.status, 200, "{name}: request {i}");
            if i % 2 == 0 {
                assert_eq!(reply.body, b"0123456789abcdef", "{name}: request {i}");
            } else {
                assert!(reply.body == mid, "{name}: pipelined response {i} differs");
            }
        }
        let pad = "q".repeat(10 * 1024);
        client.send(format!("GET /mid.bin HTTP/1.1\r\nHost: localhost\r\nX-Pad: {pad}\r\n\r\n").as_bytes());
        let reply = client.read_reply(false);
        assert!(
            reply.status == 200 && reply.body == mid,
            "{name}: the 10 KiB head"
        );
        assert_eq!(
            client.get("/small.txt").body,
            b"0123456789abcdef",
            "{name}: keep-alive"
        );
        server.stop();
    }
}

#[test]
fn pipelining_keep_alive_ranges_and_304_over_tls_on_every_engine() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    let site = TempSite::new();
    let big = support::pattern_bytes(300 * 1024);
    site.write("big.bin", &big)
        .write("small.txt", b"0123456789abcdef");
    for_each_engine(|engine| {
        let server = https_server(engine, &pki, site.path());
        let mut client = TlsClient::connect(server.addr(), &config);
        // Ten requests in one write, answered in order.
        let mut burst = Vec::new();
        for i in 0..10 {
            let path = if i % 2 == 0 { "/small.txt" } else { "/big.bin" };
            burst.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        }
        client.send(&burst);
        for i in 0..10 {
            let reply = client.read_reply(false);
            assert_eq!(reply.status, 200);
            if i % 2 == 0 {
                assert_eq!(reply.body, b"0123456789abcdef");
            } else {
                assert!(reply.body == big, "pipelined response {i} differs");
            }
        }
        // Keep-alive: the same connection goes on serving.
        let first = client.get("/small.txt");
        let etag = first.header("etag").unwrap().to_owned();
        client.send(
            format!("GET /small.txt HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes(),
        );
        let not_modified = client.read_reply(false);
        assert_eq!(not_modified.status, 304);
        client.send(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes=1000-1009\r\n\r\n");
        let partial = client.read_reply(false);
        assert_eq!(partial.status, 206);
        assert_eq!(partial.body, &big[1000..1010]);
        client.send(b"HEAD /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let head = client.read_reply(true);
        assert_eq!(head.header("content-length"), Some("307200"));
        // Connection: close ends with the response and a clean TLS close.
        client.send(b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        assert_eq!(client.read_reply(false).status, 200);
        client.expect_closed();
    });
}

#[test]
fn disk_backed_files_stream_over_tls_in_sealed_chunks_on_every_engine() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    let site = TempSite::new();
    // Larger than the memory cap below, so streamed from disk in chunks.
    let content = support::pattern_bytes(3 * 1024 * 1024 + 12_345);
    site.write("disk.bin", &content);
    let mut options = LoadOptions::new(site.path());
    options.max_cached_file_bytes = 64 * 1024;
    for_each_engine(|engine| {
        let server = TestServer::with_options(ServerConfig::loopback_tls(engine, tls_handle(&pki)), &options);
        let mut client = TlsClient::connect(server.addr(), &config);
        let reply = client.get("/disk.bin");
        assert_eq!(reply.status, 200);
        assert!(reply.body == content, "the streamed file differs");
        client.send(b"GET /disk.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes=2000000-2000099\r\n\r\n");
        let partial = client.read_reply(false);
        assert_eq!(partial.status, 206);
        assert_eq!(partial.body, &content[2_000_000..2_000_100]);
        // Two pipelined downloads of the streamed file, then a small one.
        client.send(
            b"GET /disk.bin HTTP/1.1\r\nHost: localhost\r\n\r\nGET /disk.bin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        for _ in 0..2 {
            assert!(client.read_reply(false).body == content);
        }
    });
}

#[test]
fn plain_and_https_listeners_side_by_side_and_the_https_redirect() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    for_each_engine(|engine| {
        // Plain beside HTTPS.
        let mut both = ServerConfig::loopback_tls(engine, tls_handle(&pki));
        both.listen.push(Listen::http(loopback));
        let server = TestServer::with_options(both, &LoadOptions::new(static_root()));
        let https = server.server().addr_of(ListenKind::Https).unwrap();
        let http = server.server().addr_of(ListenKind::Http).unwrap();
        assert_eq!(TlsClient::connect(https, &config).get("/book").body, book());
        let mut plain = support::RawClient::connect(http);
        let reply = plain.request(b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(reply.status, 200);

        // The plain listener redirecting to the HTTPS one.
        let mut redirecting = ServerConfig::loopback_tls(engine, tls_handle(&pki));
        redirecting.listen.push(Listen {
            addr: loopback,
            kind: ListenKind::HttpRedirect { https_port: 0 },
        });
        let server = TestServer::with_options(redirecting, &LoadOptions::new(static_root()));
        let https_port = server.server().addr_of(ListenKind::Https).unwrap().port();
        let http = server
            .server()
            .local_addrs()
            .iter()
            .find(|l| matches!(l.kind, ListenKind::HttpRedirect { .. }))
            .unwrap()
            .addr;
        let mut plain = support::RawClient::connect(http);
        let reply = plain.request(b"GET /docs/a%20b?x=1&y=%22 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n");
        assert_eq!(reply.status, 308);
        assert_eq!(
            reply.header("location"),
            Some(format!("https://example.com:{https_port}/docs/a%20b?x=1&y=%22").as_str())
        );
        // Keep-alive goes on; a Host that is not a plain name is refused.
        let reply = plain.request(b"HEAD / HTTP/1.1\r\nHost: [::1]\r\n\r\n");
        assert_eq!(reply.status, 308);
        assert_eq!(
            reply.header("location"),
            Some(format!("https://[::1]:{https_port}/").as_str())
        );
        let reply = plain.request(b"GET / HTTP/1.1\r\nHost: a'b\r\n\r\n");
        assert_eq!(reply.status, 400);
    });
}

#[test]
fn bad_input_on_the_tls_port_closes_at_once_and_harms_no_one_on_every_engine() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    for_each_engine(|engine| {
        let mut server_config = ServerConfig::loopback_tls(engine, tls_handle(&pki));
        server_config.timeouts.head = Duration::from_millis(1500);
        let server = TestServer::with_options(server_config, &LoadOptions::new(static_root()));
        // A client in the middle of a keep-alive conversation throughout.
        let mut bystander = TlsClient::connect(server.addr(), &config);
        assert_eq!(bystander.get("/book").status, 200);

        // The bad inputs: each gets an alert or a close well before the
        // head deadline.
        let oversized_record = {
            let mut record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
            record.extend_from_slice(&[0x01; 1024]);
            record
        };
        let oversized_handshake = {
            // A ClientHello claiming 16 MiB.
            let mut record = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff];
            record.extend_from_slice(&[0u8; 64]);
            record
        };
        let cases: [(&str, Vec<u8>); 4] = [
            ("plain HTTP", b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
            ("garbage", (0..=255u8).cycle().take(4096).collect()),
            ("an oversized record", oversized_record),
            ("an oversized handshake message", oversized_handshake),
        ];
        for (name, bytes) in &cases {
            let started = Instant::now();
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let _ = stream.write_all(bytes);
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply);
            let waited = started.elapsed();
            assert!(
                waited < Duration::from_millis(1000),
                "{name}: closed only after {waited:?}"
            );
            // Whatever came back is a TLS alert record, never HTTP.
            if !reply.is_empty() {
                assert_eq!(
                    reply[0],
                    0x15,
                    "{name}: answered with {:?}",
                    &reply[..reply.len().min(16)]
                );
            }
        }

        // A truncated handshake, then silence: cut at the head deadline.
        let started = Instant::now();
        let mut stalled = TcpStream::connect(server.addr()).unwrap();
        stalled.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
            .unwrap();
        let mut reply = Vec::new();
        let _ = stalled.read_to_end(&mut reply);
        let waited = started.elapsed();
        assert!(reply.is_empty(), "no 408 (nor anything) before a handshake");
        assert!(
            waited >= Duration::from_millis(1300) && waited < Duration::from_millis(5000),
            "cut after {waited:?}, the deadline is 1.5 s"
        );
        // A client that connects and says nothing: the same deadline.
        let started = Instant::now();
        let mut silent = TcpStream::connect(server.addr()).unwrap();
        silent.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = silent.read_to_end(&mut reply);
        assert!(started.elapsed() < Duration::from_millis(5000));

        // The bystander's connection is still fine (within its idle time).
        assert_eq!(bystander.get("/book").body, book());
    });
}

#[test]
fn a_partial_head_after_the_handshake_gets_a_408_over_tls() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    for_each_engine(|engine| {
        let mut server_config = ServerConfig::loopback_tls(engine, tls_handle(&pki));
        server_config.timeouts.head = Duration::from_millis(800);
        let server = TestServer::with_options(server_config, &LoadOptions::new(static_root()));
        let mut client = TlsClient::connect(server.addr(), &config);
        client.send(b"GET /book HTTP/1.1\r\nHost: a\r\n");
        let reply = client.read_reply(false);
        assert_eq!(reply.status, 408);
        assert_eq!(reply.header("connection"), Some("close"));
        client.expect_closed();
    });
}

// ---- the binary ----

/// The `ringserve` binary serving HTTPS on `root` with `pki`'s certificate.
fn start_server(engine: EngineKind, root: &Path, pki: &Pki, extra: &[&str]) -> ServerProcess {
    let mut command = ServerProcess::command(engine, root);
    command
        .arg("--tls-cert")
        .arg(&pki.paths.cert)
        .arg("--tls-key")
        .arg(&pki.paths.key)
        .args(extra)
        .stderr(Stdio::inherit());
    ServerProcess::spawn(command, "https")
}

fn tool_available(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn curl_with_cacert_gets_the_book_over_http_1_1_on_every_engine() {
    assert!(tool_available("curl"), "curl is required (apt-get install curl)");
    let pki = make_pki("ringserve test CA", false);
    for_each_engine(|engine| {
        let server = start_server(engine, &static_root(), &pki, &[]);
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .arg("--cacert")
            .arg(&pki.ca_path)
            .args(["--write-out", "\n%{http_version}"])
            .arg(server.url("/book"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let (body, version) = text.rsplit_once('\n').unwrap();
        assert_eq!(body.as_bytes(), book());
        assert_eq!(version, "1.1", "ALPN picks HTTP/1.1");
    });
}

/// Runs `openssl s_client` against `addr` with `args`, sending a request.
fn s_client(addr: SocketAddr, ca: &Path, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /book HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn openssl_s_client_tls_1_2_and_1_3_with_resumption_on_every_engine() {
    assert!(
        tool_available("openssl"),
        "openssl is required (apt-get install openssl)"
    );
    let pki = make_pki("ringserve test CA", false);
    for_each_engine(|engine| {
        let server = start_server(engine, &static_root(), &pki, &[]);
        let dir = TempSite::new();
        for (version, flag, name) in [("1.3", "-tls1_3", "TLSv1.3"), ("1.2", "-tls1_2", "TLSv1.2")] {
            let session = dir.path().join(format!("session-{version}.pem"));
            let session = session.to_str().unwrap();
            let first = s_client(server.addr(), &pki.ca_path, &[flag, "-sess_out", session]);
            assert!(
                first.contains(&format!("Protocol  : {name}")) || first.contains(&format!("New, {name}")),
                "{first}"
            );
            assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
            assert!(first.contains("HTTP/1.1 200 OK"), "{first}");
            assert!(first.contains("\"The Great Gatsby\""), "{first}");
            let second = s_client(server.addr(), &pki.ca_path, &[flag, "-sess_in", session]);
            assert!(
                second.contains("Reused, "),
                "TLS {version} session not resumed:\n{second}"
            );
            assert!(second.contains("HTTP/1.1 200 OK"), "{second}");
        }
        // No TLS 1.1 or older.
        let old = s_client(server.addr(), &pki.ca_path, &["-tls1_1"]);
        assert!(!old.contains("HTTP/1.1 200 OK"), "TLS 1.1 was accepted:\n{old}");
    });
}

#[test]
fn a_256_mib_file_over_tls_is_intact_with_flat_memory_on_every_engine() {
    assert!(tool_available("curl"), "curl is required (apt-get install curl)");
    let mib: u64 = std::env::var("RINGSERVE_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let pki = make_pki("ringserve test CA", false);
    let site = TempSite::new();
    let path = site.path().join("large.bin");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(mib << 20).unwrap();
        let mut offset = 0u64;
        while offset + 8 <= mib << 20 {
            file.write_all_at(&offset.to_le_bytes(), offset).unwrap();
            offset += 64 * 1024;
        }
    }
    for_each_engine(|engine| {
        let server = start_server(engine, site.path(), &pki, &["--max-cached-file", "4M"]);
        let rss_before = server.status_kib("VmRSS");
        let compare = format!(
            "curl --silent --show-error --fail --max-time 300 --cacert '{}' '{}' | cmp - '{}'",
            pki.ca_path.display(),
            server.url("/large.bin"),
            path.display()
        );
        let status = Command::new("sh").args(["-c", &compare]).status().unwrap();
        assert!(status.success(), "the download over TLS differs from the file");
        let range = Command::new("curl")
            .args([
                "--silent",
                "--fail",
                "--max-time",
                "60",
                "-r",
                "134217728-134217735",
            ])
            .arg("--cacert")
            .arg(&pki.ca_path)
            .arg(server.url("/large.bin"))
            .output()
            .unwrap();
        if mib >= 129 {
            assert_eq!(range.stdout, 134_217_728u64.to_le_bytes(), "range at 128 MiB");
        }
        let peak = server.status_kib("VmHWM");
        let grown_kib = peak.saturating_sub(rss_before);
        eprintln!(
            "{engine}: {mib} MiB over TLS; RSS {rss_before} KiB before, peak {peak} KiB (+{grown_kib} KiB)"
        );
        assert!(
            grown_kib < 32 * 1024,
            "memory grew by {grown_kib} KiB streaming {mib} MiB over TLS"
        );
    });
}

#[test]
fn a_thousand_abandoned_handshakes_leave_descriptors_at_baseline_on_every_engine() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    support::ensure_fd_limit(4096);
    for_each_engine(|engine| {
        let server = start_server(engine, &static_root(), &pki, &["--head-timeout-ms", "1000"]);
        // Warm up (lazy allocations, the first accept), then count.
        assert_eq!(
            TlsClient::connect(server.addr(), &config).get("/book").status,
            200
        );
        std::thread::sleep(Duration::from_millis(200));
        let baseline = server.open_descriptors();
        // 1,000 clients that start a handshake (a partial ClientHello) and
        // vanish: half close, half just stay silent until cut.
        let mut held = Vec::new();
        for i in 0..1000 {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            let _ = stream.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01]);
            if i % 2 == 0 {
                held.push(stream);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut open = server.open_descriptors();
        while open > baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            open = server.open_descriptors();
        }
        drop(held);
        assert!(open <= baseline, "{open} descriptors open, {baseline} before");
        assert_eq!(
            TlsClient::connect(server.addr(), &config).get("/book").status,
            200
        );
    });
}

#[test]
fn sighup_swaps_the_certificate_under_load_on_every_engine() {
    let old = make_pki("ringserve old CA", false);
    let (new_ca, _new_ca_pem, new_cert, new_key) = issue("ringserve new CA", false);
    // Clients trust both CAs: no request may fail across the swap.
    let both = client_config(&[&old.ca_der, &new_ca]);
    let only_new = client_config(&[&new_ca]);
    for_each_engine(|engine| {
        std::fs::copy(&old.paths.cert, old.paths.cert.with_extension("orig")).unwrap();
        std::fs::copy(&old.paths.key, old.paths.key.with_extension("orig")).unwrap();
        let server = start_server(engine, &static_root(), &old, &[]);
        let addr = server.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let load: Vec<_> = (0..2)
            .map(|_| {
                let (stop, served, both) = (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&both));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                        // A new connection (a new handshake) per request.
                        let reply = TlsClient::connect(addr, &both).get("/book");
                        assert_eq!(reply.status, 200);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // A bad certificate first: kept out, the old one still serves.
        std::fs::write(&old.paths.cert, b"not a certificate").unwrap();
        server.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            try_get_book(addr, &only_new).is_err(),
            "the new CA cannot verify the old certificate"
        );
        assert_eq!(
            try_get_book(addr, &both),
            Ok(200),
            "the old certificate still serves"
        );
        // Then the new pair, written together, then SIGHUP.
        std::fs::write(&old.paths.key, &new_key).unwrap();
        std::fs::write(&old.paths.cert, &new_cert).unwrap();
        server.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if try_get_book(addr, &only_new) == Ok(200) {
                break;
            }
            assert!(Instant::now() < deadline, "the new certificate was never served");
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        for thread in load {
            thread
                .join()
                .expect("a request failed across the certificate swap");
        }
        assert!(served.load(Ordering::Relaxed) > 10);
        // Restore the original pair for the next engine.
        std::fs::copy(old.paths.cert.with_extension("orig"), &old.paths.cert).unwrap();
        std::fs::copy(old.paths.key.with_extension("orig"), &old.paths.key).unwrap();
    });
}

#[test]
fn a_bad_certificate_at_start_is_one_line_and_exit_1_an_expired_one_a_warning() {
    let pki = make_pki("ringserve test CA", false);
    let other = make_pki("ringserve other CA", false);
    let run = |cert: &Path, key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ringserve"))
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let missing = pki.paths.cert.with_file_name("missing.pem");
    let cases = [
        (missing.as_path(), pki.paths.key.as_path(), "cannot read"),
        (
            pki.paths.cert.as_path(),
            other.paths.key.as_path(),
            "does not match",
        ),
        (
            pki.paths.cert.as_path(),
            pki.paths.cert.as_path(),
            "no usable PEM private key",
        ),
        (
            pki.paths.key.as_path(),
            pki.paths.key.as_path(),
            "no PEM certificate",
        ),
    ];
    for (cert, key, expected) in cases {
        let output = run(cert, key);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // Expired: a warning on stderr, and it serves.
    let expired = make_pki("ringserve test CA", true);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringserve"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"])
        .arg("--tls-cert")
        .arg(&expired.paths.cert)
        .arg("--tls-key")
        .arg(&expired.paths.key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut warning = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut warning)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("https://127.0.0.1:"), "{line}");
    assert!(warning.contains("expired"), "{warning}");
}

#[test]
fn every_uring_switch_serves_https() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    let site = TempSite::new();
    let content = support::pattern_bytes(700 * 1024);
    site.write("disk.bin", &content).write("a.txt", b"abc");
    let mut options = LoadOptions::new(site.path());
    options.max_cached_file_bytes = 64 * 1024;
    type Switch = fn(&mut ringserve::engine::UringOptions);
    let switches: [(&str, Switch); 6] = [
        ("default", |_| {}),
        ("no multishot recv", |o| o.multishot_recv = false),
        ("no buffer ring", |o| o.buffer_ring = false),
        ("no batching", |o| o.batch_sends = false),
        ("no DEFER_TASKRUN", |o| o.defer_taskrun = false),
        // Splice is for plain HTTP: a TLS connection keeps read + seal + send.
        ("splice", |o| o.splice = true),
    ];
    for (name, switch) in switches {
        let mut server_config = ServerConfig::loopback_tls(EngineKind::Uring, tls_handle(&pki));
        switch(&mut server_config.uring);
        let server = TestServer::with_options(server_config, &options);
        let mut client = TlsClient::connect(server.addr(), &config);
        client.send(
            b"GET /a.txt HTTP/1.1\r\nHost: a\r\n\r\nGET /disk.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(client.read_reply(false).body, b"abc", "{name}");
        assert!(
            client.read_reply(false).body == content,
            "{name}: the file differs"
        );
        assert_eq!(client.read_reply(false).body, b"abc", "{name}");
    }
}

#[test]
fn sessions_resume_unless_resumption_is_off() {
    use ringserve::tls::certs::TlsState;
    let pki = make_pki("ringserve test CA", false);
    let cert = load_cert(&pki.paths).unwrap();
    for (state, expected) in [
        (TlsState::new().unwrap(), rustls::HandshakeKind::Resumed),
        (TlsState::without_resumption(), rustls::HandshakeKind::Full),
    ] {
        let config = state.server_config(&cert).unwrap();
        let handle = TlsHandle::from_config(config);
        let server = TestServer::with_options(
            ServerConfig::loopback_tls(EngineKind::Uring, handle),
            &LoadOptions::new(static_root()),
        );
        // One client configuration: it keeps the tickets it was given.
        let client_config = client_config(&[&pki.ca_der]);
        let mut first = TlsClient::connect(server.addr(), &client_config);
        assert_eq!(first.get("/book").status, 200);
        assert_eq!(
            first.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        let mut second = TlsClient::connect(server.addr(), &client_config);
        assert_eq!(second.get("/book").status, 200);
        assert_eq!(second.stream.conn.handshake_kind(), Some(expected));
    }
}

#[test]
fn tls_handshakes_are_counted_in_the_metrics_on_every_engine() {
    let pki = make_pki("ringserve test CA", false);
    let config = client_config(&[&pki.ca_der]);
    for_each_engine(|engine| {
        let mut server_config = ServerConfig::loopback_tls(engine, tls_handle(&pki));
        server_config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let server = TestServer::with_options(server_config, &LoadOptions::new(static_root()));
        for _ in 0..2 {
            assert_eq!(
                TlsClient::connect(server.addr(), &config).get("/book").status,
                200
            );
        }
        let mut garbage = TcpStream::connect(server.addr()).unwrap();
        garbage.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let _ = garbage.read_to_end(&mut Vec::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        let metrics = server.server().metrics().unwrap();
        while metrics.totals().tls_handshakes != [2, 1] && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(metrics.totals().tls_handshakes, [2, 1], "[completed, failed]");
        assert!(
            metrics
                .render()
                .contains("ringserve_tls_handshakes_total{result=\"failed\"} 1\n")
        );
    });
}
