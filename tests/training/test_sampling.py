"""training.sampling on a tiny random model with the real SmolLM2 tokenizer."""

import pytest

from training.data import prompt_tokens, tokenize_sft
from training.sampling import SamplingParams, generate, sample_pairs, sequence_logprob

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Tell me a long story about a dragon and a castle, please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
]
P = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=4)


def bias_eos(model, eos_id, from_step=0, amount=1000.0):
    """Make EOS overwhelmingly likely (or, with a negative amount, impossible) from the
    ``from_step``-th generated token on. Use with a single batch: the count is per call."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if calls["n"] >= from_step:
            output = output.clone()
            output[..., eos_id] += amount
        calls["n"] += 1
        return output

    return model.lm_head.register_forward_hook(hook)


def test_shapes_and_fields(tiny_model, tokenizer):
    out = generate(tiny_model, tokenizer, PROMPTS, k=3, params=P, seed=1)
    assert [len(r) for r in out] == [3, 3, 3]
    for row in out:
        for s in row:
            assert s.finish_reason in ("stop", "length")
            assert s.token_count == len(s.token_ids) <= P.max_new_tokens
            assert s.logprob_sum < 0


def test_seeded_and_reproducible(tiny_model, tokenizer):
    a = generate(tiny_model, tokenizer, PROMPTS, k=2, params=P, seed=5)
    b = generate(tiny_model, tokenizer, PROMPTS, k=2, params=P, seed=5)
    c = generate(tiny_model, tokenizer, PROMPTS, k=2, params=P, seed=6)
    ids = lambda out: [[s.token_ids for s in row] for row in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_stops_at_eos(tiny_model, tokenizer):
    eos = tokenizer.eos_token_id
    handle = bias_eos(tiny_model, eos, from_step=3)
    try:
        out = generate(tiny_model, tokenizer, PROMPTS, k=2, params=SamplingParams(max_new_tokens=8, batch_size=8), seed=0)
    finally:
        handle.remove()
    for row in out:
        for s in row:
            assert s.finish_reason == "stop" and s.token_count == 4 and s.token_ids[-1] == eos
            assert eos not in s.token_ids[:-1]


def test_length_finish_when_no_eos(tiny_model, tokenizer):
    handle = bias_eos(tiny_model, tokenizer.eos_token_id, amount=-1000.0)
    try:
        out = generate(tiny_model, tokenizer, PROMPTS, k=2, params=SamplingParams(max_new_tokens=5, batch_size=8), seed=0)
    finally:
        handle.remove()
    assert {(s.finish_reason, s.token_count) for row in out for s in row} == {("length", 5)}


def test_logprob_sum_equals_a_separate_forward_pass(tiny_model, tokenizer):
    out = generate(tiny_model, tokenizer, PROMPTS, k=2, params=P, seed=3)
    for messages, row in zip(PROMPTS, out):
        prompt_ids = prompt_tokens(tokenizer, messages)
        for s in row:
            assert s.logprob_sum == pytest.approx(sequence_logprob(tiny_model, prompt_ids, s.token_ids), abs=1e-3)


def test_sampling_prompts_are_the_trainers_prompt_ids(tiny_model, tokenizer, monkeypatch):
    """What the policy is sampled from is token for token what SFT / reward / DPO train on:
    one BOS, the template's default system prompt, the assistant header."""
    fed = []
    real = tiny_model.generate

    def spy(input_ids, attention_mask, **kw):
        fed.extend(row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask))  # left padding off
        return real(input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(tiny_model, "generate", spy)
    generate(tiny_model, tokenizer, PROMPTS, k=1, params=P, seed=0)
    trained = [e.prompt_ids for e in tokenize_sft(tokenizer, [(m, "ok") for m in PROMPTS], max_length=1000, max_prompt_length=999)[0]]
    assert fed == trained == [prompt_tokens(tokenizer, m) for m in PROMPTS]
    for ids in fed:
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
        assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    # The embedded template on its own adds no second BOS: same ids as before the two paths were one.
    plain = tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=True)
    assert fed[0] == list(plain["input_ids"] if not isinstance(plain, list) else plain)


