//! Command line → settings.
//!
//! `main` is a thin shell around [`Cli`]: it gathers the settings with
//! [`Cli::from_all_sources`] (command line, `RINGSERVE_*` environment
//! variables, the `[server]` table of the `--config` file, defaults: see
//! [`sources`]), loads the snapshot with [`Cli::load_options`], and starts
//! the engine with [`Cli::server_config`]. With no settings at all it serves
//! the bundled site on `http://127.0.0.1:8080`.

pub mod sources;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::access_log::{AccessLogConfig, LogDestination, LogFormat};
use crate::engine::uring::{DEFAULT_BUFFERS, DEFAULT_RING_ENTRIES};
use crate::engine::{
    DEFAULT_BACKLOG, DEFAULT_HEAD_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_LINGER_MS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_SEND_TIMEOUT_MS, DEFAULT_SHUTDOWN_GRACE_MS, EngineChoice, EngineKind,
    ServerConfig, Timeouts, UringOptions,
};
use crate::files::LoadOptions;
use crate::files::load::DEFAULT_MAX_CACHED_FILE_BYTES;
use crate::http::Limits;
use crate::http::health::{self, DEFAULT_HEALTH_PATH};
use crate::http::request::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADER_COUNT, DEFAULT_MAX_REQUEST_LINE_BYTES,
    HEADER_COUNT_CEILING,
};
use crate::protocol::{Listen, ListenKind};
use crate::tls::CertPaths;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The address `-p PORT` listens on: loopback, so a quick start never
/// exposes a folder to the network by accident.
pub const PORT_HOST: [u8; 4] = [127, 0, 0, 1];

/// A static-file HTTP/1.1 server, thread-per-core, on io_uring.
///
/// Every option can also be given as an environment variable
/// RINGSERVE_<OPTION> (RINGSERVE_PORT=9000) and in the [server] table of the
/// --config file (port = 9000); a flag beats the environment, which beats the
/// file, which beats the default.
#[derive(Debug, Parser)]
#[command(name = "ringserve", version, about, long_about)]
pub struct Cli {
    /// Directory to serve (the same as --root) [default: the working
    /// directory; the bundled static/ under `cargo run`].
    #[arg(value_name = "ROOT")]
    pub root_arg: Option<PathBuf>,

    /// Directory to serve [default: the working directory; the bundled
    /// static/ under `cargo run`].
    #[arg(long, value_name = "DIR", default_value = default_root(), hide_default_value = true)]
    pub root: PathBuf,

