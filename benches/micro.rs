//! Micro-benchmarks of the sans-I/O core: what one request costs the server
//! before any byte touches a socket.
//!
//! Groups, in the order a request meets them:
//! 1. `request`: finding the end of a head and parsing it (a minimal GET, a
//!    browser GET with 12 fields), and a 16-deep pipelined burst answered by
//!    one [`Session::on_input`] call;
//! 2. `target`: normalising a request target, alone and followed by the
//!    snapshot look-up;
//! 3. `response`: one request in, one complete response out, through
//!    [`Session::on_input`] into an [`Output`] (200 for 1 KiB, 16 KiB and
//!    1 MiB bodies, 304, HEAD, 404);
//! 4. `date`: the per-thread `Date` cache, hit and re-rendered.
//!
//! Parser benches report throughput in bytes of request, the others in
//! requests (elements). Each bench checks once, before it is timed, that the
//! input produces the outcome its name claims (a bench of a 304 that quietly
//! answers 200 would measure the wrong thing).
//!
//! Timings: 1 s warm-up and 2 s measurement per bench keep the whole suite
//! near a minute on a 2-core machine; pass `--measurement-time` and
//! `--warm-up-time` to override. Compare trees with criterion's
//! `--save-baseline` / `--baseline` on a quiet machine; the regression gate
//! CI runs counts instructions instead (`benches/instructions.rs`).

mod support;

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use ringserve::files::{Resolved, Snapshot};
use ringserve::http::date::{date_line, date_line_at};
use ringserve::http::request::{Method, find_head_end, parse_request};
use ringserve::http::response::PieceRef;
use ringserve::http::target::normalize_target;
use ringserve::http::{Limits, Next, Output, Session};

use support::{
    BROWSER_GET, MINIMAL_GET, PATH_1KIB, PATH_1MIB, PATH_16KIB, PATH_INDEX, PATH_STYLESHEET, bench_snapshot,
};

const PIPELINE_DEPTH: usize = 16;

fn request_parsing(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("request");
    for (name, raw) in [("minimal_get", MINIMAL_GET), ("browser_get", BROWSER_GET)] {
        let head = parse_request(raw, &limits).expect("bench request parses");
        assert_eq!(head.method, Method::Get);
        assert_eq!(find_head_end(raw, 0), Some(raw.len()));

        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_with_input(BenchmarkId::new("find_head_end", name), raw, |b, raw| {
            b.iter(|| find_head_end(black_box(raw), 0))
        });
        group.bench_with_input(BenchmarkId::new("parse_request", name), raw, |b, raw| {
            b.iter(|| parse_request(black_box(raw), &limits).map(|head| head.head_len))
        });
    }

    // A pipelined burst: sixteen browser GETs for a 1 KiB file in one read,
    // answered by one call (the engine then writes them in one send).
    let snapshot = bench_snapshot();
    let one = String::from_utf8(BROWSER_GET.to_vec())
        .expect("ascii")
        .replacen(PATH_STYLESHEET, PATH_1KIB, 1);
    let burst = one.repeat(PIPELINE_DEPTH).into_bytes();
    let mut session = Session::new();
    let mut out = Output::with_capacity(64 * 1024);
    let answered = answer(&mut session, &burst, &snapshot, &mut out);
    assert_eq!(
        count_occurrences(&answered, b"HTTP/1.1 200 OK\r\n"),
        PIPELINE_DEPTH
    );

    group.throughput(Throughput::Elements(PIPELINE_DEPTH as u64));
    group.bench_function(BenchmarkId::new("pipelined_burst", PIPELINE_DEPTH), |b| {
        b.iter(|| {
            out.clear();
            let progress = session.on_input(black_box(&burst), &snapshot, &limits, &mut out);
            debug_assert_eq!(progress.consumed, burst.len());
            out.len()
        })
    });
    group.finish();
}

