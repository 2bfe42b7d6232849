//! The immutable in-memory snapshot of the static root.
//!
//! Built once at start ([`Snapshot::load`]), then shared read-only by every
//! worker. For each file it holds the body and the response heads, rendered
//! when the snapshot is built (see [`head`]), so serving a request is a hash
//! look-up and a copy of bytes that already exist.
//!
//! Routes map a normalised URL path (see [`crate::http::target`]) to a file:
//! the file's own path, its directory's `/` for `index.html`, a clean URL
//! (`/book` for `book.json` or `book.html` when exactly one exists), and a
//! redirect for a directory named without its trailing slash. Nothing outside
//! the root can be served because nothing outside the root is ever loaded
//! ([`load`] checks every path and symlink while walking).

pub mod head;
pub mod load;

use bytes::Bytes;
use rustc_hash::FxHashMap;

pub use load::{LoadError, LoadOptions};

/// One servable file, with everything its responses need.
#[derive(Debug)]
pub struct FileEntry {
    /// The file's URL path, e.g. `/css/site.css`.
    pub url_path: Box<[u8]>,
    pub body: Bytes,
    /// `200` head for GET and HEAD, up to but not including `Date`.
    pub ok_head: Box<[u8]>,
    /// `304` head, up to but not including `Date`.
    pub not_modified_head: Box<[u8]>,
    /// The strong entity tag, quotes included.
    pub etag: Box<[u8]>,
    /// Modification time in whole seconds since the epoch (what
    /// `Last-Modified` says).
    pub modified_secs: u64,
    pub content_type: Box<str>,
}

/// What a normalised path leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    File(usize),
    /// A directory named without its trailing slash: redirect to `path/`.
    DirectoryRedirect,
}

#[derive(Debug)]
pub enum Resolved<'a> {
    File(&'a FileEntry),
    DirectoryRedirect,
    NotFound,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    files: Vec<FileEntry>,
    routes: FxHashMap<Box<[u8]>, Route>,
}

impl Snapshot {
    /// Loads every servable file under `options.root`.
    pub fn load(options: &LoadOptions) -> Result<Snapshot, LoadError> {
        load::load_snapshot(options)
    }

    /// A snapshot of `(url path, body)` pairs held in memory, all modified
    /// at `modified_secs`: a small fixed site for tests and fuzzing.
    pub fn from_memory(files: &[(&str, &[u8])], modified_secs: u64) -> Snapshot {
        load::snapshot_from_memory(files, modified_secs)
    }

    pub(crate) fn from_parts(files: Vec<FileEntry>, routes: FxHashMap<Box<[u8]>, Route>) -> Self {
        Snapshot { files, routes }
    }

    /// Resolves a normalised key (see [`crate::http::target::normalize_target`]).
    pub fn resolve(&self, key: &[u8]) -> Resolved<'_> {
        match self.routes.get(key) {
            Some(Route::File(index)) => Resolved::File(&self.files[*index]),
            Some(Route::DirectoryRedirect) => Resolved::DirectoryRedirect,
            None => Resolved::NotFound,
        }
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Bytes of file bodies held in memory.
    pub fn body_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.body.len() as u64).sum()
    }
}
