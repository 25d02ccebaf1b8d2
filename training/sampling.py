"""Batched, seeded sampling of k responses per prompt, with each response's log-prob sum.

All prompts x k samples go through ``model.generate`` in batches (left padding, attention
mask), which is where the speed over one-prompt-at-a-time generation comes from. The
per-step draw is exact temperature + top-p (``training.nucleus``: the nucleus found on a
top-k prefilter, the token drawn among the kept only), the same distribution as the stock
transformers warpers without their full-vocabulary sort and draw; ``fast=False`` keeps the
stock warpers (for comparison). The log-prob sum of a response is taken under the
policy's own distribution (raw logits, temperature 1, no top-p), over the generated tokens up to and including the first EOS: the
quantity DPO / PPO need as the sampling policy's log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data import prompt_tokens
from training.nucleus import NucleusSampler
from training.params import SamplingParams
from training.seeds import mix_seed

__all__ = ["Sample", "SamplingParams", "generate", "sample_pairs", "sequence_logprob"]


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: list[int]  # generated tokens, the EOS included when it was produced
    token_count: int
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens)
    logprob_sum: float
    seed: int


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _shared_prefill(model, seqs: list[list[int]], counts: list[int], pad_id: int, device):
    """The KV cache of each distinct prompt but its last token, computed once (left-padded
    batch of the distinct prompts) and repeated ``counts`` times: the k samples of a prompt
    share its prefill. ``generate`` then feeds only the last column."""
    from transformers import DynamicCache

    ids, mask = _left_pad(seqs, pad_id, device)
    ids, mask = ids[:, :-1], mask[:, :-1]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate derives them from the mask
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)  # no LM head
    prefilled = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    repeats = torch.tensor(counts, device=device)
    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(prefilled.layers):
        cache.update(layer.keys.repeat_interleave(repeats, dim=0), layer.values.repeat_interleave(repeats, dim=0), i)
    return cache


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[dict]],
    *,
    k: int = 2,
    params: SamplingParams | None = None,
    seed: int = 0,
    progress: bool = False,
    fast: bool = True,
    _draw: bool = True,
    _share_prefill: bool = True,
) -> list[list[Sample]]:
    """``k`` samples for each prompt (message lists). Same inputs + seed -> same outputs.

    ``fast=False``: the stock transformers warpers and multinomial draw (same distribution,
    other tokens for the same seed). ``_draw=False`` (tests): the fast nucleus, the stock draw
    (token for token the stock path's outputs). ``fast`` also prefills each distinct prompt of
    a batch once for its k samples (``_share_prefill=False``: not)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    params = params or SamplingParams()
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    encoded = [prompt_tokens(tokenizer, messages) for messages in prompts]  # the ids the trainers see for the same prompt
    flat = [(p, j) for p in range(len(prompts)) for j in range(k)]
    results: list[list[Sample | None]] = [[None] * k for _ in prompts]
    device = next(model.parameters()).device
    batches = range(0, len(flat), params.batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="sampling", unit="batch")
    for b, start in enumerate(batches):
        chunk = flat[start:start + params.batch_size]
        ids, mask = _left_pad([encoded[p] for p, _ in chunk], pad_id, device)
        batch_seed = mix_seed(seed, b)  # one seed per batch: reproducible for a fixed batch size
        torch.manual_seed(batch_seed)
        common = dict(
            input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens, eos_token_id=eos_id,
            pad_token_id=pad_id, return_dict_in_generate=True,
        )
        sampler = None
        distinct = [(p, sum(1 for q, _ in chunk if q == p)) for p in dict.fromkeys(q for q, _ in chunk)]
        if fast and _share_prefill and min(len(encoded[p]) for p, _ in distinct) >= 2:
            common["cache"] = _shared_prefill(model, [encoded[p] for p, _ in distinct], [n for _, n in distinct], pad_id, device)
        if not fast:
            out = model.generate(**common, do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0, output_logits=True)
        else:
            sampler = NucleusSampler(params.temperature, params.top_p, draw=_draw)
            # draw=True: the processor draws and leaves one finite score, which greedy decoding takes.
            stock_draw = {} if _draw else dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, output_logits=True)
            out = model.generate(**common, logits_processor=[sampler], **stock_draw)
        gen = out.sequences[:, ids.shape[1]:]  # (B, G)
        if sampler is not None and _draw:
            token_logp = torch.stack(sampler.logprobs[: gen.shape[1]], dim=1)  # (B, G), recorded as drawn
        else:  # raw logits, before temperature / top-p: one log-softmax per step, no (B, G, V) stack
            token_logp = torch.stack([
                step.float().gather(-1, gen[:, t: t + 1]).squeeze(-1) - torch.logsumexp(step.float(), dim=-1)
                for t, step in enumerate(out.logits)
            ], dim=1)
        for row, (p, j) in enumerate(chunk):
            tokens = gen[row].tolist()
            finish = "length"
            if eos_id in tokens:
                tokens = tokens[: tokens.index(eos_id) + 1]
                finish = "stop"
            n = len(tokens)
            text_ids = tokens[:-1] if finish == "stop" else tokens
            results[p][j] = Sample(
                text=tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                token_ids=tokens,
                token_count=n,
                finish_reason=finish,
                logprob_sum=float(token_logp[row, :n].sum()),
                seed=batch_seed,
            )
    return results  # type: ignore[return-value]


def sample_pairs(
    model, tokenizer, prompts: list[list[dict]], *, params: SamplingParams | None = None, seed: int = 0,
    max_attempts: int = 3, progress: bool = False, other_model=None, other_tokenizer=None,
) -> list[tuple[Sample, Sample] | None]:
    """Two different, non-empty samples per prompt; identical or empty ones are re-sampled
    (with a new seed) up to ``max_attempts`` times, then given up (None) rather than shown.

    Arena mode (``other_model`` given, with ``other_tokenizer`` when it has its own): the first sample of each pair
    comes from ``model``, the second from ``other_model``; each log-prob sum is under the
    model that sampled it. A pair where either side is empty or both are equal is redrawn
    whole, so neither side is favoured by being drawn more often."""
    pairs: list[tuple[Sample, Sample] | None] = [None] * len(prompts)
    todo = list(range(len(prompts)))
    for attempt in range(max_attempts):
        if not todo:
            break
        batch = [prompts[i] for i in todo]
        attempt_seed = mix_seed(seed, attempt)
        if other_model is None:
            drawn = [tuple(s) for s in generate(model, tokenizer, batch, k=2, params=params, seed=attempt_seed, progress=progress)]
        else:
            first = generate(model, tokenizer, batch, k=1, params=params, seed=attempt_seed, progress=progress)
            second = generate(other_model, other_tokenizer or tokenizer, batch, k=1, params=params, seed=mix_seed(seed, attempt, 1), progress=progress)
            drawn = [(a[0], b[0]) for a, b in zip(first, second)]
        still = []
        for i, (a, b) in zip(todo, drawn):
            if a.text and b.text and a.text != b.text:
                pairs[i] = (a, b)
            else:
                still.append(i)
        todo = still
    return pairs


@torch.no_grad()
def sequence_logprob(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Sum of log p(response | prompt) by one forward pass (a check on the sampler's sums)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + response_ids], device=device)
    logits = model(ids).logits[0, len(prompt_ids) - 1: -1].float()  # (R, V): positions predicting the response
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp.gather(-1, torch.tensor(response_ids, device=device).unsqueeze(-1)).sum())
