//! What a snapshot costs per file beyond its content: the bytes held for
//! paths, routes, heads, validators, descriptors and the containers around
//! them, counted exactly by a counting global allocator (no RSS noise, no
//! timing, the same figure on a busy machine).
//!
//!     cargo run --release --example snapshot-overhead            # 50,000 tiny files
//!     cargo run --release --example snapshot-overhead -- ROOT    # any tree
//!
//! Without ROOT it writes 50,000 tiny files (24–120 bytes: below
//! `MIN_COMPRESS_BYTES`, so one representation each) of a front-end mix of
//! types under a temporary directory and removes them afterwards. It loads
//! stage one (identity, what the port waits for), then both stages, and
//! prints for each: live bytes the snapshot holds, minus identity bodies in
//! memory and encoded variants, divided by the file count. "requested" is
//! what the program asked the allocator for; "chunks" rounds each request
//! the way glibc malloc does (16-byte steps, 8 bytes of header, 32 at
//! least), which is closer to what RSS pays.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ringserve::files::{LoadOptions, Snapshot};

struct Counting;

static REQUESTED: AtomicU64 = AtomicU64::new(0);
static CHUNKS: AtomicU64 = AtomicU64::new(0);

fn chunk_bytes(size: usize) -> u64 {
    (size as u64 + 8).next_multiple_of(16).max(32)
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counters are only
// bookkeeping and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        REQUESTED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk_bytes(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        REQUESTED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk_bytes(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk_bytes(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REQUESTED.fetch_add(new_size as u64, Ordering::Relaxed);
        REQUESTED.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk_bytes(new_size), Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk_bytes(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TINY_FILES: usize = 50_000;

/// Writes the tiny-file tree; returns its root.
fn tiny_tree() -> PathBuf {
    let root = std::env::temp_dir().join(format!("ringserve-overhead-{}", std::process::id()));
    let kinds = ["html", "js", "css", "json", "svg", "png", "html", "js"];
    for i in 0..TINY_FILES {
        let directory = root.join(format!("d{:02}/s{:02}", i % 37, i % 11));
        std::fs::create_dir_all(&directory).unwrap();
        let kind = kinds[i % kinds.len()];
        let body = "x".repeat(24 + (i * 7919) % 97);
        std::fs::write(directory.join(format!("{kind}{i:05}.{kind}")), body).unwrap();
    }
    root
}

fn live() -> (u64, u64) {
    (REQUESTED.load(Ordering::Relaxed), CHUNKS.load(Ordering::Relaxed))
}

fn report(stage: &str, before: (u64, u64), snapshot: &Snapshot) {
    let after = live();
    let stats = snapshot.stats();
    let content = stats.identity_bytes + stats.variant_bytes;
    let files = stats.files.max(1) as f64;
    let per_file = |live: u64| (live as f64 - content as f64) / files;
    println!(
        "{stage}: {} files, {} representations, content {} bytes (identity {} + variants {}); \
         overhead per file: {:.0} bytes requested, {:.0} bytes in malloc chunks; heads {:.0} bytes/file",
        stats.files,
        stats.files + stats.variants,
        content,
        stats.identity_bytes,
        stats.variant_bytes,
        per_file(after.0 - before.0),
        per_file(after.1 - before.1),
        stats.head_bytes as f64 / files,
    );
}

fn main() {
    let given = std::env::args_os().nth(1).map(PathBuf::from);
    let root = given.clone().unwrap_or_else(tiny_tree);
    let mut options = LoadOptions::new(&root);
    options.threads = 2;

    println!(
        "sizes: FileEntry {} B, Representation {} B, Body {} B",
        size_of::<ringserve::files::FileEntry>(),
        size_of::<ringserve::files::Representation>(),
        size_of::<ringserve::files::Body>(),
    );
    let before = live();
    let identity = Snapshot::load_identity(&options, None).expect("stage one");
    report("stage one (identity)", before, &identity);
    drop(identity);

    let before = live();
    let full = Snapshot::load(&options).expect("both stages");
    report("both stages", before, &full);
    drop(full);

    if given.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
