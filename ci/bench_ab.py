#!/usr/bin/env python3
"""ci/bench-ab: two ringserve binaries (two commits), one engine, side by side.

usage: python3 ci/bench_ab.py OLD_BIN NEW_BIN ENGINE ROUNDS SECONDS SCENARIO[,SCENARIO...]

For "did this change make the hot path dearer?": both binaries serve the
same generated files (bench_compare's docroot), pinned to CPU 0 with one
worker, wrk on CPU 1; each round measures every scenario on both, in
alternating order (A B, then B A), and the result is each scenario's median
CPU time per request and the median of the per-round ratios new / old (with
min-max). Server start-up, measurement and pinning are bench_compare.py's,
so the figures are comparable with its reports. Build the old binary from a
worktree (`git worktree add ../old REV && cargo build --release`) and copy
both binaries aside first. Standard library only; wrk and perf are installed
by bench_compare's ensure_tools.
"""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compare as bc

if len(sys.argv) != 7:
    sys.exit(__doc__)
old, new, engine, rounds, duration, scen = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6].split(",")
procs = bc.Processes()
try:
    tools = bc.ensure_tools(procs)
    os.sched_setaffinity(0, {1})
    workdir = Path(tempfile.mkdtemp(prefix="ab-"))
    docroot = bc.make_docroot(workdir)
    perf_ok, _ = bc.perf_available(procs, tools["perf"])
    setup = bc.Setup(tools["wrk"], tools["perf"], perf_ok, "1", 1, workdir, "off")
    servers = {}
    for name, binary in (("A-old", old), ("B-new", new)):
        s = bc.start_ringserve(procs, Path(binary), engine, docroot, workdir, "0", instance=name)
        assert isinstance(s, bc.Server), s
        s.name = name
        bc.check_server(s, docroot)
        servers[name] = s
    scenarios = [s for s in bc.SCENARIOS if s.key in scen]
    for s in servers.values():
        bc.measure(procs, setup, s, scenarios[0], 1, False)
    res = {(n, sc.key): [] for n in servers for sc in scenarios}
    for r in range(rounds):
        for sc in scenarios:
            order = list(servers.values()) if r % 2 == 0 else list(servers.values())[::-1]
            for s in order:
                m = bc.measure(procs, setup, s, sc, duration, False)
                res[(s.name, sc.key)].append(m.get("cpu_us_per_req"))
                print(f"round {r} {sc.key:18} {s.name} cpu {m.get('cpu_us_per_req')} err {m.get('errors')} {m.get('error','')}", flush=True)
                time.sleep(0.3)
    if perf_ok:
        for sc in scenarios:
            for s in servers.values():
                m = bc.measure(procs, setup, s, sc, max(1, int(duration // 2)), True)  # wrk takes whole seconds
                print(f"syscalls {sc.key:18} {s.name} {m.get('syscalls_per_req')}")
    print("\nscenario            old_med  new_med  new/old (median of per-round ratios, min-max)")
    for sc in scenarios:
        a, b = res[("A-old", sc.key)], res[("B-new", sc.key)]
        ratios = [y / x for x, y in zip(a, b) if x and y]
        print(f"{sc.key:18} {statistics.median(a):8.3f} {statistics.median(b):8.3f}  {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
finally:
    procs.stop_all()
