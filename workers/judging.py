"""Run an AI judge over a campaign's comparisons it has not voted on yet: the glue between
``annotation`` (which judge, which comparisons, where the votes go) and ``training.judges``
(the verdicts). Used by the task ``judge_pending`` and ``manage.py judge``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from annotation import selectors, services
from annotation.models import Judge, ModelVersion
from annotation.quality import judge_pending_comparisons

logger = logging.getLogger(__name__)

CHUNK_PAIRS = 32  # pairs judged, then recorded in one transaction


class JudgeUnavailable(Exception):
    """The judge cannot run (no reward model yet, an unknown version): the message says why."""


@dataclass
class JudgeReport:
    judge: str
    recorded: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)
    inconsistent: int = 0  # verdicts whose two orders disagreed
    preferences: int = 0  # preferences (source ai) made from its verdicts: the campaign's training judge only

    def as_dict(self) -> dict:
        return {"judge": self.judge, "recorded": self.recorded, "already": self.already,
                "failed": len(self.failed), "first_failures": self.failed[:5], "inconsistent": self.inconsistent,
                "preferences": self.preferences}


def _spec(judge: Judge, *, kind: str) -> str:
    """The model a local or reward judge loads: a version's spec when ``judge.model`` names one."""
    if judge.model:
        version = ModelVersion.objects.filter(name=judge.model).first()
        if kind == "reward" and (version is None or version.kind != ModelVersion.Kind.REWARD):
            raise JudgeUnavailable(f"'{judge.model}' is not a reward-model version.")
        return version.spec if version is not None else judge.model
    if kind == "reward":
        version = selectors.campaign_reward_model(campaign=judge.campaign)
        if version is None:
            raise JudgeUnavailable(f"No reward model for campaign '{judge.campaign.slug}' yet: train one (kind=reward) first.")
        return version.spec
    return services.campaign_policy_ensure(campaign=judge.campaign).spec


def build_judge(judge: Judge):
    """The ``training.judges`` judge for a configured Judge row."""
    from training.judges import DEFAULT_GUIDELINE, LocalJudge, OpenAIJudge, RewardJudge

    guideline = getattr(selectors.campaign_guideline(campaign=judge.campaign), "text", "") or DEFAULT_GUIDELINE
    if judge.kind == Judge.Kind.OPENAI:
        return OpenAIJudge(base_url=judge.base_url, model=judge.model, guideline=guideline, api_key_env=judge.api_key_env,
                           concurrency=judge.concurrency, both_orders=judge.both_orders)
    if judge.kind == Judge.Kind.REWARD:
        from workers.evaluation import reward_load

        model, tokenizer = reward_load(_spec(judge, kind="reward"))
        return RewardJudge(model, tokenizer, batch_size=judge.batch_size)
    from workers.sampling import policy_load

    model, tokenizer = policy_load(_spec(judge, kind="local"))
    return LocalJudge(model, tokenizer, guideline=guideline, batch_size=judge.batch_size, both_orders=judge.both_orders)


def run_judge(*, judge_id: int, limit: int | None = None, progress: bool = False) -> JudgeReport:
    """Judge up to ``limit`` (all when None) of the comparisons this judge has not voted on."""
    from training.judges import Pair

    judge = Judge.objects.select_related("campaign").get(pk=judge_id)
    report = JudgeReport(judge=judge.voter)
    pending = list(judge_pending_comparisons(judge=judge, limit=limit))
    if not pending:
        return report
    impl = build_judge(judge)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc=f"{judge.voter} on {judge.campaign.slug}", unit="pair")
    for start in range(0, len(pending), CHUNK_PAIRS):
        chunk = pending[start:start + CHUNK_PAIRS]
        verdicts = impl.judge([Pair(prompt=c.prompt.messages, a=c.response_a.text, b=c.response_b.text) for c in chunk])
        recorded = services.judge_votes_record(judge=judge, verdicts=[(c.pk, v.as_dict()) for c, v in zip(chunk, verdicts)])
        report.recorded += recorded.recorded
        report.already += recorded.already
        report.failed += recorded.failed
        report.inconsistent += sum(1 for v in verdicts if v.choice and not v.consistent)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if judge.campaign.training_judge_id == judge.pk:
        report.preferences = services.judge_preferences_derive(campaign=judge.campaign)
    logger.info("%s on %s: %s", judge.voter, judge.campaign.slug, report.as_dict())
    return report
