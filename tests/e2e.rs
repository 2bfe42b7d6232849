//! End-to-end tests over loopback, each run against every engine in
//! `EngineKind::ALL` (see `support::for_each_engine`).
//!
//! Behaviour a client sees is checked with a real HTTP client (`ureq`);
//! framing, headers and everything where the exact bytes matter with raw bytes
//! over a `TcpStream` (`support::RawClient`). Responses are checked field by
//! field and byte by byte against the files on disk (`support::Expected`).

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use ringserve::engine::{EngineKind, ServerConfig};
use support::{
    Expected, RawClient, Response, TempSite, TestServer, assert_strong_etag, ensure_fd_limit,
    established_server_connections, for_each_engine, get, http_agent, pattern_bytes, request,
};

/// A file of the bundled site: its URL, its path under `static/`, its type.
#[derive(Debug, Clone, Copy)]
struct SiteFile {
    url: &'static str,
    disk: &'static str,
    content_type: &'static str,
}

const INDEX: SiteFile = SiteFile {
    url: "/",
    disk: "index.html",
    content_type: "text/html; charset=utf-8",
};
const BOOK: SiteFile = SiteFile {
    url: "/book",
    disk: "book.json",
    content_type: "application/json",
};
const CSS: SiteFile = SiteFile {
    url: "/css/site.css",
    disk: "css/site.css",
    content_type: "text/css; charset=utf-8",
};
const JS: SiteFile = SiteFile {
    url: "/js/app.js",
    disk: "js/app.js",
    content_type: "text/javascript; charset=utf-8",
};
const SVG: SiteFile = SiteFile {
    url: "/img/ring.svg",
    disk: "img/ring.svg",
    content_type: "image/svg+xml; charset=utf-8",
};
const BUNDLED_FILES: [SiteFile; 5] = [INDEX, BOOK, CSS, JS, SVG];

/// The `200` response `file` must get, with the `ETag` the server gives it
/// (checked to be a strong tag; its value is the server's choice).
fn expected_ok(server: &TestServer, file: SiteFile) -> Expected {
    let response = server.connect().request(&get(file.url));
    assert_eq!(response.status, 200, "GET {}: {}", file.url, response.describe());
    let etag = assert_strong_etag(&response);
    Expected::file(server.root(), file.disk, file.content_type, &etag)
}

/// An error or redirect page fetched alone on a fresh connection, checked
/// for its status, to compare later answers with.
fn reference(server: &TestServer, raw: &[u8], status: u16) -> Response {
    let response = server.connect().request(raw);
    assert_eq!(response.status, status, "{}", response.describe());
    response
}

fn assert_small_html_error(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{}", response.describe());
    assert_eq!(response.expect_header("Content-Type"), "text/html; charset=utf-8");
    assert_eq!(response.expect_header("Server"), "ringserve");
    response.assert_date_is_now();
    let body = response.body_text();
    assert!(body.len() < 1024, "an error page of {} bytes", body.len());
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    assert!(body.contains(&status.to_string()), "{body}");
    assert_eq!(response.expect_header("Content-Length"), body.len().to_string());
}

#[test]
fn get_index_serves_the_bundled_page() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let expected = expected_ok(&server, INDEX);
        let on_disk = std::fs::read(server.root().join("index.html")).unwrap();
        assert_eq!(expected.body, on_disk);

        let response = server.connect().request(&get("/"));
        response.assert_matches(&expected, "GET /");
        assert!(response.header("Last-Modified").is_some() && response.header("ETag").is_some());

        // The same page through a real client, and by its own name.
        let mut reply = http_agent().get(server.url("/")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        let header = |name: &str| reply.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("content-type").as_deref(), Some(INDEX.content_type));
        // The client accepts gzip and decodes it, dropping the encoding and
        // length fields of the compressed page; the body is checked below.
        if header("content-encoding").is_none() {
            if let Some(length) = header("content-length") {
                assert_eq!(length, on_disk.len().to_string());
            }
        }
        assert_eq!(header("server").as_deref(), Some("ringserve"));
        assert!(header("date").is_some());
        assert_eq!(reply.body_mut().read_to_vec().unwrap(), on_disk);

        let by_name = server.connect().request(&get("/index.html"));
        by_name.assert_matches(&expected, "GET /index.html");
    });
}

