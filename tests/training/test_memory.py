"""``training.memory.retained``: freed blocks stay in the process inside it and are reused,
and are given back to the system at its end."""

import os
import resource

import torch

from training import memory

MB = 24


def _faults_of_churn(rounds: int = 4) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        block = torch.empty(MB * 1024 * 1024 // 4)
        block.fill_(1.0)  # touch every page
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_freed_blocks_are_reused_inside_and_given_back_after():
    pages = MB * 1024 * 1024 // resource.getpagesize()
    with memory.retained() as active:
        assert active  # glibc on this project's machines
        with memory.retained() as nested:  # nesting keeps the outer setting
            assert nested
        # the heap grows over the first rounds (its pages faulted in once), then serves them all
        inside = min(_faults_of_churn() for _ in range(8))
        kept = _resident_mb()
    given_back = _resident_mb()
    assert inside < pages  # re-allocated from memory kept in the process
    assert kept - given_back >= MB * 0.8  # malloc_trim at the end: the kept block left the process


def test_switched_off(monkeypatch):
    monkeypatch.setenv("PREFLOOP_KEEP_FREED_MEMORY", "0")
    with memory.retained() as active:
        assert not active
