//! Building a [`Snapshot`] from a directory, in two stages.
//!
//! Stage one ([`Snapshot::load_identity`]) is what the port waits for: everything
//! needed to answer every request correctly.
//! 1. read the cache policy (`--cache-control`, `--config`), canonicalise the
//!    root (a missing or non-directory root is a clear error);
//! 2. walk it, following symlinks, skipping dotfiles and dot-directories unless
//!    enabled, and skipping anything whose real path lies outside the root
//!    (a symlink to `/etc` is never loaded, so it can never be served); with
//!    a memory budget that is not strict, mark the largest files to be
//!    served from disk until the rest fits (`fit_budget`);
//! 3. read every regular file, in parallel: files up to
//!    `max_cached_file_bytes` into memory, larger ones only hashed (in
//!    bounded chunks, one read) and kept open; each gets its content hash
//!    (`ETag`). On a reload, a file whose hash did not change keeps the
//!    previous snapshot's body (read into a reusable buffer, not a copy);
//! 4. generate directory listings, if enabled;
//! 5. build each file's identity representation and heads ([`super::head`],
//!    with its cache policy and extra headers, [`super::cache_rules`]); a
//!    file that will have variants is marked pending and its heads already
//!    carry `Vary: Accept-Encoding`. An unchanged file keeps its previous
//!    entry whole (variants and heads);
//! 6. build the routes: exact paths, then directory indexes, then clean URLs,
//!    then listings, then directory redirects, each only where an earlier one
//!    did not claim the path; then the SPA fallback and the custom 404 page.
//!
//! Stage two ([`Snapshot::with_variants`], in the background) completes step 5 for
//! the pending files: precompressed variants ([`super::variants`]), from
//! siblings or compressed here, and the heads of each; routes are shared.
//!
//! Steps 3 and 5 run on every CPU the process may use (`std::thread::scope`),
//! since reading, hashing and compressing a large build folder is what makes
//! a start or a reload slow. Each stage reports itself ([`super::progress`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::cache_rules::{ConfigError, HeaderPolicy};
use super::head::{self, HeadFields};
use super::listing::{self, ListingItem};
use super::progress::Progress;
use super::variants;
use super::{
    Body, DiskFile, Encoding, FileEntry, FileIdentity, Representation, Route, Snapshot, SnapshotStats,
};

/// Extensions a clean URL may leave out (`/book` → `book.json`).
const CLEAN_URL_EXTENSIONS: [&str; 3] = ["html", "htm", "json"];
/// Files larger than this stay on disk and are streamed.
pub const DEFAULT_MAX_CACHED_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// What an entry and its heads are assumed to cost when deciding which files
/// fit the memory budget: `examples/snapshot-overhead.rs` measures 519 bytes
/// per file with one representation (214 of them heads), everything but the
/// body counted.
const HEAD_ESTIMATE_BYTES: u64 = 512;
/// Buffer for hashing a file that stays on disk: bounded, whatever its size.
const HASH_CHUNK_BYTES: usize = 1024 * 1024;
/// The name of the custom not-found page at the root.
const NOT_FOUND_PAGE: &[u8] = b"/404.html";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub root: PathBuf,
    /// Serve files and directories whose name starts with `.`.
    pub serve_dotfiles: bool,
    /// Load symlinks whose targets lie outside the root (their target's
    /// content, under the link's path); by default they are left out.
    pub follow_symlinks: bool,
    /// File names that a directory's `/` serves, in order of preference.
    pub index_names: Vec<String>,
    /// `/dir` → `301` to `/dir/` (otherwise `/dir` is not found).
    pub redirect_directories: bool,
    /// A file (relative to the root) served with 200 for unknown paths whose
    /// request accepts HTML: a single-page application's entry point.
    pub fallback: Option<String>,
    /// Generate an HTML listing for directories without an index file.
    pub directory_listing: bool,
    /// Files larger than this are not held in memory but streamed from disk.
    pub max_cached_file_bytes: u64,
    /// The most bytes the snapshot may hold in memory (`None`: no limit).
    /// A tree that does not fit is served with its largest files from disk,
    /// and variants that do not fit are left out ...
    pub memory_budget_bytes: Option<u64>,
    /// ... unless this is set: then a load that does not fit fails.
    pub memory_budget_strict: bool,
    /// Build gzip and brotli variants of compressible files (siblings such as
    /// `app.js.gz` are used either way).
    pub precompress: bool,
    /// `Cache-Control` for ordinary files (`--cache-control`).
    pub cache_control: Option<String>,
    /// The TOML file with cache and header rules (`--config`), read on every
    /// load, so a reload picks up its changes too.
    pub config_file: Option<PathBuf>,
    /// Threads that read and compress (0: one per CPU the process may use).
    pub threads: usize,
    /// Report each stage on stderr (and a progress line on a terminal).
    pub progress: bool,
    /// Tests only: the background stage waits this long before it starts
    /// (a reload request ends the wait), so a test can act while it runs.
    #[doc(hidden)]
    pub variants_delay_ms: u64,
    /// Answer health checks on this path (`--health`, `--health-path`):
    /// see [`crate::http::health`].
    pub health_path: Option<String>,
}

impl LoadOptions {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LoadOptions {
            root: root.into(),
            serve_dotfiles: false,
            follow_symlinks: false,
            index_names: vec!["index.html".to_owned()],
            redirect_directories: true,
            fallback: None,
            directory_listing: false,
            max_cached_file_bytes: DEFAULT_MAX_CACHED_FILE_BYTES,
            memory_budget_bytes: None,
            memory_budget_strict: false,
            precompress: true,
            cache_control: None,
            config_file: None,
            threads: 0,
            progress: false,
            variants_delay_ms: 0,
            health_path: None,
        }
    }
}

#[derive(Debug)]
pub enum LoadError {
    RootMissing(PathBuf, io::Error),
    RootNotDirectory(PathBuf),
    Read(PathBuf, io::Error),
    Config(ConfigError),
    /// The snapshot needs more memory than `--memory-budget` allows.
    OverBudget {
        budget: u64,
        /// Bytes already held when the budget was exceeded (a lower bound).
        needed_at_least: u64,
    },
    FallbackMissing(String),
    /// Loading panicked (a bug); the message is the panic's.
    Panicked(String),
    /// The background stage stopped because a reload was requested.
    Superseded,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::RootMissing(path, e) => {
                write!(f, "static root {} cannot be opened: {e}", path.display())
            }
            LoadError::RootNotDirectory(path) => {
                write!(f, "static root {} is not a directory", path.display())
            }
            LoadError::Read(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            LoadError::Config(e) => e.fmt(f),
            LoadError::OverBudget {
                budget,
                needed_at_least,
            } => write!(
                f,
                "the snapshot needs more than the memory budget of {budget} bytes \
                 (at least {needed_at_least} bytes); raise --memory-budget, or lower \
                 --max-cached-file so that more files are streamed from disk"
            ),
            LoadError::FallbackMissing(name) => {
                write!(f, "--fallback {name}: no such file in the static root")
            }
            LoadError::Panicked(message) => write!(f, "loading panicked: {message}"),
            LoadError::Superseded => f.write_str("stopped for a newer reload"),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> Self {
        LoadError::Config(e)
    }
}

/// A file found by the walk.
struct FoundFile {
    path: PathBuf,
    url_path: Vec<u8>,
    /// Its length when walked (the read takes its own).
    len: u64,
    /// Served from disk whatever its size: the tree does not fit the memory
    /// budget, and this is one of its largest files.
    over_budget: bool,
}

/// A file read (step 3) or a generated listing (step 4), before its
/// representations are built.
struct RawFile {
    url_path: Arc<[u8]>,
    content_type: Arc<str>,
    modified_secs: u64,
    body: Body,
    etag: String,
}

/// One shared copy of each distinct string of a load (content types): a
/// site has a few dozen types for thousands of files.
#[derive(Default)]
struct Interner(Mutex<rustc_hash::FxHashSet<Arc<str>>>);

impl Interner {
    fn intern(&self, text: String) -> Arc<str> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = set.get(text.as_str()) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = text.into();
        set.insert(Arc::clone(&shared));
        shared
    }
}

