"""What every side-by-side benchmark here shares.

Timings on a small shared machine are noisy (per-step times of one run vary 4-8 s on 2 cores,
and a second job on the cores slows the peers unevenly), so a script:

- refuses to start while another job is on the cores (``--force`` overrides and says so),
- runs its configurations interleaved (A B C, B C A, C A B, ...), each at least 3 times,
- reports per-repeat ratios paired within a round, as the median with its min-max spread,
- reports CPU time beside wall time, so a slow wall clock with normal CPU time shows up as
  waiting (or a neighbour), not as a slower program.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time


def cpu_busy_share(seconds: float = 2.0) -> float:
    """Share of all cores busy over ``seconds`` (from /proc/stat; 0 where it is unreadable)."""
    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except OSError:
        return 0.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def busy_reason(*, max_load_per_core: float = 0.35, max_busy_share: float = 0.2) -> str | None:
    """Why the machine is not idle enough to benchmark, or None. Two readings: the 1-minute
    load average per core (a job that ran in the last minute or so) and the share of CPU
    time busy over the next 2 s (a job running now)."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load / cores > max_load_per_core:
        return f"1-minute load average {load:.2f} on {cores} cores (limit {max_load_per_core * cores:.2f})"
    busy = cpu_busy_share()
    if busy > max_busy_share:
        return f"{busy:.0%} of the CPU busy over 2 s (limit {max_busy_share:.0%})"
    return None


def add_arguments(ap: argparse.ArgumentParser, *, repeats: int = 3) -> None:
    ap.add_argument("--repeats", type=int, default=repeats, help=f"rounds of all configurations (default {repeats}, at least 1)")
    ap.add_argument("--force", action="store_true", help="run even when another job is on the cores (the output says so)")


def require_idle(args) -> None:
    """Exit with the reason when the machine is busy, unless ``--force``."""
    reason = busy_reason()
    if reason is None:
        print("machine idle: ok", flush=True)
        return
    if args.force:
        print(f"WARNING: benchmarking on a busy machine ({reason}); figures are not comparable", flush=True)
        return
    raise SystemExit(f"refusing to benchmark: {reason}. Wait for the other job to end, or pass --force.")


def rounds(names: list[str], repeats: int) -> list[tuple[int, str]]:
    """(round, name) in interleaved order, rotating which configuration goes first each round,
    so no configuration always runs first (cold) or right after the heaviest one."""
    order = []
    for r in range(max(1, repeats)):
        shift = r % len(names)
        order.extend((r, name) for name in names[shift:] + names[:shift])
    return order


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the finite values (nan when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    return statistics.median(finite), min(finite), max(finite)


def median_fields(name: str, values: list[float]) -> dict[str, float]:
    """``name`` (median), ``name_min`` and ``name_max`` for a RESULT line."""
    med, lo, hi = spread(values)
    return {name: med, f"{name}_min": lo, f"{name}_max": hi}


def fmt_spread(values: list[float], digits: int = 2) -> str:
    med, lo, hi = spread(values)
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def result_line(fields: dict[str, float | int | str]) -> str:
    """The last line every benchmark prints: ``RESULT name=value ...``."""
    def show(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3g}"
        return str(v)

    return "RESULT " + " ".join(f"{k}={show(v)}" for k, v in fields.items())


class StepClock:
    """Wall and process CPU time between consecutive ``tick()`` calls (one at the end of every
    step): the first tick only starts the clock, so step 1 (warm-up) is not counted."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._w = self._c = None

    def tick(self) -> None:
        w, c = time.perf_counter(), time.process_time()
        if self._w is not None:
            self.wall.append(w - self._w)
            self.cpu.append(c - self._c)
        self._w, self._c = w, c


def child_report(report: dict) -> None:
    """What a child process prints: one ``BENCH {json}`` line for ``run_child`` to read."""
    print("BENCH " + json.dumps(report), flush=True)


def run_child(script: str, args: list[str], *, cwd: str | None = None) -> dict:
    """Run ``python script args`` in a fresh process (its own peak RSS, its own Django or model)
    and return the report it printed with ``child_report``; exit with its stderr when it failed."""
    proc = subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[6:])


def require_trl() -> None:
    """Exit saying how to install the peer when TRL is missing."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: run `make bench-deps` (pip install -r requirements-bench.txt) first.") from None
