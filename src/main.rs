//! `ringserve`: gather the settings (command line, environment, config
//! file), load the snapshot, choose the engine (`auto` probes io_uring), run
//! it until SIGINT or SIGTERM. A second signal exits at once. SIGHUP (and,
//! with `--watch`, a change under the root) reloads the snapshot atomically.
//! Under systemd it serves the socket it was handed and reports its state.
//! A worker that fails stops the server, which exits 1.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use ringserve::config::Cli;
use ringserve::config::sources::SettingsError;
use ringserve::engine::Server;
use ringserve::files::reload::{self, ReloadPhase, Reloader};
use ringserve::files::{Snapshot, SnapshotHandle};
use ringserve::systemd::{self, Notifier};

fn main() -> ExitCode {
    let cli = match Cli::from_all_sources(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(SettingsError::Clap(error)) => error.exit(),
        Err(SettingsError::Message(message)) => {
            eprintln!("ringserve: {message}");
            return ExitCode::FAILURE;
        }
    };
    if cli.print_config {
        print!("{}", cli.print_config());
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ringserve: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let inherited = systemd::inherited_listener()?;
    let notifier = Arc::new(Notifier::from_env());
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let options = cli.load_options();
    let started = Instant::now();
    let snapshot = Snapshot::load(&options).map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    reload::release_freed_memory();
    let mut config = cli.server_config();
    let engine = cli.engine.resolve(&config.uring);
    config.engine = engine.kind;
    let from_systemd = inherited.is_some();
    if from_systemd && cli.sources.iter().any(|(id, _)| id == "listen" || id == "port") {
        eprintln!("ringserve: ignoring --listen/--port: serving the socket systemd passed");
    }
    config.inherited_listener = inherited.map(Arc::new);
    let stats = snapshot.stats();
    let handle = SnapshotHandle::new(Arc::new(snapshot));
    let server = Server::start_with_handle(&config, handle.clone()).map_err(|e| e.to_string())?;
    let engine_reason = engine.reason.map(|why| format!(" [{why}]")).unwrap_or_default();
    println!(
        "ringserve listening on http://{} ({}engine {}{}, {} workers, {} files, {} bytes, {} bytes in memory, \
         loaded in {:.1} ms) serving {}",
        server.local_addr(),
        if from_systemd { "socket from systemd, " } else { "" },
        server.engine(),
        engine_reason,
        server.worker_count(),
        stats.files,
        stats.identity_bytes,
        stats.memory_bytes,
        load_ms,
        std::fs::canonicalize(&options.root)
            .unwrap_or_else(|_| options.root.clone())
            .display()
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

    let reload_notifier = Arc::clone(&notifier);
    let (reload_requests, _reload_thread) = Reloader::new(options.clone(), handle)
        .spawn_reporting(move |phase| match phase {
            ReloadPhase::Started => reload_notifier.reloading(),
            ReloadPhase::Finished => reload_notifier.ready(),
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    let _watcher = if cli.watch {
        Some(
            reload::watch(&options.root, reload_requests.clone())
                .map_err(|e| format!("cannot watch {}: {e}", options.root.display()))?,
        )
    } else {
        None
    };
    notifier.ready();

    // Signals are handled on their own thread, so that the main thread can
    // wait for the workers: they end on a stop signal, or when one of them
    // fails (then the server stops and exits 1, for a supervisor to restart).
    let shutdown = server.shutdown_handle();
    let stop_notifier = Arc::clone(&notifier);
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
                        stop_notifier.stopping();
                        shutdown.trigger();
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    server.wait().map_err(|failure| {
        notifier.stopping();
        format!("{failure}; the server stopped")
    })
}
