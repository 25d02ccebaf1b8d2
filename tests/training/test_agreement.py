"""training.agreement against independent references on fixed data: hand-worked percent
agreement, Fleiss' kappa and Krippendorff's alpha from their textbook formulas written out here,
Cohen's kappa by hand and against scikit-learn; per-voter biases planted and found; Dawid-Skene
recovering planted reliabilities on simulated votes."""

import random
from collections import Counter

import pytest

from training.agreement import (
    CATEGORIES,
    VoteRow,
    by_unit,
    campaign_agreement,
    cohen_matrix,
    dawid_skene,
    fleiss,
    krippendorff_alpha,
    majority_vote,
    percent_agreement,
    voter_quality,
)

# 6 comparisons, 3 voters each (u, v, w), and one comparison with 2.
TABLE = {
    1: {"u": "a", "v": "a", "w": "a"},
    2: {"u": "a", "v": "a", "w": "b"},
    3: {"u": "b", "v": "b", "w": "b"},
    4: {"u": "tie", "v": "b", "w": "tie"},
    5: {"u": "both_bad", "v": "both_bad", "w": "a"},
    6: {"u": "b", "v": "a", "w": "b"},
    7: {"u": "a", "v": "b"},
}
ROWS = [VoteRow(unit=u, voter=v, choice=c) for u, votes in TABLE.items() for v, c in votes.items()]


def fleiss_by_hand(table):
    """Fleiss (1971): P_i = (sum n_ij^2 - n) / (n (n-1)), P_bar = mean P_i, p_j = column share, P_e = sum p_j^2."""
    n = sum(table[0])
    N = len(table)
    P = [(sum(x * x for x in row) - n) / (n * (n - 1)) for row in table]
    p = [sum(row[j] for row in table) / (N * n) for j in range(len(table[0]))]
    Pbar, Pe = sum(P) / N, sum(x * x for x in p)
    return (Pbar - Pe) / (1 - Pe)


