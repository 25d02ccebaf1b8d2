"""What the SFT, reward and DPO recipes share: the config base and its loading, padding-free
packing with per-sequence attention, response-only log-probs, the optimiser and schedule,
checkpoints and the step loop (accumulation, clipping, metrics, cancel, resume).

Utilities, not a class hierarchy: each recipe (``sft.py``, ``reward.py``, ``dpo.py``) reads
top to bottom as setup / train / save and calls into here.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

def _return_freed_memory_to_the_os() -> None:
    """glibc raises its mmap threshold after big frees, so later big tensors come from a heap
    that fragments and never shrinks: RSS creeps up step after step. Pinning the threshold
    keeps large tensors in their own mappings, handed back on free (peak RSS ~0.7 GB lower on
    SmolLM2 DPO here)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, which also disables the dynamic raise
    except (OSError, AttributeError):
        pass


_return_freed_memory_to_the_os()

# ---------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Fields every recipe has. Each recipe's config adds its own; all are validated and an
    unknown key is an error, never ignored."""

    model: str = "smollm2-135m-instruct"  # HF id, local directory or the embedded default
    lr: float = 5e-6  # peak learning rate (AdamW)
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.1  # fraction of optimiser steps with linear warm-up, then cosine to 0
    epochs: float = 1.0  # passes over the training rows (ignored when max_steps > 0)
    max_steps: int = 0  # optimiser steps; 0: from epochs
    batch_size: int = 4  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 turns clipping off
    max_length: int = 512  # prompt + response tokens
    max_prompt_length: int = 256  # the prompt keeps its last tokens
    min_response_tokens: int = 8  # a row whose response would keep fewer tokens is dropped
    eval_fraction: float = 0.0  # held-out share of the rows (deterministic split by seed)
    eval_every: int = 0  # optimiser steps between evaluations; 0: at the end only
    log_every: int = 10  # optimiser steps between metrics callbacks
    save_every: int = 0  # optimiser steps between checkpoints; 0: at the end only
    seed: int = 0
    lora_r: int = 0  # LoRA rank; 0 trains all weights
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    device: str = "auto"  # cuda when present, else cpu
    dtype: str = "auto"  # bf16 on CUDA, fp32 on CPU
    logit_chunk: int = 256  # response positions per LM-head chunk (at most (chunk, V) logits alive)
    max_tokens_per_forward: int = 0  # split a micro-batch into forwards of at most this many packed tokens (0: no split); same gradient, less activation memory
    activation_checkpointing: bool = True  # recompute each layer in the backward pass: ~20% slower, ~0.8 GB less peak RSS for SmolLM2 at batch 4

    def __post_init__(self):
        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if not (v >= 0 if allow_zero else v > 0):
                raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")

        for name in ("lr", "batch_size", "grad_accum", "max_length", "max_prompt_length", "epochs", "logit_chunk", "min_response_tokens",
                     "log_every"):
            positive(name)
        for name in ("weight_decay", "max_steps", "max_grad_norm", "eval_every", "save_every", "lora_r", "lora_dropout",
                     "max_tokens_per_forward"):
            positive(name, allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be auto, float32, bfloat16 or float16")
        self.adam_betas = tuple(self.adam_betas)
        self.lora_targets = tuple(self.lora_targets)

    def as_dict(self) -> dict:
        return asdict(self)


def _coerce(value, hint):
    """Turn a CLI string (or a TOML value) into the field's type."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if hint in (int, float, str):
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        if hint is not str and isinstance(value, bool):
            raise ValueError(f"not a number: {value!r}")
        return hint(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        args = typing.get_args(hint)
        item_type = args[0]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item_type) for v in items)
    return value


