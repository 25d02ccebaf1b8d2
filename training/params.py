"""Sampling parameters: torch-free, so the web process can validate a campaign's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Every field is validated; unknown keys are rejected by ``from_dict``."""

    temperature: float = 0.7  # > 0; 1 samples from the model's distribution as is
    top_p: float = 0.95  # nucleus sampling mass, in (0, 1]
    max_new_tokens: int = 256  # hard cap on generated tokens per response
    batch_size: int = 32  # sequences decoded together (prompts x k are flattened); 32 is the fastest on a 2-core CPU

    def __post_init__(self):
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, not {type(value).__name__}")
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict) -> SamplingParams:
        if not isinstance(d, dict):
            raise ValueError("sampling parameters must be a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)
