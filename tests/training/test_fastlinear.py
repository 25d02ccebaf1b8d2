"""training.fastlinear: packed oneDNN weights for no-grad products on the CPU."""

import torch

from training.fastlinear import available, packed_linears


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.GELU(), torch.nn.Linear(64, 300, bias=False))


def test_packed_products_equal_plain_ones_and_the_layers_are_restored():
    model = _model()
    assert available(model)  # the CPU wheel ships oneDNN: the fast path is what these tests exercise
    plain = [type(m).forward for m in model]
    x = torch.randn(5, 3, 24)
    with torch.no_grad():
        want = model(x)
        with packed_linears(model):
            assert all("forward" in m.__dict__ for m in model if isinstance(m, torch.nn.Linear))
            got = model(x)
            one_row = model(x[:1, :1])  # any row count, not only the packing hint's
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(one_row, want[:1, :1], rtol=1e-5, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in model)
    assert [type(m).forward for m in model] == plain


def test_gradients_go_through_the_plain_weights():
    model = _model()
    x = torch.randn(4, 24)
    with packed_linears(model):
        model(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for a, p in zip(grads, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)


def test_a_no_op_when_switched_off_or_not_float32(monkeypatch):
    model = _model()
    monkeypatch.setenv("PREFLOOP_PACKED_LINEAR", "0")
    with packed_linears(model):
        assert not any("forward" in m.__dict__ for m in model)
    monkeypatch.delenv("PREFLOOP_PACKED_LINEAR")
    model = model.double()
    assert not available(model)
    with packed_linears(model), torch.no_grad():
        assert model(torch.randn(2, 24, dtype=torch.float64)).dtype == torch.float64


def test_sampling_runs_inside_it(tiny_model, tokenizer, monkeypatch):
    """The decoding loop's products are the packed ones, and its samples' log-prob sums still
    equal a plain forward pass."""
    from training.data import prompt_tokens
    from training.sampling import SamplingParams, generate, sequence_logprob

    real = torch.ops.mkldnn._linear_pointwise
    prompts = [[{"role": "user", "content": "Name a colour."}]]
    count = {"n": 0}

    def counting(*a, **k):
        count["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting, raising=False)
    out = generate(tiny_model, tokenizer, prompts, k=2, params=SamplingParams(max_new_tokens=6, batch_size=4), seed=0)
    assert count["n"] > 0
    ids = prompt_tokens(tokenizer, prompts[0])
    for s in out[0]:
        assert abs(s.logprob_sum - sequence_logprob(tiny_model, ids, s.token_ids)) < 1e-3
    assert not any("forward" in m.__dict__ for m in tiny_model.modules())  # restored after sampling
