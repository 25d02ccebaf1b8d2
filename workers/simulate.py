"""The whole loop with simulated annotators (``manage.py simulate_loop``): per round, sample
pairs from the campaign's current policy, let simulated annotators vote on them through the
same services people use (``assignment_next`` + ``vote_submit``), which derive preferences,
retrain on this round's preferences (or all the campaign's), evaluate the new version against the original policy
under the hidden rule itself (``training.simulate``), promote it, repeat.

Everything runs in this process: the run is created without queueing a gpu task
(``dispatch=False``) and trained by ``run_training``, whose own reward-model evaluation is not
queued (the rule is the judge here). The simulated annotators are users ``sim-1`` .. ``sim-N``
with the annotator role, made members of the campaign, N = the campaign's ``votes_per_pair``;
they work the campaign's queue as people do, so give the simulation a campaign of its own.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model

from annotation import roles, selectors, services
from annotation.models import Assignment, Campaign, Comparison, ModelVersion, Preference, Prompt, TrainingRun
from training.params import SamplingParams
from training.rules import Rule
from training.seeds import mix_seed
from training.simulate import RuleEval, noisy_choice

SIM_PREFIX = "sim-"
PHASES = ("sample", "vote", "train", "eval")
POLICY_KINDS = ("dpo", "sft")  # kinds whose output is a policy that can be promoted
EVAL_STREAM = 0  # mix_seed(seed, EVAL_STREAM): the eval seed, the same every round (rounds compare)


class SimulationError(Exception):
    """The simulation cannot start or go on; the message says why."""


@dataclass
class RoundReport:
    round: int
    version: str  # the version trained, evaluated and promoted this round
    run_id: int
    pairs: int  # sampled this round
    votes: int  # cast by the simulated annotators this round
    preferences: int  # derived this round
    preferences_total: int  # the campaign's training preferences after this round
    evaluation: RuleEval
    minutes: dict[str, float] = field(default_factory=dict)  # wall minutes per phase


def simulated_annotators(n: int) -> list:
    """Users ``sim-1`` .. ``sim-n`` (annotator role), created when missing, with a random
    password nobody knows."""
    User = get_user_model()
    users = []
    for i in range(1, n + 1):
        name = f"{SIM_PREFIX}{i}"
        user = User.objects.filter(username=name).first()
        if user is None:
            user = roles.user_create(username=name, password=secrets.token_urlsafe(24), role=roles.ANNOTATOR)
        users.append(user)
    return users


def check_campaign(campaign: Campaign, *, kind: str) -> None:
    """Refuse, before any model is loaded, what cannot run."""
    if kind not in POLICY_KINDS:
        raise SimulationError(f"--kind {kind!r} does not make a policy; use one of {', '.join(POLICY_KINDS)}.")
    if not campaign.is_active:
        raise SimulationError(f"Campaign '{campaign.slug}' is not active.")
    if not campaign.prompts.filter(split=Prompt.Split.TRAIN).exists():
        raise SimulationError(f"Campaign '{campaign.slug}' has no train-split prompts to sample pairs for.")
    if not campaign.prompts.filter(split=Prompt.Split.EVAL).exists():
        raise SimulationError(f"Campaign '{campaign.slug}' has no eval-split prompts to evaluate on.")
    try:
        SamplingParams.from_dict(campaign.sampling_params)
    except ValueError as exc:
        raise SimulationError(f"Campaign '{campaign.slug}': invalid sampling parameters: {exc}") from None


def votes_cast(*, campaign: Campaign, annotators: list, rule: Rule, noise: float, rng: random.Random,
               comparison_ids: set[int], progress: Callable[[], None] | None = None) -> int:
    """Simulated annotators take turns asking for work and voting by the rule (with noise) on
    the texts in the order shown, until this round's comparisons are closed or nobody is handed
    anything. Returns the number of votes."""
    votes = 0
    while True:
        handed = False
        for user in annotators:
            assignment = services.assignment_next(campaign=campaign, annotator=user)
            if assignment is None:
                continue
            handed = True
            c = assignment.comparison
            left, right = (c.response_a, c.response_b) if assignment.order == Assignment.Order.AB else (c.response_b, c.response_a)
            choice = noisy_choice(rule, c.prompt.messages, left.text, right.text, rng=rng, noise=noise)
            services.vote_submit(annotator=user, assignment_id=assignment.pk, choice=choice)
            votes += 1
            if progress is not None and c.pk in comparison_ids:
                progress()
        open_left = Comparison.objects.filter(pk__in=comparison_ids, status=Comparison.Status.OPEN).exists()
        if not handed or not open_left:
            return votes


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def simulate_rounds(*, campaign_id: int, rounds: int, pairs: int, rule: Rule, noise: float, kind: str = "dpo",
                    data_scope: str = TrainingRun.DataScope.ON_POLICY, config: dict | None = None, seed: int = 0, eval_prompts: int = 64,
                    progress: bool = False) -> Iterator[RoundReport]:
    """Run ``rounds`` turns of the loop, yielding each round's report as it ends. The original
    policy is the campaign's active one at the start. ``data_scope`` on_policy (the default):
    each round trains, from the current policy, on the pairs that policy sampled (iterated DPO);
    all: on every preference so far (then later rounds re-learn earlier rounds' pairs from an
    already-moved policy, and drift)."""
    from training.simulate import evaluate_by_rule
    from workers.sampling import campaign_sample_pairs, policy_load
    from workers.training_jobs import run_training

    campaign = Campaign.objects.get(pk=campaign_id)
    check_campaign(campaign, kind=kind)
    if not 0.0 <= noise <= 1.0:
        raise SimulationError(f"--noise must be in [0, 1], got {noise}.")
    original = services.campaign_policy_ensure(campaign=campaign)
    annotators = simulated_annotators(campaign.votes_per_pair)
    services.campaign_members_add(campaign=campaign, users=annotators, added_by=None)  # annotators work only in their campaigns
    params = SamplingParams.from_dict(campaign.sampling_params)
    prompts = [p.messages for p in selectors.eval_prompts(campaign=campaign, n=eval_prompts)]
    for k in range(1, rounds + 1):
        minutes: dict[str, float] = {}
        t = time.monotonic()
        before = Comparison.objects.filter(campaign=campaign).order_by("-pk").values_list("pk", flat=True).first() or 0
        prefs_before = Preference.objects.filter(campaign=campaign).count()
        report = campaign_sample_pairs(campaign_id=campaign.pk, n=pairs, seed=mix_seed(seed, k), progress=progress)
        ids = set(Comparison.objects.filter(campaign=campaign, pk__gt=before).values_list("pk", flat=True))
        minutes["sample"], t = (time.monotonic() - t) / 60, time.monotonic()

        bar = _bar(progress, len(ids) * campaign.votes_per_pair, f"round {k}: simulated votes", "vote")
        n_votes = votes_cast(campaign=campaign, annotators=annotators, rule=rule, noise=noise,
                             rng=random.Random(mix_seed(seed, k, 1)), comparison_ids=ids,
                             progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        new_prefs = Preference.objects.filter(campaign=campaign).count() - prefs_before
        minutes["vote"], t = (time.monotonic() - t) / 60, time.monotonic()

        run = services.training_run_create(campaign=campaign, kind=kind, config=config or {},
                                           trigger=TrainingRun.Trigger.SHELL, data_scope=data_scope, dispatch=False)
        bar = _bar(progress, 0, f"round {k}: {kind} run {run.pk}", "step")

        def step(done: int, total: int, bar=bar) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        try:
            status = run_training(run_id=run.pk, evaluate=False, on_progress=step)
        except BaseException:  # Ctrl-C mid-training: leave no run RUNNING to block the next (409)
            services.training_run_cancel(run_id=run.pk)
            raise
        if bar is not None:
            bar.close()
        run.refresh_from_db()
        if status != TrainingRun.Status.SUCCEEDED:
            raise SimulationError(f"Round {k}: training run {run.pk} {status}" + (f": {run.error}" if run.error else "."))
        version = ModelVersion.objects.get(training_run=run)
        minutes["train"], t = (time.monotonic() - t) / 60, time.monotonic()

        model, tokenizer = policy_load(version.spec)
        original_model, original_tokenizer = policy_load(original.spec)
        evaluation = evaluate_by_rule(model, tokenizer, original_model, original_tokenizer, prompts, rule, params,
                                      mix_seed(seed, EVAL_STREAM), progress=progress)
        services.campaign_policy_promote(campaign=campaign, version=version, user=None, reason=f"simulate_loop round {k}")
        minutes["eval"] = (time.monotonic() - t) / 60
        total = Preference.objects.filter(campaign=campaign, prompt__split=Prompt.Split.TRAIN).count()
        yield RoundReport(round=k, version=version.name, run_id=run.pk, pairs=report.created, votes=n_votes,
                          preferences=new_prefs, preferences_total=total, evaluation=evaluation, minutes=minutes)
