"""A model leaderboard from pairwise battles, as Chatbot Arena computes it (FastChat's
``serve/monitor/rating_systems.py``): Bradley-Terry maximum likelihood (ties count half a win
each way), on the Elo scale (400 points per factor 10 of odds, 1000 for the mean model), 95%
intervals from a bootstrap that resamples the battles (multinomial counts over the distinct
(model A, model B, outcome) rows), and rank = 1 + the number of models whose lower bound is
above this one's upper bound. Beside it, a length-controlled win rate against a baseline model
(AlpacaEval 2's idea): a logistic GLM of "A won" on the model difference and the length
difference of the two responses, predicted at zero length difference. Torch-free; numpy, scipy
and statsmodels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCALE, BASE, INIT = 400.0, 10.0, 1000.0


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    outcome: float  # 1: A won, 0: B won, 0.5: a tie
    length_a: int | None = None
    length_b: int | None = None


@dataclass
class Rating:
    model: str
    rating: float
    low: float
    high: float
    rank: int
    battles: int
    wins: float  # ties half
    lc_win_rate: float | None = None  # length-controlled win rate against the baseline model

    def as_dict(self) -> dict:
        return asdict(self)


def _schedule(battles: list[Battle]):
    import numpy as np

    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {m: i for i, m in enumerate(models)}
    rows = np.array([[index[b.model_a], index[b.model_b], int(round(b.outcome * 2))] for b in battles], dtype=np.int64)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    return models, unique[:, :2], unique[:, 2] / 2.0, counts.astype(float)


def _fit(matchups, outcomes, weights, n_models: int, tol: float = 1e-8):
    """BT log-ratings (natural log-odds scale; mean 0) maximising the weighted likelihood. A
    tiny L2 term (1e-6) keeps a model that never lost finite, as FastChat's optimiser does."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    def loss_grad(r):
        logits = r[matchups[:, 0]] - r[matchups[:, 1]]
        p = expit(logits)
        eps = 1e-12
        loss = -(weights * (outcomes * np.log(p + eps) + (1 - outcomes) * np.log(1 - p + eps))).sum() + 1e-6 * (r @ r)
        g = -(outcomes - p) * weights
        grad = np.zeros_like(r)
        np.add.at(grad, matchups[:, 0], g)
        np.add.at(grad, matchups[:, 1], -g)
        return loss, grad + 2e-6 * r

    result = minimize(loss_grad, np.zeros(n_models), jac=True, method="L-BFGS-B", options={"gtol": tol, "maxiter": 1000})
    r = result.x
    return r - r.mean()


def _elo(r):
    return SCALE * r / math.log(BASE) + INIT


def bradley_terry(battles: list[Battle], *, rounds: int = 200, seed: int = 0, baseline: str | None = None) -> list[Rating]:
    """Ratings best first (see the module docstring); ``rounds`` bootstrap refits for the
    intervals; ``baseline``: the model the length-controlled win rates are against."""
    import numpy as np

    if not battles:
        return []
    for b in battles:
        if b.outcome not in (0.0, 0.5, 1.0):
            raise ValueError(f"outcome must be 0, 0.5 or 1, got {b.outcome!r}")
        if b.model_a == b.model_b:
            raise ValueError(f"a battle needs two different models, got {b.model_a!r} twice")
    models, matchups, outcomes, weights = _schedule(battles)
    point = _elo(_fit(matchups, outcomes, weights, len(models)))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(weights.sum()), weights / weights.sum(), size=rounds)
    boot = np.array([_elo(_fit(matchups, outcomes, w.astype(float), len(models))) for w in draws])
    low, high = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    count = {m: 0 for m in models}
    wins = {m: 0.0 for m in models}
    for b in battles:
        count[b.model_a] += 1
        count[b.model_b] += 1
        wins[b.model_a] += b.outcome
        wins[b.model_b] += 1 - b.outcome
    lc = length_controlled_win_rates(battles, baseline=baseline) if baseline else {}
    out = [Rating(model=m, rating=float(point[i]), low=float(low[i]), high=float(high[i]), rank=0, battles=count[m],
                  wins=wins[m], lc_win_rate=lc.get(m)) for i, m in enumerate(models)]
    for r in out:
        r.rank = 1 + sum(1 for other in out if other.low > r.high)
    return sorted(out, key=lambda r: -r.rating)


def length_controlled_win_rates(battles: list[Battle], *, baseline: str) -> dict[str, float]:
    """For each model that met ``baseline``: a logistic GLM (statsmodels) of "the model won"
    (ties half, as frequency weights of a win and a loss) on an intercept and the standardised
    length difference (model minus baseline, in characters), predicted at zero difference. The
    raw win rate mixes quality with length; this one asks what the win rate would be at equal
    length. Needs lengths on the battles; a model with fewer than 5 battles is left out."""
    import numpy as np
    import statsmodels.api as sm

    out: dict[str, float] = {}
    by_model: dict[str, list[tuple[float, float]]] = {}
    for b in battles:
        if b.length_a is None or b.length_b is None or baseline not in (b.model_a, b.model_b):
            continue
        if b.model_a == baseline:
            model, won, diff = b.model_b, 1 - b.outcome, b.length_b - b.length_a
        else:
            model, won, diff = b.model_a, b.outcome, b.length_a - b.length_b
        by_model.setdefault(model, []).append((won, float(diff)))
    for model, rows in by_model.items():
        if len(rows) < 5:
            continue
        won = np.array([w for w, _ in rows])
        diff = np.array([d for _, d in rows])
        scale = diff.std() or 1.0
        x = np.column_stack([np.ones(len(rows)), diff / scale])
        # A tie is half a win and half a loss: duplicate each row as a win and a loss, weighted.
        y = np.concatenate([np.ones(len(rows)), np.zeros(len(rows))])
        w = np.concatenate([won, 1 - won])
        keep = w > 0
        try:
            fit = sm.GLM(y[keep], np.vstack([x, x])[keep], family=sm.families.Binomial(), freq_weights=w[keep]).fit()
            out[model] = float(1 / (1 + math.exp(-fit.params[0])))
        except Exception:  # perfectly separated data: the raw win rate is all there is
            out[model] = float(won.mean())
    return out
