#!/usr/bin/env python3
"""What a snapshot costs, measured on a running ringserve (see snapshot-cost.sh).

Usage: python3 ci/snapshot_cost.py BINARY ROOT [ringserve flags...]

Starts BINARY on ROOT (127.0.0.1, a free port, 2 workers, no pinning) and
measures, from the moment it is spawned:
- time to first 200: a GET of one file of the tree, retried every 5 ms
  until it answers 200;
- time to all variants: until the server logs that its background stage
  (precompressed variants) is done; a server that builds them before it
  opens the port reports its start line instead;
- RSS (VmRSS of /proc/PID/status) at the first 200, after the variants, and
  after 10 reloads (SIGHUP, each waited for in the log) of the unchanged
  tree, with no request in between (an idle server: the worst case for
  memory that a worker keeps alive); each read SETTLE_S after the event.
Prints one line of `key=value` pairs, then the server's own stage lines.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

RELOADS = 10
# RSS is read this long after a stage's log line: a replaced snapshot is
# freed once idle workers let go of it (they wake once a second).
SETTLE_S = 1.5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get_status(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
            data = s.recv(64)
            return int(data.split()[1])
    except (OSError, IndexError, ValueError):
        return None


def first_file(root):
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                rel = os.path.relpath(os.path.join(directory, name), root)
                return ("/" + rel).encode()
    sys.exit("no file under %s" % root)


def wait_for(log_path, pattern, count, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as f:
            if len(re.findall(pattern, f.read())) >= count:
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, root, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    port = free_port()
    path = first_file(root)
    log = tempfile.NamedTemporaryFile(prefix="ringserve-cost-", suffix=".log", delete=False)
    started = time.monotonic()
    proc = subprocess.Popen(
        [binary, "--root", root, "--listen", "127.0.0.1:%d" % port, "--workers", "2", "--no-pin"] + extra,
        stdout=log, stderr=subprocess.STDOUT,
    )
    result = {}
    try:
        while get_status(port, path) != 200:
            if proc.poll() is not None:
                sys.exit("ringserve exited:\n" + open(log.name).read())
            if time.monotonic() - started > 600:
                sys.exit("no 200 within 600 s")
            time.sleep(0.005)
        result["first_200_ms"] = (time.monotonic() - started) * 1000
        result["rss_start_mib"] = rss_kib(proc.pid) / 1024
        # New servers log the end of their background stage; older ones built
        # everything before the start line.
        done = r"variants ready|compressed files:| 0 files wait for variants"
        if not wait_for(log.name, done, 1, proc, 3600):
            sys.exit("the variants never finished:\n" + open(log.name).read())
        result["all_variants_ms"] = (time.monotonic() - started) * 1000
        time.sleep(SETTLE_S)
        result["rss_variants_mib"] = rss_kib(proc.pid) / 1024
        for i in range(1, RELOADS + 1):
            proc.send_signal(signal.SIGHUP)
            if not wait_for(log.name, r"reloaded \d+ files", i, proc, 600):
                sys.exit("reload %d never finished:\n%s" % (i, open(log.name).read()))
            if i == 1 or os.environ.get("RINGSERVE_COST_EVERY_RELOAD"):
                time.sleep(SETTLE_S)
                result["rss_reload%d_mib" % i] = rss_kib(proc.pid) / 1024
        time.sleep(SETTLE_S)
        result["rss_reloads_mib"] = rss_kib(proc.pid) / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(" ".join("%s=%.0f" % (k, v) if k.endswith("_ms") else "%s=%.1f" % (k, v) for k, v in result.items()))
    if not os.environ.get("RINGSERVE_COST_QUIET"):
        with open(log.name, errors="replace") as f:
            for line in f:
                if "reloaded" not in line:
                    print("  " + line.rstrip())
    os.unlink(log.name)


if __name__ == "__main__":
    main()
