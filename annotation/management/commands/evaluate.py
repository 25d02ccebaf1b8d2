"""python manage.py evaluate --campaign SLUG --version NAME [--seed S] [--max-prompts N] [--wait]

Queues an evaluation of a policy version against the campaign's active policy (trigger
``shell``) through the same service as the API; a gpu worker runs it and applies the
campaign's gate. With ``--wait``, follows it in the database and prints the figures; exits 0
when it succeeded, 1 otherwise (with its error)."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from annotation.limits import DEFAULT_EVAL_PROMPTS
from annotation.selectors import model_version_named
from annotation.management.commands._common import campaign_or_error, command_errors
from annotation.models import Evaluation
from annotation.services import evaluation_create


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def summary(e: Evaluation) -> str:
    """The figures in one paragraph, as the shell shows them."""
    return (
        f"Evaluation {e.pk}: {e.candidate.name} vs {e.baseline.name} on {e.n_prompts} eval prompt(s), "
        f"judged by {e.reward_model.name if e.reward_model else '-'}\n"
        f"  win rate {e.win_rate:.3f} (95% CI {e.win_low:.3f}-{e.win_high:.3f}; {e.wins} won, {e.ties} tied, {e.losses} lost)\n"
        f"  KL to {e.reference.name if e.reference else '-'}: {e.kl if e.kl is None else round(e.kl, 3)}\n"
        f"  mean length {e.mean_length_new:.1f} vs {e.mean_length_active:.1f} tokens; "
        f"distinct-2 {e.distinct2_new:.3f} vs {e.distinct2_active:.3f}\n"
        f"  gate: {e.decision} ({e.decision_reason})"
    )


class Command(BaseCommand):
    help = "Evaluate a policy version against the campaign's active policy (a gpu worker runs it); --wait follows it."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version names the model version here, not Django's version (which it replaces).
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--version", required=True, dest="version_name", help="name of the policy version to evaluate")
        parser.add_argument("--seed", type=int, default=None, help="base seed of both policies' samples (random when omitted)")
        parser.add_argument("--max-prompts", type=int, default=DEFAULT_EVAL_PROMPTS, help="at most this many eval prompts")
        parser.add_argument("--wait", action="store_true", help="follow it until it ends; exit 1 unless it succeeded")
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between looks (with --wait)")

    def handle(self, *args, campaign, version_name, seed, max_prompts, wait, poll, **options):
        camp = campaign_or_error(campaign)
        with command_errors():
            candidate = model_version_named(name=version_name)
            evaluation = evaluation_create(campaign=camp, candidate=candidate, trigger=Evaluation.Trigger.SHELL,
                                           seed=seed, max_prompts=max_prompts)
        self.stdout.write(f"Evaluation {evaluation.pk} queued: {candidate.name} vs {evaluation.baseline.name} "
                          f"on '{camp.slug}' (seed {evaluation.seed}).")
        if wait:
            self.follow(evaluation.pk, poll=max(0.05, poll))

    def follow(self, evaluation_id: int, *, poll: float) -> None:
        try:
            while True:
                evaluation = Evaluation.objects.select_related("candidate", "baseline", "reference", "reward_model").get(pk=evaluation_id)
                if evaluation.status not in Evaluation.ACTIVE:
                    break
                _pause(poll)
        except KeyboardInterrupt:
            raise CommandError(f"Stopped following evaluation {evaluation_id}; it goes on (GET /api/evaluations/{evaluation_id}/).") from None
        if evaluation.status != Evaluation.Status.SUCCEEDED:
            raise CommandError(f"Evaluation {evaluation_id} {evaluation.status}" + (f": {evaluation.error}" if evaluation.error else "."))
        self.stdout.write(self.style.SUCCESS(summary(evaluation)))
