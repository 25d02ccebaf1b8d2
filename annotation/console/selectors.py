"""Reads for the admins' console pages: a campaign's progress in a few aggregate queries, a
policy's lineage, promotion candidates, runs' charts, log tails and config differences."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from datetime import date, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from annotation import selectors
from annotation.console.config_form import show
from annotation.models import Campaign, Comparison, Evaluation, ModelVersion, PolicyPromotion, Preference, Prompt, TrainingRun, Vote
from training.recipes import RECIPES

CONSOLE_PERMS = ("annotation.manage_training", "annotation.view_trainingrun")
MAX_LINEAGE = 50  # parent links followed (a chain is one promotion per loop turn)
EVALUATION_WAIT = timedelta(minutes=10)  # a finished run's page polls this long for its evaluation to be queued


def console_allowed(*, user: AbstractBaseUser) -> bool:
    """Admins and reviewers: who may open the console (writes need ``manage_training``)."""
    return user.is_authenticated and any(user.has_perm(p) for p in CONSOLE_PERMS)


def _count(qs: QuerySet, outer: str = "campaign") -> Coalesce:
    """A correlated COUNT(*) of ``qs`` per campaign, for annotating campaigns in one query."""
    sub = qs.filter(**{outer: OuterRef("pk")}).order_by().values(outer).annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(sub, output_field=IntegerField()), 0)


def _progress_annotations() -> dict:
    normal = Comparison.objects.filter(kind=Comparison.Kind.NORMAL)
    return {
        "n_open": _count(normal.filter(status=Comparison.Status.OPEN)),
        "n_completed": _count(normal.filter(status=Comparison.Status.COMPLETE)),
        "n_votes": _count(Vote.objects.all(), "comparison__campaign"),
        "n_preferences": _count(Preference.objects.all()),
        "n_ready": _count(Preference.objects.filter(prompt__split=Prompt.Split.TRAIN)),
        "n_active_runs": _count(TrainingRun.objects.filter(status__in=TrainingRun.ACTIVE)),
    }


def console_campaigns(*, user: AbstractBaseUser) -> QuerySet[Campaign]:
    """The campaigns the user sees, each with its progress counts (one query)."""
    return selectors.campaigns_for_user(user=user).select_related("policy").annotate(**_progress_annotations())


@dataclass(frozen=True)
class CampaignProgress:
    open_pairs: int  # normal comparisons still collecting votes: the sampling buffer
    completed: int
    votes: int
    preferences: int
    ready: int  # preferences on training prompts: what a run trains on
    active_runs: int
    per_day: list[tuple[date, int]]  # votes cast per day, oldest first, the last ``days`` days

    @property
    def per_day_max(self) -> int:
        return max((n for _, n in self.per_day), default=0)


def campaign_progress(*, campaign: Campaign, days: int = 7, now=None) -> CampaignProgress:
    """Progress counts (one query) and votes per day over the last ``days`` days (one query)."""
    counts = Campaign.objects.filter(pk=campaign.pk).annotate(**_progress_annotations()).values(*_progress_annotations()).get()
    today = timezone.localdate(now or timezone.now())
    first = today - timedelta(days=days - 1)
    per_day = dict(
        Vote.objects.filter(comparison__campaign=campaign, created_at__date__gte=first)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values_list("day")
        .annotate(n=Count("pk"))
        .values_list("day", "n")
    )
    return CampaignProgress(
        open_pairs=counts["n_open"], completed=counts["n_completed"], votes=counts["n_votes"],
        preferences=counts["n_preferences"], ready=counts["n_ready"], active_runs=counts["n_active_runs"],
        per_day=[(first + timedelta(days=i), per_day.get(first + timedelta(days=i), 0)) for i in range(days)],
    )


def model_version_lineage(*, version: ModelVersion | None) -> list[ModelVersion]:
    """``version``, its parent, the parent's parent ... (each with the run that made it)."""
    chain: list[ModelVersion] = []
    while version is not None and len(chain) < MAX_LINEAGE:
        chain.append(version)
        if version.parent_id is None:
            break
        version = ModelVersion.objects.select_related("training_run").filter(pk=version.parent_id).first()
    return chain


