"""training.packing: packed rows equal ordinary unpadded forwards, pairs share their prompt
(tiny random model, real SmolLM2 tokenizer)."""

import pytest
import torch

from training.logprobs import response_logps
from training.packing import hidden_states, pack, pack_pairs, restore_attention, use_packed_attention


def test_packed_forward_equals_separate_forwards_and_masks_prompts(tiny_model, tokenizer):
    seqs = [([1, 5, 9, 11], [20, 21, 2]), ([7, 8], [30, 31, 32, 33, 2]), ([4, 4, 4, 4, 4, 4], [40, 2])]
    packed = pack(seqs)
    # Only response tokens are targets, each predicted from the position before it.
    assert packed.target_ids.tolist() == [t for _, r in seqs for t in r]
    assert (packed.input_ids[0, packed.target_pos + 1] == packed.target_ids).all()
    prompt_positions = {start + j for (p, _), start in zip(seqs, [seg[0] for seg in packed.segments]) for j in range(len(p))}
    assert not prompt_positions & set((packed.target_pos + 1).tolist())  # no prompt token is ever a target
    use_packed_attention(tiny_model)
    try:
        with torch.no_grad():
            lp = response_logps(tiny_model, packed, chunk=3)  # several head chunks
    finally:
        restore_attention(tiny_model)
    with torch.no_grad():
        for i, (p, r) in enumerate(seqs):
            ids = torch.tensor([p + r])
            labels = torch.tensor([[-100] * len(p) + r])
            # HF's own causal-LM loss with prompt labels masked: mean NLL over the response tokens.
            nll = tiny_model(input_ids=ids, labels=labels).loss
            assert lp.sums[i].item() == pytest.approx(-nll.item() * len(r), abs=1e-4)
            assert lp.counts[i].item() == len(r)


def test_pairs_share_their_prompt_and_equal_separate_sequences(tiny_model):
    triples = [([1, 5, 9, 11], [20, 21, 2], [22, 2]), ([7, 8], [30, 31, 32, 33, 2], [34, 35, 36, 2])]
    shared = pack_pairs(triples)
    separate = pack([(p, c) for p, c, _ in triples] + [(p, r) for p, _, r in triples])
    assert shared.n_tokens == separate.n_tokens - sum(len(p) for p, _, _ in triples)  # each prompt once
    use_packed_attention(tiny_model)
    try:
        with torch.no_grad():
            a, b = response_logps(tiny_model, shared), response_logps(tiny_model, separate)
            ha, hb = hidden_states(tiny_model, shared), hidden_states(tiny_model, separate)
    finally:
        restore_attention(tiny_model)
    assert torch.allclose(a.sums, b.sums, atol=1e-4) and torch.equal(a.counts, b.counts)
    # The last token of every sequence (where the reward head reads) has the same hidden state.
    assert torch.allclose(ha[shared.seq_last], hb[separate.seq_last], atol=1e-4)


def test_one_token_rejected_response_is_read_at_its_own_position():
    packed = pack_pairs([([1, 5, 9], [20, 21, 2], [2])])  # an empty rejected reply is just its EOS
    assert packed.seq_last.tolist() == [5, 6] and packed.input_ids[0, 6].item() == 2
    assert packed.target_pos.tolist() == [2, 3, 4, 2]  # the prompt's last position predicts both first tokens
