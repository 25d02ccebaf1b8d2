"""Evaluating a new policy against the active one: the figures a promotion is decided on.

Both policies answer the same eval prompts with the same seeds; a reward model judges each
pair. The figures:

- **win rate** of new over active: a hard win when r_new > r_active, a loss when lower, a tie
  (counted half a win) when equal; identical texts are ties without asking the reward model.
  Hard wins, not σ(r_new − r_active): the interval below is for a proportion of pairs, and a
  hard win is what a human comparison of the pair records. 95% interval: Wilson score
  (Wilson 1927; Agresti & Coull 1998), which stays inside [0, 1] and is sane at small n
  and at rates near 0 or 1, unlike the normal approximation.
- **KL(new ‖ reference)**: the Monte-Carlo estimate E_{y~π_new}[log π_new(y|x) − log π_ref(y|x)]
  over the new policy's samples (one per prompt), both log-probs of the whole response under
  the raw distributions (temperature 1, no top-p), each by one plain forward pass of the same
  code, so a reference equal to the new policy gives exactly 0. The samples are drawn with the
  campaign's sampling parameters (temperature, top-p), as annotators see them, so the figure is
  the usual RLHF monitor, not an unbiased KL of the raw distributions when temperature ≠ 1.
  The reference shares the new policy's tokenizer (it is an ancestor of it).
- **mean length** in tokens (the EOS counted when produced) and **distinct-2** (Li et al. 2016):
  unique word bigrams / all word bigrams over the responses, a watch for mode collapse.

The pure functions here are torch-free; torch is imported by the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

Z95 = 1.959963984540054  # Φ⁻¹(0.975)
N_EXAMPLES = 6  # example pairs kept for the evaluation page


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float
    high: float


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (``successes`` may be a half
    count, ties counted half):
        center = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) · sqrt(p(1 − p)/n + z²/4n²)
    (0, 1) when n = 0: nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def win_rate(wins: int, ties: int, losses: int, z: float = Z95) -> WinRate:
    """Win rate with ties counted half, and its Wilson interval. No pairs: rate 0.5, interval (0, 1)."""
    n = wins + ties + losses
    if n == 0:
        return WinRate(0.5, 0.0, 1.0)
    successes = wins + 0.5 * ties
    low, high = wilson_interval(successes, n, z)
    return WinRate(successes / n, low, high)


def pairwise_outcomes(r_new: Sequence[float], r_active: Sequence[float]) -> tuple[int, int, int]:
    """(wins, ties, losses) of new over active: a hard comparison of the two rewards per pair."""
    if len(r_new) != len(r_active):
        raise ValueError("one reward per pair on each side")
    wins = sum(a > b for a, b in zip(r_new, r_active))
    ties = sum(a == b for a, b in zip(r_new, r_active))
    return wins, ties, len(r_new) - wins - ties


def kl_estimate(logp_new: Sequence[float], logp_ref: Sequence[float]) -> float:
    """KL(new ‖ ref) ≈ mean over samples y ~ π_new of log π_new(y) − log π_ref(y) (sequence
    log-probs, nats per response). An unbiased estimate that can come out negative on few samples."""
    if len(logp_new) != len(logp_ref):
        raise ValueError("one reference log-prob per sample")
    if not logp_new:
        return 0.0
    return sum(a - b for a, b in zip(logp_new, logp_ref)) / len(logp_new)


def mean_length(token_counts: Sequence[int]) -> float:
    return sum(token_counts) / len(token_counts) if token_counts else 0.0


def distinct_n(sequences: Sequence[Sequence], n: int = 2) -> float:
    """Unique n-grams / all n-grams, n-grams taken within each sequence (never across two);
    0.0 when there are none."""
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class EvalResult:
    n_prompts: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    win_low: float
    win_high: float
    kl: float
    mean_length_new: float
    mean_length_active: float
    distinct2_new: float
    distinct2_active: float
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def response_logprob(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Sum of log π(response | prompt) by one plain forward, the LM head only at the response
    positions (``training.logprobs.token_logps``: never (T, V) logits at once)."""
    import torch

    from training.logprobs import token_logps
    from training.models import backbone, unwrap

    if not response_ids:
        return 0.0
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + response_ids], device=device)
    with torch.no_grad():
        h = backbone(model)(input_ids=ids, use_cache=False).last_hidden_state[0]  # (T, H)
        start = len(prompt_ids) - 1  # position t predicts token t + 1
        lp = token_logps(unwrap(model).get_output_embeddings(), h[start:start + len(response_ids)], ids[0, len(prompt_ids):])
    return float(lp.sum())