    /// Port to listen on, on 127.0.0.1 (for another address use --listen).
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Address to listen on: HOST:PORT, [IPv6]:PORT, localhost:PORT (127.0.0.1),
    /// or :PORT for every IPv4 interface (0.0.0.0, like nginx's `listen PORT`);
    /// port 0 picks a free port [default: 127.0.0.1:8080, unless --tls-listen
    /// is given]. Plain HTTP; with --tls-cert and no --tls-listen, HTTPS.
    /// Repeat (or separate with commas) for several addresses.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr, value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Address and port to serve HTTPS on; repeat for several. Needs
    /// --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"],
          value_parser = parse_listen_addr)]
    pub tls_listen: Vec<SocketAddr>,

    /// Certificate chain for HTTPS (PEM, leaf first). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key for HTTPS (PEM: PKCS#8, RSA or SEC1). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// HTTPS without session resumption (no tickets, no session cache): every
    /// handshake is a full one. For measuring handshakes; hidden.
    #[arg(long, hide = true, requires = "tls_cert")]
    pub tls_no_resumption: bool,

    /// Answer every request on the plain HTTP listener (--listen or -p) with a
    /// 308 redirect to the same URL on https:// (the first --tls-listen port).
    #[arg(long, requires = "tls_listen")]
    pub https_redirect: bool,

    /// Worker threads, one event loop and one listener each [default: the CPUs this process may use].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// I/O engine: auto (uring where the kernel allows io_uring, else epoll,
    /// and the start line says why), uring (native io_uring: multishot
    /// accept and receive, provided buffers, batched sends; it measured the
    /// least CPU per request in every scenario of bench-results/2026-11-22),
    /// epoll (native epoll loop, uring's readiness twin; needs no io_uring),
    /// tokio-uring (the stock tokio-uring 0.5 runtime), or tokio (a tokio
    /// runtime on epoll, tokio-uring's twin).
    #[arg(long, default_value = "auto")]
    pub engine: EngineChoice,

    /// Listen backlog (pending connections per listener).
    #[arg(long, default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,

    /// Do not pin worker threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Serve files and directories whose names start with a dot.
    #[arg(long)]
    pub serve_dotfiles: bool,

    /// Serve symlinks whose targets lie outside the root (resolved and loaded
    /// when the snapshot is built; by default they are left out).
    #[arg(long)]
    pub follow_symlinks: bool,

    /// Longest request line accepted (longer: 414).
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_LINE_BYTES)]
    pub max_request_line: usize,

    /// Largest request head accepted (larger: 431).
    #[arg(long, default_value_t = DEFAULT_MAX_HEAD_BYTES)]
    pub max_head: usize,

    /// Most header fields accepted in one request (more: 431).
    #[arg(long, default_value_t = DEFAULT_MAX_HEADER_COUNT as u16,
          value_parser = clap::value_parser!(u16).range(1..=HEADER_COUNT_CEILING as i64))]
    pub max_headers: u16,

    /// Largest request body read and discarded (larger: 413).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body: u64,

    /// Milliseconds in-flight responses may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    /// Milliseconds to receive a whole request head (and body), counted from
    /// its first byte or from accept; not extended by bytes that trickle in
    /// (on expiry: 408 if part of a head arrived, else a silent close).
    #[arg(long, default_value_t = DEFAULT_HEAD_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub head_timeout_ms: u64,

    /// Milliseconds a keep-alive connection may wait for its next request.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,

    /// Milliseconds a write may make no progress before the connection is reset
    /// (a slow reader that keeps reading is never cut off).
    #[arg(long, default_value_t = DEFAULT_SEND_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout_ms: u64,

    /// Milliseconds to read and discard input after refusing a request, so
    /// the client can read the error before the connection closes.
    #[arg(long, default_value_t = DEFAULT_LINGER_MS)]
    pub linger_ms: u64,

    /// Open connections per worker; beyond it new ones wait in the backlog.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Write an access log to FILE (appended), or to stdout with `-`. Off by default.
    #[arg(long, value_name = "FILE|-")]
    pub access_log: Option<LogDestination>,

    /// Access log format: common, combined or json.
    #[arg(long, default_value = "combined", requires = "access_log")]
    pub access_log_format: LogFormat,

    /// File name a directory's `/` serves; repeat for several, in order of preference.
    #[arg(long = "index", value_name = "NAME", default_value = "index.html")]
    pub index_names: Vec<String>,

    /// Answer `/dir` with 404 instead of a 301 redirect to `/dir/`.
    #[arg(long)]
    pub no_directory_redirect: bool,

    /// Serve this file (relative to the root) with 200 for unknown paths whose
    /// request accepts text/html: a single-page application's entry point.
    #[arg(long, value_name = "FILE")]
    pub fallback: Option<String>,

    /// Serve an HTML listing for directories without an index file.
    #[arg(long)]
    pub directory_listing: bool,

    /// Files larger than this are streamed from disk instead of held in memory
    /// (bytes; suffixes K, M, G are powers of 1024) [default: 4M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_cached_file: Option<u64>,

    /// The most memory the snapshot may hold (same units): a tree that needs
    /// more starts anyway, its largest files served from disk and the
    /// variants that do not fit left out [default: no limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,

    /// With --memory-budget: refuse to start (or to reload) instead, with a
    /// clear error, when the snapshot needs more (without a budget: nothing).
    #[arg(long)]
    pub memory_budget_strict: bool,

    /// Do not build gzip and brotli variants at load (`file.gz`/`file.br`
    /// siblings in the root are still used).
    #[arg(long)]
    pub no_precompress: bool,

    /// Cache-Control for files that are neither HTML (no-cache) nor named with a
    /// content hash (immutable) [default: the config file's, else no-cache].
    #[arg(long, value_name = "VALUE")]
    pub cache_control: Option<String>,

    /// TOML file: settings in its [server] table (any option, by its long
    /// name), Cache-Control and extra-header rules by glob (see the README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the settings in effect (as a [server] table, with where each
    /// came from) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Reload the snapshot when files under the root change (inotify). SIGHUP
    /// always reloads.
    #[arg(long)]
    pub watch: bool,

    /// Answer `GET`/`HEAD /healthz` (or the --health-path) with `200 ok`,
    /// `Cache-Control: no-store`; not written to the access log.
    #[arg(long)]
    pub health: bool,

    /// The health-check path (implies --health) [default: /healthz].
    #[arg(long, value_name = "PATH", value_parser = parse_health_path)]
    pub health_path: Option<String>,

    /// Serve Prometheus metrics at `http://ADDR/metrics`, on a listener and
    /// thread of their own (port 0 picks a free port). Off by default: then
    /// nothing is counted.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics_listen: Option<SocketAddr>,

    // Switches of the uring engine, for measuring what each technique
    // contributes (see `engine::uring`). Hidden: not for normal use.
    /// uring: single-shot receives instead of multishot.
    #[arg(long, hide = true)]
    pub uring_no_multishot_recv: bool,
    /// uring: one receive buffer per connection instead of a provided-buffer ring.
    #[arg(long, hide = true)]
    pub uring_no_buf_ring: bool,
    /// uring: no IORING_SETUP_DEFER_TASKRUN.
    #[arg(long, hide = true)]
    pub uring_no_defer_taskrun: bool,
    /// uring: one send per response instead of one per batch.
    #[arg(long, hide = true)]
    pub uring_no_batch: bool,
    /// uring: an immediate close is submitted when the last send completes,
    /// instead of linked to that send (`IOSQE_IO_LINK`).
    #[arg(long, hide = true)]
    pub uring_no_link_close: bool,
    /// uring: provided buffers per worker (a power of two up to 32768).
    #[arg(long, hide = true, default_value_t = DEFAULT_BUFFERS,
          value_parser = parse_buffer_count)]
    pub uring_buffers: u16,
    /// uring: submission queue entries per worker.
    #[arg(long, hide = true, default_value_t = DEFAULT_RING_ENTRIES,
          value_parser = clap::value_parser!(u32).range(8..=32768))]
    pub uring_ring_entries: u32,
    /// uring: files streamed from disk to plain-HTTP connections go
    /// file → pipe → socket with IORING_OP_SPLICE instead of read + send.
    #[arg(long, hide = true)]
    pub uring_splice: bool,
    /// uring: with --uring-splice, the most io-wq workers per worker for the
    /// splices (0: the kernel's default).
    #[arg(long, hide = true, default_value_t = 0)]
    pub uring_splice_io_workers: u32,

    /// Tests only: worker 0 fails as if its event loop had broken once it has
    /// accepted N connections (the server must then stop and exit 1).
    #[arg(long, hide = true, value_name = "N")]
    pub fault_after_accepts: Option<u64>,

    /// Tests only: the background stage (variants) starts this many
    /// milliseconds after the port opens, or at the first reload request.
    #[arg(long, hide = true, value_name = "MS", default_value_t = 0)]
    pub test_variants_delay_ms: u64,

    /// Where each setting came from (option id, description), for
    /// `--print-config`; filled by [`Cli::from_all_sources`].
    #[arg(skip)]
    pub sources: Vec<(String, String)>,
    /// The merged matches the settings were read from, for `--print-config`.
    #[arg(skip)]
    pub matches: Option<clap::ArgMatches>,
}

