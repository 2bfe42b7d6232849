//! Atomic hot reload: the handle engines reach the snapshot through, and the
//! thread that replaces it.
//!
//! [`SnapshotHandle`] wraps an `arc_swap::ArcSwap<Snapshot>`. A connection
//! loads the current snapshot once per batch of input (a lock-free read,
//! no reference-count traffic in the common case) and answers every request
//! of that batch from it; the response it appends holds its own references
//! to the bytes (refcounted [`bytes::Bytes`], or an `Arc<File>` for streamed
//! files), so a reload never changes or frees a response being written.
//! Every response is therefore entirely from the old snapshot or entirely
//! from the new one.
//!
//! The reload thread ([`Reloader::spawn`]) does all loading after the
//! first stage of the start, one job at a time, off the hot path:
//! 1. the background stage of the start: the variants of the snapshot the
//!    port opened with ([`Reloader::complete_variants`]), swapped in with a
//!    compare-and-swap, only over the snapshot they were built from;
//! 2. on each request (`SIGHUP`, and with `--watch` inotify events,
//!    [`watch`], debounced so that a deploy copying thousands of files
//!    causes one reload), stage one of a new snapshot
//!    ([`Reloader::reload_identity`]), swapped in at once, then its
//!    background stage as in 1. A request that arrives during a background
//!    stage stops it at the next file: the reload makes it obsolete.
//!
//! Files whose content hash did not change keep their body, variants and
//! heads (shared with the old snapshot, not copied or compressed again), so
//! a reload costs about a read and a hash per file and no memory for
//! unchanged files. A load that fails (unreadable file, bad config, over a
//! strict memory budget) leaves the current snapshot in place and is
//! logged. Reload requests arriving during a reload are coalesced into one
//! more reload. The replaced snapshot is freed on the reload thread once
//! the workers have let go of it, then the allocator is trimmed
//! ([`retire`]).
//!
//! While a reload runs, the old and the new snapshot both exist; they share
//! what did not change.
//!
//! Every outcome is counted next to the handle ([`ReloadStats`]: succeeded,
//! failed, time of the last success), for the metrics.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::{LoadError, LoadOptions, Snapshot, SnapshotStats};
use crate::tls::TlsHandle;

/// After a file-system event, wait for this long without another one before
/// reloading: a deploy writes many files in a burst.
pub const WATCH_DEBOUNCE_MS: u64 = 300;

/// The current snapshot, shared by every worker, replaceable atomically,
/// and the count of reloads that replaced it (or failed to).
#[derive(Debug, Clone)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<Snapshot>>,
    reloads: Arc<ReloadStats>,
}

impl SnapshotHandle {
    /// A handle to `snapshot`, just loaded: the last successful load is now.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let reloads = ReloadStats::default();
        reloads.last_success.store(unix_secs_now(), Ordering::Relaxed);
        SnapshotHandle {
            current: Arc::new(ArcSwap::new(snapshot)),
            reloads: Arc::new(reloads),
        }
    }

    /// The current snapshot, for a short synchronous use (one batch of
    /// input). Do not hold it across an `.await`: take [`Self::current`].
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot, as an owned reference.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `snapshot` current; requests already answered keep the old one
    /// alive until their responses are written.
    pub fn replace(&self, snapshot: Arc<Snapshot>) {
        self.current.store(snapshot);
    }

    /// Like [`SnapshotHandle::replace`], returning the snapshot replaced.
    pub fn swap(&self, snapshot: Arc<Snapshot>) -> Arc<Snapshot> {
        self.current.swap(snapshot)
    }

    /// How reloads went so far.
    pub fn reloads(&self) -> &ReloadStats {
        &self.reloads
    }
}

/// Reload outcomes, counted by whoever reloads (the reload thread), read by
/// the metrics thread. Reloads are rare: plain shared atomics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Unix seconds of the last successful load (the first load included).
    last_success: AtomicU64,
}

impl ReloadStats {
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn last_success_unix_secs(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
    }

