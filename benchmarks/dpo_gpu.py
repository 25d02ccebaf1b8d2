"""DPO training throughput and MFU on a GPU: a randomly initialised 0.5B-parameter
Qwen2-shaped model in bf16 (weights cannot be downloaded on the lent machines; random weights
time the same), our packed, prompt-shared DPO step (``training.dpo`` internals) with AdamW.

Sequences are random token ids with HH-like lengths (prompt 60-200, responses 20-120 tokens).
Tokens/s counts prompt + response of every sequence (the prompt twice per pair, as TRL counts);
MFU = 6 · parameters · computed tokens/s / the GPU's dense bf16 peak (H100/H200 SXM: 989
TFLOP/s; override with --peak-tflops), attention FLOPs left out (small at these lengths).

    python benchmarks/dpo_gpu.py [--quick] [--batch 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 steps")
    ap.add_argument("--batch", type=int, default=16, help="pairs per step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--activation-checkpointing", action="store_true")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("dpo_gpu.py needs a CUDA GPU (CPU numbers are in benchmarks/dpo_vs_trl.py)")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training import dpo
    from training.data import PreferenceExample
    from training.logprobs import tie_embedding_grads
    from training.models import unwrap
    from training.packing import use_packed_attention

    steps = 5 if args.quick else args.steps
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, torch_dtype="bfloat16")
    model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    use_packed_attention(model)
    tie_embedding_grads(model)
    if args.activation_checkpointing:
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = dpo.DPOConfig(batch_size=args.batch, logit_chunk=1024, lr=1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True)
    rng = random.Random(0)

    def example():
        ids = lambda n: [rng.randrange(1000, 150_000) for _ in range(n)]  # noqa: E731
        return PreferenceExample(ids(rng.randint(60, 200)), ids(rng.randint(20, 120)), ids(rng.randint(20, 120)))

    times, counted, computed = [], [], []
    model.train()
    for step in range(steps + 1):
        batch = [example() for _ in range(args.batch)]
        ref = torch.zeros(args.batch, device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        w, l = dpo.policy_logps(model, batch, device="cuda", chunk=cfg.logit_chunk, average=False)
        loss, _ = dpo.pair_loss(cfg, w, l, ref, ref)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step:  # the first step compiles kernels and warms the allocator
            times.append(time.perf_counter() - t0)
            counted.append(sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in batch))
            computed.append(sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in batch))
    s = statistics.median(times)
    tps = sum(counted) / sum(times)
    computed_tps = sum(computed) / sum(times)
    mfu = 6 * n_params * computed_tps / (args.peak_tflops * 1e12)
    print(f"{torch.cuda.get_device_name()}: {n_params / 1e6:.0f}M params bf16, batch {args.batch} pairs, median {s:.3f} s/step, "
          f"{tps:.0f} tokens/s (TRL-counted), {computed_tps:.0f} computed tokens/s, MFU {mfu:.1%}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"RESULT tokens_per_s={tps:.0f} mfu={mfu:.3f} s_per_step={s:.3f}")


if __name__ == "__main__":
    main()
