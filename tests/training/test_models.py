"""training.models and the CLI with the real embedded SmolLM2-135M-Instruct (slow)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.models import EMBEDDED, embedded_cached, load_policy
from training.sampling import SamplingParams, generate

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.slow
def test_embedded_policy_loads_from_cache_and_speaks_english():
    embedded_cached()  # converts from GGUF on the first use only
    t0 = time.perf_counter()
    model, tokenizer = load_policy(EMBEDDED)
    load_s = time.perf_counter() - t0
    assert "quantization_config" not in model.config.to_dict()
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    # This small model names Paris in about half its samples at T=0.3 (17 of 32 measured), so
    # ask for 8: a seed with none would be a 0.5% draw, not a model that cannot answer.
    out = generate(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]], k=8,
                   params=SamplingParams(temperature=0.3, max_new_tokens=24), seed=0)
    texts = [s.text for s in out[0]]
    assert all(texts), texts
    assert any("Paris" in t for t in texts), texts
    assert load_s < 60, load_s  # a generous sanity bound on a cached load, not a benchmark


@pytest.mark.slow
def test_cli_sample(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Name a colour."}\n{"messages": [{"role": "user", "content": "Say hi."}]}\n')
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "training", "sample", "--prompts", str(prompts), "--k", "2",
                        "--max-new-tokens", "12", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(row["responses"]) == 2 for row in rows)
    assert rows[0]["messages"] == [{"role": "user", "content": "Name a colour."}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    r = subprocess.run([sys.executable, "-m", "training", "sample", "--prompts", str(bad), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "bad.jsonl:1: missing 'prompt'" in r.stderr
