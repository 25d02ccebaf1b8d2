"""Losses as small pure functions on per-example tensors; each returns per-example losses
(reduce with ``.mean()``) so callers can weight, mask or log them. Tested against numbers
worked out by hand in ``tests/training/test_losses.py``.

Notation: ``logp_w`` / ``logp_l`` are summed log-probs of the chosen (w) / rejected (l)
response under the policy, ``ref_w`` / ``ref_l`` under the frozen reference; Δ = logp - ref.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: mean negative log-likelihood over response tokens.

        L = -(1 / Σ m_t) Σ_t m_t log p(y_t | x, y_<t)

    ``token_logps`` (N,) or (B, T) log-probs of the target tokens; ``mask`` same shape, 1 on
    response tokens. Returns a scalar: the token-weighted mean over the whole batch, as
    TRL's SFTTrainer and a causal-LM cross-entropy with ignore_index=-100 compute it.
    """
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp_min(1)


def bradley_terry(
    r_w: torch.Tensor, r_l: torch.Tensor, *, margin: torch.Tensor | float | None = None, center_coef: float = 0.0
) -> torch.Tensor:
    """Reward model loss under the Bradley-Terry model (Bradley & Terry 1952; Ouyang et al. 2022,
    "Training language models to follow instructions with human feedback", eq. 1):

        P(y_w > y_l | x) = σ(r_w - r_l),   L = -log σ(r_w - r_l - m)

    with an optional per-pair margin m (Llama 2, Touvron et al. 2023, eq. 2) and an optional
    centering term c · (r_w + r_l)² that keeps rewards near zero (Eisenstein et al. 2023,
    "Helping or herding?"; TRL's ``center_rewards_coefficient``).
    """
    diff = r_w - r_l
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff)
    if center_coef:
        loss = loss + center_coef * (r_w + r_l) ** 2
    return loss


def dpo(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The DPO family, on h = (logp_w - ref_w) - (logp_l - ref_l) = Δ_w - Δ_l:

    - ``sigmoid``: DPO (Rafailov et al. 2023, eq. 7): L = -log σ(β h). With label smoothing ε it
      is conservative DPO (cDPO, Mitchell 2023): L = -(1-ε) log σ(β h) - ε log σ(-β h).
    - ``robust``: robust DPO (Chowdhury et al. 2024, eq. 9), unbiased under label-flip rate ε:
      L = ((1-ε)(-log σ(β h)) + ε log σ(-β h)) / (1 - 2ε).
    - ``ipo``: IPO (Azar et al. 2023, eq. 17): L = (h - 1/(2β))². Callers pass length-averaged
      log-probs for IPO, as TRL does.
    - ``hinge``: SLiC-HF (Zhao et al. 2023, eq. 2 with δ = 1/β): L = max(0, 1 - β h).
    """
    h = (logp_w - ref_w) - (logp_l - ref_l)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    if loss_type == "robust":
        return (-F.logsigmoid(beta * h) * (1 - label_smoothing) + F.logsigmoid(-beta * h) * label_smoothing) / (
            1 - 2 * label_smoothing
        )
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    raise ValueError(f"unknown DPO loss_type {loss_type!r}")


def simpo(
    avg_logp_w: torch.Tensor, avg_logp_l: torch.Tensor, *, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0
) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6): reference-free, length-normalised, target margin γ:

        L = -log σ(β · avg_logp_w - β · avg_logp_l - γ)

    where avg_logp is the response's log-prob divided by its token count. ε smooths as cDPO.
    """
    z = beta * (avg_logp_w - avg_logp_l) - gamma
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


def dpo_rewards(logp: torch.Tensor, ref: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward r = β (log π(y|x) - log π_ref(y|x)) (Rafailov et al. 2023, §5)."""
    return beta * (logp - ref)
