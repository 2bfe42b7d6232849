//! Instruction counts of the sans-I/O core under callgrind (gungraun): the
//! figures `ci/bench-gate` compares with `ci/bench-baseline.json`.
//!
//! Instructions executed do not depend on what else the machine is doing, so
//! unlike the criterion benches (`micro`, `engines`) these can be judged on a
//! shared CI machine to a fraction of a percent. Each bench runs its case
//! once, in its own process under valgrind; everything it needs (the bench
//! site, a session that has already answered the same input once, an output
//! buffer of the right capacity) is built by a setup function, which gungraun
//! leaves out of the count, and the state is handed back rather than dropped
//! inside the bench, so freeing it is not counted either.
//!
//! Groups, in the order a request meets them:
//! 1. `parse`: finding the end of a head and parsing it (a minimal GET, a
//!    12-field browser GET);
//! 2. `target`: normalising a request target followed by the snapshot
//!    look-up (a file, a directory index, a miss, dots and escapes);
//! 3. `exchange`: bytes in, complete response out, through
//!    [`Session::on_input`] into an [`Output`]: a minimal GET, a browser GET
//!    with `Accept-Encoding` (answered from the brotli variant), a 16-deep
//!    pipelined burst, 304, one range, 404, HEAD, and 200 for 1 KiB and 1 MiB
//!    bodies (response assembly: copied inline, referenced).
//!
//! No engine runs here: a whole request cycle through an engine is mostly
//! kernel work, which callgrind does not see, and the `uring` engine's
//! io_uring calls are not supported by valgrind 3.19. The engines' cost in
//! syscalls per request is counted by `benches/syscalls.rs` instead.
//!
//! Run with `cargo bench --bench instructions` (needs valgrind and
//! `gungraun-runner` of the same version as the `gungraun` dev-dependency;
//! `ci/bench-gate` installs both when missing).

mod support;

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gungraun::{Callgrind, LibraryBenchmarkConfig, library_benchmark, library_benchmark_group, main};

use ringserve::files::{Resolved, Snapshot};
use ringserve::http::date::date_line;
use ringserve::http::request::{Method, find_head_end, parse_request};
use ringserve::http::response::PieceRef;
use ringserve::http::target::normalize_target;
use ringserve::http::{Limits, Next, Output, Session};

use support::{BROWSER_GET, MINIMAL_GET, PATH_1KIB, PATH_1MIB, PATH_INDEX, PATH_STYLESHEET, bench_snapshot};

const PIPELINE_DEPTH: usize = 16;

/// How far into a second the setup may prime the `Date` cache (see
/// [`exchange_of`]).
const DATE_SAFE_MS: u32 = 800;

// ---- parse -----------------------------------------------------------------

fn head(raw: &'static [u8]) -> &'static [u8] {
    let head = parse_request(raw, &Limits::default()).expect("bench request parses");
    assert_eq!(head.method, Method::Get);
    raw
}

#[library_benchmark]
#[bench::minimal_get(args = (MINIMAL_GET), setup = head)]
#[bench::browser_get(args = (BROWSER_GET), setup = head)]
fn parse(raw: &'static [u8]) -> (Option<usize>, usize) {
    let limits = Limits::default();
    let end = find_head_end(black_box(raw), 0);
    let parsed = parse_request(black_box(raw), &limits).map_or(0, |head| head.head_len);
    (end, parsed)
}

// ---- target ----------------------------------------------------------------

/// A snapshot, a key buffer with room, and the target to look up.
struct Lookup {
    snapshot: Snapshot,
    key: Vec<u8>,
    target: &'static [u8],
}

fn lookup(target: &'static [u8], found: bool) -> Lookup {
    let snapshot = bench_snapshot();
    let mut key = Vec::with_capacity(256);
    normalize_target(target, &mut key).expect("bench target normalises");
    assert_eq!(matches!(snapshot.resolve(&key), Resolved::File(_)), found);
    key.clear();
    Lookup {
        snapshot,
        key,
        target,
    }
}

#[library_benchmark]
#[bench::file(args = (b"/assets/css/site.css", true), setup = lookup)]
#[bench::directory_index(args = (b"/about/", true), setup = lookup)]
#[bench::miss(args = (b"/assets/css/missing.css", false), setup = lookup)]
#[bench::dots_and_escapes(args = (b"/assets/./img/../css/%73ite.css", true), setup = lookup)]
fn target(mut state: Lookup) -> (Lookup, bool) {
    normalize_target(black_box(state.target), &mut state.key).ok();
    let found = matches!(state.snapshot.resolve(&state.key), Resolved::File(_));
    (state, found)
}

// ---- exchange --------------------------------------------------------------

/// Everything one `Session::on_input` call needs, already used once for the
/// same input so that buffers have their final capacity.
struct Exchange {
    snapshot: Snapshot,
    session: Session,
    limits: Limits,
    input: Vec<u8>,
    out: Output,
}

/// Builds the exchange and checks that `input` gets `responses` responses,
/// the first with `status` (a bench of a 304 that quietly answers 200 would
/// count the wrong thing).
fn exchange_of(input: Vec<u8>, status: &str, responses: usize) -> Exchange {
    let snapshot = bench_snapshot();
    let mut state = Exchange {
        snapshot,
        session: Session::new(),
        limits: Limits::default(),
        input,
        out: Output::with_capacity(64 * 1024),
    };
    let progress = state
        .session
        .on_input(&state.input, &state.snapshot, &state.limits, &mut state.out);
    assert_eq!(progress.consumed, state.input.len(), "bench input fully consumed");
    assert_eq!(progress.next, Next::Read, "bench connection stays open");
    let bytes: Vec<u8> = state
        .out
        .pieces()
        .flat_map(|piece| match piece {
            PieceRef::Bytes(bytes) => bytes.to_vec(),
            PieceRef::File(_) => panic!("bench files are held in memory"),
        })
        .collect();
    let status_line = format!("HTTP/1.1 {status}\r\n");
    assert!(bytes.starts_with(status_line.as_bytes()), "expected {status}");
    let count = memchr::memmem::find_iter(&bytes, b"HTTP/1.1 ").count();
    assert!(count >= responses, "expected {responses} responses, saw {count}");
    state.out.clear();
    // The Date line is rendered once a second per thread: render it now, in
    // the first 800 ms of a second, so the bench (milliseconds later) finds
    // it cached, as nearly every request does. Rendered late in a second, the
    // bench could cross into the next one and count a rendering too: ~900
    // instructions, seen once in 100 cases before this wait.
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_millis());
    if into_second >= DATE_SAFE_MS {
        std::thread::sleep(Duration::from_millis(u64::from(1_001 - into_second)));
    }
    black_box(date_line());
    state
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
}

