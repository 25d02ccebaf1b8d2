"""Each loss against numbers worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from training import losses

t = torch.tensor


def test_sft_mean_nll_over_response_tokens_only():
    # Response token probabilities 0.7, 0.6, 0.9, 0.8; two prompt tokens (p = 0.01) masked out.
    # -(ln 0.7 + ln 0.6 + ln 0.9 + ln 0.8) / 4 = (0.3567 + 0.5108 + 0.1054 + 0.2231) / 4 = 0.2990
    logps = t([[0.01, 0.01, 0.7, 0.6], [0.9, 0.8, 0.01, 0.01]]).log()
    mask = t([[0, 0, 1, 1], [1, 1, 0, 0]])
    assert losses.sft_nll(logps, mask).item() == pytest.approx(0.2990, abs=1e-4)


def test_bradley_terry():
    # r_w = 2.1, r_l = 0.4: P = σ(1.7) = 1 / (1 + e^-1.7) = 0.8455; loss = -ln 0.8455 = 0.1678
    loss = losses.bradley_terry(t([2.1]), t([0.4]))
    assert torch.sigmoid(t(1.7)).item() == pytest.approx(0.8455, abs=1e-4)
    assert loss.item() == pytest.approx(0.1678, abs=1e-4)
    # Margin 0.7: -ln σ(1.0) = ln(1 + e^-1) = 0.3133
    assert losses.bradley_terry(t([2.1]), t([0.4]), margin=0.7).item() == pytest.approx(0.3133, abs=1e-4)
    # Centering 0.01 · (2.1 + 0.4)² = 0.0625 on top: 0.2303
    assert losses.bradley_terry(t([2.1]), t([0.4]), center_coef=0.01).item() == pytest.approx(0.2303, abs=1e-4)
    # Equal rewards: ln 2
    assert losses.bradley_terry(t([0.3]), t([0.3])).item() == pytest.approx(math.log(2), abs=1e-6)


# logp_w = -10, logp_l = -12, ref_w = ref_l = -11: Δ_w = 1, Δ_l = -1, h = 2; β = 0.1 -> βh = 0.2
W, L, RW, RL = t([-10.0]), t([-12.0]), t([-11.0]), t([-11.0])


@pytest.mark.parametrize(
    "loss_type, eps, expected",
    [
        ("sigmoid", 0.0, 0.5981),  # ln(1 + e^-0.2) = ln 1.8187 = 0.5981
        ("sigmoid", 0.1, 0.6181),  # cDPO: 0.9 · 0.5981 + 0.1 · ln(1 + e^0.2) = 0.5383 + 0.0798
        ("robust", 0.1, 0.5731),  # (0.9 · 0.5981 - 0.1 · 0.7981) / 0.8 = 0.4585 / 0.8
        ("ipo", 0.0, 9.0),  # (2 - 1 / (2 · 0.1))² = (2 - 5)² = 9
        ("hinge", 0.0, 0.8),  # max(0, 1 - 0.2)
    ],
)
def test_dpo_family(loss_type, eps, expected):
    got = losses.dpo(W, L, RW, RL, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    assert got.item() == pytest.approx(expected, abs=1e-4)


def test_dpo_at_the_reference_is_ln2_and_unknown_type_is_refused():
    assert losses.dpo(RW, RL, RW, RL, beta=0.1).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        losses.dpo(W, L, RW, RL, loss_type="nope")


def test_simpo():
    # avg_w = -1.0, avg_l = -1.5, β = 2, γ = 0.5: z = 2 · 0.5 - 0.5 = 0.5; ln(1 + e^-0.5) = 0.4741
    assert losses.simpo(t([-1.0]), t([-1.5]), beta=2.0, gamma=0.5).item() == pytest.approx(0.4741, abs=1e-4)


def test_dpo_rewards_and_gradient_direction():
    assert losses.dpo_rewards(t([-10.0]), t([-11.0]), 0.1).item() == pytest.approx(0.1)
    w = t([-10.0], requires_grad=True)
    losses.dpo(w, L, RW, RL).sum().backward()
    assert w.grad.item() < 0  # raising the chosen log-prob lowers the loss