#[test]
fn get_book_serves_the_json() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let expected = expected_ok(&server, BOOK);
        server
            .connect()
            .request(&get("/book"))
            .assert_matches(&expected, "GET /book");
        server
            .connect()
            .request(&get("/book.json"))
            .assert_matches(&expected, "GET /book.json");

        let mut reply = http_agent().get(server.url("/book")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        assert_eq!(reply.headers()["content-type"], "application/json");
        let text = reply.body_mut().read_to_string().unwrap();
        assert_eq!(
            text.as_bytes(),
            std::fs::read(server.root().join("book.json")).unwrap()
        );
        assert!(text.contains("\"title\": \"The Great Gatsby\""), "{text}");
    });
}

#[test]
fn assets_have_their_content_types() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        for file in [CSS, JS, SVG] {
            let expected = expected_ok(&server, file);
            server
                .connect()
                .request(&get(file.url))
                .assert_matches(&expected, file.url);
            let reply = http_agent().get(server.url(file.url)).call().unwrap();
            assert_eq!(reply.headers()["content-type"], file.content_type, "{}", file.url);
            // Percent-encoded letters name the same file.
            let encoded = file.url.replacen('s', "%73", 1);
            assert_ne!(encoded, file.url);
            server
                .connect()
                .request(&get(&encoded))
                .assert_matches(&expected, &encoded);
        }
        // The page links exactly these assets.
        let page = std::fs::read_to_string(server.root().join("index.html")).unwrap();
        for file in [CSS, JS, SVG] {
            assert!(
                page.contains(&format!("\"{}\"", file.url)),
                "index.html links {}",
                file.url
            );
        }
    });
}

#[test]
fn head_has_the_get_fields_and_no_body() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let mut client = server.connect();
        for file in BUNDLED_FILES {
            let expected = expected_ok(&server, file);
            let head = client.request(&request("HEAD", file.url, ""));
            head.assert_matches(&expected.without_body(), &format!("HEAD {}", file.url));
            // The connection is still in step: the next response is the GET's.
            client
                .request(&get(file.url))
                .assert_matches(&expected, &format!("GET {} after HEAD", file.url));
        }
        let missing = client.request(&request("HEAD", "/missing", ""));
        assert_eq!(missing.status, 404);
        assert!(missing.body.is_empty());
        assert_ne!(missing.expect_header("Content-Length"), "0");
        client
            .request(&get("/book"))
            .assert_matches(&expected_ok(&server, BOOK), "GET after HEAD 404");
        client.expect_silent_and_open(Duration::from_millis(100));

        let reply = http_agent().head(server.url("/book")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        let length = std::fs::metadata(server.root().join("book.json")).unwrap().len();
        assert_eq!(reply.headers()["content-length"], length.to_string().as_str());
    });
}

#[test]
fn unknown_path_gets_a_small_404_page() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let mut client = server.connect();
        for path in [
            "/missing",
            "/css/missing.css",
            "/book.txt",
            "/css/",
            "/img/%72ing.png",
        ] {
            let response = client.request(&get(path));
            assert_small_html_error(&response, 404);
            assert_eq!(response.header("Connection"), None, "404 keeps the connection");
        }
        client
            .request(&get("/book"))
            .assert_matches(&expected_ok(&server, BOOK), "GET after 404s");

        let mut reply = http_agent().get(server.url("/nothing/here")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 404);
        assert_eq!(reply.headers()["content-type"], "text/html; charset=utf-8");
        assert!(reply.body_mut().read_to_string().unwrap().contains("404"));
    });
}

