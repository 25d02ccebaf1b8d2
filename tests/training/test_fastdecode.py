"""The lean Llama decoding step (``training.fastdecode``) against transformers' own forward."""

import pytest
import torch

from training import fastdecode
from training.params import SamplingParams
from training.sampling import _prefill, generate

PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Write one short sentence about the sea, please, in plain words."}],
]


def _tiny(tokenizer, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    options = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
    config = LlamaConfig(**{**options, **extra})
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("extra", [{}, {"attention_bias": True, "mlp_bias": True}, {"num_key_value_heads": 4}])
def test_lean_steps_equal_the_stock_forward_over_padded_rows_that_leave(tokenizer, extra):
    """Prefill two prompts of different lengths (left padding) for 3 samples each, then decode
    6 steps with the lean step; after step 3 two rows leave. Each remaining row's hidden state
    at every step equals a plain forward of its own unpadded prompt + tokens so far."""
    from training.data import prompt_tokens

    model = _tiny(tokenizer, **extra)
    lean = fastdecode.lean_decoder(model)
    assert lean is not None
    seqs = [prompt_tokens(tokenizer, p) for p in PROMPTS]
    assert len(seqs[0]) != len(seqs[1])
    cache, mask, positions, hidden = _prefill(model, seqs, [3, 3], tokenizer.pad_token_id, "cpu", reserve=8)
    attend = torch.zeros((6, cache.layers[0]._keys.shape[-2]), dtype=torch.bool)
    attend[:, : mask.shape[1]] = mask.bool()
    owner = [0, 0, 0, 1, 1, 1]
    history = [list(seqs[o]) for o in owner]
    g = torch.Generator().manual_seed(1)
    for t in range(6):
        token = torch.randint(0, len(tokenizer), (len(owner),), generator=g)
        if t == 3:  # rows 1 and 4 leave the batch
            keep = torch.tensor([0, 2, 3, 5])
            token, positions, attend = token[keep], positions[keep], attend[keep]
            owner, history = [owner[i] for i in keep], [history[i] for i in keep]
            for layer in cache.layers:
                layer.batch_select_indices(keep)
        positions = positions + 1
        attend[:, cache.layers[0]._n] = True
        hidden = lean.step(token, positions, cache, attend)
        for row, tok in enumerate(token.tolist()):
            history[row].append(tok)
            with torch.no_grad():
                expected = model.model(torch.tensor([history[row]])).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[row], expected, rtol=1e-4, atol=1e-4)


def test_generate_with_the_lean_step_equals_the_stock_step(tokenizer, monkeypatch):
    """Whole generations, same seed: the same tokens and log-prob sums either way."""
    model = _tiny(tokenizer)
    params = SamplingParams(max_new_tokens=12, batch_size=8)
    monkeypatch.setenv("PREFLOOP_LEAN_DECODE", "0")
    stock = generate(model, tokenizer, PROMPTS, k=3, params=params, seed=5)
    monkeypatch.setenv("PREFLOOP_LEAN_DECODE", "1")
    calls = []
    original = fastdecode.LeanDecoder.step
    monkeypatch.setattr(fastdecode.LeanDecoder, "step", lambda self, *a: calls.append(1) or original(self, *a))
    lean = generate(model, tokenizer, PROMPTS, k=3, params=params, seed=5)
    assert calls  # the lean step ran
    for r1, r2 in zip(lean, stock):
        for a, b in zip(r1, r2):
            assert a.token_ids == b.token_ids
            assert a.logprob_sum == pytest.approx(b.logprob_sum, abs=1e-4)


def test_unsupported_models_keep_the_stock_forward(tokenizer, monkeypatch):
    model = _tiny(tokenizer)
    assert fastdecode.supported(model)
    monkeypatch.setenv("PREFLOOP_LEAN_DECODE", "0")
    assert not fastdecode.supported(model)
    monkeypatch.delenv("PREFLOOP_LEAN_DECODE")
    assert not fastdecode.supported(model.to(torch.float64))  # another dtype
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(_tiny(tokenizer), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not fastdecode.supported(lora.get_base_model())  # LoRA-wrapped projections
    from transformers import GPT2Config, GPT2LMHeadModel

    assert not fastdecode.supported(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)))