def campaign_promotions(*, campaign: Campaign, limit: int = 20) -> QuerySet[PolicyPromotion]:
    return campaign.promotions.select_related("from_version", "to_version", "by").order_by("-created_at", "-pk")[:limit]


def policy_versions_for(*, campaign: Campaign) -> QuerySet[ModelVersion]:
    """Policy versions an admin may promote or train from here: base models, versions made by
    this campaign's runs, and the campaign's current policy; newest first."""
    return (
        ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY)
        .filter(Q(parent__isnull=True) | Q(training_run__campaign=campaign) | Q(campaigns=campaign))
        .distinct()
        .order_by("-created_at", "-pk")
    )


# ---------------------------------------------------------------- runs


def training_run_log_tail(*, run: TrainingRun, n: int = 10) -> list[dict]:
    """The run's last ``n`` logged steps (its log, as far as the platform stores one)."""
    return selectors.training_run_metrics(run=run)[-n:]


def training_run_effective_config(*, run: TrainingRun) -> dict:
    """The run's config with every default filled in (its recipe's config dataclass)."""
    recipe = RECIPES.get(run.kind)
    if recipe is None:
        return dict(run.config)
    defaults = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(recipe.config_cls)}  # type: ignore[misc]
    defaults.pop("model", None)
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    out.update(run.config)
    return out


@dataclass(frozen=True)
class ConfigRow:
    key: str
    a: object
    b: object
    differs: bool

    @property
    def a_text(self) -> str:
        return show(self.a)

    @property
    def b_text(self) -> str:
        return show(self.b)


def training_runs_config_diff(*, a: TrainingRun, b: TrainingRun) -> list[ConfigRow]:
    """Both runs' effective configs key by key (keys one run lacks show as None), differing
    keys first. ``kind`` and ``base_version`` lead, as they matter most."""
    ca, cb = training_run_effective_config(run=a), training_run_effective_config(run=b)
    ca = {"kind": a.kind, "base_version": a.base_version.name, **ca}
    cb = {"kind": b.kind, "base_version": b.base_version.name, **cb}
    keys = list(dict.fromkeys([*ca, *cb]))
    rows = [ConfigRow(k, ca.get(k), cb.get(k), ca.get(k) != cb.get(k)) for k in keys]
    return sorted(rows, key=lambda r: not r.differs)


def training_run_summary(*, run: TrainingRun) -> dict:
    """What the run page's live block shows (also as JSON while it polls). ``watch``: the page
    keeps polling while the run is active, and after it while the new policy's evaluation is
    awaited (queued after the run, for up to EVALUATION_WAIT) or running, so its decision
    shows up without a reload."""
    outputs = list(run.outputs.all())
    output = outputs[0] if outputs else None
    evaluation = model_version_evaluation(version=output, campaign=run.campaign) if output else None
    active = run.status in TrainingRun.ACTIVE
    awaited = (output is not None and output.kind == ModelVersion.Kind.POLICY and run.campaign_id is not None and (
        evaluation.status in Evaluation.ACTIVE if evaluation is not None
        else run.finished_at is not None and timezone.now() - run.finished_at < EVALUATION_WAIT))
    return {
        "id": run.pk, "status": run.status, "active": active, "watch": active or awaited,
        "step": run.step, "total_steps": run.total_steps, "eta_seconds": selectors.training_run_eta_seconds(run=run),
        "output": output,
        "evaluation": evaluation,
    }



# ---------------------------------------------------------------- evaluations


def _pct(x: float | None) -> str | None:
    """A share in [0, 1] as a CSS percentage (always a dot, whatever the locale)."""
    return None if x is None else f"{min(max(x, 0.0), 1.0) * 100:.1f}"


def _prompt_text(messages) -> str:
    if not isinstance(messages, list):
        return str(messages)
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in messages)