def test_identical_or_empty_pairs_are_resampled_then_dropped(tiny_model, tokenizer):
    eos = tokenizer.eos_token_id
    handle = bias_eos(tiny_model, eos, from_step=0)  # every sample is empty
    try:
        pairs = sample_pairs(tiny_model, tokenizer, PROMPTS[:2], params=P, seed=0, max_attempts=2)
    finally:
        handle.remove()
    assert pairs == [None, None]
    pairs = sample_pairs(tiny_model, tokenizer, PROMPTS, params=P, seed=0)
    assert all(p is not None and p[0].text != p[1].text and p[0].text and p[1].text for p in pairs)


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="unknown"):
        SamplingParams.from_dict({"temprature": 1.0})
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


# --- the fast nucleus sampler: the same distribution as the stock transformers warpers ---

def stock_scores(logits, temperature, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    return TopPLogitsWarper(top_p)(None, scores) if top_p < 1.0 else scores  # as generate: no warper at top_p=1


@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0, 12.0])  # flat (full-sort fallback) .. peaked (top-64 suffices)
@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.0, 0.9), (1.3, 0.5), (0.7, 1.0)])
def test_nucleus_equals_stock_warpers_on_random_logits(scale, temperature, top_p):
    import torch

    from training.nucleus import NucleusSampler

    gen = torch.Generator().manual_seed(int(scale * 100) + int(top_p * 10))
    logits = torch.randn(6, 49152, generator=gen) * scale
    stock = stock_scores(logits, temperature, top_p)
    ours = NucleusSampler(temperature, top_p, draw=False)(None, logits.clone())
    assert torch.equal(torch.isfinite(ours), torch.isfinite(stock))  # the same kept set
    assert torch.allclose(torch.softmax(ours, -1), torch.softmax(stock, -1), atol=1e-6, rtol=0)


def test_nucleus_draw_follows_the_stock_distribution():
    """The fast draw (among the kept only, its own random numbers) against the stock nucleus
    probabilities: frequencies over many rows within 5 sigma, nothing outside the nucleus, and
    the recorded log-prob is the raw policy's (temperature 1, no top-p)."""
    import torch

    from training.nucleus import NucleusSampler

    torch.manual_seed(0)
    row = torch.randn(1, 300) * 2.5
    n = 100_000
    probs = torch.softmax(stock_scores(row, 0.7, 0.9), -1)[0]
    sampler = NucleusSampler(0.7, 0.9, draw=True)
    out = sampler(None, row.expand(n, -1).clone())
    tokens = out.argmax(-1)
    assert torch.isfinite(out).sum(-1).eq(1).all()
    freq = torch.bincount(tokens, minlength=300).double() / n
    assert (freq[probs == 0] == 0).all()
    sigma = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 1e-9).all()
    assert torch.allclose(sampler.logprobs[0], torch.log_softmax(row, -1)[0, tokens])


PT = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8, batch_size=4)


@pytest.mark.parametrize("share_prefill", [False, True])
def test_fast_nucleus_with_the_stock_draw_is_token_for_token_the_stock_path(tiny_model, tokenizer, share_prefill):
    """Same kept set and scores as the stock warpers => the same multinomial draw, token for token.
    (The default fast path draws among the kept only, fewer random numbers: same distribution,
    other tokens for a seed, so it is checked by distribution above and by support below.)"""
    stock = generate(tiny_model, tokenizer, PROMPTS, k=2, params=PT, seed=4, fast=False)
    exact = generate(tiny_model, tokenizer, PROMPTS, k=2, params=PT, seed=4, _draw=False, _share_prefill=share_prefill)
    assert [[s.token_ids for s in r] for r in exact] == [[s.token_ids for s in r] for r in stock]
    for r1, r2 in zip(exact, stock):
        for a, b in zip(r1, r2):
            assert a.logprob_sum == pytest.approx(b.logprob_sum, abs=1e-4)


def test_fast_path_tokens_lie_in_the_stock_nucleus_and_logprobs_are_raw(tiny_model, tokenizer):
    import torch

    out = generate(tiny_model, tokenizer, PROMPTS, k=2, params=PT, seed=2)
    for messages, row in zip(PROMPTS, out):
        prompt_ids = prompt_tokens(tokenizer, messages)
        for s in row:
            ids = torch.tensor([prompt_ids + s.token_ids])
            with torch.no_grad():
                logits = tiny_model(ids).logits[0, len(prompt_ids) - 1: -1].float()
            kept = torch.isfinite(stock_scores(logits, PT.temperature, PT.top_p))
            assert kept[torch.arange(len(s.token_ids)), torch.tensor(s.token_ids)].all()
            assert s.logprob_sum == pytest.approx(sequence_logprob(tiny_model, prompt_ids, s.token_ids), abs=1e-3)
