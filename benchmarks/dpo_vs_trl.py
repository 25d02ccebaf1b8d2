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

TRL is installed only for this benchmark: ``pip install --no-deps trl==1.16.0``.

    python benchmarks/dpo_vs_trl.py [--quick] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    from training.common import config_from

    records, _, counted = select_rows(steps * BATCH)
    base = [f"max_steps={steps}", f"batch_size={BATCH}", f"max_length={MAX_LEN}", f"max_prompt_length={MAX_LEN - 1}",
            "min_response_tokens=1", "warmup_ratio=0", "log_every=1", "seed=0"]
    times = []
    with tempfile.TemporaryDirectory() as out:
        if kind == "dpo":
            cfg = config_from(dpo.DPOConfig, None, base + [f"lr={SPEED_LR}", f"beta={BETA}"] + extra)
            result, _ = dpo.train(cfg, records, out, on_metrics=lambda s, m: times.append(m["seconds_per_step"]) if "seconds_per_step" in m else None)
        else:
            cfg = config_from(reward.RewardConfig, None, base + ["lr=1e-4"] + extra)
            result, _ = reward.train(cfg, records, out, on_metrics=lambda s, m: times.append(m["seconds_per_step"]) if "seconds_per_step" in m else None)
    return {"times": times, "tokens": sum(counted), "peak_rss_gb": peak_rss_gb(), "first_loss": result.metrics[0]["loss"]}


class _StepTimer:
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


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
    return {"times": timer.times, "tokens": sum(counted), "peak_rss_gb": peak_rss_gb(), "first_loss": losses[0] if losses else None}


def run_parity() -> dict:
    """One batch: loss before and after one identical update, ours vs TRL (no checkpointing,
    live reference on TRL's side; the update is AdamW at PARITY_LR with clipping at 1.0)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from training import dpo
    from training.common import load_model, use_packed_attention
    from training.data import tokenize_preferences
    from training.models import EMBEDDED, load_tokenizer, model_path

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
    proc = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[6:])


def summarise(name: str, r: dict) -> dict:
    times = r["times"]
    steady = times[1:] if len(times) > 2 else times  # the first step warms caches and allocators
    r["median_s_per_step"] = statistics.median(steady)
    r["tokens_per_s"] = r["tokens"] / sum(times)
    print(f"{name:<18} median {r['median_s_per_step']:6.2f} s/step  {r['tokens_per_s']:6.1f} tokens/s  "
          f"peak RSS {r['peak_rss_gb']:.2f} GB  first loss {r['first_loss']:.4f}  steps {[round(t, 1) for t in times]}", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps per configuration")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--ours", nargs="*", default=[], metavar="key=value", help="extra config for our trainers")
    ap.add_argument("--skip-reward", action="store_true")
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
        print("BENCH " + json.dumps(res))
        return

    steps = 3 if args.quick else args.steps
    import torch

    print(f"SmolLM2-135M-Instruct fp32 on CPU ({torch.get_num_threads()} threads); batch {BATCH}, max length {MAX_LEN}, "
          f"beta {BETA}, {steps} steps per configuration", flush=True)
    res = {}
    for name in ("ours", "ours-fast", "trl-default", "trl-best"):
        extra = (["activation_checkpointing=false"] if name == "ours-fast" else []) + (args.ours if name.startswith("ours") else [])
        res[name] = summarise(f"dpo {name}", _child([f"dpo:{name}:{steps}", *extra]))
    if not args.skip_reward:
        for name in ("ours", "trl-default"):
            res[f"rm-{name}"] = summarise(f"reward {name}", _child([f"reward:{name}:{steps}", *(args.ours if name == "ours" else [])]))
    parity = _child(["parity"])
    print("parity: " + json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in parity.items()}), flush=True)
    o, d, b = res["ours"], res["trl-default"], res["trl-best"]
    fields = {
        "tokens_per_s_ratio": o["tokens_per_s"] / d["tokens_per_s"],
        "peak_rss_ratio": o["peak_rss_gb"] / d["peak_rss_gb"],
        "tokens_per_s_ratio_best": o["tokens_per_s"] / b["tokens_per_s"],
        "peak_rss_ratio_best": o["peak_rss_gb"] / b["peak_rss_gb"],
        "loss_abs_diff": max(parity["loss_abs_diff_0"], parity["loss_abs_diff_1"]),
        "fast_tokens_per_s_ratio": res["ours-fast"]["tokens_per_s"] / d["tokens_per_s"],
        "fast_peak_rss_ratio": res["ours-fast"]["peak_rss_gb"] / d["peak_rss_gb"],
    }
    if not args.skip_reward:
        fields["rm_tokens_per_s_ratio"] = res["rm-ours"]["tokens_per_s"] / res["rm-trl-default"]["tokens_per_s"]
        fields["rm_peak_rss_ratio"] = res["rm-ours"]["peak_rss_gb"] / res["rm-trl-default"]["peak_rss_gb"]
    print("RESULT " + " ".join(f"{k}={v:.3g}" if not math.isnan(v) else f"{k}=nan" for k, v in fields.items()))


if __name__ == "__main__":
    main()
