//! `ringserve`: parse the command line, load the snapshot, run the engine
//! until SIGINT or SIGTERM. A second signal exits at once. SIGHUP (and, with
//! `--watch`, a change under the root) reloads the snapshot atomically. A
//! worker that fails stops the server, which exits 1.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use ringserve::config::Cli;
use ringserve::engine::Server;
use ringserve::files::reload::{self, Reloader};
use ringserve::files::{Snapshot, SnapshotHandle};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ringserve: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let options = cli.load_options();
    let started = Instant::now();
    let snapshot = Snapshot::load(&options).map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    reload::release_freed_memory();
    let config = cli.server_config();
    let stats = snapshot.stats();
    let handle = SnapshotHandle::new(Arc::new(snapshot));
    let server = Server::start_with_handle(&config, handle.clone()).map_err(|e| e.to_string())?;
    println!(
        "ringserve listening on http://{} (engine {}, {} workers, {} files, {} bytes, loaded in {:.1} ms)",
        server.local_addr(),
        server.engine(),
        server.worker_count(),
        stats.files,
        stats.identity_bytes,
        load_ms
    );
    eprintln!(
        "ringserve: snapshot holds {} bytes in memory ({} variants, {} bytes; {} files streamed from disk); \
         compressed files: {} bytes, {} bytes in their smallest variant",
        stats.memory_bytes,
        stats.variants,
        stats.variant_bytes,
        stats.disk_files,
        stats.compressed_identity_bytes,
        stats.compressed_best_bytes
    );
    if let Some(addr) = server.metrics_addr() {
        eprintln!("ringserve: metrics on http://{addr}/metrics");
    }
    if let Some(path) = cli.health_path() {
        eprintln!("ringserve: health checks on {path}");
    }

    let (reload_requests, _reload_thread) = Reloader::new(options.clone(), handle)
        .spawn()
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    let _watcher = if cli.watch {
        Some(
            reload::watch(&options.root, reload_requests.clone())
                .map_err(|e| format!("cannot watch {}: {e}", options.root.display()))?,
        )
    } else {
        None
    };

    // Signals are handled on their own thread, so that the main thread can
    // wait for the workers: they end on a stop signal, or when one of them
    // fails (then the server stops and exits 1, for a supervisor to restart).
    let shutdown = server.shutdown_handle();
    std::thread::Builder::new()
        .name("ringserve-signals".to_owned())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                match signal {
                    SIGHUP => {
                        let _ = reload_requests.send(());
                    }
                    _ if stopping => std::process::exit(130),
                    _ => {
                        eprintln!("ringserve: stopping (a second signal exits at once)");
                        stopping = true;
                        shutdown.trigger();
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    server
        .wait()
        .map_err(|failure| format!("{failure}; the server stopped"))
}
