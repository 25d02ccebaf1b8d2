"""training.leaderboard: Bradley-Terry recovers planted strengths (and agrees with a plain
logistic regression fit of the same model), ties count half, intervals cover, ranks follow the
Arena rule; the length-controlled win rate removes a planted length effect."""

import math
import random

import pytest

from training.leaderboard import Battle, bradley_terry, length_controlled_win_rates

PLANTED = {"strong": 1.0, "mid": 0.3, "weak": -0.5, "weakest": -0.8}  # natural log-odds


def simulate(n: int, seed: int = 0, ties: float = 0.0) -> list[Battle]:
    rng = random.Random(seed)
    models = list(PLANTED)
    out = []
    for _ in range(n):
        a, b = rng.sample(models, 2)
        if rng.random() < ties:
            out.append(Battle(a, b, 0.5))
            continue
        p = 1 / (1 + math.exp(-(PLANTED[a] - PLANTED[b])))
        out.append(Battle(a, b, 1.0 if rng.random() < p else 0.0))
    return out


def test_recovers_planted_strengths_with_intervals_and_ranks():
    ratings = bradley_terry(simulate(6000), rounds=50)
    assert [r.model for r in ratings] == ["strong", "mid", "weak", "weakest"]
    mean = sum(PLANTED.values()) / len(PLANTED)
    for r in ratings:
        expected = 400 * (PLANTED[r.model] - mean) / math.log(10) + 1000
        assert r.rating == pytest.approx(expected, abs=25), r.model
        assert r.low < r.rating < r.high and r.low <= expected + 25 and r.high >= expected - 25
    ranks = {r.model: r.rank for r in ratings}
    assert ranks["strong"] == 1 and ranks["mid"] == 2  # separated intervals: distinct ranks
    assert sum(r.battles for r in ratings) == 2 * 6000


def test_matches_an_independent_logistic_fit_and_ties_count_half():
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    battles = simulate(3000, seed=1, ties=0.2)
    ratings = {r.model: r.rating for r in bradley_terry(battles, rounds=5)}
    models = sorted(PLANTED)
    x, y, w = [], [], []
    for b in battles:  # a tie: half a win and half a loss (FastChat's duplication)
        row = np.zeros(len(models))
        row[models.index(b.model_a)], row[models.index(b.model_b)] = 1, -1
        for label, weight in ((1, b.outcome), (0, 1 - b.outcome)):
            if weight:
                x.append(row), y.append(label), w.append(weight)
    lr = LogisticRegression(fit_intercept=False, C=1e6, tol=1e-10, max_iter=10000).fit(np.array(x), y, sample_weight=w)
    coef = lr.coef_[0] - lr.coef_[0].mean()
    for i, m in enumerate(models):
        assert ratings[m] == pytest.approx(400 * coef[i] / math.log(10) + 1000, abs=0.5)


def test_bad_battles_are_refused():
    with pytest.raises(ValueError, match="outcome must be 0, 0.5 or 1"):
        bradley_terry([Battle("a", "b", 0.7)])
    with pytest.raises(ValueError, match="two different models"):
        bradley_terry([Battle("a", "a", 1.0)])
    assert bradley_terry([]) == []


def test_length_controlled_win_rate_removes_a_length_effect():
    """A candidate exactly as good as the baseline at equal length, but judged by voters who
    prefer longer answers, writing longer ones: raw win rate well above 0.5, LC near 0.5."""
    rng = random.Random(2)
    battles = []
    for _ in range(4000):
        diff = rng.gauss(300, 200)  # candidate minus baseline, characters
        p = 1 / (1 + math.exp(-(diff / 200)))  # only length matters
        won = 1.0 if rng.random() < p else 0.0
        if rng.random() < 0.5:
            battles.append(Battle("cand", "base", won, length_a=int(1000 + diff), length_b=1000))
        else:
            battles.append(Battle("base", "cand", 1 - won, length_a=1000, length_b=int(1000 + diff)))
    raw = sum(b.outcome if b.model_a == "cand" else 1 - b.outcome for b in battles) / len(battles)
    lc = length_controlled_win_rates(battles, baseline="base")["cand"]
    assert raw > 0.75 and lc == pytest.approx(0.5, abs=0.06)
    assert bradley_terry(battles, rounds=3, baseline="base")[0].lc_win_rate == pytest.approx(lc)