fn parse_health_path(value: &str) -> Result<String, String> {
    health::check_health_path(value).map(|()| value.to_owned())
}

fn parse_buffer_count(value: &str) -> Result<u16, String> {
    let count: u16 = value.parse().map_err(|e| format!("{e}"))?;
    if count.is_power_of_two() && count <= 32768 {
        Ok(count)
    } else {
        Err(format!("{count} is not a power of two between 1 and 32768"))
    }
}

/// `123`, `64K`, `4M`, `1G` (also `KiB`, `MB`, …: all powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 4096, 64K, 8M or 1G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The directory served when none is named: the bundled `static/` when
/// the server runs under Cargo from its own checkout (`cargo run`, `cargo
/// test`: Cargo sets `CARGO_MANIFEST_DIR` for the process it runs), so the
/// demo works out of the box; otherwise the working directory, as
/// `python3 -m http.server` does (`cd site && ringserve -p 9000`).
fn default_root() -> &'static str {
    const BUNDLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/static");
    let under_cargo =
        std::env::var_os("CARGO_MANIFEST_DIR").is_some_and(|dir| dir == env!("CARGO_MANIFEST_DIR"));
    if under_cargo && Path::new(BUNDLED).is_dir() {
        BUNDLED
    } else {
        "."
    }
}

