//! `ringserve`: parse the command line, load the snapshot, run the engine
//! until SIGINT or SIGTERM. A second signal exits at once.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use ringserve::config::Cli;
use ringserve::engine::Server;
use ringserve::files::Snapshot;

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
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let started = Instant::now();
    let snapshot = Snapshot::load(&cli.load_options()).map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let config = cli.server_config();
    let file_count = snapshot.file_count();
    let body_bytes = snapshot.body_bytes();
    let server = Server::start(&config, Arc::new(snapshot)).map_err(|e| e.to_string())?;
    println!(
        "ringserve listening on http://{} (engine {}, {} workers, {} files, {} bytes, loaded in {:.1} ms)",
        server.local_addr(),
        server.engine(),
        server.worker_count(),
        file_count,
        body_bytes,
        load_ms
    );

    let shutdown = server.shutdown_handle();
    if signals.forever().next().is_some() {
        eprintln!("ringserve: stopping (a second signal exits at once)");
        shutdown.trigger();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                std::process::exit(130);
            }
        });
    }
    server.join();
    Ok(())
}
