"""Standalone CLI.

    python -m training sample --model SPEC --prompts FILE.jsonl --k 2 --out OUT.jsonl
    python -m training KIND --data FILE.jsonl --model SPEC --out DIR [--config FILE.toml] [key=value ...]
    python -m training {ppo,rloo,grpo} --data PROMPTS.jsonl [--eval-data PROMPTS.jsonl] --out DIR reward_model=DIR [gold_model=DIR] [key=value ...]

KIND is a recipe of ``training/recipes.py`` (sft, reward, dpo, ppo, rloo, grpo).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.config import config_from
from training.formats import json_rows, numbered_lines, prompt_from_row
from training.models import EMBEDDED
from training.recipes import RECIPES, recipe_for


def _read_prompts(path: Path) -> list[list[dict]]:
    good, bad = json_rows(numbered_lines(path.read_bytes()),
                          lambda row: prompt_from_row({k: v for k, v in row.items() if k in ("prompt", "messages")}))
    if bad:
        raise SystemExit("\n".join(f"{path}:{number}: {reason}" for number, reason in bad))
    return [messages for _, messages in good]


def cmd_sample(args) -> None:
    from training.models import load_policy
    from training.sampling import SamplingParams, generate

    prompts = _read_prompts(Path(args.prompts))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    model, tokenizer = load_policy(args.model, device=args.device)
    results = generate(model, tokenizer, prompts, k=args.k, params=params, seed=args.seed, progress=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for messages, samples in zip(prompts, results):
            f.write(json.dumps({
                "messages": messages,
                "model": args.model,
                "params": params.as_dict(),
                "responses": [
                    {"text": s.text, "token_count": s.token_count, "finish_reason": s.finish_reason,
                     "logprob_sum": s.logprob_sum, "seed": s.seed}
                    for s in samples
                ],
            }, ensure_ascii=False) + "\n")
    print(f"{len(prompts)} prompt(s) x {args.k} sample(s) written to {args.out}", file=sys.stderr)


def cmd_train(args) -> None:
    recipe = recipe_for(args.command)
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    cfg = config_from(recipe.config_cls, args.config, overrides)
    rows, report = recipe.read(args.data)
    for error in report.errors:
        print(f"{args.data}: {error} (skipped)", file=sys.stderr)
    if not rows:
        raise ValueError(f"no usable rows in {args.data}")

    def log(step, m):
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items() if k != "step"}
        print(json.dumps({"step": step, **shown}), file=sys.stderr)

    kw = {}
    if getattr(args, "eval_data", None):
        kw["eval_records"], eval_report = recipe.read(args.eval_data)
        for error in eval_report.errors:
            print(f"{args.eval_data}: {error} (skipped)", file=sys.stderr)
    result, data_report = recipe.train(cfg, rows, args.out, on_metrics=log, progress=True, **kw)
    d = data_report.as_dict()
    print(f"{args.command}: {result.status} after {result.step} step(s); rows kept {d['kept']}/{d['rows']}, "
          f"truncated {d['truncated']}, dropped as too long {d['dropped_too_long']}; model in {args.out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Prefloop training library CLI")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="sample k responses per prompt")
    s.add_argument("--model", default=EMBEDDED, help=f"HF id, local directory or {EMBEDDED!r}")
    s.add_argument("--prompts", required=True, help="JSONL with 'prompt' or 'messages' per line")
    s.add_argument("--k", type=int, default=2)
    s.add_argument("--out", required=True)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_sample)
    for recipe in RECIPES.values():
        t = sub.add_parser(recipe.kind, help=recipe.help, description=f"{recipe.help}; key=value overrides any config field (unknown keys are errors)")
        if recipe.online:
            t.add_argument("--data", required=True, help="JSONL prompts: {prompt} or {messages} rows (or preference rows: their prompts)")
            t.add_argument("--eval-data", default=None, help="JSONL prompts for the overoptimisation monitor (proxy / gold score, KL)")
        else:
            t.add_argument("--data", required=True, help="JSONL: preference rows (TRL or HH)" + (", or prompt/completion rows" if recipe.data == "sft" else ""))
        t.add_argument("--model", default=None, help=f"HF id, local directory or {EMBEDDED!r} (default from the config)")
        t.add_argument("--out", required=True, help="output directory (checkpoints, final model, metrics)")
        t.add_argument("--config", default=None, help="TOML file with config fields")
        t.add_argument("overrides", nargs="*", metavar="key=value")
        t.set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
