"""``training.memory.retained``: freed blocks stay in the process inside it, go back after."""

import resource

import torch

from training import memory


def _faults_of_churn(mb: int = 24, rounds: int = 4) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        block = torch.empty(mb * 1024 * 1024 // 4)
        block.fill_(1.0)  # touch every page
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_inside_and_returned_after():
    pages = 24 * 1024 * 1024 // resource.getpagesize()
    with memory.retained() as active:
        assert active  # glibc on this project's machines
        with memory.retained() as nested:  # nesting keeps the outer setting
            assert nested
        # the heap grows over the first rounds (its pages faulted in once), then serves them all
        inside = min(_faults_of_churn() for _ in range(8))
    after = min(_faults_of_churn() for _ in range(3))
    assert inside < pages  # re-allocated from memory kept in the process
    assert after >= 3 * pages  # glibc's defaults again: each block unmapped at free, faulted in anew


def test_switched_off(monkeypatch):
    monkeypatch.setenv("PREFLOOP_KEEP_FREED_MEMORY", "0")
    with memory.retained() as active:
        assert not active