def sample_kl(model, tokenizer, reference_model, prompts: list[list[dict]], samples) -> float:
    """KL(model ‖ reference) estimated from ``samples`` drawn from ``model`` (one per prompt):
    ``kl_estimate`` of their log-probs under both (exactly 0 when the reference is the model)."""
    from training.data import prompt_tokens

    logp, logp_ref = [], []
    for messages, s in zip(prompts, samples):
        p = prompt_tokens(tokenizer, messages)
        logp.append(response_logprob(model, p, s.token_ids))
        logp_ref.append(logp[-1] if reference_model is model else response_logprob(reference_model, p, s.token_ids))
    return kl_estimate(logp, logp_ref)


def evaluate_policy(new_model, new_tok, active_model, active_tok, reference_model, prompts: list[list[dict]],
                    reward_model, reward_tok, params, seed: int, *, n_examples: int = N_EXAMPLES) -> EvalResult:
    """Sample one response per prompt from the new and the active policy with the same seed
    (``generate`` seeds batch b with ``mix_seed(seed, b)`` for both, so prompt i is drawn from
    the same random stream by each), judge each pair with the reward model, and return the
    figures (module docstring) with the first ``n_examples`` pairs."""
    from training.reward import score
    from training.sampling import generate

    if not prompts:
        raise ValueError("no eval prompts")
    new = [s[0] for s in generate(new_model, new_tok, prompts, k=1, params=params, seed=seed)]
    active = [s[0] for s in generate(active_model, active_tok, prompts, k=1, params=params, seed=seed)]

    # The reward model scores each distinct text once; identical pairs are ties by construction.
    items = [(m, s.text) for m, s in zip(prompts, new)]
    differ = [i for i, (a, b) in enumerate(zip(new, active)) if a.text != b.text]
    items += [(prompts[i], active[i].text) for i in differ]
    rewards = score(reward_model, reward_tok, items)
    r_new = list(rewards[:len(prompts)])
    r_active = list(r_new)  # identical texts: the same reward
    for j, i in enumerate(differ):
        r_active[i] = rewards[len(prompts) + j]
    wins, ties, losses = pairwise_outcomes(r_new, r_active)
    rate = win_rate(wins, ties, losses)

    outcome = {1: "win", 0: "tie", -1: "loss"}
    examples = [
        {"prompt": prompts[i], "new": new[i].text, "active": active[i].text, "reward_new": r_new[i],
         "reward_active": r_active[i], "outcome": outcome[(r_new[i] > r_active[i]) - (r_new[i] < r_active[i])],
         "seed": new[i].seed}
        for i in range(min(n_examples, len(prompts)))
    ]
    return EvalResult(
        n_prompts=len(prompts), wins=wins, ties=ties, losses=losses, win_rate=rate.rate, win_low=rate.low,
        win_high=rate.high, kl=sample_kl(new_model, new_tok, reference_model, prompts, new),
        mean_length_new=mean_length([s.token_count for s in new]),
        mean_length_active=mean_length([s.token_count for s in active]),
        distinct2_new=distinct_n([s.text.split() for s in new]),
        distinct2_active=distinct_n([s.text.split() for s in active]),
        examples=examples,
    )