/// Parses a `--listen` address: `HOST:PORT` with an IPv4 address,
/// `[IPv6]:PORT`, `localhost:PORT` (127.0.0.1), or `:PORT` / `*:PORT` (every
/// IPv4 interface, 0.0.0.0, as nginx's `listen PORT`). Other host names are
/// refused rather than resolved: a server's address should not depend on DNS.
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = "use HOST:PORT, [IPv6]:PORT, localhost:PORT or :PORT";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(if text.parse::<u16>().is_ok() {
            format!("{text:?} has no host: use :{text} for every interface or -p {text} for 127.0.0.1")
        } else {
            format!("{text:?} is not an address ({hint})")
        });
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?}: {port:?} is not a port number (0-65535)"))?;
    let ip: IpAddr = match host {
        "" | "*" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        _ if host.starts_with('[') => {
            let inner = host.trim_start_matches('[').trim_end_matches(']');
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{text:?}: {host} is not an IPv6 address"))?
                .into()
        }
        _ if host.contains(':') => {
            return Err(format!(
                "{text:?}: put an IPv6 address in brackets: [{host}]:{port}"
            ));
        }
        _ => host
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?}: {host:?} is not an IP address ({hint})"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

impl Cli {
    /// The directory to serve: the positional `ROOT` if given, else `--root`.
    pub fn root(&self) -> &Path {
        self.root_arg.as_deref().unwrap_or(&self.root)
    }

