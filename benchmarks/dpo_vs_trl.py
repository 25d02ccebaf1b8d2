"""Our DPO and reward trainers vs TRL's DPOTrainer / RewardTrainer, side by side in one run.

Same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), the same rows of
``../shared/data/hh-harmless-1800.jsonl`` (those that fit ``max_length`` whole, so neither side
truncates), batch size 4, max length 256, AdamW, lr, beta 0.1, the same number of steps. Each
configuration runs in its own process (clean peak RSS):

- ``ours``: ``training.dpo`` / ``training.reward`` with their defaults (activation checkpointing on);
- ``ours-fast``: the same with activation checkpointing off (faster, more memory);
- ``trl-default``: TRL as users run it (gradient checkpointing on, live reference model);
- ``trl-best``: TRL's best settings here (checkpointing off, ``precompute_ref_log_probs``).

Tokens are counted as TRL counts them, whatever either side computes: prompt + response of
every sequence, so the prompt twice per pair; both sides see every selected row once, so the
numerator is the same. Reported: median s/step, tokens/s (all tokens / all step time), peak
RSS (the process's max resident set, model loading included). Reference log-prob precompute
(ours and trl-best) is not in the step times. Loss parity: on one batch, both start at ln 2
and, after one identical AdamW update, their losses are compared (fed the same token ids).

Robust to a noisy machine (``benchmarks/harness.py``): it refuses to start while another job is
on the cores; the configurations run interleaved in ``--repeats`` rounds (default 3), the ratios
are paired within a round, and the RESULT gives each ratio's median over rounds with its
min-max (``_min`` / ``_max``); CPU seconds per step are printed beside wall seconds.

TRL is installed only for benchmarks: ``make bench-deps`` (``requirements-bench.txt``).

    python benchmarks/dpo_vs_trl.py [--quick] [--steps 5] [--repeats 3] [--force]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks import harness  # noqa: E402

BATCH, MAX_LEN, BETA = 4, 256, 0.1
SPEED_LR = 1e-6  # TRL's DPO default
PARITY_LR = 1e-5  # large enough that one update visibly moves the loss


def data_path() -> Path:
    for base in (os.environ.get("PREFLOOP_SHARED_DATA"), ROOT.parent / "shared" / "data", "/work/shared/data"):
        if base and (Path(base) / "hh-harmless-1800.jsonl").exists():
            return Path(base) / "hh-harmless-1800.jsonl"
    raise SystemExit("hh-harmless-1800.jsonl not found (set PREFLOOP_SHARED_DATA)")


def select_rows(n: int):
    """The first ``n`` HH rows whose prompt + response fit MAX_LEN on both sides, with their
    TRL text form (prompt rendered by the chat template, response + EOS) and token counts."""
    from training.data import read_preferences, tokenize_preferences
    from training.models import EMBEDDED, load_tokenizer

    tok = load_tokenizer(EMBEDDED)
    records, _ = read_preferences(data_path())
    picked, texts, counted = [], [], []
    for rec in records:
        (ex,), _ = tokenize_preferences(tok, [rec], max_length=10_000, max_prompt_length=9_999, min_response_tokens=1)
        p, c, r = len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)
        if p + max(c, r) > MAX_LEN:
            continue
        picked.append(rec)
        texts.append({
            "prompt": tok.apply_chat_template(rec.prompt, add_generation_prompt=True, tokenize=False),
            "chosen": rec.chosen + tok.eos_token,
            "rejected": rec.rejected + tok.eos_token,
        })
        counted.append(2 * p + c + r)
        if len(picked) == n:
            break
    return picked, texts, counted


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


# ---------------------------------------------------------------- one configuration per process


def run_ours(kind: str, steps: int, extra: list[str]) -> dict:
    from training import dpo, reward
    from training.config import config_from

    records, _, counted = select_rows(steps * BATCH)
    base = [f"max_steps={steps}", f"batch_size={BATCH}", f"max_length={MAX_LEN}", f"max_prompt_length={MAX_LEN - 1}",
            "min_response_tokens=1", "warmup_ratio=0", "log_every=1", "seed=0"]
    times = []
    clock = harness.StepClock()  # CPU time between consecutive step callbacks: steps 2..n

    def on_metrics(step, m):
        if "seconds_per_step" in m:
            times.append(m["seconds_per_step"])
            clock.tick()

    with tempfile.TemporaryDirectory() as out:
        if kind == "dpo":
            cfg = config_from(dpo.DPOConfig, None, base + [f"lr={SPEED_LR}", f"beta={BETA}"] + extra)
            result, _ = dpo.train(cfg, records, out, on_metrics=on_metrics)
        else:
            cfg = config_from(reward.RewardConfig, None, base + ["lr=1e-4"] + extra)
            result, _ = reward.train(cfg, records, out, on_metrics=on_metrics)
    return {"times": times, "cpu_times": clock.cpu, "tokens": sum(counted), "peak_rss_gb": peak_rss_gb(),
            "first_loss": result.metrics[0]["loss"]}


class _StepTimer:
    def __init__(self):
        self.times, self.cpu_times, self._t, self._c = [], [], 0.0, 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)
        self.cpu_times.append(time.process_time() - self._c)


def _trl_dataset(texts):
    from datasets import Dataset

    return Dataset.from_list(texts)


def run_trl(kind: str, steps: int, best: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    from training.models import EMBEDDED, load_tokenizer, model_path

    _, texts, counted = select_rows(steps * BATCH)
    tok = load_tokenizer(EMBEDDED)
    tok.padding_side = "right"
    timer = _StepTimer()
    cb = type("Timer", (TrainerCallback,), {"on_step_begin": timer.on_step_begin, "on_step_end": timer.on_step_end})()
    common = dict(per_device_train_batch_size=BATCH, max_steps=steps, bf16=False, use_cpu=True, logging_steps=1,
                  save_strategy="no", report_to=[], warmup_steps=0, seed=0, max_length=MAX_LEN,
                  gradient_checkpointing=not best, dataloader_num_workers=0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        if kind == "dpo":
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(output_dir=out, learning_rate=SPEED_LR, beta=BETA, precompute_ref_log_probs=best, **common)
            model = AutoModelForCausalLM.from_pretrained(model_path(EMBEDDED), dtype=torch.float32)
            trainer = DPOTrainer(model=model, args=args, train_dataset=_trl_dataset(texts), processing_class=tok, callbacks=[cb])
        else:
            from trl import RewardConfig, RewardTrainer

            args = RewardConfig(output_dir=out, learning_rate=1e-4, **common)
            model = AutoModelForSequenceClassification.from_pretrained(model_path(EMBEDDED), num_labels=1, dtype=torch.float32)
            model.config.pad_token_id = tok.pad_token_id
            trainer = RewardTrainer(model=model, args=args, train_dataset=_trl_dataset(texts), processing_class=tok, callbacks=[cb])
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # CPU of steps 2..n, as on our side.
    return {"times": timer.times, "cpu_times": timer.cpu_times[1:], "tokens": sum(counted), "peak_rss_gb": peak_rss_gb(), "first_loss": losses[0] if losses else None}


def run_parity() -> dict:
    """One batch: loss before and after one identical update, ours vs TRL (no checkpointing,
    live reference on TRL's side; the update is AdamW at PARITY_LR with clipping at 1.0)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from training import dpo
    from training.data import tokenize_preferences
    from training.models import EMBEDDED, load_model, load_tokenizer, model_path
    from training.packing import use_packed_attention

    records, texts, _ = select_rows(BATCH)
    tok = load_tokenizer(EMBEDDED)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        # TRL
        tok_r = load_tokenizer(EMBEDDED)
        tok_r.padding_side = "right"
        args = DPOConfig(output_dir=f"{tmp}/trl", per_device_train_batch_size=BATCH, max_steps=1, bf16=False, use_cpu=True,
                         save_strategy="no", report_to=[], warmup_steps=0, seed=0, max_length=MAX_LEN, learning_rate=PARITY_LR,
                         beta=BETA, gradient_checkpointing=False, lr_scheduler_type="constant")
        model = AutoModelForCausalLM.from_pretrained(model_path(EMBEDDED), dtype=torch.float32)
        trainer = DPOTrainer(model=model, args=args, train_dataset=_trl_dataset(texts), processing_class=tok_r)
        ours_ex, _ = tokenize_preferences(tok, records, max_length=MAX_LEN, max_prompt_length=MAX_LEN - 1, min_response_tokens=1)
        trl_rows = [trainer.train_dataset[i] for i in range(BATCH)]
        out["same_tokens"] = all(
            list(r["prompt_ids"]) == e.prompt_ids and list(r["chosen_ids"]) == e.chosen_ids and list(r["rejected_ids"]) == e.rejected_ids
            for r, e in zip(trl_rows, ours_ex)
        )
        batch = trainer.data_collator(trl_rows)
        with torch.no_grad():
            trainer.model.eval()
            out["trl_loss_0"] = trainer.compute_loss(trainer.model, batch).item()
        trainer.train()
        with torch.no_grad():
            trainer.model.eval()
            out["trl_loss_1"] = trainer.compute_loss(trainer.model, batch).item()
        del trainer, model
        # Ours, through the recipe itself
        cfg = dpo.DPOConfig(max_steps=1, batch_size=BATCH, max_length=MAX_LEN, max_prompt_length=MAX_LEN - 1, min_response_tokens=1,
                            warmup_ratio=0.0, lr=PARITY_LR, beta=BETA, log_every=1)
        result, _ = dpo.train(cfg, records, f"{tmp}/ours")
        out["ours_loss_0"] = result.metrics[0]["loss"]
        base, _, device = load_model(cfg)
        ref = dpo.reference_logps(base, ours_ex, cfg, device)
        trained, _, _ = load_model(dpo.DPOConfig(**{**cfg.as_dict(), "model": f"{tmp}/ours"}))
        use_packed_attention(trained)
        trained.eval()
        with torch.no_grad():
            w, l = dpo.policy_logps(trained, ours_ex, device=device, chunk=cfg.logit_chunk, average=False)
            loss, _ = dpo.pair_loss(cfg, w, l, ref[:, 0], ref[:, 1])
        out["ours_loss_1"] = loss.item()
    out["loss_abs_diff_0"] = abs(out["ours_loss_0"] - out["trl_loss_0"])
    out["loss_abs_diff_1"] = abs(out["ours_loss_1"] - out["trl_loss_1"])
    return out


# ---------------------------------------------------------------- driver


def _child(args: list[str]) -> dict:
    return harness.run_child(__file__, ["--child", *args], cwd=str(ROOT))


def summarise(name: str, r: dict) -> dict:
    times = r["times"]
    steady = times[1:] if len(times) > 2 else times  # the first step warms caches and allocators
    r["median_s_per_step"] = statistics.median(steady)
    r["median_cpu_s_per_step"] = statistics.median(r["cpu_times"]) if r.get("cpu_times") else math.nan
    r["tokens_per_s"] = r["tokens"] / sum(times)
    print(f"{name:<22} median {r['median_s_per_step']:6.2f} s/step (CPU {r['median_cpu_s_per_step']:6.2f} s)  "
          f"{r['tokens_per_s']:6.1f} tokens/s  peak RSS {r['peak_rss_gb']:.2f} GB  first loss {r['first_loss']:.4f}  "
          f"steps {[round(t, 1) for t in times]}", flush=True)
    return r


CONFIGS = {  # name -> (child spec without steps, takes --ours extras)
    "dpo ours": ("dpo:ours", True),
    "dpo ours-fast": ("dpo:ours-fast", True),
    "dpo trl-default": ("dpo:trl-default", False),
    "dpo trl-best": ("dpo:trl-best", False),
    "reward ours": ("reward:ours", True),
    "reward trl-default": ("reward:trl-default", False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps per configuration, one round")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--ours", nargs="*", default=[], metavar="key=value", help="extra config for our trainers")
    ap.add_argument("--skip-reward", action="store_true")
    harness.add_arguments(ap)
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "parity":
            res = run_parity()
        else:
            kind, side, steps = what.split(":")
            if side.startswith("ours"):
                res = run_ours(kind, int(steps), rest)
            else:
                res = run_trl(kind, int(steps), best=side == "trl-best")
        harness.child_report(res)
        return
    harness.require_trl()

    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    harness.require_idle(args)
    import torch

    print(f"SmolLM2-135M-Instruct fp32 on CPU ({torch.get_num_threads()} threads); batch {BATCH}, max length {MAX_LEN}, "
          f"beta {BETA}, {steps} steps per configuration, {repeats} interleaved round(s)", flush=True)
    names = [n for n in CONFIGS if not (args.skip_reward and n.startswith("reward"))]
    res: dict[str, list[dict]] = {n: [] for n in names}
    for r, name in harness.rounds(names, repeats):
        spec, takes_extra = CONFIGS[name]
        extra = (["activation_checkpointing=false"] if name.endswith("ours-fast") else []) + (args.ours if takes_extra else [])
        res[name].append(summarise(f"[{r}] {name}", _child([f"{spec}:{steps}", *extra])))
    parity = _child(["parity"])
    print("parity: " + json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in parity.items()}), flush=True)

    def per_round(a: str, b: str, key: str) -> list[float]:
        # Paired within a round: both ran minutes apart under the same conditions.
        return [x[key] / y[key] for x, y in zip(res[a], res[b])]

    print("\nmedians over rounds (min-max):")
    for name in names:
        print(f"  {name:<20} {harness.fmt_spread([x['tokens_per_s'] for x in res[name]], 1)} tokens/s, "
              f"{harness.fmt_spread([x['median_s_per_step'] for x in res[name]])} s/step, "
              f"CPU {harness.fmt_spread([x['median_cpu_s_per_step'] for x in res[name]])} s/step, "
              f"peak RSS {harness.fmt_spread([x['peak_rss_gb'] for x in res[name]])} GB")
    fields = {
        **harness.median_fields("tokens_per_s_ratio", per_round("dpo ours", "dpo trl-default", "tokens_per_s")),
        **harness.median_fields("peak_rss_ratio", per_round("dpo ours", "dpo trl-default", "peak_rss_gb")),
        **harness.median_fields("tokens_per_s_ratio_best", per_round("dpo ours", "dpo trl-best", "tokens_per_s")),
        "peak_rss_ratio_best": harness.spread(per_round("dpo ours", "dpo trl-best", "peak_rss_gb"))[0],
        "fast_tokens_per_s_ratio": harness.spread(per_round("dpo ours-fast", "dpo trl-default", "tokens_per_s"))[0],
        "fast_peak_rss_ratio": harness.spread(per_round("dpo ours-fast", "dpo trl-default", "peak_rss_gb"))[0],
    }
    if not args.skip_reward:
        fields.update(harness.median_fields("rm_tokens_per_s_ratio", per_round("reward ours", "reward trl-default", "tokens_per_s")))
        fields["rm_peak_rss_ratio"] = harness.spread(per_round("reward ours", "reward trl-default", "peak_rss_gb"))[0]
    fields["loss_abs_diff"] = max(parity["loss_abs_diff_0"], parity["loss_abs_diff_1"])
    fields["rounds"] = repeats
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
