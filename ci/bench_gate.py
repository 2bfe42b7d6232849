#!/usr/bin/env python3
"""Regression gate for the criterion micro benches (`benches/micro.rs`).

Three commands, all run from the repository root by `ci/bench-gate`:

  save  [--baseline NAME]
        run the micro benches and save the results as baseline NAME
        (criterion's `--save-baseline`);
  check [--baseline NAME] [--threshold PCT] [--attempts N]
        run them again against NAME (criterion's `--baseline`, which leaves the
        baseline untouched); re-measure each bench that looks slower up to N
        times in all; exit 1 if a bench's median time grew by more than PCT
        percent, with criterion's 95% confidence interval for the change
        wholly above zero, in every attempt;
  noise [--runs N]
        measure the noise the threshold must clear: save a fresh baseline, run
        the suite N more times against it on an unchanged tree, and print the
        spread of the changes criterion reports. Any change seen here is noise
        by construction.

Exit codes: 0 pass, 1 regression, 2 could not judge (no baseline, build
failed, or benches looked slower while the load average was above the CPU
count, so other work may have slowed them).
Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = "micro"
DEFAULT_BASELINE = "gate"
# Justified in docs/benchmarking.md ("Regression gate") from `noise` runs on
# the 2-core development VM at load average 3-4: one run of an unchanged tree
# moved single benches by up to 69%, but the smaller change of two runs never
# exceeded +5%. So a slowdown counts only if it exceeds 10% in each of three
# measurements: twice the worst noise seen in repeated runs. Slowdowns seen
# while the machine is busier than its CPU count are not judged (cmd_check).
DEFAULT_THRESHOLD_PCT = 10.0
DEFAULT_ATTEMPTS = 3


def fail(message: str) -> None:
    """Could not run at all: exit 2, distinct from a regression's 1."""
    print(f"bench-gate: {message}", file=sys.stderr)
    sys.exit(2)


def criterion_home() -> Path:
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    target = os.environ.get("CARGO_TARGET_DIR")
    if not target:
        meta = subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"],
            cwd=REPO, check=True, capture_output=True, text=True,
        )
        target = json.loads(meta.stdout)["target_directory"]
    return Path(target) / "criterion"


def run_benches(criterion_args: list[str]) -> None:
    cmd = ["cargo", "bench", "--bench", BENCH, "--", "--noplot", *criterion_args]
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        fail("the micro benches failed to build or run (see above)")


def bench_dirs(home: Path) -> list[Path]:
    """Every bench directory criterion keeps (they hold `new/benchmark.json`)."""
    return sorted(p.parent.parent for p in home.glob("**/new/benchmark.json"))


def bench_id(bench_dir: Path) -> str:
    try:
        return json.loads((bench_dir / "new" / "benchmark.json").read_text())["full_id"]
    except (OSError, ValueError, KeyError):
        return str(bench_dir)


def micro_groups() -> set[str]:
    """Group names of the micro suite, read from its source, so the gate never
    looks at results of other bench targets (the engines bench)."""
    source = (REPO / "benches" / f"{BENCH}.rs").read_text()
    groups = set()
    marker = "benchmark_group(\""
    for line in source.splitlines():
        if marker in line:
            groups.add(line.split(marker, 1)[1].split('"', 1)[0])
    return groups


def changes_since(home: Path, started: float) -> dict[str, dict]:
    """Median change estimates written by the run that started at `started`."""
    groups = micro_groups()
    found = {}
    for bench_dir in bench_dirs(home):
        estimates = bench_dir / "change" / "estimates.json"
        if not estimates.exists() or estimates.stat().st_mtime < started:
            continue
        name = bench_id(bench_dir)
        if name.split("/", 1)[0] not in groups:
            continue
        median = json.loads(estimates.read_text())["median"]
        found[name] = {
            "change": median["point_estimate"] * 100,
            "low": median["confidence_interval"]["lower_bound"] * 100,
            "high": median["confidence_interval"]["upper_bound"] * 100,
        }
    return found


def require_baseline(home: Path, name: str) -> None:
    groups = micro_groups()
    present = [d for d in bench_dirs(home) if (d / name / "estimates.json").exists()
               and bench_id(d).split("/", 1)[0] in groups]
    if not present:
        fail(f"no saved baseline {name!r} under {home}; "
             f"save one first on the reference tree: ci/bench-gate save --baseline {name}")


def load_record(home: Path, name: str) -> Path:
    return home / f"bench-gate-{name}.json"


def baseline_load(home: Path, name: str) -> float | None:
    try:
        return json.loads(load_record(home, name).read_text())["max_load_average"]
    except (OSError, ValueError, KeyError):
        return None


def cmd_save(args: argparse.Namespace) -> int:
    loads = [load_average()]
    run_benches(["--save-baseline", args.baseline])
    loads.append(load_average())
    home = criterion_home()
    load_record(home, args.baseline).write_text(json.dumps({"max_load_average": max(loads)}))
    if max(loads) > (os.cpu_count() or 1):
        print(f"bench-gate: warning: load average reached {max(loads):.1f} while saving; "
              "a baseline from a busy machine can hide regressions")
    print(f"bench-gate: saved baseline {args.baseline!r} under {criterion_home()}")
    return 0


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def is_regression(change: dict, threshold: float) -> bool:
    return change["change"] > threshold and change["low"] > 0


