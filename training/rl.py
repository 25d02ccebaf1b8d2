"""Online RL against a reward model, the parts PPO, RLOO and GRPO share: the models (policy,
frozen reference, frozen reward model, an optional gold reward model), the rollout (the batched
sampler, then one no-grad forward for the old policy's per-token log-probs, entropy and values,
one for the reference, one for the scores), the overoptimisation monitor, checkpoints with
resume, and ``rl_loop``: rollout → advantages → ``ppo_epochs`` × ``num_minibatches`` optimiser
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

import contextlib
import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from training.config import RLConfig
from training.data import prompt_tokens
from training.logprobs import token_logps
from training.loop import (
    MetricWindow,
    Result,
    latest_checkpoint,
    load_weights,
    optimizer_and_schedule,
    optimizer_step,
    save_checkpoint,
)
from training.models import load_model, return_freed_memory_to_the_os, unwrap
from training.packing import Packed, hidden_states, pack_shared
from training.seeds import mix_seed, seed_everything

MONITOR_SEED_STREAM = 7_000_003  # the monitor's samples: one fixed seed for every measurement


# ---------------------------------------------------------------- models


@dataclass
class Models:
    policy: object
    tokenizer: object
    device: torch.device
    reward: object
    reward_tokenizer: object
    reference: object | None = None  # a frozen copy (full fine-tuning); None with LoRA (adapters disabled) or unused
    gold: object | None = None
    gold_tokenizer: object | None = None
    value_head: torch.nn.Linear | None = None
    has_reference: bool = False

    @contextlib.contextmanager
    def reference_mode(self):
        """The reference model to run inside the block: the frozen copy, or the policy itself
        with its LoRA adapters disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy


def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def prompts_truncated(tokenizer, prompts: list[list[dict]], max_prompt_length: int) -> int:
    """How many prompts are longer than ``max_prompt_length`` tokens (their start is cut)."""
    return sum(1 for p in prompts if len(prompt_tokens(tokenizer, p)) > max_prompt_length)


def load_models(cfg: RLConfig, *, value_head: bool = False, needs_reference: bool) -> Models:
    from training.reward import load_reward_model

    if not cfg.reward_model:
        raise ValueError("reward_model is required: the reward model the policy is optimised against (train one with kind=reward)")
    policy, tokenizer, device = load_model(cfg)
    disable_dropout(policy)  # old and new log-probs from the same function: the first ratio is exactly 1
    reward, reward_tok = load_reward_model(cfg.reward_model, device=str(device))
    reward.requires_grad_(False)
    models = Models(policy=policy, tokenizer=tokenizer, device=device, reward=reward, reward_tokenizer=reward_tok)
    if cfg.gold_model:
        models.gold, models.gold_tokenizer = load_reward_model(cfg.gold_model, device=str(device))
        models.gold.requires_grad_(False)
    if needs_reference:
        models.has_reference = True
        if not cfg.lora_r:
            ref, _, _ = load_model(replace(cfg, lora_r=0, activation_checkpointing=False))
            models.reference = ref.eval().requires_grad_(False)
    if value_head:
        hidden = unwrap(policy).config.hidden_size
        models.value_head = torch.nn.Linear(hidden, 1).to(device)
        torch.nn.init.zeros_(models.value_head.weight)
        torch.nn.init.zeros_(models.value_head.bias)
    return_freed_memory_to_the_os()
    return models


# ---------------------------------------------------------------- per-token forward passes