def evaluation_page(*, evaluation: Evaluation) -> dict:
    """What an evaluation's page shows beyond the record: the win-rate bar (interval, point,
    the gate's minimum), the KL against the gate's maximum, whether the candidate is active,
    whether an admin may still promote it (the gate left it to them) or roll its promotion back
    (it is the promotion a roll-back would undo), its promotions, the example pairs."""
    campaign = evaluation.campaign
    gate_min, gate_max_kl = campaign.gate_min_win_rate, campaign.gate_max_kl
    active = campaign.policy_id == evaluation.candidate_id
    undo = selectors.campaign_promotion_to_undo(campaign=campaign) if active else None
    bar = None
    if evaluation.win_rate is not None:
        low = evaluation.win_low if evaluation.win_low is not None else evaluation.win_rate
        high = evaluation.win_high if evaluation.win_high is not None else evaluation.win_rate
        bar = {"point": _pct(evaluation.win_rate), "low": _pct(low), "width": f"{max(min(high, 1) - max(low, 0), 0) * 100:.1f}",
               "gate": _pct(gate_min)}
    examples = [
        {"prompt": _prompt_text(e.get("prompt")), "new": e.get("new", ""), "active": e.get("active", ""),
         "reward_new": e.get("reward_new"), "reward_active": e.get("reward_active"), "outcome": e.get("outcome", "")}
        for e in (evaluation.examples or []) if isinstance(e, dict)
    ]
    return {
        "bar": bar,
        "gate_min": gate_min,
        "gate_max_kl": gate_max_kl,
        "kl_within": None if gate_max_kl is None or evaluation.kl is None else evaluation.kl <= gate_max_kl,
        "candidate_active": active,
        "decidable": (evaluation.status == Evaluation.Status.SUCCEEDED and not active
                      and evaluation.decision in (Evaluation.Decision.HELD, Evaluation.Decision.NO_GATE)),
        "undoable": undo is not None and undo.to_version_id == evaluation.candidate_id,
        "promotions": list(campaign.promotions.filter(to_version=evaluation.candidate, action=PolicyPromotion.Action.PROMOTE)
                           .select_related("by").order_by("-created_at", "-pk")),
        "examples": examples,
    }


def model_version_evaluation(*, version: ModelVersion | None, campaign: Campaign | None) -> Evaluation | None:
    """The latest evaluation of ``version`` in ``campaign`` (a run page links to it)."""
    if version is None or campaign is None:
        return None
    return Evaluation.objects.filter(campaign=campaign, candidate=version).order_by("-created_at", "-pk").first()


def monitor_frontier(*, run, width: int = 420, height: int = 240) -> dict | None:
    """The overoptimisation monitor's measurements as an SVG plot: proxy and gold score against
    KL to the reference, one point per measurement in step order, the best-gold one marked (the
    checkpoint the run outputs). None when the run has no monitor rows with a KL."""
    series = selectors.training_run_series(run=run, names=["monitor/kl", "monitor/proxy_score", "monitor/gold_score"])
    kl, proxy, gold = (dict(series[n]) for n in ("monitor/kl", "monitor/proxy_score", "monitor/gold_score"))
    steps = [s for s in sorted(kl) if s in proxy and kl[s] is not None and proxy[s] is not None]
    if not steps:
        return None
    left, right, top, bottom = 44, width - 8, 8, height - 18
    xs = [kl[s] for s in steps]
    ys = [proxy[s] for s in steps] + [gold[s] for s in steps if gold.get(s) is not None]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = lambda v: round(left + (v - x0) / ((x1 - x0) or 1) * (right - left), 1)  # noqa: E731
    sy = lambda v: round(bottom - (v - y0) / ((y1 - y0) or 1) * (bottom - top), 1)  # noqa: E731
    points = [{"step": s, "kl": kl[s], "proxy": proxy[s], "gold": gold.get(s), "x": sx(kl[s]), "proxy_y": sy(proxy[s]),
               "gold_y": sy(gold[s]) if gold.get(s) is not None else None} for s in steps]
    with_gold = [p for p in points if p["gold"] is not None]
    best = max(with_gold, key=lambda p: (p["gold"], -p["step"])) if with_gold else None
    if best is not None:
        best = {**best, "label_y": max(top + 10, best["gold_y"] - 12)}
    return {"width": width, "height": height, "left": left, "right": right, "top": top, "bottom": bottom, "points": points,
            "proxy_path": " ".join(f"{p['x']},{p['proxy_y']}" for p in points),
            "gold_path": " ".join(f"{p['x']},{p['gold_y']}" for p in with_gold), "best": best,
            "kl_min": x0, "kl_max": x1, "y_min": y0, "y_max": y1}
