#!/usr/bin/env python3
"""ci/bench-compare: every ringserve engine against a tuned nginx, side by side.

What it does, in order:
 1. installs what is missing (Debian's wrk, nginx, linux-perf; one
    `apt-get update` first);
 2. builds ringserve in release mode, and the floor servers
    (cargo build --release --bench floor);
 3. writes the test files (1 KiB, 16 KiB, 1 MiB) into a temporary docroot;
 4. starts every ringserve engine the binary accepts (tries each name in
    CANDIDATE_ENGINES, says which it skipped and why), each --variant (an
    engine with extra switches, reported against that engine), an nginx
    configured as a fair, tuned peer, and the two floor servers
    (benches/floor.rs: floor-uring, floor-epoll, a fixed precomputed
    response per file, the least CPU per request each I/O model allows;
    every server's CPU per request is also given as a ratio to its model's
    floor), each pinned to CPU 0 with one worker (--servers picks which). The engines
    come in two pairs that differ only in the I/O model (PAIRS): the
    hand-built loops `uring` and `epoll`, and the runtimes `tokio-uring` and
    `tokio`; the report gives both pairs' ratios and each engine against
    nginx;
 5. runs interleaved rounds: for each round, for each scenario, every server
    in turn (A B C D, A B C D, ...), with wrk pinned to the other CPU(s);
    measures requests/s, p50/p99 latency, server CPU time per request,
    syscalls per request and RSS;
 6. holds 10,000 idle keep-alive connections against each server and reads
    its RSS before and after;
 7. writes bench-results/<date>/report.md, results.json and report.svg.

With --tls every server serves HTTPS instead, on the same ECDSA P-256
certificate (made here with openssl) and cipher: TLS 1.3
TLS_AES_128_GCM_SHA256 with X25519 (ringserve prefers it; nginx is
restricted to it), nginx with `ssl_session_tickets on` and its default
`ssl_buffer_size`; wrk over https:// (keep-alive 1 KiB c64, 16 KiB c64,
1 MiB c16, and `Connection: close`, a new TLS connection per request). wrk
resumes TLS sessions (checked: nginx's $ssl_session_reused was "r" for 193
of 195 connections), so `Connection: close` measures a resumed handshake;
add --tls-no-resumption (resumption off in every server: nginx tickets and
cache off, ringserve --tls-no-resumption) for a full handshake per request.
The idle connections complete a TLS handshake each.

Every process it starts is recorded and killed by PID at the end, also on
Ctrl-C, SIGTERM, an error or the overall deadline (--max-minutes).

Why wrk for every scenario (not h2load): wrk reports latency percentiles
(h2load only min/mean/max/sd), handles `Connection: close` in a timed run
(h2load -D hangs at the end with it), and pipelines HTTP/1.1 with a few lines
of Lua (h2load's -m is HTTP/2 streams unless --h1 is given). One generator for
every scenario keeps the client's own cost the same across scenarios.

Standard library only (Python 3.11). Run through ci/bench-compare.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATE_ENGINES = ["uring", "epoll", "tokio-uring", "tokio"]
# (io_uring engine, its readiness twin): each pair differs only in the I/O model.
PAIRS = [("uring", "epoll"), ("tokio-uring", "tokio")]
TWIN = {a: b for a, b in PAIRS}
NGINX = "nginx"
# The fixed-response floor servers (benches/floor.rs), one per I/O model, and
# the floor each server is measured against.
FLOOR_URING, FLOOR_EPOLL = "floor-uring", "floor-epoll"
FLOORS = {FLOOR_URING: "uring", FLOOR_EPOLL: "epoll"}
FLOOR_OF = {"uring": FLOOR_URING, "tokio-uring": FLOOR_URING,
            "epoll": FLOOR_EPOLL, "tokio": FLOOR_EPOLL, NGINX: FLOOR_EPOLL}
SERVER_CPU = 0
# Debian package that provides each tool.
PACKAGES = {"wrk": "wrk", "nginx": "nginx", "perf": "linux-perf"}
FILES = {"1k.bin": 1024, "16k.bin": 16 * 1024, "1m.bin": 1024 * 1024, "16m.bin": 16 * 1024 * 1024}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    connections: int
    depth: int = 1
    close: bool = False


# Set by --tls: {"cert": Path, "key": Path, "ca": Path}; every server speaks HTTPS.
TLS: dict | None = None


def scheme() -> str:
    return "https" if TLS else "http"


SCENARIOS = [
    Scenario("keepalive-c64", "keep-alive, 1 KiB, 64 conns", "/1k.bin", 64),
    Scenario("keepalive-c256", "keep-alive, 1 KiB, 256 conns", "/1k.bin", 256),
    Scenario("pipelined16-c64", "pipelined x16, 1 KiB, 64 conns", "/1k.bin", 64, depth=16),
    Scenario("close-c64", "Connection: close, 1 KiB, 64 conns", "/1k.bin", 64, close=True),
    Scenario("keepalive-16k-c64", "keep-alive, 16 KiB, 64 conns", "/16k.bin", 64),
    Scenario("keepalive-1m-c16", "keep-alive, 1 MiB, 16 conns", "/1m.bin", 16),
    # Only when named in --scenarios (OPT_IN_SCENARIOS): a large file, e.g. streamed from disk.
    Scenario("keepalive-16m-c16", "keep-alive, 16 MiB, 16 conns", "/16m.bin", 16),
]
# Run only when --scenarios names them.
OPT_IN_SCENARIOS = {"keepalive-16m-c16"}
# What --tls measures (the scenarios).
TLS_SCENARIOS = {"keepalive-c64", "keepalive-16k-c64", "keepalive-1m-c16", "close-c64"}


def make_tls_material(workdir: Path, procs: "Processes") -> dict:
    """A CA and an ECDSA P-256 server certificate for 127.0.0.1 (openssl),
    readable by nginx's workers."""
    pki = workdir / "pki"
    pki.mkdir(mode=0o755)
    steps = [
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "30", "-subj", "/CN=bench CA", "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.pem")],
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=localhost", "-keyout", str(pki / "server.key"), "-out", str(pki / "server.csr")],
    ]
    for cmd in steps:
        code, _, err = procs.run(cmd, timeout=60)
        if code != 0:
            raise Abort(f"{' '.join(cmd)} failed: {err}")
    (pki / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    code, _, err = procs.run(["openssl", "x509", "-req", "-in", str(pki / "server.csr"), "-CA", str(pki / "ca.pem"),
                              "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30",
                              "-extfile", str(pki / "ext.cnf"), "-out", str(pki / "server.pem")], timeout=60)
    if code != 0:
        raise Abort(f"signing the bench certificate failed: {err}")
    for path in pki.iterdir():
        path.chmod(0o644)
    return {"cert": pki / "server.pem", "key": pki / "server.key", "ca": pki / "ca.pem"}


def client_context():
    import ssl
    context = ssl.create_default_context(cafile=str(TLS["ca"]))
    context.check_hostname = False
    return context


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Abort(Exception):
    """Stops the run: a signal, the deadline, or a failure worth stopping for."""


# ---------------------------------------------------------------- processes

class Processes:
    """Every process this run started, so each is stopped by PID at the end."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen] = []
        self.extra_pids: list[int] = []  # forked by a child (nginx's worker)

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, preexec_fn=die_with_parent, **kwargs)
        self.popens.append(proc)
        return proc

    def run(self, cmd: list[str], timeout: float, **kwargs) -> tuple[int, str, str]:
        """Runs to completion within `timeout` seconds (killed otherwise)."""
        proc = self.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_pid(proc.pid, proc)
            out, err = proc.communicate()
            raise Abort(f"{cmd[0]} did not finish within {timeout:.0f} s (killed): {' '.join(cmd)}")
        finally:
            if proc.poll() is not None and proc in self.popens:
                self.popens.remove(proc)
        return proc.returncode, out, err

    def stop_all(self) -> None:
        for proc in reversed(self.popens):
            stop_pid(proc.pid, proc)
        for pid in self.extra_pids:
            stop_pid(pid, None)
        self.popens.clear()
        self.extra_pids.clear()


def die_with_parent() -> None:
    """In the child: get SIGKILL if this script dies without cleaning up
    (prctl PR_SET_PDEATHSIG survives the exec of taskset and the server)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def stop_pid(pid: int, proc: subprocess.Popen | None) -> None:
    """SIGTERM, up to 5 s of grace, then SIGKILL; by PID only."""
    if proc is not None and proc.poll() is not None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists() or proc_state(pid) == "Z":
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process: /proc/PID/stat sums every thread,
    live and exited, so a multi-threaded server is fully counted."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5); index 0 here is field 3 (state).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def tcp_retransmits() -> int:
    """The kernel's count of retransmitted TCP segments (all sockets): on
    loopback a retransmission means a dropped packet and a 200 ms stall,
    which shows up in a run's latency tail and requests/s, not in the server."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- setup

def ensure_tools(procs: Processes) -> dict[str, str]:
    """Installs missing tools with apt-get (one update first); returns paths."""
    missing = [tool for tool in PACKAGES if not shutil.which(tool)]
    if missing:
        packages = sorted({PACKAGES[tool] for tool in missing})
        log(f"installing {', '.join(packages)} (missing: {', '.join(missing)})")
        if os.geteuid() != 0:
            raise Abort(f"need root to apt-get install {' '.join(packages)}; install them and rerun")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
            code, out, err = procs.run(cmd, timeout=900, env=env)
            if code != 0:
                raise Abort(f"{' '.join(cmd)} failed:\n{out[-2000:]}{err[-2000:]}")
    paths = {}
    for tool in PACKAGES:
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if not path:
            raise Abort(f"{tool} is still missing after installing {PACKAGES[tool]}")
        paths[tool] = path
    return paths


def build_ringserve(procs: Processes) -> Path:
    log("building ringserve (cargo build --release)")
    code, out, err = procs.run(["cargo", "build", "--release", "--bin", "ringserve"], timeout=1800, cwd=REPO)
    if code != 0:
        raise Abort(f"cargo build --release failed:\n{err[-4000:]}")
    code, out, err = procs.run(["cargo", "metadata", "--no-deps", "--format-version", "1"], timeout=120, cwd=REPO)
    if code != 0:
        raise Abort(f"cargo metadata failed: {err}")
    binary = Path(json.loads(out)["target_directory"]) / "release" / "ringserve"
    if not binary.exists():
        raise Abort(f"built binary not found at {binary}")
    return binary


def build_floor(procs: Processes) -> Path:
    """Builds the floor servers (`cargo bench`'s `floor` target, release profile) and
    returns the executable cargo reports."""
    log("building the floor servers (cargo build --release --bench floor)")
    code, out, err = procs.run(["cargo", "build", "--release", "--bench", "floor", "--message-format", "json"],
                               timeout=1800, cwd=REPO)
    if code != 0:
        raise Abort(f"cargo build --release --bench floor failed:\n{err[-4000:]}")
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "floor" \
                and message.get("executable"):
            return Path(message["executable"])
    raise Abort("cargo build --bench floor named no executable")


def built_floor(target_dir: Path) -> Path | None:
    """With --skip-build: the newest floor executable already built (target/release/deps/floor-HASH)."""
    found = [p for p in (target_dir / "release" / "deps").glob("floor-*")
             if p.suffix == "" and os.access(p, os.X_OK)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def make_docroot(workdir: Path) -> Path:
    """The test files, readable by nginx's unprivileged workers."""
    docroot = workdir / "www"
    docroot.mkdir()
    for name, size in FILES.items():
        (docroot / name).write_bytes(os.urandom(size))
        (docroot / name).chmod(0o644)
    for path in (workdir, docroot):
        path.chmod(0o755)
    return docroot


def perf_available(procs: Processes, perf: str) -> tuple[bool, str]:
    """Whether `perf stat -e raw_syscalls:sys_enter` counts here; mounts
    tracefs first if the tracepoint is not visible."""
    tracing = Path("/sys/kernel/tracing")
    if not (tracing / "events" / "raw_syscalls").exists():
        procs.run(["mount", "-t", "tracefs", "nodev", str(tracing)], timeout=10)
    code, out, err = procs.run([perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "--", "true"], timeout=30)
    first = (err.strip().splitlines() or [""])[-1]
    count = first.split(",")[0]
    if code == 0 and count.isdigit():
        return True, "perf stat -e raw_syscalls:sys_enter"
    return False, f"perf tracepoint unavailable ({first or err.strip()[:200]})"


# ----------------------------------------------------------------- servers

@dataclass
class Server:
    name: str              # "epoll", "tokio-uring", "nginx"
    proc: subprocess.Popen
    port: int
    stats_pid: int         # the process whose CPU and RSS are measured
    extra_pids: list[int] = field(default_factory=list)  # nginx's worker
    head_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and Path(f"/proc/{self.stats_pid}").exists()


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def start_ringserve(procs: Processes, binary: Path, engine: str, docroot: Path, workdir: Path,
                    server_cpus: str, instance: str = "", extra_args: tuple[str, ...] = (),
                    name: str = "") -> Server | str:
    """Starts one engine (with `extra_args`: --server-args, and a --variant's own arguments)
    under `name` (default: the engine's); returns the Server, or why it was skipped."""
    name = name or engine
    cmd = pinned(server_cpus, [str(binary), "--engine", engine, "--workers", "1",
                               "--listen", "127.0.0.1:0", "--root", str(docroot), *extra_args]
                 + (["--tls-cert", str(TLS["cert"]), "--tls-key", str(TLS["key"])] if TLS else [])
                 + (["--tls-no-resumption"] if TLS and not TLS["resumption"] else []))
    return start_listening(procs, name, cmd, workdir / f"ringserve-{name}{instance}")


def start_floor(procs: Processes, binary: Path, name: str, docroot: Path, workdir: Path,
                server_cpus: str, instance: str = "") -> Server | str:
    """Starts one floor server (benches/floor.rs): `floor uring|epoll --root DOCROOT`."""
    cmd = pinned(server_cpus, [str(binary), FLOORS[name], "--root", str(docroot), "--listen", "127.0.0.1:0"])
    return start_listening(procs, name, cmd, workdir / f"{name}{instance}")


def start_listening(procs: Processes, name: str, cmd: list[str], stem: Path) -> Server | str:
    """Starts `cmd` and waits for its `listening on URL` line on stdout."""
    out_path, err_path = Path(f"{stem}.out"), Path(f"{stem}.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = procs.start(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        match = re.search(rf"listening on {scheme()}://127\.0\.0\.1:(\d+)", out_path.read_text())
        if match:
            return Server(name, proc, int(match.group(1)), proc.pid)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_pid(proc.pid, proc)
    message = err_path.read_text().strip()
    if "invalid value" in message and "--engine" in message:
        return "the binary does not know this engine name"
    return f"did not start: {message.splitlines()[0] if message else 'no message'}"


NGINX_CONF = """\
# A fair, tuned peer for ringserve: one worker, the same files, the settings
# a careful operator would use to serve small static files fast.
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 32768;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_min_uses 1;
    open_file_cache_errors on;
    types {{ text/html html; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=1024{ssl};
        root {root};
{tls}    }}
}}
"""

# With --tls: the same certificate and cipher as ringserve, tickets on,
# ssl_buffer_size at its default (16k).
NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_session_tickets {tickets};
        ssl_session_cache {cache};
"""


def start_nginx(procs: Processes, nginx: str, docroot: Path, workdir: Path, server_cpus: str) -> Server:
    """Starts nginx with its configuration, pid file and logs in `workdir`."""
    port = free_port()
    workdir.mkdir(mode=0o755, exist_ok=True)
    (workdir / "nginx-tmp").mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    tls = NGINX_TLS.format(cert=TLS["cert"], key=TLS["key"],
                           tickets="on" if TLS["resumption"] else "off",
                           cache="shared:SSL:10m" if TLS["resumption"] else "off") if TLS else ""
    conf.write_text(NGINX_CONF.format(work=workdir, port=port, root=docroot, ssl=" ssl" if TLS else "", tls=tls))
    err_log = workdir / "nginx-error.log"
    cmd = pinned(server_cpus, [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(err_log)])
    with open(workdir / "nginx.out", "w") as out:
        proc = procs.start(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (workdir / "nginx.out").read_text() + (err_log.read_text() if err_log.exists() else "")
            raise Abort(f"nginx exited at start:\n{text[-2000:]}")
        workers = children_of(proc.pid)
        if workers and port_open(port):
            procs.extra_pids.extend(workers)
            return Server(NGINX, proc, port, workers[0], extra_pids=workers)
        time.sleep(0.05)
    raise Abort("nginx did not start listening within 15 s")


def stop_server(procs: Processes, server: Server) -> None:
    stop_pid(server.proc.pid, server.proc)
    for pid in server.extra_pids:
        stop_pid(pid, None)
        procs.extra_pids.remove(pid)
    procs.popens.remove(server.proc)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def check_server(server: Server, docroot: Path) -> None:
    """Every test file comes back whole with a 200, over one keep-alive
    connection; records each response's head size (a fairness check)."""
    conn = (http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=client_context()) if TLS
            else http.client.HTTPConnection("127.0.0.1", server.port, timeout=10))
    try:
        for name in FILES:
            conn.request("GET", f"/{name}")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or body != (docroot / name).read_bytes():
                raise Abort(f"{server.name}: GET /{name} gave {response.status} with {len(body)} bytes")
            head = f"HTTP/1.1 {response.status} {response.reason}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in response.getheaders()) + "\r\n"
            server.head_bytes[name] = len(head)
    finally:
        conn.close()


# ------------------------------------------------------------------ load

def lua_script(scenario: Scenario) -> str:
    """wrk script: the scenario's request and a JSON summary line at the end."""
    lines = []
    if scenario.close:
        lines.append('wrk.headers["Connection"] = "close"')
    if scenario.depth > 1:
        # The pipeline example from wrk's own scripts: depth requests per write.
        lines += [
            "init = function(args)",
            "   local r = {}",
            f"   for i = 1, {scenario.depth} do r[i] = wrk.format() end",
            "   req = table.concat(r)",
            "end",
            "request = function() return req end",
        ]
    lines += [
        "done = function(summary, latency, requests)",
        "   local e = summary.errors",
        '   io.write(string.format("WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,'
        '\\"connect_errors\\":%d,\\"read_errors\\":%d,\\"write_errors\\":%d,\\"status_errors\\":%d,'
        '\\"timeouts\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d}\\n",',
        "      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,",
        "      e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))",
        "end",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Setup:
    wrk: str
    perf: str
    perf_ok: bool
    load_cpus: str
    wrk_threads: int
    workdir: Path
    syscalls: str   # "inline" | "separate" | "off"


def measure(procs: Processes, setup: Setup, server: Server, scenario: Scenario, duration: float,
            count_syscalls: bool) -> dict:
    """One timed wrk run against one server; the server's CPU, RSS and
    (optionally) syscalls over the same window."""
    try:
        return measure_run(procs, setup, server, scenario, duration, count_syscalls)
    except OSError as e:  # the server's /proc entry vanished: it died
        return {"error": f"server process gone during the run ({e})"}


def measure_run(procs: Processes, setup: Setup, server: Server, scenario: Scenario, duration: float,
                count_syscalls: bool) -> dict:
    script = setup.workdir / f"wrk-{scenario.key}.lua"
    script.write_text(lua_script(scenario))
    pid = server.stats_pid
    perf_proc, perf_out = None, setup.workdir / "perf.out"
    if count_syscalls:
        perf_out.unlink(missing_ok=True)
        perf_proc = procs.start(pinned(setup.load_cpus, [setup.perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter",
                                                         "-o", str(perf_out), "-p", str(pid)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let perf attach before the window opens
    cpu_before, retrans_before = cpu_seconds(pid), tcp_retransmits()
    started = time.monotonic()
    cmd = pinned(setup.load_cpus, [setup.wrk, f"-t{setup.wrk_threads}", f"-c{scenario.connections}",
                                   f"-d{duration:g}s", "--timeout", "5s", "-s", str(script),
                                   f"{scheme()}://127.0.0.1:{server.port}{scenario.path}"])
    code, out, err = procs.run(cmd, timeout=duration + 30)
    wall = time.monotonic() - started
    cpu_used = cpu_seconds(pid) - cpu_before
    retransmits = tcp_retransmits() - retrans_before
    syscalls = None
    if perf_proc is not None:
        perf_proc.send_signal(signal.SIGINT)
        try:
            perf_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_pid(perf_proc.pid, perf_proc)
        procs.popens.remove(perf_proc)
        syscalls = parse_perf(perf_out)
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if code != 0 or not match:
        return {"error": f"wrk failed (exit {code}): {(err or out).strip()[-300:]}"}
    w = json.loads(match.group(1))
    requests = w["requests"]
    errors = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    result = {
        "requests": requests,
        "rps": requests / (w["duration_us"] / 1e6) if w["duration_us"] else 0.0,
        # wrk's percentile() returns 0 when its coordinated-omission
        # correction moved samples below the recorded minimum: unknown, not 0.
        "p50_ms": w["p50_us"] / 1000 if w["p50_us"] else None,
        "p99_ms": w["p99_us"] / 1000 if w["p99_us"] else None,
        "cpu_s": cpu_used,
        "cpu_us_per_req": cpu_used * 1e6 / requests if requests else None,
        "server_cpu_util": cpu_used / wall,
        "syscalls_per_req": syscalls / requests if (syscalls is not None and requests) else None,
        "rss_kib": rss_kib(pid),
        "bytes_per_req": w["bytes"] / requests if requests else 0,
        "errors": errors,
        "retransmits": retransmits,
        "error_detail": {k: w[k] for k in ("connect_errors", "read_errors", "write_errors",
                                            "status_errors", "timeouts") if w[k]},
    }
    if requests == 0:
        result["error"] = "no request completed"
    return result


def parse_perf(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if "raw_syscalls:sys_enter" in line:
            value = line.split(",")[0]
            return int(value) if value.isdigit() else None
    return None


# ---------------------------------------------------------------- idle conns

def idle_client_main(port: int, count: int, ca: str | None = None) -> int:
    """Child mode: open `count` keep-alive connections (TLS, trusting `ca`,
    if given), make one request on each, report, hold them until told to
    close (a line on stdin or EOF)."""
    context = None
    if ca:
        import ssl
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
    needed = count + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
        except (ValueError, OSError) as e:
            print(f"ERROR cannot raise the fd limit to {needed} (soft {soft}, hard {hard}): {e}", flush=True)
            return 1
    request = b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = []
    try:
        for start in range(0, count, 250):
            batch = []
            for _ in range(min(250, count - start)):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                if context is not None:
                    s = context.wrap_socket(s)
                s.sendall(request)
                batch.append(s)
            for s in batch:
                read_one_response(s)
            held.extend(batch)
    except OSError as e:
        print(f"ERROR after {len(held)} connections: {e}", flush=True)
        return 1
    print(f"OPEN {len(held)}", flush=True)
    sys.stdin.readline()
    for s in held:
        s.close()
    return 0


def read_one_response(s: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"unexpected response {head[:40]!r}")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("server closed the connection mid-body")
        body += chunk


def measure_idle(procs: Processes, setup: Setup, server: Server, count: int) -> dict:
    """Server RSS before and while `count` idle keep-alive connections are
    held. `server` should be a fresh instance that has served only the check
    requests, so memory kept from earlier load does not hide the cost."""
    pid = server.stats_pid
    time.sleep(0.5)
    before_kib, fds_before = rss_kib(pid), open_fds(pid)
    cmd = pinned(setup.load_cpus, [sys.executable, str(Path(__file__).resolve()),
                                   "--idle-client", str(server.port), str(count)]
                 + ([str(TLS["ca"])] if TLS else []))
    client = procs.start(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([client.stdout], [], [], 120)
        line = client.stdout.readline().strip() if ready else "ERROR no answer within 120 s"
        if not line.startswith("OPEN"):
            return {"error": f"idle client: {line or 'exited'}"}
        held = int(line.split()[1])
        time.sleep(1.0)  # let the server settle after the last request
        after_kib, fds_after = rss_kib(pid), open_fds(pid)
        return {
            "connections": held,
            "rss_before_kib": before_kib,
            "rss_after_kib": after_kib,
            "bytes_per_conn": (after_kib - before_kib) * 1024 / held,
            "server_fds_added": fds_after - fds_before,
        }
    finally:
        try:
            client.stdin.write("close\n")
            client.stdin.close()
            client.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_pid(client.pid, client)
        procs.popens.remove(client)


def describe_run(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    text = (f"{r['rps']:>9,.0f} req/s  CPU {fmt(r['cpu_us_per_req'], 2):>6} µs/req  "
            f"p99 {fmt(r['p99_ms'], 2, ' ms')}")
    if r.get("syscalls_per_req") is not None:
        text += f"  syscalls {fmt(r['syscalls_per_req'], 2)}/req"
    if r["retransmits"]:
        text += f"  TCP retransmits {r['retransmits']}"
    if r["errors"]:
        text += f"  ERRORS {r['error_detail']}"
    return text


def describe_idle(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    return (f"{r['bytes_per_conn']:,.0f} bytes/connection "
            f"(RSS {r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB)")


# ------------------------------------------------------------------ stats

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def paired_ratio(results, server, reference, scenario, metric):
    """Median over rounds of server/reference, each ratio taken within one round."""
    ratios = []
    for mine, theirs in zip(results[server][scenario], results[reference][scenario]):
        a, b = mine.get(metric), theirs.get(metric)
        if a is not None and b:
            ratios.append(a / b)
    return median(ratios), spread(ratios)


def fmt(value, digits=1, unit=""):
    if value is None:
        return "n/a"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


def fmt_range(values, digits=1):
    low, high = spread(values)
    if low is None:
        return "n/a"
    return f"{fmt(median(values), digits)} ({fmt(low, digits)}–{fmt(high, digits)})"


# ----------------------------------------------------------------- report

def write_report(out_dir: Path, meta: dict, servers: list[str], results: dict, idle: dict) -> Path:
    scenarios = [s for s in SCENARIOS if any(results[n].get(s.key) for n in servers)]
    lines = []
    title = "ringserve vs nginx" + (" over HTTPS" if meta.get("tls") else "")
    if meta["quick"]:
        title += " — SMOKE RUN (--quick: short runs, not for quoting)"
    lines += [f"# {title}", "", f"Date: {meta['date']}  ", f"Command: `{meta['command']}`", ""]
    lines += ["## Setup", ""]
    for key, value in meta["setup"].items():
        lines.append(f"- **{key}**: {value}")
    lines += ["", "## How to read this", "",
              "- **CPU µs/req** (server utime+stime over the run ÷ requests served) is the figure to trust: "
              "on this machine the load generator caps requests/s, so requests/s mostly measures wrk.",
              "- Each cell is the median over rounds, with min–max in parentheses. Ratios are the median of "
              "per-round ratios (each taken within one round, servers measured back to back), so drift "
              "between rounds cancels. A CPU ratio below 1 means less CPU per request than the reference "
              "(better); a req/s ratio above 1 means more requests per second.",
              f"- syscalls/req: {meta['syscall_note']}",
              "- RSS: the server's resident memory after the run (nginx: its worker process).",
              "- **floor-uring / floor-epoll** (benches/floor.rs) answer every request with one precomputed "
              "response and parse nothing but the end of each head: the least CPU per request a server on "
              "that I/O model could spend here. **CPU vs floor** divides each server's CPU per request by its "
              "model's floor (uring, tokio-uring and their variants: floor-uring; epoll, tokio, nginx: "
              "floor-epoll), paired per round: 1.00 would be a server with no cost of its own.",
              "- A **variant** (--variant NAME=ENGINE:ARGS) is ENGINE started with extra switches, measured in the "
              "same rounds; its ratios to ENGINE are paired per round.",
              "- Latency is wrk's: measured by a client that is itself saturated, and including wrk's "
              "coordinated-omission correction; with pipelining it is per batch. n/a: wrk returned 0 for the "
              "percentile (a wrk quirk after that correction). Use it to spot stalls, not to rank servers.",
              "- TCP retrans (raw table): retransmitted segments during the run, machine-wide. On loopback "
              "each one is a dropped packet and a 200 ms stall; such runs have inflated p99 and lower req/s "
              "for reasons outside the server.",
              ""]
    lines += ["## Main table", ""]
    floor_of = meta.get("floor_of", {})
    header = ("| scenario | server | req/s | p50 ms | p99 ms | CPU µs/req | CPU vs nginx | CPU vs twin "
              "| CPU vs floor | req/s vs nginx | syscalls/req | RSS MiB | errors |")
    lines += [header, "|---" * (header.count("|") - 1) + "|"]
    for s in scenarios:
        for name in servers:
            runs = results[name].get(s.key, [])
            ok = [r for r in runs if "error" not in r]
            if not runs:
                continue

            def col(metric, digits=1):
                return fmt_range([r.get(metric) for r in ok], digits)

            def ratio(reference, metric):
                if name == reference or reference not in results:
                    return "—"
                value, (low, high) = paired_ratio(results, name, reference, s.key, metric)
                return "n/a" if value is None else f"{value:.2f} ({low:.2f}–{high:.2f})"
            rss = median([r.get("rss_kib") for r in ok])
            syscalls = (fmt(median([r.get("syscalls_per_req") for r in ok]), 2) if meta["syscall_pass"]
                        else col("syscalls_per_req", 2))
            errors = sum(r.get("errors", 0) for r in ok) + sum(1 for r in runs if "error" in r)
            lines.append(
                f"| {s.title} | {name} | {col('rps', 0)} | {fmt(median([r.get('p50_ms') for r in ok]), 2)} "
                f"| {fmt(median([r.get('p99_ms') for r in ok]), 2)} | {col('cpu_us_per_req', 2)} "
                f"| {ratio(NGINX, 'cpu_us_per_req')} | {ratio(TWIN.get(name, name), 'cpu_us_per_req')} "
                f"| {ratio(floor_of.get(name, name), 'cpu_us_per_req')} | {ratio(NGINX, 'rps')} | {syscalls} "
                f"| {fmt(rss / 1024 if rss else None, 1)} | {errors} |")
    lines.append("")
    lines += pair_table(scenarios, servers, results, idle, meta)
    lines += floor_table(scenarios, servers, results, meta)
    lines += variant_table(scenarios, servers, results, meta)
    if any(idle.values()):
        lines += ["## Idle keep-alive connections", "",
                  "Connections opened, one request each, then held; server RSS read before opening and "
                  "1 s after the last response.", "",
                  "| server | connections held | RSS before MiB | RSS after MiB | bytes per connection "
                  "| server fds added |", "|---|---|---|---|---|---|"]
        for name in servers:
            for r in idle.get(name, []):
                if "error" in r:
                    lines.append(f"| {name} | error: {r['error']} | | | | |")
                    continue
                lines.append(f"| {name} | {r['connections']:,} | {r['rss_before_kib'] / 1024:.1f} "
                             f"| {r['rss_after_kib'] / 1024:.1f} | {r['bytes_per_conn']:,.0f} "
                             f"| {r['server_fds_added']:,} |")
        lines.append("")
    lines += ["## Chart", "", "![CPU µs per request and requests/s](report.svg)", ""]
    lines += ["## Raw numbers, per round", "",
              "| round | scenario | server | requests | req/s | p50 ms | p99 ms | server CPU s | CPU util "
              "| CPU µs/req | syscalls/req | RSS MiB | bytes/resp | TCP retrans | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        for name in servers:
            for index, r in enumerate(results[name].get(s.key, [])):
                if "error" in r:
                    lines.append(f"| {index + 1} | {s.key} | {name} | error: {r['error']} "
                                 "| | | | | | | | | | | |")
                    continue
                detail = ", ".join(f"{k} {v}" for k, v in r["error_detail"].items()) or "0"
                lines.append(
                    f"| {index + 1} | {s.key} | {name} | {r['requests']:,} | {r['rps']:,.0f} "
                    f"| {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['cpu_s']:.2f} "
                    f"| {r['server_cpu_util']:.0%} | {fmt(r['cpu_us_per_req'], 2)} | {fmt(r['syscalls_per_req'], 2)} "
                    f"| {r['rss_kib'] / 1024:.1f} | {r['bytes_per_req']:,.0f} | {r['retransmits']} | {detail} |")
    if meta.get("syscall_pass"):
        lines += ["", "Syscalls were counted in a separate pass (perf attached), one run per server and "
                  "scenario after the timed rounds; that pass's CPU figures are not used above.", ""]
    lines.append("")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def pair_table(scenarios, servers, results, idle, meta) -> list[str]:
    """Both pairs side by side: what io_uring changes against epoll, for the
    hand-built loops and for the runtimes, per scenario (paired per-round CPU
    ratios; syscalls and idle memory as plain ratios of medians)."""
    pairs = [(a, b) for a, b in PAIRS if a in servers and b in servers]
    if not pairs:
        return []
    names = [f"{a} ÷ {b}" for a, b in pairs]
    lines = ["## The two pairs", "",
             "Each ratio is the io_uring engine over its readiness twin: below 1, io_uring costs less. "
             "CPU: median of per-round ratios (min–max); syscalls/req and idle bytes: ratio of medians.", "",
             "| scenario | " + " | ".join(f"CPU {n}" for n in names) + " | "
             + " | ".join(f"syscalls {n}" for n in names) + " |",
             "|---" * (1 + 2 * len(pairs)) + "|"]

    def plain(a, b, values_of):
        va, vb = median(values_of(a)), median(values_of(b))
        return "n/a" if not va or not vb else f"{va / vb:.2f} ({va:.2f} / {vb:.2f})"

    for s in scenarios:
        cpu = []
        for a, b in pairs:
            value, (low, high) = paired_ratio(results, a, b, s.key, "cpu_us_per_req")
            cpu.append("n/a" if value is None else f"{value:.2f} ({low:.2f}–{high:.2f})")
        sys_ = [plain(a, b, lambda n: [r.get("syscalls_per_req") for r in results[n].get(s.key, [])
                                       if "error" not in r]) for a, b in pairs]
        lines.append(f"| {s.title} | " + " | ".join(cpu) + " | " + " | ".join(sys_) + " |")
    if idle:
        row = [plain(a, b, lambda n: [r.get("bytes_per_conn") for r in idle.get(n, []) if "error" not in r])
               for a, b in pairs]
        lines.append("| idle keep-alive, bytes per connection | " + " | ".join(row) + " | "
                     + " | ".join("" for _ in pairs) + " |")
    lines.append("")
    return lines


def paired_cell(results, name, reference, scenario, metric) -> str:
    value, (low, high) = paired_ratio(results, name, reference, scenario, metric)
    return "n/a" if value is None else f"{value:.2f} ({low:.2f}–{high:.2f})"


def floor_table(scenarios, servers, results, meta) -> list[str]:
    """The floors' own figures and every server's distance to its floor."""
    floor_of = meta.get("floor_of", {})
    floors = [f for f in FLOORS if f in servers]
    others = [n for n in servers if n in floor_of]
    if not floors:
        return []
    lines = ["## Distance to the floor", "",
             "The floors' own CPU µs/req and syscalls/req (median over rounds), then each server's CPU per "
             "request over its I/O model's floor (median of per-round ratios, min–max): how far the server is "
             "from a loop with no HTTP work of its own.", ""]
    head = ([f"{f} CPU µs/req" for f in floors] + [f"{f} syscalls/req" for f in floors]
            + [f"{n} ÷ {floor_of[n]}" for n in others])
    lines += ["| scenario | " + " | ".join(head) + " |", "|---" * (1 + len(head)) + "|"]
    for s in scenarios:
        ok = {f: [r for r in results[f].get(s.key, []) if "error" not in r] for f in floors}
        cells = ([fmt(median([r.get("cpu_us_per_req") for r in ok[f]]), 2) for f in floors]
                 + [fmt(median([r.get("syscalls_per_req") for r in ok[f]]), 2) for f in floors]
                 + [paired_cell(results, n, floor_of[n], s.key, "cpu_us_per_req") for n in others])
        lines.append(f"| {s.title} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def variant_table(scenarios, servers, results, meta) -> list[str]:
    """Each --variant against its base engine, measured in the same rounds."""
    base_of = meta.get("base_of", {})
    if not base_of:
        return []
    lines = ["## Variants", "",
             "Each variant is its base engine with extra switches (see Setup). CPU and req/s: median of "
             "per-round ratios variant ÷ base (min–max); syscalls/req and p99: variant / base medians.", "",
             "| scenario | variant | base | CPU µs/req | CPU ÷ base | req/s ÷ base | syscalls/req | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        for name, base in base_of.items():
            mine = [r for r in results[name].get(s.key, []) if "error" not in r]
            theirs = [r for r in results[base].get(s.key, []) if "error" not in r]

            def both(metric, digits=2):
                return (f"{fmt(median([r.get(metric) for r in mine]), digits)} / "
                        f"{fmt(median([r.get(metric) for r in theirs]), digits)}")
            lines.append(f"| {s.title} | {name} | {base} | {fmt_range([r.get('cpu_us_per_req') for r in mine], 2)} "
                         f"| {paired_cell(results, name, base, s.key, 'cpu_us_per_req')} "
                         f"| {paired_cell(results, name, base, s.key, 'rps')} "
                         f"| {both('syscalls_per_req')} | {both('p99_ms')} |")
    lines.append("")
    return lines


COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd"]


def write_svg(out_dir: Path, meta: dict, servers: list[str], results: dict) -> Path:
    """A grid of bar charts by hand: one column per scenario, one row per
    metric (CPU µs/request, requests/s); bars are medians, whiskers min–max."""
    scenarios = [s for s in SCENARIOS if any(results[n].get(s.key) for n in servers)]
    metrics = [("cpu_us_per_req", "server CPU µs per request (lower is better)"),
               ("rps", "requests per second (higher is better)")]
    cell_w, cell_h, top, left, row_h = 190, 200, 70, 60, 250
    width = left + cell_w * len(scenarios) + 20
    height = top + len(metrics) * row_h
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", width=str(width), height=str(height),
                     viewBox=f"0 0 {width} {height}", **{"font-family": "sans-serif", "font-size": "11"})
    ET.SubElement(svg, "rect", width=str(width), height=str(height), fill="white")
    title = f"ringserve vs nginx, {meta['date']}" + (" — SMOKE RUN" if meta["quick"] else "")
    ET.SubElement(svg, "text", x=str(left), y="20", **{"font-size": "15", "font-weight": "bold"}).text = title
    for i, name in enumerate(servers):
        x = left + i * 120
        ET.SubElement(svg, "rect", x=str(x), y="32", width="12", height="12", fill=COLOURS[i % len(COLOURS)])
        ET.SubElement(svg, "text", x=str(x + 16), y="42").text = name
    for row, (metric, label) in enumerate(metrics):
        y0 = top + row * row_h
        ET.SubElement(svg, "text", x=str(left), y=str(y0 + 8), **{"font-size": "13", "font-weight": "bold"}).text = label
        for col, s in enumerate(scenarios):
            x0 = left + col * cell_w
            plot_top, plot_bottom = y0 + 30, y0 + 30 + cell_h - 40
            values = {n: [r.get(metric) for r in results[n].get(s.key, []) if "error" not in r] for n in servers}
            peak = max([max([v for v in vs if v is not None], default=0) for vs in values.values()] + [0])
            scale = (plot_bottom - plot_top) / (peak * 1.15) if peak else 0
            ET.SubElement(svg, "line", x1=str(x0 + 10), x2=str(x0 + cell_w - 15), y1=str(plot_bottom),
                          y2=str(plot_bottom), stroke="#333")
            bar_w = (cell_w - 40) / max(len(servers), 1)
            for i, name in enumerate(servers):
                vs = [v for v in values[name] if v is not None]
                if not vs:
                    continue
                mid, (low, high) = statistics.median(vs), spread(vs)
                bx = x0 + 15 + i * bar_w
                h = mid * scale
                ET.SubElement(svg, "rect", x=f"{bx:.1f}", y=f"{plot_bottom - h:.1f}", width=f"{bar_w - 4:.1f}",
                              height=f"{h:.1f}", fill=COLOURS[i % len(COLOURS)])
                cx = bx + (bar_w - 4) / 2
                ET.SubElement(svg, "line", x1=f"{cx:.1f}", x2=f"{cx:.1f}", y1=f"{plot_bottom - low * scale:.1f}",
                              y2=f"{plot_bottom - high * scale:.1f}", stroke="black")
                text = f"{mid:,.0f}" if mid >= 100 else f"{mid:.2f}" if mid < 10 else f"{mid:.1f}"
                ET.SubElement(svg, "text", x=f"{cx:.1f}", y=f"{plot_bottom - high * scale - 4:.1f}",
                              **{"text-anchor": "middle", "font-size": "9"}).text = text
            ET.SubElement(svg, "text", x=str(x0 + cell_w / 2), y=str(plot_bottom + 16),
                          **{"text-anchor": "middle"}).text = s.title.split(", ", 1)[0]
            ET.SubElement(svg, "text", x=str(x0 + cell_w / 2), y=str(plot_bottom + 30),
                          **{"text-anchor": "middle", "fill": "#555"}).text = s.title.split(", ", 1)[-1]
    path = out_dir / "report.svg"
    ET.ElementTree(svg).write(path, encoding="utf-8", xml_declaration=True)
    ET.parse(path)  # what we wrote must parse back as XML
    return path


# ------------------------------------------------------------------- main

def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, Linux {platform.release()}"


def tool_version(procs: Processes, cmd: list[str]) -> str:
    try:
        code, out, err = procs.run(cmd, timeout=30)
    except (Abort, OSError):
        return "unknown"
    text = (out + err).strip().splitlines()
    return text[0].strip() if text else "unknown"


def git_revision(procs: Processes) -> str:
    try:
        _, rev, _ = procs.run(["git", "rev-parse", "--short", "HEAD"], timeout=30, cwd=REPO)
        _, dirty, _ = procs.run(["git", "status", "--porcelain", "--untracked-files=no"], timeout=30, cwd=REPO)
    except (Abort, OSError):
        return "unknown"
    return rev.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ci/bench-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 2)")
    parser.add_argument("--duration", type=float, help="seconds per timed run (default 8; --quick: 2)")
    parser.add_argument("--idle-connections", type=int, help="idle keep-alive connections (default 10000; --quick: 2000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes; not for quoting")
    parser.add_argument("--syscalls", choices=["inline", "separate", "off"], default="separate",
                        help="count syscalls with perf during the timed rounds (inline), in one extra run per "
                             "server and scenario after them (separate, default: perf's own overhead then "
                             "does not touch the CPU figures), or not at all")
    parser.add_argument("--scenarios", help="comma-separated subset of: " + ",".join(s.key for s in SCENARIOS))
    parser.add_argument("--no-nginx", action="store_true", help="compare the ringserve engines only")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor servers (benches/floor.rs: floor-uring, floor-epoll), the fixed-"
                             "response loops every server's CPU per request is divided by in the report "
                             "(skipped anyway with --tls: they speak plain HTTP only)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ENGINE:ARGS",
                        help="also run ENGINE with ARGS (shell words, e.g. hidden switches) as a server called "
                             "NAME, interleaved with the others and reported with paired ratios to ENGINE "
                             "(which then runs too); repeatable, e.g. "
                             "--variant splice=uring:--uring-splice")
    parser.add_argument("--servers",
                        help="comma-separated servers to run, from: " + ",".join(CANDIDATE_ENGINES + [NGINX, *FLOORS])
                             + " (default: all); every --variant runs, and its base engine with it, e.g. "
                               "--servers uring,floor-uring --variant ... for a short switch table")
    parser.add_argument("--out", type=Path, help="output directory (default bench-results/<date>[-quick])")
    parser.add_argument("--max-minutes", type=float, default=45, help="abort the whole run after this long")
    parser.add_argument("--skip-build", action="store_true",
                        help="use the existing release binary (and the newest floor built in target/release/deps)")
    parser.add_argument("--tls-no-resumption", action="store_true",
                        help="with --tls: session resumption off in every server (no tickets, no cache), so "
                             "close-c64 is a full handshake per request (wrk resumes sessions otherwise)")
    parser.add_argument("--tls", action="store_true",
                        help="every server over HTTPS (same ECDSA P-256 certificate, TLS 1.3 "
                             "TLS_AES_128_GCM_SHA256); the scenarios: " + ",".join(sorted(TLS_SCENARIOS)))
    parser.add_argument("--server-args", default="",
                        help="extra arguments for every ringserve, e.g. --server-args='--metrics-listen 127.0.0.1:0' "
                             "(with '=') to measure what the metrics counters cost; recorded in the report's command")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    if args.idle_connections is None:
        args.idle_connections = 2000 if args.quick else 10000
    if args.rounds < 1 or args.duration < 1 or args.idle_connections < 0:
        parser.error("--rounds and --duration must be at least 1, --idle-connections at least 0")
    if args.duration != int(args.duration):
        parser.error("--duration must be whole seconds (wrk rejects fractions)")
    builtin = CANDIDATE_ENGINES + [NGINX, *FLOORS]
    args.variants = []
    for text in args.variant:
        name, _, rest = text.partition("=")
        engine, _, extra = rest.partition(":")
        if not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or engine not in CANDIDATE_ENGINES:
            parser.error(f"--variant {text!r}: want NAME=ENGINE:ARGS with ENGINE one of {', '.join(CANDIDATE_ENGINES)}")
        if name in builtin or name in {v[0] for v in args.variants}:
            parser.error(f"--variant {text!r}: the name {name} is taken")
        args.variants.append((name, engine, tuple(shlex.split(extra))))
    if args.servers:
        args.servers = [n for n in args.servers.split(",") if n]
        unknown = [n for n in args.servers if n not in builtin and n not in {v[0] for v in args.variants}]
        if unknown:
            parser.error(f"--servers: unknown server(s) {', '.join(unknown)}; known: {', '.join(builtin)}")
    return args


def main(argv: list[str]) -> int:
    global TLS
    args = parse_args(argv)
    scenarios = [s for s in SCENARIOS if s.key in TLS_SCENARIOS] if args.tls else SCENARIOS
    if args.scenarios:
        wanted = args.scenarios.split(",")
        unknown = [w for w in wanted if w not in {s.key for s in SCENARIOS}]
        if unknown:
            print(f"bench-compare: unknown scenario(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        scenarios = [s for s in scenarios if s.key in wanted]
    else:
        scenarios = [s for s in scenarios if s.key not in OPT_IN_SCENARIOS]

    procs = Processes()

    def on_signal(signum, _frame):
        raise Abort(f"stopped by signal {signal.Signals(signum).name}")

    def on_deadline(_signum, _frame):
        raise Abort(f"the run passed --max-minutes {args.max_minutes:g}; stopping")

    # SIGINT explicitly too: a shell starts background jobs with SIGINT
    # ignored, and Python then raises no KeyboardInterrupt.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_deadline)
    signal.alarm(int(args.max_minutes * 60))
    workdir = None
    try:
        tools = ensure_tools(procs)
        target_dir = Path(json.loads(subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=REPO, check=True,
            capture_output=True, text=True).stdout)["target_directory"])
        binary = target_dir / "release" / "ringserve" if args.skip_build else build_ringserve(procs)
        wanted = set(args.servers or CANDIDATE_ENGINES + [NGINX, *FLOORS])
        for _, engine, _ in args.variants:
            if engine not in wanted:
                log(f"--variant needs its base engine: running {engine} too")
                wanted.add(engine)
        if args.no_nginx:
            wanted.discard(NGINX)
        floors_wanted = [f for f in FLOORS if f in wanted and not args.no_floor]
        floor_note = "not run" + (" (--no-floor)" if args.no_floor else "")
        if floors_wanted and args.tls:
            log("floor servers skipped: they speak plain HTTP only (--tls)")
            floor_note, floors_wanted = "not run (--tls: the floors speak plain HTTP only)", []
        floor_binary = None
        if floors_wanted:
            floor_binary = built_floor(target_dir) if args.skip_build else build_floor(procs)
            if floor_binary is None:
                log("floor servers skipped: no built floor executable (run once without --skip-build, "
                    "or cargo build --release --bench floor)")
                floor_note, floors_wanted = "not run (not built)", []
            else:
                floor_note = (f"{', '.join(floors_wanted)}: benches/floor.rs ({floor_binary.name}), one thread, "
                              "a fixed precomputed response per file, no parsing beyond the end of each head")
        cpus = os.cpu_count() or 1
        if cpus >= 2:
            server_cpus, load_cpus = str(SERVER_CPU), ("1" if cpus == 2 else f"1-{cpus - 1}")
            # Keep this script off the server's CPU too.
            os.sched_setaffinity(0, set(range(1, cpus)))
        else:
            server_cpus, load_cpus = "", ""
            log("only one CPU: nothing is pinned, and server and client share it")
        wrk_threads = max(1, min(cpus - 1, 4))
        workdir = Path(tempfile.mkdtemp(prefix="ringserve-bench-"))
        docroot = make_docroot(workdir)
        if args.tls:
            TLS = make_tls_material(workdir, procs)
            TLS["resumption"] = not args.tls_no_resumption
        perf_ok, perf_note = perf_available(procs, tools["perf"]) if args.syscalls != "off" else (False, "off")
        setup = Setup(tools["wrk"], tools["perf"], perf_ok, load_cpus, wrk_threads, workdir, args.syscalls)

        server_args = tuple(shlex.split(args.server_args))
        # name -> (engine, extra ringserve arguments) for every ringserve, variants included;
        # each engine is followed by its variants in the round order.
        ringserves: dict[str, tuple[str, tuple[str, ...]]] = {}
        for engine in CANDIDATE_ENGINES:
            if engine in wanted:
                ringserves[engine] = (engine, server_args)
            for name, base, extra in args.variants:
                if base == engine:
                    ringserves[name] = (engine, server_args + extra)
        base_of = {name: base for name, base, _ in args.variants}

        def start_fresh(name: str, instance: str) -> Server | str:
            if name == NGINX:
                return start_nginx(procs, tools["nginx"], docroot, workdir / f"nginx{instance}", server_cpus)
            if name in FLOORS:
                return start_floor(procs, floor_binary, name, docroot, workdir, server_cpus, instance)
            engine, extra = ringserves[name]
            return start_ringserve(procs, binary, engine, docroot, workdir, server_cpus, instance, extra, name)

        servers: list[Server] = []
        skipped = {}
        for name, (engine, extra) in ringserves.items():
            started = start_fresh(name, "")
            what = f"ringserve --engine {engine}" + (f" {shlex.join(extra)}" if extra else "") + \
                (f" (variant {name})" if name in base_of else "")
            if isinstance(started, Server):
                servers.append(started)
                log(f"{what}: listening on 127.0.0.1:{started.port} (pid {started.proc.pid})")
            else:
                skipped[name] = started
                log(f"{what}: skipped, {started}")
        if NGINX in wanted:
            nginx = start_nginx(procs, tools["nginx"], docroot, workdir / "nginx", server_cpus)
            servers.append(nginx)
            log(f"nginx: listening on 127.0.0.1:{nginx.port} (master {nginx.proc.pid}, worker {nginx.stats_pid})")
        for name in floors_wanted:
            started = start_fresh(name, "")
            if isinstance(started, Server):
                servers.append(started)
                log(f"{name}: listening on 127.0.0.1:{started.port} (pid {started.proc.pid})")
            else:
                skipped[name] = started
                log(f"{name}: skipped, {started}")
        if not servers:
            raise Abort("no server started")
        for server in servers:
            check_server(server, docroot)
        names = [s.name for s in servers]

        per_run = args.duration + (1.0 if args.syscalls == "inline" else 0.5)
        estimate = len(servers) * (len(scenarios) * (args.rounds * per_run + (args.duration / 2 + 1.5
                                   if args.syscalls == "separate" and perf_ok else 0)) + 1
                                   + args.rounds * (2 + args.idle_connections / 2500))
        log(f"{len(servers)} servers x {len(scenarios)} scenarios x {args.rounds} rounds of {args.duration:g} s; "
            f"about {estimate / 60:.1f} minutes")

        for server in servers:  # warm-up, not recorded
            measure(procs, setup, server, scenarios[0], 1, False)

        results = {name: {s.key: [] for s in scenarios} for name in names}
        idle = {name: [] for name in names}
        inline = args.syscalls == "inline" and perf_ok
        for round_index in range(args.rounds):
            progress = f"round {round_index + 1}/{args.rounds}"
            for s in scenarios:
                for server in servers:
                    if not server.alive:
                        results[server.name][s.key].append({"error": "server is not running"})
                        continue
                    r = measure(procs, setup, server, s, args.duration, inline)
                    results[server.name][s.key].append(r)
                    log(f"{progress} {s.key:18} {server.name:12} {describe_run(r)}")
                    time.sleep(0.3)
            if args.idle_connections:
                for server in servers:
                    if server.name in FLOORS:  # a floor holds no state worth measuring
                        continue
                    fresh = start_fresh(server.name, f"-idle{round_index}")
                    if isinstance(fresh, str):
                        r = {"error": fresh}
                    else:
                        try:
                            check_server(fresh, docroot)
                            r = measure_idle(procs, setup, fresh, args.idle_connections)
                        finally:
                            stop_server(procs, fresh)
                    idle[server.name].append(r)
                    log(f"{progress} idle-{args.idle_connections:<13} {server.name:12} {describe_idle(r)}")
        separate = args.syscalls == "separate" and perf_ok
        if separate:
            log("syscall pass: one run per server and scenario with perf attached")
            for s in scenarios:
                for server in servers:
                    if not server.alive:
                        continue
                    # Whole seconds: wrk rejects -d1.5s.
                    r = measure(procs, setup, server, s, float(max(1, int(args.duration / 2))), True)
                    value = r.get("syscalls_per_req")
                    for run in results[server.name][s.key]:
                        if "error" not in run:
                            run["syscalls_per_req"] = value
                    log(f"syscalls {s.key:18} {server.name:12} {fmt(value, 2)}/req")
        for server in servers:
            if not server.alive:
                log(f"WARNING: {server.name} died during the run")

        date = dt.date.today().isoformat()
        out_dir = args.out or REPO / "bench-results" / (date + ("-tls" if args.tls else "")
                                                        + ("-full-handshake" if args.tls_no_resumption else "")
                                                        + ("-quick" if args.quick else ""))
        out_dir.mkdir(parents=True, exist_ok=True)
        nginx_version = tool_version(procs, [tools["nginx"], "-v"]) if NGINX in names else "not run"
        syscall_note = (
            ("counted with perf stat -e raw_syscalls:sys_enter -p PID in every timed run" if inline else
             "counted with perf stat -e raw_syscalls:sys_enter -p PID in one extra run per server and "
             "scenario after the timed rounds (the same value is shown for every round)")
            if perf_ok else f"n/a: {perf_note}")
        meta = {
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "quick": args.quick,
            "command": "ci/bench-compare " + " ".join(argv),
            "syscall_note": syscall_note,
            "syscall_pass": separate,
            "tls": args.tls,
            # Whom each server's CPU per request is divided by.
            "floor_of": {n: FLOOR_OF.get(base_of.get(n, n)) for n in names
                         if FLOOR_OF.get(base_of.get(n, n)) in names},
            "base_of": {n: b for n, b in base_of.items() if n in names and b in names},
            "setup": {
                "machine": machine_description(),
                "ringserve": f"commit {git_revision(procs)}, `cargo build --release`, "
                             f"`--workers 1`, engines: {', '.join(s.name for s in servers if s.name in ringserves)}"
                             + (f"; skipped: {'; '.join(f'{k} ({v})' for k, v in skipped.items())}" if skipped else ""),
                "nginx": f"{nginx_version}; `worker_processes 1`, sendfile on, tcp_nopush on, tcp_nodelay on, "
                         "reuseport, backlog 1024, access_log off, open_file_cache, keepalive_requests 10000000 "
                         "(configuration in results.json)" if NGINX in names else "not run",
                "variants": "; ".join(f"{n} = {e} {shlex.join(x)}" for n, e, x in args.variants) or "none",
                "floor": floor_note,
                "pinning": (f"servers on CPU {server_cpus} (taskset), wrk -t{wrk_threads} and this script on CPU "
                            f"{load_cpus}" if server_cpus else "none (one CPU)"),
                "load generator": f"{tool_version(procs, [tools['wrk'], '--version']).split(' Copyright')[0]} (every scenario; "
                                  "pipelining by a Lua script; latency percentiles from wrk)",
                "protocol": (("HTTPS: TLS 1.3 TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256 certificate; "
                              "ssl_buffer_size default; " + (
                                  "session resumption on (nginx ssl_session_tickets on); wrk resumes sessions, "
                                  "so `Connection: close` is a resumed (PSK-ECDHE) handshake per request"
                                  if not args.tls_no_resumption else
                                  "session resumption off in every server (nginx ssl_session_tickets off, "
                                  "ssl_session_cache off; ringserve --tls-no-resumption), so `Connection: close` "
                                  "is a full handshake per request"))
                             if args.tls else "plain HTTP/1.1"),
                "files": ", ".join(f"{name} ({size:,} B)" for name, size in FILES.items())
                         + " of random bytes, in memory (ringserve) and page cache (nginx)",
                "response head bytes": "; ".join(
                    f"{s.name} {s.head_bytes.get('1k.bin', 0)}" for s in servers),
                "rounds": f"{args.rounds} interleaved rounds, {args.duration:g} s per run, order per round: "
                          f"each scenario, then every server in turn ({' '.join(names)})",
                "idle": f"{args.idle_connections:,} connections per server per round" if args.idle_connections else "skipped",
            },
        }
        (out_dir / "results.json").write_text(json.dumps(
            {"meta": meta, "servers": names, "scenarios": [s.__dict__ for s in scenarios],
             "results": results, "idle": idle,
             "nginx_conf": (workdir / "nginx" / "nginx.conf").read_text() if NGINX in names else None},
            indent=1))
        report = write_report(out_dir, meta, names, results, idle)
        chart = write_svg(out_dir, meta, names, results)
        log(f"report: {report}")
        log(f"chart:  {chart}")
        main_table = report.read_text().split("## Main table", 1)[1].split("## Chart", 1)[0]
        print(main_table)
        return 0
    except Abort as e:
        log(f"bench-compare: {e}")
        return 1
    except KeyboardInterrupt:
        log("bench-compare: interrupted")
        return 130
    finally:
        signal.alarm(0)
        procs.stop_all()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--idle-client":
        sys.exit(idle_client_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else None))
    sys.exit(main(sys.argv[1:]))