#[test]
fn other_methods_get_405_with_allow_and_their_body_is_skipped() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let book = expected_ok(&server, BOOK);
        let mut client = server.connect();

        // A POST with a body, and a GET pipelined right behind it.
        let mut burst = request(
            "POST",
            "/book",
            "Content-Type: text/plain\r\nContent-Length: 11\r\n",
        );
        burst.extend_from_slice(b"hello world");
        burst.extend_from_slice(&get("/book"));
        client.send(&burst);
        let refused = client.read_response(false);
        assert_small_html_error(&refused, 405);
        assert_eq!(refused.expect_header("Allow"), "GET, HEAD");
        client
            .read_response(false)
            .assert_matches(&book, "GET pipelined after a POST body");

        // The body arriving in pieces, after the head, is skipped all the same.
        client.send(&request("PUT", "/", "Content-Length: 10\r\n"));
        let refused = client.read_response(false);
        assert_eq!(refused.status, 405);
        client.send(b"01234");
        thread::sleep(Duration::from_millis(20));
        client.send(b"56789");
        client.send(&get("/book"));
        client
            .read_response(false)
            .assert_matches(&book, "GET after a split PUT body");

        for method in ["DELETE", "OPTIONS", "PATCH"] {
            let response = client.request(&request(method, "/", ""));
            assert_eq!(response.status, 405, "{method}");
            assert_eq!(response.expect_header("Allow"), "GET, HEAD", "{method}");
        }
        client.expect_silent_and_open(Duration::from_millis(100));

        let mut reply = http_agent().post(server.url("/book")).send("x=1").unwrap();
        assert_eq!(reply.status().as_u16(), 405);
        assert_eq!(reply.headers()["allow"], "GET, HEAD");
        assert!(reply.body_mut().read_to_string().unwrap().contains("405"));
    });
}

#[test]
fn garbage_gets_400_and_the_connection_closes() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let garbage: [&[u8]; 7] = [
            b"garbage\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            // A target that climbs above the root, plainly and percent-encoded.
            b"GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /css/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in garbage {
            let mut client = server.connect();
            // A valid request behind the garbage must not be answered.
            client.send(raw);
            client.send(&get("/book"));
            let response = client.read_response(false);
            assert_small_html_error(&response, 400);
            assert_eq!(response.header("Connection"), Some("close"), "{raw:?}");
            client.expect_closed();
        }
    });
}

#[test]
fn a_head_split_into_single_bytes_is_assembled() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let book = expected_ok(&server, BOOK);
        let mut client = server.connect();
        let raw = request("GET", "/book", "User-Agent: trickle\r\nAccept: */*\r\n");
        let (all_but_last, last) = raw.split_at(raw.len() - 1);
        client.send_bytewise(all_but_last, Duration::from_millis(2));
        // Nothing is answered before the head is complete ...
        client.expect_silent_and_open(Duration::from_millis(100));
        client.send(last);
        // ... and then exactly the one response.
        client
            .read_response(false)
            .assert_matches(&book, "GET sent byte by byte");

        // Two pipelined requests, the boundary between them split too.
        let mut two = request("HEAD", "/book", "");
        two.extend_from_slice(&get("/book"));
        client.send_bytewise(&two, Duration::from_millis(1));
        client
            .read_response(true)
            .assert_matches(&book.without_body(), "HEAD byte by byte");
        client
            .read_response(false)
            .assert_matches(&book, "GET byte by byte");
        client.expect_silent_and_open(Duration::from_millis(100));
    });
}