    /// The plain addresses to listen on: every `--listen`, else `-p` on
    /// 127.0.0.1, else the default.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        match (self.listen.is_empty(), self.port) {
            (false, _) => self.listen.clone(),
            (true, Some(port)) => vec![SocketAddr::from((PORT_HOST, port))],
            (true, None) => vec![DEFAULT_LISTEN.parse().expect("the default address parses")],
        }
    }

    /// The first plain address ([`Cli::listen_addrs`]).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addrs()[0]
    }

    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            serve_dotfiles: self.serve_dotfiles,
            follow_symlinks: self.follow_symlinks,
            index_names: self.index_names.clone(),
            redirect_directories: !self.no_directory_redirect,
            fallback: self.fallback.clone(),
            directory_listing: self.directory_listing,
            max_cached_file_bytes: self.max_cached_file.unwrap_or(DEFAULT_MAX_CACHED_FILE_BYTES),
            memory_budget_bytes: self.memory_budget,
            memory_budget_strict: self.memory_budget_strict,
            precompress: !self.no_precompress,
            cache_control: self.cache_control.clone(),
            config_file: self.config.clone(),
            progress: true,
            variants_delay_ms: self.test_variants_delay_ms,
            health_path: self.health_path().map(str::to_owned),
            ..LoadOptions::new(self.root())
        }
    }

    /// Where the certificate and key are, if HTTPS is on.
    pub fn cert_paths(&self) -> Option<CertPaths> {
        Some(CertPaths {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The addresses to listen on and what each serves (see the flags).
    pub fn listens(&self) -> Vec<Listen> {
        let tls = self.tls_cert.is_some();
        // The plain address: --listen or -p (from any settings layer), or the
        // default when no HTTPS address is given either.
        let plain_given = !self.listen.is_empty() || self.port.is_some();
        let plain = if plain_given || self.tls_listen.is_empty() {
            self.listen_addrs()
        } else {
            Vec::new()
        };
        if tls && self.tls_listen.is_empty() {
            return plain.into_iter().map(Listen::https).collect();
        }
        let https_port = self.tls_listen.first().map_or(443, SocketAddr::port);
        let mut listens: Vec<Listen> = self.tls_listen.iter().map(|&addr| Listen::https(addr)).collect();
        listens.extend(plain.into_iter().map(|addr| Listen {
            addr,
            kind: if self.https_redirect {
                ListenKind::HttpRedirect { https_port }
            } else {
                ListenKind::Http
            },
        }));
        listens
    }

    /// The health-check path, if health checks are on.
    pub fn health_path(&self) -> Option<&str> {
        match &self.health_path {
            Some(path) => Some(path),
            None => self.health.then_some(DEFAULT_HEALTH_PATH),
        }
    }

    pub fn server_config(&self) -> ServerConfig {
        let workers = self
            .workers
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        ServerConfig {
            listen: self.listens(),
            tls: None,
            workers,
            // `auto` is settled by probing ([`EngineChoice::resolve`]), which
            // `main` does once; until then, the engine `auto` prefers.
            engine: match self.engine {
                EngineChoice::Only(kind) => kind,
                EngineChoice::Auto => EngineKind::Uring,
            },
            backlog: self.backlog,
            pin_workers: !self.no_pin,
            limits: Limits {
                max_request_line_bytes: self.max_request_line,
                max_head_bytes: self.max_head,
                max_header_count: usize::from(self.max_headers),
                max_body_bytes: self.max_body,
            },
            timeouts: Timeouts {
                head: Duration::from_millis(self.head_timeout_ms),
                idle: Duration::from_millis(self.idle_timeout_ms),
                send: Duration::from_millis(self.send_timeout_ms),
                linger: Duration::from_millis(self.linger_ms),
            },
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            max_connections: self.max_connections,
            fault_after_accepts: self.fault_after_accepts,
            access_log: self.access_log.clone().map(|destination| AccessLogConfig {
                destination,
                format: self.access_log_format,
            }),
            metrics_listen: self.metrics_listen,
            uring: UringOptions {
                multishot_recv: !self.uring_no_multishot_recv,
                buffer_ring: !self.uring_no_buf_ring,
                defer_taskrun: !self.uring_no_defer_taskrun,
                batch_sends: !self.uring_no_batch,
                link_close: !self.uring_no_link_close,
                buffers: self.uring_buffers,
                ring_entries: self.uring_ring_entries,
                splice: self.uring_splice,
                splice_io_workers: self.uring_splice_io_workers,
            },
            inherited_listener: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_the_bundled_site_on_8080() {
        let cli = Cli::try_parse_from(["ringserve"]).unwrap();
        assert_eq!(cli.listens(), [Listen::http(DEFAULT_LISTEN.parse().unwrap())]);
        assert_eq!(cli.listen_addr().to_string(), DEFAULT_LISTEN);
        assert!(cli.root().ends_with("static"));
        assert_eq!(cli.engine, EngineChoice::Auto);
        assert!(cli.server_config().workers >= 1);
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        let err = Cli::try_parse_from(["ringserve", "--listen", "localhost"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
        let err = Cli::try_parse_from(["ringserve", "--engine", "iocp"]).unwrap_err();
        assert!(err.to_string().contains("unknown engine"), "{err}");
        assert!(Cli::try_parse_from(["ringserve", "--workers", "0"]).is_err());
        let err = Cli::try_parse_from(["ringserve", "--max-cached-file", "8X"]).unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        assert!(Cli::try_parse_from(["ringserve", "--max-connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["ringserve", "--head-timeout-ms", "0"]).is_err());
        let err = Cli::try_parse_from(["ringserve", "--access-log", "-", "--access-log-format", "xml"])
            .unwrap_err();
        assert!(err.to_string().contains("unknown log format"), "{err}");
    }

    #[test]
    fn uring_switches_reach_the_engine_options() {
        let cli = Cli::try_parse_from(["ringserve", "--engine", "uring"]).unwrap();
        assert_eq!(cli.engine, EngineChoice::Only(EngineKind::Uring));
        assert_eq!(cli.server_config().uring, UringOptions::default());
        let cli = Cli::try_parse_from([
            "ringserve",
            "--uring-no-multishot-recv",
            "--uring-no-buf-ring",
            "--uring-no-defer-taskrun",
            "--uring-no-batch",
            "--uring-no-link-close",
            "--uring-splice",
            "--uring-splice-io-workers",
            "2",
            "--uring-buffers",
            "64",
        ])
        .unwrap();
        let options = cli.server_config().uring;
        assert!(
            !options.multishot_recv
                && !options.buffer_ring
                && !options.defer_taskrun
                && !options.batch_sends
                && !options.link_close
        );
        assert!(options.splice);
        assert_eq!(options.splice_io_workers, 2);
        assert_eq!(options.buffers, 64);
        assert!(Cli::try_parse_from(["ringserve", "--uring-buffers", "100"]).is_err());
    }

    #[test]
    fn every_limit_and_timeout_reaches_the_server_config() {
        let cli = Cli::try_parse_from([
            "ringserve",
            "--max-request-line=100",
            "--max-head=200",
            "--max-headers=3",
            "--max-body=4",
            "--head-timeout-ms=5",
            "--idle-timeout-ms=6",
            "--send-timeout-ms=7",
            "--linger-ms=8",
            "--shutdown-grace-ms=9",
            "--max-connections=10",
            "--access-log=-",
            "--access-log-format=json",
        ])
        .unwrap();
        let config = cli.server_config();
        assert_eq!(
            config.limits,
            Limits {
                max_request_line_bytes: 100,
                max_head_bytes: 200,
                max_header_count: 3,
                max_body_bytes: 4,
            }
        );
        let ms = Duration::from_millis;
        assert_eq!(
            config.timeouts,
            Timeouts {
                head: ms(5),
                idle: ms(6),
                send: ms(7),
                linger: ms(8),
            }
        );
        assert_eq!(config.shutdown_grace, ms(9));
        assert_eq!(config.max_connections, 10);
        assert_eq!(
            config.access_log,
            Some(AccessLogConfig {
                destination: LogDestination::Stdout,
                format: LogFormat::Json,
            })
        );
        let off = Cli::try_parse_from(["ringserve"]).unwrap().server_config();
        assert_eq!(off.access_log, None, "the access log is off by default");
        assert_eq!(off.timeouts, Timeouts::default());
    }

    #[test]
    fn listen_is_repeatable_and_takes_commas() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let cli =
            Cli::try_parse_from(["ringserve", "--listen", "127.0.0.1:1", "--listen", "[::1]:2,:3"]).unwrap();
        assert_eq!(
            cli.listens(),
            [
                Listen::http(addr("127.0.0.1:1")),
                Listen::http(addr("[::1]:2")),
                Listen::http(addr("0.0.0.0:3"))
            ]
        );
    }

    #[test]
    fn listeners_http_https_and_redirect() {
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let parse = |args: &[&str]| {
            let mut all = vec!["ringserve"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        let cli = parse(&["--listen", "[::1]:2"]).unwrap();
        assert_eq!(cli.listens(), [Listen::http(addr("[::1]:2"))]);
        assert_eq!(cli.cert_paths(), None);
        // Several HTTPS addresses, in the forms --listen takes, beside -p.
        let cli = parse(&[
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--tls-listen",
            ":8443",
            "--tls-listen",
            "localhost:9443",
            "-p",
            "8080",
        ])
        .unwrap();
        assert_eq!(
            cli.listens(),
            [
                Listen::https(addr("0.0.0.0:8443")),
                Listen::https(addr("127.0.0.1:9443")),
                Listen::http(addr("127.0.0.1:8080"))
            ]
        );
        // A certificate alone turns the (default) listener into HTTPS.
        let cli = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(cli.listens(), [Listen::https(addr(DEFAULT_LISTEN))]);
        assert_eq!(
            cli.cert_paths(),
            Some(CertPaths {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        // Side by side, with the plain one redirecting to the HTTPS port.
        let cli = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-listen",
            "127.0.0.1:8443",
            "--listen",
            "127.0.0.1:8080",
            "--https-redirect",
        ])
        .unwrap();
        assert_eq!(
            cli.listens(),
            [
                Listen::https(addr("127.0.0.1:8443")),
                Listen {
                    addr: addr("127.0.0.1:8080"),
                    kind: ListenKind::HttpRedirect { https_port: 8443 }
                }
            ]
        );
        // Only --tls-listen: no plain listener at all.
        let cli = parse(&["--tls-cert", "c", "--tls-key", "k", "--tls-listen", "127.0.0.1:9"]).unwrap();
        assert_eq!(cli.listens(), [Listen::https(addr("127.0.0.1:9"))]);
        assert!(
            parse(&["--tls-cert", "c.pem"]).is_err(),
            "a certificate needs its key"
        );
        assert!(
            parse(&["--tls-listen", "127.0.0.1:9"]).is_err(),
            "HTTPS needs a certificate"
        );
        assert!(
            parse(&["--https-redirect"]).is_err(),
            "a redirect needs an HTTPS listener"
        );
    }

    #[test]
    fn health_and_metrics_flags() {
        let off = Cli::try_parse_from(["ringserve"]).unwrap();
        assert_eq!(off.load_options().health_path, None);
        assert_eq!(
            off.server_config().metrics_listen,
            None,
            "metrics are off by default"
        );
        let on =
            Cli::try_parse_from(["ringserve", "--health", "--metrics-listen", "127.0.0.1:9100"]).unwrap();
        assert_eq!(on.load_options().health_path.as_deref(), Some("/healthz"));
        assert_eq!(
            on.server_config().metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let custom = Cli::try_parse_from(["ringserve", "--health-path", "/-/ready"]).unwrap();
        assert_eq!(custom.load_options().health_path.as_deref(), Some("/-/ready"));
        let err = Cli::try_parse_from(["ringserve", "--health-path", "ready"]).unwrap_err();
        assert!(err.to_string().contains("must start with /"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 * 1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn semantics_flags_reach_the_load_options() {
        let cli = Cli::try_parse_from([
            "ringserve",
            "--index",
            "index.htm",
            "--index",
            "default.html",
            "--no-directory-redirect",
            "--fallback",
            "index.html",
            "--directory-listing",
            "--max-cached-file",
            "1M",
            "--memory-budget",
            "1G",
            "--cache-control",
            "max-age=60",
        ])
        .unwrap();
        let options = cli.load_options();
        assert_eq!(options.index_names, ["index.htm", "default.html"]);
        assert!(!options.redirect_directories);
        assert_eq!(options.fallback.as_deref(), Some("index.html"));
        assert!(options.directory_listing);
        assert_eq!(options.max_cached_file_bytes, 1 << 20);
        assert_eq!(options.memory_budget_bytes, Some(1 << 30));
        assert_eq!(options.cache_control.as_deref(), Some("max-age=60"));
        let defaults = Cli::try_parse_from(["ringserve"]).unwrap().load_options();
        assert_eq!(defaults.index_names, ["index.html"]);
        assert!(defaults.redirect_directories && defaults.precompress);
        assert_eq!(defaults.max_cached_file_bytes, DEFAULT_MAX_CACHED_FILE_BYTES);
    }

    #[test]
    fn listen_addresses_people_write() {
        let ok = |text: &str| parse_listen_addr(text).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("localhost:9000"), "127.0.0.1:9000");
        assert_eq!(ok(":8080"), "0.0.0.0:8080");
        assert_eq!(ok("*:8080"), "0.0.0.0:8080");
        assert_eq!(ok("[::1]:8080"), "[::1]:8080");
        assert_eq!(ok("[::]:80"), "[::]:80");
        assert_eq!(ok("0.0.0.0:0"), "0.0.0.0:0");
        for bad in [
            "localhost",
            "8080",
            "example.com:80",
            "::1:80",
            "127.0.0.1:99999",
            "[nope]:1",
            "",
        ] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_listen_addr("8080").unwrap_err().contains("-p 8080"));
    }

    #[test]
    fn positional_root_and_port() {
        let cli = Cli::try_parse_from(["ringserve", "site", "-p", "9000"]).unwrap();
        assert_eq!(cli.root(), Path::new("site"));
        assert_eq!(cli.load_options().root, Path::new("site"));
        assert_eq!(cli.listen_addr().to_string(), "127.0.0.1:9000");
        let cli = Cli::try_parse_from(["ringserve", "--port", "9001", "--follow-symlinks"]).unwrap();
        assert_eq!(cli.listen_addr().to_string(), "127.0.0.1:9001");
        assert!(cli.load_options().follow_symlinks);
        assert!(
            !Cli::try_parse_from(["ringserve"])
                .unwrap()
                .load_options()
                .follow_symlinks
        );
        let cli = Cli::try_parse_from(["ringserve", "--listen", ":8081"]).unwrap();
        assert_eq!(cli.listen_addr().to_string(), "0.0.0.0:8081");
    }
}
