"""training.evaluation: each figure against numbers worked out by hand (the arithmetic is in the
comments), then the model parts on tiny random models with the real tokenizer."""

import pytest

from training import evaluation as ev
from training.sampling import SamplingParams, sequence_logprob

Z2 = 1.959963984540054 ** 2  # 3.841459


def test_wilson_interval_by_hand():
    # 7 of 10: p = 0.7, z²/n = 0.384146, denominator 1.384146
    # center = (0.7 + 0.192073) / 1.384146 = 0.644487
    # half = 1.959964 / 1.384146 · sqrt(0.21 / 10 + 3.841459 / 400) = 1.416009 · 0.174939 = 0.247715
    low, high = ev.wilson_interval(7, 10)
    assert (low, high) == (pytest.approx(0.396772, abs=1e-5), pytest.approx(0.892202, abs=1e-5))
    # 0 of 10: center = half = 0.192073 / 1.384146 = 0.138766 -> (0, 0.277532); 10 of 10 mirrors it.
    assert ev.wilson_interval(0, 10) == (0.0, pytest.approx(0.277532, abs=1e-5))
    assert ev.wilson_interval(10, 10) == (pytest.approx(0.722468, abs=1e-5), pytest.approx(1.0))
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        ev.wilson_interval(11, 10)


def test_win_rate_counts_ties_half():
    # 5 wins + 4 ties (= 2 wins) + 1 loss: 7 of 10, the interval above.
    r = ev.win_rate(5, 4, 1)
    assert r.rate == pytest.approx(0.7) and (r.low, r.high) == (pytest.approx(0.396772, abs=1e-5), pytest.approx(0.892202, abs=1e-5))
    # All ties: 0.5, and the interval is symmetric around it.
    r = ev.win_rate(0, 4, 0)
    assert r.rate == 0.5 and r.low == pytest.approx(1 - r.high)
    assert ev.win_rate(0, 0, 0) == ev.WinRate(0.5, 0.0, 1.0)


def test_pairwise_outcomes_are_hard_comparisons():
    # 1.0 > 0.5 win, 0.5 = 0.5 tie, 2.0 < 3.0 loss, -1 > -2 win
    assert ev.pairwise_outcomes([1.0, 0.5, 2.0, -1.0], [0.5, 0.5, 3.0, -2.0]) == (2, 1, 1)
    with pytest.raises(ValueError):
        ev.pairwise_outcomes([1.0], [])


def test_kl_estimate_mean_log_ratio():
    # log π_new − log π_ref per sample: -10 − (-11) = 1, -12 − (-11.5) = -0.5, -8 − (-9.5) = 1.5; mean 2/3
    assert ev.kl_estimate([-10.0, -12.0, -8.0], [-11.0, -11.5, -9.5]) == pytest.approx(2 / 3)
    assert ev.kl_estimate([], []) == 0.0


def test_mean_length_and_distinct_2():
    assert ev.mean_length([3, 5, 10]) == 6.0 and ev.mean_length([]) == 0.0
    # Bigrams (the cat) (cat sat) (the cat) (cat ran): 3 unique of 4
    assert ev.distinct_n([["the", "cat", "sat"], ["the", "cat", "ran"]]) == 0.75
    # Within each response only: (a b) and (b a), not (b b) across the boundary
    assert ev.distinct_n([["a", "b"], ["b", "a"]]) == 1.0
    assert ev.distinct_n([["a"], []]) == 0.0
    assert ev.distinct_n([[1, 1, 1, 1]]) == pytest.approx(1 / 3)  # (1 1) three times


# ---------------------------------------------------------------- with models

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Tell me a long story about a dragon and a castle, please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
]
P = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=2)


@pytest.fixture(scope="module")
def models(tiny_policy, tiny_policy_other):
    from training.models import load_policy
    from training.reward import load_reward_model

    return load_policy(tiny_policy, device="cpu"), load_policy(tiny_policy_other, device="cpu"), load_reward_model(tiny_policy, device="cpu")


def test_response_logprob_equals_a_full_forward(models):
    from training.data import prompt_tokens

    (model, tok), _, _ = models
    p = prompt_tokens(tok, PROMPTS[1])
    response = tok("Once upon a time", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ev.response_logprob(model, p, response) == pytest.approx(sequence_logprob(model, p, response), abs=1e-4)
    assert ev.response_logprob(model, p, []) == 0.0


def test_reward_scores_do_not_depend_on_the_batch(models):
    from training.data import prompt_tokens, response_tokens
    from training.models import backbone, unwrap
    from training.reward import score

    _, _, (rm, rtok) = models
    items = [(PROMPTS[0], "Hello there."), (PROMPTS[1], "Once upon a time."), (PROMPTS[2], "4")]
    together, alone = score(rm, rtok, items), score(rm, rtok, items, batch_size=1)
    assert together == pytest.approx(alone, abs=1e-4) and len(set(together)) == 3
    # Read at the response's last token (its EOS), as in training.
    import torch

    p = prompt_tokens(rtok, PROMPTS[2])
    ids = p + response_tokens(rtok, PROMPTS[2], p, "4")
    with torch.no_grad():
        h = backbone(rm)(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        assert together[2] == pytest.approx(unwrap(rm).score(h).item(), abs=1e-4)


def test_a_policy_against_itself_ties_everywhere_with_zero_kl(models):
    (model, tok), _, (rm, rtok) = models
    r = ev.evaluate_policy(model, tok, model, tok, model, PROMPTS, rm, rtok, P, seed=3)
    # Same model, same seed: the same texts, so every pair is a tie and KL to itself is exactly 0.
    assert (r.n_prompts, r.wins, r.ties, r.losses, r.win_rate, r.kl) == (3, 0, 3, 0, 0.5, 0.0)
    assert r.mean_length_new == r.mean_length_active and r.distinct2_new == r.distinct2_active
    assert [e["outcome"] for e in r.examples] == ["tie"] * 3 and all(e["new"] == e["active"] for e in r.examples)


def test_two_policies_figures_in_range_and_reproducible(models):
    (model, tok), (other, other_tok), (rm, rtok) = models
    r = ev.evaluate_policy(model, tok, other, other_tok, other, PROMPTS, rm, rtok, P, seed=5, n_examples=2)
    assert r.wins + r.ties + r.losses == 3 and 0 <= r.win_low <= r.win_rate <= r.win_high <= 1
    assert r.kl != 0.0 and 1 <= r.mean_length_new <= 8 and 1 <= r.mean_length_active <= 8
    assert 0 <= r.distinct2_new <= 1 and 0 <= r.distinct2_active <= 1
    assert len(r.examples) == 2 and set(r.examples[0]) == {"prompt", "new", "active", "reward_new", "reward_active", "outcome", "seed"}
    assert ev.evaluate_policy(model, tok, other, other_tok, other, PROMPTS, rm, rtok, P, seed=5, n_examples=2) == r
    with pytest.raises(ValueError, match="no eval prompts"):
        ev.evaluate_policy(model, tok, other, other_tok, other, [], rm, rtok, P, seed=5)
