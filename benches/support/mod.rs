//! What the benches share: a small, fixed static root turned into a
//! [`Snapshot`].
//!
//! The files are generated rather than taken from `static/`, so their sizes
//! are exactly the ones the benches and the comparison tool talk about
//! (1 KiB, 16 KiB: the largest body copied inline, 1 MiB: referenced) and do
//! not change when someone edits the bundled site. The directory is removed
//! as soon as the snapshot is loaded: the snapshot holds every body in
//! memory, so nothing is read from disk while measuring.

// Each bench target compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringserve::files::{LoadOptions, Snapshot};

/// URL paths of the generated files, by body size.
pub const PATH_1KIB: &str = "/1k.bin";
pub const PATH_16KIB: &str = "/16k.bin";
pub const PATH_1MIB: &str = "/1m.bin";
/// A page with a directory index, a stylesheet and a script, so the look-up
/// benches have more than one route to choose from.
pub const PATH_INDEX: &str = "/";
pub const PATH_STYLESHEET: &str = "/assets/css/site.css";

/// The smallest request a client may send.
pub const MINIMAL_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

/// What Firefox sends for a stylesheet: 12 fields, about 470 bytes, with
/// `Accept-Encoding`.
pub const BROWSER_GET: &[u8] = b"GET /assets/css/site.css HTTP/1.1\r\n\
Host: localhost:8080\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/css,*/*;q=0.1\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: http://localhost:8080/\r\n\
Connection: keep-alive\r\n\
Cookie: session=8f2c1e0b9a7d4c3e; theme=dark; consent=necessary%2Canalytics\r\n\
Sec-Fetch-Dest: style\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Site: same-origin\r\n\
Priority: u=2\r\n\
\r\n";

const FILES: &[(&str, usize)] = &[
    ("1k.bin", 1024),
    ("16k.bin", 16 * 1024),
    ("1m.bin", 1024 * 1024),
    ("index.html", 1024),
    ("assets/css/site.css", 4 * 1024),
    ("assets/js/app.js", 8 * 1024),
    ("about/index.html", 2 * 1024),
    ("book.json", 300),
];

/// The bench files' modification time, in seconds since the epoch
/// (2023-11-14T22:13:20Z).
const FIXED_MTIME_SECS: u64 = 1_700_000_000;

/// Writes the bench site to a fresh temporary directory, loads it, and
/// removes the directory again.
pub fn bench_snapshot() -> Snapshot {
    let root = scratch_dir();
    for (name, size) in FILES {
        let path = root.join(name);
        fs::create_dir_all(path.parent().expect("file has a parent")).expect("create bench dir");
        // Printable, varied bytes: a body of one repeated byte would be
        // unrealistically kind to anything that compresses or compares.
        let body: Vec<u8> = (0..*size).map(|i| b'a' + (i * 7 % 26) as u8).collect();
        fs::write(&path, body).expect("write bench file");
        // A fixed modification time: the ETag and Last-Modified derive from
        // it, and a length that changed from run to run would move the
        // instruction counts of `benches/instructions.rs` by a few.
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_modified(UNIX_EPOCH + Duration::from_secs(FIXED_MTIME_SECS)))
            .expect("set bench file mtime");
    }
    let loaded = Snapshot::load(&LoadOptions::new(&root));
    let _ = fs::remove_dir_all(&root);
    loaded.expect("load bench snapshot")
}

/// A fresh directory whose name has the same length in every run: the
/// snapshot keeps paths, and a name a digit longer shifts later heap
/// allocations, which changes `memcpy`'s alignment paths and so moves the
/// instruction counts of `benches/instructions.rs` by a few.
fn scratch_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("ringserve-bench-{:010}-{nanos:09}", std::process::id()));
    fs::create_dir_all(&dir).expect("create bench root");
    dir
}