def alpha_by_hand(units):
    """Krippendorff's nominal alpha from the coincidence matrix: 1 - (n-1) D_o / D_e form,
    alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k."""
    o = Counter()
    for votes in units.values():
        vals = list(votes.values())
        m = len(vals)
        if m < 2:
            continue
        for i, c in enumerate(vals):
            for j, k in enumerate(vals):
                if i != j:
                    o[(c, k)] += 1 / (m - 1)
    n_c = Counter()
    for (c, k), x in o.items():
        n_c[c] += x
    n = sum(n_c.values())
    disagree = sum(x for (c, k), x in o.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    return 1 - (n - 1) * disagree / expected


def test_percent_agreement_by_hand():
    # Pairs agreeing per comparison: 3/3, 1/3, 3/3, 1/3, 1/3, 1/3, 0/1 -> mean.
    assert percent_agreement(by_unit(ROWS)) == pytest.approx((1 + 1 / 3 + 1 + 1 / 3 + 1 / 3 + 1 / 3 + 0) / 7)


def test_fleiss_against_the_formula_on_the_three_vote_comparisons():
    table = [[sum(1 for c in votes.values() if c == cat) for cat in CATEGORIES] for votes in TABLE.values() if len(votes) == 3]
    value, n_units = fleiss(by_unit(ROWS))
    assert n_units == 6 and value == pytest.approx(fleiss_by_hand(table), abs=1e-12)


def test_krippendorff_alpha_against_the_coincidence_matrix():
    assert krippendorff_alpha(by_unit(ROWS)) == pytest.approx(alpha_by_hand(TABLE), abs=1e-9)
    assert krippendorff_alpha({1: {"u": "a", "v": "a"}, 2: {"u": "b", "v": "b"}}) == pytest.approx(1.0)


def test_cohen_by_hand_and_against_sklearn():
    from sklearn.metrics import cohen_kappa_score

    kappa, common = cohen_matrix(by_unit(ROWS), min_common=3)
    u = [TABLE[i]["u"] for i in sorted(TABLE)]
    v = [TABLE[i]["v"] for i in sorted(TABLE)]
    po = sum(a == b for a, b in zip(u, v)) / len(u)
    pe = sum((u.count(c) / len(u)) * (v.count(c) / len(v)) for c in CATEGORIES)
    assert common["u"]["v"] == 7 and kappa["u"]["v"] == pytest.approx((po - pe) / (1 - pe))
    assert kappa["u"]["v"] == pytest.approx(cohen_kappa_score(u, v))
    assert kappa["v"]["u"] == kappa["u"]["v"] and common["u"]["w"] == 6
    assert cohen_matrix(by_unit(ROWS), min_common=7)[0]["u"]["w"] is None  # too few in common


def test_campaign_agreement_bundles_them():
    report = campaign_agreement(ROWS, min_common=3)
    assert (report.units, report.votes, report.fleiss_units) == (7, 20, 6)
    assert report.percent_agreement == pytest.approx(percent_agreement(by_unit(ROWS)))
    with pytest.raises(ValueError, match="unknown choice 'maybe'"):
        campaign_agreement([VoteRow(unit=1, voter="u", choice="maybe")])


def test_voter_quality_finds_planted_biases():
    rng = random.Random(0)
    rows = []
    for unit in range(200):
        truth = rng.choice("ab")
        la, lb = rng.randint(10, 100), rng.randint(101, 200)  # A is the shorter response
        if rng.random() < 0.5:
            la, lb = lb, la
        for voter in ("good1", "good2", "good3"):
            order = rng.choice(["ab", "ba"])
            choice = truth if rng.random() < 0.9 else rng.choice(["a", "b", "tie"])
            rows.append(VoteRow(unit, voter, choice, order, la, lb, seconds=10.0 + unit % 5, gold_correct=choice == truth if unit < 20 else None))
        order = rng.choice(["ab", "ba"])
        rows.append(VoteRow(unit, "lefty", "a" if order == "ab" else "b", order, la, lb, seconds=2.0))  # always the left one
        rows.append(VoteRow(unit, "longer", "a" if la > lb else "b", rng.choice(["ab", "ba"]), la, lb))
    quality = {q.voter: q for q in voter_quality(rows)}
    good = quality["good1"]
    assert good.flags == [] and good.majority_agreement > 0.8 and good.gold_accuracy > 0.75 and good.gold_votes == 20
    assert 0.35 < good.left_share < 0.65 and good.median_seconds == 12.0 and good.tie_rate < 0.1 and good.both_bad_rate == 0
    lefty = quality["lefty"]
    assert lefty.left_share == 1.0 and lefty.left_p_value < 1e-10 and any(f.startswith("position bias") for f in lefty.flags)
    assert lefty.outlier and lefty.majority_agreement < 0.6 and lefty.median_seconds == 2.0
    assert quality["longer"].longer_share == 1.0 and quality["longer"].outlier


def test_dawid_skene_recovers_planted_reliabilities_and_beats_the_majority():
    rng = random.Random(1)
    accuracy = {"w1": 0.95, "w2": 0.9, "w3": 0.85, "spam1": 0.3, "spam2": 0.3}
    rows, truth = [], {}
    for unit in range(400):
        t = rng.choice(["a", "b", "tie"])
        truth[unit] = t
        for voter, acc in accuracy.items():
            choice = t if rng.random() < acc else rng.choice([c for c in ("a", "b", "tie") if c != t])
            rows.append(VoteRow(unit, voter, choice))
    ds = dawid_skene(rows)
    for voter, acc in accuracy.items():
        assert ds.reliability[voter] == pytest.approx(acc, abs=0.06), voter
    ds_correct = sum(ds.labels[u] == t for u, t in truth.items()) / len(truth)
    mv = majority_vote(rows)
    mv_correct = sum(mv.labels.get(u) == t for u, t in truth.items()) / len(truth)
    assert ds_correct > 0.97 and ds_correct >= mv_correct
    assert dawid_skene([]).labels == {}
