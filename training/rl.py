"""Online RL against a reward model, the parts PPO, RLOO and GRPO share beyond the rollout
(``training.rollout``): the overoptimisation monitor, checkpoints with resume, and ``rl_loop``: rollout → advantages → ``ppo_epochs`` × ``num_minibatches`` optimiser
steps, once per step, with metrics named as TRL names them.

A recipe (``ppo.py``, ``rloo.py``) supplies two functions: ``prepare(rollout)`` (advantages and
whatever its loss needs, computed once per rollout) and ``loss(rollout, rows)`` (a minibatch's
loss and metrics). Per-token tensors are (B, T): B episodes (the k samples of a prompt
consecutive), T the longest response, with ``rollout.mask`` marking each response's tokens.

The reference is the starting policy: with LoRA the same model with its adapters disabled (no
second copy), else a frozen copy, loaded only when something reads it (β > 0, the adaptive
KL controller, or the monitor's KL). Its log-probs are computed once per rollout.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from training.config import RLConfig
from training.loop import (
    MetricWindow,
    Result,
    latest_checkpoint,
    load_weights,
    optimizer_and_schedule,
    optimizer_step,
    save_checkpoint,
)
from training.memory import retained
from training.rollout import Models, Rollout, collect, reward_scores, rollout_metrics, sample
from training.seeds import mix_seed, seed_everything

MONITOR_SEED_STREAM = 7_000_003  # the monitor's samples: one fixed seed for every measurement

# ---------------------------------------------------------------- the overoptimisation monitor


@torch.no_grad()
def monitor(models: Models, cfg: RLConfig, eval_prompts: list[list[dict]]) -> dict:
    """On the eval prompts (one sample each, the same seed every time): the mean proxy score
    (the reward model being optimised), the gold score (the gold reward model, when given) and
    the mean per-sequence KL to the reference (k1 on the samples: an unbiased estimate)."""
    prompts = eval_prompts[: cfg.monitor_max_prompts]
    if not prompts:
        return {}
    responses = sample(models, cfg, prompts, seed=mix_seed(cfg.seed, MONITOR_SEED_STREAM), k=1)
    r = collect(models, cfg, prompts, responses, k=1)
    out = {"monitor/proxy_score": r.scores.mean().item(), "monitor/response_length": float(sum(r.counts)) / r.n}
    if r.ref_logp is not None:
        out["monitor/kl"] = ((r.logp - r.ref_logp) * r.mask).sum(1).mean().item()
    if models.gold is not None:
        gold = reward_scores(models.gold, models.gold_tokenizer, models.tokenizer, r.prompts, r.prompt_ids, r.response_ids,
                             same=models.gold_same_vocab)
        out["monitor/gold_score"] = gold.mean().item()
    return out


def best_gold(metrics: list[dict]) -> dict | None:
    """The monitor row with the highest gold score (the earliest of equals), or None."""
    rows = [m for m in metrics if "monitor/gold_score" in m]
    return max(rows, key=lambda m: (m["monitor/gold_score"], -m["step"])) if rows else None


# ---------------------------------------------------------------- the loop


def rollout_steps(n_prompts: int, cfg: RLConfig) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(n_prompts * cfg.epochs / cfg.prompts_per_rollout))


def step_prompts(n_prompts: int, cfg: RLConfig, step: int) -> list[int]:
    """The prompt indices of rollout ``step``: consecutive slices of per-epoch permutations
    seeded by (seed, epoch), so any step's prompts are known without replaying the others."""
    orders: dict[int, list[int]] = {}  # a rollout spans at most a few epochs: each permutation drawn once
    out = []
    start = step * cfg.prompts_per_rollout
    for pos in range(start, start + cfg.prompts_per_rollout):
        epoch, i = divmod(pos, n_prompts)
        if epoch not in orders:
            orders[epoch] = list(range(n_prompts))
            random.Random(mix_seed(cfg.seed, epoch)).shuffle(orders[epoch])
        out.append(orders[epoch][i])
    return out


class _Trainable(torch.nn.Module):
    """Policy + value head as one parameter set for the optimiser."""

    def __init__(self, policy, value_head):
        super().__init__()
        self.policy = policy
        self.value_head = value_head


