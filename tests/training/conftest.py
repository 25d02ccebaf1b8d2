import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (from the embedded model's cache, converted once from GGUF)."""
    from training.models import EMBEDDED, load_tokenizer

    return load_tokenizer(EMBEDDED)


@pytest.fixture
def tiny_model(tokenizer):
    """A tiny random-initialised Llama with the real tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()