    fn record(&self, ok: bool) {
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            self.last_success.store(unix_secs_now(), Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn unix_secs_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One thread's view of the current snapshot, for an event loop that owns
/// its state (`&mut`): [`SnapshotCache::current`] costs one atomic load (no
/// shared write, so workers do not contend on a cache line) and takes a new
/// reference only after a reload.
#[derive(Debug)]
pub struct SnapshotCache(arc_swap::cache::Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>);

impl SnapshotCache {
    /// The snapshot to answer the next batch of input from.
    pub fn current(&mut self) -> &Arc<Snapshot> {
        self.0.load()
    }
}

impl SnapshotHandle {
    /// A per-thread cache of the current snapshot.
    pub fn cache(&self) -> SnapshotCache {
        SnapshotCache(arc_swap::cache::Cache::new(Arc::clone(&self.current)))
    }
}

/// What one successful reload (or background stage) did.
#[derive(Debug, Clone, Copy)]
pub struct ReloadReport {
    pub stats: SnapshotStats,
    pub elapsed: Duration,
}

/// Asks the reload thread for a reload. Cloned freely (SIGHUP, `--watch`).
#[derive(Debug, Clone)]
pub struct ReloadRequests {
    sender: Sender<()>,
    /// Set with every request, cleared when a reload starts: the background
    /// stage checks it between files and stops, since the reload's snapshot
    /// makes the one it is completing obsolete.
    waiting: Arc<AtomicBool>,
}

impl ReloadRequests {
    /// Requests a reload; an error if the reload thread has ended.
    pub fn request(&self) -> Result<(), mpsc::SendError<()>> {
        self.waiting.store(true, Ordering::Relaxed);
        self.sender.send(())
    }
}

/// Where a reload is, for [`Reloader::spawn_reporting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadPhase {
    Started,
    /// Succeeded or failed: either way a snapshot is being served.
    Finished,
}

/// Builds new snapshots with fixed options and swaps them in; with HTTPS,
/// reads the certificate and key again in the same reload.
#[derive(Debug, Clone)]
pub struct Reloader {
    options: LoadOptions,
    handle: SnapshotHandle,
    tls: Option<TlsHandle>,
}

impl Reloader {
    pub fn new(options: LoadOptions, handle: SnapshotHandle) -> Self {
        Reloader {
            options,
            handle,
            tls: None,
        }
    }

    /// Reloads the certificate and key of `tls` with every snapshot.
    pub fn with_tls(mut self, tls: TlsHandle) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Loads a new snapshot (variants included) and (with HTTPS) the certificate and key; makes
    /// each that loaded current, back to back once both are built. A
    /// certificate that fails to load keeps the old one and is logged here;
    /// a snapshot that fails keeps the old one and is the error returned.
    /// The snapshot's outcome is counted in the handle's [`ReloadStats`].
    pub fn reload(&self) -> Result<ReloadReport, LoadError> {
        let started = Instant::now();
        let snapshot = self.handle.current().reload(&self.options);
        self.reload_certificate();
        self.handle.reloads.record(snapshot.is_ok());
        let snapshot = snapshot?;
        let stats = snapshot.stats();
        retire(self.handle.swap(Arc::new(snapshot)));
        Ok(ReloadReport {
            stats,
            elapsed: started.elapsed(),
        })
    }

    /// Stage one of a reload: a new snapshot that serves every file
    /// correctly (variants of unchanged files reused, the others pending),
    /// made current at once.
    pub fn reload_identity(&self) -> Result<ReloadReport, LoadError> {
        let started = Instant::now();
        let loaded = Snapshot::load_identity(&self.options, Some(&self.handle.current()));
        self.reload_certificate();
        self.handle.reloads.record(loaded.is_ok());
        let snapshot = loaded?;
        let stats = snapshot.stats();
        retire(self.handle.swap(Arc::new(snapshot)));
        Ok(ReloadReport {
            stats,
            elapsed: started.elapsed(),
        })
    }

    /// With HTTPS: loads the certificate and key again and makes them current
    /// if they load; otherwise logs why and keeps the old ones.
    fn reload_certificate(&self) {
        let certificate = self.tls.as_ref().map(|tls| (tls, tls.prepare_reload()));
        match certificate {
            Some((tls, Ok(Some((config, cert))))) => {
                if cert.is_expired(std::time::SystemTime::now()) {
                    eprintln!(
                        "ringserve: warning: the reloaded TLS certificate has expired; serving it anyway"
                    );
                }
                tls.replace(config);
                eprintln!("ringserve: reloaded the TLS certificate and key");
            }
            Some((_, Err(e))) => {
                eprintln!("ringserve: TLS certificate reload failed, still serving the previous one: {e}");
            }
            Some((_, Ok(None))) | None => {}
        }
    }

    /// The background stage: builds the pending variants of the current
    /// snapshot and swaps the completed copy in, but only if the snapshot it
    /// was built from is still current (a reload in between wins: an older
    /// tree never comes back). `Ok(None)`: nothing was pending, or
    /// `superseded` stopped it, or it lost to a reload.
    pub fn complete_variants(
        &self,
        superseded: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<ReloadReport>, LoadError> {
        let started = Instant::now();
        let base = self.handle.current();
        let Some(complete) = base.with_variants(&self.options, superseded)? else {
            return Ok(None);
        };
        let stats = complete.stats();
        let before = self.handle.current.compare_and_swap(&base, Arc::new(complete));
        let swapped = Arc::ptr_eq(&before, &base);
        drop(before);
        retire(base);
        Ok(swapped.then(|| ReloadReport {
            stats,
            elapsed: started.elapsed(),
        }))
    }

    /// Starts the reload thread. It first completes the current snapshot's
    /// pending variants (the background stage of the first load), then
    /// reloads whenever a request arrives, one reload at a time: requests
    /// that arrive during a reload make exactly one more, and a request
    /// stops a background stage at its next file. Every reload is two
    /// stages as well: the new tree is served as soon as stage one is done.
    /// Each outcome is logged to stderr. The thread ends when every
    /// [`ReloadRequests`] is dropped.
    pub fn spawn(self) -> std::io::Result<(ReloadRequests, JoinHandle<()>)> {
        self.spawn_reporting(|_| {})
    }

    /// Like [`Reloader::spawn`], calling `report` when each reload starts and
    /// when its first stage ends, the new tree being served (for the service
    /// manager: `RELOADING=1`, then `READY=1`). The background stages are
    /// not reported: a snapshot is served throughout.
    pub fn spawn_reporting(
        self,
        report: impl Fn(ReloadPhase) + Send + 'static,
    ) -> std::io::Result<(ReloadRequests, JoinHandle<()>)> {
        let (sender, received) = mpsc::channel::<()>();
        let waiting = Arc::new(AtomicBool::new(false));
        let requests = ReloadRequests {
            sender,
            waiting: Arc::clone(&waiting),
        };
        let thread = std::thread::Builder::new()
            .name("ringserve-reload".to_owned())
            .spawn(move || {
                let superseded = || waiting.load(Ordering::Relaxed);
                let mut first = true;
                loop {
                    if self.handle.load().pending_variants() > 0 {
                        if std::mem::take(&mut first) {
                            self.delay_for_tests(&superseded);
                        }
                        log_outcome("variants", catch_panic(|| self.complete_variants(&superseded)));
                    }
                    // Wait for a request, unless one came during the stage.
                    if !superseded() && received.recv().is_err() {
                        return;
                    }
                    while received.try_recv().is_ok() {}
                    waiting.store(false, Ordering::Relaxed);
                    report(ReloadPhase::Started);
                    let outcome = catch_panic(|| self.reload_identity().map(Some));
                    if let Err(LoadError::Panicked(_)) = outcome {
                        self.handle.reloads.record(false);
                    }
                    log_outcome("reload", outcome);
                    report(ReloadPhase::Finished);
                }
            })?;
        Ok((requests, thread))
    }

    /// Tests only: holds the first background stage back for
    /// `variants_delay_ms`, or until a reload is requested.
    fn delay_for_tests(&self, superseded: &dyn Fn() -> bool) {
        let until = Instant::now() + Duration::from_millis(self.options.variants_delay_ms);
        while !superseded() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A panic while loading must not end reloading for good.
fn catch_panic(
    work: impl FnOnce() -> Result<Option<ReloadReport>, LoadError>,
) -> Result<Option<ReloadReport>, LoadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(LoadError::Panicked(message))
    })
}

fn log_outcome(what: &str, outcome: Result<Option<ReloadReport>, LoadError>) {
    match outcome {
        Ok(Some(report)) if what == "reload" => eprintln!(
            "ringserve: reloaded {} files ({} bytes in memory, {} files waiting for variants) in {:.1} ms",
            report.stats.files,
            report.stats.memory_bytes,
            report.stats.pending_variants,
            report.elapsed.as_secs_f64() * 1000.0
        ),
        Ok(Some(report)) => eprintln!(
            "ringserve: variants ready: {} variants ({} bytes), {} bytes in memory, in {:.1} ms; \
             compressed files: {} bytes, {} bytes in their smallest variant",
            report.stats.variants,
            report.stats.variant_bytes,
            report.stats.memory_bytes,
            report.elapsed.as_secs_f64() * 1000.0,
            report.stats.compressed_identity_bytes,
            report.stats.compressed_best_bytes
        ),
        Ok(None) if what == "variants" => {
            eprintln!("ringserve: variants: stopped for a reload, which builds its own")
        }
        Ok(None) => {}
        Err(e) if what == "reload" => {
            eprintln!("ringserve: reload failed, still serving the previous snapshot: {e}")
        }
        Err(e) => eprintln!("ringserve: variants failed, still serving identity: {e}"),
    }
}

/// How long the reload thread waits for the workers to let go of a replaced
/// snapshot (an idle `uring` worker wakes once a second to do so).
pub const RETIRE_WAIT_MS: u64 = 3000;

/// Frees a replaced snapshot on this thread, then gives the memory back to
/// the system. Waits (up to [`RETIRE_WAIT_MS`]) until the workers have let
/// go of it: if the last reference were dropped by a worker, its memory
/// would be freed after [`release_freed_memory`] ran and stay mapped in the
/// allocator's free lists (measured on a 10,000-file tree: 168 MiB after
/// the variants, 217 MiB after ten reloads). A response still being
/// written holds its bodies, not the snapshot, so the wait is short.
/// The waiting is done on a short-lived thread of its own, so that a
/// reload is reported (and the next one can start) at once.
pub fn retire(old: Arc<Snapshot>) {
    let free = |old: Arc<Snapshot>| {
        let deadline = Instant::now() + Duration::from_millis(RETIRE_WAIT_MS);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(old);
        release_freed_memory();
    };
    let shared = Arc::new(std::sync::Mutex::new(Some(old)));
    let handed = Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("ringserve-retire".to_owned())
        .spawn(move || {
            let old = handed.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(old) = old {
                free(old);
            }
        });
    if spawned.is_err() {
        let old = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            free(old);
        }
    }
}

/// Gives memory freed by a load (compression buffers, the replaced snapshot)
/// back to the system. The loader's threads allocate from their own glibc
/// arenas, which keep freed memory mapped: measured on a 10,000-file tree
/// (a 119 MB snapshot), the resident size was 358 MB after ten reloads
/// without this and 193 MB with it (154 MB after the first load). Bytes
/// still referenced by responses in flight are not freed, only what nobody
/// holds any more.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures, under
    // glibc's locks; it takes no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Watches `root` recursively with inotify and sends a reload request to
/// `reload` once changes have settled for [`WATCH_DEBOUNCE_MS`]. Reads
/// (`open`, `access`, which a reload itself causes) are not changes. The
/// watch lasts as long as the returned watcher.
pub fn watch(root: &Path, reload: ReloadRequests) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};

    let (events, received) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let is_change = match event {
            Ok(event) => !matches!(event.kind, EventKind::Access(_)),
            // An overflowed event queue means changes were lost: reload.
            Err(_) => true,
        };
        if is_change {
            let _ = events.send(());
        }
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    std::thread::Builder::new()
        .name("ringserve-watch".to_owned())
        .spawn(move || debounce(&received, &reload, Duration::from_millis(WATCH_DEBOUNCE_MS)))
        .map_err(notify::Error::io)?;
    Ok(watcher)
}

