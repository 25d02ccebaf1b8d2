"""PPO on this CPU with the embedded model, against a reward model trained on simulated-rule
preferences, watched by a gold reward model trained on a disjoint, cleaner half: does PPO raise
the gold score on held-out prompts, and does the smallest β overoptimise (proxy up, gold down,
Gao et al. 2022)? Draws the reward-KL frontier of three β values as an SVG.

1. Single-turn HH prompts (≤ 200 characters), split four ways: proxy-RM pairs, gold-RM pairs,
   PPO training prompts, held-out eval prompts (the monitor's).
2. Two samples per RM prompt from SmolLM2-135M-Instruct; labels by the ``concise`` rule
   (``training.rules``): the proxy's with 30% noise (a coin flip instead of the rule), the
   gold's without noise and on twice as many pairs; ties left out.
3. A proxy and a gold reward model (``training.reward``) from the embedded model.
4. PPO (``training.ppo``) for each β, the monitor every ``--monitor-every`` rollouts on the
   eval prompts (proxy score, gold score, KL to the reference); the chosen checkpoint is the
   monitor's best gold score.

    python benchmarks/rl_proof.py [--quick] [--steps 30] [--betas 0.002,0.02,0.1] [--out var/rl_proof]

Last line: ``RESULT gold_gain_best=... proxy_gain_smallest_beta=... gold_drop_smallest_beta=...``;
the frontier in ``benchmarks/rl_frontier.svg`` (``--quick``: in OUT) and the curves in ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402
from benchmarks.rl_vs_trl import prompts as short_prompts  # noqa: E402

COLORS = ["#2856d8", "#067647", "#b54708", "#7a5af8"]


def rule_pairs(model, tokenizer, prompts, *, noise: float, seed: int, max_new: int):
    """PreferenceRecords on two samples per prompt, labelled by the concise rule (noisy)."""
    from training.formats import PreferenceRecord
    from training.rules import concise
    from training.sampling import SamplingParams, generate
    from training.simulate import noisy_choice

    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new, batch_size=32)
    rng = random.Random(seed)
    out = []
    for p, samples in zip(prompts, generate(model, tokenizer, prompts, k=2, params=params, seed=seed, progress=True)):
        a, b = samples[0].text, samples[1].text
        if not a or not b or a == b:
            continue
        choice = noisy_choice(concise, p, a, b, rng=rng, noise=noise)
        if choice == "tie":
            continue
        chosen, rejected = (a, b) if choice == "a" else (b, a)
        out.append(PreferenceRecord(p, chosen, rejected))
    return out


def train_rm(records, out: Path, *, epochs: float) -> str:
    from training import reward
    from training.config import RewardConfig

    if (out / "config.json").exists():
        return str(out)
    cfg = RewardConfig(batch_size=8, lr=3e-5, epochs=epochs, max_length=256, max_prompt_length=192, warmup_ratio=0.05,
                       log_every=5, seed=0, activation_checkpointing=False)
    reward.train(cfg, records, out, progress=True)
    return str(out)


def frontier_svg(runs: dict, path: Path, width: int = 640, height: int = 360) -> None:
    """Proxy (dashed) and gold (solid) score against KL per β, each run's chosen point circled."""
    pts = [(m["monitor/kl"], m[k]) for rows in runs.values() for m in rows for k in ("monitor/proxy_score", "monitor/gold_score")]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    L, R, T, B = 60, width - 150, 20, height - 40
    sx = lambda v: L + (v - x0) / ((x1 - x0) or 1) * (R - L)  # noqa: E731
    sy = lambda v: B - (v - y0) / ((y1 - y0) or 1) * (B - T)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{L}" y1="{B}" x2="{R}" y2="{B}" stroke="#98a2b3"/><line x1="{L}" y1="{T}" x2="{L}" y2="{B}" stroke="#98a2b3"/>',
             f'<text x="{(L + R) / 2}" y="{height - 8}" text-anchor="middle">KL(policy ‖ reference), nats per response</text>',
             f'<text x="14" y="{(T + B) / 2}" transform="rotate(-90 14 {(T + B) / 2})" text-anchor="middle">reward model score</text>',
             f'<text x="{L}" y="{B + 16}" text-anchor="middle">{x0:.2f}</text><text x="{R}" y="{B + 16}" text-anchor="middle">{x1:.2f}</text>',
             f'<text x="{L - 6}" y="{B}" text-anchor="end">{y0:.2f}</text><text x="{L - 6}" y="{T + 8}" text-anchor="end">{y1:.2f}</text>']
    for i, (beta, rows) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        for key, dash in (("monitor/proxy_score", ' stroke-dasharray="5 4"'), ("monitor/gold_score", "")):
            line = " ".join(f"{sx(m['monitor/kl']):.1f},{sy(m[key]):.1f}" for m in rows)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        best = max(rows, key=lambda m: (m["monitor/gold_score"], -m["step"]))
        parts.append(f'<circle cx="{sx(best["monitor/kl"]):.1f}" cy="{sy(best["monitor/gold_score"]):.1f}" r="6" fill="none" '
                     f'stroke="#d92d20" stroke-width="2"/>')
        y = T + 16 * i
        parts.append(f'<line x1="{R + 12}" y1="{y}" x2="{R + 32}" y2="{y}" stroke="{color}" stroke-width="2"/>'
                     f'<text x="{R + 38}" y="{y + 4}">β = {beta}</text>')
    y = T + 16 * len(runs) + 10
    parts.append(f'<text x="{R + 12}" y="{y}">solid: gold</text><text x="{R + 12}" y="{y + 16}">dashed: proxy</text>'
                 f'<circle cx="{R + 18}" cy="{y + 30}" r="5" fill="none" stroke="#d92d20" stroke-width="2"/>'
                 f'<text x="{R + 28}" y="{y + 34}">chosen</text></svg>')
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the whole pipeline")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--betas", default="0.002,0.02,0.1")
    ap.add_argument("--monitor-every", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "var" / "rl_proof"))
    harness.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    harness.require_idle(args)
    from training import ppo
    from training.config import PPOConfig
    from training.models import EMBEDDED, load_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_proxy, n_gold, n_train, n_eval, max_new = (16, 24, 8, 4, 16) if args.quick else (128, 256, 48, 16, 48)
    steps = 2 if args.quick else args.steps
    pool = short_prompts(n_proxy + n_gold + n_train + n_eval)
    proxy_p, gold_p = pool[:n_proxy], pool[n_proxy:n_proxy + n_gold]
    train_p, eval_p = pool[n_proxy + n_gold:n_proxy + n_gold + n_train], pool[n_proxy + n_gold + n_train:]
    t0 = time.perf_counter()
    model, tok = load_policy(EMBEDDED)
    proxy_pairs = rule_pairs(model, tok, proxy_p, noise=0.3, seed=1, max_new=max_new)
    gold_pairs = rule_pairs(model, tok, gold_p, noise=0.0, seed=2, max_new=max_new)
    del model
    print(f"pairs: proxy {len(proxy_pairs)}, gold {len(gold_pairs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    proxy_rm = train_rm(proxy_pairs, out / "proxy_rm", epochs=2)
    gold_rm = train_rm(gold_pairs, out / "gold_rm", epochs=2)
    runs, summary = {}, {"pairs": {"proxy": len(proxy_pairs), "gold": len(gold_pairs)}, "runs": {}}
    for beta in [float(b) for b in args.betas.split(",")]:
        cfg = PPOConfig(reward_model=proxy_rm, gold_model=gold_rm, beta=beta, prompts_per_rollout=8, max_new_tokens=max_new,
                        max_steps=steps, lr=1e-5, monitor_every=args.monitor_every if not args.quick else 1,
                        monitor_max_prompts=n_eval, log_every=1, seed=0)
        t1 = time.perf_counter()
        result, _ = ppo.train(cfg, train_p, out / f"ppo-beta-{beta}", eval_records=eval_p, progress=True)
        rows = [m for m in result.metrics if "monitor/gold_score" in m]
        runs[beta] = rows
        summary["runs"][beta] = {"monitor": rows, "chosen_step": result.info.get("chosen_step"),
                                 "minutes": (time.perf_counter() - t1) / 60}
        print(f"β={beta}: " + ", ".join(f"step {m['step']} KL {m['monitor/kl']:.2f} proxy {m['monitor/proxy_score']:.3f} "
                                       f"gold {m['monitor/gold_score']:.3f}" for m in rows), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    frontier_svg(runs, out / "rl_frontier.svg" if args.quick else ROOT / "benchmarks" / "rl_frontier.svg")
    smallest = runs[min(runs)]
    gains = {b: max(m["monitor/gold_score"] for m in rows) - rows[0]["monitor/gold_score"] for b, rows in runs.items()}
    fields = {
        "gold_gain_best": max(gains.values()),
        "gold_gain_final_best": max(rows[-1]["monitor/gold_score"] - rows[0]["monitor/gold_score"] for rows in runs.values()),
        "proxy_gain_smallest_beta": smallest[-1]["monitor/proxy_score"] - smallest[0]["monitor/proxy_score"],
        "gold_drop_smallest_beta": max(m["monitor/gold_score"] for m in smallest) - smallest[-1]["monitor/gold_score"],
        "kl_smallest_beta": smallest[-1]["monitor/kl"],
        "minutes": (time.perf_counter() - t0) / 60,
    }
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
