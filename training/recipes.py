"""The training recipes, in one table: what each kind is called, its config, what rows it
trains on and which module trains it. The CLI and the workers both read it; a new recipe is
one entry here plus its module.

Torch-free: a recipe's module (which imports torch) is imported only when ``train`` runs, so
the web process can look up kinds and validate configs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from training.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, RLOOConfig, SFTConfig
from training.data import Report, read_preferences, read_prompts, read_sft
from training.formats import PreferenceRecord

DATA_KINDS = ("preference", "sft", "prompts")


@dataclass(frozen=True)
class Recipe:
    kind: str  # "sft" | "reward" | "dpo": the CLI subcommand and TrainingRun.kind
    help: str  # one line, for the CLI and pages
    config_cls: type  # its TrainConfig subclass
    data: str  # "preference": PreferenceRecord rows; "sft": (prompt messages, response text) rows; "prompts": message lists (online RL)
    module: str  # "training.sft" etc.: has train(cfg, rows, out_dir, **kw) -> (Result, Report)

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"data must be one of {', '.join(DATA_KINDS)}, got {self.data!r}")

    def train(self, cfg, rows: list, out_dir: str | Path, **kw):
        """``module.train(cfg, rows, out_dir, **kw)``: (Result, Report). ``kw``: eval rows,
        on_metrics, on_progress, should_cancel, progress (see the module's ``train``)."""
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"{self.kind} trains from a {self.config_cls.__name__}, not a {type(cfg).__name__}")
        return importlib.import_module(self.module).train(cfg, rows, out_dir, **kw)

    def rows_from_preferences(self, records: list[PreferenceRecord]) -> list:
        """The rows ``train`` takes, from preference records: the records themselves, or for
        SFT each prompt with its chosen response."""
        if self.data == "sft":
            return [(r.prompt, r.chosen) for r in records]
        if self.data == "prompts":
            return list({json_key(r.prompt): r.prompt for r in records}.values())
        return list(records)

    @property
    def online(self) -> bool:
        """Trains from prompts against a reward model (PPO, RLOO, GRPO)."""
        return self.data == "prompts"

    def read(self, path: str | Path) -> tuple[list, Report]:
        """The rows ``train`` takes, from a JSONL file; unreadable lines are in the report."""
        return {"sft": read_sft, "prompts": read_prompts}.get(self.data, read_preferences)(path)


RECIPES: dict[str, Recipe] = {r.kind: r for r in (
    Recipe("sft", "supervised fine-tuning", SFTConfig, "sft", "training.sft"),
    Recipe("reward", "Bradley-Terry reward model", RewardConfig, "preference", "training.reward"),
    Recipe("dpo", "DPO family", DPOConfig, "preference", "training.dpo"),
    Recipe("ppo", "PPO against a reward model (value head, GAE, KL penalty)", PPOConfig, "prompts", "training.ppo"),
    Recipe("rloo", "RLOO against a reward model (k samples, leave-one-out baseline)", RLOOConfig, "prompts", "training.rloo"),
    Recipe("grpo", "GRPO against a reward model (k samples, group-normalised advantages)", GRPOConfig, "prompts", "training.rloo"),
)}


def json_key(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def recipe_for(kind: str) -> Recipe:
    try:
        return RECIPES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown training kind {kind!r}; known: {', '.join(RECIPES)}") from None
