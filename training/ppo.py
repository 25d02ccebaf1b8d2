"""PPO as InstructGPT trains it (Ouyang et al. 2022; Ziegler et al. 2019; the recipe of TRL's
former PPOTrainer and of "The N implementation details of RLHF with PPO", Huang et al. 2024):

- a rollout from the current policy (``training.rl``), scored by the frozen reward model at
  each response's last token;
- per-token reward r̃_t = −β·(log π(y_t|·) − log π_ref(y_t|·)), plus the score at the last
  token (``losses.ppo_token_rewards``), the reference's log-probs computed once per rollout;
- a value head on the policy's last hidden state; GAE(γ, λ) advantages, whitened; returns =
  advantages + values;
- ``ppo_epochs`` passes of ``num_minibatches`` minibatches: the clipped policy objective (ε)
  and the clipped value loss, ``loss = pg + vf_coef · vf``;
- optionally an adaptive KL controller toward ``target_kl`` and a penalty for responses
  without EOS.

Metrics as TRL names them: objective/kl, objective/entropy, objective/scores,
objective/non_score_reward, objective/rlhf_reward, policy/approxkl_avg, policy/clipfrac_avg,
loss/policy_avg, loss/value_avg, val/clipfrac_avg, val/ratio,
val/num_eos_tokens, response_length, and objective/beta.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from training import losses
from training.config import PPOConfig  # torch-free, beside every recipe's config: see there
from training.data import Report
from training.loop import Result
from training.rl import rl_loop
from training.rollout import Rollout, load_models, prompts_truncated, to_padded, train_stats


def prepare(rollout: Rollout, cfg: PPOConfig, beta: float) -> None:
    """Token rewards, GAE advantages (whitened) and returns, once per rollout."""
    ref = rollout.ref_logp if rollout.ref_logp is not None else rollout.logp
    rewards, _ = losses.ppo_token_rewards(rollout.scores, rollout.logp, ref, rollout.mask, beta)
    adv, returns = losses.gae(rewards, rollout.values, rollout.mask, gamma=cfg.gamma, lam=cfg.lam)
    if cfg.whiten_advantages:
        adv = losses.masked_whiten(adv, rollout.mask)
    rollout.extra.update(advantages=adv, returns=returns)


def minibatch_loss(models, rollout: Rollout, rows: list[int], cfg: PPOConfig) -> tuple[torch.Tensor, dict]:
    packed = rollout.packed(rows, models.device)
    lp, values = train_stats(models.policy, packed, chunk=cfg.logit_chunk, value_head=models.value_head, temperature=cfg.temperature)
    counts = [rollout.counts[i] for i in rows]
    new_logp, new_values = to_padded(lp, counts), to_padded(values, counts)
    T = new_logp.shape[1]
    pick = lambda x: x[rows][:, :T].to(new_logp.device)  # noqa: E731
    mask, old_logp, old_values = pick(rollout.mask), pick(rollout.logp), pick(rollout.values)
    adv, returns = pick(rollout.extra["advantages"]), pick(rollout.extra["returns"])
    pg, ratio, pg_clipped = losses.clipped_policy_loss(new_logp, old_logp, adv, cfg.clip_eps)
    vf, vf_clipped = losses.clipped_value_loss(new_values, old_values, returns, cfg.cliprange_value)
    pg_loss, vf_loss = losses.masked_mean(pg, mask), losses.masked_mean(vf, mask)
    loss = pg_loss + cfg.vf_coef * vf_loss
    with torch.no_grad():
        log_ratio = (new_logp - old_logp).detach()
        stats = {
            "loss/policy_avg": pg_loss.item(), "loss/value_avg": vf_loss.item(), "loss": loss.item(),
            "policy/approxkl_avg": losses.masked_mean(0.5 * log_ratio.pow(2), mask).item(),
            "policy/clipfrac_avg": losses.masked_mean(pg_clipped.float(), mask).item(),
            "val/clipfrac_avg": losses.masked_mean(vf_clipped.float(), mask).item(),
            "val/ratio": losses.masked_mean(ratio.detach(), mask).item(),
        }
    return loss, stats


def train(
    cfg: PPOConfig,
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
    # ---- setup
    models = load_models(cfg, value_head=True, needs_reference=True)
    report.truncated = prompts_truncated(models.tokenizer, prompts, cfg.max_prompt_length)
    kl_ctl = losses.AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.kl_horizon) if cfg.target_kl else None
    beta = lambda: kl_ctl.value if kl_ctl else cfg.beta  # noqa: E731

    def after_rollout(rollout: Rollout, stats: dict) -> None:
        stats["objective/beta"] = beta()
        if "objective/kl" in stats:  # with the coefficient this rollout used
            stats["objective/non_score_reward"] = -beta() * stats["objective/kl"]
            stats["objective/rlhf_reward"] = stats["objective/scores"] - beta() * stats["objective/kl"]
        if kl_ctl is not None and "objective/kl" in stats:
            kl_ctl.update(stats["objective/kl"], rollout.n)

    def load_state(state: dict) -> None:
        if kl_ctl is not None and "beta" in state:
            kl_ctl.value = state["beta"]

    # ---- train
    result = rl_loop(
        cfg=cfg, models=models, prompts=prompts, eval_prompts=eval_prompts or [], algorithm="ppo",
        prepare=lambda r: prepare(r, cfg, beta()), loss=lambda r, rows: minibatch_loss(models, r, rows, cfg),
        extra_state=lambda: {"beta": beta()}, load_extra_state=load_state, after_rollout=after_rollout,
        out_dir=Path(out_dir), on_metrics=on_metrics, on_progress=on_progress, should_cancel=should_cancel, progress=progress,
    )
    return result, report
