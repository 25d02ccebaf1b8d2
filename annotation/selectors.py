"""Every read of the annotation app that is more than a one-line ORM call."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from annotation.access import (  # re-exported: selectors stays the app's one read API
    annotator_progress,
    campaign_members,
    campaign_named_for,
    campaign_open_to,
    campaigns_for_user,
    comparisons_open_to,
    sees_every_campaign,
)
from annotation.errors import InvalidInput
from annotation.models import (
    Campaign,
    Comparison,
    Evaluation,
    GuidelineVersion,
    ModelVersion,
    PolicyPromotion,
    Preference,
    Prompt,
    RetrainPolicy,
    TrainingRun,
    Vote,
)
from annotation.quality import judge_gate
from training.formats import FormatError, PreferenceRecord, kto_row, trl_preference, trl_row


def model_version_named(*, name: str, field: str = "version") -> ModelVersion:
    """The model version called ``name``; an unknown name is bad input for ``field``."""
    version = ModelVersion.objects.filter(name=name).first()
    if version is None:
        raise InvalidInput(f"No model version '{name}'.", details={"field": field})
    return version


def campaign_guideline(*, campaign: Campaign) -> GuidelineVersion | None:
    return campaign.guidelines.order_by("-version").first()


def votes_visible_to(*, user: AbstractBaseUser, campaign: Campaign | None = None) -> QuerySet[Vote]:
    """Annotators see their own votes; reviewers (annotation.review_votes) see everyone's."""
    qs = Vote.objects.select_related("comparison__campaign", "annotator", "guideline_version").order_by("-created_at")
    if campaign is not None:
        qs = qs.filter(comparison__campaign=campaign)
    if not user.has_perm("annotation.review_votes"):
        qs = qs.filter(annotator=user)
    return qs


EXPORT_FORMATS = ("trl", "kto")


def _both_bad_majority(n_both_bad: int, n_votes: int) -> bool:
    """People's verdict on a comparison was "both bad": more than half of their votes said so."""
    return n_votes > 0 and 2 * n_both_bad > n_votes


def _export_meta(pref: Preference | None, comparison: Comparison | None, prompt: Prompt) -> dict:
    """--with-meta fields: where the label came from and how sure people were."""
    people = [v for v in getattr(comparison, "people_votes", [])] if comparison else []
    winner = None
    if pref is not None and comparison is not None:
        winner = "a" if pref.chosen_id == comparison.response_a_id else "b"
    return {
        "preference_id": pref.pk if pref else None,
        "comparison_id": comparison.pk if comparison else None,
        "source": pref.source if pref else "human",
        "judges": [v.judge for v in comparison.judge_votes] if comparison else [],
        "votes": pref.n_votes if pref else len(people),
        "agreement": pref.agreement if pref else None,
        "margin": pref.margin if pref else None,
        # each person's strength ("slightly" / "much" / "") on the side the preference took
        "strengths": [v.strength for v in people if winner and v.choice == winner],
        "rationales": [v.rationale for v in people if v.rationale],
        "split": prompt.split,
        "tags": prompt.tags,
    }


def _with_votes(qs, prefix: str):
    return qs.prefetch_related(
        Prefetch(f"{prefix}votes", queryset=Vote.objects.filter(annotator__isnull=False).order_by("pk"), to_attr="people_votes"),
        Prefetch(f"{prefix}votes", queryset=Vote.objects.exclude(judge="").order_by("pk"), to_attr="judge_votes"),
    )


