"""Seeds: one way to derive a seed from a base seed and counters, and seeding every generator.

Torch-free at import (``seed_everything`` imports torch when called), so workers and the web
process can derive seeds too.
"""

from __future__ import annotations

import operator

_MASK64 = (1 << 64) - 1
SEED_BITS = 31  # every derived seed is in [0, 2**31)


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection on 64-bit integers whose
    every output bit depends on every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(seed: int, *parts: int) -> int:
    """A seed for the stream ``parts`` (e.g. epoch, batch, attempt) under ``seed``: the same
    inputs always give the same value (no ``hash()``, no process state), nearby inputs give
    unrelated values, so no two counters' streams overlap the way ``seed * K + i`` can.

    The result is in [0, 2**31): ``torch.manual_seed``, ``random.Random``, numpy's legacy
    ``RandomState`` (< 2**32) and a 32-bit signed column all take it, and a JSON reader in
    JavaScript reads it exactly. Two different inputs share a value with chance 2**-31, which
    only means two draws reuse one random stream. Any integer works as input (negative ones
    and ones over 64 bits are taken modulo 2**64)."""
    h = _splitmix64(operator.index(seed) & _MASK64)
    for part in parts:
        h = _splitmix64(h ^ (operator.index(part) & _MASK64))
    return h >> (64 - SEED_BITS)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random`` and torch (CPU and every CUDA device)."""
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
