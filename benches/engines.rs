//! End-to-end: every engine in [`EngineKind::ALL`], serving the same files
//! over loopback, timed per request in one criterion group so that
//! `cargo bench --bench engines` prints the engines side by side:
//! `engines/<scenario>/<engine>`.
//!
//! Steps:
//! 1. start one in-process server per engine (one worker, `127.0.0.1:0`),
//!    all from the same snapshot; an engine that cannot start here (no
//!    io_uring) is reported and skipped, so an engine added to
//!    [`EngineKind::ALL`] is benchmarked without touching this file;
//! 2. for each scenario, for each engine: open the scenario's keep-alive
//!    connections, then let criterion ask for `n` requests at a time; the
//!    client spreads them over the connections, sends `depth` requests per
//!    write (1: one request in flight per connection; 16: pipelined),
//!    checks that every response is a complete `200`, and reports the wall
//!    time, so criterion's "time" is wall time per request and its
//!    throughput is requests per second;
//! 3. stop the servers.
//!
//! The load client is one thread running a tokio current-thread runtime that
//! multiplexes every connection, as wrk does, rather than one blocking thread
//! per connection: on a 2-core machine, 32 client threads would compete with
//! the server for the cores and the bench would measure the scheduler. With
//! two or more cores the server's worker is pinned to the first core and the
//! client thread to the last, so each has a core of its own.
//!
//! Wall time per request on a shared machine is noisy; compare engines
//! within one run (they are measured back to back), and see
//! `ci/bench-compare` for CPU time per request, the steadier figure.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use ringserve::engine::{EngineKind, Server, ServerConfig};

use support::{PATH_1KIB, bench_snapshot};

/// One way of loading a server.
struct Scenario {
    name: &'static str,
    connections: usize,
    /// Requests written back to back on a connection before reading the
    /// responses (1: no pipelining).
    depth: usize,
    path: &'static str,
}

const SCENARIOS: [Scenario; 3] = [
    // One request in flight: every request pays a full wake-up on each side.
    Scenario {
        name: "keepalive_c1",
        connections: 1,
        depth: 1,
        path: PATH_1KIB,
    },
    Scenario {
        name: "keepalive_c32",
        connections: 32,
        depth: 1,
        path: PATH_1KIB,
    },
    Scenario {
        name: "pipelined16_c32",
        connections: 32,
        depth: 16,
        path: PATH_1KIB,
    },
];

/// A response that has not arrived after this long fails the bench instead
/// of hanging it.
const READ_TIMEOUT_MS: u64 = 10_000;

fn engines(c: &mut Criterion) {
    let snapshot = Arc::new(bench_snapshot());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let pinned = cores.len() >= 2;
    let client_core = cores.last().copied().filter(|_| pinned);

    let mut servers = Vec::new();
    for engine in EngineKind::ALL {
        let config = ServerConfig {
            pin_workers: pinned,
            ..ServerConfig::loopback(engine)
        };
        match Server::start(&config, Arc::clone(&snapshot)) {
            Ok(server) => servers.push(server),
            Err(e) => eprintln!("engines bench: skipping engine {engine}: {e}"),
        }
    }
    if pinned {
        eprintln!(
            "engines bench: server workers pinned to the first CPU, load client to CPU {}",
            cores.last().map_or(0, |core| core.id)
        );
    }

    let mut group = c.benchmark_group("engines");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for scenario in &SCENARIOS {
        for server in &servers {
            let client = LoadClient::start(server.local_addr(), scenario, client_core)
                .unwrap_or_else(|e| panic!("{} on {}: cannot connect: {e}", scenario.name, server.engine()));
            group.bench_function(BenchmarkId::new(scenario.name, server.engine()), |b| {
                b.iter_custom(|requests| {
                    client
                        .run(requests)
                        .unwrap_or_else(|e| panic!("{} on {}: {e}", scenario.name, server.engine()))
                })
            });
            client.finish();
        }
    }
    group.finish();
    for server in servers {
        server.stop();
    }
}

/// The client thread and the two channels that drive it: a request count in,
/// the wall time those requests took out.
struct LoadClient {
    requests_tx: mpsc::Sender<u64>,
    elapsed_rx: mpsc::Receiver<Result<Duration, String>>,
    thread: JoinHandle<()>,
}