/// Sends `count` requests of every kind the server answers (files, HEAD,
/// 404, 301, 405 with a body, 304, HTTP/1.0 keep-alive) in one write, and
/// checks every response, in order, field by field and byte by byte.
fn assert_pipeline_answered_in_order(engine: EngineKind, count: usize) {
    let server = TestServer::bundled(engine);
    let book = expected_ok(&server, BOOK);
    let book_etag = book.headers.iter().find(|(n, _)| n == "ETag").unwrap().1.clone();
    let mut kinds: Vec<(Vec<u8>, Expected)> = Vec::new();
    for file in BUNDLED_FILES {
        kinds.push((get(file.url), expected_ok(&server, file)));
    }
    kinds.push((request("HEAD", "/book", ""), book.without_body()));
    let not_found = reference(&server, &get("/missing"), 404);
    kinds.push((get("/missing"), Expected::same_as(&not_found)));
    let redirect = reference(&server, &get("/css"), 301);
    assert_eq!(redirect.expect_header("Location"), "/css/");
    kinds.push((get("/css"), Expected::same_as(&redirect)));
    let mut post = request("POST", "/book", "Content-Length: 5\r\n");
    post.extend_from_slice(b"a=b&c");
    let refused = reference(&server, &post, 405);
    kinds.push((post, Expected::same_as(&refused)));
    kinds.push((
        request("GET", "/book", &format!("If-None-Match: {book_etag}\r\n")),
        Expected::not_modified(server.root(), "book.json", "application/json", &book_etag),
    ));
    kinds.push((
        b"GET /book HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        book.clone().with_field("Connection", "keep-alive"),
    ));
    assert_eq!(kinds.len(), 11);

    // The kinds interleaved (7 and 11 are coprime), all in one write.
    let order: Vec<usize> = (0..count).map(|i| (i * 7) % kinds.len()).collect();
    let burst: Vec<u8> = order.iter().flat_map(|&k| kinds[k].0.clone()).collect();
    let mut client = server.connect();
    client.send(&burst);
    for (i, &k) in order.iter().enumerate() {
        let (raw, expected) = &kinds[k];
        let response = client.read_response(raw.starts_with(b"HEAD "));
        let first_line = String::from_utf8_lossy(raw.split(|&b| b == b'\r').next().unwrap()).into_owned();
        response.assert_matches(expected, &format!("response {i} of {count} ({first_line})"));
    }
    // Exactly `count` responses, and the connection is still good.
    client.expect_silent_and_open(Duration::from_millis(100));
    client
        .request(&get("/book"))
        .assert_matches(&book, "GET after the burst");
}

#[test]
fn fifty_pipelined_requests_are_answered_in_order() {
    for_each_engine(|engine| assert_pipeline_answered_in_order(engine, 50));
}

/// A burst much larger than one read (4 KiB): requests straddle reads.
#[test]
fn a_thousand_pipelined_requests_are_answered_in_order() {
    for_each_engine(|engine| assert_pipeline_answered_in_order(engine, 1000));
}

#[test]
fn keep_alive_reuses_one_connection() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let expected: Vec<(SiteFile, Expected)> = BUNDLED_FILES
            .iter()
            .map(|&file| (file, expected_ok(&server, file)))
            .collect();
        let mut client = server.connect();
        for round in 0..4 {
            for (file, expected) in &expected {
                let response = client.request(&get(file.url));
                response.assert_matches(expected, &format!("round {round}, GET {}", file.url));
                assert_eq!(response.header("Connection"), None);
            }
            // The server keeps the idle connection open between requests.
            client.expect_silent_and_open(Duration::from_millis(50));
        }
        drop(client);

        // A real client pools its connection: ten requests, one connection.
        let agent = http_agent();
        for i in 0..10 {
            let file = BUNDLED_FILES[i % BUNDLED_FILES.len()];
            let mut reply = agent.get(server.url(file.url)).call().unwrap();
            assert_eq!(reply.status().as_u16(), 200);
            let body = reply.body_mut().read_to_vec().unwrap();
            assert_eq!(body, std::fs::read(server.root().join(file.disk)).unwrap());
        }
        assert_eq!(
            established_server_connections(server.addr().port()),
            1,
            "ten keep-alive requests from one client used one connection"
        );
    });
}

#[test]
fn connection_close_is_honoured() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let book = expected_ok(&server, BOOK);
        let mut client = server.connect();
        client
            .request(&get("/book"))
            .assert_matches(&book, "GET before close");
        let mut burst = request("GET", "/book", "Connection: close\r\n");
        // Pipelined after the close: never answered.
        burst.extend_from_slice(&get("/"));
        client.send(&burst);
        let response = client.read_response(false);
        response.assert_matches(&book.clone().with_field("Connection", "close"), "GET with close");
        client.expect_closed();

        let mut client = server.connect();
        let response = client.request(&request("GET", "/missing", "Connection: keep-alive, close\r\n"));
        assert_eq!(response.status, 404);
        assert_eq!(response.header("Connection"), Some("close"));
        client.expect_closed();
    });
}

