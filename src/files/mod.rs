//! The immutable snapshot of the static root.
//!
//! Built off the hot path ([`Snapshot::load`], at start and on every reload),
//! then shared read-only by every worker through a [`SnapshotHandle`] that a
//! reload swaps atomically ([`reload`]). For each file it holds every
//! representation a response may send — the identity body and its
//! precompressed variants ([`variants`]) — each with its own `ETag` and its
//! response heads rendered when the snapshot is built ([`head`]), cache
//! policy and extra headers included ([`cache_rules`]). Serving a request is
//! a hash look-up, a few comparisons and a copy of bytes that already exist.
//!
//! Bodies up to `max_cached_file_bytes` live in memory ([`Body::Memory`]);
//! larger files stay on disk behind an open descriptor ([`Body::Disk`]) and
//! are streamed by the engines.
//!
//! Routes map a normalised URL path (see [`crate::http::target`]) to a file:
//! the file's own path, its directory's `/` for an index name, a clean URL
//! (`/book` for `book.json` or `book.html` when exactly one exists), a
//! generated directory listing when enabled, and a redirect for a directory
//! named without its trailing slash (when enabled). Nothing outside the root
//! can be served because nothing outside the root is ever loaded ([`load`]
//! checks every path and symlink while walking).

pub mod cache_rules;
pub mod head;
mod listing;
pub mod load;
pub mod progress;
pub mod reload;
pub mod variants;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

pub use load::{LoadError, LoadOptions};
pub use reload::{SnapshotCache, SnapshotHandle};

/// A content coding the snapshot may hold a representation in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }
    }

    /// The file-name suffix of a precompressed sibling (`app.js.gz`).
    pub fn sibling_suffix(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some(".gz"),
            Encoding::Brotli => Some(".br"),
        }
    }
}

/// A file too large to hold in memory: an open descriptor and its length.
#[derive(Debug, Clone)]
pub struct DiskFile {
    pub file: Arc<File>,
    pub len: u64,
    /// Which file this is, by its metadata when it was opened.
    pub identity: FileIdentity,
}

impl DiskFile {
    /// For tests: `bytes` written to a new temporary file, opened as a body
    /// streamed from disk; the path is returned for the caller to remove.
    #[cfg(test)]
    pub(crate) fn body_for_tests(bytes: &[u8]) -> (Body, std::path::PathBuf) {
        use std::io::Write as _;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringserve-disk-body-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        let identity = FileIdentity::of(&file.metadata().unwrap());
        let body = Body::Disk(Box::new(DiskFile {
            file: Arc::new(file),
            len: bytes.len() as u64,
            identity,
        }));
        (body, path)
    }

    /// For tests: a body the snapshot believes is 5000 bytes long, on a file
    /// of 1000 (one truncated in place after the snapshot was built).
    #[cfg(test)]
    pub(crate) fn shrunk_body_for_tests() -> (Body, std::path::PathBuf) {
        let (body, path) = DiskFile::body_for_tests(&[1u8; 1000]);
        let Body::Disk(disk) = body else { unreachable!() };
        let longer = Body::Disk(Box::new(DiskFile { len: 5000, ..*disk }));
        (longer, path)
    }
}

/// What tells one file on disk from another without reading it: a reload
/// keeps the descriptor and hash of a file whose identity did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
    pub len: u64,
    pub modified_nanos: i128,
}

impl FileIdentity {
    pub fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified_nanos: i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// Where a representation's bytes are.
#[derive(Debug, Clone)]
pub enum Body {
    Memory(Bytes),
    /// Boxed: few files are this large, and every body is as big as the
    /// largest variant.
    Disk(Box<DiskFile>),
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(bytes) => bytes.len() as u64,
            Body::Disk(disk) => disk.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory by this body.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            Body::Memory(bytes) => bytes.len() as u64,
            Body::Disk(_) => 0,
        }
    }
}

/// One representation of a file: its bytes in one content coding, with the
/// heads of every response that sends (or describes) them.
#[derive(Debug, Clone)]
pub struct Representation {
    pub encoding: Encoding,
    pub body: Body,
    /// The `200` head, whole; the `304` head, the fields a `206` shares with
    /// the `200` and the `ETag` are slices of it ([`head::RenderedHead`]).
    pub head: head::RenderedHead,
}

impl Representation {
    /// The strong entity tag of these bytes, quotes included.
    pub fn etag(&self) -> &[u8] {
        self.head.etag()
    }

    /// `200` head for GET and HEAD, up to but not including `Date`.
    pub fn ok_head(&self) -> &[u8] {
        self.head.ok()
    }
}

/// One servable file, with everything its responses need.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// The file's URL path, e.g. `/css/site.css` (a listing's is `/dir/`).
    pub url_path: Arc<[u8]>,
    /// Interned: one allocation per distinct type in a load.
    pub content_type: Arc<str>,
    /// Modification time in whole seconds since the epoch (what
    /// `Last-Modified` says, for every representation).
    pub modified_secs: u64,
    /// Identity first, then encoded variants, smallest first. Shared (not
    /// copied) by the next stage and the next reload while the file and its
    /// heads are unchanged, so an unchanged file costs no new memory.
    pub representations: Arc<[Representation]>,
    /// The background stage ([`load`], step 5) has yet to build this file's
    /// variants: until it does, only identity is served, with the `Vary`
    /// the file will have, so caches key on `Accept-Encoding` from the first
    /// response on.
    pub variants_pending: bool,
    /// Bytes of the variants this entry holds that are not another file's
    /// body (a sibling `app.js.gz` is counted once, as its own file).
    pub own_variant_bytes: u64,
}

impl FileEntry {
    pub fn identity(&self) -> &Representation {
        &self.representations[0]
    }

