"""The loop end to end with a real Celery worker process (queues ``gpu`` and ``default``) on
Redis + PostgreSQL: runs started through the API are trained by the worker (queued → running →
succeeded, metric rows, a new version), the new policy is evaluated by the worker and promoted
by the campaign's gate, the next ``sample_pairs`` samples from it, and a roll-back restores the
previous policy; cancel from the API stops a running run within one step; the database refuses
a second active run of a kind. Tiny models (random Llama, the real tokenizer), tiny configs."""

import time

import pytest
from django.conf import settings as django_settings
from django.db import IntegrityError

from annotation import enqueue, selectors, services
from annotation.models import Campaign, Evaluation, ModelVersion, PolicyPromotion, Prompt, Response, TrainingRun
from tests.factories import CampaignFactory, PromptFactory
from tests.processes import ROOT, celery_worker, worker_env, wait_for

pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]

SMALL = {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 64, "min_response_tokens": 1, "log_every": 1, "lr": 1e-3}
SAMPLING = {"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "top_p": 1.0}


@pytest.fixture(scope="module")
def worker(django_db_setup, tiny_policy, tmp_path_factory):
    """One worker for the module, on the test database and this session's broker; its log."""
    import redis

    tmp = tmp_path_factory.mktemp("loop-worker")
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete("gpu", "default")  # nothing left over from another run on this broker database
    env = worker_env(
        PREFLOOP_DEFAULT_POLICY=tiny_policy,
        PREFLOOP_ARTIFACTS_DIR=str(tmp / "artifacts"),
    )
    log = tmp / "worker.log"
    with celery_worker(env=env, log=log, queues="gpu,default"):
        yield log


@pytest.fixture
def campaign(settings, tiny_policy, tmp_path):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy, "ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    c = CampaignFactory(slug="loop", sampling_params=SAMPLING)
    lines = (ROOT / "fixtures" / "tests" / "trl_mixed.jsonl").read_text().splitlines()
    assert services.preferences_import(campaign=c, lines=list(enumerate(lines, start=1)), fmt="trl").created >= 3
    for text in ("Name a colour.", "What is 3+4?", "Say something kind."):
        PromptFactory(campaign=c, split=Prompt.Split.EVAL, messages=[{"role": "user", "content": text}])
    return c


def start(client, campaign, kind: str, config: dict) -> dict:
    r = client.post("/api/training-runs/", {"campaign": campaign.slug, "kind": kind, "config": config}, format="json")
    assert r.status_code == 202, r.content
    assert r.json()["status"] == "queued"
    return r.json()


def follow(run_id: int, *, log, timeout: float = 120) -> list[str]:
    """The run's statuses as seen every 20 ms until it finishes (distinct, in order)."""
    seen: list[str] = []

    def finished() -> bool:
        status = TrainingRun.objects.filter(pk=run_id).values_list("status", flat=True).get()
        if not seen or seen[-1] != status:
            seen.append(status)
        return status not in TrainingRun.ACTIVE

    wait_for(finished, timeout=timeout, what=f"run {run_id} to finish", log=log, poll=0.02)
    return seen


def test_api_run_trains_evaluates_promotes_samples_and_rolls_back(worker, campaign, api, admin_user):
    t0 = time.monotonic()
    client = api(admin_user)
    original = services.campaign_policy_ensure(campaign=campaign)
    Campaign.objects.filter(pk=campaign.pk).update(gate_min_win_rate=0.0, gate_min_prompts=1)  # any win rate passes: the gate promotes

    reward = start(client, campaign, "reward", SMALL)
    assert follow(reward["id"], log=worker)[-1] == "succeeded", worker.read_text()[-3000:]
    reward_version = ModelVersion.objects.get(training_run_id=reward["id"])
    assert reward_version.kind == "reward" and selectors.campaign_reward_model(campaign=campaign) == reward_version
    assert len(client.get(f"/api/training-runs/{reward['id']}/").json()["metrics"]) >= 2

    dpo = start(client, campaign, "dpo", SMALL)
    seen = follow(dpo["id"], log=worker)  # the POST answered queued; the worker may have taken it before the first look
    assert seen[-2:] == ["running", "succeeded"] and seen[0] in ("queued", "running"), (seen, worker.read_text()[-3000:])
    detail = client.get(f"/api/training-runs/{dpo['id']}/").json()
    assert detail["status"] == "succeeded" and (detail["step"], detail["total_steps"]) == (2, 2) and detail["device"] == "cpu"
    assert [m["step"] for m in detail["metrics"] if "loss" in m] == [1, 2]
    new = ModelVersion.objects.get(training_run_id=dpo["id"])
    assert detail["output_version"] == new.name and new.kind == "policy" and new.parent == original

    # The worker queued the new version's evaluation itself; the gate promoted it.
    wait_for(lambda: Evaluation.objects.filter(candidate=new).exclude(status__in=Evaluation.ACTIVE).exists(),
             timeout=120, what="the worker to evaluate the new version", log=worker)
    evaluation = Evaluation.objects.get(candidate=new)
    assert (evaluation.status, evaluation.trigger, evaluation.baseline, evaluation.reward_model) == (
        "succeeded", "run", original, reward_version), evaluation.error
    assert evaluation.n_prompts == 3 and evaluation.win_rate is not None and evaluation.decision == "promoted"
    campaign.refresh_from_db()
    assert campaign.policy == new and evaluation.promotion.to_version == new and evaluation.promotion.by is None

    # The next sample_pairs (enqueued by name, as the web processes do) samples from it.
    before = campaign.comparisons.count()
    PromptFactory(campaign=campaign)
    enqueue.sample_pairs(campaign.pk, 2)
    wait_for(lambda: campaign.comparisons.count() >= before + 2, timeout=60, what="sample_pairs on the worker", log=worker)
    sampled = Response.objects.filter(prompt__campaign=campaign, source="policy")
    assert sampled.count() == 4 and {r.model_version_id for r in sampled} == {new.pk}

    r = client.post(f"/api/campaigns/{campaign.slug}/rollback/", {"reason": "e2e"}, format="json")
    assert r.status_code == 200 and r.json()["to_version"] == original.name
    campaign.refresh_from_db()
    assert campaign.policy == original
    assert list(PolicyPromotion.objects.order_by("pk").values_list("action", "by")) == [("promote", None), ("rollback", admin_user.pk)]
    print(f"loop e2e: {time.monotonic() - t0:.1f} s")


def test_cancel_from_the_api_stops_within_one_step_and_one_active_run_per_kind(worker, campaign, api, admin_user):
    client = api(admin_user)
    run = start(client, campaign, "dpo", {**SMALL, "max_steps": 500})
    wait_for(lambda: TrainingRun.objects.get(pk=run["id"]).status == "running"
             and selectors.training_run_metrics(run=TrainingRun.objects.get(pk=run["id"])),
             timeout=60, what="the long run to log a step", log=worker, poll=0.02)

    # A second queued run of the kind: the API says 409, and the database itself refuses the row.
    r = client.post("/api/training-runs/", {"campaign": campaign.slug, "kind": "dpo", "config": SMALL}, format="json")
    assert r.status_code == 409 and r.json()["error"]["details"]["run_id"] == run["id"]
    with pytest.raises(IntegrityError):
        TrainingRun.objects.create(campaign=campaign, kind="dpo", base_version_id=TrainingRun.objects.get(pk=run["id"]).base_version_id)

    r = client.post(f"/api/training-runs/{run['id']}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    logged = max(m["step"] for m in selectors.training_run_metrics(run=TrainingRun.objects.get(pk=run["id"])))
    wait_for(lambda: "'cancelled'" in worker.read_text(), timeout=60, what="the worker to stop the run", log=worker)
    stopped = TrainingRun.objects.get(pk=run["id"])
    last = max(m["step"] for m in selectors.training_run_metrics(run=stopped))
    assert stopped.status == "cancelled" and stopped.total_steps == 500
    assert last <= logged + 1 and stopped.step <= logged + 1 and stopped.step < 500  # at most the step under way
    assert not ModelVersion.objects.filter(training_run=stopped).exists()
    print(f"cancel: {logged} step(s) logged when cancelled, stopped at {stopped.step} of {stopped.total_steps}")


def test_a_worker_runs_ppo_end_to_end_with_the_monitor(worker, campaign, api, admin_user, tiny_reward, tiny_gold):
    """kind=ppo through the API: refused while the campaign has no reward model, then trained by
    the real worker against a reward version with a gold version watching: rollout metrics and
    monitor rows stored, the chosen (best-gold) checkpoint registered as the new version."""
    client = api(admin_user)
    config = {"prompts_per_rollout": 2, "max_new_tokens": 5, "max_steps": 2, "log_every": 1, "monitor_every": 1, "lr": 1e-3}
    r = client.post("/api/training-runs/", {"campaign": campaign.slug, "kind": "ppo", "config": config}, format="json")
    assert r.status_code == 400 and "reward model" in r.json()["error"]["message"]
    assert not TrainingRun.objects.filter(kind="ppo").exists()
    rm = ModelVersion.objects.create(name="rm-tiny", kind="reward", base=tiny_reward, artifact_path=tiny_reward)
    other = Campaign.objects.create(slug="other-campaign", name="Other")
    foreign_run = TrainingRun.objects.create(kind="reward", campaign=other, base_version=rm, status="succeeded")
    ModelVersion.objects.create(name="rm-foreign", kind="reward", base=tiny_reward, artifact_path=tiny_reward, training_run=foreign_run)
    r = client.post("/api/training-runs/", {"campaign": campaign.slug, "kind": "ppo", "config": {**config, "reward_model": "rm-foreign"}},
                    format="json")
    assert r.status_code == 400 and "not a reward-model version of this campaign" in r.json()["error"]["message"]
    ModelVersion.objects.create(name="gold-tiny", kind="reward", base=tiny_gold, artifact_path=tiny_gold)
    run = start(client, campaign, "ppo", {**config, "reward_model": rm.name, "gold_model": "gold-tiny"})
    assert follow(run["id"], log=worker)[-1] == "succeeded", worker.read_text()[-3000:]
    done = TrainingRun.objects.get(pk=run["id"])
    assert done.data_manifest["reward_model"] == "rm-tiny" and done.data_manifest["gold_model"] == "gold-tiny"
    assert done.data_manifest["eval_prompts"] == 3 and done.data_manifest["prompts"] >= 3
    names = set(done.metric_rows.values_list("name", flat=True))
    assert {"objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg",
            "monitor/proxy_score", "monitor/gold_score", "monitor/kl"} <= names
    gold = dict(done.metric_rows.filter(name="monitor/gold_score").values_list("step", "value"))
    assert sorted(gold) == [0, 1, 2]
    version = ModelVersion.objects.get(training_run=done)
    assert version.kind == "policy" and version.metrics.get("chosen_step") == max(gold, key=lambda s: (gold[s], -s))
