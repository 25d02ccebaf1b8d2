"""training.recipes: the one table of training kinds, read by the CLI (and the workers)."""

import subprocess
import sys

import pytest

from tests.processes import ROOT
from training.__main__ import build_parser
from training.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, RLOOConfig, SFTConfig
from training.formats import PreferenceRecord
from training.recipes import RECIPES, recipe_for

TORCH_FREE = "training.recipes", "training.config", "training.seeds", "training.data", "training.params", "training.formats"


def test_the_registry():
    assert list(RECIPES) == ["sft", "reward", "dpo", "ppo", "rloo", "grpo"]
    assert [(r.config_cls, r.data, r.module) for r in RECIPES.values()] == [
        (SFTConfig, "sft", "training.sft"), (RewardConfig, "preference", "training.reward"), (DPOConfig, "preference", "training.dpo"),
        (PPOConfig, "prompts", "training.ppo"), (RLOOConfig, "prompts", "training.rloo"), (GRPOConfig, "prompts", "training.rloo")]
    assert [r.online for r in RECIPES.values()] == [False, False, False, True, True, True]
    assert all(r.kind == kind and r.help for kind, r in RECIPES.items())
    assert recipe_for("dpo") is RECIPES["dpo"]


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown training kind 'kto'; known: sft, reward, dpo, ppo, rloo, grpo"):
        recipe_for("kto")


def test_cli_subcommands_are_the_registry():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) - {"sample"} == set(RECIPES)
    args = parser.parse_args(["reward", "--data", "x.jsonl", "--out", "o", "lr=1e-4"])
    assert (args.command, args.overrides) == ("reward", ["lr=1e-4"])


def test_rows_and_reading():
    records = [PreferenceRecord([{"role": "user", "content": "Hi"}], "Hello!", "Go away.")]
    assert recipe_for("sft").rows_from_preferences(records) == [(records[0].prompt, "Hello!")]
    assert recipe_for("ppo").rows_from_preferences(records * 2) == [records[0].prompt]  # each prompt once
    assert recipe_for("dpo").rows_from_preferences(records) == records
    data = ROOT / "fixtures" / "tests" / "trl_mixed.jsonl"
    sft_rows, _ = recipe_for("sft").read(data)
    prefs, report = recipe_for("reward").read(data)
    assert sft_rows[0] == ([{"role": "user", "content": "What is 2+2?"}], "4")
    assert isinstance(prefs[0], PreferenceRecord) and report.errors[0].startswith("line 4:")


def test_a_config_of_another_recipe_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(TypeError, match="dpo trains from a DPOConfig, not a SFTConfig"):
        recipe_for("dpo").train(SFTConfig(), [], tmp_path)


def test_the_registry_and_configs_import_without_torch():
    code = ("import sys\n"
            f"for m in {TORCH_FREE!r}: __import__(m)\n"
            "from training.recipes import RECIPES\n"
            "from training.config import config_from\n"
            "config_from(RECIPES['dpo'].config_cls, None, {'beta': 0.2})\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'training.dpo', 'training.models') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
