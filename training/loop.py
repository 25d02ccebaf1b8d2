"""The step loop every recipe shares: held-out split and tokenisation of the rows, the
optimiser and schedule, the seeded micro-batch order, checkpoints (save, find, resume) and
``train_loop`` (accumulation, clipping, metrics, evaluation, cancel, resume).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import split_rows
from training.models import return_freed_memory_to_the_os, unwrap
from training.seeds import mix_seed

# ---------------------------------------------------------------- rows


def prepare_rows(cfg: TrainConfig, rows: list, eval_rows: list | None, tokenizer, tokenize: Callable):
    """(training rows, training examples, held-out examples, report): held-out rows split off
    when asked (deterministic by seed), both sides tokenised with the config's limits. No
    training example left is an error that says why, not an empty run."""
    if eval_rows is None and cfg.eval_fraction:
        rows, eval_rows = split_rows(rows, eval_fraction=cfg.eval_fraction, seed=cfg.seed)
    kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, min_response_tokens=cfg.min_response_tokens)
    train_ex, report = tokenize(tokenizer, rows, **kw)
    eval_ex, _ = tokenize(tokenizer, eval_rows or [], **kw)
    if not train_ex:
        raise ValueError(f"no training rows left after tokenisation: {report.as_dict()}")
    return rows, train_ex, eval_ex, report


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
    random.Random(mix_seed(cfg.seed, epoch)).shuffle(order)
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
                    optimizer=None, scheduler=None, extra: dict | None = None, final: bool = False,
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """``out_dir/checkpoint-<step>`` (or ``out_dir`` itself when ``final``): safetensors
    weights, config, tokenizer, metrics, and the optimiser / schedule / RNG state to resume;
    ``write_extra(dir)`` adds a recipe's own files (e.g. a value head) before it is committed."""
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
    if write_extra is not None:
        write_extra(tmp)
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


def optimizer_step(params, optimizer, scheduler, max_grad_norm: float) -> tuple[float, float]:
    """Clip the gradient (``max_grad_norm`` 0: no clipping), step the optimiser and the schedule;
    returns (the gradient norm before clipping, the learning rate this step used)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # the gradients are not kept until the next backward (RL samples in between)
    scheduler.step()
    return float(grad_norm), lr


class MetricWindow:
    """The steps since the last logged metrics row: ``flush`` averages each metric over the
    steps that reported it and adds the seconds per step."""

    def __init__(self):
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def add(self, stats: dict) -> None:
        self.rows.append(stats)

    def flush(self, **extra) -> dict:
        keys = dict.fromkeys(k for r in self.rows for k in r)
        row = {k: sum(r[k] for r in self.rows if k in r) / sum(1 for r in self.rows if k in r) for k in keys}
        row.update(extra, seconds_per_step=(time.perf_counter() - self.started) / len(self.rows))
        self.rows, self.started = [], time.perf_counter()
        return row


@dataclass
class Result:
    status: str  # "completed" or "cancelled"
    step: int
    metrics: list[dict] = field(default_factory=list)
    output: Path | None = None
    info: dict = field(default_factory=dict)  # what a recipe says about its output (e.g. the monitor's chosen step)


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
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = True,
    progress: bool = False,
) -> Result:
    """The optimiser loop every recipe shares. ``batch_loss(row_indices)`` returns the mean loss
    of a micro-batch and its metrics (floats). Micro-batch losses are scaled by 1/grad_accum so
    the step's gradient is the mean over its micro-batches. With ``max_tokens_per_forward``, a
    micro-batch is cut into forwards of at most that many packed tokens (``row_tokens``), each
    weighted by its share of the micro-batch (``row_weight``: rows by default, response tokens
    for SFT), so the gradient is the same as one forward's. ``on_progress(step, total_steps)``
    is called once before the first step (``step`` > 0 when resumed) and after every step."""
    return_freed_memory_to_the_os()  # a no-op after load_model; here for a model built elsewhere
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
    if on_progress is not None:
        on_progress(start, steps)
    model.train()
    window = MetricWindow()
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
        grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
        step = step_index + 1
        step_stats.update(grad_norm=grad_norm, learning_rate=lr)
        window.add(step_stats)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_stats['loss']:.4f}")
        if on_progress is not None:
            on_progress(step, steps)
        if step % cfg.log_every == 0 or step == steps:
            row = window.flush(step=step, epoch=step * cfg.grad_accum * cfg.batch_size / max(1, n_rows))
            metrics.append(row)
            if on_metrics:
                on_metrics(step, row)
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
