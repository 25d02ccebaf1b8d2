"""A tiny random-initialised Llama with the real SmolLM2 tokenizer, saved as a local model
directory: a policy spec that loads in well under a second."""

from pathlib import Path


def save_tiny_policy(path: Path, *, seed: int = 0) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.models import EMBEDDED, load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
