"""Padding-free packing: sequences laid end to end in one row, each attending only to itself
(and to a shared prefix: a pair's rejected response reuses the prompt laid out before the
chosen one), through a per-segment SDPA attention registered with transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.models import backbone, unwrap


@dataclass
class Packed:
    """Sequences laid end to end in one row, no padding: ``input_ids`` (1, T) and position ids
    restarting per sequence. ``segments`` are (start, end, prefix_start, prefix_end): each
    segment attends causally to itself and fully to its prefix range (empty when equal), which
    lets the rejected response of a pair reuse the prompt already laid out before the chosen one."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: list[tuple[int, int, int, int]]
    target_pos: torch.Tensor  # (N,) positions whose next token is a response token
    target_ids: torch.Tensor  # (N,) those response tokens
    target_seq: torch.Tensor  # (N,) which sequence each belongs to
    seq_last: torch.Tensor  # (S,) position of each sequence's last token
    n_seqs: int

    @property
    def n_tokens(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device) -> Packed:
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.segments, self.target_pos.to(device),
                      self.target_ids.to(device), self.target_seq.to(device), self.seq_last.to(device), self.n_seqs)


class _Builder:
    def __init__(self, n_seqs: int):
        self.ids, self.pos, self.segments = [], [], []
        self.t_pos, self.t_ids, self.t_seq = [], [], []
        self.last = [0] * n_seqs

    def add(self, tokens: list[int], first_position: int, prefix: tuple[int, int] = (0, 0)) -> int:
        start = len(self.ids)
        self.ids.extend(tokens)
        self.pos.extend(range(first_position, first_position + len(tokens)))
        self.segments.append((start, len(self.ids), *prefix))
        return start

    def targets(self, seq: int, positions: list[int], tokens: list[int], last: int) -> None:
        """``last``: where the sequence's final token sits (a reward head reads there)."""
        self.t_pos.extend(positions)
        self.t_ids.extend(tokens)
        self.t_seq.extend([seq] * len(tokens))
        self.last[seq] = last

    def build(self) -> Packed:
        long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return Packed(long([self.ids]), long([self.pos]), self.segments, long(self.t_pos), long(self.t_ids),
                      long(self.t_seq), long(self.last), len(self.last))


def pack(seqs: list[tuple[list[int], list[int]]]) -> Packed:
    """Pack (prompt_ids, response_ids) pairs, one segment each. Position t predicts token
    t + 1, so a response of length R after a prompt of length P starting at ``s`` has its
    targets at positions [s + P - 1, s + P + R - 1)."""
    b = _Builder(len(seqs))
    for i, (prompt, response) in enumerate(seqs):
        s = b.add(prompt + response, 0)
        first = s + len(prompt) - 1
        b.targets(i, list(range(first, first + len(response))), response, last=s + len(prompt) + len(response) - 1)
    return b.build()


def pack_pairs(triples: list[tuple[list[int], list[int], list[int]]]) -> Packed:
    """Pack (prompt, chosen, rejected) with the prompt laid out once per pair:
    [prompt + chosen][rejected], the rejected segment attending to the prompt as its prefix
    with positions continuing after it. Sequences 0..n-1 are the chosen, n..2n-1 the
    rejected. Equal to packing (prompt, chosen) and (prompt, rejected) separately, with the
    prompt computed once instead of twice."""
    n = len(triples)
    b = _Builder(2 * n)
    for i, (prompt, chosen, rejected) in enumerate(triples):
        s = b.add(prompt + chosen, 0)
        p_last = s + len(prompt) - 1  # its hidden state predicts both responses' first token
        b.targets(i, list(range(p_last, p_last + len(chosen))), chosen, last=p_last + len(chosen))
        r = b.add(rejected, len(prompt), prefix=(s, s + len(prompt)))
        b.targets(n + i, [p_last] + list(range(r, r + len(rejected) - 1)), rejected, last=r + len(rejected) - 1)
    return b.build()


def pack_shared(seqs: list[tuple[list[int], list[int]]]) -> Packed:
    """Pack (prompt_ids, response_ids) like ``pack``, but consecutive sequences with the same
    prompt lay it out once: [prompt + r0][r1][r2]..., each later response attending to the
    prompt as its prefix with positions continuing after it (as ``pack_pairs`` does for two).
    Sequence i keeps index i, its targets in order; equal to ``pack`` with the prompt's
    computation shared by its k samples."""
    b = _Builder(len(seqs))
    i = 0
    while i < len(seqs):
        prompt = seqs[i][0]
        j = i + 1
        while j < len(seqs) and seqs[j][0] == prompt:
            j += 1
        first = seqs[i][1]
        s = b.add(prompt + first, 0)
        p_last = s + len(prompt) - 1  # its hidden state predicts every response's first token
        b.targets(i, list(range(p_last, p_last + len(first))), first, last=p_last + len(first))
        for m in range(i + 1, j):
            response = seqs[m][1]
            r = b.add(response, len(prompt), prefix=(s, s + len(prompt)))
            b.targets(m, [p_last] + list(range(r, r + len(response) - 1)), response, last=r + len(response) - 1)
        i = j
    return b.build()


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention within each packed segment (plus its prefix), never across sequences, with
    no T x T mask: ``torch`` SDPA per segment. query (B, H, T, D), key/value (B, Hkv, T, D)
    -> (B, T, H, D)."""
    segments = kwargs.get("packed_segments")
    if segments is None:  # an ordinary call (e.g. generate): the stock SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outs = []
    for a, b, pa, pb in segments:
        if pa == pb:
            outs.append(F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                                       scale=scaling, dropout_p=p, enable_gqa=gqa))
        else:
            k = torch.cat([key[:, :, pa:pb], key[:, :, a:b]], dim=2)
            v = torch.cat([value[:, :, pa:pb], value[:, :, a:b]], dim=2)
            n, m = b - a, pb - pa
            mask = torch.ones(n, m + n, dtype=torch.bool, device=query.device).tril(m)  # (L, P + L): prefix + causal
            outs.append(F.scaled_dot_product_attention(query[:, :, a:b], k, v, attn_mask=mask, scale=scaling,
                                                       dropout_p=p, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _padding_mask(attention_mask=None, **kwargs):
    """The mask builder for ``prefloop_packed``: none for a packed row (its segments are the
    mask), SDPA's for an ordinary padded batch (generate, a left-padded prefill). Without one,
    transformers builds no mask for a custom attention, and padding would be attended to."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def use_packed_attention(model) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("prefloop_packed", _packed_sdpa)
    AttentionMaskInterface.register("prefloop_packed", _padding_mask)
    unwrap(model).set_attn_implementation("prefloop_packed")


def restore_attention(model) -> None:
    unwrap(model).set_attn_implementation("sdpa")


def hidden_states(model, packed: Packed) -> torch.Tensor:
    """(T, H) last hidden states of the packed row."""
    out = backbone(model)(input_ids=packed.input_ids, position_ids=packed.position_ids,
                          packed_segments=packed.segments, use_cache=False)
    return out.last_hidden_state[0]