impl RawFile {
    /// What stage two starts from: a stage-one entry's identity.
    fn of_entry(entry: &FileEntry) -> RawFile {
        let identity = entry.identity();
        RawFile {
            url_path: Arc::clone(&entry.url_path),
            content_type: Arc::clone(&entry.content_type),
            modified_secs: entry.modified_secs,
            body: identity.body.clone(),
            etag: String::from_utf8_lossy(identity.etag()).into_owned(),
        }
    }
}

/// Bytes held in memory so far, against the budget. Shared by the threads
/// of one load.
struct MemoryMeter {
    used: AtomicU64,
    budget: Option<u64>,
    /// Going over the budget fails the load (`--memory-budget-strict`);
    /// otherwise the budget only decides what [`MemoryMeter::try_add`] lets in.
    strict: bool,
}

impl MemoryMeter {
    /// Counts `bytes` if they fit the budget; nothing if not.
    fn try_add(&self, bytes: u64) -> bool {
        let fits = |used: u64| match self.budget {
            Some(budget) if used + bytes > budget => None,
            _ => Some(used + bytes),
        };
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits)
            .is_ok()
    }

    fn add(&self, bytes: u64) -> Result<(), LoadError> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match self.budget {
            Some(budget) if self.strict && used > budget => Err(LoadError::OverBudget {
                budget,
                needed_at_least: used,
            }),
            _ => Ok(()),
        }
    }
}