def rl_loop(
    *,
    cfg: RLConfig,
    models: Models,
    prompts: list[list[dict]],
    eval_prompts: list[list[dict]],
    prepare: Callable[[Rollout], None],
    loss: Callable[[Rollout, list[int]], tuple[torch.Tensor, dict]],
    out_dir: Path,
    algorithm: str,
    extra_state: Callable[[], dict] | None = None,
    load_extra_state: Callable[[dict], None] | None = None,
    after_rollout: Callable[[Rollout, dict], None] | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: bool = False,
    resume: bool = True,
) -> Result:
    """The RL loop (see the module docstring). A step = one rollout and its optimisation.
    Metrics rows are logged every ``log_every`` steps; the monitor runs every ``monitor_every``
    steps and at the end, and with a gold model the run's final output is the policy at the
    monitor's best gold score (the last one is kept in ``out_dir/last``)."""
    if not prompts:
        raise ValueError("no training prompts")
    seed_everything(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy, tokenizer = models.policy, models.tokenizer
    trainable = _Trainable(policy, models.value_head)
    steps = rollout_steps(len(prompts), cfg)
    updates_per_step = cfg.ppo_epochs * cfg.num_minibatches
    optimizer, scheduler = optimizer_and_schedule(trainable, cfg, steps * updates_per_step)
    if cfg.lr_schedule == "constant":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    params = [p for p in trainable.parameters() if p.requires_grad]
    extra = {"algorithm": algorithm, "prompts": len(prompts), "eval_prompts": len(eval_prompts)}
    metrics: list[dict] = []
    start = 0

    def write_extra(directory: Path) -> None:
        if models.value_head is not None:
            torch.save(models.value_head.state_dict(), directory / "value_head.pt")
        (directory / "rl_state.json").write_text(json.dumps(extra_state() if extra_state else {}))

    def save(step: int, *, final: bool = False, target: Path | None = None):
        return save_checkpoint(target or out_dir, step=step, model=policy, tokenizer=tokenizer, cfg=cfg, metrics=metrics,
                               optimizer=None if final else optimizer, scheduler=None if final else scheduler, extra=extra,
                               final=final, write_extra=write_extra)

    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        load_weights(policy, ckpt)
        if models.value_head is not None:
            models.value_head.load_state_dict(torch.load(ckpt / "value_head.pt"))
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        metrics = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines() if line]
        if load_extra_state:
            load_extra_state(json.loads((ckpt / "rl_state.json").read_text()))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"{algorithm} rollouts", unit="rollout")
    if on_progress is not None:
        on_progress(start, steps)

    def log(step: int, row: dict) -> None:
        metrics.append(row)
        if on_metrics:
            on_metrics(step, row)

    def measure(step: int) -> None:
        if not eval_prompts:
            return
        best_before = best_gold(metrics)
        row = {"step": step, **monitor(models, cfg, eval_prompts)}
        log(step, row)
        if "monitor/gold_score" in row and best_gold(metrics) is row:  # the new best candidate (weights only); one kept
            save(step, final=True, target=out_dir / f"monitor-{step:07d}")
            if best_before is not None:
                shutil.rmtree(out_dir / f"monitor-{best_before['step']:07d}", ignore_errors=True)

    if start == 0 and ckpt is None and eval_prompts and (models.gold is not None or cfg.monitor_every):
        measure(0)
    window = MetricWindow()
    status, step = "completed", start
    # freed memory kept through the steps: each step frees and re-allocates the same blocks (``training.memory``)
    with retained():
        for step_index in range(start, steps):
            if should_cancel is not None and should_cancel():
                status = "cancelled"
                if step != start or ckpt is None:
                    save(step)
                break
            # ---- rollout
            idx = step_prompts(len(prompts), cfg, step_index)
            batch = [prompts[i] for i in idx]
            responses, logps, entropies = sample(models, cfg, batch, seed=mix_seed(cfg.seed, step_index, 1), k=cfg.k, stats=True)
            rollout = collect(models, cfg, batch, responses, k=cfg.k, sampled=(logps, entropies))
            prepare(rollout)
            stats = rollout_metrics(rollout, getattr(cfg, "beta", 0.0))
            # ---- optimise: ppo_epochs passes, num_minibatches optimiser steps each
            policy.train()
            sums: dict[str, float] = {}
            n_updates = 0
            size = rollout.n // cfg.num_minibatches
            for epoch in range(cfg.ppo_epochs):
                order = list(range(rollout.n))
                random.Random(mix_seed(cfg.seed, step_index, 2, epoch)).shuffle(order)
                for m in range(cfg.num_minibatches):
                    rows = sorted(order[m * size:(m + 1) * size])
                    optimizer.zero_grad(set_to_none=True)
                    value, mb = loss(rollout, rows)
                    value.backward()
                    mb["grad_norm"], mb["learning_rate"] = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
                    for k, v in mb.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n_updates += 1
            stats.update({k: v / n_updates for k, v in sums.items()})
            if after_rollout is not None:
                after_rollout(rollout, stats)
            step = step_index + 1
            window.add(stats)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(score=f"{stats['objective/scores']:.3f}")
            if on_progress is not None:
                on_progress(step, steps)
            if step % cfg.log_every == 0 or step == steps:
                log(step, window.flush(step=step, episodes=step * cfg.prompts_per_rollout * cfg.k))
            if cfg.monitor_every and step % cfg.monitor_every == 0 and step != steps:
                measure(step)
            if cfg.save_every and step % cfg.save_every == 0 and step != steps:
                save(step)
    if bar is not None:
        bar.close()
    if status == "completed":
        measure(step)
        best = best_gold(metrics)
        if best is not None and best["step"] != step:
            save(step, final=True, target=out_dir / "last")
            chosen = out_dir / f"monitor-{best['step']:07d}"
            load_weights(policy, chosen)
            extra["chosen_step"] = best["step"]
        elif best is not None:
            extra["chosen_step"] = step
        extra["best_gold"] = best
        save(step, final=True)
    policy.eval()
    info = {k: extra[k] for k in ("chosen_step", "best_gold") if k in extra}
    return Result(status=status, step=step, metrics=metrics, output=out_dir if status == "completed" else None, info=info)
