"""Training configs: the fields every recipe shares, one dataclass per algorithm, and their
loading from a TOML file and ``key=value`` overrides.

Torch-free on purpose: the web process (and the CLI's argument handling) can build and
validate a run's config without importing torch. Each recipe (``sft.py``, ``reward.py``,
``dpo.py``) imports its config from here.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class TrainConfig:
    """Fields every recipe has. Each recipe's config adds its own; all are validated and an
    unknown key is an error, never ignored."""

    model: str = "smollm2-135m-instruct"  # HF id, local directory or the embedded default
    lr: float = 5e-6  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (biases and norms excluded)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW (beta1, beta2)
    warmup_ratio: float = 0.1  # fraction of optimiser steps with linear warm-up, then cosine to 0
    epochs: float = 1.0  # passes over the training rows (ignored when max_steps > 0)
    max_steps: int = 0  # optimiser steps; 0: from epochs
    batch_size: int = 4  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 turns clipping off
    max_length: int = 512  # prompt + response tokens
    max_prompt_length: int = 256  # the prompt keeps its last tokens
    min_response_tokens: int = 8  # a row whose response would keep fewer tokens is dropped
    eval_fraction: float = 0.0  # held-out share of the rows (deterministic split by seed)
    eval_every: int = 0  # optimiser steps between evaluations; 0: at the end only
    log_every: int = 10  # optimiser steps between metrics callbacks
    save_every: int = 0  # optimiser steps between checkpoints; 0: at the end only
    seed: int = 0  # seeds Python / torch RNGs (LoRA init, dropout), the eval split and each epoch's shuffle
    lora_r: int = 0  # LoRA rank; 0 trains all weights
    lora_alpha: int = 16  # LoRA scale: the update is multiplied by alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA branch's input
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the modules LoRA adapts
    device: str = "auto"  # cuda when present, else cpu
    dtype: str = "auto"  # bf16 on CUDA, fp32 on CPU
    logit_chunk: int = 256  # response positions per LM-head chunk (at most (chunk, V) logits alive)
    max_tokens_per_forward: int = 0  # split a micro-batch into forwards of at most this many packed tokens (0: no split); same gradient, less activation memory
    activation_checkpointing: bool = True  # recompute each layer in the backward pass: ~20% slower, ~0.8 GB less peak RSS for SmolLM2 at batch 4

    def __post_init__(self):
        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if not (v >= 0 if allow_zero else v > 0):
                raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")

        for name in ("lr", "batch_size", "grad_accum", "max_length", "max_prompt_length", "epochs", "logit_chunk", "min_response_tokens",
                     "log_every"):
            positive(name)
        for name in ("weight_decay", "max_steps", "max_grad_norm", "eval_every", "save_every", "lora_r", "lora_dropout",
                     "max_tokens_per_forward"):
            positive(name, allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be auto, float32, bfloat16 or float16")
        self.adam_betas = tuple(self.adam_betas)
        self.lora_targets = tuple(self.lora_targets)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- one config per algorithm


@dataclass
class SFTConfig(TrainConfig):
    lr: float = 2e-5


@dataclass
class RewardConfig(TrainConfig):
    lr: float = 1e-5
    center_coef: float = 0.0  # c in + c·(r_w + r_l)²: keeps rewards centred (TRL center_rewards_coefficient)

    def __post_init__(self):
        super().__post_init__()
        if self.center_coef < 0:
            raise ValueError("center_coef must be >= 0")


LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo")


@dataclass
class DPOConfig(TrainConfig):
    lr: float = 1e-6
    beta: float = 0.1  # strength of the KL anchor to the reference (SimPO: reward scale, ~2)
    loss_type: str = "sigmoid"  # sigmoid (DPO; cDPO with label_smoothing) | robust | ipo | hinge | simpo
    label_smoothing: float = 0.0  # ε: assumed label-flip rate for cDPO / robust / SimPO
    simpo_gamma: float = 0.5  # SimPO target reward margin γ
    reference: str = "precompute"  # precompute (once, no second model) | live (a frozen copy)

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")
        if self.reference not in ("precompute", "live"):
            raise ValueError("reference must be precompute or live")


ADVANTAGES = ("rloo", "grpo")
GRPO_LOSSES = ("dapo", "grpo")


@dataclass
class RLConfig(TrainConfig):
    """Online RL from a reward model: each step samples a rollout from the current policy on
    ``prompts_per_rollout`` prompts (``k`` samples each), scores it with the reward model and
    optimises on it. ``max_steps`` counts rollouts (0: ``epochs`` passes over the prompts)."""

    lr: float = 1e-6
    reward_model: str = ""  # the reward model optimised against (a directory or a reward version's spec); required
    gold_model: str = ""  # a second reward model for the overoptimisation monitor (trained on other data); empty: none
    k: int = 2  # samples per prompt in a rollout
    prompts_per_rollout: int = 8  # prompts per rollout: k * prompts_per_rollout episodes per step
    max_new_tokens: int = 64  # per response
    temperature: float = 1.0  # sampling temperature of the rollout
    top_p: float = 1.0  # nucleus mass of the rollout
    beta: float = 0.05  # KL coefficient toward the reference (the starting policy)
    ppo_epochs: int = 1  # optimisation passes over each rollout
    num_minibatches: int = 1  # minibatches per pass (each one optimiser step)
    clip_eps: float = 0.2  # the ratio is clipped to [1 - clip_eps, 1 + clip_eps]
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response that hit max_new_tokens without EOS; 0: off
    monitor_every: int = 0  # rollouts between overoptimisation measurements on the eval prompts (0: at the end only)
    monitor_max_prompts: int = 32  # eval prompts the monitor samples (one response each, fixed seed)
    lr_schedule: str = "constant"  # constant (TRL's RL default) | cosine (with warmup_ratio)
    warmup_ratio: float = 0.0
    max_length: int = 1024
    max_prompt_length: int = 512
    min_response_tokens: int = 1
    activation_checkpointing: bool = False  # RL trains on short rollouts: speed first

    def __post_init__(self):
        super().__post_init__()
        for name in ("k", "prompts_per_rollout", "max_new_tokens", "ppo_epochs", "num_minibatches", "monitor_max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        for name in ("beta", "missing_eos_penalty", "monitor_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 < self.clip_eps < 1:
            raise ValueError("clip_eps must be in (0, 1)")
        if (self.k * self.prompts_per_rollout) % self.num_minibatches:
            raise ValueError("k * prompts_per_rollout must be divisible by num_minibatches")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("lr_schedule must be constant or cosine")


@dataclass
class PPOConfig(RLConfig):
    """PPO as InstructGPT trains it (Ouyang et al. 2022; TRL's former PPOTrainer): a value head
    on the policy, per-token KL penalty in the reward, GAE, clipped policy and value losses."""

    k: int = 1
    ppo_epochs: int = 4
    lr: float = 3e-6
    vf_coef: float = 0.1  # weight of the value loss
    cliprange_value: float = 0.2  # the value prediction is clipped to old ± this
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    whiten_advantages: bool = True  # advantages normalised to mean 0, std 1 over the rollout's tokens
    target_kl: float = 0.0  # adaptive KL controller (Ziegler et al. 2019) toward this per-sequence KL; 0: fixed beta
    kl_horizon: int = 10000  # the controller's horizon in episodes

    def __post_init__(self):
        super().__post_init__()
        for name in ("vf_coef", "cliprange_value", "target_kl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 < self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("gamma must be in (0, 1] and lam in [0, 1]")
        if self.kl_horizon < 1:
            raise ValueError("kl_horizon must be >= 1")


@dataclass
class RLOOConfig(RLConfig):
    """REINFORCE leave-one-out (Ahmadian et al. 2024, as TRL's RLOOTrainer): the sequence's
    reward minus β·KL, baseline = the mean reward of the other k − 1 samples of its prompt,
    a clipped sequence-level ratio; no value network."""

    k: int = 4
    advantage: str = "rloo"  # rloo: leave-one-out baseline | grpo: (r - group mean) / (group std + 1e-4)
    normalize_advantages: bool = False  # rloo: advantages normalised over the rollout
    loss_type: str = "dapo"  # grpo: dapo (token losses summed / all tokens, TRL's default) | grpo (per-sequence mean)
    kl_ratio_correction: bool = True  # grpo with beta > 0: the KL term times the importance ratio (unbiased reverse-KL gradient; TRL's default)

    def __post_init__(self):
        super().__post_init__()
        if self.k < 2:
            raise ValueError("k must be >= 2: the baseline is the other samples of the same prompt")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {', '.join(ADVANTAGES)}")
        if self.loss_type not in GRPO_LOSSES:
            raise ValueError(f"loss_type must be one of {', '.join(GRPO_LOSSES)}")


@dataclass
class GRPOConfig(RLOOConfig):
    """GRPO (Shao et al. 2024, as TRL's GRPOTrainer by default): group-normalised advantages,
    per-token clipped ratio, KL as a per-token loss term (k3) when beta > 0."""

    advantage: str = "grpo"
    beta: float = 0.0  # TRL's GRPO default: no reference model


# ---------------------------------------------------------------- loading


def _coerce(value, hint):
    """Turn a CLI string (or a TOML value) into the field's type."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if hint in (int, float, str):
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        if hint is not str and isinstance(value, bool):
            raise ValueError(f"not a number: {value!r}")
        return hint(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        args = typing.get_args(hint)
        item_type = args[0]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item_type) for v in items)
    return value


def config_from(cls, file: str | Path | None = None, overrides: list[str] | dict | None = None):
    """``cls`` from a TOML file and ``key=value`` overrides (later wins). Unknown keys and
    values of the wrong type are errors that name the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values: dict = {}
    if file:
        values.update(tomllib.loads(Path(file).read_text(encoding="utf-8")))
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"expected key=value, got {item!r}")
            key, value = item.split("=", 1)
            values[key.strip()] = value.strip()
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}")
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from None
    return cls(**typed)
