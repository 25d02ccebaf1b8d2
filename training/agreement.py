"""Agreement between voters (annotators and AI judges alike) and each voter's quality, computed
with the libraries made for it: ``krippendorff`` (alpha), ``statsmodels`` (Fleiss' kappa),
``scikit-learn`` (Cohen's kappa), ``scipy`` (binomial test), ``crowd-kit`` (Dawid-Skene).
Torch-free and Django-free: the web process calls it on plain rows.

A vote is a ``VoteRow``: the comparison (unit), the voter, the choice among the four in A/B
terms (``a``, ``b``, ``tie``, ``both_bad``; the shown left/right already mapped back), which
side was shown on the left (``ab``: A left; ``ba``: B left; "" unknown), the two responses'
lengths, seconds spent, and whether it matched a gold answer (None: not gold).
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

CATEGORIES = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class VoteRow:
    unit: int
    voter: str
    choice: str
    order_shown: str = ""  # "ab": A was on the left; "ba": B was; "": not known (an AI judge)
    length_a: int | None = None
    length_b: int | None = None
    seconds: float | None = None
    gold_correct: bool | None = None


@dataclass
class CampaignAgreement:
    units: int  # comparisons with at least two votes
    votes: int
    percent_agreement: float | None  # share of agreeing voter pairs within a comparison, over comparisons
    fleiss_kappa: float | None  # on the comparisons with the most common number of votes (Fleiss needs a fixed n)
    fleiss_units: int
    krippendorff_alpha: float | None  # nominal, all comparisons, missing votes allowed
    cohen: dict[str, dict[str, float | None]]  # pairwise Cohen's kappa on the comparisons both voted on
    cohen_common: dict[str, dict[str, int]]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class VoterQuality:
    voter: str
    votes: int
    majority_agreement: float | None  # agreement with the others' majority (leave-one-out), where one exists
    majority_units: int
    gold_accuracy: float | None
    gold_votes: int
    left_share: float | None  # share of "left" among its a/b choices whose order is known
    left_p_value: float | None  # binomial test of that share against 0.5 (two-sided)
    longer_share: float | None  # share of choices for the longer response among a/b choices of unequal lengths
    tie_rate: float
    both_bad_rate: float
    median_seconds: float | None
    outlier: bool  # far from the comparison-level vote distribution (see ``voter_quality``)
    divergence: float | None  # its mean total-variation distance to the others' votes per comparison
    flags: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def _category_index(choice: str) -> int:
    return CATEGORIES.index(choice)


def by_unit(rows: list[VoteRow]) -> dict[int, dict[str, str]]:
    """{unit: {voter: choice}}; a voter's last row for a unit wins (there is one per voter)."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r.choice not in CATEGORIES:
            raise ValueError(f"unknown choice {r.choice!r} (unit {r.unit}, voter {r.voter})")
        out[r.unit][r.voter] = r.choice
    return out


def percent_agreement(units: dict[int, dict[str, str]]) -> float | None:
    """Mean over comparisons with >= 2 votes of the share of voter pairs that agree."""
    shares = []
    for votes in units.values():
        choices = list(votes.values())
        if len(choices) < 2:
            continue
        pairs = list(itertools.combinations(choices, 2))
        shares.append(sum(a == b for a, b in pairs) / len(pairs))
    return sum(shares) / len(shares) if shares else None


def fleiss(units: dict[int, dict[str, str]]) -> tuple[float | None, int]:
    """Fleiss' kappa (statsmodels) on the comparisons with the most common vote count (>= 2)."""
    counts = Counter(len(v) for v in units.values() if len(v) >= 2)
    if not counts:
        return None, 0
    n = max(counts, key=lambda k: (counts[k], k))
    table = [[sum(1 for c in v.values() if c == cat) for cat in CATEGORIES] for v in units.values() if len(v) == n]
    if len(table) < 2:
        return None, len(table)
    from statsmodels.stats.inter_rater import fleiss_kappa

    value = float(fleiss_kappa(table, method="fleiss"))
    return (value if math.isfinite(value) else None), len(table)


def krippendorff_alpha(units: dict[int, dict[str, str]]) -> float | None:
    """Nominal Krippendorff's alpha (``krippendorff``), voters x comparisons, missing allowed."""
    import krippendorff
    import numpy as np

    voters = sorted({v for votes in units.values() for v in votes})
    keys = [u for u, votes in units.items() if len(votes) >= 2]
    if len(keys) < 2 or len(voters) < 2:
        return None
    data = np.full((len(voters), len(keys)), np.nan)
    index = {v: i for i, v in enumerate(voters)}
    for j, u in enumerate(keys):
        for voter, choice in units[u].items():
            data[index[voter], j] = _category_index(choice)
    if len({x for x in data.flatten() if not math.isnan(x)}) < 2:
        return 1.0  # every vote the same category: perfect agreement (the formula's 0/0)
    value = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    return value if math.isfinite(value) else None


