"""The side-by-side benchmarks' shared harness: interleaving, spreads, the RESULT line, the idle check."""

import argparse
import math

import pytest

from benchmarks import harness


def test_rounds_interleave_and_rotate_the_first_configuration():
    order = harness.rounds(["a", "b", "c"], 3)
    assert [n for _, n in order] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for r, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert harness.rounds(["a"], 0) == [(0, "a")]  # at least one round


def test_spread_ignores_non_finite_values():
    assert harness.spread([3.0, 1.0, float("nan"), 2.0]) == (2.0, 1.0, 3.0)
    assert all(math.isnan(v) for v in harness.spread([]))
    assert harness.median_fields("r", [1.0, 4.0, 2.0]) == {"r": 2.0, "r_min": 1.0, "r_max": 4.0}


def test_result_line_is_name_value_pairs():
    line = harness.result_line({"ratio": 1.23456, "rounds": 3, "db": "postgresql", "x": float("nan")})
    assert line == "RESULT ratio=1.23 rounds=3 db=postgresql x=nan"


def test_busy_machine_is_refused_unless_forced(monkeypatch, capsys):
    monkeypatch.setattr(harness, "busy_reason", lambda **kw: "1-minute load average 1.90 on 2 cores (limit 0.70)")
    with pytest.raises(SystemExit, match="refusing to benchmark: 1-minute load average 1.90"):
        harness.require_idle(argparse.Namespace(force=False))
    harness.require_idle(argparse.Namespace(force=True))
    assert "WARNING: benchmarking on a busy machine" in capsys.readouterr().out


def test_busy_reason_reads_the_load_average(monkeypatch):
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (5.0, 1.0, 1.0))
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 2)
    assert "load average 5.00" in harness.busy_reason()
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(harness, "cpu_busy_share", lambda seconds=2.0: 0.9)
    assert "90% of the CPU busy" in harness.busy_reason()
    monkeypatch.setattr(harness, "cpu_busy_share", lambda seconds=2.0: 0.0)
    assert harness.busy_reason() is None