/// Builds a whole snapshot, both stages, on the calling thread (and its
/// helpers). With `previous` (a reload), the bodies and encoded variants of
/// a file whose content hash is unchanged are taken from it instead of being
/// kept twice or compressed again: a reload then costs a read and a hash per
/// file, and the two snapshots share those bytes.
pub(super) fn load_snapshot(
    options: &LoadOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, LoadError> {
    let identity = load_identity(options, previous)?;
    Ok(build_variants(&identity, options, &|| false)?.unwrap_or(identity))
}

/// Stage one (steps 1–4 and 6, and step 5 without compressing): a snapshot
/// that answers every request correctly, in identity for the files whose
/// variants are still to be built ([`FileEntry::variants_pending`]).
pub(super) fn load_identity(
    options: &LoadOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, LoadError> {
    let progress = Progress::start("walking", options.progress);
    let policy = HeaderPolicy::load(options.cache_control.as_deref(), options.config_file.as_deref())?;
    let root = options
        .root
        .canonicalize()
        .map_err(|e| LoadError::RootMissing(options.root.clone(), e))?;
    if !root.is_dir() {
        return Err(LoadError::RootNotDirectory(options.root.clone()));
    }
    // Lengths are needed before the read only to fit a budget: without
    // one, the walk makes no system call per file (readdir's types suffice).
    let fitting = options.memory_budget_bytes.is_some() && !options.memory_budget_strict;
    let (mut found, directories) = walk(&root, options.serve_dotfiles, options.follow_symlinks, fitting);
    progress.stage_done(format_args!(
        "{} files, {} directories",
        found.len(),
        directories.len()
    ));
    let threads = load_threads(options);
    let meter = MemoryMeter {
        used: AtomicU64::new(0),
        budget: options.memory_budget_bytes,
        strict: options.memory_budget_strict,
    };
    if let Some(budget) = options
        .memory_budget_bytes
        .filter(|_| !options.memory_budget_strict)
    {
        let (moved, bytes) = fit_budget(&mut found, budget, options.max_cached_file_bytes);
        if moved > 0 && options.progress {
            eprintln!(
                "ringserve: the tree does not fit the memory budget of {budget} bytes: \
                 its {moved} largest files ({bytes} bytes) are served from disk"
            );
        }
    }

    let progress = Progress::start("reading", options.progress);
    let types = Interner::default();
    let mut raw = parallel_map(&found, threads, &|| false, |file| {
        let raw = read_file(file, options, &meter, &types, previous);
        progress.count(raw.as_ref().map_or(0, |r| r.body.len()));
        raw
    })?;
    let file_count = raw.len();
    if options.directory_listing {
        raw.extend(listings(
            &raw,
            &directories,
            &options.index_names,
            &meter,
            &types,
        )?);
    }
    progress.stage_done(format_args!(
        "{} files, {} bytes in memory",
        file_count,
        meter.used.load(Ordering::Relaxed)
    ));

    let by_path: FxHashMap<&[u8], usize> = raw
        .iter()
        .enumerate()
        .map(|(i, file)| (&file.url_path[..], i))
        .collect();
    let files = parallel_map(&raw, threads, &|| false, |file| {
        let unchanged = previous
            .and_then(|p| p.entry_at(&file.url_path))
            .filter(|old| old.identity().etag() == file.etag.as_bytes() && !old.variants_pending);
        let step = Step::Identity { unchanged };
        build_entry(file, &raw, &by_path, &policy, options, &meter, step)
    })?;

    let routes = build_routes(&files, file_count, &directories, options);
    let fallback = match &options.fallback {
        None => None,
        Some(name) => {
            let key = format!("/{}", name.trim_start_matches('/'));
            let index = files[..file_count]
                .iter()
                .position(|f| *f.url_path == *key.as_bytes())
                .ok_or_else(|| LoadError::FallbackMissing(name.clone()))?;
            Some(index)
        }
    };
    let not_found_page = files[..file_count]
        .iter()
        .position(|f| *f.url_path == *NOT_FOUND_PAGE)
        .map(|i| not_found_entry(&files[i], &policy));
    let stats = snapshot_stats(&files, file_count);
    // The same paths as before (a reload of an unchanged tree): share them.
    let routes = match previous {
        Some(previous) if *previous.routes == routes => Arc::clone(&previous.routes),
        _ => Arc::new(routes),
    };
    Ok(Snapshot {
        files,
        routes,
        policy: Arc::new(policy),
        fallback,
        not_found_page,
        health_path: options.health_path.as_deref().map(|path| path.as_bytes().into()),
        stats,
    })
}

/// Stage two (step 5's compression): a copy of `base` in which every file
/// whose variants were pending has them (siblings checked, or compressed
/// here). Routes are shared with `base`; so are bodies. `None` if nothing was
/// pending or `superseded()` turned true meanwhile (a reload is waiting: its
/// own snapshot will need its own variants, this one's are wasted work).
pub(super) fn build_variants(
    base: &Snapshot,
    options: &LoadOptions,
    superseded: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Snapshot>, LoadError> {
    if base.stats.pending_variants == 0 {
        return Ok(None);
    }
    let progress = Progress::start("variants", options.progress);
    let raw: Vec<RawFile> = base.files.iter().map(RawFile::of_entry).collect();
    let by_path: FxHashMap<&[u8], usize> = raw
        .iter()
        .enumerate()
        .map(|(i, file)| (&file.url_path[..], i))
        .collect();
    let meter = MemoryMeter {
        used: AtomicU64::new(base.stats.memory_bytes),
        budget: options.memory_budget_bytes,
        strict: options.memory_budget_strict,
    };
    let policy = &base.policy;
    let indexes: Vec<usize> = (0..raw.len()).collect();
    let files = parallel_map(&indexes, load_threads(options), superseded, |&i| {
        let entry = &base.files[i];
        if !entry.variants_pending {
            return Ok(entry.clone());
        }
        progress.count(entry.identity().body.len());
        let mut built = build_entry(&raw[i], &raw, &by_path, policy, options, &meter, Step::Variants)?;
        // The identity head is usually the one stage one rendered: share
        // it rather than leave the stage-one copy as a hole in the heap
        // once that snapshot is freed.
        if let Some(representations) = Arc::get_mut(&mut built.representations) {
            if representations[0].head == entry.identity().head {
                representations[0].head = entry.identity().head.clone();
            }
        }
        Ok(built)
    });
    let files = match files {
        Ok(files) => files,
        Err(LoadError::Superseded) => return Ok(None),
        Err(e) => return Err(e),
    };
    let not_found_page = base
        .not_found_page
        .as_ref()
        .and_then(|_| {
            files[..base.stats.files]
                .iter()
                .find(|f| *f.url_path == *NOT_FOUND_PAGE)
        })
        .map(|entry| not_found_entry(entry, policy));
    let stats = snapshot_stats(&files, base.stats.files);
    progress.stage_done(format_args!(
        "{} variants, {} bytes",
        stats.variants, stats.variant_bytes
    ));
    Ok(Some(Snapshot {
        files,
        routes: Arc::clone(&base.routes),
        policy: Arc::clone(&base.policy),
        fallback: base.fallback,
        not_found_page,
        health_path: base.health_path.clone(),
        stats,
    }))
}

fn load_threads(options: &LoadOptions) -> usize {
    match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// What a snapshot holds, counted from its entries: `files[..file_count]`
/// are the root's files, the rest listings.
fn snapshot_stats(files: &[FileEntry], file_count: usize) -> SnapshotStats {
    let mut stats = SnapshotStats {
        files: file_count,
        ..SnapshotStats::default()
    };
    for (index, file) in files.iter().enumerate() {
        let identity = file.identity();
        let heads: u64 = file.representations.iter().map(head_bytes).sum();
        stats.head_bytes += heads;
        stats.memory_bytes += identity.body.memory_bytes() + file.own_variant_bytes + heads;
        stats.pending_variants += usize::from(file.variants_pending);
        if index >= file_count {
            continue;
        }
        match identity.body {
            Body::Memory(_) => stats.identity_bytes += identity.body.len(),
            Body::Disk(_) => {
                stats.disk_files += 1;
                stats.disk_bytes += identity.body.len();
            }
        }
        stats.variants += file.representations.len() - 1;
        stats.variant_bytes += file.own_variant_bytes;
        if let Some(best) = file.representations.get(1) {
            stats.compressed_identity_bytes += identity.body.len();
            stats.compressed_best_bytes += best.body.len();
        }
    }
    stats
}

/// Steps 1–2: the files and directories the snapshot may serve, sorted by
/// path; with `lengths`, each file's length too (a `stat` per file).
fn walk(
    root: &Path,
    serve_dotfiles: bool,
    follow_symlinks: bool,
    lengths: bool,
) -> (Vec<FoundFile>, Vec<Vec<u8>>) {
    let mut files = Vec::new();
    let mut directories = Vec::new();
    let mut outside = Vec::new();
    let mut unreadable = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || admissible(entry, root, serve_dotfiles, follow_symlinks, &mut outside)
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            // A dangling link, a symlink loop or a directory we may not
            // list: leave it out, and say so below.
            Err(e) => {
                unreadable.push(describe_walk_error(&e));
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let url_path = url_path_of(entry.path(), root);
        let file_type = entry.file_type();
        if file_type.is_dir() {
            directories.push(url_path);
        } else if file_type.is_file() {
            let len = if lengths {
                entry.metadata().map_or(0, |m| m.len())
            } else {
                0
            };
            files.push(FoundFile {
                path: entry.into_path(),
                url_path,
                len,
                over_budget: false,
            });
        }
    }
    if !outside.is_empty() {
        eprintln!(
            "ringserve: left out {} that lead{} outside the root (--follow-symlinks serves them): {}",
            count_of(outside.len(), "symlink"),
            if outside.len() == 1 { "s" } else { "" },
            summarise(&outside)
        );
    }
    if !unreadable.is_empty() {
        eprintln!(
            "ringserve: left out {} that cannot be read: {}",
            count_of(unreadable.len(), "entry"),
            summarise(&unreadable)
        );
    }
    (files, directories)
}

/// Marks the largest files that would be held in memory as served from disk
/// until the rest fits `budget` (with [`HEAD_ESTIMATE_BYTES`] per file for
/// heads and entry); returns how many and their bytes. Variants are not
/// counted here: the background stage leaves out those that do not fit.
fn fit_budget(found: &mut [FoundFile], budget: u64, max_cached_file_bytes: u64) -> (usize, u64) {
    let estimate = |f: &FoundFile| {
        let body = if f.len > max_cached_file_bytes { 0 } else { f.len };
        body + HEAD_ESTIMATE_BYTES
    };
    let mut needed: u64 = found.iter().map(estimate).sum();
    let mut by_size: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].len <= max_cached_file_bytes)
        .collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(found[i].len));
    let (mut moved, mut bytes) = (0, 0);
    for i in by_size {
        if needed <= budget {
            break;
        }
        needed -= found[i].len;
        found[i].over_budget = true;
        moved += 1;
        bytes += found[i].len;
    }
    (moved, bytes)
}

/// How many names a skip warning lists before it summarises the rest.
const WARNING_NAMES: usize = 5;

/// `names` joined, or the first [`WARNING_NAMES`] and how many more: one
/// readable line whatever the count.
fn summarise(names: &[String]) -> String {
    let shown = names[..names.len().min(WARNING_NAMES)].join(", ");
    match names.len().saturating_sub(WARNING_NAMES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn count_of(count: usize, noun: &str) -> String {
    match (count, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "entry") => format!("{count} entries"),
        _ => format!("{count} {noun}s"),
    }
}

fn describe_walk_error(error: &walkdir::Error) -> String {
    let path = error.path().map_or_else(String::new, |p| p.display().to_string());
    if error.loop_ancestor().is_some() {
        return format!("{path} (symlink loop)");
    }
    let is_link = error
        .path()
        .and_then(|p| p.symlink_metadata().ok())
        .is_some_and(|m| m.file_type().is_symlink());
    match error.io_error() {
        Some(io) if is_link && io.kind() == io::ErrorKind::NotFound => format!("{path} (dangling symlink)"),
        Some(io) => format!("{path} ({io})"),
        None => format!("{path} ({error})"),
    }
}

/// Runs `f` over `items` on `threads` threads; results keep the items'
/// order. The first error stops the other threads at their next item.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    superseded: &(dyn Fn() -> bool + Sync),
    f: impl Fn(&T) -> Result<R, LoadError> + Sync,
) -> Result<Vec<R>, LoadError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<LoadError>> = Mutex::new(None);
    let threads = threads.clamp(1, items.len().max(1));
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(index) else { break };
                        let result = if superseded() {
                            Err(LoadError::Superseded)
                        } else {
                            f(item)
                        };
                        match result {
                            Ok(result) => done.push((index, result)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert(e);
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for (index, result) in parts.into_iter().flatten() {
        slots[index] = Some(result);
    }
    Ok(slots
        .into_iter()
        .map(|slot| slot.expect("every item was processed"))
        .collect())
}

/// Step 3 for one file. A file that stays on disk and is, by its metadata,
/// the very file `previous` already holds (same device, inode, length and
/// modification time) keeps its descriptor and hash: a reload does not read
/// gigabytes of unchanged downloads again.
fn read_file(
    found: &FoundFile,
    options: &LoadOptions,
    meter: &MemoryMeter,
    types: &Interner,
    previous: Option<&Snapshot>,
) -> Result<RawFile, LoadError> {
    let path = &found.path;
    let read_error = |e| LoadError::Read(path.to_owned(), e);
    let mut file = File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    let modified_secs = metadata.modified().map(head::unix_secs).unwrap_or(0);
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let content_type = types.intern(head::content_type_for(&file_name));
    let (body, etag) = if metadata.len() > options.max_cached_file_bytes || found.over_budget {
        let identity = FileIdentity::of(&metadata);
        let same = previous
            .and_then(|p| p.entry_at(&found.url_path))
            .map(FileEntry::identity)
            .filter(|r| matches!(&r.body, Body::Disk(d) if d.identity == identity));
        match same {
            Some(old) => (old.body.clone(), String::from_utf8_lossy(old.etag()).into_owned()),
            None => {
                let (len, etag) = hash_on_disk(&mut file).map_err(read_error)?;
                let disk = DiskFile {
                    file: Arc::new(file),
                    len,
                    identity,
                };
                (Body::Disk(Box::new(disk)), etag)
            }
        }
    } else {
        meter.add(metadata.len())?;
        let old = previous
            .and_then(|p| p.entry_at(&found.url_path))
            .map(FileEntry::identity)
            .filter(|r| matches!(&r.body, Body::Memory(b) if b.len() as u64 == metadata.len()));
        let (body, etag) = match old {
            Some(old) => read_against(&mut file, metadata.len(), old).map_err(read_error)?,
            None => {
                let mut bytes = Vec::new();
                read_whole(&mut file, metadata.len(), &mut bytes).map_err(read_error)?;
                let etag = head::etag_for(&bytes);
                (Bytes::from(bytes), etag)
            }
        };
        // The file may have grown between fstat and read.
        meter.add((body.len() as u64).saturating_sub(metadata.len()))?;
        (Body::Memory(body), etag)
    };
    Ok(RawFile {
        url_path: found.url_path.as_slice().into(),
        content_type,
        modified_secs,
        body,
        etag,
    })
}

/// Reads a file that `old` (the previous snapshot's identity of the same
/// path, of the same length) may already hold, into this thread's reusable
/// buffer: if the content hash is the same, the old body is kept and nothing
/// is allocated, so a reload of an unchanged tree costs no memory for its
/// bodies (and cannot fragment the heap with a second copy of each); a
/// changed file gets an allocation of exactly its size.
fn read_against(file: &mut File, len: u64, old: &Representation) -> io::Result<(Bytes, String)> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buffer| {
        read_whole(file, len, buffer)?;
        let etag = head::etag_for(buffer);
        match &old.body {
            Body::Memory(bytes) if old.etag() == etag.as_bytes() => Ok((bytes.clone(), etag)),
            _ => Ok((Bytes::copy_from_slice(buffer), etag)),
        }
    })
}

