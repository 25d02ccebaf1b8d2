"""python manage.py train --campaign SLUG --kind dpo [key=value ...] [--base VERSION] [--data on_policy] [--wait]

Queues a training run (trigger ``shell``) through the same service as the API and the console;
a gpu worker trains it. With ``--wait``, follows the run in the database with a progress bar of
step / total and exits 0 when it succeeded, 1 otherwise (with its error)."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from annotation.selectors import model_version_named
from annotation.management.commands._common import campaign_or_error, command_errors
from annotation.models import TrainingRun
from annotation.services import training_run_create
from training.config import config_from
from training.recipes import RECIPES, recipe_for


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def typed_overrides(kind: str, items: list[str]) -> dict:
    """``["beta=0.2", "epochs=1"]`` -> ``{"beta": 0.2, "epochs": 1.0}``, typed and checked by the
    kind's config dataclass (unknown keys and bad values name the key)."""
    try:
        recipe = recipe_for(kind)
        cfg = config_from(recipe.config_cls, None, items)
    except ValueError as exc:
        raise CommandError(f"Invalid {kind} config: {exc}") from None
    keys = [item.split("=", 1)[0].strip() for item in items]
    return {k: list(v) if isinstance(v, tuple) else v for k in keys for v in [getattr(cfg, k)]}


class Command(BaseCommand):
    help = "Start a training run on a campaign's preferences (a gpu worker trains it); --wait follows it."

    def add_arguments(self, parser):
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="trainer config fields (unknown keys are errors)")
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--kind", required=True, choices=sorted(RECIPES))
        parser.add_argument("--base", help="model version name to train from (default: the campaign's active policy)")
        parser.add_argument("--data", choices=TrainingRun.DataScope.values, default=TrainingRun.DataScope.ALL,
                            help="all training preferences, or on_policy: only those on pairs the base version sampled")
        parser.add_argument("--wait", action="store_true", help="follow the run until it ends; exit 1 unless it succeeded")
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between looks at the run (with --wait)")

    def handle(self, *args, overrides, campaign, kind, base, data, wait, poll, **options):
        camp = campaign_or_error(campaign)
        config = typed_overrides(kind, overrides)
        with command_errors():
            base_version = model_version_named(name=base) if base else None
            run = training_run_create(campaign=camp, kind=kind, config=config, base_version=base_version,
                                      trigger=TrainingRun.Trigger.SHELL, data_scope=data)
        self.stdout.write(f"Run {run.pk} queued: {kind} on '{camp.slug}' from {run.base_version.name}.")
        if wait:
            self.follow(run.pk, poll=max(0.05, poll))

    def follow(self, run_id: int, *, poll: float) -> None:
        from tqdm import tqdm

        bar = None
        try:
            while True:
                run = TrainingRun.objects.get(pk=run_id)
                if run.total_steps and bar is None:
                    bar = tqdm(total=run.total_steps, desc=f"run {run_id}", unit="step", file=self.stderr._out)
                if bar is not None:
                    bar.update(max(0, run.step - bar.n))
                if run.status not in TrainingRun.ACTIVE:
                    break
                _pause(poll)
        except KeyboardInterrupt:
            raise CommandError(f"Stopped following run {run_id}; it goes on (cancel: POST /api/training-runs/{run_id}/cancel/).") from None
        finally:
            if bar is not None:
                bar.close()
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"Run {run_id} {run.status}" + (f": {run.error}" if run.error else "."))
        output = run.outputs.first()
        self.stdout.write(self.style.SUCCESS(f"Run {run_id} succeeded: {output.name if output else 'no version registered'}."))
