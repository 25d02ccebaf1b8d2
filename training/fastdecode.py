"""A lean decoding step for Llama-family models on the CPU.

transformers' layer code costs more than the products at the few rows of a decoding step:
on this project's 2-core machine (AVX2) a SmolLM2-135M step at 8 rows took ~100 ms, of which ~50 ms
were the (oneDNN-packed) matrix products; the rest is Python in 30 layers (mask and cache
bookkeeping, attention dispatch, keyword plumbing, one product per projection). This step
(33.7 ms at 8 rows on an AVX-512 machine, ~27 ms of it the packed products)
does the same arithmetic with fewer, larger calls: q, k and v in one product, gate and up in
one, RoPE on q and k together, the new key and value written in place into the sampler's
reserved cache (``training.sampling._ReservedLayer``), one SDPA call per layer with a key/value
head's query heads as its query rows.
Figures in ``benchmarks/RESULTS.md``.

Only where it was checked against the stock forward (``tests/training/test_fastdecode.py``):
``LlamaForCausalLM`` (``model_type`` "llama", SiLU MLP, no sliding window, plain
``nn.Linear`` projections, so no LoRA wrappers) on the CPU in float32. Anything else, or
``PREFLOOP_LEAN_DECODE=0``, keeps transformers' forward (``lean_decoder`` returns None).
Outputs equal the stock forward's up to float rounding (another summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from training import fastlinear

Linear = Callable[[torch.Tensor], torch.Tensor]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> Linear:
    """``x -> x @ weight.T + bias``, with the weight packed for oneDNN when ``packed``."""
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if packed:
        try:
            w = fastlinear.pack(weight)
            return lambda x: fastlinear.product(x, w, bias)
        except RuntimeError:  # this build's oneDNN cannot pack it: plain product
            pass
    return lambda x: F.linear(x, weight, bias)


def _cat(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors])


@dataclass
class _Layer:
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear
    norm1: torch.Tensor
    eps1: float
    norm2: torch.Tensor
    eps2: float


def supported(model) -> bool:
    """Whether ``model`` (a transformers model, not a peft wrapper) is one this step reproduces."""
    if os.environ.get("PREFLOOP_LEAN_DECODE", "1") == "0":
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama" or type(model).__name__ != "LlamaForCausalLM":
        return False
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return False
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or p.dtype != torch.float32:
        return False
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        if any(type(x) is not torch.nn.Linear for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj,
                                                        m.down_proj)):
            return False
    return True


class LeanDecoder:
    """The decoder stack of a supported model, gathered for one generation: fused, packed
    copies of its weights (the weights must not change while it is in use)."""

    def __init__(self, model):
        base = model.model
        config = model.config
        packed = fastlinear.available(model)
        self.embed, self.rotary, self.final_norm = base.embed_tokens, base.rotary_emb, base.norm
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.intermediate = config.intermediate_size
        self.layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                qkv=_linear(_cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                            _cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias), packed),
                o=_linear(a.o_proj.weight, a.o_proj.bias, packed),
                gate_up=_linear(_cat(m.gate_proj.weight, m.up_proj.weight), _cat(m.gate_proj.bias, m.up_proj.bias), packed),
                down=_linear(m.down_proj.weight, m.down_proj.bias, packed),
                norm1=layer.input_layernorm.weight.detach(), eps1=layer.input_layernorm.variance_epsilon,
                norm2=layer.post_attention_layernorm.weight.detach(), eps2=layer.post_attention_layernorm.variance_epsilon,
            ))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache, attend: torch.Tensor) -> torch.Tensor:
        """One token per row: ``tokens`` (B,), their ``positions`` (B,), the sampler's reserved
        ``cache`` (its layers' keys and values grow by this column in place) and ``attend``
        (B, capacity) bool, the columns each row may attend to (this step's included).
        Returns the last hidden state after the final norm, (B, hidden)."""
        rows = tokens.shape[0]
        h = self.embed(tokens)
        cos, sin = self.rotary(h, positions.unsqueeze(-1))  # (B, 1, d): one angle per row, all heads
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        n = cache.layers[0]._n
        # the query heads of a key/value head side by side (SDPA's query length): no repeated keys;
        # an additive mask (one per step) is cheaper in SDPA than a boolean one
        bias = torch.zeros((rows, 1, 1, n + 1), dtype=h.dtype, device=h.device)
        bias.masked_fill_(~attend[:, None, None, : n + 1], float("-inf"))
        width = h.shape[-1]
        for layer, store in zip(self.layers, cache.layers):
            x = F.rms_norm(h, (width,), layer.norm1, layer.eps1)
            qkv = layer.qkv(x).view(rows, heads + 2 * kv, d)
            qk = qkv[:, : heads + kv]
            half = d // 2
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            store._keys[:, :, n] = qk[:, heads:]
            store._values[:, :, n] = qkv[:, heads + kv:]
            att = F.scaled_dot_product_attention(
                qk[:, :heads].reshape(rows, kv, heads // kv, d), store._keys[:, :, : n + 1], store._values[:, :, : n + 1],
                attn_mask=bias)
            h = h + layer.o(att.reshape(rows, heads * d))
            x = F.rms_norm(h, (width,), layer.norm2, layer.eps2)
            gate, up = layer.gate_up(x).split(self.intermediate, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        for store in cache.layers:
            store._n = n + 1
            store._views()
        return self.final_norm(h)


def lean_decoder(model) -> LeanDecoder | None:
    """A ``LeanDecoder`` for ``model`` when it is supported, else None (use the stock forward)."""
    return LeanDecoder(model) if supported(model) else None