#[test]
fn a_client_that_half_closes_still_gets_its_answers() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let book = expected_ok(&server, BOOK);
        let mut client = server.connect();
        let mut burst = get("/book");
        burst.extend_from_slice(&request("HEAD", "/book", ""));
        client.send(&burst);
        client.shutdown_write();
        client
            .read_response(false)
            .assert_matches(&book, "GET before our FIN");
        client
            .read_response(true)
            .assert_matches(&book.without_body(), "HEAD before our FIN");
        client.expect_closed();
    });
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let book = expected_ok(&server, BOOK);

        let mut client = server.connect();
        let response = client.request(b"GET /book HTTP/1.0\r\n\r\n");
        assert!(
            response.status_line.starts_with("HTTP/1.1 "),
            "we answer as HTTP/1.1"
        );
        response.assert_matches(&book.clone().with_field("Connection", "close"), "HTTP/1.0 GET");
        client.expect_closed();

        let mut client = server.connect();
        let keep = book.clone().with_field("Connection", "keep-alive");
        for i in 0..3 {
            let response = client.request(b"GET /book HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            response.assert_matches(&keep, &format!("HTTP/1.0 keep-alive GET {i}"));
            client.expect_silent_and_open(Duration::from_millis(50));
        }
        let head = client.request(b"HEAD /book HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        head.assert_matches(&keep.without_body(), "HTTP/1.0 keep-alive HEAD");
        // Without the token the next HTTP/1.0 request ends the connection.
        let last = client.request(b"GET /book HTTP/1.0\r\n\r\n");
        assert_eq!(last.header("Connection"), Some("close"));
        client.expect_closed();
    });
}

#[test]
fn many_concurrent_clients_get_every_byte_right() {
    const CLIENTS: usize = 200;
    const REQUESTS_PER_CLIENT: usize = 100;
    // Both ends live in this process: two descriptors per connection.
    let limit = ensure_fd_limit(4096);
    assert!(
        limit >= (CLIENTS * 2 + 256) as u64,
        "descriptor limit {limit} is too low"
    );

    for_each_engine(|engine| {
        let config = ServerConfig {
            workers: 2,
            ..ServerConfig::loopback(engine)
        };
        let server = TestServer::start(config, &support::static_root());
        let mut plan: Vec<(Vec<u8>, Expected)> = BUNDLED_FILES
            .iter()
            .map(|&file| (get(file.url), expected_ok(&server, file)))
            .collect();
        let not_found = reference(&server, &get("/missing"), 404);
        plan.push((get("/missing"), Expected::same_as(&not_found)));
        let plan = Arc::new(plan);
        let start = Arc::new(Barrier::new(CLIENTS));

        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let plan = Arc::clone(&plan);
                let start = Arc::clone(&start);
                let addr = server.addr();
                thread::Builder::new()
                    .name(format!("client-{c}"))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        start.wait();
                        let mut client = RawClient::connect(addr);
                        for i in 0..REQUESTS_PER_CLIENT {
                            let (raw, expected) = &plan[(c + i) % plan.len()];
                            let response = client.request(raw);
                            response.assert_matches(expected, &format!("client {c}, request {i}"));
                        }
                    })
                    .expect("spawn a client thread")
            })
            .collect();
        let failed: Vec<String> = clients
            .into_iter()
            .filter_map(|handle| handle.join().err())
            .map(|payload| support::panic_message(payload.as_ref()))
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {CLIENTS} clients failed; first: {}",
            failed.len(),
            failed[0]
        );
    });
}

/// A site with a 4 MiB file of non-repeating bytes, a small file, and a
/// directory with an index.
fn generated_site() -> (TempSite, Vec<u8>) {
    let big = pattern_bytes(4 * 1024 * 1024);
    let site = TempSite::new();
    site.write("big.bin", &big)
        .write("small.txt", b"small\n")
        .write("docs/index.html", b"<p>docs</p>\n")
        .write("docs/guide/index.html", b"<p>guide</p>\n");
    (site, big)
}