fn target_lookup(c: &mut Criterion) {
    let snapshot = bench_snapshot();
    let mut key = Vec::with_capacity(256);
    let mut group = c.benchmark_group("target");
    let targets: [(&str, &[u8]); 4] = [
        ("root", b"/"),
        ("plain", b"/assets/css/site.css"),
        ("query", b"/assets/js/app.js?v=20240101&cache=no"),
        ("dots_and_escapes", b"/assets/./img/../css/%73ite.css"),
    ];
    for (name, target) in targets {
        normalize_target(target, &mut key).expect("bench target normalises");
        group.throughput(Throughput::Bytes(target.len() as u64));
        group.bench_with_input(BenchmarkId::new("normalize", name), target, |b, target| {
            b.iter(|| {
                normalize_target(black_box(target), &mut key).ok();
                key.len()
            })
        });
    }

    // Normalise, then look up: a file, a directory index, and a miss.
    let lookups: [(&str, &[u8], bool); 3] = [
        ("file", b"/assets/css/site.css", true),
        ("directory_index", b"/about/", true),
        ("miss", b"/assets/css/missing.css", false),
    ];
    group.throughput(Throughput::Elements(1));
    for (name, target, found) in lookups {
        normalize_target(target, &mut key).expect("bench target normalises");
        assert_eq!(
            matches!(snapshot.resolve(&key), Resolved::File(_)),
            found,
            "{name}"
        );
        group.bench_with_input(
            BenchmarkId::new("normalize_resolve", name),
            target,
            |b, target| {
                b.iter(|| {
                    normalize_target(black_box(target), &mut key).ok();
                    matches!(snapshot.resolve(&key), Resolved::File(_))
                })
            },
        );
    }
    group.finish();
}

fn response_assembly(c: &mut Criterion) {
    let snapshot = bench_snapshot();
    let limits = Limits::default();
    let etag = match snapshot.resolve(PATH_1KIB.as_bytes()) {
        Resolved::File(entry) => String::from_utf8(entry.identity().etag.to_vec()).expect("ascii etag"),
        _ => panic!("{PATH_1KIB} is in the bench snapshot"),
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    let cases = [
        ("get_200_1kib", get(PATH_1KIB), "200 OK"),
        ("get_200_16kib", get(PATH_16KIB), "200 OK"),
        ("get_200_1mib", get(PATH_1MIB), "200 OK"),
        ("get_200_index", get(PATH_INDEX), "200 OK"),
        (
            "get_304",
            format!("GET {PATH_1KIB} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"),
            "304 Not Modified",
        ),
        (
            "head_200",
            format!("HEAD {PATH_1KIB} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"),
            "200 OK",
        ),
        ("get_404", get("/no/such/file.html"), "404 Not Found"),
    ];

    let mut group = c.benchmark_group("response");
    group.throughput(Throughput::Elements(1));
    for (name, request, status) in cases {
        let request = request.into_bytes();
        let mut session = Session::new();
        let mut out = Output::with_capacity(32 * 1024);
        let answered = answer(&mut session, &request, &snapshot, &mut out);
        let status_line = format!("HTTP/1.1 {status}\r\n");
        assert!(answered.starts_with(status_line.as_bytes()), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                session.on_input(black_box(&request), &snapshot, &limits, &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

fn date_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("date");
    group.throughput(Throughput::Elements(1));
    // What every response pays: a clock read and a copy from the cache.
    group.bench_function("cached", |b| b.iter(date_line));
    // What the first response of each second pays: formatting the date.
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut second = 0u64;
    assert_ne!(date_line_at(start), date_line_at(start + Duration::from_secs(1)));
    group.bench_function("rendered", |b| {
        b.iter(|| {
            second += 1;
            date_line_at(black_box(start + Duration::from_secs(second)))
        })
    });
    group.finish();
    // Leave the cache as the engines would find it.
    black_box(date_line_at(SystemTime::now()));
}

/// Runs `input` through `session` once and returns the whole output, after
/// checking that every request was consumed and the connection stays open.
fn answer(session: &mut Session, input: &[u8], snapshot: &Snapshot, out: &mut Output) -> Vec<u8> {
    out.clear();
    let progress = session.on_input(input, snapshot, &Limits::default(), out);
    assert_eq!(progress.consumed, input.len(), "bench input fully consumed");
    assert_eq!(progress.next, Next::Read, "bench connection stays open");
    let bytes: Vec<u8> = out
        .pieces()
        .flat_map(|piece| match piece {
            PieceRef::Bytes(bytes) => bytes.to_vec(),
            PieceRef::File(_) => panic!("bench files are held in memory"),
        })
        .collect();
    out.clear();
    bytes
}

fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(haystack, needle).count()
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        // Rendering criterion's HTML plots took longer than measuring here.
        .without_plots();
    targets = request_parsing, target_lookup, response_assembly, date_cache
}
criterion_main!(micro);
