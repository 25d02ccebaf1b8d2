"""python manage.py train: queues a run (trigger shell) through the service, typed key=value
overrides, service errors as one-line CommandErrors; --wait follows it to the end."""

import io

import pytest
from django.core.management import CommandError, call_command

from annotation import services
from annotation.management.commands import train as train_command
from annotation.models import ModelVersion, TrainingRun


def train(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("train", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_queues_a_run_with_typed_overrides(campaign, sent_nothing):
    out, _ = train("--campaign", "c1", "--kind", "dpo", "beta=0.2", "epochs=1", "lora_targets=q_proj,v_proj")
    run = TrainingRun.objects.get()
    assert run.config == {"beta": 0.2, "epochs": 1.0, "lora_targets": ["q_proj", "v_proj"]}
    assert (run.trigger, run.created_by, run.status) == ("shell", None, "queued")
    assert out.startswith(f"Run {run.pk} queued: dpo on 'c1' from ")


def test_errors_are_one_line_command_errors(campaign, sent_nothing):
    with pytest.raises(CommandError, match="Invalid dpo config: unknown config key\\(s\\) for DPOConfig: betta"):
        train("--campaign", "c1", "--kind", "dpo", "betta=1")
    with pytest.raises(CommandError, match="Invalid dpo config: beta: could not convert"):
        train("--campaign", "c1", "--kind", "dpo", "beta=high")
    with pytest.raises(CommandError, match="cannot set 'model'"):
        train("--campaign", "c1", "--kind", "sft", "model=gpt2")
    with pytest.raises(CommandError, match="No campaign 'nope'"):
        train("--campaign", "nope", "--kind", "dpo")
    with pytest.raises(CommandError, match="No model version 'nope'"):
        train("--campaign", "c1", "--kind", "dpo", "--base", "nope")
    assert not TrainingRun.objects.exists()
    train("--campaign", "c1", "--kind", "dpo")
    first = TrainingRun.objects.get()
    with pytest.raises(CommandError, match=f"already has a dpo run queued or running \\(run {first.pk}\\)"):
        train("--campaign", "c1", "--kind", "dpo")


def _worker_steps(monkeypatch, steps):
    """Each poll of --wait runs the next fake worker step on the (only) run."""
    pending = list(steps)

    def pause(seconds):
        pending.pop(0)(TrainingRun.objects.get())

    monkeypatch.setattr(train_command, "_pause", pause)


def test_wait_shows_progress_and_exits_0_on_success(campaign, monkeypatch, sent_nothing):
    def running(run):
        services.training_run_start(run_id=run.pk, device="cpu", data_manifest={})
        services.training_run_progress(run_id=run.pk, step=1, total_steps=4)

    def done(run):
        services.training_run_progress(run_id=run.pk, step=4, total_steps=4)
        services.training_run_finish(run_id=run.pk, status="succeeded", artifact_path="/tmp/out")

    _worker_steps(monkeypatch, [running, done])
    out, err = train("--campaign", "c1", "--kind", "reward", "--wait", "--poll", "0")
    version = ModelVersion.objects.get(training_run__isnull=False)
    assert f"succeeded: {version.name}." in out and "4/4" in err


def test_wait_fails_with_the_runs_error(campaign, monkeypatch, sent_nothing):
    def failed(run):
        services.training_run_finish(run_id=run.pk, status="failed", error="no training preferences in this campaign yet")

    _worker_steps(monkeypatch, [failed])
    with pytest.raises(CommandError, match="failed: no training preferences in this campaign yet"):
        train("--campaign", "c1", "--kind", "dpo", "--wait", "--poll", "0")


@pytest.fixture
def sent_nothing(monkeypatch):
    from annotation import enqueue

    monkeypatch.setattr(enqueue.app, "send_task", lambda *a, **kw: pytest.fail("nothing is sent before the commit"))