#[test]
fn a_4_mib_file_is_served_intact() {
    let (site, big) = generated_site();
    for_each_engine(|engine| {
        let server = TestServer::serving(engine, site.path());
        let first = server.connect().request(&get("/big.bin"));
        assert_eq!(first.status, 200, "{}", first.describe());
        let etag = assert_strong_etag(&first);
        let expected = Expected::file(site.path(), "big.bin", "application/octet-stream", &etag);
        assert_eq!(expected.body, big);
        first.assert_matches(&expected, "GET /big.bin");

        // Pipelined large and small responses: back-pressure must keep order.
        let small = Expected::file(
            site.path(),
            "small.txt",
            "text/plain; charset=utf-8",
            &assert_strong_etag(&server.connect().request(&get("/small.txt"))),
        );
        let mut client = server.connect();
        let mut burst = get("/big.bin");
        burst.extend_from_slice(&get("/small.txt"));
        burst.extend_from_slice(&get("/big.bin"));
        burst.extend_from_slice(&request("HEAD", "/big.bin", ""));
        burst.extend_from_slice(&get("/small.txt"));
        client.send(&burst);
        client
            .read_response(false)
            .assert_matches(&expected, "pipelined big 1");
        client
            .read_response(false)
            .assert_matches(&small, "pipelined small 1");
        client
            .read_response(false)
            .assert_matches(&expected, "pipelined big 2");
        client
            .read_response(true)
            .assert_matches(&expected.without_body(), "pipelined HEAD big");
        client
            .read_response(false)
            .assert_matches(&small, "pipelined small 2");
        client.expect_silent_and_open(Duration::from_millis(50));

        // A slow reader: the server's writes must resume where they stopped.
        let mut slow = server.connect();
        slow.read_slowly(16 * 1024, Duration::from_millis(1));
        slow.send(&get("/big.bin"));
        slow.send(&get("/small.txt"));
        slow.read_response(false)
            .assert_matches(&expected, "GET /big.bin read slowly");
        slow.read_response(false)
            .assert_matches(&small, "GET /small.txt read slowly");

        let mut reply = http_agent().get(server.url("/big.bin")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        let body = reply
            .body_mut()
            .with_config()
            .limit(8 * 1024 * 1024)
            .read_to_vec()
            .unwrap();
        assert!(
            body == big,
            "ureq received {} bytes that differ from the file",
            body.len()
        );
    });
}

#[test]
fn stopping_lets_a_response_in_flight_finish() {
    let (site, _) = generated_site();
    for_each_engine(|engine| {
        let server = TestServer::serving(engine, site.path());
        let etag = assert_strong_etag(&server.connect().request(&request("HEAD", "/big.bin", "")));
        let expected = Expected::file(site.path(), "big.bin", "application/octet-stream", &etag);
        let mut idle = server.connect();
        idle.request(&get("/small.txt"));
        let mut slow = server.connect();
        slow.read_slowly(16 * 1024, Duration::from_millis(1));
        slow.send(&get("/big.bin"));
        // Wait until the response has started, then stop the server.
        let mut byte = [0u8; 1];
        slow.stream().peek(&mut byte).unwrap();
        server.trigger_shutdown();
        // The idle connection is closed, the busy one finishes its response.
        idle.expect_closed();
        slow.read_response(false)
            .assert_matches(&expected, "GET /big.bin across a stop");
        slow.expect_closed();
        // The listener closed before the idle connection did: nothing new is
        // accepted, or if the kernel still completes a handshake, answered.
        if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&server.addr(), support::IO_TIMEOUT) {
            use std::io::{Read, Write};
            stream.set_read_timeout(Some(support::IO_TIMEOUT)).unwrap();
            let _ = stream.write_all(&get("/small.txt"));
            let mut buf = [0u8; 16];
            let answered = matches!(stream.read(&mut buf), Ok(n) if n > 0);
            assert!(!answered, "a connection made after the stop was served");
        }
    });
}