def cohen_matrix(units: dict[int, dict[str, str]], *, min_common: int = 5) -> tuple[dict, dict]:
    """Cohen's kappa (``sklearn.metrics.cohen_kappa_score``) for each pair of voters on the
    comparisons both voted on (None below ``min_common`` or when undefined), and those counts."""
    from sklearn.metrics import cohen_kappa_score

    voters = sorted({v for votes in units.values() for v in votes})
    kappa: dict[str, dict[str, float | None]] = {v: {} for v in voters}
    common: dict[str, dict[str, int]] = {v: {} for v in voters}
    for x, y in itertools.combinations(voters, 2):
        shared = [(votes[x], votes[y]) for votes in units.values() if x in votes and y in votes]
        common[x][y] = common[y][x] = len(shared)
        value = None
        if len(shared) >= min_common:
            a, b = zip(*shared)
            if len(set(a) | set(b)) > 1:
                with _quiet():
                    k = float(cohen_kappa_score(a, b, labels=list(CATEGORIES)))
                value = k if math.isfinite(k) else None
            else:
                value = 1.0  # both always gave the same single answer
        kappa[x][y] = kappa[y][x] = value
    return kappa, common


class _quiet:
    """Silence numpy's divide warnings for undefined kappas (they become None)."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def campaign_agreement(rows: list[VoteRow], *, min_common: int = 5) -> CampaignAgreement:
    units = by_unit(rows)
    fk, fk_units = fleiss(units)
    kappa, common = cohen_matrix(units, min_common=min_common)
    return CampaignAgreement(
        units=sum(1 for v in units.values() if len(v) >= 2), votes=len(rows),
        percent_agreement=percent_agreement(units), fleiss_kappa=fk, fleiss_units=fk_units,
        krippendorff_alpha=krippendorff_alpha(units), cohen=kappa, cohen_common=common,
    )


def _majority(choices: list[str]) -> str | None:
    """The strict plurality choice, None on a tie for first place."""
    if not choices:
        return None
    top = Counter(choices).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def voter_quality(rows: list[VoteRow], *, min_votes: int = 10, min_agreement: float = 0.5, max_divergence: float = 0.5,
                  max_gold_errors: float = 0.3, alpha: float = 0.01) -> list[VoterQuality]:
    """Per voter (see ``VoterQuality``). Flags for review: agreement with the leave-one-out
    majority below ``min_agreement``, gold accuracy below ``1 - max_gold_errors``, a position
    bias significant at ``alpha``, and ``outlier``: a mean total-variation distance between its
    vote and the others' vote distribution on the same comparisons above ``max_divergence``
    (each only with at least ``min_votes`` of the votes it is computed on)."""
    from scipy.stats import binomtest

    units = by_unit(rows)
    mine: dict[str, list[VoteRow]] = defaultdict(list)
    for r in rows:
        mine[r.voter].append(r)
    out = []
    for voter in sorted(mine):
        vs = mine[voter]
        agree, majority_units, tv = 0, 0, []
        for r in vs:
            others = [c for v, c in units[r.unit].items() if v != voter]
            if not others:
                continue
            m = _majority(others)
            if m is not None:
                majority_units += 1
                agree += m == r.choice
            tv.append(1.0 - others.count(r.choice) / len(others))  # TV distance of a point mass to the others' distribution
        golds = [r.gold_correct for r in vs if r.gold_correct is not None]
        sided = [r for r in vs if r.choice in ("a", "b") and r.order_shown in ("ab", "ba")]
        lefts = sum((r.choice == "a") == (r.order_shown == "ab") for r in sided)
        unequal = [r for r in vs if r.choice in ("a", "b") and r.length_a is not None and r.length_b is not None
                   and r.length_a != r.length_b]
        longer = sum((r.choice == "a") == (r.length_a > r.length_b) for r in unequal)
        seconds = [r.seconds for r in vs if r.seconds is not None]
        q = VoterQuality(
            voter=voter, votes=len(vs),
            majority_agreement=agree / majority_units if majority_units else None, majority_units=majority_units,
            gold_accuracy=sum(golds) / len(golds) if golds else None, gold_votes=len(golds),
            left_share=lefts / len(sided) if sided else None,
            left_p_value=float(binomtest(lefts, len(sided), 0.5).pvalue) if sided else None,
            longer_share=longer / len(unequal) if unequal else None,
            tie_rate=sum(r.choice == "tie" for r in vs) / len(vs),
            both_bad_rate=sum(r.choice == "both_bad" for r in vs) / len(vs),
            median_seconds=statistics.median(seconds) if seconds else None,
            divergence=sum(tv) / len(tv) if tv else None, outlier=False, flags=[],
        )
        if q.majority_agreement is not None and majority_units >= min_votes and q.majority_agreement < min_agreement:
            q.flags.append(f"agrees with the majority {q.majority_agreement:.0%} of {majority_units} times (< {min_agreement:.0%})")
        if q.gold_accuracy is not None and len(golds) >= min_votes and q.gold_accuracy < 1 - max_gold_errors:
            q.flags.append(f"gold accuracy {q.gold_accuracy:.0%} of {len(golds)} (< {1 - max_gold_errors:.0%})")
        if q.left_p_value is not None and len(sided) >= min_votes and q.left_p_value < alpha:
            q.flags.append(f"position bias: left {q.left_share:.0%} of {len(sided)} (p = {q.left_p_value:.2g})")
        if q.divergence is not None and len(tv) >= min_votes and q.divergence > max_divergence:
            q.outlier = True
            q.flags.append(f"outlier: differs from the others' votes {q.divergence:.0%} of the time on average")
        out.append(q)
    return out


@dataclass
class Aggregated:
    labels: dict[int, str]  # unit -> the aggregated choice
    reliability: dict[str, float]  # voter -> estimated probability its vote equals the true label
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def dawid_skene(rows: list[VoteRow], *, n_iter: int = 100, tol: float = 1e-5) -> Aggregated:
    """Dawid-Skene (``crowd_kit.aggregation.DawidSkene``): each comparison's label and each
    voter's confusion matrix by EM; a voter's reliability is its estimated probability of
    voting the true label (the diagonal of its confusion matrix weighted by the label priors)."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    if not rows:
        return Aggregated(labels={}, reliability={}, method="dawid_skene")
    df = pd.DataFrame({"task": [r.unit for r in rows], "worker": [r.voter for r in rows], "label": [r.choice for r in rows]})
    ds = DawidSkene(n_iter=n_iter, tol=tol)
    with warnings.catch_warnings():  # crowd-kit 1.4.2 still uses pandas' deprecated inplace= keywords
        warnings.filterwarnings("ignore", module="crowdkit")
        labels = ds.fit_predict(df)
    errors, priors = ds.errors_, ds.priors_  # errors: index (worker, true label), columns observed label
    reliability = {}
    for worker in df["worker"].unique():
        m = errors.loc[worker]
        reliability[str(worker)] = float(sum(priors.get(lab, 0.0) * m.loc[lab, lab] for lab in m.index if lab in m.columns))
    return Aggregated(labels={int(k): str(v) for k, v in labels.items()}, reliability=reliability, method="dawid_skene")


