"""Quality on real data: a Bradley-Terry reward model and DPO from SmolLM2-135M-Instruct on
``hh-harmless-1800.jsonl``, split deterministically 80/20 (``training.data.split_rows``, seed 0).

Reports the reward model's held-out accuracy at each evaluation (the best one is the number)
and DPO's implicit-reward accuracy (β·(Δ_chosen − Δ_rejected) > 0) on the same held-out 20%
at each evaluation (0 at step 0, where policy and reference are equal). Metrics go to ``--out`` as JSON lines too.

    python benchmarks/hh_quality.py [--quick] [--only reward|dpo] [--out DIR] [key=value ...]

Defaults (each well inside an hour of this 2-core CPU): reward model one epoch over the 1,436
training rows (180 steps of batch 8), lr 3e-5, max length 256 (prompt 192), held-out evaluation
every 45 steps; DPO one epoch over the same rows (``--dpo-rows N`` for fewer), batch 4, lr 5e-6,
beta 0.1, reference log-probs precomputed, evaluation every 90 steps. Activation checkpointing is
off (speed over memory here). ``--quick``: 32 training rows, 16 held out, a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.dpo_vs_trl import data_path  # noqa: E402


def cpu_minutes() -> float:
    """CPU time of this process so far (user + system, all threads), in minutes."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["reward", "dpo"])
    ap.add_argument("--out", default=str(ROOT / "var" / "hh_quality"))
    ap.add_argument("--dpo-rows", type=int, default=0, help="training rows for DPO (0: all of the 80%%)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="applied to both configs")
    args = ap.parse_args()

    from training import dpo, reward
    from training.config import config_from
    from training.data import read_preferences, split_rows

    records, report = read_preferences(data_path())
    train, held_out = split_rows(records, eval_fraction=0.2, seed=0)
    if args.quick:
        train, held_out = train[:32], held_out[:16]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(records)} readable rows ({len(report.errors)} unreadable): {len(train)} train, {len(held_out)} held out", flush=True)
    summary = {}

    def logger(name):
        f = (out / f"{name}_metrics.jsonl").open("w")

        def log(step, m):
            f.write(json.dumps(m) + "\n")
            f.flush()
            if any(k.startswith("eval_") for k in m):
                print(f"{name} step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith("eval_")), flush=True)

        return log

    if args.only in (None, "reward"):
        cfg = config_from(reward.RewardConfig, None, [
            "batch_size=8", "lr=3e-5", f"max_steps={4 if args.quick else 0}", "epochs=1", "max_length=256", "max_prompt_length=192",
            "warmup_ratio=0.05", f"eval_every={2 if args.quick else 45}", "log_every=5", "seed=0",
            "activation_checkpointing=false", *args.overrides])
        t0, c0 = time.perf_counter(), cpu_minutes()
        result, rep = reward.train(cfg, train, out / "reward", eval_records=held_out, on_metrics=logger("reward"), progress=True)
        evals = [m for m in result.metrics if "eval_accuracy" in m]
        best = max(evals, key=lambda m: m["eval_accuracy"])
        summary["reward"] = {"best_eval_accuracy": best["eval_accuracy"], "best_step": best["step"], "steps": result.step,
                             "evals": [(m["step"], round(m["eval_accuracy"], 4)) for m in evals],
                             "minutes": (time.perf_counter() - t0) / 60, "cpu_minutes": cpu_minutes() - c0, "data": rep.as_dict()}
        print("reward:", json.dumps(summary["reward"]), flush=True)

    if args.only in (None, "dpo"):
        rows = train[: (16 if args.quick else args.dpo_rows or None)]
        cfg = config_from(dpo.DPOConfig, None, [
            "batch_size=4", "lr=5e-6", "beta=0.1", "epochs=1", "max_length=256", "max_prompt_length=192", "warmup_ratio=0.1",
            f"eval_every={2 if args.quick else 90}", "log_every=5", "seed=0", "activation_checkpointing=false", *args.overrides])
        t0, c0 = time.perf_counter(), cpu_minutes()
        result, rep = dpo.train(cfg, rows, out / "dpo", eval_records=held_out, on_metrics=logger("dpo"), progress=True)
        evals = [m for m in result.metrics if "eval_rewards/accuracies" in m]
        summary["dpo"] = {"eval_implicit_reward_accuracy": evals[-1]["eval_rewards/accuracies"], "steps": result.step,
                          "train_rows": len(rows), "evals": [(m["step"], round(m["eval_rewards/accuracies"], 4)) for m in evals],
                          "minutes": (time.perf_counter() - t0) / 60, "cpu_minutes": cpu_minutes() - c0, "data": rep.as_dict()}
        print("dpo:", json.dumps(summary["dpo"]), flush=True)

    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fields = []
    if "reward" in summary:
        fields.append(f"rm_best_eval_accuracy={summary['reward']['best_eval_accuracy']:.4f}")
    if "dpo" in summary:
        fields.append(f"dpo_eval_implicit_reward_accuracy={summary['dpo']['eval_implicit_reward_accuracy']:.4f}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