#[test]
fn a_directory_without_its_slash_redirects() {
    let (site, _) = generated_site();
    for_each_engine(|engine| {
        let server = TestServer::serving(engine, site.path());
        let mut client = server.connect();
        for (target, location) in [
            ("/docs", "/docs/"),
            ("/docs?page=2", "/docs/?page=2"),
            ("/docs/guide", "/docs/guide/"),
        ] {
            let response = client.request(&get(target));
            assert_eq!(response.status_line, "HTTP/1.1 301 Moved Permanently", "{target}");
            assert_eq!(response.expect_header("Location"), location, "{target}");
            assert_eq!(response.expect_header("Content-Length"), "0");
            assert!(response.body.is_empty());
        }
        let index = client.request(&get("/docs/"));
        assert_eq!(index.status, 200);
        assert_eq!(index.body, b"<p>docs</p>\n");

        // A real client follows the redirect to the index.
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(support::IO_TIMEOUT))
                .build(),
        );
        let mut reply = agent.get(server.url("/docs/guide")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        assert_eq!(reply.body_mut().read_to_string().unwrap(), "<p>guide</p>\n");
    });
}

/// Checks that a refused request gets its error response intact and that the
/// server then closes, for a client that does not read before it has written
/// everything: `first` then `more`, sent at once, and sent in pieces with
/// pauses between them. Had the server closed with input unread (or still
/// arriving), the kernel would answer with a reset, which fails the client's
/// writes and can destroy the response before it is read.
fn assert_refused_with_linger(server: &TestServer, first: &[u8], more: &[u8], status: u16) {
    let at_once = [first, more].concat();
    let mut client = server.connect();
    client.send(&at_once);
    check_refusal(&mut client, status, "sent at once");

    let mut client = server.connect();
    client.send(first);
    for piece in more.chunks(more.len().div_ceil(4)) {
        thread::sleep(Duration::from_millis(25));
        client.send(piece);
    }
    check_refusal(&mut client, status, "sent in pieces");
}

fn check_refusal(client: &mut RawClient, status: u16, how: &str) {
    let response = client.read_response(false);
    assert_small_html_error(&response, status);
    assert_eq!(response.header("Connection"), Some("close"), "{how}");
    client.expect_closed();
}

#[test]
fn an_oversized_request_line_gets_414_then_close() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        // No line end yet: the limit (8 KiB by default) is exceeded mid-line.
        let mut line = b"GET /".to_vec();
        line.resize(9000, b'a');
        let rest = [b"a".repeat(20_000), b" HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()].concat();
        assert_refused_with_linger(&server, &line, &rest, 414);

        // A complete head with a long target.
        let long = get(&format!("/{}", "b".repeat(9000)));
        assert_refused_with_linger(&server, &long, &get("/book"), 414);
    });
}

#[test]
fn an_oversized_head_gets_431_then_close() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        let mut i = 0;
        while head.len() <= 17 * 1024 {
            head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(60)).as_bytes());
            i += 1;
        }
        let more = b"X-More: 1\r\n".repeat(2000);
        assert_refused_with_linger(&server, &head, &more, 431);

        // Too many fields in a small head.
        let fields: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_refused_with_linger(&server, &request("GET", "/", &fields), &get("/"), 431);
    });
}

#[test]
fn http2_version_gets_505_then_close() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let mut client = server.connect();
        client.send(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n");
        let response = client.read_response(false);
        assert_small_html_error(&response, 505);
        assert_eq!(response.header("Connection"), Some("close"));
        client.expect_closed();
    });
}

#[test]
fn unknown_method_gets_501_then_close() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        for raw in [
            request("BREW", "/", ""),
            request("GET", "/", "Transfer-Encoding: chunked\r\n"),
        ] {
            let mut client = server.connect();
            client.send(&raw);
            let response = client.read_response(false);
            assert_small_html_error(&response, 501);
            assert_eq!(response.header("Connection"), Some("close"));
            client.expect_closed();
        }
    });
}

