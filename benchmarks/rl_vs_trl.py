"""RLOO and GRPO, ours against TRL 1.16's RLOOTrainer / GRPOTrainer, side by side on this CPU.

Both sides: the embedded SmolLM2-135M-Instruct (fp32) as policy, the same reward model
(``--reward-model DIR``; default: the HH reward model of ``hh_quality.py --only reward`` when
it exists, else the embedded backbone with a seeded random score head), the same prompts
(single-turn HH prompts of at most 200 characters), k = 4 samples per prompt, 2 prompts per
step (8 episodes), at most 32 new tokens, temperature 1, lr 1e-6, RLOO β 0.05 (TRL's default,
so both load a reference), GRPO β 0 (TRL's default). TRL runs with its defaults otherwise
(gradient checkpointing on, as its RL configs default) and, as ``trl-fast``, without it.

Each configuration runs in its own process (clean peak RSS), interleaved over rounds
(``benchmarks/harness.py``). Reported: median seconds per step (steps 2..n), episodes/s,
peak RSS. Parity: one identical rollout (TRL generates it, its rewards are our reward model's
scores of the same token ids, given to both sides): advantages and loss before and after one
identical update (gradient clipped to norm 1, then SGD at lr 0.05), ours against TRL's
``_compute_loss``.

    python benchmarks/rl_vs_trl.py [--quick] [--steps 4] [--repeats 3] [--reward-model DIR] [--force]

Needs TRL: ``make bench-deps``. Last line: ``RESULT rloo_episodes_per_s_ratio=... ...``.
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

from benchmarks import harness  # noqa: E402
from benchmarks.dpo_vs_trl import data_path  # noqa: E402

K = 4
PROMPTS_PER_STEP = 2
MAX_NEW = 32
LR = 1e-6
PARITY_LR = 1e-5
# The identical update of the parity check: plain SGD after clipping to norm 1. Adam's first step
# moves every weight by ±lr whatever the size of its gradient, so two correct implementations
# whose gradients differ in the 7th digit (padded vs packed attention) end up far apart.
PARITY_SGD_LR = 0.05
BETA = {"rloo": 0.05, "grpo": 0.0}
DEFAULT_RM = ROOT / "var" / "hh_quality" / "reward"


def prompts(n: int) -> list[list[dict]]:
    """The first ``n`` single-turn HH prompts of at most 200 characters."""
    from training.data import read_preferences

    records, _ = read_preferences(data_path())
    out = []
    for r in records:
        if len(r.prompt) == 1 and len(r.prompt[0]["content"]) <= 200:
            out.append(r.prompt)
        if len(out) == n:
            break
    return out


def reward_model_dir(arg: str | None) -> str:
    """The reward model both sides use: the given directory, the HH one, or a seeded random head."""
    if arg:
        return arg
    if (DEFAULT_RM / "config.json").exists():
        return str(DEFAULT_RM)
    target = ROOT / "var" / "bench_random_rm"
    if not (target / "config.json").exists():
        import torch
        from transformers import AutoModelForSequenceClassification

        from training.models import EMBEDDED, load_tokenizer, model_path

        torch.manual_seed(0)
        tok = load_tokenizer(EMBEDDED)
        model = AutoModelForSequenceClassification.from_pretrained(model_path(EMBEDDED), num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(target)
        tok.save_pretrained(target)
    return str(target)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# ---------------------------------------------------------------- one configuration per process


def run_ours(algo: str, steps: int, rm: str) -> dict:
    from training import rloo
    from training.config import GRPOConfig, RLOOConfig

    cls = GRPOConfig if algo == "grpo" else RLOOConfig
    cfg = cls(reward_model=rm, k=K, prompts_per_rollout=PROMPTS_PER_STEP, max_new_tokens=MAX_NEW, max_steps=steps, lr=LR,
              beta=BETA[algo], log_every=1, seed=0)
    times, cpu, last = [], [], [time.process_time()]

    def on_metrics(step, m):
        if "seconds_per_step" in m:
            times.append(m["seconds_per_step"])
            now = time.process_time()
            cpu.append(now - last[0])
            last[0] = now

    with tempfile.TemporaryDirectory() as out:
        result, _ = rloo.train(cfg, prompts(steps * PROMPTS_PER_STEP), out, on_metrics=on_metrics)
    lengths = [m["response_length"] for m in result.metrics if "response_length" in m]
    return {"times": times, "cpu_times": cpu[1:], "episodes": steps * K * PROMPTS_PER_STEP, "peak_rss_gb": peak_rss_gb(),
            "mean_response_length": statistics.mean(lengths)}


def _trl_trainer(algo: str, steps: int, rm: str, out: str, *, checkpointing: bool, lr: float = LR, **extra):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from training.models import EMBEDDED, load_tokenizer, model_path

    tok = load_tokenizer(EMBEDDED)
    rm_tok = load_tokenizer(rm)
    reward = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1, dtype=torch.float32)
    reward.config.pad_token_id = rm_tok.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(model_path(EMBEDDED), dtype=torch.float32)
    common = dict(output_dir=out, per_device_train_batch_size=K * PROMPTS_PER_STEP, num_generations=K, max_completion_length=MAX_NEW,
                  max_steps=steps, learning_rate=lr, beta=BETA[algo], use_cpu=True, bf16=False, logging_steps=1, save_strategy="no",
                  report_to=[], seed=0, temperature=1.0, gradient_checkpointing=checkpointing, dataloader_num_workers=0)
    common.update(extra)
    data = Dataset.from_list([{"prompt": p} for p in prompts(steps * PROMPTS_PER_STEP)])
    if algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(**common), train_dataset=data, processing_class=tok,
                           reward_processing_classes=[rm_tok])
    from trl import RLOOConfig, RLOOTrainer

    return RLOOTrainer(model=model, reward_funcs=reward, args=RLOOConfig(**common), train_dataset=data, processing_class=tok,
                       reward_processing_classes=[rm_tok])


def run_trl(algo: str, steps: int, rm: str, checkpointing: bool) -> dict:
    from transformers import TrainerCallback

    from benchmarks.dpo_vs_trl import _StepTimer

    timer = _StepTimer()
    cb = type("Timer", (TrainerCallback,), {"on_step_begin": timer.on_step_begin, "on_step_end": timer.on_step_end})()
    with tempfile.TemporaryDirectory() as out:
        trainer = _trl_trainer(algo, steps, rm, out, checkpointing=checkpointing)
        trainer.add_callback(cb)
        trainer.train()
        lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"times": timer.times, "cpu_times": timer.cpu_times[1:], "episodes": steps * K * PROMPTS_PER_STEP,
            "peak_rss_gb": peak_rss_gb(), "mean_response_length": statistics.mean(lengths) if lengths else math.nan}


def run_parity(algo: str, rm: str) -> dict:
    """One identical rollout: TRL samples it; rewards = our reward model on its token ids, given
    to both; advantages and loss compared, then one identical manual update on each side
    (clip to norm 1, SGD) and the loss compared again."""
    import torch

    from training import rloo
    from training.config import GRPOConfig, RLOOConfig
    from training.data import prompt_tokens
    from training.rollout import collect, load_models, reward_scores

    cls = GRPOConfig if algo == "grpo" else RLOOConfig
    cfg = cls(reward_model=rm, k=K, prompts_per_rollout=PROMPTS_PER_STEP, max_new_tokens=MAX_NEW, lr=PARITY_LR,
              beta=BETA[algo] or 0.04, seed=0)  # GRPO with β > 0 here: the KL term is part of what is compared
    models = load_models(cfg, needs_reference=True)
    batch_prompts = prompts(PROMPTS_PER_STEP)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(algo, 1, rm, tmp, checkpointing=False, lr=PARITY_LR, **({"beta": cfg.beta} if algo == "grpo" else {}))
        given = {}

        def fixed_rewards(inputs, prompts_, completions, completion_ids_list):
            ids = [prompt_tokens(models.tokenizer, p) for p in prompts_]
            scores = reward_scores(models.reward, models.reward_tokenizer, models.tokenizer, prompts_, ids,
                                   [list(c) for c in completion_ids_list])
            given["scores"] = scores
            return scores[:, None].to(torch.float32)

        trainer._calculate_rewards = fixed_rewards
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we call _compute_loss directly
        trainer.model.train()
        inputs = [{"prompt": p} for p in batch_prompts for _ in range(K)]
        batch = trainer._generate_and_score_completions(inputs)
        if batch.get("old_per_token_logps") is None and "old_logps" not in batch:
            # GRPO with one iteration takes the ratio against the live log-probs (always 1); for the
            # loss after the update the ratio must be against the rollout's, as ours is.
            with torch.no_grad():
                ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
                mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
                batch["old_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
                    trainer.model, ids, mask, batch["completion_ids"].size(1))
        out["same_prompt_tokens"] = all(
            [t for t, m in zip(batch["prompt_ids"][i].tolist(), batch["prompt_mask"][i].tolist()) if m]
            == prompt_tokens(models.tokenizer, batch_prompts[i // K]) for i in range(len(inputs)))
        responses = [[t for t, m in zip(batch["completion_ids"][i].tolist(), batch["completion_mask"][i].tolist()) if m]
                     for i in range(len(inputs))]
        rollout = collect(models, cfg, batch_prompts, responses, k=K)
        rollout.scores = given["scores"].float()
        rloo.prepare(rollout, cfg)
        out["advantage_max_abs_diff"] = (rollout.extra["advantages"] - batch["advantages"].float().cpu()).abs().max().item()

        def trl_loss():
            return trainer._compute_loss(trainer.model, batch)

        def ours_loss():
            value, _ = rloo.minibatch_loss(models, rollout, list(range(rollout.n)), cfg)
            return value

        for name, model, fn in (("trl", trainer.model, trl_loss), ("ours", models.policy, ours_loss)):
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=PARITY_SGD_LR)
            model.train()
            loss = fn()
            out[f"{name}_loss_0"] = loss.item()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                out[f"{name}_loss_1"] = fn().item()
    out["loss_abs_diff_0"] = abs(out["ours_loss_0"] - out["trl_loss_0"])
    out["loss_abs_diff_1"] = abs(out["ours_loss_1"] - out["trl_loss_1"])
    return out


# ---------------------------------------------------------------- driver


CONFIGS = {
    "rloo ours": "rloo:ours", "rloo trl": "rloo:trl", "rloo trl-fast": "rloo:trl-fast",
    "grpo ours": "grpo:ours", "grpo trl": "grpo:trl", "grpo trl-fast": "grpo:trl-fast",
}


def summarise(name: str, r: dict) -> dict:
    times = r["times"]
    steady = times[1:] if len(times) > 2 else times
    r["median_s_per_step"] = statistics.median(steady)
    r["episodes_per_s"] = K * PROMPTS_PER_STEP / r["median_s_per_step"]
    print(f"{name:<18} median {r['median_s_per_step']:6.2f} s/step  {r['episodes_per_s']:5.2f} episodes/s  "
          f"peak RSS {r['peak_rss_gb']:.2f} GB  mean length {r['mean_response_length']:.1f}  steps {[round(t, 1) for t in times]}",
          flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps per configuration, one round, no trl-fast")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reward-model", default=None)
    ap.add_argument("--only", choices=["rloo", "grpo"], default=None)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    harness.add_arguments(ap)
    args = ap.parse_args()
    if args.child:
        what, rm, *rest = args.child
        if what.startswith("parity:"):
            res = run_parity(what.split(":")[1], rm)
        else:
            algo, side, steps = what.split(":")
            res = run_ours(algo, int(steps), rm) if side == "ours" else run_trl(algo, int(steps), rm, checkpointing=side == "trl")
        harness.child_report(res)
        return
    harness.require_trl()
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    harness.require_idle(args)
    rm = reward_model_dir(args.reward_model)
    algos = [args.only] if args.only else ["rloo", "grpo"]
    names = [n for n in CONFIGS if n.split()[0] in algos and not (args.quick and n.endswith("trl-fast"))]
    print(f"SmolLM2-135M-Instruct fp32 on CPU; reward model {rm}; k={K}, {PROMPTS_PER_STEP} prompts/step, max {MAX_NEW} new "
          f"tokens, {steps} steps per configuration, {repeats} interleaved round(s)", flush=True)
    res: dict[str, list[dict]] = {n: [] for n in names}
    child = lambda a: harness.run_child(__file__, ["--child", *a], cwd=str(ROOT))  # noqa: E731
    for r, name in harness.rounds(names, repeats):
        algo, side = CONFIGS[name].split(":")
        res[name].append(summarise(f"[{r}] {name}", child([f"{algo}:{side}:{steps}", rm])))
    fields = {}
    for algo in algos:
        parity = child([f"parity:{algo}", rm])
        print(f"{algo} parity: " + json.dumps({k: (round(v, 7) if isinstance(v, float) else v) for k, v in parity.items()}),
              flush=True)

        def per_round(a: str, b: str, key: str, invert: bool = False) -> list[float]:
            return [(y[key] / x[key]) if invert else (x[key] / y[key]) for x, y in zip(res[a], res[b])]

        fields.update(harness.median_fields(f"{algo}_episodes_per_s_ratio", per_round(f"{algo} ours", f"{algo} trl", "episodes_per_s")))
        fields.update(harness.median_fields(f"{algo}_peak_rss_ratio", per_round(f"{algo} ours", f"{algo} trl", "peak_rss_gb")))
        if f"{algo} trl-fast" in res:
            fields[f"{algo}_episodes_per_s_ratio_fast"] = harness.spread(
                per_round(f"{algo} ours", f"{algo} trl-fast", "episodes_per_s"))[0]
        fields[f"{algo}_loss_abs_diff"] = max(parity["loss_abs_diff_0"], parity["loss_abs_diff_1"])
        fields[f"{algo}_advantage_abs_diff"] = parity["advantage_max_abs_diff"]
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