/// Forwards one request per burst of events, once `quiet` passes without
/// an event. Ends when either side hangs up.
fn debounce(events: &Receiver<()>, reload: &ReloadRequests, quiet: Duration) {
    while events.recv().is_ok() {
        loop {
            match events.recv_timeout(quiet) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if reload.request().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Resolved;

    fn temp_root(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ringserve-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn body_of(handle: &SnapshotHandle, key: &str) -> Option<Vec<u8>> {
        match handle.load().resolve(key.as_bytes()) {
            Resolved::File(f) => match &f.identity().body {
                crate::files::Body::Memory(b) => Some(b.to_vec()),
                crate::files::Body::Disk(_) => None,
            },
            _ => None,
        }
    }

    #[test]
    fn a_cache_follows_replacements() {
        let root = temp_root("cache");
        std::fs::write(root.join("a.txt"), "one").unwrap();
        let options = LoadOptions::new(&root);
        let handle = SnapshotHandle::new(Arc::new(Snapshot::load(&options).unwrap()));
        let mut cache = handle.cache();
        let first = Arc::clone(cache.current());
        assert!(Arc::ptr_eq(&first, cache.current()), "no change, same snapshot");
        std::fs::write(root.join("a.txt"), "two!").unwrap();
        Reloader::new(options, handle.clone()).reload().unwrap();
        let Resolved::File(entry) = cache.current().resolve(b"/a.txt") else {
            panic!()
        };
        assert_eq!(entry.identity().body.len(), 4);
        assert!(!Arc::ptr_eq(&first, cache.current()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reload_swaps_and_a_failed_reload_keeps_the_old_snapshot() {
        let root = temp_root("swap");
        std::fs::write(root.join("a.txt"), "old").unwrap();
        let options = LoadOptions::new(&root);
        let handle = SnapshotHandle::new(Arc::new(Snapshot::load(&options).unwrap()));
        let held = handle.current();
        std::fs::write(root.join("a.txt"), "new").unwrap();
        let reloader = Reloader::new(options.clone(), handle.clone());
        reloader.reload().unwrap();
        assert_eq!(body_of(&handle, "/a.txt").unwrap(), b"new");
        // A reference taken before the reload still sees the old content.
        let Resolved::File(old) = held.resolve(b"/a.txt") else {
            panic!()
        };
        assert_eq!(old.identity().body.len(), 3);

        // Over the budget: the reload fails, the current snapshot stays.
        std::fs::write(root.join("big.txt"), vec![b'x'; 10_000]).unwrap();
        let tight = Reloader::new(
            LoadOptions {
                memory_budget_bytes: Some(5_000),
                memory_budget_strict: true,
                ..options
            },
            handle.clone(),
        );
        let err = tight.reload().unwrap_err();
        assert!(err.to_string().contains("memory budget"), "{err}");
        assert_eq!(body_of(&handle, "/a.txt").unwrap(), b"new");
        assert!(body_of(&handle, "/big.txt").is_none());
        let reloads = handle.reloads();
        assert_eq!((reloads.succeeded(), reloads.failed()), (1, 1));
        assert!(reloads.last_success_unix_secs() > 1_700_000_000);
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn variant_ptr(snapshot: &Snapshot, key: &str) -> *const u8 {
        let Resolved::File(entry) = snapshot.resolve(key.as_bytes()) else {
            panic!("{key}")
        };
        match &entry.representations[1].body {
            crate::files::Body::Memory(bytes) => bytes.as_ptr(),
            crate::files::Body::Disk(_) => panic!("in memory"),
        }
    }

    #[test]
    fn a_reload_reuses_the_variants_of_unchanged_files() {
        let root = temp_root("reuse");
        let script = |tag: &str| -> String { (0..200).map(|i| format!("let {tag}{i} = {i};\n")).collect() };
        std::fs::write(root.join("same.js"), script("a")).unwrap();
        std::fs::write(root.join("changed.js"), script("b")).unwrap();
        let options = LoadOptions::new(&root);
        let first = Snapshot::load(&options).unwrap();
        std::fs::write(root.join("changed.js"), script("c")).unwrap();
        let second = first.reload(&options).unwrap();
        assert_eq!(
            variant_ptr(&first, "/same.js"),
            variant_ptr(&second, "/same.js"),
            "shared"
        );
        assert_ne!(
            variant_ptr(&first, "/changed.js"),
            variant_ptr(&second, "/changed.js")
        );
        let Resolved::File(changed) = second.resolve(b"/changed.js") else {
            panic!()
        };
        let (crate::files::Body::Memory(identity), crate::files::Body::Memory(variant)) =
            (&changed.identity().body, &changed.representations[1].body)
        else {
            panic!()
        };
        assert!(crate::files::variants::decodes_to(
            changed.representations[1].encoding,
            variant,
            identity
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn disk_file(snapshot: &Snapshot, key: &str) -> Arc<std::fs::File> {
        let Resolved::File(entry) = snapshot.resolve(key.as_bytes()) else {
            panic!("{key}")
        };
        match &entry.identity().body {
            crate::files::Body::Disk(disk) => Arc::clone(&disk.file),
            crate::files::Body::Memory(_) => panic!("on disk"),
        }
    }

    #[test]
    fn a_reload_keeps_unchanged_large_files_open_and_unhashed() {
        let root = temp_root("disk-reuse");
        std::fs::write(root.join("same.bin"), vec![1u8; 5000]).unwrap();
        std::fs::write(root.join("replaced.bin"), vec![2u8; 5000]).unwrap();
        let options = LoadOptions {
            max_cached_file_bytes: 1000,
            ..LoadOptions::new(&root)
        };
        let first = Snapshot::load(&options).unwrap();
        // Replaced the way deploys do it: a new file renamed into place.
        std::fs::write(root.join("new.tmp"), vec![3u8; 6000]).unwrap();
        std::fs::rename(root.join("new.tmp"), root.join("replaced.bin")).unwrap();
        let second = first.reload(&options).unwrap();
        assert!(Arc::ptr_eq(
            &disk_file(&first, "/same.bin"),
            &disk_file(&second, "/same.bin")
        ));
        assert!(!Arc::ptr_eq(
            &disk_file(&first, "/replaced.bin"),
            &disk_file(&second, "/replaced.bin")
        ));
        let Resolved::File(replaced) = second.resolve(b"/replaced.bin") else {
            panic!()
        };
        assert_eq!(replaced.identity().body.len(), 6000);
        assert_eq!(
            replaced.identity().etag(),
            crate::files::head::etag_for(&[3u8; 6000]).as_bytes()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn script(tag: &str) -> String {
        (0..300)
            .map(|i| format!("export const {tag}{i} = {i};\n"))
            .collect()
    }

    #[test]
    fn the_background_stage_completes_the_current_snapshot() {
        let root = temp_root("stages");
        std::fs::write(root.join("app.js"), script("a")).unwrap();
        std::fs::write(root.join("logo.png"), vec![7u8; 3000]).unwrap();
        let options = LoadOptions::new(&root);
        let first = Snapshot::load_identity(&options, None).unwrap();
        assert_eq!(first.pending_variants(), 1, "app.js only: png does not compress");
        let Resolved::File(app) = first.resolve(b"/app.js") else {
            panic!()
        };
        assert_eq!(app.representations.len(), 1);
        let identity_etag = app.identity().etag().to_vec();
        let head = String::from_utf8_lossy(app.identity().ok_head()).into_owned();
        assert!(
            head.contains("Vary: Accept-Encoding\r\n"),
            "the final Vary from the start: {head}"
        );
        let handle = SnapshotHandle::new(Arc::new(first));
        let reloader = Reloader::new(options, handle.clone());
        let report = reloader
            .complete_variants(&|| false)
            .unwrap()
            .expect("swapped in");
        assert_eq!((report.stats.pending_variants, report.stats.variants), (0, 2));
        let current = handle.current();
        let Resolved::File(app) = current.resolve(b"/app.js") else {
            panic!()
        };
        assert_eq!(app.representations.len(), 3);
        assert_eq!(
            app.identity().etag(),
            identity_etag,
            "identity keeps its validator"
        );
        assert!(
            reloader.complete_variants(&|| false).unwrap().is_none(),
            "nothing left"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_background_stage_never_replaces_a_newer_reload() {
        let root = temp_root("stage-race");
        std::fs::write(root.join("app.js"), script("old")).unwrap();
        let options = LoadOptions::new(&root);
        let handle = SnapshotHandle::new(Arc::new(Snapshot::load_identity(&options, None).unwrap()));
        let reloader = Reloader::new(options, handle.clone());
        // A reload lands while the background stage of the old tree runs.
        let reloaded = std::sync::Once::new();
        let during = || {
            reloaded.call_once(|| {
                std::fs::write(root.join("app.js"), script("new")).unwrap();
                reloader.reload_identity().unwrap();
            });
            false
        };
        assert!(
            reloader.complete_variants(&during).unwrap().is_none(),
            "lost to the reload"
        );
        let body = body_of(&handle, "/app.js").unwrap();
        assert_eq!(body, script("new").as_bytes(), "the newer tree stays");
        assert_eq!(handle.current().pending_variants(), 1);
        // A stage that is told it is superseded stops without swapping.
        assert!(reloader.complete_variants(&|| true).unwrap().is_none());
        assert_eq!(handle.current().pending_variants(), 1);
        reloader
            .complete_variants(&|| false)
            .unwrap()
            .expect("now it completes");
        assert_eq!(body_of(&handle, "/app.js").unwrap(), script("new").as_bytes());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_reload_of_unchanged_content_keeps_the_same_bodies() {
        let root = temp_root("same-bodies");
        std::fs::write(root.join("a.txt"), "same").unwrap();
        std::fs::write(root.join("b.txt"), "before").unwrap();
        let options = LoadOptions::new(&root);
        let first = Snapshot::load(&options).unwrap();
        std::fs::write(root.join("b.txt"), "after!").unwrap();
        let second = first.reload(&options).unwrap();
        let ptr = |s: &Snapshot, key: &str| match s.resolve(key.as_bytes()) {
            Resolved::File(f) => match &f.identity().body {
                crate::files::Body::Memory(b) => b.as_ptr(),
                crate::files::Body::Disk(_) => panic!(),
            },
            _ => panic!(),
        };
        assert_eq!(
            ptr(&first, "/a.txt"),
            ptr(&second, "/a.txt"),
            "shared, not read into a copy"
        );
        assert_ne!(ptr(&first, "/b.txt"), ptr(&second, "/b.txt"));
        assert_eq!(
            body_of(&SnapshotHandle::new(Arc::new(second)), "/b.txt").unwrap(),
            b"after!"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn watching_reloads_after_changes_settle() {
        let root = temp_root("watch");
        std::fs::write(root.join("a.txt"), "one").unwrap();
        let (sender, received) = mpsc::channel();
        let requests = ReloadRequests {
            sender,
            waiting: Arc::new(AtomicBool::new(false)),
        };
        let _watcher = watch(&root, requests).unwrap();
        for i in 0..5 {
            std::fs::write(root.join(format!("f{i}.txt")), "x").unwrap();
        }
        received
            .recv_timeout(Duration::from_secs(10))
            .expect("a reload request after the burst");
        // The burst was one request; reading files is not a change.
        let _ = std::fs::read(root.join("a.txt")).unwrap();
        assert!(
            received
                .recv_timeout(Duration::from_millis(WATCH_DEBOUNCE_MS * 3))
                .is_err()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