#[test]
fn if_none_match_gets_304_without_body() {
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        let book = expected_ok(&server, BOOK);
        let etag = book.headers.iter().find(|(n, _)| n == "ETag").unwrap().1.clone();
        let last_modified = book
            .headers
            .iter()
            .find(|(n, _)| n == "Last-Modified")
            .unwrap()
            .1
            .clone();
        let not_modified = Expected::not_modified(server.root(), "book.json", "application/json", &etag);
        let mut client = server.connect();
        let conditionals = [
            format!("If-None-Match: {etag}\r\n"),
            format!("If-None-Match: \"other\", W/{etag}\r\n"),
            "If-None-Match: *\r\n".to_owned(),
            format!("If-Modified-Since: {last_modified}\r\n"),
        ];
        for fields in &conditionals {
            // Each 304 is followed by a GET: a 304 with a body would desync it.
            let mut burst = request("GET", "/book", fields);
            burst.extend_from_slice(&get("/book"));
            client.send(&burst);
            client
                .read_response(false)
                .assert_matches(&not_modified, fields.trim());
            client.read_response(false).assert_matches(&book, "GET after 304");
        }
        // A tag that does not match, and an older date, get the full response.
        let changed = client.request(&request("GET", "/book", "If-None-Match: \"0000\"\r\n"));
        changed.assert_matches(&book, "If-None-Match that does not match");
        let old = client.request(&request(
            "GET",
            "/book",
            "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        ));
        old.assert_matches(&book, "If-Modified-Since in the past");
        client.expect_silent_and_open(Duration::from_millis(50));
    });
}

/// `EngineKind::ALL` is what the suite iterates; make sure it is not empty
/// and that every engine in it can actually start here.
#[test]
fn every_engine_starts() {
    assert!(!EngineKind::ALL.is_empty());
    for_each_engine(|engine| {
        let server = TestServer::bundled(engine);
        assert_eq!(server.engine(), engine);
        assert!(server.addr().ip().is_loopback() && server.addr().port() != 0);
    });
}

/// A `Connection: close` (or HTTP/1.0) request with nothing behind it ends
/// with an immediate close, without lingering (`engine::policy::ending`):
/// every response still arrives whole, then a clean end of file, never a
/// reset, for a small and a 1 MiB body (several sends), many connections in
/// a row, some read only after the server has closed, and for a keep-alive
/// connection whose last request asks to close. With bytes behind the
/// request in the same write (more than one receive takes), the server
/// lingers instead: still the whole response, then the end once the client
/// is done.
#[test]
fn a_close_the_client_asked_for_delivers_the_whole_response_then_a_clean_end() {
    let site = TempSite::new();
    let small = pattern_bytes(1024);
    let large = pattern_bytes(1024 * 1024);
    site.write("small.bin", &small).write("large.bin", &large);
    let files = [("/small.bin", &small), ("/large.bin", &large)];
    let check = |response: &Response, body: &[u8], what: &str| {
        assert_eq!(response.status, 200, "{what}: {}", response.describe());
        assert_eq!(response.expect_header("Connection"), "close", "{what}");
        assert!(response.body == body, "{what}: the body differs");
    };
    for_each_engine(|engine| {
        let server = TestServer::serving(engine, site.path());
        for i in 0..48 {
            let (path, body) = files[usize::from(i % 4 == 3)];
            let raw = if i % 2 == 0 {
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            } else {
                format!("GET {path} HTTP/1.0\r\n\r\n")
            };
            let mut client = server.connect();
            client.send(raw.as_bytes());
            if i % 8 >= 6 {
                // The server sends and closes while nothing is read yet.
                thread::sleep(Duration::from_millis(30));
            }
            check(
                &client.read_response(false),
                body,
                &format!("{engine} #{i} {path}"),
            );
            client.expect_closed();
        }
        for (path, body) in files {
            let what = format!("{engine}: {path} with a request behind it");
            let mut client = server.connect();
            let mut raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").into_bytes();
            raw.extend_from_slice(b"GET /small.bin HTTP/1.1\r\nHost: a\r\nX-Pad: ");
            // More than one receive takes: closing at once would leave some
            // unread in the socket, and the kernel would reset.
            raw.extend(std::iter::repeat_n(b'p', 160 * 1024));
            client.send(&raw);
            thread::sleep(Duration::from_millis(30));
            check(&client.read_response(false), body, &what);
            client.shutdown_write();
            client.expect_closed();

            let what = format!("{engine}: {path} closing a keep-alive connection");
            let mut client = server.connect();
            let first = client.request(&get("/small.bin"));
            assert!(first.status == 200 && first.body == small, "{what}");
            client.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes());
            check(&client.read_response(false), body, &what);
            client.expect_closed();
        }
    });
}