def preferences_export_rows(*, campaign: Campaign, with_meta: bool = False, fmt: str = "trl") -> Iterator[dict]:
    """The campaign's labels for a trainer, streamed in primary-key order:

    - ``trl``: conversational paired rows (``prompt`` / ``chosen`` / ``rejected``), one per preference;
    - ``kto``: unpaired rows (``prompt`` / ``completion`` / ``label``): each preference's chosen
      response as desirable and its rejected one as undesirable, and both responses of a
      comparison people judged "both bad" (a majority of their votes) as undesirable: KTO learns
      from those, DPO cannot. ``with_meta`` adds ``role`` (chosen / rejected / both_bad).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    qs = Preference.objects.filter(campaign=campaign).order_by("pk").select_related(
        "prompt", "chosen__model_version", "rejected__model_version", "comparison"
    )
    if with_meta:
        qs = _with_votes(qs, "comparison__")
    for pref in qs.iterator(chunk_size=500):
        meta = None
        if with_meta:
            meta = _export_meta(pref, pref.comparison, pref.prompt) | {
                "chosen_model": pref.chosen.model_version.name if pref.chosen.model_version else None,
                "rejected_model": pref.rejected.model_version.name if pref.rejected.model_version else None,
            }
        if fmt == "trl":
            yield trl_row(pref.prompt.messages, pref.chosen.text, pref.rejected.text, meta)
            continue
        both_bad = _both_bad_majority(pref.n_both_bad, pref.n_votes)
        for text, label, role in ((pref.chosen.text, not both_bad, "both_bad" if both_bad else "chosen"),
                                  (pref.rejected.text, False, "both_bad" if both_bad else "rejected")):
            yield kto_row(pref.prompt.messages, text, label, meta and meta | {"role": role})
    if fmt == "kto":  # "both bad" comparisons without a preference (no A/B majority)
        people = Q(votes__annotator__isnull=False)
        bad = (Comparison.objects.filter(campaign=campaign, kind=Comparison.Kind.NORMAL, status=Comparison.Status.COMPLETE,
                                         preference__isnull=True)
               .annotate(n_people=Count("votes", filter=people), n_bad=Count("votes", filter=people & Q(votes__choice="both_bad")))
               .filter(n_bad__gt=F("n_people") / 2.0)
               .select_related("prompt", "response_a", "response_b").order_by("pk"))
        if with_meta:
            bad = _with_votes(bad, "")
        for c in bad.iterator(chunk_size=500):
            meta = _export_meta(None, c, c.prompt) if with_meta else None
            for response in (c.response_a, c.response_b):
                yield kto_row(c.prompt.messages, response.text, False, meta and meta | {"role": "both_bad"})


def campaign_open_pairs(*, campaign: Campaign) -> int:
    """Normal comparisons still collecting votes: the campaign's buffer."""
    return campaign.comparisons.filter(status=Comparison.Status.OPEN, kind=Comparison.Kind.NORMAL).count()


def campaign_buffer_missing(*, campaign_id: int, claim: datetime | None = None) -> int:
    """Open comparisons the campaign lacks to fill its buffer (0 when full, inactive or off; with
    a refill ``claim``, also when the campaign no longer holds that claim: a lost worker's task
    redelivered after a newer refill took the claim over, or after the claim was released)."""
    held = {} if claim is None else {"refill_requested_at": claim}
    campaign = Campaign.objects.filter(pk=campaign_id, is_active=True, **held).first()
    if campaign is None:
        return 0
    return max(0, campaign.buffer_size - campaign_open_pairs(campaign=campaign))


def campaigns_to_refill() -> list[tuple[int, int]]:
    """(campaign id, pairs missing) for each active campaign whose buffer of open comparisons
    is below ``buffer_size`` and that has training prompts to sample for."""
    open_pairs = Count("comparisons", filter=Q(comparisons__status=Comparison.Status.OPEN, comparisons__kind=Comparison.Kind.NORMAL))
    has_prompts = Exists(Prompt.objects.filter(campaign=OuterRef("pk"), split=Prompt.Split.TRAIN))
    rows = (
        Campaign.objects.filter(is_active=True, buffer_size__gt=0)
        .filter(has_prompts)
        .annotate(open_pairs=open_pairs)
        .filter(open_pairs__lt=F("buffer_size"))
        .order_by("pk")
        .values_list("pk", "buffer_size", "open_pairs")
    )
    return [(pk, size - n) for pk, size, n in rows]


def prompts_for_sampling(*, campaign: Campaign, n: int) -> list[Prompt]:
    """``n`` training prompts, those with the fewest comparisons first (ties oldest first, so a run is
    reproducible from its seed); a
    campaign with fewer than ``n`` prompts has its prompts repeated in that order."""
    prompts = list(
        campaign.prompts.filter(split=Prompt.Split.TRAIN)
        .annotate(n_comparisons=Count("comparisons"))
        .order_by("n_comparisons", "pk")[:n]
    )
    if not prompts:
        return []
    return [prompts[i % len(prompts)] for i in range(n)]


def training_records(*, campaign: Campaign, sampled_by: ModelVersion | None = None,
                     include_ai: bool | None = None) -> tuple[list[PreferenceRecord], list[str]]:
    """The campaign's preferences on training prompts (eval prompts stay held out), in
    primary-key order, as the records the trainers read; and one reason per stored preference
    that cannot be trained on ("preference 17: chosen is empty"), so none is dropped unseen.
    ``sampled_by``: only preferences whose two responses that version sampled (on-policy).
    Preferences an AI judge made (source ``ai``) count only while the judge gate is open
    (``annotation.quality.judge_gate``; ``include_ai``: the caller has read the gate already)."""
    rows = Preference.objects.filter(campaign=campaign, prompt__split=Prompt.Split.TRAIN)
    if not (judge_gate(campaign=campaign)["open"] if include_ai is None else include_ai):
        rows = rows.exclude(source=Preference.Source.AI)  # an AI judge's preferences train only while its gate is open
    if sampled_by is not None:
        rows = rows.filter(chosen__model_version=sampled_by, rejected__model_version=sampled_by)
    rows = (
        rows.order_by("pk")
        .values_list("pk", "prompt__messages", "chosen__text", "rejected__text")
    )
    max_chars = settings.PREFLOOP["MAX_TEXT_CHARS"]
    records, problems = [], []
    for pk, messages, chosen, rejected in rows.iterator(chunk_size=500):
        try:
            records.append(trl_preference({"prompt": messages, "chosen": chosen, "rejected": rejected}, max_chars=max_chars))
        except FormatError as exc:
            problems.append(f"preference {pk}: {exc}")
    return records, problems


