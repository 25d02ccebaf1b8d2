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
from transformers.cache_utils import DynamicLayer

from training.data import prompt_tokens
from training.fastdecode import lean_decoder
from training.fastlinear import packed_linears
from training.models import backbone, unwrap
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
    # with generate(..., step_stats=True): per generated token, its log-prob and the entropy under
    # the sampling distribution (logits / temperature, before top-p), as RL's rollouts take them
    step_logps: tuple[float, ...] = ()
    step_entropies: tuple[float, ...] = ()


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


class _ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in a buffer reserved for the whole
    generation: a step writes its column in place, where ``DynamicLayer`` concatenates (a copy
    of the layer's whole cache at every step: a quarter of a step's time at batch 16 here)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        n = keys.shape[-2]
        self._keys = keys.new_empty((*keys.shape[:-2], max(capacity, n), keys.shape[-1]))
        self._values = values.new_empty((*values.shape[:-2], max(capacity, n), values.shape[-1]))
        self._keys[..., :n, :], self._values[..., :n, :] = keys, values
        self.device, self.is_initialized, self._n = keys.device, True, n
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._keys[..., : self._n, :], self._values[..., : self._n, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._n + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # past the reservation (not on the sampling path): double it
            grow = lambda t: torch.cat([t, t.new_empty((*t.shape[:-2], end, t.shape[-1]))], dim=-2)  # noqa: E731
            self._keys, self._values = grow(self._keys), grow(self._values)
        self._keys[..., self._n:end, :], self._values[..., self._n:end, :] = key_states, value_states
        self._n = end
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._views()


def _prefill(model, seqs: list[list[int]], counts: list[int], pad_id: int, device, *, drop_last: bool = False,
             reserve: int = 0):
    """One forward of the distinct prompts ``seqs`` (left-padded, no LM head), its KV cache
    repeated ``counts`` times along the batch: the k samples of a prompt share its prefill.
    Returns the cache, the attention mask and the last position id (both repeated), and the
    last position's hidden state. ``drop_last``: prefill all but the last token (``generate``
    then feeds that column); ``reserve``: room for that many more tokens in place
    (``_ReservedLayer``)."""
    ids, mask = _left_pad(seqs, pad_id, device)
    if drop_last:
        ids, mask = ids[:, :-1], mask[:, :-1]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate derives them from the mask
    out = backbone(model)(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    repeats = torch.tensor(counts, device=device)
    for i, layer in enumerate(cache.layers):
        keys, values = layer.keys.repeat_interleave(repeats, dim=0), layer.values.repeat_interleave(repeats, dim=0)
        if reserve and type(layer) is DynamicLayer:  # a sliding-window layer keeps its own (cropping) update
            cache.layers[i] = _ReservedLayer(keys, values, keys.shape[-2] + reserve)
        else:
            layer.keys, layer.values = keys, values
    last = out.last_hidden_state[:, -1].repeat_interleave(repeats, dim=0)
    return cache, mask.repeat_interleave(repeats, dim=0), position_ids[:, -1].repeat_interleave(repeats, dim=0), last


def _decode(model, seqs, counts, *, sampler: NucleusSampler, max_new_tokens: int, eos_id: int, pad_id: int, device,
            step_stats: bool = False):
    """The fast path's own decoding loop: shared prefill, then one token per step for the rows
    still going. A row that drew EOS leaves the batch (its KV cache rows are dropped), so the
    remaining steps cost less; no logits are kept. Returns the tokens ``(B, G)`` (pad after
    EOS), each token's raw-policy log-prob ``(B, G)`` and, with ``step_stats``, its log-prob and
    the entropy under the sampling distribution (logits / temperature) ``(B, G)`` each (else None)."""
    # The same weights for every step: packed once (``training.fastlinear``), which costs a few
    # steps' savings. A Llama-family model decodes with ``training.fastdecode``'s lean step
    # (its own fused, packed weights; the head module stays, so hooks on it still run).
    inner = unwrap(model)
    lean = lean_decoder(inner)
    with packed_linears(inner.get_output_embeddings() if lean is not None else inner):
        return _decode_steps(model, seqs, counts, sampler=sampler, max_new_tokens=max_new_tokens, eos_id=eos_id,
                             pad_id=pad_id, device=device, step_stats=step_stats, lean=lean)


def _decode_steps(model, seqs, counts, *, sampler, max_new_tokens, eos_id, pad_id, device, step_stats, lean=None):
    cache, mask, positions, hidden = _prefill(model, seqs, counts, pad_id, device, reserve=max_new_tokens)
    if lean is not None and not all(type(layer) is _ReservedLayer for layer in cache.layers):
        lean = None
    if lean is not None:  # the columns each row attends to, for the whole generation
        attend = torch.zeros((mask.shape[0], cache.layers[0]._keys.shape[-2]), dtype=torch.bool, device=device)
        attend[:, : mask.shape[1]] = mask.bool()
    head = unwrap(model).get_output_embeddings()
    rows = hidden.shape[0]
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((rows, max_new_tokens), device=device)
    t_logps = torch.zeros((rows, max_new_tokens), device=device) if step_stats else None
    entropies = torch.zeros((rows, max_new_tokens), device=device) if step_stats else None
    alive = torch.arange(rows, device=device)  # the original row of each row still going
    for t in range(max_new_tokens):
        raw = head(hidden).float()
        token, logp = sampler.draw(raw)
        tokens[alive, t] = token
        logps[alive, t] = logp
        if step_stats:
            scaled = raw / sampler.temperature if sampler.temperature != 1.0 else raw
            lse = torch.logsumexp(scaled, dim=-1)
            t_logps[alive, t] = scaled.gather(-1, token.unsqueeze(-1)).squeeze(-1) - lse
            entropies[alive, t] = lse - (torch.softmax(scaled, dim=-1) * scaled).sum(-1)
        going = token != eos_id
        if t == max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(-1)
            alive, token, mask, positions = alive[keep], token[keep], mask[keep], positions[keep]
            if lean is not None:
                attend = attend[keep]
            for layer in cache.layers:
                layer.batch_select_indices(keep)
        positions = positions + 1
        if lean is not None:
            attend[:, cache.layers[0]._n] = True
            hidden = lean.step(token, positions, cache, attend)
            continue
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = backbone(model)(input_ids=token.unsqueeze(-1), attention_mask=mask, position_ids=positions.unsqueeze(-1),
                               cache=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    return tokens, logps, t_logps, entropies


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
    step_stats: bool = False,
    _draw: bool = True,
    _share_prefill: bool = True,
) -> list[list[Sample]]:
    """``k`` samples for each prompt (message lists). Same inputs + seed -> same outputs.

    ``fast=False``: the stock transformers warpers and multinomial draw (same distribution,
    other tokens for the same seed), through ``model.generate``. The default is our own loop
    (``_decode``): each distinct prompt of a batch prefilled once for its k samples, finished
    rows dropped from the batch. ``_draw=False`` (tests): the fast nucleus inside
    ``model.generate`` with its multinomial draw (token for token the stock path's outputs;
    ``_share_prefill`` prefills as the fast path does). ``step_stats`` (fast path only): each
    Sample also carries its tokens' log-probs and entropies under the sampling distribution."""
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
        batch_seed = mix_seed(seed, b)  # one seed per batch: reproducible for a fixed batch size
        torch.manual_seed(batch_seed)
        distinct = [(p, sum(1 for q, _ in chunk if q == p)) for p in dict.fromkeys(q for q, _ in chunk)]
        step_logp = step_ent = None
        if fast and _draw:  # our own loop (the default)
            sampler = NucleusSampler(params.temperature, params.top_p)
            gen, token_logp, step_logp, step_ent = _decode(
                model, [encoded[p] for p, _ in distinct], [n for _, n in distinct], sampler=sampler,
                max_new_tokens=params.max_new_tokens, eos_id=eos_id, pad_id=pad_id, device=device, step_stats=step_stats)
        elif step_stats:
            raise ValueError("step_stats needs the fast path")
        else:
            ids, mask = _left_pad([encoded[p] for p, _ in chunk], pad_id, device)
            common = dict(
                input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens, eos_token_id=eos_id,
                pad_token_id=pad_id, return_dict_in_generate=True, output_logits=True,
            )
            if not fast:
                out = model.generate(**common, do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            else:  # the fast nucleus with generate's own multinomial draw (tests: token for token the stock path)
                if _share_prefill and min(len(encoded[p]) for p, _ in distinct) >= 2:
                    common["cache"] = _prefill(model, [encoded[p] for p, _ in distinct], [n for _, n in distinct], pad_id,
                                               device, drop_last=True)[0]
                out = model.generate(**common, logits_processor=[NucleusSampler(params.temperature, params.top_p, draw=False)],
                                     do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
            gen = out.sequences[:, ids.shape[1]:]  # (B, G)
            # raw logits, before temperature / top-p: one log-softmax per step, no (B, G, V) stack
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
                step_logps=tuple(step_logp[row, :n].tolist()) if step_logp is not None else (),
                step_entropies=tuple(step_ent[row, :n].tolist()) if step_ent is not None else (),
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
