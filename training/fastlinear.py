"""oneDNN-packed linear weights for decoding on the CPU.

At the few rows of a decoding step (8 sequences, say) PyTorch's default CPU matrix product
(MKL) reaches a fraction of the machine's speed. Measured on this project's 2-core machine
(AMD EPYC, AVX2), 8 rows: SmolLM2's LM head (49,152 x 576) 19-22 ms, the same product with
the weight reordered once into oneDNN's blocked layout 8-9 ms; a whole step's products
~52 ms against ~28 ms. Reordering all of SmolLM2's weights costs ~0.2 s (a few steps'
savings), so it pays for a generation of more than a handful of tokens: the sampler's
decoding loop runs inside ``packed_linears``. In the RL benchmark a rollout's sampling went
from 4.5 s to 3.4 s (``benchmarks/RESULTS.md``).

Outputs equal ``F.linear``'s up to float rounding (another summation order, ~1e-6
relative), so a seed's samples may differ from MKL's in a rare token. A no-op where it cannot
help: not on the CPU, not float32, no oneDNN, or ``PREFLOOP_PACKED_LINEAR=0``.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

_ROWS_HINT = 8  # oneDNN picks the blocked layout for this many rows; any row count works


def available(model) -> bool:
    if os.environ.get("PREFLOOP_PACKED_LINEAR", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cpu" and p.dtype == torch.float32


def _linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32]


def _forward(module: torch.nn.Linear, packed: torch.Tensor):
    bias = module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        plain = (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad)) or (
            x.dtype != torch.float32 or x.device.type != "cpu")
        if plain:  # autograd (or another dtype): the plain weight
            return F.linear(x, module.weight, bias)
        return product(x, packed, bias)

    return forward


def product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` with the weight as ``pack`` made it."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT)


@contextlib.contextmanager
def packed_linears(model):
    """Inside the block, ``model``'s linear layers compute no-grad products with packed copies
    of their weights (made on entry, dropped on exit); the weights must not change inside it.
    A layer already patched (another thread's block on the same model) is left as it is."""
    if not available(model):
        yield model
        return
    patched = []
    try:
        for m in _linears(model):
            if "forward" in m.__dict__:  # patched by someone else (or an enclosing block)
                continue
            try:
                packed = pack(m.weight)
            except RuntimeError:  # this build's oneDNN cannot pack it: that layer stays plain
                continue
            m.forward = _forward(m, packed)
            patched.append(m)
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