# ---------------------------------------------------------------- training runs and retraining


def training_run_active_id(*, campaign: Campaign, kind: str) -> int | None:
    """The id of the campaign's queued or running run of ``kind`` (at most one: a constraint)."""
    active = TrainingRun.objects.filter(campaign=campaign, kind=kind, status__in=TrainingRun.ACTIVE)
    return active.values_list("pk", flat=True).first()


def training_runs_visible_to(*, user: AbstractBaseUser, campaign: Campaign | None = None) -> QuerySet[TrainingRun]:
    """Runs of the campaigns the user sees (and runs of no campaign), newest first."""
    qs = TrainingRun.objects.select_related("campaign", "base_version", "created_by").prefetch_related("outputs")
    if campaign is not None:
        qs = qs.filter(campaign=campaign)
    else:
        qs = qs.filter(Q(campaign__in=campaigns_for_user(user=user)) | Q(campaign__isnull=True))
    return qs.order_by("-created_at", "-pk")


def training_run_metrics(*, run: TrainingRun) -> list[dict]:
    """The run's metrics, one dict per step in step order: ``{"step": 10, "loss": 0.61, ...}``
    (a step's training and ``eval_`` values together; null where a value was not finite)."""
    rows: dict[int, dict] = {}
    for step, name, value in run.metric_rows.order_by("step", "name").values_list("step", "name", "value"):
        rows.setdefault(step, {"step": step})[name] = value
    return list(rows.values())


def training_run_series(*, run: TrainingRun, names: Iterable[str] | None = None) -> dict[str, list[tuple[int, float | None]]]:
    """``{name: [(step, value), ...]}`` in step order, for charts; all names when ``names`` is None."""
    qs = run.metric_rows.all()
    if names is not None:
        names = list(names)
        qs = qs.filter(name__in=names)
    series: dict[str, list[tuple[int, float | None]]] = {name: [] for name in names or ()}
    for name, step, value in qs.order_by("name", "step").values_list("name", "step", "value"):
        series.setdefault(name, []).append((step, value))
    return series


def training_run_eta_seconds(*, run: TrainingRun) -> float | None:
    """Seconds left of a running run: steps left times its last logged ``seconds_per_step``."""
    if run.status != TrainingRun.Status.RUNNING or not run.total_steps:
        return None
    per_step = run.metric_rows.filter(name="seconds_per_step", value__isnull=False).order_by("-step").values_list("value", flat=True).first()
    return None if per_step is None else max(0, run.total_steps - run.step) * per_step


@dataclass(frozen=True)
class RetrainCheck:
    due: bool
    reason: str  # why (not), in words: for the log and the console
    new_preferences: int | None = None  # None when not counted (a run is active, or too soon)


def retrain_policy_check(*, policy: RetrainPolicy, now: datetime | None = None) -> RetrainCheck:
    """Is the policy's run due? Not while a run of its kind is queued or running, nor before
    ``min_interval_minutes`` after the last run of its kind was created; then when at least
    ``every_n_preferences`` training preferences arrived since the last successful run of its
    kind started (all of them when none succeeded)."""
    now = now or timezone.now()
    runs = TrainingRun.objects.filter(campaign_id=policy.campaign_id, kind=policy.kind)
    active = runs.filter(status__in=TrainingRun.ACTIVE).values_list("pk", flat=True).first()
    if active is not None:
        return RetrainCheck(False, f"{policy.kind} run {active} is queued or running")
    last_created = runs.order_by("-created_at").values_list("created_at", flat=True).first()
    if last_created is not None and now - last_created < timedelta(minutes=policy.min_interval_minutes):
        return RetrainCheck(False, f"the last {policy.kind} run is younger than {policy.min_interval_minutes} min")
    prefs = Preference.objects.filter(campaign_id=policy.campaign_id, prompt__split=Prompt.Split.TRAIN)
    last_ok = runs.filter(status=TrainingRun.Status.SUCCEEDED).order_by("-created_at").first()
    if last_ok is not None:
        prefs = prefs.filter(created_at__gt=last_ok.started_at or last_ok.created_at)
    n = prefs.count()
    since = f"since run {last_ok.pk}" if last_ok else "in all (no successful run yet)"
    if n < policy.every_n_preferences:
        return RetrainCheck(False, f"{n} new preference(s) {since}, {policy.every_n_preferences} needed", n)
    return RetrainCheck(True, f"{n} new preference(s) {since}", n)


