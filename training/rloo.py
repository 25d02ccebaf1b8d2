"""Critic-free RL from a reward model, on k samples per prompt (no value network):

- **RLOO** (Ahmadian et al. 2024, as TRL 1.16's ``RLOOTrainer``): the sequence's reward is its
  score minus β·KL (the per-token log-ratio to the reference summed over the response, k1);
  advantage = reward − the mean reward of the prompt's other k − 1 samples (optionally
  normalised over the rollout); loss = mean over sequences of −min(ρ·A, clip(ρ, 1 ± ε)·A) with
  the sequence-level ratio ρ = exp(Σ log π − Σ log π_old).
- **GRPO** (Shao et al. 2024, as TRL 1.16's ``GRPOTrainer`` by default): advantage = (score −
  group mean) / (group std + 1e-4); per-token ratio, clipped; with β > 0 the k3 KL estimate
  exp(ref − logp) − (ref − logp) − 1 (times the ratio: ``kl_ratio_correction``) added to each
  token's loss; ``loss_type="dapo"`` sums the
  token losses over the minibatch and divides by its token count, ``"grpo"`` averages per
  sequence, then over sequences.

Same formulas as TRL's on the same rollout (``benchmarks/rl_vs_trl.py`` checks the loss
and the advantages on one identical rollout). Metrics: TRL's rollout metrics
(objective/*) plus loss, policy/clipfrac_avg, policy/approxkl_avg, advantages mean/std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from training import losses
from training.config import RLOOConfig  # torch-free, beside every recipe's config: see there
from training.data import Report
from training.loop import Result
from training.rl import rl_loop
from training.rollout import Rollout, load_models, prompts_truncated, to_padded, train_stats


def advantages(rollout: Rollout, cfg: RLOOConfig) -> torch.Tensor:
    """(B,) per-sequence advantages of a rollout (see the module docstring)."""
    if cfg.advantage == "grpo":
        return losses.group_advantages(rollout.scores, cfg.k)
    rewards = rollout.scores
    if cfg.beta and rollout.ref_logp is not None:
        rewards = rewards - cfg.beta * ((rollout.logp - rollout.ref_logp) * rollout.mask).sum(1)
    adv = losses.rloo_advantages(rewards, cfg.k)
    if cfg.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-4)
    return adv


def prepare(rollout: Rollout, cfg: RLOOConfig) -> None:
    rollout.extra["advantages"] = advantages(rollout, cfg)


def policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
                adv: torch.Tensor, cfg: RLOOConfig, tokens: float | None = None) -> tuple[torch.Tensor, dict]:
    """The minibatch loss from (b, T) per-token log-probs (see the module docstring). ``tokens``:
    dapo's normaliser (TRL's: the rollout's tokens / minibatches; default: this minibatch's)."""
    if cfg.advantage == "rloo":
        seq_new, seq_old = (new_logp * mask).sum(1), (old_logp * mask).sum(1)
        per_seq, ratio, clipped = losses.clipped_policy_loss(seq_new, seq_old, adv, cfg.clip_eps)
        loss = per_seq.mean()
        clipfrac = clipped.float().mean()
        approxkl = (0.5 * (seq_new - seq_old).detach().pow(2)).mean()
    else:
        per_token, ratio, clipped = losses.clipped_policy_loss(new_logp, old_logp, adv[:, None], cfg.clip_eps)
        if cfg.beta and ref_logp is not None:
            kl = losses.kl_penalty(new_logp, ref_logp, "k3")
            if cfg.kl_ratio_correction:  # DeepSeek-V3.2: the unbiased reverse-KL gradient off-policy
                kl = kl * ratio
            per_token = per_token + cfg.beta * kl
        if cfg.loss_type == "dapo":
            loss = (per_token * mask).sum() / (tokens if tokens else mask.sum().clamp_min(1))
        else:
            loss = losses.masked_mean(per_token, mask, dim=1).mean()
        clipfrac = losses.masked_mean(clipped.float(), mask)
        approxkl = losses.masked_mean(0.5 * (new_logp - old_logp).detach().pow(2), mask)
    return loss, {"loss": loss.item(), "policy/clipfrac_avg": clipfrac.item(), "policy/approxkl_avg": approxkl.item()}


def minibatch_loss(models, rollout: Rollout, rows: list[int], cfg: RLOOConfig) -> tuple[torch.Tensor, dict]:
    lp, _ = train_stats(models.policy, rollout.packed(rows, models.device), chunk=cfg.logit_chunk, temperature=cfg.temperature)
    new_logp = to_padded(lp, [rollout.counts[i] for i in rows])
    T = new_logp.shape[1]
    pick = lambda x: None if x is None else x[rows][:, :T].to(new_logp.device)  # noqa: E731
    adv = rollout.extra["advantages"][rows].to(new_logp.device)
    tokens = float(rollout.mask.sum()) / cfg.num_minibatches
    return policy_loss(new_logp, pick(rollout.logp), pick(rollout.ref_logp), pick(rollout.mask), adv, cfg, tokens=tokens)


def train(
    cfg: RLOOConfig,
    prompts: list[list[dict]],
    out_dir: str | Path,
    *,
    eval_records: list[list[dict]] | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[Result, Report]:
    """Train on ``prompts`` (message lists); ``eval_records``: the monitor's eval prompts."""
    eval_prompts = eval_records
    report = Report(rows=len(prompts), kept=len(prompts))
    # ---- setup: a reference only when something reads it
    needs_reference = bool(cfg.beta) or (bool(eval_prompts) and bool(cfg.gold_model or cfg.monitor_every))
    models = load_models(cfg, needs_reference=needs_reference)
    report.truncated = prompts_truncated(models.tokenizer, prompts, cfg.max_prompt_length)

    def after_rollout(rollout: Rollout, stats: dict) -> None:
        adv = rollout.extra["advantages"]
        stats.update({"advantages/mean": adv.mean().item(), "advantages/std": adv.std().item() if adv.numel() > 1 else 0.0})

    # ---- train
    result = rl_loop(
        cfg=cfg, models=models, prompts=prompts, eval_prompts=eval_prompts or [], algorithm=cfg.advantage,
        prepare=lambda r: prepare(r, cfg), loss=lambda r, rows: minibatch_loss(models, r, rows, cfg), after_rollout=after_rollout,
        out_dir=Path(out_dir), on_metrics=on_metrics, on_progress=on_progress, should_cancel=should_cancel, progress=progress,
    )
    return result, report
