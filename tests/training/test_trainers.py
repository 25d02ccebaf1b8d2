"""SFT, reward and DPO recipes on a tiny random model: a few steps each, finite losses,
changed weights, TRL metric names, checkpoints, resume, reference modes, LoRA, the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.processes import ROOT
from tests.shared_data import shared_data
from training import dpo, reward, sft
from training.config import config_from
from training.data import read_preferences

pytestmark = pytest.mark.timeout(600)

TINY = dict(batch_size=2, max_length=96, max_prompt_length=64, min_response_tokens=2, log_every=1, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def records():
    recs, report = read_preferences(shared_data("hh-harmless-1800.jsonl"))
    return recs[:12]


def weights(path: Path) -> dict:
    state = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def initial(spec) -> dict:
    return weights(Path(spec))


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_dpo_five_steps(tiny_policy, records, tmp_path):
    cfg = dpo.DPOConfig(model=tiny_policy, max_steps=5, lr=1e-3, eval_fraction=0.25, **TINY)
    seen = []
    result, report = dpo.train(cfg, records, tmp_path, on_metrics=lambda step, m: seen.append((step, m)))
    assert result.status == "completed" and result.step == 5 and report.kept == 9
    first = result.metrics[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert all(math.isfinite(m[key]) for m in result.metrics if key in m), key
    assert [s for s, m in seen if "loss" in m] == [1, 2, 3, 4, 5]
    assert "eval_rewards/accuracies" in result.metrics[-1]
    assert changed(initial(tiny_policy), weights(tmp_path))
    saved = json.loads((tmp_path / "prefloop_config.json").read_text())
    assert saved["config"]["beta"] == 0.1 and saved["data"]["rows"] == 9 and (tmp_path / "tokenizer.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(result.metrics)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path)  # the output is an ordinary HF model directory


def test_reward_five_steps(tiny_policy, records, tmp_path):
    cfg = reward.RewardConfig(model=tiny_policy, max_steps=5, lr=1e-3, eval_fraction=0.25, **TINY)
    result, _ = reward.train(cfg, records, tmp_path)
    assert result.status == "completed"
    for m in result.metrics:
        for key in ("loss", "accuracy", "margin", "mean_reward"):
            if key in m:
                assert math.isfinite(m[key])
    assert {"eval_accuracy", "eval_margin", "eval_mean_reward"} <= set(result.metrics[-1])
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert rm.config.num_labels == 1
    assert changed(initial(tiny_policy), weights(tmp_path))


def test_sft_five_steps(tiny_policy, records, tmp_path):
    rows = [(r.prompt, r.chosen) for r in records]
    cfg = sft.SFTConfig(model=tiny_policy, max_steps=5, lr=1e-3, **TINY)
    progress = []
    result, _ = sft.train(cfg, rows, tmp_path, on_progress=lambda step, total: progress.append((step, total)))
    assert progress == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # before the first step, then after each
    losses = [m["loss"] for m in result.metrics]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert changed(initial(tiny_policy), weights(tmp_path))


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "robust", "simpo"])
def test_dpo_loss_types_train(tiny_policy, records, tmp_path, loss_type):
    extra = {"label_smoothing": 0.1} if loss_type == "robust" else {}
    cfg = dpo.DPOConfig(model=tiny_policy, max_steps=2, lr=1e-3, loss_type=loss_type, **extra, **TINY)
    result, _ = dpo.train(cfg, records[:4], tmp_path)
    assert all(math.isfinite(m["loss"]) for m in result.metrics)


def test_precomputed_reference_equals_live_reference(tiny_policy, records, tmp_path):
    common = dict(model=tiny_policy, max_steps=2, lr=1e-3, **TINY)
    pre, _ = dpo.train(dpo.DPOConfig(reference="precompute", **common), records[:4], tmp_path / "pre")
    live, _ = dpo.train(dpo.DPOConfig(reference="live", **common), records[:4], tmp_path / "live")
    for a, b in zip(pre.metrics, live.metrics):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)  # also after an update: the reference held still
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)
    wa, wb = weights(tmp_path / "pre"), weights(tmp_path / "live")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_resume_equals_uninterrupted(tiny_policy, records, tmp_path):
    common = dict(model=tiny_policy, max_steps=4, lr=1e-3, save_every=2, **TINY)
    full, _ = dpo.train(dpo.DPOConfig(**common), records[:8], tmp_path / "full")
    calls = {"n": 0}

    def cancel_after_two():
        calls["n"] += 1
        return calls["n"] > 2  # checked before each step: steps 1 and 2 run, then cancel

    part, _ = dpo.train(dpo.DPOConfig(**common), records[:8], tmp_path / "part", should_cancel=cancel_after_two)
    assert part.status == "cancelled" and part.step == 2 and (tmp_path / "part" / "checkpoint-0000002").is_dir()
    resumed, _ = dpo.train(dpo.DPOConfig(**common), records[:8], tmp_path / "part")
    assert resumed.status == "completed" and resumed.step == 4
    assert [m["loss"] for m in resumed.metrics] == pytest.approx([m["loss"] for m in full.metrics], abs=1e-5)
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_lora_trains_adapters_only(tiny_policy, records, tmp_path):
    cfg = dpo.DPOConfig(model=tiny_policy, max_steps=2, lr=1e-2, lora_r=4, lora_targets=("q_proj", "v_proj"), **TINY)
    result, _ = dpo.train(cfg, records[:4], tmp_path)
    assert result.status == "completed"
    adapter = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it moved


def test_config_loading(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('beta = 0.2\nloss_type = "ipo"\nlora_targets = ["q_proj"]\n')
    cfg = config_from(dpo.DPOConfig, toml, ["lr=3e-6", "batch_size=8", "beta=0.3"])
    assert (cfg.beta, cfg.loss_type, cfg.lr, cfg.batch_size, cfg.lora_targets) == (0.3, "ipo", 3e-6, 8, ("q_proj",))
    with pytest.raises(ValueError, match="unknown config key.*betta"):
        config_from(dpo.DPOConfig, None, ["betta=0.1"])
    with pytest.raises(ValueError, match="batch_size"):
        config_from(dpo.DPOConfig, None, ["batch_size=many"])
    with pytest.raises(ValueError, match="loss_type must be one of"):
        config_from(dpo.DPOConfig, None, ["loss_type=kto"])
    with pytest.raises(ValueError, match="unknown config key.*beta"):
        config_from(sft.SFTConfig, None, ["beta=0.1"])
    with pytest.raises(ValueError, match="log_every must be > 0"):
        config_from(sft.SFTConfig, None, ["log_every=0"])


def test_cli(tiny_policy, tmp_path):
    data = ROOT / "fixtures" / "tests" / "trl_mixed.jsonl"
    out = tmp_path / "out"
    run = lambda *a: subprocess.run([sys.executable, "-m", "training", *a], cwd=ROOT, capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("dpo", "--data", str(data), "--model", tiny_policy, "--out", str(out), "max_steps=2", "batch_size=2", "min_response_tokens=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").exists() and "line 4:" in r.stderr  # bad input lines are reported
    r = run("reward", "--data", str(data), "--model", tiny_policy, "--out", str(tmp_path / "o2"), "nonsense=1")
    assert r.returncode != 0 and "unknown config key(s) for RewardConfig: nonsense" in r.stderr