def majority_vote(rows: list[VoteRow]) -> Aggregated:
    """The plurality choice per comparison (no label on a tie for first place); reliability:
    each voter's agreement with the others' majority."""
    units = by_unit(rows)
    labels = {u: m for u, votes in units.items() if (m := _majority(list(votes.values()))) is not None}
    quality = {q.voter: q.majority_agreement for q in voter_quality(rows)}
    return Aggregated(labels=labels, reliability={v: r for v, r in quality.items() if r is not None}, method="majority")


@dataclass
class JudgeAgreement:
    judge: str
    agree: int
    n: int  # comparisons the judge voted on where people's votes have a strict majority
    rate: float | None
    low: float  # 95% Wilson interval
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


def judge_agreement(rows: list[VoteRow], judge: str, *, people: set[str]) -> JudgeAgreement:
    """How often ``judge``'s vote equals the majority of ``people``'s votes on the same
    comparison (comparisons without a strict majority among people are left out)."""
    from training.evaluation import wilson_interval

    units = by_unit(rows)
    agree = n = 0
    for votes in units.values():
        if judge not in votes:
            continue
        m = _majority([c for v, c in votes.items() if v in people])
        if m is None:
            continue
        n += 1
        agree += votes[judge] == m
    low, high = wilson_interval(agree, n)
    return JudgeAgreement(judge=judge, agree=agree, n=n, rate=agree / n if n else None, low=low, high=high)
