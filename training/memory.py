"""Freed memory kept in the process through a training loop's steps (glibc's malloc).

glibc gives large freed blocks back to the kernel: a block above ``M_MMAP_THRESHOLD`` is
unmapped when freed, and the heap's top above ``M_TRIM_THRESHOLD`` is trimmed. An RL step frees
and re-allocates the same few hundred MB every time (the decoder's packed weights, gradients,
activations), so each step page-faults them in again. Measured on this project's 2-core CPU
(``benchmarks/RESULTS.md``): building the lean decoder's packed weights 0.23 -> 0.095 s, a GRPO
step 5.2-5.6 -> 4.6-4.9 s, peak RSS 3.16 -> 3.25 GB.

``retained()`` raises both thresholds (and pads heap growth) for its block, and at its end
gives the kept memory back (``malloc_trim``) and sets the thresholds where glibc's dynamic ones
end up in a process that has freed large blocks. A no-op off glibc or
with ``PREFLOOP_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = {M_MMAP_THRESHOLD: 32 * 1024 * 1024,  # glibc's ceiling on 64-bit
         M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 256 * 1024 * 1024}
# After the block: where glibc's own (dynamic) thresholds end up once a process has freed a large
# block (setting them switches the dynamic adjustment off, so glibc's start values would be worse).
_AFTER = {M_MMAP_THRESHOLD: 32 * 1024 * 1024, M_TRIM_THRESHOLD: 64 * 1024 * 1024, M_TOP_PAD: 128 * 1024}
_lock = threading.Lock()
_depth = 0


def _libc():
    if os.environ.get("PREFLOOP_KEEP_FREED_MEMORY", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc, values: dict) -> bool:
    return all(libc.mallopt(k, v) == 1 for k, v in values.items())


@contextlib.contextmanager
def retained():
    """Inside the block, freed memory stays in the process (see the module docstring)."""
    global _depth
    libc = _libc()
    with _lock:
        if libc is not None and _depth == 0 and not _set(libc, _KEEP):
            libc = None  # refused (not glibc's malloc after all): what it took is harmless, nothing to undo
        if libc is not None:
            _depth += 1
    try:
        yield libc is not None
    finally:
        if libc is not None:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _set(libc, _AFTER)
                    libc.malloc_trim(0)
