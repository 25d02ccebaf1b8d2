"""Data, between 0003 (new tables) and 0005 (the JSON column dropped, the constraint added):

- each run's JSON list of metrics rows becomes TrainingMetric rows (a step logged twice, by a
  resumed run, keeps its last value; NaN / inf, stored as null, stay null; non-numeric values
  are not metrics and are left out), and the run's ``step`` is its last logged step;
- of several queued / running runs of one campaign and kind, one stays active (a running one
  before a queued one, then the newest); the others are cancelled with the reason in ``error``,
  so that 0005's one-active-run constraint can be added.
"""

import math

from django.db import migrations
from django.utils import timezone


def _number(value):
    """A metric value as a finite float or None; ``...`` for what is not a number at all."""
    if value is None:
        return None
    if isinstance(value, (bool, int, float)):
        try:
            value = float(value)
        except OverflowError:
            return None
        return value if math.isfinite(value) else None
    return ...


def metrics_to_rows(apps, schema_editor):
    TrainingRun = apps.get_model("annotation", "TrainingRun")
    TrainingMetric = apps.get_model("annotation", "TrainingMetric")
    for run in TrainingRun.objects.only("pk", "metrics").iterator(chunk_size=100):
        values, step = {}, 0
        for row in run.metrics or []:
            if not isinstance(row, dict):
                continue
            s = row.get("step")
            if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s):
                step = int(s)
            for name, raw in row.items():
                value = _number(raw)
                if name != "step" and value is not ...:
                    values[(str(name)[:100], step)] = value
        if values:
            TrainingMetric.objects.bulk_create(
                [TrainingMetric(run_id=run.pk, name=n, step=s, value=v) for (n, s), v in values.items()], batch_size=1000
            )
            TrainingRun.objects.filter(pk=run.pk).update(step=max(0, max(s for _, s in values)))


def rows_to_metrics(apps, schema_editor):
    TrainingRun = apps.get_model("annotation", "TrainingRun")
    TrainingMetric = apps.get_model("annotation", "TrainingMetric")
    for run in TrainingRun.objects.only("pk").iterator(chunk_size=100):
        rows: dict[int, dict] = {}
        for m in TrainingMetric.objects.filter(run_id=run.pk).order_by("step", "name"):
            rows.setdefault(m.step, {"step": m.step})[m.name] = m.value
        TrainingRun.objects.filter(pk=run.pk).update(metrics=list(rows.values()))
    TrainingMetric.objects.all().delete()


def one_active_run_per_kind(apps, schema_editor):
    TrainingRun = apps.get_model("annotation", "TrainingRun")
    active = TrainingRun.objects.filter(status__in=["queued", "running"], campaign__isnull=False)
    runs = sorted(active, key=lambda r: (r.status != "running", -r.created_at.timestamp(), -r.pk))
    kept: dict[tuple[int, str], int] = {}
    now = timezone.now()
    for run in runs:
        key = (run.campaign_id, run.kind)
        if key not in kept:
            kept[key] = run.pk
            continue
        run.status, run.finished_at = "cancelled", now
        run.error = (f"Cancelled by migration 0004: run {kept[key]} of the same campaign and kind was also queued or "
                     "running, and from now on only one may be.")
        run.save(update_fields=["status", "finished_at", "error"])


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0003_runs_metrics_policies"),
    ]

    operations = [
        migrations.RunPython(metrics_to_rows, rows_to_metrics),
        migrations.RunPython(one_active_run_per_kind, migrations.RunPython.noop),
    ]