def campaign_promotion_to_undo(*, campaign: Campaign) -> PolicyPromotion | None:
    """The latest promotion not rolled back yet: roll-backs undo promotions newest first, so
    promote v1, promote v2, roll back (to v1), roll back (to the policy before v1)."""
    pending = 0
    for record in campaign.promotions.order_by("-created_at", "-pk"):
        if record.action == PolicyPromotion.Action.ROLLBACK:
            pending += 1
        elif pending:
            pending -= 1
        else:
            return record
    return None


# ---------------------------------------------------------------- evaluations


def campaign_reward_model(*, campaign: Campaign) -> ModelVersion | None:
    """The output of the campaign's latest successful reward run (the evaluations' judge)."""
    return (ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD, training_run__campaign=campaign,
                                        training_run__status=TrainingRun.Status.SUCCEEDED)
            .order_by("-training_run__finished_at", "-pk").first())


def campaign_prompt_messages(*, campaign: Campaign, split: str) -> list[list[dict]]:
    """The message lists of the campaign's prompts of one split, oldest first."""
    return list(Prompt.objects.filter(campaign=campaign, split=split).order_by("pk").values_list("messages", flat=True))


def online_reward_models(*, campaign: Campaign, config: dict) -> tuple[ModelVersion, ModelVersion | None]:
    """(reward model, gold model or None) of a PPO / RLOO / GRPO run: ``config["reward_model"]``
    names a reward version of this campaign or a registered one (empty: the campaign's latest),
    ``config["gold_model"]`` another one for the overoptimisation monitor. ``InvalidInput`` saying what is missing."""
    def named(key: str) -> ModelVersion | None:
        name = (config or {}).get(key) or ""
        if not name:
            return None
        # This campaign's reward models, or registered ones (trained elsewhere): not another campaign's.
        version = (ModelVersion.objects.filter(name=name, kind=ModelVersion.Kind.REWARD)
                   .filter(Q(training_run__isnull=True) | Q(training_run__campaign=campaign)).first())
        if version is None:
            raise InvalidInput(f"{key}: '{name}' is not a reward-model version of this campaign.", details={"field": "config"})
        return version

    reward = named("reward_model") or campaign_reward_model(campaign=campaign)
    if reward is None:
        raise InvalidInput(f"PPO, RLOO and GRPO optimise against a reward model, and campaign '{campaign.slug}' has none yet: "
                           "train one first (kind=reward), or name a reward version in the config (reward_model).",
                           details={"field": "kind"})
    gold = named("gold_model")
    if gold is not None and gold.pk == reward.pk:
        raise InvalidInput("gold_model must be another reward model than reward_model (the one being optimised).",
                           details={"field": "config"})
    return reward, gold


def model_version_root(*, version: ModelVersion) -> ModelVersion:
    """The version's root ancestor: the registered base model it was trained from, through its parents."""
    seen = {version.pk}
    while version.parent_id is not None and version.parent_id not in seen:
        seen.add(version.parent_id)
        version = ModelVersion.objects.get(pk=version.parent_id)
    return version


def eval_prompts(*, campaign: Campaign, n: int) -> list[Prompt]:
    """The campaign's first ``n`` eval-split prompts, oldest first: the same set for every evaluation."""
    return list(campaign.prompts.filter(split=Prompt.Split.EVAL).order_by("pk")[:n])


def promotions_visible_to(*, user: AbstractBaseUser, campaign: Campaign | None = None) -> QuerySet[PolicyPromotion]:
    """Promotions and roll-backs of the campaigns the user sees, newest first."""
    qs = PolicyPromotion.objects.select_related("campaign", "from_version", "to_version", "by")
    qs = qs.filter(campaign=campaign) if campaign is not None else qs.filter(campaign__in=campaigns_for_user(user=user))
    return qs.order_by("-created_at", "-pk")


def evaluations_visible_to(*, user: AbstractBaseUser, campaign: Campaign | None = None) -> QuerySet[Evaluation]:
    """Evaluations of the campaigns the user sees, newest first."""
    qs = Evaluation.objects.select_related("campaign", "candidate", "baseline", "reference", "reward_model", "created_by")
    qs = qs.filter(campaign=campaign) if campaign is not None else qs.filter(campaign__in=campaigns_for_user(user=user))
    return qs.order_by("-created_at", "-pk")