def to_padded(flat: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(N,) values laid out sequence after sequence -> (B, T), 0 past each sequence's end."""
    return pad_sequence(list(torch.split(flat, counts)), batch_first=True)


def response_mask(counts: list[int], device=None) -> torch.Tensor:
    T = max(counts) if counts else 0
    return (torch.arange(T, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]).float()


@torch.no_grad()
def token_stats(model, packed: Packed, *, chunk: int, entropy: bool = False, value_head=None, temperature: float = 1.0):
    """No grad: each response token's log-prob (N,) under the sampling distribution (logits /
    ``temperature``, as TRL takes them), the entropy at its position (N,, or None) and the
    value head's estimate there (N,, or None), from one forward."""
    h = hidden_states(model, packed)[packed.target_pos]
    head = unwrap(model).get_output_embeddings()
    lps, ents = [], []
    for a in range(0, h.shape[0], chunk):
        logits = head(h[a:a + chunk]).float() / temperature
        lse = torch.logsumexp(logits, dim=-1)
        lps.append(logits.gather(-1, packed.target_ids[a:a + chunk, None]).squeeze(-1) - lse)
        if entropy:
            p = torch.softmax(logits, dim=-1)
            ents.append(lse - (p * logits).sum(-1))
    lp = torch.cat(lps) if lps else h.new_zeros(0)
    values = value_head(h.float()).squeeze(-1) if value_head is not None else None
    return lp, (torch.cat(ents) if entropy and ents else None), values


def train_stats(model, packed: Packed, *, chunk: int, value_head=None, temperature: float = 1.0):
    """With grad: each response token's log-prob (N,) at ``temperature`` (chunked LM head; the
    head has no bias, so h / T gives logits / T) and value (N,) or None."""
    h = hidden_states(model, packed)[packed.target_pos]
    head = unwrap(model).get_output_embeddings()
    if head.bias is not None and temperature != 1.0:
        raise ValueError("temperature != 1 needs an LM head without bias")
    lp = token_logps(head, h / temperature if temperature != 1.0 else h, packed.target_ids, chunk)
    values = value_head(h.float()).squeeze(-1) if value_head is not None else None
    return lp, values


@torch.no_grad()
def reward_scores(model, model_tokenizer, policy_tokenizer, prompts: list[list[dict]], prompt_ids: list[list[int]],
                  responses: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """The reward model's score of each (prompt, response), read at the response's last token:
    the sampled token ids as they are when the reward model shares the policy's vocabulary,
    else the decoded text re-tokenised its way."""
    from training.reward import score, sequence_rewards

    same = (model_tokenizer.get_vocab() == policy_tokenizer.get_vocab()) if model_tokenizer is not policy_tokenizer else True
    device = next(model.parameters()).device
    if same:
        out = []
        for a in range(0, len(responses), batch_size):
            seqs = list(zip(prompt_ids[a:a + batch_size], responses[a:a + batch_size]))
            out.append(sequence_rewards(model, pack_shared(seqs).to(device)).float().cpu())
        return torch.cat(out)
    eos = policy_tokenizer.eos_token_id
    texts = [policy_tokenizer.decode([t for t in r if t != eos], skip_special_tokens=True).strip() for r in responses]
    return torch.tensor(score(model, model_tokenizer, list(zip(prompts, texts)), batch_size=batch_size))


# ---------------------------------------------------------------- rollout


@dataclass
class Rollout:
    prompts: list[list[dict]]  # per episode
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # the EOS included when produced
    counts: list[int]  # response tokens per episode
    mask: torch.Tensor  # (B, T)
    logp: torch.Tensor  # (B, T) old policy (the sampling policy, temperature 1)
    ref_logp: torch.Tensor | None  # (B, T)
    entropy: torch.Tensor  # (B, T)
    values: torch.Tensor | None  # (B, T) value head (PPO)
    scores: torch.Tensor  # (B,) reward model, minus the missing-EOS penalty
    eos: torch.Tensor  # (B,) bool
    extra: dict = field(default_factory=dict)  # what the recipe's prepare() adds (advantages, returns, ...)

    @property
    def n(self) -> int:
        return len(self.response_ids)

    def packed(self, rows: list[int], device) -> Packed:
        """The episodes ``rows`` packed, each prompt laid out once for its samples."""
        return pack_shared([(self.prompt_ids[i], self.response_ids[i]) for i in rows]).to(device)


def sample(models: Models, cfg: RLConfig, prompts: list[list[dict]], *, seed: int, k: int, stats: bool = False):
    """k responses per prompt (token ids, EOS included when produced), the k of a prompt
    consecutive; with ``stats``, (ids, per-token log-probs, per-token entropies) under the
    sampling distribution, from the decoding loop itself (no forward pass after it)."""
    from training.sampling import SamplingParams, generate

    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            batch_size=min(32, max(1, len(prompts) * k)))
    was_training = models.policy.training
    models.policy.eval()
    out = generate(models.policy, models.tokenizer, prompts, k=k, params=params, seed=seed, step_stats=stats)
    models.policy.train(was_training)
    flat = [s for per_prompt in out for s in per_prompt]
    if stats:
        return [s.token_ids for s in flat], [list(s.step_logps) for s in flat], [list(s.step_entropies) for s in flat]
    return [s.token_ids for s in flat]


def collect(models: Models, cfg: RLConfig, prompts: list[list[dict]], response_ids: list[list[int]], *, k: int,
            sampled: tuple[list[list[float]], list[list[float]]] | None = None) -> Rollout:
    """The rollout of ``response_ids`` (k per prompt, consecutive): old and reference per-token
    log-probs, entropy, values, scores. Separate from sampling so a given rollout can be replayed
    (tests, parity with TRL). ``sampled``: the sampler's own (log-probs, entropies) per token;
    without a value head they stand for the old policy's, and its forward pass is skipped."""
    episodes = [p for p in prompts for _ in range(k)]
    prompt_ids = [prompt_tokens(models.tokenizer, p)[-cfg.max_prompt_length:] for p in prompts]  # a long prompt keeps its end
    p_ids = [ids for ids in prompt_ids for _ in range(k)]
    counts = [len(r) for r in response_ids]
    if min(counts) < 1:
        raise ValueError("every response needs at least one token")
    device = models.device
    packed = pack_shared(list(zip(p_ids, response_ids))).to(device)
    was_training = models.policy.training
    models.policy.eval()
    if sampled is not None and models.value_head is None:
        lp, ent, values = torch.tensor([x for row in sampled[0] for x in row]), torch.tensor([x for row in sampled[1] for x in row]), None
    else:
        lp, ent, values = token_stats(models.policy, packed, chunk=cfg.logit_chunk, entropy=True, value_head=models.value_head,
                                      temperature=cfg.temperature)
    ref = None
    if models.has_reference:
        with models.reference_mode() as ref_model:
            ref, _, _ = token_stats(ref_model, packed, chunk=cfg.logit_chunk, temperature=cfg.temperature)
    models.policy.train(was_training)
    eos_id = models.tokenizer.eos_token_id
    eos = torch.tensor([bool(r) and r[-1] == eos_id for r in response_ids])
    scores = reward_scores(models.reward, models.reward_tokenizer, models.tokenizer, episodes, p_ids, response_ids)
    if cfg.missing_eos_penalty:
        scores = scores - cfg.missing_eos_penalty * (~eos).float()
    pad = lambda x: None if x is None else to_padded(x.float().cpu(), counts)  # noqa: E731
    return Rollout(prompts=episodes, prompt_ids=p_ids, response_ids=response_ids, counts=counts,
                   mask=response_mask(counts), logp=pad(lp), ref_logp=pad(ref), entropy=pad(ent), values=pad(values),
                   scores=scores.float(), eos=eos)


def rollout_metrics(r: Rollout, beta: float) -> dict:
    """TRL's rollout metrics: objective/kl (mean per-sequence KL to the reference, k1),
    objective/entropy (mean per-sequence entropy), objective/scores, objective/non_score_reward
    and objective/rlhf_reward (= scores − β·KL), response length, EOS share."""
    m = {"objective/scores": r.scores.mean().item(), "objective/entropy": (r.entropy * r.mask).sum(1).mean().item(),
         "val/num_eos_tokens": float(r.eos.sum()), "response_length": float(sum(r.counts)) / r.n}
    if r.ref_logp is not None:
        kl = ((r.logp - r.ref_logp) * r.mask).sum(1)
        m.update({"objective/kl": kl.mean().item(), "objective/non_score_reward": (-beta * kl).mean().item(),
                  "objective/rlhf_reward": (r.scores - beta * kl).mean().item()})
    return m


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
        gold = reward_scores(models.gold, models.gold_tokenizer, models.tokenizer, r.prompts, r.prompt_ids, r.response_ids)
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
    out = []
    start = step * cfg.prompts_per_rollout
    for pos in range(start, start + cfg.prompts_per_rollout):
        epoch, i = divmod(pos, n_prompts)
        order = list(range(n_prompts))
        random.Random(mix_seed(cfg.seed, epoch)).shuffle(order)
        out.append(order[i])
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
