"""Prefloop's data model (DESIGN.md), one module per part; every model is re-exported here, so
``from annotation.models import Vote`` works and Django finds them all. Integrity lives in the
models' constraints; logic lives in services."""

from annotation.models.audit import AuditEvent
from annotation.models.campaigns import (
    Campaign,
    CampaignMembership,
    Choice,
    GuidelineVersion,
    Prompt,
    Strength,
    validate_sampling_params,
)
from annotation.models.evaluations import Evaluation
from annotation.models.items import Assignment, Comparison, Preference, Response, Vote
from annotation.models.judges import Judge
from annotation.models.policies import PolicyPromotion, RetrainPolicy
from annotation.models.runs import ModelVersion, TrainingMetric, TrainingRun, validate_run_config

__all__ = [
    "Assignment",
    "AuditEvent",
    "Campaign",
    "CampaignMembership",
    "Choice",
    "Comparison",
    "Evaluation",
    "GuidelineVersion",
    "Judge",
    "ModelVersion",
    "PolicyPromotion",
    "Preference",
    "Prompt",
    "Response",
    "RetrainPolicy",
    "Strength",
    "TrainingMetric",
    "TrainingRun",
    "Vote",
    "validate_run_config",
    "validate_sampling_params",
]
