"""AI judges against people on HH-harmless: how often a judge picks the response the human
labellers chose (the file's ``chosen``), how often its two orders agree, and pairs per second.

The pairs are the held-out 20% of ``hh-harmless-1800.jsonl`` split as ``benchmarks/hh_quality.py``
splits it (``training.data.split_rows``, seed 0), the dirty lines reported and left out. Which of
chosen / rejected is shown as A alternates with the row (even rows: chosen is A), so a judge that
always answers "A" scores 50%. Judges:

- ``local``: the embedded SmolLM2-135M-Instruct as ``training.judges.LocalJudge``, both orders
  combined (the default) and, from the same forward passes, the first order alone (what a
  single-order judge would say); order-consistency = the two orders' verdicts agree.
- ``reward`` (with ``--reward-model DIR``): a reward model trained on the other 80% (as
  ``hh_quality.py --only reward`` saves it): P(A ≻ B) = σ(r_A − r_B).

Agreement counts a tie verdict as half (ties in the file: none); "decisive" leaves ties out.

    python benchmarks/judges_hh.py [--quick] [--pairs 200] [--reward-model DIR] [--batch-size 8] [--force]

Last line: ``RESULT local_agreement=... local_single_order_agreement=... local_order_consistency=...
local_pairs_per_s=... [reward_agreement=... reward_pairs_per_s=...]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402
from benchmarks.dpo_vs_trl import data_path  # noqa: E402


def held_out_pairs(n: int):
    """(Pair, chosen_is_a) for the first ``n`` held-out HH rows."""
    from training.data import read_preferences, split_rows
    from training.judges import Pair

    records, report = read_preferences(data_path())  # as hh_quality.py reads and splits it
    _, test = split_rows(records, eval_fraction=0.2, seed=0)
    out = []
    for i, r in enumerate(test[:n]):
        chosen_is_a = i % 2 == 0
        a, b = (r.chosen, r.rejected) if chosen_is_a else (r.rejected, r.chosen)
        out.append((Pair(prompt=r.prompt, a=a, b=b), chosen_is_a))
    return out, report


def agreement(verdicts, truth) -> tuple[float, float]:
    """(ties-half agreement, agreement on decisive verdicts only) with the human choice."""
    score, decisive, right = 0.0, 0, 0
    for v, chosen_is_a in zip(verdicts, truth):
        want = "a" if chosen_is_a else "b"
        if v == "tie":
            score += 0.5
            continue
        decisive += 1
        right += v == want
        score += v == want
    return score / len(truth), (right / decisive if decisive else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 pairs")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reward-model", default=None, help="a reward model directory trained on the other 80%")
    harness.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    if args.quick:
        args.pairs = 16
    harness.require_idle(args)

    from training.judges import LocalJudge, RewardJudge, _unswap, combine, judge_messages
    from training.models import load_policy

    rows, report = held_out_pairs(args.pairs)
    pairs, truth = [p for p, _ in rows], [t for _, t in rows]
    print(f"{len(pairs)} held-out HH pairs ({len(report.errors)} dirty lines of the file left out)", flush=True)
    model, tokenizer = load_policy("smollm2-135m-instruct")
    judge = LocalJudge(model, tokenizer, batch_size=args.batch_size)
    t0 = time.perf_counter()
    chats = [judge_messages(p, judge.guideline) for p in pairs] + [judge_messages(p, judge.guideline, swap=True) for p in pairs]
    probs = judge.letter_probs(chats)
    seconds = time.perf_counter() - t0
    n = len(pairs)
    both = [combine(probs[i], _unswap(probs[n + i])) for i in range(n)]
    combined, consistent = [c[0] for c in both], [c[2] for c in both]
    single = [combine(probs[i])[0] for i in range(n)]
    first_a = sum(1 for c in single if c == "a") / n
    local, local_decisive = agreement(combined, truth)
    one, one_decisive = agreement(single, truth)
    fields = {
        "local_agreement": round(local, 3), "local_agreement_decisive": round(local_decisive, 3),
        "local_single_order_agreement": round(one, 3), "local_single_order_decisive": round(one_decisive, 3),
        "local_order_consistency": round(sum(consistent) / n, 3), "local_first_order_says_a": round(first_a, 3),
        "local_pairs_per_s": round(n / seconds, 2), "pairs": n,
    }
    print(f"local judge (both orders): agreement {local:.3f} (decisive {local_decisive:.3f}); single order {one:.3f}; "
          f"orders agree on {sum(consistent)}/{n}; first order answers A {first_a:.0%}; {n / seconds:.2f} pairs/s "
          f"({2 * n} judge prompts in {seconds:.1f} s)", flush=True)
    if args.reward_model:
        from training.reward import load_reward_model

        rm, rtok = load_reward_model(args.reward_model)
        t0 = time.perf_counter()
        verdicts = [v.choice for v in RewardJudge(rm, rtok).judge(pairs)]
        rs = time.perf_counter() - t0
        reward, _ = agreement(verdicts, truth)
        fields.update({"reward_agreement": round(reward, 3), "reward_pairs_per_s": round(n / rs, 2)})
        print(f"reward judge: agreement {reward:.3f}; {n / rs:.2f} pairs/s", flush=True)
    print(harness.result_line(fields))


if __name__ == "__main__":
    main()