    /// Whether responses vary with `Accept-Encoding` (now, or once the
    /// background stage has built the variants).
    pub fn is_negotiable(&self) -> bool {
        self.representations.len() > 1 || self.variants_pending
    }
}

/// What a normalised path leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An index into the snapshot's files (`u32`: a route is then 8 bytes,
    /// not 16, and four billion files is beyond any snapshot).
    File(u32),
    /// A directory named without its trailing slash: redirect to `path/`.
    DirectoryRedirect,
}

#[derive(Debug)]
pub enum Resolved<'a> {
    File(&'a FileEntry),
    DirectoryRedirect,
    NotFound,
}

/// What building a snapshot cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Files found under the root (generated listings not included).
    pub files: usize,
    /// Files kept on disk and streamed.
    pub disk_files: usize,
    /// Bytes held in memory: bodies, variants, listings and rendered heads.
    pub memory_bytes: u64,
    /// Identity bytes of the files held in memory.
    pub identity_bytes: u64,
    /// Encoded variants kept, and how many bytes they hold.
    pub variants: usize,
    pub variant_bytes: u64,
    /// Identity bytes of the files that have at least one variant.
    pub compressed_identity_bytes: u64,
    /// Bytes of the smallest variant of each such file (what a client
    /// accepting every coding receives instead).
    pub compressed_best_bytes: u64,
    /// Files (listings included) whose variants the background stage has
    /// yet to build.
    pub pending_variants: usize,
    /// Bytes of the files streamed from disk.
    pub disk_bytes: u64,
    /// Bytes of response heads and entity tags (every representation).
    pub head_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    files: Vec<FileEntry>,
    /// Shared by the two stages of one load: the background stage changes
    /// representations, never which file a path leads to.
    routes: Arc<FxHashMap<Arc<[u8]>, Route>>,
    /// The cache policy this snapshot's heads were rendered with: the
    /// background stage renders its variants' heads with the same one.
    policy: Arc<cache_rules::HeaderPolicy>,
    /// Index in `files` of the SPA fallback (`--fallback`).
    fallback: Option<usize>,
    /// `404.html` from the root, rendered with status 404.
    not_found_page: Option<FileEntry>,
    /// The health-check path (`--health`), answered before any lookup.
    health_path: Option<Box<[u8]>>,
    stats: SnapshotStats,
}

impl Snapshot {
    /// Loads every servable file under `options.root`, variants included
    /// (both stages, on the calling thread).
    pub fn load(options: &LoadOptions) -> Result<Snapshot, LoadError> {
        load::load_snapshot(options, None)
    }

    /// Loads a snapshot to replace `self`, reusing the bodies and
    /// precompressed variants of files whose content did not change (see
    /// [`reload`]); both stages.
    pub fn reload(&self, options: &LoadOptions) -> Result<Snapshot, LoadError> {
        load::load_snapshot(options, Some(self))
    }

    /// The first stage of a load: everything needed to answer correctly
    /// (routes, identity bodies or descriptors, content hashes, heads), and
    /// the variants of files `previous` already had them for with the same
    /// content. What is left is [`Snapshot::pending_variants`].
    pub fn load_identity(options: &LoadOptions, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
        load::load_identity(options, previous)
    }

    /// The second (background) stage: a copy of `self` with the variants of
    /// its pending files built. `None` if none were pending, or if
    /// `superseded` said to stop (checked between files).
    pub fn with_variants(
        &self,
        options: &LoadOptions,
        superseded: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Snapshot>, LoadError> {
        load::build_variants(self, options, superseded)
    }

    /// Files whose variants the background stage has yet to build.
    pub fn pending_variants(&self) -> usize {
        self.stats.pending_variants
    }

    /// The file whose own path is `url_path` (not an index or clean URL).
    fn entry_at(&self, url_path: &[u8]) -> Option<&FileEntry> {
        match self.routes.get(url_path) {
            Some(Route::File(index)) => {
                Some(&self.files[*index as usize]).filter(|f| *f.url_path == *url_path)
            }
            _ => None,
        }
    }

    /// A snapshot of `(url path, body)` pairs held in memory, all modified
    /// at `modified_secs`: a small fixed site for tests and fuzzing.
    pub fn from_memory(files: &[(&str, &[u8])], modified_secs: u64) -> Snapshot {
        load::snapshot_from_memory(files, modified_secs)
    }

    /// Resolves a normalised key (see [`crate::http::target::normalize_target`]).
    pub fn resolve(&self, key: &[u8]) -> Resolved<'_> {
        match self.routes.get(key) {
            Some(Route::File(index)) => Resolved::File(&self.files[*index as usize]),
            Some(Route::DirectoryRedirect) => Resolved::DirectoryRedirect,
            None => Resolved::NotFound,
        }
    }

    /// The file served with 200 for unknown paths that accept HTML.
    pub fn fallback(&self) -> Option<&FileEntry> {
        self.fallback.map(|index| &self.files[index])
    }

    /// The custom page served with 404.
    pub fn not_found_page(&self) -> Option<&FileEntry> {
        self.not_found_page.as_ref()
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn file_count(&self) -> usize {
        self.stats.files
    }

    /// Identity bytes of the files held in memory.
    pub fn body_bytes(&self) -> u64 {
        self.stats.identity_bytes
    }

    pub fn stats(&self) -> SnapshotStats {
        self.stats
    }

    /// The path the health check answers on, if it is on
    /// ([`crate::http::health`]).
    pub fn health_path(&self) -> Option<&[u8]> {
        self.health_path.as_deref()
    }

    /// The same snapshot answering health checks on `path` (or not).
    pub fn with_health_path(mut self, path: Option<&str>) -> Snapshot {
        self.health_path = path.map(|p| p.as_bytes().into());
        self
    }
}
