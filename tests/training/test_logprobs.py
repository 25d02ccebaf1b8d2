"""training.logprobs: the chunked LM-head log-probs and the tied-embedding gradients, against autograd."""

import torch

from training.logprobs import token_logps


def test_chunked_token_logps_match_log_softmax_in_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True).double()
    h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    weights = torch.randn(13, dtype=torch.float64)
    ours = token_logps(head, h, targets, chunk=4)  # 4 chunks, the last one short
    ref = torch.log_softmax(head(h), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    g_ours = torch.autograd.grad((ours.double() * weights).sum(), [h, head.weight, head.bias])
    g_ref = torch.autograd.grad((ref * weights).sum(), [h, head.weight, head.bias])
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_token_logps_without_grad_is_the_same():
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 30, bias=False)
    h, targets = torch.randn(7, 6), torch.randint(0, 30, (7,))
    with torch.no_grad():
        a = token_logps(head, h, targets, chunk=3)
    b = token_logps(head, h.requires_grad_(), targets, chunk=3)
    assert torch.allclose(a, b.detach(), atol=1e-6)


def test_tied_embedding_gradients_added_in_place_equal_autograds(tiny_model):
    import copy

    from training.logprobs import response_logps, tie_embedding_grads
    from training.packing import pack, use_packed_attention

    plain, tied = tiny_model, copy.deepcopy(tiny_model)
    assert tie_embedding_grads(tied)
    batch = pack([([1, 2, 9, 11], [20, 21, 2]), ([7, 2], [30, 31, 32, 2])])  # token 2 is the padding index: no gradient row
    for m in (plain, tied):
        use_packed_attention(m)
        m.train()
        for _ in range(2):  # two backward passes: accumulation into the same buffer
            lp = response_logps(m, batch, chunk=2)
            (lp.sums * torch.tensor([1.0, -0.5])).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), tied.named_parameters()):
        assert a.grad is not None and b.grad is not None, name
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_one_chunk_keeps_its_probabilities_with_the_same_gradient(monkeypatch):
    """A single chunk small enough keeps its softmax from the forward pass (no second head
    product in the backward); gradients equal the recomputing path's and autograd's."""
    import training.logprobs as lp

    torch.manual_seed(2)
    head = torch.nn.Linear(8, 40, bias=True).double()
    h0, targets, weights = torch.randn(9, 8, dtype=torch.float64), torch.randint(0, 40, (9,)), torch.randn(9, dtype=torch.float64)
    calls = []
    real_linear = lp.F.linear
    monkeypatch.setattr(lp.F, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    grads = {}
    for keep_bytes in (0, lp.KEEP_PROBS_BYTES):
        monkeypatch.setattr(lp, "KEEP_PROBS_BYTES", keep_bytes)
        calls.clear()
        h = h0.clone().requires_grad_()
        out = token_logps(head, h, targets, chunk=16)  # one chunk
        grads[keep_bytes] = torch.autograd.grad((out.double() * weights).sum(), [h, head.weight, head.bias])
        assert len(calls) == (2 if keep_bytes == 0 else 1)  # the backward recomputes the product only without keeping
    ref_h = h0.clone().requires_grad_()
    ref = torch.log_softmax(real_linear(ref_h, head.weight, head.bias), -1).gather(-1, targets[:, None]).squeeze(-1)
    g_ref = torch.autograd.grad((ref * weights).sum(), [ref_h, head.weight, head.bias])
    for kept, recomputed, r in zip(grads[lp.KEEP_PROBS_BYTES], grads[0], g_ref):
        assert torch.allclose(kept, recomputed, atol=1e-10)
        assert torch.allclose(kept, r, atol=1e-6)
