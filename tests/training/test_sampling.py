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
    import training.sampling as sampling

    fed = []
    real = sampling._left_pad

    def spy(seqs, pad_id, device):
        ids, mask = real(seqs, pad_id, device)
        fed.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))  # left padding off: what the model reads
        return ids, mask

    monkeypatch.setattr(sampling, "_left_pad", spy)
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


def test_rows_that_finish_leave_the_batch_and_the_rest_go_on_unchanged(tiny_model, tokenizer):
    """The fast loop drops a row from the batch (and its KV cache rows) once it draws EOS: the
    rows still going must read their own cache afterwards, so their log-prob sums still equal a
    separate forward pass over their own prompt and tokens."""
    eos = tokenizer.eos_token_id
    calls = {"n": 0}

    def hook(module, inputs, output):  # EOS for the batch's first row at its third token only
        if calls["n"] == 2:
            output = output.clone()
            output[0, ..., eos] += 1000.0
        calls["n"] += 1
        return output

    handle = tiny_model.lm_head.register_forward_hook(hook)
    try:
        out = generate(tiny_model, tokenizer, PROMPTS, k=2, params=SamplingParams(max_new_tokens=8, batch_size=8), seed=3)
    finally:
        handle.remove()
    first, rest = out[0][0], [s for row in out for s in row][1:]
    assert first.finish_reason == "stop" and first.token_count == 3 and first.token_ids[-1] == eos
    assert any(s.token_count == 8 for s in rest)  # the others went on after the first left
    for messages, row in zip(PROMPTS, out):
        for s in row:
            if s is first:
                continue
            expected = sequence_logprob(tiny_model, prompt_tokens(tokenizer, messages), s.token_ids)
            assert s.logprob_sum == pytest.approx(expected, abs=1e-3)


def test_whole_sampler_draws_the_exact_nucleus_distribution(tiny_model, tokenizer):
    """The whole fast sampler (prefill, decode loop, draw) against the exact
    temperature + top-p probabilities of the first two tokens, computed by separate forward
    passes: frequencies over 6,000 samples within 5 sigma, nothing outside the nucleus. The
    logits are made peaked (a fixed bias on 40 tokens) so a few thousand samples can see them."""
    import torch

    g = torch.Generator().manual_seed(0)
    bias = torch.full((tiny_model.config.vocab_size,), -30.0)
    favoured = torch.randperm(tiny_model.config.vocab_size, generator=g)[:40]
    favoured = favoured[favoured != tokenizer.eos_token_id]
    bias[favoured] = torch.randn(len(favoured), generator=g) * 2.0
    handle = tiny_model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=2, batch_size=256)
    prompt = PROMPTS[1]
    try:
        n = 6000
        out = generate(tiny_model, tokenizer, [prompt], k=n, params=params, seed=11)[0]
        prompt_ids = prompt_tokens(tokenizer, prompt)

        def exact(prefix):  # the nucleus distribution of the next token after prompt + prefix
            with torch.no_grad():
                logits = tiny_model(torch.tensor([prompt_ids + prefix])).logits[0, -1:].float()
            return torch.softmax(stock_scores(logits, params.temperature, params.top_p), -1)[0].double()

        def check(tokens, probs):
            freq = torch.bincount(torch.tensor(tokens), minlength=len(probs)).double() / len(tokens)
            assert (freq[probs == 0] == 0).all()
            sigma = (probs * (1 - probs) / len(tokens)).sqrt()
            assert ((freq - probs).abs() <= 5 * sigma + 1e-9).all()

        firsts = [s.token_ids[0] for s in out]
        check(firsts, exact([]))
        top = max(set(firsts), key=firsts.count)  # the second token, given the most frequent first one
        check([s.token_ids[1] for s in out if s.token_ids[0] == top], exact([top]))
    finally:
        handle.remove()