def config_from(cls, file: str | Path | None = None, overrides: list[str] | dict | None = None):
    """``cls`` from a TOML file and ``key=value`` overrides (later wins). Unknown keys and
    values of the wrong type are errors that name the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values: dict = {}
    if file:
        values.update(tomllib.loads(Path(file).read_text(encoding="utf-8")))
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"expected key=value, got {item!r}")
            key, value = item.split("=", 1)
            values[key.strip()] = value.strip()
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}")
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from None
    return cls(**typed)


def prepare_rows(cfg: TrainConfig, rows: list, eval_rows: list | None, tokenizer, tokenize: Callable):
    """(training rows, training examples, held-out examples, report): held-out rows split off
    when asked (deterministic by seed), both sides tokenised with the config's limits. No
    training example left is an error that says why, not an empty run."""
    from training.data import split_rows

    if eval_rows is None and cfg.eval_fraction:
        rows, eval_rows = split_rows(rows, eval_fraction=cfg.eval_fraction, seed=cfg.seed)
    kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, min_response_tokens=cfg.min_response_tokens)
    train_ex, report = tokenize(tokenizer, rows, **kw)
    eval_ex, _ = tokenize(tokenizer, eval_rows or [], **kw)
    if not train_ex:
        raise ValueError(f"no training rows left after tokenisation: {report.as_dict()}")
    return rows, train_ex, eval_ex, report


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- models


def load_model(cfg: TrainConfig, *, auto_class: str = "AutoModelForCausalLM", **kwargs):
    """(model, tokenizer, device) ready to train: right dtype and device, LoRA when asked,
    packed attention on."""
    import transformers

    from training.models import load_tokenizer, model_path, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    cls = getattr(transformers, auto_class)
    model = cls.from_pretrained(model_path(cfg.model), dtype=dtype, **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        # A GGUF-converted copy can still carry it; transformers then refuses to train.
        del model.config.quantization_config
    model.to(device)
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        task = "SEQ_CLS" if "SequenceClassification" in auto_class else "CAUSAL_LM"
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=list(cfg.lora_targets), task_type=task))
    use_packed_attention(model)
    tie_embedding_grads(model)
    if cfg.activation_checkpointing:
        inner = unwrap(model)
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.x name
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora_r:
            unwrap(model).enable_input_require_grads()
    tokenizer = load_tokenizer(cfg.model)
    return model, tokenizer, device


def unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The decoder stack without its head (``LlamaModel`` in ``LlamaForCausalLM``)."""
    inner = unwrap(model)
    return getattr(inner, inner.base_model_prefix)


# ---------------------------------------------------------------- packing and attention


@dataclass
class Packed:
    """Sequences laid end to end in one row, no padding: ``input_ids`` (1, T) and position ids
    restarting per sequence. ``segments`` are (start, end, prefix_start, prefix_end): each
    segment attends causally to itself and fully to its prefix range (empty when equal), which
    lets the rejected response of a pair reuse the prompt already laid out before the chosen one."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: list[tuple[int, int, int, int]]
    target_pos: torch.Tensor  # (N,) positions whose next token is a response token
    target_ids: torch.Tensor  # (N,) those response tokens
    target_seq: torch.Tensor  # (N,) which sequence each belongs to
    seq_last: torch.Tensor  # (S,) position of each sequence's last token
    n_seqs: int

    @property
    def n_tokens(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device) -> Packed:
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.segments, self.target_pos.to(device),
                      self.target_ids.to(device), self.target_seq.to(device), self.seq_last.to(device), self.n_seqs)


class _Builder:
    def __init__(self, n_seqs: int):
        self.ids, self.pos, self.segments = [], [], []
        self.t_pos, self.t_ids, self.t_seq = [], [], []
        self.last = [0] * n_seqs

    def add(self, tokens: list[int], first_position: int, prefix: tuple[int, int] = (0, 0)) -> int:
        start = len(self.ids)
        self.ids.extend(tokens)
        self.pos.extend(range(first_position, first_position + len(tokens)))
        self.segments.append((start, len(self.ids), *prefix))
        return start

    def targets(self, seq: int, positions: list[int], tokens: list[int], last: int) -> None:
        """``last``: where the sequence's final token sits (a reward head reads there)."""
        self.t_pos.extend(positions)
        self.t_ids.extend(tokens)
        self.t_seq.extend([seq] * len(tokens))
        self.last[seq] = last

    def build(self) -> Packed:
        long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return Packed(long([self.ids]), long([self.pos]), self.segments, long(self.t_pos), long(self.t_ids),
                      long(self.t_seq), long(self.last), len(self.last))