impl LoadClient {
    /// Connects the scenario's connections from a new thread; returns once
    /// they are open.
    fn start(addr: SocketAddr, scenario: &Scenario, core: Option<core_affinity::CoreId>) -> io::Result<Self> {
        let (requests_tx, requests_rx) = mpsc::channel::<u64>();
        let (elapsed_tx, elapsed_rx) = mpsc::channel();
        let (connected_tx, connected_rx) = mpsc::channel();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ringserve-bench\r\n\r\n",
            scenario.path
        );
        let batch: Arc<[u8]> = request.repeat(scenario.depth).into_bytes().into();
        let (count, depth) = (scenario.connections, scenario.depth);
        let thread = std::thread::spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return drop(connected_tx.send(Err(e))),
            };
            let opened = runtime.block_on(async {
                let mut connections = Vec::with_capacity(count);
                for _ in 0..count {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    connections.push(Connection {
                        stream,
                        received: Vec::with_capacity(64 * 1024),
                        batch: Arc::clone(&batch),
                        request_len: request.len(),
                        depth,
                    });
                }
                io::Result::Ok(connections)
            });
            let mut connections = match opened {
                Ok(connections) => connections,
                Err(e) => return drop(connected_tx.send(Err(e))),
            };
            let _ = connected_tx.send(Ok(()));
            for requests in requests_rx {
                let result = runtime.block_on(run_spread(&mut connections, requests));
                if elapsed_tx.send(result).is_err() {
                    break;
                }
            }
        });
        match connected_rx.recv() {
            Ok(Ok(())) => Ok(LoadClient {
                requests_tx,
                elapsed_rx,
                thread,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("load client thread died while connecting")),
        }
    }

    fn run(&self, requests: u64) -> Result<Duration, String> {
        self.requests_tx
            .send(requests)
            .map_err(|_| "load client thread is gone".to_owned())?;
        self.elapsed_rx
            .recv()
            .map_err(|_| "load client thread is gone".to_owned())?
    }

    /// Closes the connections and waits for the thread.
    fn finish(self) {
        drop(self.requests_tx);
        let _ = self.thread.join();
    }
}

/// Sends `requests` requests spread evenly over the connections, all at
/// once, and returns the wall time until the last response arrived.
async fn run_spread(connections: &mut Vec<Connection>, requests: u64) -> Result<Duration, String> {
    let count = connections.len() as u64;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, mut connection) in connections.drain(..).enumerate() {
        let share = requests / count + u64::from((index as u64) < requests % count);
        tasks.spawn(async move {
            let result = connection.exchange(share).await;
            (connection, result)
        });
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let (connection, result) = joined.map_err(|e| format!("client task failed: {e}"))?;
        connections.push(connection);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    let elapsed = started.elapsed();
    match failure {
        Some(e) => Err(e),
        None => Ok(elapsed),
    }
}

/// One keep-alive connection of the load client.
struct Connection {
    stream: TcpStream,
    /// Received bytes not yet matched to a response.
    received: Vec<u8>,
    /// `depth` copies of the request, written in one go.
    batch: Arc<[u8]>,
    request_len: usize,
    depth: usize,
}

impl Connection {
    /// Sends `requests` requests in batches of up to `depth` and reads every
    /// response.
    async fn exchange(&mut self, mut requests: u64) -> Result<(), String> {
        while requests > 0 {
            let in_batch = (self.depth as u64).min(requests) as usize;
            self.stream
                .write_all(&self.batch[..in_batch * self.request_len])
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            let mut answered = 0;
            let mut parsed_to = 0;
            while answered < in_batch {
                match complete_response_len(&self.received[parsed_to..])? {
                    Some(len) => {
                        parsed_to += len;
                        answered += 1;
                    }
                    None => {
                        self.received.drain(..parsed_to);
                        parsed_to = 0;
                        self.read_more().await?;
                    }
                }
            }
            self.received.drain(..parsed_to);
            requests -= in_batch as u64;
        }
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), String> {
        self.received.reserve(16 * 1024);
        let read = tokio::time::timeout(
            Duration::from_millis(READ_TIMEOUT_MS),
            self.stream.read_buf(&mut self.received),
        )
        .await
        .map_err(|_| format!("no response within {READ_TIMEOUT_MS} ms"))?
        .map_err(|e| format!("read failed: {e}"))?;
        if read == 0 {
            return Err("server closed the connection".to_owned());
        }
        Ok(())
    }
}

/// The length of the `200` response at the start of `buf`, if all of it has
/// arrived; an error for any other status or a response without a length.
fn complete_response_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut fields);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparsable response: {e}")),
    };
    if response.code != Some(200) {
        return Err(format!("expected status 200, got {:?}", response.code));
    }
    let body_len = response
        .headers
        .iter()
        .find(|field| field.name.eq_ignore_ascii_case("content-length"))
        .and_then(|field| {
            std::str::from_utf8(field.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or("response without a valid Content-Length")?;
    let total = head_len + body_len;
    Ok((buf.len() >= total).then_some(total))
}

criterion_group!(benches, engines);
criterion_main!(benches);
