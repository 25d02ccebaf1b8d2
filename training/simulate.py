"""The model side of the simulated loop (``simulate_loop``): a noisy simulated annotator, and
the evaluation of a policy against the original one *under the hidden rule itself*.

- **noise**: with probability ``noise`` a simulated vote ignores the rule and is a fair coin
  between "a" and "b" (so noise 0.2 agrees with the rule about 90% of the time on a pair the
  rule decides); otherwise it is the rule's answer.
- **evaluation**: both policies answer the same prompts with the same seed (``generate`` seeds
  batch b with ``mix_seed(seed, b)`` for both), the rule judges each pair (identical texts tie
  without asking it; the current policy's text goes first on even prompts and second on odd
  ones, so a rule with a position bias cannot favour either side), ties count half, the 95%
  interval is Wilson's; KL(current ‖ original) and the mean length as in
  ``training.evaluation`` (same helpers).

torch is imported by the functions that need it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from training.evaluation import mean_length, sample_kl, win_rate
from training.rules import Rule, judge


def noisy_choice(rule: Rule, prompt_messages: list[dict], text_a: str, text_b: str, *, rng: random.Random,
                 noise: float) -> str:
    """One simulated vote: the rule's answer, or with probability ``noise`` a coin flip a / b."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if rng.random() < noise:
        return rng.choice(("a", "b"))
    return judge(rule, prompt_messages, text_a, text_b)


@dataclass
class RuleEval:
    n_prompts: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    win_low: float
    win_high: float
    kl: float  # KL(current ‖ original), nats per response
    mean_length: float  # current policy, tokens
    mean_length_original: float

    def as_dict(self) -> dict:
        return asdict(self)


def rule_outcome(rule: Rule, prompt_messages: list[dict], current: str, original: str, *, current_first: bool) -> int:
    """+1 when the rule prefers the current policy's text, -1 the original's, 0 a tie."""
    if current == original:
        return 0
    a, b = (current, original) if current_first else (original, current)
    choice = judge(rule, prompt_messages, a, b)
    if choice == "tie":
        return 0
    return 1 if (choice == "a") == current_first else -1


def evaluate_by_rule(model, tokenizer, original_model, original_tokenizer, prompts: list[list[dict]], rule: Rule,
                     params, seed: int, *, progress: bool = False) -> RuleEval:
    """Win rate of ``model`` over ``original_model`` under ``rule`` on ``prompts`` (one sample
    each, same seed), KL(current ‖ original) from the current samples, mean lengths."""
    from training.sampling import generate

    if not prompts:
        raise ValueError("no eval prompts")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=3, desc="evaluating under the rule", unit="step")
    current = [s[0] for s in generate(model, tokenizer, prompts, k=1, params=params, seed=seed)]
    if bar is not None:
        bar.update(1)
    original = [s[0] for s in generate(original_model, original_tokenizer, prompts, k=1, params=params, seed=seed)]
    if bar is not None:
        bar.update(1)
    outcomes = [rule_outcome(rule, m, c.text, o.text, current_first=i % 2 == 0)
                for i, (m, c, o) in enumerate(zip(prompts, current, original))]
    wins, losses = outcomes.count(1), outcomes.count(-1)
    rate = win_rate(wins, outcomes.count(0), losses)
    kl = sample_kl(model, tokenizer, original_model, prompts, current)
    if bar is not None:
        bar.update(1)
        bar.close()
    return RuleEval(
        n_prompts=len(prompts), wins=wins, ties=outcomes.count(0), losses=losses, win_rate=rate.rate,
        win_low=rate.low, win_high=rate.high, kl=kl,
        mean_length=mean_length([s.token_count for s in current]),
        mean_length_original=mean_length([s.token_count for s in original]),
    )