/// Reads `file` whole into `buffer` (cleared first), expecting `len` bytes
/// (what `fstat` said): one `read` for a file that did not change since,
/// and one more to see its end. `Read::read_to_end` would ask the kernel
/// for the length and position again (`statx`, `lseek`): two system calls
/// per file that a 50,000-file load pays 100,000 times.
fn read_whole(file: &mut File, len: u64, buffer: &mut Vec<u8>) -> io::Result<()> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    buffer.clear();
    buffer.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    if filled == len {
        // The file may have grown since `fstat`: take the rest too.
        let mut probe = [0u8; 64];
        loop {
            match file.read(&mut probe) {
                Ok(0) => break,
                Ok(n) => {
                    buffer.extend_from_slice(&probe[..n]);
                    file.read_to_end(buffer)?;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Hashes a file that stays on disk, reading it in bounded chunks; returns
/// its length and `ETag`. The length is what was read, not what `fstat`
/// said, so the heads describe the bytes the hash covers.
fn hash_on_disk(file: &mut File) -> io::Result<(u64, String)> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = vec![0u8; HASH_CHUNK_BYTES];
    let mut len = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((len, head::etag_from_hash(hasher.digest())))
}

/// Step 4: a listing for every directory (the root included) that has no
/// index file.
fn listings(
    raw: &[RawFile],
    directories: &[Vec<u8>],
    index_names: &[String],
    meter: &MemoryMeter,
    types: &Interner,
) -> Result<Vec<RawFile>, LoadError> {
    // Directory (`/a/`) → (its entries, the newest mtime among its files).
    let mut children: BTreeMap<Vec<u8>, (Vec<ListingItem>, u64)> = BTreeMap::new();
    children.insert(b"/".to_vec(), (Vec::new(), 0));
    for directory in directories {
        let mut key = directory.clone();
        key.push(b'/');
        children.entry(key).or_default();
    }
    let mut add = |url_path: &[u8], is_file: bool, modified_secs: u64| {
        let (parent, name) = split_last_segment(url_path);
        let mut key = parent.to_vec();
        key.push(b'/');
        let entry = children.entry(key).or_default();
        entry.0.push(ListingItem {
            is_file,
            name: name.to_vec(),
        });
        entry.1 = entry.1.max(modified_secs);
    };
    for file in raw {
        add(&file.url_path, true, file.modified_secs);
    }
    for directory in directories {
        add(directory, false, 0);
    }
    let mut pages = Vec::new();
    let existing: rustc_hash::FxHashSet<&[u8]> = raw.iter().map(|f| &f.url_path[..]).collect();
    for (url_dir, (mut items, modified_secs)) in children {
        let has_index = index_names.iter().any(|name| {
            let mut index = url_dir.clone();
            index.extend_from_slice(name.as_bytes());
            existing.contains(&index[..])
        });
        if has_index {
            continue;
        }
        let page = listing::render_listing(&url_dir, &mut items);
        meter.add(page.len() as u64)?;
        pages.push(RawFile {
            etag: head::etag_for(&page),
            url_path: url_dir.into(),
            content_type: types.intern("text/html; charset=utf-8".to_owned()),
            modified_secs,
            body: Body::Memory(Bytes::from(page)),
        });
    }
    Ok(pages)
}

/// Which part of step 5 [`build_entry`] does.
#[derive(Clone, Copy)]
enum Step<'a> {
    /// Stage one: no compressing and no sibling decoding; only the variants
    /// of `unchanged` (the same file, same content, in the previous
    /// snapshot, variants complete) are reused. Anything more is left
    /// pending.
    Identity { unchanged: Option<&'a FileEntry> },
    /// Stage two: siblings checked, the rest compressed.
    Variants,
}

/// Step 5 for one file: its representations and their heads.
fn build_entry(
    file: &RawFile,
    raw: &[RawFile],
    by_path: &FxHashMap<&[u8], usize>,
    policy: &HeaderPolicy,
    options: &LoadOptions,
    meter: &MemoryMeter,
    step: Step<'_>,
) -> Result<FileEntry, LoadError> {
    if let Step::Identity { unchanged: Some(old) } = step {
        if let Some(entry) = reuse_entry(file, old, by_path, policy, meter)? {
            return Ok(entry);
        }
    }
    let mut variants: Vec<(Encoding, Body, String)> = Vec::new();
    let mut owned = 0u64;
    let mut pending = false;
    let compressible = matches!(&file.body, Body::Memory(bytes)
        if options.precompress
            && bytes.len() >= variants::MIN_COMPRESS_BYTES
            && variants::is_compressible(&file.content_type));
    for encoding in variants::BUILT_ENCODINGS {
        let unchanged = match step {
            Step::Identity { unchanged } => unchanged,
            Step::Variants => None,
        };
        let reusable = unchanged
            .filter(|_| options.precompress || has_sibling(file, encoding, by_path))
            .and_then(|old| old.representations.iter().find(|r| r.encoding == encoding));
        if let Some(old) = reusable {
            let shared = is_sibling_body(file, encoding, raw, by_path, &old.body);
            if !shared {
                meter.add(old.body.memory_bytes())?;
                owned += old.body.memory_bytes();
            }
            let etag = String::from_utf8_lossy(old.etag()).into_owned();
            variants.push((encoding, old.body.clone(), etag));
            continue;
        }
        if unchanged.is_some() {
            // The same content had no such variant: none is worth building,
            // unless a sibling appeared (stage two decides).
            pending |= has_sibling(file, encoding, by_path);
            continue;
        }
        if let Step::Identity { .. } = step {
            pending |= compressible || has_sibling(file, encoding, by_path);
            continue;
        }
        if let Some(variant) = sibling_variant(file, encoding, raw, by_path) {
            variants.push(variant);
            continue;
        }
        let Body::Memory(bytes) = &file.body else {
            continue;
        };
        if !compressible {
            continue;
        }
        thread_local! {
            static COMPRESSED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let kept = COMPRESSED.with_borrow_mut(|compressed| {
            variants::compress_into(encoding, bytes, compressed)?;
            // Over a budget that is not strict, the variant is left out.
            let fits = || options.memory_budget_strict || meter.try_add(compressed.len() as u64 + 600);
            if !(variants::worth_keeping(bytes.len(), compressed.len()) && fits()) {
                return Ok(None);
            }
            // An allocation of exactly the variant's size (the encoder's
            // buffer, sized by a guess, kept a third more: measured).
            Ok(Some(Bytes::copy_from_slice(compressed)))
        });
        let kept = kept.map_err(|e| {
            LoadError::Read(
                PathBuf::from(String::from_utf8_lossy(&file.url_path).into_owned()),
                e,
            )
        })?;
        if let Some(compressed) = kept {
            if options.memory_budget_strict {
                meter.add(compressed.len() as u64)?;
            }
            owned += compressed.len() as u64;
            let etag = head::etag_for(&compressed);
            variants.push((encoding, Body::Memory(compressed), etag));
        }
    }
    variants.sort_by_key(|(_, body, _)| body.len());

    let relative =
        String::from_utf8_lossy(file.url_path.strip_prefix(b"/").unwrap_or(&file.url_path)).into_owned();
    let policy_lines = policy.lines_for(&relative, &file.content_type);
    let negotiable = !variants.is_empty() || pending;
    let identity = (Encoding::Identity, file.body.clone(), file.etag.clone());
    let mut representations = Vec::with_capacity(variants.len() + 1);
    for (encoding, body, etag) in std::iter::once(identity).chain(variants) {
        let representation = render_representation(
            "HTTP/1.1 200 OK",
            &file.content_type,
            file.modified_secs,
            &policy_lines,
            negotiable,
            encoding,
            body,
            etag,
        );
        meter.add(head_bytes(&representation))?;
        representations.push(representation);
    }
    Ok(FileEntry {
        url_path: Arc::clone(&file.url_path),
        content_type: Arc::clone(&file.content_type),
        modified_secs: file.modified_secs,
        representations: representations.into(),
        variants_pending: pending,
        own_variant_bytes: owned,
    })
}

/// The previous snapshot's entry for an unchanged file (same bytes, same
/// modification time, same type, no sibling, and an identity head that would
/// render the same), shared whole: a reload of an unchanged file allocates
/// nothing for it.
fn reuse_entry(
    file: &RawFile,
    old: &FileEntry,
    by_path: &FxHashMap<&[u8], usize>,
    policy: &HeaderPolicy,
    meter: &MemoryMeter,
) -> Result<Option<FileEntry>, LoadError> {
    let identity = old.identity();
    let same = old.modified_secs == file.modified_secs
        && *old.content_type == *file.content_type
        && same_body(&identity.body, &file.body)
        && !variants::BUILT_ENCODINGS
            .iter()
            .any(|&encoding| has_sibling(file, encoding, by_path));
    if !same {
        return Ok(None);
    }
    let relative =
        String::from_utf8_lossy(file.url_path.strip_prefix(b"/").unwrap_or(&file.url_path)).into_owned();
    let policy_lines = policy.lines_for(&relative, &file.content_type);
    let fields = HeadFields {
        content_type: &file.content_type,
        content_length: identity.body.len(),
        etag: &file.etag,
        modified_secs: file.modified_secs,
        content_encoding: None,
        vary_accept_encoding: old.is_negotiable(),
        policy_lines: &policy_lines,
    };
    if head::render_head("HTTP/1.1 200 OK", &fields).ok() != identity.ok_head() {
        return Ok(None);
    }
    meter.add(old.own_variant_bytes + old.representations.iter().map(head_bytes).sum::<u64>())?;
    Ok(Some(old.clone()))
}

/// Whether two bodies are the very same bytes (one allocation, or one
/// descriptor).
fn same_body(a: &Body, b: &Body) -> bool {
    match (a, b) {
        (Body::Memory(a), Body::Memory(b)) => a.as_ptr() == b.as_ptr() && a.len() == b.len(),
        (Body::Disk(a), Body::Disk(b)) => Arc::ptr_eq(&a.file, &b.file),
        _ => false,
    }
}

fn sibling_path(file: &RawFile, encoding: Encoding) -> Option<Vec<u8>> {
    let suffix = encoding.sibling_suffix()?;
    let mut path = file.url_path.to_vec();
    path.extend_from_slice(suffix.as_bytes());
    Some(path)
}

fn has_sibling(file: &RawFile, encoding: Encoding, by_path: &FxHashMap<&[u8], usize>) -> bool {
    sibling_path(file, encoding).is_some_and(|path| by_path.contains_key(&path[..]))
}

/// Whether `body` is the very bytes of `file`'s sibling in this load (then
/// it is counted as that file's, not as a variant's).
fn is_sibling_body(
    file: &RawFile,
    encoding: Encoding,
    raw: &[RawFile],
    by_path: &FxHashMap<&[u8], usize>,
    body: &Body,
) -> bool {
    let Some(&index) = sibling_path(file, encoding)
        .and_then(|path| by_path.get(&path[..]).copied())
        .as_ref()
    else {
        return false;
    };
    same_body(&raw[index].body, body)
}

/// The variant a precompressed sibling (`app.js.gz`) provides, if it exists
/// and holds the same content. In memory, "the same" is checked by decoding;
/// a file that stays on disk is too large to decode at every load, so its
/// sibling is trusted when it is not older than the file.
fn sibling_variant(
    file: &RawFile,
    encoding: Encoding,
    raw: &[RawFile],
    by_path: &FxHashMap<&[u8], usize>,
) -> Option<(Encoding, Body, String)> {
    let sibling = &raw[*by_path.get(&sibling_path(file, encoding)?[..])?];
    let fresh = match (&file.body, &sibling.body) {
        (Body::Memory(original), Body::Memory(encoded)) => variants::decodes_to(encoding, encoded, original),
        _ => sibling.modified_secs >= file.modified_secs,
    };
    if !fresh {
        eprintln!(
            "ringserve: ignoring {}: it does not hold the current content of {}",
            String::from_utf8_lossy(&sibling.url_path),
            String::from_utf8_lossy(&file.url_path)
        );
        return None;
    }
    Some((encoding, sibling.body.clone(), sibling.etag.clone()))
}

#[allow(clippy::too_many_arguments)]
fn render_representation(
    status_line: &str,
    content_type: &str,
    modified_secs: u64,
    policy_lines: &str,
    negotiable: bool,
    encoding: Encoding,
    body: Body,
    etag: String,
) -> Representation {
    let fields = HeadFields {
        content_type,
        content_length: body.len(),
        etag: &etag,
        modified_secs,
        content_encoding: (encoding != Encoding::Identity).then(|| encoding.token()),
        vary_accept_encoding: negotiable,
        policy_lines,
    };
    Representation {
        encoding,
        head: head::render_head(status_line, &fields),
        body,
    }
}

fn head_bytes(representation: &Representation) -> u64 {
    representation.head.len() as u64
}

/// `404.html` as the not-found page: the same representations, heads
/// rendered with status 404.
fn not_found_entry(entry: &FileEntry, policy: &HeaderPolicy) -> FileEntry {
    let policy_lines = policy.lines_for("404.html", &entry.content_type);
    let negotiable = entry.is_negotiable();
    let representations = entry
        .representations
        .iter()
        .map(|r| {
            render_representation(
                "HTTP/1.1 404 Not Found",
                &entry.content_type,
                entry.modified_secs,
                &policy_lines,
                negotiable,
                r.encoding,
                r.body.clone(),
                String::from_utf8_lossy(r.etag()).into_owned(),
            )
        })
        .collect();
    FileEntry {
        url_path: Arc::clone(&entry.url_path),
        content_type: Arc::clone(&entry.content_type),
        modified_secs: entry.modified_secs,
        representations,
        variants_pending: entry.variants_pending,
        own_variant_bytes: entry.own_variant_bytes,
    }
}

/// Whether the walk may enter or load `entry`. Pruning here (not after) keeps
/// the walk from ever descending into a symlinked directory outside the root
/// (unless `follow_symlinks`); such links are noted in `outside`. A dangling
/// link is let through, for the walk to report as unreadable.
fn admissible(
    entry: &walkdir::DirEntry,
    root: &Path,
    serve_dotfiles: bool,
    follow_symlinks: bool,
    outside: &mut Vec<String>,
) -> bool {
    if !serve_dotfiles && is_dotted(entry.file_name()) {
        return false;
    }
    if entry.path_is_symlink() && !follow_symlinks && !resolves_inside(entry.path(), root) {
        outside.push(entry.path().display().to_string());
        return false;
    }
    true
}

fn is_dotted(name: &OsStr) -> bool {
    name.as_bytes().first() == Some(&b'.')
}

/// True if `path`, with every symlink resolved, is still under `root`
/// (itself canonical). A path that cannot be resolved is outside.
fn resolves_inside(path: &Path, root: &Path) -> bool {
    path.canonicalize().is_ok_and(|real| real.starts_with(root))
}

fn url_path_of(path: &Path, root: &Path) -> Vec<u8> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut url = Vec::new();
    for part in relative.components() {
        url.push(b'/');
        url.extend_from_slice(part.as_os_str().as_bytes());
    }
    url
}

/// A snapshot of files given as `(url path, body)` pairs, without touching
/// the file system: for tests, property tests and fuzzing, which need a small
/// site that is the same on every run. Directories are implied by the paths.
/// Built by the same steps as [`load_snapshot`] with the default options
/// (variants, heads, routes), on the calling thread.
pub(super) fn snapshot_from_memory(files: &[(&str, &[u8])], modified_secs: u64) -> Snapshot {
    let options = LoadOptions::new("/");
    let policy = HeaderPolicy::default();
    let meter = MemoryMeter {
        used: AtomicU64::new(0),
        budget: None,
        strict: false,
    };
    let mut directories: Vec<Vec<u8>> = Vec::new();
    let mut raw = Vec::with_capacity(files.len());
    let types = Interner::default();
    for (url_path, body) in files {
        let (parent, file_name) = split_last_segment(url_path.as_bytes());
        let mut ancestor = parent;
        while !ancestor.is_empty() && !directories.iter().any(|d| d == ancestor) {
            directories.push(ancestor.to_vec());
            ancestor = split_last_segment(ancestor).0;
        }
        raw.push(RawFile {
            url_path: url_path.as_bytes().into(),
            content_type: types.intern(head::content_type_for(&String::from_utf8_lossy(file_name))),
            modified_secs,
            etag: head::etag_for(body),
            body: Body::Memory(Bytes::copy_from_slice(body)),
        });
    }
    let by_path: FxHashMap<&[u8], usize> = raw
        .iter()
        .enumerate()
        .map(|(i, file)| (&file.url_path[..], i))
        .collect();
    let files: Vec<FileEntry> = raw
        .iter()
        .map(|file| build_entry(file, &raw, &by_path, &policy, &options, &meter, Step::Variants))
        .collect::<Result<_, _>>()
        .expect("building from memory cannot fail without a budget");
    let routes = build_routes(&files, files.len(), &directories, &options);
    let not_found_page = files
        .iter()
        .position(|f| *f.url_path == *NOT_FOUND_PAGE)
        .map(|i| not_found_entry(&files[i], &policy));
    Snapshot {
        stats: snapshot_stats(&files, files.len()),
        files,
        routes: Arc::new(routes),
        policy: Arc::new(policy),
        fallback: None,
        not_found_page,
        health_path: None,
    }
}

/// Step 6. `files[..file_count]` are the root's files, the rest listings.
fn build_routes(
    files: &[FileEntry],
    file_count: usize,
    directories: &[Vec<u8>],
    options: &LoadOptions,
) -> FxHashMap<Arc<[u8]>, Route> {
    let (real, generated) = files.split_at(file_count);
    let route = |index: usize| Route::File(u32::try_from(index).expect("fewer than 2^32 files"));
    let mut routes: FxHashMap<Arc<[u8]>, Route> = FxHashMap::default();
    routes.reserve(real.len() + directories.len());
    // A file's own path is the key: the entry's string, shared.
    for (index, file) in real.iter().enumerate() {
        routes.insert(Arc::clone(&file.url_path), route(index));
    }
    // Directory indexes: `/dir/` serves the first index name present.
    for name in options.index_names.iter().rev() {
        for (index, file) in real.iter().enumerate() {
            let (parent, file_name) = split_last_segment(&file.url_path);
            if file_name == name.as_bytes() {
                let mut key = parent.to_vec();
                key.push(b'/');
                routes.insert(key.into(), route(index));
            }
        }
    }
    // Clean URLs: `/book` for `/book.json` when it is the only candidate.
    let mut candidates: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    for (index, file) in real.iter().enumerate() {
        let (parent, file_name) = split_last_segment(&file.url_path);
        if let Some(dot) = memchr::memrchr(b'.', file_name) {
            let extension = &file_name[dot + 1..];
            if dot > 0 && CLEAN_URL_EXTENSIONS.iter().any(|e| e.as_bytes() == extension) {
                let mut alias = parent.to_vec();
                alias.push(b'/');
                alias.extend_from_slice(&file_name[..dot]);
                candidates.entry(alias).or_default().push(index);
            }
        }
    }
    for (alias, indexes) in candidates {
        if let [only] = indexes[..] {
            routes.entry(alias.into()).or_insert(route(only));
        }
    }
    for (offset, listing) in generated.iter().enumerate() {
        routes
            .entry(Arc::clone(&listing.url_path))
            .or_insert(route(file_count + offset));
    }
    if options.redirect_directories {
        for directory in directories {
            routes
                .entry(directory.as_slice().into())
                .or_insert(Route::DirectoryRedirect);
        }
    }
    routes
}

/// `/a/b/c.txt` → (`/a/b`, `c.txt`); `/c.txt` → (``, `c.txt`).
fn split_last_segment(url_path: &[u8]) -> (&[u8], &[u8]) {
    let slash = memchr::memrchr(b'/', url_path).unwrap_or(0);
    (&url_path[..slash], &url_path[slash + 1..])
}

#[cfg(test)]
mod tests {
    use super::super::Resolved;
    use super::*;
    use crate::files::FileEntry;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringserve-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn options(root: &Path) -> LoadOptions {
        LoadOptions {
            threads: 2,
            ..LoadOptions::new(root)
        }
    }

    fn resolved_path(snapshot: &Snapshot, key: &str) -> Option<String> {
        match snapshot.resolve(key.as_bytes()) {
            Resolved::File(f) => Some(String::from_utf8(f.url_path.to_vec()).unwrap()),
            Resolved::DirectoryRedirect => Some("redirect".to_owned()),
            Resolved::NotFound => None,
        }
    }

    #[test]
    fn routes_cover_indexes_clean_urls_and_directories() {
        let root = temp_root("routes");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("index.html"), "home").unwrap();
        std::fs::write(root.join("book.json"), "{}").unwrap();
        std::fs::write(root.join("about.html"), "a").unwrap();
        std::fs::write(root.join("about.json"), "b").unwrap();
        std::fs::write(root.join("docs/index.html"), "docs").unwrap();
        std::fs::write(root.join(".secret"), "no").unwrap();
        let snapshot = Snapshot::load(&options(&root)).unwrap();

        assert_eq!(resolved_path(&snapshot, "/").as_deref(), Some("/index.html"));
        assert_eq!(resolved_path(&snapshot, "/book").as_deref(), Some("/book.json"));
        assert_eq!(
            resolved_path(&snapshot, "/about"),
            None,
            "two candidates: ambiguous"
        );
        assert_eq!(
            resolved_path(&snapshot, "/docs/").as_deref(),
            Some("/docs/index.html")
        );
        assert_eq!(resolved_path(&snapshot, "/docs").as_deref(), Some("redirect"));
        assert_eq!(resolved_path(&snapshot, "/.secret"), None);
        assert_eq!(snapshot.file_count(), 5);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn symlinks_outside_the_root_are_not_loaded() {
        let root = temp_root("symlink");
        let outside = temp_root("symlink-outside");
        std::fs::write(outside.join("passwd"), "secret").unwrap();
        std::fs::write(root.join("inside.txt"), "ok").unwrap();
        std::os::unix::fs::symlink(outside.join("passwd"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("leakdir")).unwrap();
        std::os::unix::fs::symlink(root.join("inside.txt"), root.join("alias.txt")).unwrap();
        let snapshot = Snapshot::load(&options(&root)).unwrap();
        assert_eq!(resolved_path(&snapshot, "/leak.txt"), None);
        assert_eq!(resolved_path(&snapshot, "/leakdir/passwd"), None);
        assert_eq!(
            resolved_path(&snapshot, "/alias.txt").as_deref(),
            Some("/alias.txt")
        );
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn follow_symlinks_loads_targets_outside_the_root() {
        let root = temp_root("follow");
        let outside = temp_root("follow-outside");
        std::fs::write(outside.join("jquery.js"), "jq").unwrap();
        std::fs::create_dir_all(outside.join("lib")).unwrap();
        std::fs::write(outside.join("lib/underscore.js"), "us").unwrap();
        std::os::unix::fs::symlink(outside.join("jquery.js"), root.join("jquery.js")).unwrap();
        std::os::unix::fs::symlink(outside.join("lib"), root.join("lib")).unwrap();
        std::os::unix::fs::symlink(root.join("missing"), root.join("dangling.js")).unwrap();
        let following = LoadOptions {
            follow_symlinks: true,
            ..options(&root)
        };
        let snapshot = Snapshot::load(&following).unwrap();
        assert_eq!(
            resolved_path(&snapshot, "/jquery.js").as_deref(),
            Some("/jquery.js")
        );
        assert_eq!(
            resolved_path(&snapshot, "/lib/underscore.js").as_deref(),
            Some("/lib/underscore.js")
        );
        assert_eq!(resolved_path(&snapshot, "/dangling.js"), None);
        assert_eq!(snapshot.file_count(), 2);
        let without = Snapshot::load(&options(&root)).unwrap();
        assert_eq!(without.file_count(), 0, "the default leaves them out");
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn skip_warnings_summarise_long_lists() {
        let names: Vec<String> = (0..8).map(|i| format!("/r/link{i}")).collect();
        assert_eq!(summarise(&names[..2]), "/r/link0, /r/link1");
        let line = summarise(&names);
        assert!(line.ends_with("/r/link4 and 3 more"), "{line}");
        assert_eq!(count_of(1, "entry"), "1 entry");
        assert_eq!(count_of(3, "entry"), "3 entries");
        assert_eq!(count_of(2, "symlink"), "2 symlinks");
    }

    #[test]
    fn dotfiles_can_be_enabled() {
        let root = temp_root("dotfiles");
        std::fs::create_dir_all(root.join(".well-known")).unwrap();
        std::fs::write(root.join(".well-known/security.txt"), "hi").unwrap();
        let mut options = LoadOptions::new(&root);
        assert_eq!(Snapshot::load(&options).unwrap().file_count(), 0);
        options.serve_dotfiles = true;
        let snapshot = Snapshot::load(&options).unwrap();
        assert!(resolved_path(&snapshot, "/.well-known/security.txt").is_some());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let err = Snapshot::load(&LoadOptions::new("/nonexistent/ringserve-root")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ringserve-root"), "{err}");
    }

    fn entry<'a>(snapshot: &'a Snapshot, key: &str) -> &'a FileEntry {
        match snapshot.resolve(key.as_bytes()) {
            Resolved::File(f) => f,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn script(lines: usize) -> String {
        (0..lines)
            .map(|i| format!("export function f{i}(a) {{ return a + {i}; }}\n"))
            .collect()
    }

    #[test]
    fn compressible_files_get_smaller_variants_with_their_own_tags() {
        let root = temp_root("variants");
        std::fs::write(root.join("app.js"), script(100)).unwrap();
        std::fs::write(root.join("tiny.css"), "a{}").unwrap();
        std::fs::write(root.join("photo.png"), vec![1u8; 5000]).unwrap();
        let snapshot = Snapshot::load(&options(&root)).unwrap();
        let app = entry(&snapshot, "/app.js");
        let encodings: Vec<Encoding> = app.representations.iter().map(|r| r.encoding).collect();
        assert_eq!(encodings[0], Encoding::Identity);
        assert_eq!(encodings.len(), 3, "{encodings:?}");
        let lengths: Vec<u64> = app.representations.iter().map(|r| r.body.len()).collect();
        assert!(
            lengths[1] <= lengths[2] && lengths[2] < lengths[0],
            "smallest variant first: {lengths:?}"
        );
        let tags: std::collections::HashSet<&[u8]> = app.representations.iter().map(|r| r.etag()).collect();
        assert_eq!(tags.len(), 3, "each representation has its own ETag");
        for r in app.representations.iter() {
            let head = String::from_utf8_lossy(r.ok_head());
            assert!(head.contains("Vary: Accept-Encoding\r\n"), "{head}");
            assert!(head.contains(&format!("Content-Length: {}\r\n", r.body.len())));
            assert_eq!(
                head.contains("Content-Encoding: "),
                r.encoding != Encoding::Identity
            );
        }
        // Too small, and not a compressible type: identity only, no Vary.
        for key in ["/tiny.css", "/photo.png"] {
            let file = entry(&snapshot, key);
            assert_eq!(file.representations.len(), 1, "{key}");
            assert!(!String::from_utf8_lossy(file.identity().ok_head()).contains("Vary"));
        }
        let stats = snapshot.stats();
        assert_eq!(stats.variants, 2);
        assert!(stats.compressed_best_bytes * 3 < stats.compressed_identity_bytes);
        let without = Snapshot::load(&LoadOptions {
            precompress: false,
            ..options(&root)
        })
        .unwrap();
        assert_eq!(entry(&without, "/app.js").representations.len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn siblings_are_used_when_current_and_replaced_when_stale() {
        let root = temp_root("siblings");
        let text = script(100);
        std::fs::write(root.join("app.js"), &text).unwrap();
        let gzip = variants::compress(Encoding::Gzip, text.as_bytes()).unwrap();
        // A sibling made with other settings than ours: recognisable by its bytes.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        std::io::Write::write_all(&mut encoder, text.as_bytes()).unwrap();
        let sibling = encoder.finish().unwrap();
        assert_ne!(sibling, gzip);
        std::fs::write(root.join("app.js.gz"), &sibling).unwrap();
        std::fs::write(root.join("old.js"), script(120)).unwrap();
        std::fs::write(
            root.join("old.js.br"),
            variants::compress(Encoding::Brotli, text.as_bytes()).unwrap(),
        )
        .unwrap();
        let snapshot = Snapshot::load(&options(&root)).unwrap();

        let app = entry(&snapshot, "/app.js");
        let gz = app
            .representations
            .iter()
            .find(|r| r.encoding == Encoding::Gzip)
            .unwrap();
        let Body::Memory(bytes) = &gz.body else { panic!() };
        assert_eq!(
            &bytes[..],
            &sibling[..],
            "the sibling is served, not our compression"
        );
        // The sibling stays reachable by its own name, as plain bytes.
        let own = entry(&snapshot, "/app.js.gz");
        assert_eq!(own.representations.len(), 1);
        assert!(!String::from_utf8_lossy(own.identity().ok_head()).contains("Content-Encoding"));

        // A stale sibling is ignored: our brotli holds the current content.
        let old = entry(&snapshot, "/old.js");
        let br = old
            .representations
            .iter()
            .find(|r| r.encoding == Encoding::Brotli)
            .unwrap();
        let Body::Memory(bytes) = &br.body else { panic!() };
        let Body::Memory(identity) = &old.identity().body else {
            panic!()
        };
        assert!(variants::decodes_to(Encoding::Brotli, bytes, identity));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn large_files_stay_on_disk_with_the_same_etag() {
        let root = temp_root("large");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), &data).unwrap();
        std::fs::write(root.join("small.txt"), "hello").unwrap();
        let snapshot = Snapshot::load(&LoadOptions {
            max_cached_file_bytes: 50_000,
            ..options(&root)
        })
        .unwrap();
        let big = entry(&snapshot, "/big.bin");
        let Body::Disk(disk) = &big.identity().body else {
            panic!("a file over the limit stays on disk")
        };
        assert_eq!(disk.len, data.len() as u64);
        assert_eq!(big.identity().etag(), head::etag_for(&data).as_bytes());
        assert!(String::from_utf8_lossy(big.identity().ok_head()).contains("Content-Length: 100000\r\n"));
        let stats = snapshot.stats();
        assert_eq!((stats.files, stats.disk_files, stats.identity_bytes), (2, 1, 5));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn memory_budget_is_enforced_with_a_clear_error() {
        let root = temp_root("budget");
        std::fs::write(root.join("a.bin"), vec![0u8; 4000]).unwrap();
        std::fs::write(root.join("b.bin"), vec![0u8; 4000]).unwrap();
        let err = Snapshot::load(&LoadOptions {
            memory_budget_bytes: Some(6000),
            memory_budget_strict: true,
            ..options(&root)
        })
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("memory budget of 6000 bytes") && message.contains("--max-cached-file"),
            "{message}"
        );
        // Streaming the files from disk fits the same budget.
        let snapshot = Snapshot::load(&LoadOptions {
            memory_budget_bytes: Some(6000),
            memory_budget_strict: true,
            max_cached_file_bytes: 1000,
            ..options(&root)
        })
        .unwrap();
        assert!(snapshot.stats().memory_bytes <= 6000);
        assert!(
            Snapshot::load(&LoadOptions {
                memory_budget_bytes: Some(9000),
                memory_budget_strict: true,
                ..options(&root)
            })
            .is_ok()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tree_over_the_budget_starts_with_its_largest_files_on_disk() {
        let root = temp_root("over-budget");
        std::fs::write(root.join("large.bin"), vec![1u8; 5000]).unwrap();
        std::fs::write(root.join("small.bin"), vec![2u8; 3000]).unwrap();
        std::fs::write(root.join("app.js"), script(50)).unwrap();
        let snapshot = Snapshot::load(&LoadOptions {
            memory_budget_bytes: Some(10_000),
            ..options(&root)
        })
        .unwrap();
        assert!(matches!(
            entry(&snapshot, "/large.bin").identity().body,
            Body::Disk(_)
        ));
        assert!(matches!(
            entry(&snapshot, "/small.bin").identity().body,
            Body::Memory(_)
        ));
        let stats = snapshot.stats();
        assert_eq!((stats.disk_files, stats.variants), (1, 2));
        assert!(stats.memory_bytes <= 10_000, "{stats:?}");

        // The variants that do not fit are left out, not an error.
        let scripts = temp_root("over-budget-variants");
        std::fs::write(scripts.join("app.js"), script(50)).unwrap();
        let identity_only = Snapshot::load_identity(&options(&scripts), None).unwrap();
        let tight = Snapshot::load(&LoadOptions {
            memory_budget_bytes: Some(identity_only.stats().memory_bytes + 700),
            ..options(&scripts)
        })
        .unwrap();
        assert_eq!((tight.stats().variants, tight.stats().disk_files), (0, 0));
        assert_eq!(entry(&tight, "/app.js").representations.len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&scripts).unwrap();
    }

    #[test]
    fn url_options_index_names_redirects_fallback_and_404() {
        let root = temp_root("urls");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("docs/default.htm"), "d").unwrap();
        std::fs::write(root.join("app.html"), "<p>app</p>").unwrap();
        std::fs::write(root.join("404.html"), "<p>gone</p>").unwrap();
        let mut opts = options(&root);
        opts.index_names = vec!["index.html".to_owned(), "default.htm".to_owned()];
        opts.fallback = Some("app.html".to_owned());
        let snapshot = Snapshot::load(&opts).unwrap();
        assert_eq!(
            resolved_path(&snapshot, "/docs/").as_deref(),
            Some("/docs/default.htm")
        );
        assert_eq!(resolved_path(&snapshot, "/docs").as_deref(), Some("redirect"));
        assert_eq!(&*snapshot.fallback().unwrap().url_path, b"/app.html");
        let page = snapshot.not_found_page().unwrap();
        assert!(
            page.identity()
                .ok_head()
                .starts_with(b"HTTP/1.1 404 Not Found\r\n")
        );
        assert!(String::from_utf8_lossy(page.identity().ok_head()).contains("Cache-Control: no-cache\r\n"));
        // No listing unless asked for.
        assert_eq!(resolved_path(&snapshot, "/empty/"), None);

        opts.redirect_directories = false;
        let snapshot = Snapshot::load(&opts).unwrap();
        assert_eq!(resolved_path(&snapshot, "/docs"), None);

        opts.fallback = Some("missing.html".to_owned());
        let err = Snapshot::load(&opts).unwrap_err();
        assert!(err.to_string().contains("--fallback missing.html"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn directory_listings_for_directories_without_an_index() {
        let root = temp_root("listing");
        std::fs::create_dir_all(root.join("files/sub")).unwrap();
        std::fs::create_dir_all(root.join("site")).unwrap();
        std::fs::write(root.join("files/b.txt"), "b").unwrap();
        std::fs::write(root.join("files/a <x>.txt"), "a").unwrap();
        std::fs::write(root.join("files/.hidden"), "h").unwrap();
        std::fs::write(root.join("site/index.html"), "site").unwrap();
        let snapshot = Snapshot::load(&LoadOptions {
            directory_listing: true,
            ..options(&root)
        })
        .unwrap();
        let listing = entry(&snapshot, "/files/");
        let Body::Memory(body) = &listing.identity().body else {
            panic!()
        };
        let html = String::from_utf8_lossy(body);
        assert!(
            html.contains("sub/") && html.contains("b.txt") && html.contains("a &lt;x&gt;.txt"),
            "{html}"
        );
        assert!(!html.contains(".hidden"));
        assert!(html.find("sub/").unwrap() < html.find("b.txt").unwrap());
        assert_eq!(&*listing.content_type, "text/html; charset=utf-8");
        // The root has no index: it is listed too; a directory with one is not.
        let root_listing = entry(&snapshot, "/");
        assert_eq!(&*root_listing.url_path, b"/");
        assert_eq!(
            resolved_path(&snapshot, "/site/").as_deref(),
            Some("/site/index.html")
        );
        assert_eq!(snapshot.file_count(), 3, "listings are not counted as files");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
