"""Every write of the annotation app, keyword-only, typed and transactional (HackSoft
styleguide), one module per entity; ``from annotation import services`` reaches them all."""

from annotation.parsing import ImportReport, prompt_file_format
from annotation.services.assignment import assignment_next, assignment_skip, assignments_expire
from annotation.services.audit import audit_record
from annotation.services.campaigns import (
    campaign_create,
    comparison_create,
    guideline_publish,
    prompt_get_or_create,
    response_get_or_create_text,
)
from annotation.services.evaluations import (
    evaluation_cancel,
    evaluation_create,
    evaluation_fail,
    evaluation_finish,
    evaluation_promote,
    evaluation_start,
    gate_check,
)
from annotation.services.judges import (
    JUDGE_FIELDS,
    JudgedReport,
    judge_gate_configure,
    judge_preferences_derive,
    judge_run_request,
    judge_save,
    judge_votes_record,
)
from annotation.services.imports import preferences_import, prompts_import
from annotation.services.members import campaign_members_add, campaign_members_remove
from annotation.services.sampling import (
    SampledText,
    campaign_policy_ensure,
    campaign_refill_claim,
    campaign_refill_release,
    comparisons_create_sampled,
    model_version_register_base,
)
from annotation.services.serving import chat_complete, chat_models
from annotation.services.promotions import campaign_policy_promote, campaign_policy_rollback
from annotation.services.retraining import retrain_policies_trigger, retrain_policy_trigger
from annotation.services.training_runs import (
    training_run_cancel,
    training_run_create,
    training_run_finish,
    training_run_log,
    training_run_progress,
    training_run_start,
)
from annotation.services.sweeps import Swept, stale_work_fail
from annotation.services.votes import Aggregate, VoteResult, vote_submit, votes_aggregate

__all__ = [
    "Aggregate",
    "ImportReport",
    "JudgedReport",
    "SampledText",
    "Swept",
    "VoteResult",
    "assignment_next",
    "audit_record",
    "assignment_skip",
    "assignments_expire",
    "campaign_create",
    "campaign_members_add",
    "campaign_members_remove",
    "chat_complete",
    "chat_models",
    "campaign_policy_ensure",
    "campaign_policy_promote",
    "campaign_policy_rollback",
    "campaign_refill_claim",
    "campaign_refill_release",
    "comparison_create",
    "comparisons_create_sampled",
    "evaluation_cancel",
    "evaluation_create",
    "evaluation_fail",
    "evaluation_finish",
    "evaluation_promote",
    "evaluation_start",
    "gate_check",
    "guideline_publish",
    "JUDGE_FIELDS",
    "judge_gate_configure",
    "judge_preferences_derive",
    "judge_save",
    "judge_run_request",
    "judge_votes_record",
    "model_version_register_base",
    "preferences_import",
    "prompt_file_format",
    "prompt_get_or_create",
    "prompts_import",
    "response_get_or_create_text",
    "retrain_policies_trigger",
    "retrain_policy_trigger",
    "stale_work_fail",
    "training_run_cancel",
    "training_run_create",
    "training_run_finish",
    "training_run_log",
    "training_run_progress",
    "training_run_start",
    "vote_submit",
    "votes_aggregate",
]
