"""Proof that the loop works (issue 10): ``simulate_loop`` on the embedded policy, on prompts of
real people, timed per round.

A fresh embedded database (SQLite under a temporary PREFLOOP_VAR, so nothing of yours is
touched) gets one campaign: the first human turn of the HH-harmless dialogues in
``shared/data`` (deduplicated, in file order; the first ``--train-prompts`` are the train split,
the next ``--eval-prompts`` the held-out eval split), 3 votes per pair, the embedded
SmolLM2-135M-Instruct as its policy. Then ``workers.simulate.simulate_rounds`` runs the loop as
``manage.py simulate_loop`` does: per round sample ``--pairs`` pairs from the current policy,
simulated annotators vote by the hidden rule with 20% noise through the same services as people,
DPO trains from the current policy on that round's preferences (on-policy), the new version is
evaluated against the *original* policy under the rule and promoted. Goals: win rate >= 0.70
after 3 rounds within 30 minutes; one turn (its preferences -> a promoted version) under 15.

    python benchmarks/loop_proof.py [--quick] [--rule concise] [--rounds 3] [--pairs 256]
        [--eval-prompts 64] [--max-new-tokens 64] [--config lr=3e-5 ...] [--force]

Last line: ``RESULT win_rate=... win_low=... kl=... minutes_total=... turn_minutes_max=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-harmless-1800.jsonl"
DEFAULT_CONFIG = ["lr=3e-5", "beta=0.1", "epochs=1", "batch_size=8", "max_length=320", "max_prompt_length=192",
                  "activation_checkpointing=false", "log_every=1"]


def first_human_turns(path: Path) -> list[str]:
    """The first human turn of each dialogue, stripped, deduplicated, in file order."""
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        text = json.loads(line)["chosen"]
        turn = text.split("\n\nHuman: ", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        if turn and len(turn) <= 500 and turn not in seen:
            seen.add(turn)
            out.append(turn)
    return out


def setup(args) -> int:
    """A fresh embedded database with the campaign; returns its id."""
    var = tempfile.mkdtemp(prefix="prefloop-loop-proof-")
    os.environ["PREFLOOP_VAR"] = var
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    import django

    django.setup()
    from django.core.management import call_command

    from annotation import services
    from annotation.models import Prompt

    call_command("migrate", verbosity=0)
    turns = first_human_turns(HH)
    need = args.train_prompts + args.eval_prompts
    if len(turns) < need:
        raise SystemExit(f"{HH} has {len(turns)} usable prompts, {need} needed")
    campaign = services.campaign_create(  # buffer 0: nothing samples behind the simulation's back
        slug="loop-proof", name="Loop proof", guideline="Pick the better answer.", votes_per_pair=3, buffer_size=0,
        sampling_params={"max_new_tokens": args.max_new_tokens, "temperature": 0.7, "top_p": 0.95})
    for i, turn in enumerate(turns[:need]):
        split = Prompt.Split.TRAIN if i < args.train_prompts else Prompt.Split.EVAL
        services.prompt_get_or_create(campaign=campaign, messages=[{"role": "user", "content": turn}], split=split)
    print(f"database {var}/prefloop.sqlite3; campaign loop-proof: {args.train_prompts} train + {args.eval_prompts} eval "
          f"prompts (HH-harmless first human turns), max_new_tokens {args.max_new_tokens}", flush=True)
    return campaign.pk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, 16 pairs, 8 eval prompts, 24 new tokens, 2 DPO steps")
    ap.add_argument("--rule", default="concise")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--train-prompts", type=int, default=256)
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help=f"DPO config overrides on top of {' '.join(DEFAULT_CONFIG)}")
    harness.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    config = DEFAULT_CONFIG + args.config
    if args.quick:
        args.rounds, args.pairs, args.train_prompts, args.eval_prompts, args.max_new_tokens = 1, 16, 16, 8, 24
        config += ["max_steps=2"]
    harness.require_idle(args)
    campaign_id = setup(args)

    from annotation.management.commands.train import typed_overrides
    from training.rules import rule_from_spec
    from workers.management.commands.simulate_loop import round_line
    from workers.simulate import simulate_rounds

    overrides = typed_overrides("dpo", config)
    print(f"rule {args.rule}, {args.rounds} rounds x {args.pairs} pairs, noise {args.noise}, DPO {overrides}", flush=True)
    t0 = time.monotonic()
    reports = []
    for report in simulate_rounds(campaign_id=campaign_id, rounds=args.rounds, pairs=args.pairs,
                                  rule=rule_from_spec(args.rule), noise=args.noise, kind="dpo", data_scope="on_policy",
                                  config=overrides, seed=args.seed, eval_prompts=args.eval_prompts, progress=False):
        reports.append(report)
        print(round_line(report), flush=True)
    total = (time.monotonic() - t0) / 60
    last = reports[-1].evaluation
    # A turn: its pairs sampled, voted, trained on, the new version evaluated and promoted.
    turns = [sum(r.minutes.values()) for r in reports]
    print(f"total {total:.1f} minutes; turns {', '.join(f'{t:.1f}' for t in turns)} minutes", flush=True)
    print(harness.result_line({
        "win_rate": round(last.win_rate, 3), "win_low": round(last.win_low, 3), "win_high": round(last.win_high, 3),
        "kl": round(last.kl, 3), "mean_length": round(last.mean_length, 1), "mean_length_original": round(last.mean_length_original, 1),
        "minutes_total": round(total, 1), "turn_minutes_max": round(max(turns), 1), "rounds": len(reports),
    }))


if __name__ == "__main__":
    main()