def cmd_check(args: argparse.Namespace) -> int:
    home = criterion_home()
    require_baseline(home, args.baseline)
    loads = [load_average()]
    started = time.time() - 1
    run_benches(["--baseline", args.baseline])
    loads.append(load_average())
    found = changes_since(home, started)
    if not found:
        print("bench-gate: criterion wrote no comparison; nothing to judge", file=sys.stderr)
        return 2
    attempts = {name: [c] for name, c in found.items()}
    # A slowdown must survive re-measurement: on a shared machine a burst of
    # someone else's work can slow one bench by tens of percent once, but
    # rarely in every attempt (see docs/benchmarking.md for the measured noise).
    for attempt in range(2, args.attempts + 1):
        suspects = [n for n, cs in attempts.items() if all(is_regression(c, args.threshold) for c in cs)]
        if not suspects:
            break
        print(f"bench-gate: re-measuring {len(suspects)} suspect(s), attempt {attempt}/{args.attempts}", flush=True)
        started = time.time() - 1
        run_benches(["--baseline", args.baseline, "^(" + "|".join(re.escape(n) for n in suspects) + ")$"])
        again = changes_since(home, started)
        for name in suspects:
            if name in again:
                attempts[name].append(again[name])
        loads.append(load_average())
    print(f"\nmedian time change against baseline {args.baseline!r}; a regression is "
          f"> +{args.threshold:.1f}% with the 95% interval above 0, in each of up to {args.attempts} attempts")
    regressions = []
    for name, cs in sorted(attempts.items(), key=lambda kv: -min(c["change"] for c in kv[1])):
        regressed = all(is_regression(c, args.threshold) for c in cs) and len(cs) == args.attempts
        verdict = "REGRESSED" if regressed else "ok"
        shown = "  ".join(f"{c['change']:+6.1f}% [{c['low']:+.1f}, {c['high']:+.1f}]" for c in cs)
        print(f"  {name:44} {verdict:9} {shown}")
        if regressed:
            regressions.append(name)
    # The benches themselves keep about one CPU busy. A load average above the
    # CPU count means other work shared the CPUs, and on the 2-core
    # development VM that alone moved unchanged benches by 20-80% in all three
    # attempts (docs/benchmarking.md): no threshold can tell that from a
    # regression, so a slowdown seen on a busy machine is not judged. Sharing
    # CPUs only slows benches down, so a clean result still counts.
    cpus = os.cpu_count() or 1
    busiest = max(loads)
    saved_load = baseline_load(home, args.baseline)
    if saved_load is not None and saved_load > cpus:
        print(f"bench-gate: warning: baseline {args.baseline!r} was saved at load average {saved_load:.1f} "
              f"on {cpus} CPUs; its times may be inflated and hide a regression. Save it again on a quiet machine.")
    if regressions and busiest > cpus and not args.ignore_load:
        print(f"\nbench-gate: cannot judge: load average reached {busiest:.1f} on {cpus} CPUs while "
              f"measuring, so other work shared the CPUs ({len(regressions)} bench(es) looked slower). "
              "Rerun on a quiet machine, or pass --ignore-load to judge anyway.")
        return 2
    if regressions:
        print(f"\nbench-gate: {len(regressions)} bench(es) regressed beyond {args.threshold:.1f}%: "
              + ", ".join(regressions))
        return 1
    print(f"\nbench-gate: no regression beyond {args.threshold:.1f}% in {len(found)} benches")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    home = criterion_home()
    reference = "gate-noise-reference"
    run_benches(["--save-baseline", reference])
    runs = []
    for index in range(args.runs):
        started = time.time() - 1
        run_benches(["--baseline", reference])
        runs.append(changes_since(home, started))
        print(f"bench-gate: noise run {index + 1}/{args.runs} done", flush=True)
    names = sorted(set().union(*runs))
    print(f"\nchange of the median time against an unchanged tree ({args.runs} run(s)):")
    largest = []
    for name in names:
        values = [run[name]["change"] for run in runs if name in run]
        largest.append(max(abs(v) for v in values))
        print(f"  {name:48} " + " ".join(f"{v:+6.1f}%" for v in values))
    print(f"\nabsolute change: median {statistics.median(largest):.1f}%, "
          f"90th percentile {sorted(largest)[int(0.9 * (len(largest) - 1))]:.1f}%, "
          f"max {max(largest):.1f}%  (over {len(names)} benches)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="ci/bench-gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    save = sub.add_parser("save", help="save a baseline")
    save.add_argument("--baseline", default=DEFAULT_BASELINE)
    check = sub.add_parser("check", help="compare against a baseline; exit 1 on regression")
    check.add_argument("--baseline", default=DEFAULT_BASELINE)
    check.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PCT,
                       help=f"percent slowdown of a median that fails (default {DEFAULT_THRESHOLD_PCT})")
    check.add_argument("--ignore-load", action="store_true",
                       help="judge even if the load average exceeded the CPU count while measuring")
    check.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS,
                       help=f"measurements a slowdown must persist through (default {DEFAULT_ATTEMPTS})")
    noise = sub.add_parser("noise", help="measure run-to-run noise on an unchanged tree")
    noise.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    return {"save": cmd_save, "check": cmd_check, "noise": cmd_noise}[args.command](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as e:
        fail(f"{' '.join(e.cmd)} failed: {e.stderr or e}")
