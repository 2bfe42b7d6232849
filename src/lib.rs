//! ringserve: a static-file HTTP/1.1 server for Linux, thread-per-core, on
//! io_uring, with an epoll twin for honest comparisons.
//!
//! The architecture in a paragraph: at start (and on every reload, swapped in
//! atomically), [`files`] loads the static root into an immutable
//! [`files::Snapshot`] in which every file's representations (identity and
//! precompressed variants) and their response heads (status line,
//! `Content-Type`, `Content-Length`, `ETag`, `Last-Modified`,
//! `Cache-Control`, …) are already rendered; files too large for memory stay
//! on disk behind open descriptors. [`http`] is a sans-I/O HTTP/1.1 core: it
//! turns received bytes into response bytes (parse with `httparse`, normalise
//! the target, look up, negotiate, evaluate preconditions and ranges, append
//! precomputed bytes or file ranges) and knows nothing of sockets.
//! [`engine`] starts one worker thread per core, each with its own
//! `SO_REUSEPORT` listener and its own event loop (an io_uring ring or an
//! epoll instance), and moves bytes between sockets and the core. Engines
//! differ only in how they do I/O, so comparing them compares I/O models.
//! [`config`] turns the command line, `RINGSERVE_*` environment variables and
//! the config file into the settings the rest takes, [`access_log`] writes
//! one line per response when asked to, off the hot path, [`metrics`] counts
//! per worker and serves the sums to Prometheus from a thread of its own,
//! when asked to, and [`systemd`] takes a socket from systemd and tells it
//! when the server is ready.

pub mod access_log;
pub mod config;
pub mod engine;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod systemd;
