"""Batched, seeded sampling of k responses per prompt, with each response's log-prob sum.

All prompts x k samples go through ``model.generate`` in batches (left padding, attention
mask), which is where the speed over one-prompt-at-a-time generation comes from. The
log-prob sum of a response is taken under the policy's own distribution (raw logits,
temperature 1, no top-p), over the generated tokens up to and including the first EOS: the
quantity DPO / PPO need as the sampling policy's log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data import prompt_tokens
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
) -> list[list[Sample]]:
    """``k`` samples for each prompt (message lists). Same inputs + seed -> same outputs."""
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
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        gen = out.sequences[:, ids.shape[1]:]  # (B, G)
        logits = torch.stack(out.logits, dim=1).float()  # (B, G, V) raw, before temperature / top-p
        token_logp = torch.log_softmax(logits, dim=-1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)  # (B, G)
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
