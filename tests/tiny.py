"""Tiny random-initialised Llamas with the real SmolLM2 tokenizer, saved as local model
directories: a policy (causal LM) or a reward model (one-label sequence classifier) spec that
loads in well under a second."""

from pathlib import Path


def _config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )


def save_tiny_policy(path: Path, *, seed: int = 0) -> str:
    import torch
    from transformers import LlamaForCausalLM

    from training.models import EMBEDDED, load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED)
    torch.manual_seed(seed)
    LlamaForCausalLM(_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_reward(path: Path, *, seed: int = 0, scale: float = 1.0) -> str:
    """A tiny reward model (random backbone and score head, the head multiplied by ``scale``)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from training.models import EMBEDDED, load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED)
    torch.manual_seed(seed)
    config = _config(tokenizer)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(scale)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
