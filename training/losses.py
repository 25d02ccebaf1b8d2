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


# ---------------------------------------------------------------- online RL (PPO / RLOO / GRPO)
# Per-token tensors are (B, T) with a 0/1 ``mask`` over each response's tokens (left-aligned).


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as TRL whitens)."""
    mean = masked_mean(x, mask)
    centred = x - mean
    n = mask.sum().clamp_min(2)
    var = (centred.pow(2) * mask).sum() / (n - 1)
    out = centred * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the sampled token's log-probs (Schulman 2020):
    k1 = log π − log π_ref (unbiased, can be negative), k3 = exp(−k1) + k1 − 1 (unbiased, ≥ 0)."""
    k1 = logp - ref_logp
    if estimator == "k1":
        return k1
    if estimator == "k3":
        return torch.exp(-k1) + k1 - 1
    raise ValueError("estimator must be k1 or k3")


def ppo_token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float):
    """InstructGPT's reward per token: r̃_t = −β·(log π(y_t) − log π_ref(y_t)), plus the reward
    model's score at the response's last token. Returns (rewards (B, T), kl (B, T))."""
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016) per response, the value after the
    last token being 0: δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}. Returns (advantages,
    returns = advantages + values), both (B, T), 0 past each response's end."""
    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float,
                        clip_eps_high: float | None = None):
    """PPO's clipped surrogate, per element: max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε_high)) with
    ρ = exp(logp − old_logp). Returns (losses, ratio, clipped: where the clipped term won)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + (clip_eps if clip_eps_high is None else clip_eps_high))
    return torch.maximum(unclipped, clipped), ratio, (clipped > unclipped)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float):
    """0.5·max((V − R)², (clip(V, V_old ± c) − R)²) per token; and where the clipped term won."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    a, b = (values - returns).pow(2), (v_clipped - returns).pow(2)
    return 0.5 * torch.maximum(a, b), (b > a)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out: each sample's reward minus the mean reward of the other k − 1 samples of
    its prompt. ``rewards`` (P·k,), the k samples of a prompt consecutive."""
    grouped = rewards.view(-1, k)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def group_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (r − mean of its group) / (std of its group + eps), the std unbiased (as TRL)."""
    grouped = rewards.view(-1, k)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)).reshape(-1)


class AdaptiveKLController:
    """Ziegler et al. 2019: β ← β·(1 + clip(KL / target − 1, −0.2, 0.2)·n / horizon), after each
    rollout of n episodes whose mean per-sequence KL was KL."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon
        return self.value
