"""Fill a campaign with pairs sampled from its policy: the glue between ``annotation`` (which
prompts, which policy, where the rows go) and ``training.sampling`` (the model work).

Used by the ``sample_pairs`` task and the ``sample_pairs`` management command. torch is
imported only when sampling actually runs, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from annotation import selectors, services
from annotation.models import Campaign
from training.params import SamplingParams
from training.seeds import mix_seed

logger = logging.getLogger(__name__)

# Loaded models per worker process, most recent last: a policy and an arena version fit.
_MODELS: OrderedDict[str, tuple] = OrderedDict()
_MAX_MODELS = 2
CHUNK_BATCHES = 4  # generate batches per commit (and per retry of identical / empty pairs)


def policy_load(spec: str):
    """(model, tokenizer) for ``spec``, kept loaded between tasks in this worker process."""
    if spec in _MODELS:
        _MODELS.move_to_end(spec)
        return _MODELS[spec]
    from training.models import load_policy

    while len(_MODELS) >= _MAX_MODELS:
        _MODELS.popitem(last=False)
    logger.info("loading policy %s", spec)
    _MODELS[spec] = load_policy(spec)
    return _MODELS[spec]


@dataclass
class SampleReport:
    campaign: str
    policy: str
    arena_policy: str | None
    requested: int
    created: int = 0
    dropped: int = 0  # pairs the sampler gave up on (identical or empty after re-sampling)
    seed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def campaign_sample_pairs(*, campaign_id: int, n: int, seed: int | None = None, progress: bool = False) -> SampleReport:
    """Sample ``n`` pairs for the campaign's least-covered training prompts from its active
    policy (and arena version), committing every ``CHUNK_BATCHES`` generate batches so
    annotators see pairs as they come and a crash loses at most one chunk."""
    from training.sampling import sample_pairs

    campaign = Campaign.objects.select_related("arena_policy").get(pk=campaign_id)
    policy = services.campaign_policy_ensure(campaign=campaign)
    arena = campaign.arena_policy
    params = SamplingParams.from_dict(campaign.sampling_params)
    seed = secrets.randbits(31) if seed is None else seed
    report = SampleReport(campaign=campaign.slug, policy=policy.name, arena_policy=arena.name if arena else None, requested=n, seed=seed)
    prompts = selectors.prompts_for_sampling(campaign=campaign, n=n)
    if not prompts:
        logger.warning("campaign %s has no training prompts to sample for", campaign.slug)
        return report
    model, tokenizer = policy_load(policy.spec)
    other = policy_load(arena.spec) if arena else (None, None)
    # Pairs per chunk: CHUNK_BATCHES generate batches of the policy's (both samples of a pair in
    # one batch). The identical or empty pairs of a whole chunk are re-drawn together, in one
    # batch instead of one small batch per generate batch (each a full decode to the longest).
    chunk = max(1, params.batch_size // (1 if arena else 2)) * CHUNK_BATCHES
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), desc=f"sampling pairs for {campaign.slug}", unit="pair")
    for i, start in enumerate(range(0, len(prompts), chunk)):
        batch = prompts[start:start + chunk]
        pairs = sample_pairs(
            model, tokenizer, [p.messages for p in batch], params=params, seed=mix_seed(seed, i),
            other_model=other[0], other_tokenizer=other[1],
        )
        made = services.comparisons_create_sampled(
            campaign=campaign, prompts=batch, pairs=pairs, policy=policy, arena_policy=arena, sampling_params=params.as_dict()
        )
        report.created += len(made)
        report.dropped += len(batch) - len(made)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    logger.info("campaign %s: %d pair(s) sampled from %s, %d dropped", campaign.slug, report.created, policy.name, report.dropped)
    return report
