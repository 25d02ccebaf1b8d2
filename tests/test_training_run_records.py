"""Training runs as records, without training: one active run per campaign and kind (the
database refuses a second, the service answers a Conflict naming the first), who started it,
metrics as rows, progress and ETA, cancel."""

import threading

import pytest
from django.db import IntegrityError, connections, transaction

from annotation import selectors, services
from annotation.errors import Conflict, InvalidInput, NotFound
from annotation.models import ModelVersion, TrainingMetric, TrainingRun
from tests.factories import CampaignFactory, UserFactory


@pytest.fixture
def base(db):
    return services.model_version_register_base(spec="some/base-model")


def test_the_database_refuses_a_second_queued_or_running_run_of_a_kind(campaign, base):
    def run(status="queued", kind="dpo", campaign=campaign):
        return TrainingRun(campaign=campaign, kind=kind, base_version=base, status=status)

    for pair in (("queued", "queued"), ("queued", "running"), ("running", "running")):
        with pytest.raises(IntegrityError, match="trainingrun_one_active_per_kind"), transaction.atomic():
            TrainingRun.objects.bulk_create([run(pair[0]), run(pair[1])])
    TrainingRun.objects.create(kind="dpo", campaign=campaign, base_version=base, status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.create(kind="dpo", campaign=campaign, base_version=base)  # the ORM, no service
    failed = run("failed")
    failed.save()
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.filter(pk=failed.pk).update(status="queued")  # re-queued behind the service's back
    # Ended runs, another kind, another campaign and runs of no campaign are all free.
    TrainingRun.objects.bulk_create([
        run("succeeded"), run("failed"), run("cancelled"), run(kind="reward"), run(campaign=CampaignFactory()),
        run(campaign=None), run(campaign=None),
    ])
    assert TrainingRun.objects.filter(status__in=["queued", "running"]).count() == 5


def test_a_second_active_run_is_a_conflict_naming_the_first(campaign, base, admin_user):
    first = services.training_run_create(campaign=campaign, kind="dpo", base_version=base, created_by=admin_user,
                                         trigger="api")
    assert (first.created_by, first.trigger, first.status) == (admin_user, "api", "queued")
    with transaction.atomic():  # a caller's transaction survives the refusal (the insert is in a savepoint)
        with pytest.raises(Conflict) as refused:
            services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
        assert TrainingRun.objects.count() == 1
    assert refused.value.details == {"run_id": first.pk}
    assert refused.value.message == (f"Campaign 'c1' already has a dpo run queued or running (run {first.pk}); "
                                     "cancel it or wait for it to end.")
    assert services.training_run_create(campaign=campaign, kind="reward", base_version=base).trigger == "shell"
    services.training_run_cancel(run_id=first.pk)
    assert services.training_run_create(campaign=campaign, kind="dpo", base_version=base).status == "queued"
    with pytest.raises(InvalidInput, match="Unknown trigger 'cron'"):
        services.training_run_create(campaign=campaign, kind="sft", base_version=base, trigger="cron")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_starts_make_one_run_and_one_conflict(sent):
    campaign = CampaignFactory()
    base = services.model_version_register_base(spec="some/base-model")
    barrier, outcomes = threading.Barrier(2), []

    def start():
        try:
            barrier.wait(timeout=10)
            outcomes.append(services.training_run_create(campaign=campaign, kind="dpo", base_version=base).pk)
        except Conflict as exc:
            outcomes.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    runs = [o for o in outcomes if isinstance(o, int)]
    conflicts = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(runs) == 1 and len(conflicts) == 1 and conflicts[0].details == {"run_id": runs[0]}
    assert TrainingRun.objects.count() == 1 and sent == [("workers.tasks.gpu_train", runs)]


def test_metrics_are_rows_appended_in_one_insert_and_read_per_step_and_as_series(campaign, base, django_assert_num_queries):
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    with django_assert_num_queries(1):
        assert services.training_run_log(run_id=run.pk, metrics={"step": 1, "loss": 0.7, "learning_rate": 1e-5}) == 2
    services.training_run_log(run_id=run.pk, step=2, metrics={"loss": float("inf"), "learning_rate": 2e-5})
    services.training_run_log(run_id=run.pk, metrics={"step": 2, "eval_loss": 0.5})
    services.training_run_log(run_id=run.pk, metrics={"step": 1, "loss": 0.69})  # a resumed run redoes step 1
    assert TrainingMetric.objects.filter(run=run).count() == 5
    assert selectors.training_run_metrics(run=run) == [
        {"step": 1, "learning_rate": 1e-5, "loss": 0.69},
        {"step": 2, "eval_loss": 0.5, "learning_rate": 2e-5, "loss": None},
    ]
    assert selectors.training_run_series(run=run, names=["loss", "absent"]) == {"loss": [(1, 0.69), (2, None)], "absent": []}
    assert set(selectors.training_run_series(run=run)) == {"loss", "learning_rate", "eval_loss"}
    with pytest.raises(InvalidInput, match="Metric 'loss' is not a number: 'high'"):
        services.training_run_log(run_id=run.pk, metrics={"step": 3, "loss": "high"})
    with pytest.raises(InvalidInput, match="needs its step"):
        services.training_run_log(run_id=run.pk, metrics={"loss": 1.0})


def test_progress_and_eta(campaign, base):
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    services.training_run_progress(run_id=run.pk, step=4, total_steps=10)
    services.training_run_log(run_id=run.pk, metrics={"step": 4, "seconds_per_step": 2.5})
    run.refresh_from_db()
    assert (run.step, run.total_steps) == (4, 10)
    assert selectors.training_run_eta_seconds(run=run) is None  # queued: no estimate
    services.training_run_start(run_id=run.pk, device="cpu", data_manifest={})
    run.refresh_from_db()
    assert selectors.training_run_eta_seconds(run=run) == pytest.approx(15.0)


def test_cancel_queued_running_and_ended_runs(campaign, base):
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    assert services.training_run_cancel(run_id=run.pk).status == "cancelled"
    assert services.training_run_cancel(run_id=run.pk).status == "cancelled"  # again: nothing changes
    done = services.training_run_create(campaign=campaign, kind="sft", base_version=base)
    services.training_run_finish(run_id=done.pk, status="failed", error="boom")
    with pytest.raises(Conflict, match=f"Run {done.pk} already failed"):
        services.training_run_cancel(run_id=done.pk)
    with pytest.raises(NotFound):
        services.training_run_cancel(run_id=987654)


def test_anonymous_or_missing_creator_is_stored_as_none(campaign, base):
    from django.contrib.auth.models import AnonymousUser

    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base, created_by=AnonymousUser())
    assert run.created_by is None
    user = UserFactory()
    services.training_run_cancel(run_id=run.pk)
    assert services.training_run_create(campaign=campaign, kind="dpo", base_version=base, created_by=user).created_by == user


def test_a_run_starts_only_from_a_policy_version(campaign):
    reward = ModelVersion.objects.create(name="rm-1", base="some/base-model", kind=ModelVersion.Kind.REWARD)
    with pytest.raises(InvalidInput, match="'rm-1' is a reward model; a run starts from a policy version"):
        services.training_run_create(campaign=campaign, kind="dpo", base_version=reward)
    assert not TrainingRun.objects.exists()


def test_redis_redelivers_only_after_the_longest_task(settings):
    # Late acks + Redis: a task still running past visibility_timeout would go to a second worker.
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] > settings.CELERY_TASK_TIME_LIMIT


@pytest.mark.django_db(transaction=True)
def test_existing_role_groups_get_new_permissions_on_migrate():
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from annotation import roles

    admin = roles.roles_ensure()[roles.ADMIN]
    admin.permissions.clear()  # a group created before manage_training existed
    call_command("migrate", verbosity=0)
    assert admin.permissions.filter(codename="manage_training").exists()