def pack(seqs: list[tuple[list[int], list[int]]]) -> Packed:
    """Pack (prompt_ids, response_ids) pairs, one segment each. Position t predicts token
    t + 1, so a response of length R after a prompt of length P starting at ``s`` has its
    targets at positions [s + P - 1, s + P + R - 1)."""
    b = _Builder(len(seqs))
    for i, (prompt, response) in enumerate(seqs):
        s = b.add(prompt + response, 0)
        first = s + len(prompt) - 1
        b.targets(i, list(range(first, first + len(response))), response, last=s + len(prompt) + len(response) - 1)
    return b.build()


def pack_pairs(triples: list[tuple[list[int], list[int], list[int]]]) -> Packed:
    """Pack (prompt, chosen, rejected) with the prompt laid out once per pair:
    [prompt + chosen][rejected], the rejected segment attending to the prompt as its prefix
    with positions continuing after it. Sequences 0..n-1 are the chosen, n..2n-1 the
    rejected. Equal to packing (prompt, chosen) and (prompt, rejected) separately, with the
    prompt computed once instead of twice."""
    n = len(triples)
    b = _Builder(2 * n)
    for i, (prompt, chosen, rejected) in enumerate(triples):
        s = b.add(prompt + chosen, 0)
        p_last = s + len(prompt) - 1  # its hidden state predicts both responses' first token
        b.targets(i, list(range(p_last, p_last + len(chosen))), chosen, last=p_last + len(chosen))
        r = b.add(rejected, len(prompt), prefix=(s, s + len(prompt)))
        b.targets(n + i, [p_last] + list(range(r, r + len(rejected) - 1)), rejected, last=r + len(rejected) - 1)
    return b.build()


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention within each packed segment (plus its prefix), never across sequences, with
    no T x T mask: ``torch`` SDPA per segment. query (B, H, T, D), key/value (B, Hkv, T, D)
    -> (B, T, H, D)."""
    segments = kwargs.get("packed_segments")
    if segments is None:  # an ordinary call (e.g. generate): the stock SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outs = []
    for a, b, pa, pb in segments:
        if pa == pb:
            outs.append(F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                                       scale=scaling, dropout_p=p, enable_gqa=gqa))
        else:
            k = torch.cat([key[:, :, pa:pb], key[:, :, a:b]], dim=2)
            v = torch.cat([value[:, :, pa:pb], value[:, :, a:b]], dim=2)
            n, m = b - a, pb - pa
            mask = torch.ones(n, m + n, dtype=torch.bool, device=query.device).tril(m)  # (L, P + L): prefix + causal
            outs.append(F.scaled_dot_product_attention(query[:, :, a:b], k, v, attn_mask=mask, scale=scaling,
                                                       dropout_p=p, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def use_packed_attention(model) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("prefloop_packed", _packed_sdpa)
    unwrap(model).set_attn_implementation("prefloop_packed")


def restore_attention(model) -> None:
    unwrap(model).set_attn_implementation("sdpa")


def hidden_states(model, packed: Packed) -> torch.Tensor:
    """(T, H) last hidden states of the packed row."""
    out = backbone(model)(input_ids=packed.input_ids, position_ids=packed.position_ids,
                          packed_segments=packed.segments, use_cache=False)
    return out.last_hidden_state[0]


def _accumulate_into_grad(weight: torch.Tensor) -> bool:
    """Whether backward should add this weight's gradient into ``weight.grad`` itself. Only for
    an LM head tied to the input embedding (see ``tie_embedding_grads``): both uses then add
    into one buffer instead of autograd summing two dense (V, H) gradients."""
    return weight.is_leaf and getattr(weight, "_prefloop_tied", False)


def _grad_buffer(weight: torch.Tensor) -> torch.Tensor:
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    return weight.grad


class _EmbeddingIntoGrad(torch.autograd.Function):
    """An embedding lookup whose backward index-adds into ``weight.grad`` in place (the stock
    backward builds a dense (V, H) gradient that autograd then adds to the LM head's)."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat_ids, flat_grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:  # like F.embedding: the padding row gets no gradient
            keep = flat_ids != ctx.padding_idx
            flat_ids, flat_grad = flat_ids[keep], flat_grad[keep]
        _grad_buffer(ctx.weight).index_add_(0, flat_ids, flat_grad.to(ctx.weight.dtype))
        return None, None, None


def tie_embedding_grads(model) -> bool:
    """For a model whose LM head is its input embedding and trains: both gradients go into the
    one ``.grad`` buffer in place (saves a (V, H) gradient at the peak: 113 MB for SmolLM2).
    Returns whether it applied."""
    inner = unwrap(model)
    emb, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    if head is None or emb.weight is not head.weight or not emb.weight.requires_grad:
        return False
    emb.weight._prefloop_tied = True
    padding_idx = emb.padding_idx

    def forward(ids):
        if torch.is_grad_enabled():
            return _EmbeddingIntoGrad.apply(ids, emb.weight, padding_idx)
        return F.embedding(ids, emb.weight, padding_idx)

    emb.forward = forward
    return True


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log p(target | h) = (h·W)[target] - logsumexp(h·W) for N positions, in chunks of rows.

    Forward keeps no logits: only h, W, targets and the per-row logsumexp. Backward recomputes
    one chunk's logits at a time and accumulates the weight gradient in place into one (V, H)
    buffer, so the peak is one (chunk, V) block, not (N, V) logits plus a (V, H) gradient per
    chunk (the idea of Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy,
    Wijmans et al. 2024). With g the incoming gradient per row:
        dlogits = g ⊙ (onehot(target) - softmax(logits)),  dh = dlogits·W,  dW = dlogitsᵀ·h
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk):
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lse = torch.empty_like(out)
        for a in range(0, h.shape[0], chunk):
            logits = F.linear(h[a:a + chunk], weight, bias).float()  # (n, V)
            lse[a:a + chunk] = torch.logsumexp(logits, dim=-1)
            out[a:a + chunk] = logits.gather(-1, targets[a:a + chunk, None]).squeeze(-1) - lse[a:a + chunk]
        ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.chunk = chunk
        ctx.into_param = _accumulate_into_grad(weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, bias, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            # Straight into the parameter's .grad (see _accumulate_into_grad): no second (V, H) buffer.
            grad_w = _grad_buffer(weight) if ctx.into_param else torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for a in range(0, h.shape[0], chunk):
            hc = h[a:a + chunk]
            logits = F.linear(hc, weight, bias).float()
            d = torch.exp(logits - lse[a:a + chunk, None]).neg_()  # -softmax, (n, V)
            d.scatter_add_(-1, targets[a:a + chunk, None], torch.ones_like(lse[a:a + chunk, None]))
            d.mul_(grad_out[a:a + chunk, None])
            d = d.to(h.dtype)
            if grad_h is not None:
                grad_h[a:a + chunk] = d @ weight
            if grad_w is not None:
                grad_w.addmm_(d.t(), hc)
            if grad_b is not None:
                grad_b.add_(d.sum(0))
        return grad_h, None if ctx.into_param else grad_w, grad_b, None, None


def token_logps(head: torch.nn.Linear, h: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) log-probs of ``targets`` under ``head(h)``, never holding more than (chunk, V) logits."""
    if not torch.is_grad_enabled() or not (h.requires_grad or head.weight.requires_grad):
        parts = []
        for a in range(0, h.shape[0], chunk):
            logits = head(h[a:a + chunk]).float()
            parts.append(logits.gather(-1, targets[a:a + chunk, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
        return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    return _ChunkedTokenLogProbs.apply(h, head.weight, head.bias, targets, chunk)


@dataclass
class LogProbs:
    sums: torch.Tensor  # (S,) sum of response-token log-probs per sequence
    counts: torch.Tensor  # (S,) response tokens per sequence
    tokens: torch.Tensor  # (N,) every response token's log-prob, sequence after sequence

    @property
    def means(self) -> torch.Tensor:
        return self.sums / self.counts.clamp_min(1)


def response_logps(model, packed: Packed, *, chunk: int = 1024) -> LogProbs:
    """Per-sequence sums and counts of response-token log-probs, and the token log-probs.

    The LM head runs only at response positions (no logits for prompt or padding), in chunks
    (``token_logps``): at most (chunk, V) logits alive at a time, recomputed in the backward
    pass instead of stored."""
    h = hidden_states(model, packed)[packed.target_pos]  # (N, H)
    head = unwrap(model).get_output_embeddings()
    token_lp = token_logps(head, h, packed.target_ids, chunk)  # (N,)
    sums = torch.zeros(packed.n_seqs, dtype=token_lp.dtype, device=h.device).index_add(0, packed.target_seq, token_lp)
    counts = torch.bincount(packed.target_seq, minlength=packed.n_seqs)
    return LogProbs(sums, counts, token_lp)


# ---------------------------------------------------------------- optimisation


def optimizer_and_schedule(model, cfg: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and norms) + linear warm-up then cosine decay to 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    # fused: one kernel per parameter, no param-sized temporaries (they set the peak RSS on CPU).
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    warmup = int(math.ceil(total_steps * cfg.warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def micro_batches(n_rows: int, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """Row indices per micro-batch for one epoch: a permutation seeded by (seed, epoch)."""
    order = list(range(n_rows))
    random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
    return [order[i:i + cfg.batch_size] for i in range(0, n_rows, cfg.batch_size)]


def total_steps(n_rows: int, cfg: TrainConfig) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_rows / cfg.batch_size)
    return max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))


def step_schedule(n_rows: int, cfg: TrainConfig) -> Iterator[list[list[int]]]:
    """Micro-batches grouped per optimiser step, across epochs, deterministic from the seed."""
    steps = total_steps(n_rows, cfg)
    epoch, pending = 0, []
    while True:
        for mb in micro_batches(n_rows, cfg, epoch):
            pending.append(mb)
            if len(pending) == cfg.grad_accum:
                yield pending
                pending = []
                steps -= 1
                if steps == 0:
                    return
        epoch += 1


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(out_dir: Path, *, step: int, model, tokenizer, cfg: TrainConfig, metrics: list[dict],
                    optimizer=None, scheduler=None, extra: dict | None = None, final: bool = False) -> Path:
    """``out_dir/checkpoint-<step>`` (or ``out_dir`` itself when ``final``): safetensors
    weights, config, tokenizer, metrics, and the optimiser / schedule / RNG state to resume."""
    target = out_dir if final else out_dir / f"checkpoint-{step:07d}"
    tmp = out_dir / f".tmp-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    inner = unwrap(model)
    attn = inner.config._attn_implementation
    inner.config._attn_implementation = "sdpa"  # what a reader of the saved config should use
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        inner.config._attn_implementation = attn
    tokenizer.save_pretrained(tmp)
    (tmp / "prefloop_config.json").write_text(json.dumps({"step": step, "config": cfg.as_dict(), **(extra or {})}, indent=2))
    (tmp / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "step": step}, tmp / "trainer_state.pt")
    if final:
        for item in tmp.iterdir():
            dest = out_dir / item.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(item, dest)
        tmp.rmdir()
    else:
        # A checkpoint is whole or absent: an existing one is moved aside, not deleted, until the new one is in place.
        old = out_dir / f".old-{step}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(p for p in Path(out_dir).glob("checkpoint-*") if (p / "trainer_state.pt").exists())
    return found[-1] if found else None


def load_weights(model, checkpoint_dir: Path) -> None:
    """Weights from a checkpoint directory into ``model`` (full or LoRA adapter)."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(checkpoint_dir / "adapter_model.safetensors")))
        return
    from safetensors.torch import load_file

    state = {}
    for f in sorted(checkpoint_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {checkpoint_dir} does not match the model: missing {missing}, unexpected {unexpected}")


# ---------------------------------------------------------------- the loop


def _split_by_tokens(rows: list[int], row_tokens: Callable[[int], int] | None, budget: int) -> list[list[int]]:
    """Consecutive runs of rows whose packed tokens stay within ``budget`` (a row over the
    budget on its own forms its own run)."""
    if not budget or row_tokens is None:
        return [rows]
    out, current, used = [], [], 0
    for i in rows:
        n = row_tokens(i)
        if current and used + n > budget:
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    out.append(current)
    return out


@dataclass
class Result:
    status: str  # "completed" or "cancelled"
    step: int
    metrics: list[dict] = field(default_factory=list)
    output: Path | None = None


def train_loop(
    *,
    cfg: TrainConfig,
    model,
    tokenizer,
    n_rows: int,
    batch_loss: Callable[[list[int]], tuple[torch.Tensor, dict]],
    evaluate: Callable[[], dict] | None,
    row_tokens: Callable[[int], int] | None = None,
    row_weight: Callable[[int], float] | None = None,
    out_dir: Path,
    extra: dict | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = True,
    progress: bool = False,
) -> Result:
    """The optimiser loop every recipe shares. ``batch_loss(row_indices)`` returns the mean loss
    of a micro-batch and its metrics (floats). Micro-batch losses are scaled by 1/grad_accum so
    the step's gradient is the mean over its micro-batches. With ``max_tokens_per_forward``, a
    micro-batch is cut into forwards of at most that many packed tokens (``row_tokens``), each
    weighted by its share of the micro-batch (``row_weight``: rows by default, response tokens
    for SFT), so the gradient is the same as one forward's."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = total_steps(n_rows, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_and_schedule(model, cfg, steps)
    metrics: list[dict] = []
    start = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        load_weights(model, ckpt)
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        metrics = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines() if line]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="training", unit="step")
    model.train()
    window: list[dict] = []
    t_window = time.perf_counter()
    status = "completed"
    save = lambda step, final=False: save_checkpoint(  # noqa: E731
        out_dir, step=step, model=model, tokenizer=tokenizer, cfg=cfg, metrics=metrics,
        optimizer=optimizer, scheduler=scheduler, extra=extra, final=final)
    step = start
    for step_index, group in enumerate(step_schedule(n_rows, cfg)):
        if step_index < start:
            continue  # resumed: these steps are in the checkpoint
        if should_cancel is not None and should_cancel():
            status = "cancelled"
            if step != start or ckpt is None:  # else the checkpoint it resumed from already holds this state
                save(step)
            break
        optimizer.zero_grad(set_to_none=True)
        step_stats: dict[str, float] = {}
        for rows in group:
            weight = row_weight or (lambda i: 1.0)
            total = sum(weight(i) for i in rows)
            for sub in _split_by_tokens(rows, row_tokens, cfg.max_tokens_per_forward):
                share = sum(weight(i) for i in sub) / total / len(group)
                loss, stats = batch_loss(sub)
                (loss * share).backward()
                for k, v in stats.items():
                    step_stats[k] = step_stats.get(k, 0.0) + float(v) * share
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm else float("inf"))
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        step = step_index + 1
        step_stats.update(grad_norm=float(grad_norm), learning_rate=lr)
        window.append(step_stats)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_stats['loss']:.4f}")
        if step % cfg.log_every == 0 or step == steps:
            row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            row.update(step=step, epoch=step * cfg.grad_accum * cfg.batch_size / max(1, n_rows),
                       seconds_per_step=(time.perf_counter() - t_window) / len(window))
            metrics.append(row)
            if on_metrics:
                on_metrics(step, row)
            window, t_window = [], time.perf_counter()
        if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != steps:
            row = {"step": step, **{f"eval_{k}": v for k, v in evaluate().items()}}
            metrics.append(row)
            if on_metrics:
                on_metrics(step, row)
            model.train()
        if cfg.save_every and step % cfg.save_every == 0 and step != steps:
            save(step)
    if bar is not None:
        bar.close()
    if status == "completed":
        if evaluate is not None:
            row = {"step": step, **{f"eval_{k}": v for k, v in evaluate().items()}}
            metrics.append(row)
            if on_metrics:
                on_metrics(step, row)
        save(step, final=True)
    model.eval()
    return Result(status=status, step=step, metrics=metrics, output=out_dir if status == "completed" else None)
