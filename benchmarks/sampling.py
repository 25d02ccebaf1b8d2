"""Batched sampling vs one-prompt-at-a-time ``model.generate``: generated tokens per second.

Same model (the embedded SmolLM2-135M-Instruct, fp32 on CPU here), same prompts (the demo
campaign's), same settings (temperature 0.7, top-p 0.95, k samples per prompt, max new
tokens): ours is ``training.sampling.generate`` (all prompts x k in left-padded batches of 32,
with log-prob sums: shared prefill, the fast nucleus sampler, a KV cache written in place,
finished rows leaving the batch); "stock" is the same batched path
with the stock transformers warpers (``fast=False``, our previous path); the peer is the loop
people write first, one ``model.generate`` call per sample. Tokens are the generated ones up to and including EOS; a batch keeps stepping until its
longest member ends, and that idle work counts against us. The two run interleaved in
``--repeats`` rounds (``benchmarks/harness.py``: refuses a busy machine); the RESULT is the
median of the per-round speedups with their min-max, CPU seconds beside wall seconds.

    python benchmarks/sampling.py [--quick] [--prompts 16] [--k 2] [--max-new-tokens 64] [--repeats 3] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402


def one_at_a_time(model, tokenizer, prompts, *, k, params, seed) -> int:
    """The baseline: one ``model.generate`` per sample. Returns generated tokens (to EOS)."""
    import torch

    eos = tokenizer.eos_token_id
    tokens = 0
    for i, messages in enumerate(prompts):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        for j in range(k):
            torch.manual_seed(seed + i * k + j)
            out = model.generate(
                **ids, do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0,
                max_new_tokens=params.max_new_tokens, eos_token_id=eos, pad_token_id=eos,
            )
            gen = out[0, ids["input_ids"].shape[1]:].tolist()
            tokens += gen.index(eos) + 1 if eos in gen else len(gen)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 prompts, 16 new tokens, 1 round")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: SamplingParams' (32)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    harness.add_arguments(ap)
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens, args.repeats = 4, 16, 1
    harness.require_idle(args)

    import torch

    from training.models import load_policy
    from training.sampling import SamplingParams, generate

    rows = [json.loads(line) for line in (ROOT / "fixtures" / "demo_prompts.jsonl").read_text().splitlines() if line.strip()]
    prompts = [r["messages"] for r in rows[: args.prompts]]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size or SamplingParams().batch_size)
    model, tokenizer = load_policy(args.model)
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {model.dtype}, "
          f"{torch.get_num_threads()} threads; {len(prompts)} prompts x k={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"batch_size={params.batch_size}", flush=True)
    generate(model, tokenizer, prompts[:1], k=1, params=SamplingParams(max_new_tokens=2))  # warm-up

    rate = {"ours": [], "stock": [], "peer": []}
    cpu_per_token = {"ours": [], "stock": [], "peer": []}
    for run, name in harness.rounds(["ours", "stock", "peer"], args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        if name in ("ours", "stock"):
            out = generate(model, tokenizer, prompts, k=args.k, params=params, seed=run, fast=name == "ours")
            n = sum(s.token_count for row in out for s in row)
        else:
            n = one_at_a_time(model, tokenizer, prompts, k=args.k, params=params, seed=run)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        rate[name].append(n / dt)
        cpu_per_token[name].append(cpu / n * 1000)
        print(f"round {run} {name:>5}: {n} tokens in {dt:.1f} s (CPU {cpu:.1f} s) = {n / dt:.1f} tokens/s", flush=True)
    speedups = [o / p for o, p in zip(rate["ours"], rate["peer"])]
    vs_stock = [o / p for o, p in zip(rate["ours"], rate["stock"])]
    print(f"tokens/s, median (min-max): batched {harness.fmt_spread(rate['ours'], 1)}, batched stock warpers "
          f"{harness.fmt_spread(rate['stock'], 1)}, one at a time {harness.fmt_spread(rate['peer'], 1)}; CPU ms/token "
          f"{harness.fmt_spread(cpu_per_token['ours'], 1)} vs {harness.fmt_spread(cpu_per_token['stock'], 1)} vs "
          f"{harness.fmt_spread(cpu_per_token['peer'], 1)}")
    print(harness.result_line({
        **harness.median_fields("speedup", speedups),
        **harness.median_fields("speedup_vs_stock", vs_stock),
        "batched_tokens_per_s": harness.spread(rate["ours"])[0],
        "batched_stock_tokens_per_s": harness.spread(rate["stock"])[0],
        "one_at_a_time_tokens_per_s": harness.spread(rate["peer"])[0],
        "rounds": args.repeats,
    }))


if __name__ == "__main__":
    main()
