"""Response-only log-probs: the LM head runs only at response positions, in chunks whose
logits are recomputed in the backward pass (never (N, V) logits at once), and an LM head tied
to the input embedding accumulates both gradients into one buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.models import unwrap
from training.packing import Packed, hidden_states


def _accumulate_into_grad(weight: torch.Tensor) -> bool:
    """Whether backward should add this weight's gradient into ``weight.grad`` itself. Only for
    an LM head tied to the input embedding (see ``tie_embedding_grads``): both uses then add
    into one buffer instead of autograd summing two dense (V, H) gradients."""
    return weight.is_leaf and getattr(weight, "_prefloop_tied", False)


def _grad_buffer(weight: torch.Tensor) -> torch.Tensor:
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    return weight.grad


class _EmbeddingIntoGrad(torch.autograd.Function):
    """An embedding lookup whose backward index-adds into ``weight.grad`` in place (the stock
    backward builds a dense (V, H) gradient that autograd then adds to the LM head's)."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat_ids, flat_grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:  # like F.embedding: the padding row gets no gradient
            keep = flat_ids != ctx.padding_idx
            flat_ids, flat_grad = flat_ids[keep], flat_grad[keep]
        _grad_buffer(ctx.weight).index_add_(0, flat_ids, flat_grad.to(ctx.weight.dtype))
        return None, None, None


def tie_embedding_grads(model) -> bool:
    """For a model whose LM head is its input embedding and trains: both gradients go into the
    one ``.grad`` buffer in place (saves a (V, H) gradient at the peak: 113 MB for SmolLM2).
    Returns whether it applied."""
    inner = unwrap(model)
    emb, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    if head is None or emb.weight is not head.weight or not emb.weight.requires_grad:
        return False
    emb.weight._prefloop_tied = True
    padding_idx = emb.padding_idx

    def forward(ids):
        if torch.is_grad_enabled():
            return _EmbeddingIntoGrad.apply(ids, emb.weight, padding_idx)
        return F.embedding(ids, emb.weight, padding_idx)

    emb.forward = forward
    return True


KEEP_PROBS_BYTES = 256 * 2**20


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log p(target | h) = (h·W)[target] - logsumexp(h·W) for N positions, in chunks of rows.

    Forward keeps no logits: only h, W, targets and the per-row logsumexp (a single chunk of
    at most KEEP_PROBS_BYTES keeps its probabilities instead). Backward recomputes
    one chunk's logits at a time and accumulates the weight gradient in place into one (V, H)
    buffer, so the peak is one (chunk, V) block, not (N, V) logits plus a (V, H) gradient per
    chunk (the idea of Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy,
    Wijmans et al. 2024). With g the incoming gradient per row:
        dlogits = g ⊙ (onehot(target) - softmax(logits)),  dh = dlogits·W,  dW = dlogitsᵀ·h
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk):
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lse = torch.empty_like(out)
        # A single chunk whose probabilities fit KEEP_PROBS_BYTES keeps them for the backward
        # pass instead of recomputing the head's product there (an RL minibatch: 256 tokens,
        # 50 MB for SmolLM2's vocabulary, ~0.2 s of a step on this CPU).
        keep = h.shape[0] <= chunk and h.shape[0] * weight.shape[0] * 4 <= KEEP_PROBS_BYTES
        ctx.probs = None
        for a in range(0, h.shape[0], chunk):
            logits = F.linear(h[a:a + chunk], weight, bias).float()  # (n, V)
            lse[a:a + chunk] = torch.logsumexp(logits, dim=-1)
            out[a:a + chunk] = logits.gather(-1, targets[a:a + chunk, None]).squeeze(-1) - lse[a:a + chunk]
            if keep:
                ctx.probs = logits.sub_(lse[a:a + chunk, None]).exp_()
        ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.chunk = chunk
        ctx.into_param = _accumulate_into_grad(weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, bias, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            # Straight into the parameter's .grad (see _accumulate_into_grad): no second (V, H) buffer.
            grad_w = _grad_buffer(weight) if ctx.into_param else torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for a in range(0, h.shape[0], chunk):
            hc = h[a:a + chunk]
            if ctx.probs is not None:  # kept by the forward pass (one chunk)
                d, ctx.probs = ctx.probs.neg_(), None
            else:
                logits = F.linear(hc, weight, bias).float()
                d = torch.exp(logits - lse[a:a + chunk, None]).neg_()  # -softmax, (n, V)
            d.scatter_add_(-1, targets[a:a + chunk, None], torch.ones_like(lse[a:a + chunk, None]))
            d.mul_(grad_out[a:a + chunk, None])
            d = d.to(h.dtype)
            if grad_h is not None:
                grad_h[a:a + chunk] = d @ weight
            if grad_w is not None:
                grad_w.addmm_(d.t(), hc)
            if grad_b is not None:
                grad_b.add_(d.sum(0))
        return grad_h, None if ctx.into_param else grad_w, grad_b, None, None


def token_logps(head: torch.nn.Linear, h: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) log-probs of ``targets`` under ``head(h)``, never holding more than (chunk, V) logits."""
    if not torch.is_grad_enabled() or not (h.requires_grad or head.weight.requires_grad):
        parts = []
        for a in range(0, h.shape[0], chunk):
            logits = head(h[a:a + chunk]).float()
            parts.append(logits.gather(-1, targets[a:a + chunk, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
        return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    return _ChunkedTokenLogProbs.apply(h, head.weight, head.bias, targets, chunk)


@dataclass
class LogProbs:
    sums: torch.Tensor  # (S,) sum of response-token log-probs per sequence
    counts: torch.Tensor  # (S,) response tokens per sequence
    tokens: torch.Tensor  # (N,) every response token's log-prob, sequence after sequence

    @property
    def means(self) -> torch.Tensor:
        return self.sums / self.counts.clamp_min(1)


def response_logps(model, packed: Packed, *, chunk: int = 1024) -> LogProbs:
    """Per-sequence sums and counts of response-token log-probs, and the token log-probs.

    The LM head runs only at response positions (no logits for prompt or padding), in chunks
    (``token_logps``): at most (chunk, V) logits alive at a time, recomputed in the backward
    pass instead of stored."""
    h = hidden_states(model, packed)[packed.target_pos]  # (N, H)
    head = unwrap(model).get_output_embeddings()
    token_lp = token_logps(head, h, packed.target_ids, chunk)  # (N,)
    sums = torch.zeros(packed.n_seqs, dtype=token_lp.dtype, device=h.device).index_add(0, packed.target_seq, token_lp)
    counts = torch.bincount(packed.target_seq, minlength=packed.n_seqs)
    return LogProbs(sums, counts, token_lp)
