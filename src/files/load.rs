//! Building a [`Snapshot`] from a directory.
//!
//! Steps, in order:
//! 1. canonicalise the root (a missing or non-directory root is a clear error);
//! 2. walk it, following symlinks, skipping dotfiles and dot-directories unless
//!    enabled, and skipping anything whose real path lies outside the root
//!    (a symlink to `/etc` is never loaded, so it can never be served);
//! 3. read each regular file and render its heads ([`super::head`]);
//! 4. build the routes: exact paths, then directory indexes, then clean URLs,
//!    then directory redirects, each only where an earlier one did not claim
//!    the path.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::head::{self, HeadFields};
use super::{FileEntry, Route, Snapshot};

/// Extensions a clean URL may leave out (`/book` → `book.json`).
const CLEAN_URL_EXTENSIONS: [&str; 3] = ["html", "htm", "json"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub root: PathBuf,
    /// Serve files and directories whose name starts with `.`.
    pub serve_dotfiles: bool,
    /// File names that a directory's `/` serves, in order of preference.
    pub index_names: Vec<String>,
}

impl LoadOptions {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LoadOptions {
            root: root.into(),
            serve_dotfiles: false,
            index_names: vec!["index.html".to_owned()],
        }
    }
}

#[derive(Debug)]
pub enum LoadError {
    RootMissing(PathBuf, io::Error),
    RootNotDirectory(PathBuf),
    Read(PathBuf, io::Error),
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
        }
    }
}

impl std::error::Error for LoadError {}

pub(super) fn load_snapshot(options: &LoadOptions) -> Result<Snapshot, LoadError> {
    let root = options
        .root
        .canonicalize()
        .map_err(|e| LoadError::RootMissing(options.root.clone(), e))?;
    if !root.is_dir() {
        return Err(LoadError::RootNotDirectory(options.root.clone()));
    }

    let mut files = Vec::new();
    let mut directories = Vec::new();
    let walker = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| entry.depth() == 0 || admissible(entry, &root, options.serve_dotfiles));
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            // A symlink loop or a directory we may not list: leave it out, say so.
            Err(e) => {
                eprintln!("ringserve: skipping {}", e);
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let url_path = url_path_of(path, &root);
        let file_type = entry.file_type();
        if file_type.is_dir() {
            directories.push(url_path);
        } else if file_type.is_file() {
            files.push(load_file(path, url_path)?);
        }
    }
    let routes = build_routes(&files, &directories, &options.index_names);
    Ok(Snapshot::from_parts(files, routes))
}

/// Whether the walk may enter or load `entry`. Pruning here (not after) keeps
/// the walk from ever descending into a symlinked directory outside the root.
fn admissible(entry: &walkdir::DirEntry, root: &Path, serve_dotfiles: bool) -> bool {
    if !serve_dotfiles && is_dotted(entry.file_name()) {
        return false;
    }
    if entry.path_is_symlink() && !resolves_inside(entry.path(), root) {
        eprintln!(
            "ringserve: skipping {}: symlink leads outside the root",
            entry.path().display()
        );
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

fn load_file(path: &Path, url_path: Vec<u8>) -> Result<FileEntry, LoadError> {
    let read_error = |e| LoadError::Read(path.to_owned(), e);
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    let body = std::fs::read(path).map_err(read_error)?;
    let modified_secs = metadata.modified().map(head::unix_secs).unwrap_or(0);
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    Ok(file_entry(url_path, &file_name, body, modified_secs))
}

/// A snapshot of files given as `(url path, body)` pairs, without touching
/// the file system: for tests, property tests and fuzzing, which need a small
/// site that is the same on every run. Directories are implied by the paths.
pub(super) fn snapshot_from_memory(files: &[(&str, &[u8])], modified_secs: u64) -> Snapshot {
    let mut entries = Vec::new();
    let mut directories: Vec<Vec<u8>> = Vec::new();
    for (url_path, body) in files {
        let (parent, file_name) = split_last_segment(url_path.as_bytes());
        let mut ancestor = parent;
        while !ancestor.is_empty() && !directories.iter().any(|d| d == ancestor) {
            directories.push(ancestor.to_vec());
            ancestor = split_last_segment(ancestor).0;
        }
        let file_name = String::from_utf8_lossy(file_name);
        entries.push(file_entry(
            url_path.as_bytes().to_vec(),
            &file_name,
            body.to_vec(),
            modified_secs,
        ));
    }
    let routes = build_routes(&entries, &directories, &["index.html".to_owned()]);
    Snapshot::from_parts(entries, routes)
}

fn file_entry(url_path: Vec<u8>, file_name: &str, body: Vec<u8>, modified_secs: u64) -> FileEntry {
    let content_type = head::content_type_for(file_name);
    let etag = head::etag_for(&body);
    let fields = HeadFields {
        content_type: &content_type,
        content_length: body.len() as u64,
        etag: &etag,
        modified_secs,
    };
    FileEntry {
        url_path: url_path.into_boxed_slice(),
        ok_head: head::render_ok_head(&fields),
        not_modified_head: head::render_not_modified_head(&fields),
        etag: etag.into_bytes().into_boxed_slice(),
        modified_secs,
        content_type: content_type.into_boxed_str(),
        body: Bytes::from(body),
    }
}

fn build_routes(
    files: &[FileEntry],
    directories: &[Vec<u8>],
    index_names: &[String],
) -> FxHashMap<Box<[u8]>, Route> {
    let mut routes: FxHashMap<Box<[u8]>, Route> = FxHashMap::default();
    for (index, file) in files.iter().enumerate() {
        routes.insert(file.url_path.clone(), Route::File(index));
    }
    // Directory indexes: `/dir/` serves the first index name present.
    for name in index_names.iter().rev() {
        for (index, file) in files.iter().enumerate() {
            let (parent, file_name) = split_last_segment(&file.url_path);
            if file_name == name.as_bytes() {
                let mut key = parent.to_vec();
                key.push(b'/');
                routes.insert(key.into_boxed_slice(), Route::File(index));
            }
        }
    }
    // Clean URLs: `/book` for `/book.json` when it is the only candidate.
    let mut candidates: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    for (index, file) in files.iter().enumerate() {
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
            routes
                .entry(alias.into_boxed_slice())
                .or_insert(Route::File(only));
        }
    }
    for directory in directories {
        routes
            .entry(directory.clone().into_boxed_slice())
            .or_insert(Route::DirectoryRedirect);
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

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringserve-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
        let snapshot = Snapshot::load(&LoadOptions::new(&root)).unwrap();

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
        let snapshot = Snapshot::load(&LoadOptions::new(&root)).unwrap();
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
}