fn minimal_get() -> Exchange {
    exchange_of(MINIMAL_GET.to_vec(), "200 OK", 1)
}

fn browser_get() -> Exchange {
    exchange_of(BROWSER_GET.to_vec(), "200 OK", 1)
}

fn pipelined() -> Exchange {
    let one = String::from_utf8(BROWSER_GET.to_vec())
        .expect("ascii")
        .replacen(PATH_STYLESHEET, PATH_1KIB, 1);
    exchange_of(one.repeat(PIPELINE_DEPTH).into_bytes(), "200 OK", PIPELINE_DEPTH)
}

fn not_modified() -> Exchange {
    let snapshot = bench_snapshot();
    let etag = match snapshot.resolve(PATH_1KIB.as_bytes()) {
        Resolved::File(entry) => String::from_utf8(entry.identity().etag.to_vec()).expect("ascii etag"),
        _ => panic!("{PATH_1KIB} is in the bench snapshot"),
    };
    let request = format!("GET {PATH_1KIB} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n");
    exchange_of(request.into_bytes(), "304 Not Modified", 1)
}

fn single_range() -> Exchange {
    let request = format!("GET {PATH_1KIB} HTTP/1.1\r\nHost: localhost\r\nRange: bytes=100-299\r\n\r\n");
    exchange_of(request.into_bytes(), "206 Partial Content", 1)
}

fn not_found() -> Exchange {
    exchange_of(get("/no/such/file.html").into_bytes(), "404 Not Found", 1)
}

fn head_request() -> Exchange {
    let request = format!("HEAD {PATH_1KIB} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    exchange_of(request.into_bytes(), "200 OK", 1)
}

fn get_1kib() -> Exchange {
    exchange_of(get(PATH_1KIB).into_bytes(), "200 OK", 1)
}

fn get_1mib() -> Exchange {
    exchange_of(get(PATH_1MIB).into_bytes(), "200 OK", 1)
}

fn get_index() -> Exchange {
    exchange_of(get(PATH_INDEX).into_bytes(), "200 OK", 1)
}

#[library_benchmark]
#[bench::minimal_get(setup = minimal_get)]
#[bench::browser_get_br(setup = browser_get)]
#[bench::pipelined_16(setup = pipelined)]
#[bench::not_modified_304(setup = not_modified)]
#[bench::range_206(setup = single_range)]
#[bench::not_found_404(setup = not_found)]
#[bench::head_200(setup = head_request)]
#[bench::get_200_1kib(setup = get_1kib)]
#[bench::get_200_1mib(setup = get_1mib)]
#[bench::get_200_index(setup = get_index)]
fn exchange(mut state: Exchange) -> Exchange {
    let progress = state.session.on_input(
        black_box(&state.input),
        &state.snapshot,
        &state.limits,
        &mut state.out,
    );
    black_box(progress.consumed);
    state
}

library_benchmark_group!(name = core; benchmarks = parse, target, exchange);

main!(
    // Instruction counts are all the gate reads; the cache simulation would
    // only make valgrind slower.
    config = LibraryBenchmarkConfig::default().tool(Callgrind::with_args(["--cache-sim=no"]));
    library_benchmark_groups = core
);
