"""SIGKILL of a Celery worker in the middle of ``sample_pairs`` and of a training run: the
Celery scenarios of ``annotator_faults.py`` (``--only celery`` runs them alone, while the
annotators vote over HTTP, restarting neither Redis nor PostgreSQL).

Processes as docker-compose runs them (production settings, PostgreSQL, Redis): a ``default``
worker (beat's tasks) and a ``gpu`` worker (prefork, ``--concurrency 1``: a main process and
one pool child that runs the tasks; the child has PDEATHSIG=SIGKILL, so it dies with the
main). This script plays beat, sending ``refill_buffers`` and ``sweep_stale`` by name every
``--beat-seconds`` (production: every 30 s and 300 s). Models: a tiny random Llama with the
real tokenizer, as the tests use.

- sample_pairs: a campaign (20 prompts, buffer 40) is refilled the production way
  (``refill_buffers`` takes the campaign's refill claim and enqueues ``sample_pairs``); once
  the claim is held and a first chunk of pairs is committed, the gpu worker is SIGKILLed
  (``--celery-kill both``: main and pool child at once, as ``docker kill`` or a lost machine;
  ``child``: the pool child only, as the OOM killer would) and a new worker started (``both``;
  with ``child`` the surviving main forks a new pool child). Measured: time until the buffer is
  full again and the claim released. Checked: exactly 40 pairs (no double refill), no policy
  response without its comparison or in two, A and B of each pair on its prompt, 2 per prompt.
- training: a reward run of 300 steps started over the API as an admin would; once it has
  logged steps, SIGKILL as above. Checked: a second run of the kind is refused (409) while the
  lost run looks alive; the run leaves ``running`` (the stale sweep fails it, saying why);
  a run started again over the API succeeds. Measured: both times.
- redelivery: the killed worker's unacknowledged messages are handed back to their queues
  (kombu's ``restore_by_tag``, what Redis does after the visibility timeout) and must change
  nothing: the redelivered refill's claim has moved on, the redelivered run stays failed.

A SIGKILLed task is never finished by the worker: its ``finally`` (the refill claim's release)
does not run; with ``both`` its message stays unacknowledged in Redis until the visibility
timeout (7 h, longer than the longest task on purpose; no knob), with ``child`` the surviving
main acknowledges it as failed (WorkerLostError): never redelivered, late acks or not. What
frees the campaign is time: the refill claim no longer blocks after
``PREFLOOP_REFILL_STALE_MINUTES``, the sweep fails a run silent for
``PREFLOOP_WORK_STALE_MINUTES``. Both default to 60; the workers here run with
``--stale-minutes`` (default 1), so production's recovery is about 59 minutes longer (plus
beat's 30 s / 300 s periods). Processes and broker plumbing: ``celery_processes.py``.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from benchmarks.celery_processes import BROKER_KEYS, Beat, Worker, api, broker_client, lost_messages
from tests.processes import ROOT, wait_for

SAMPLING = {"max_new_tokens": 16, "batch_size": 4, "temperature": 1.0, "top_p": 1.0}  # 8 pairs per committed chunk
N_PROMPTS, BUFFER = 20, 40
SMALL = {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 64, "min_response_tokens": 1, "log_every": 1,
         "lr": 1e-3}
LONG = {**SMALL, "max_steps": 300}


def add_arguments(ap) -> None:
    g = ap.add_argument_group("Celery scenarios")
    g.add_argument("--celery-seconds", type=float, default=240.0, help="annotator load while they run (s)")
    g.add_argument("--celery-kill", choices=["both", "child"], default="both",
                   help="SIGKILL the gpu worker's main process and its pool child (both) or the pool child only")
    g.add_argument("--stale-minutes", type=int, default=1,
                   help="the workers' PREFLOOP_REFILL_STALE_MINUTES and PREFLOOP_WORK_STALE_MINUTES (production: 60)")
    g.add_argument("--beat-seconds", type=float, default=5.0, help="this script's beat period (production: 30 s / 300 s)")


# ---------------------------------------------------------------- setup


def prepare(args, tmp: Path, ctx: dict) -> None:
    """Campaigns, an admin's token, the tiny policy, and the two workers (before the load starts),
    into ``ctx`` (``cleanup(ctx, args)`` stops the workers, even those of a failed start)."""
    from rest_framework.authtoken.models import Token

    from annotation import roles, services
    from annotation.models import Campaign
    from tests.tiny import save_tiny_policy

    tag = uuid.uuid4().hex[:8]
    # Only this run's campaign is refilled: an earlier run's has lost its policy, and the load runs'
    # campaigns left in the benchmark database would keep the gpu worker busy for minutes.
    Campaign.objects.exclude(buffer_size=0).update(buffer_size=0)
    policy = save_tiny_policy(tmp / "tiny-policy")
    version = services.model_version_register_base(spec=policy)
    sample = services.campaign_create(slug=f"cf-sample-{tag}", name="Celery faults: sampling", guideline="Pick the better one.",
                                      buffer_size=BUFFER, sampling_params=SAMPLING, policy=version)
    for i in range(N_PROMPTS):
        services.prompt_get_or_create(campaign=sample, messages=[{"role": "user", "content": f"Tell me about thing {i}."}])
    train = services.campaign_create(slug=f"cf-train-{tag}", name="Celery faults: training", guideline="Pick the better one.",
                                     buffer_size=0, policy=version)
    lines = (ROOT / "fixtures" / "tests" / "trl_mixed.jsonl").read_text().splitlines()
    services.preferences_import(campaign=train, lines=list(enumerate(lines, start=1)), fmt="trl")
    admin = roles.user_create(username=f"cf-admin-{tag}", password="faults-only-pw-123", role=roles.ADMIN)
    r = broker_client(args.broker)
    r.delete(*BROKER_KEYS)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="webapp.settings.production", SECRET_KEY="load-benchmark-only",
               ALLOWED_HOSTS="127.0.0.1,localhost", DATABASE_URL=args.db, CELERY_BROKER_URL=args.broker, HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1", PREFLOOP_DEFAULT_POLICY=policy, PREFLOOP_ARTIFACTS_DIR=str(tmp / "artifacts"),
               PREFLOOP_REFILL_STALE_MINUTES=str(args.stale_minutes), PREFLOOP_WORK_STALE_MINUTES=str(args.stale_minutes))
    ctx.update(tmp=tmp, env=env, sample=sample.pk, train=train.slug, train_id=train.pk, token=Token.objects.create(user=admin).key,
               workers=[], n=0)
    ctx["default"] = start_worker(ctx, "default")
    ctx["gpu"] = start_worker(ctx, "gpu")


def start_worker(ctx: dict, queues: str) -> Worker:
    ctx["n"] += 1
    w = Worker(f"{queues}{ctx['n']}", queues, ctx["env"], ctx["tmp"] / f"worker-{queues}{ctx['n']}.log")
    ctx["workers"].append(w)
    return w


def cleanup(ctx: dict, args) -> None:
    if not ctx:
        return
    for w in ctx.get("workers", []):
        w.stop()
    if "sample" in ctx:
        from annotation.models import Campaign

        Campaign.objects.filter(pk=ctx["sample"]).update(buffer_size=0)  # no refill from a policy about to be deleted
    broker_client(args.broker).delete(*BROKER_KEYS)  # the lost task's unacked message, whatever is queued


def _replace_gpu_worker(ctx: dict, args) -> None:
    """A new gpu worker (``both``); or (``child``) wait until the surviving main has written the
    pool child off (WorkerLostError: it acknowledges the message, which is never redelivered)."""
    if args.celery_kill == "both":
        ctx["gpu"] = start_worker(ctx, "gpu")
        return
    log = ctx["gpu"].log
    n = log.read_text().count("WorkerLostError")
    wait_for(lambda: log.read_text().count("WorkerLostError") > n, timeout=60, what="the main to write the child off", log=log)
    time.sleep(1.0)


# ---------------------------------------------------------------- (a) sample_pairs


def sampling_state(campaign_id: int):
    from annotation.models import Campaign, Comparison

    claim = Campaign.objects.filter(pk=campaign_id).values_list("refill_requested_at", flat=True).get()
    return claim, Comparison.objects.filter(campaign_id=campaign_id).count()


def sampling_checks(campaign_id: int) -> dict:
    from django.db.models import Count, F

    from annotation.models import Comparison, Prompt, Response

    comps = Comparison.objects.filter(campaign_id=campaign_id)
    ids = [i for pair in comps.values_list("response_a_id", "response_b_id") for i in pair]
    responses = Response.objects.filter(prompt__campaign_id=campaign_id, source=Response.Source.POLICY)
    per_prompt = list(Prompt.objects.filter(campaign_id=campaign_id).annotate(n=Count("comparisons")).values_list("n", flat=True))
    return {"pairs": comps.count(), "responses": responses.count(), "in_two_pairs": len(ids) - len(set(ids)),
            "orphans": responses.exclude(pk__in=set(ids)).count(),
            "off_prompt": comps.exclude(response_a__prompt=F("prompt")).count() + comps.exclude(response_b__prompt=F("prompt")).count(),
            "per_prompt_min": min(per_prompt), "per_prompt_max": max(per_prompt)}


def scenario_sampling(ctx: dict, args) -> dict:
    gpu, camp = ctx["gpu"], ctx["sample"]
    mid: dict = {}

    def caught() -> bool:
        claim, n = sampling_state(camp)
        if n >= BUFFER:
            raise RuntimeError("sample_pairs ended before it was caught mid-task (raise BUFFER or max_new_tokens)")
        if claim is not None and n > 0:
            mid.update(claim=claim, n=n)
            return True
        return False

    wait_for(caught, timeout=300, what="sample_pairs to commit a first chunk", log=gpu.log, poll=0.05)
    killed = gpu.sigkill(args.celery_kill)
    t_kill = time.monotonic()
    claim, committed = sampling_state(camp)
    _replace_gpu_worker(ctx, args)
    t_worker = time.monotonic() - t_kill
    unacked = len(lost_messages(ctx, args))
    print(f"[sample_pairs] SIGKILLed {killed} with {committed}/{BUFFER} pairs committed and the refill claim held; "
          f"{unacked} unacknowledged message(s) left in Redis; "
          + (f"a new worker ready after {t_worker:.1f} s" if args.celery_kill == "both" else "the main forked a new pool child"),
          flush=True)
    budget = args.stale_minutes * 60 + 240
    wait_for(lambda: sampling_state(camp)[0] != mid["claim"], timeout=budget, what="the refill claim to be taken over",
             log=ctx["gpu"].log, poll=0.2)
    t_claim = time.monotonic() - t_kill
    wait_for(lambda: sampling_state(camp) == (None, BUFFER), timeout=budget, what="the buffer to be refilled",
             log=ctx["gpu"].log, poll=0.2)
    t_full = time.monotonic() - t_kill
    time.sleep(2 * args.beat_seconds + 1)  # two more beats: nothing more is sampled
    claim, n = sampling_state(camp)
    checks = sampling_checks(camp)
    print(f"[sample_pairs] claim taken over after {t_claim:.1f} s, buffer full "
          f"({BUFFER}) and claim released after {t_full:.1f} s; two beats later: {n} pairs, claim {claim}; {checks}", flush=True)
    return {"killed": killed, "committed": committed, "unacked": unacked, "recovery_s": t_full, "claim_freed_s": t_claim,
            "duplicates": max(0, n - BUFFER) + checks["in_two_pairs"],
            "partial": checks["orphans"] + checks["off_prompt"] + abs(checks["responses"] - 2 * checks["pairs"]),
            "balanced": checks["per_prompt_min"] == checks["per_prompt_max"] == BUFFER // N_PROMPTS}


# ---------------------------------------------------------------- (b) a training run


def scenario_training(ctx: dict, args, base: str) -> dict:
    from annotation.models import ModelVersion, TrainingRun

    def start(config: dict) -> tuple[int, dict]:
        return api(base, ctx["token"], "POST", "/api/training-runs/", {"campaign": ctx["train"], "kind": "reward", "config": config})

    code, body = start(LONG)
    assert code == 202, (code, body)
    run_id = body["id"]
    runs = TrainingRun.objects.filter(pk=run_id)
    wait_for(lambda: runs.filter(status=TrainingRun.Status.RUNNING, step__gte=3).exists(), timeout=300,
             what=f"run {run_id} to log steps", log=ctx["gpu"].log, poll=0.05)
    killed = ctx["gpu"].sigkill(args.celery_kill)
    t_kill = time.monotonic()
    step = runs.values_list("step", flat=True).get()
    blocked, answer = start(SMALL)
    print(f"[training] SIGKILLed {killed} at step {step}/{LONG['max_steps']} of run {run_id}; a new reward run answers {blocked} "
          f"({answer.get('error', {}).get('message', answer.get('status'))})", flush=True)
    _replace_gpu_worker(ctx, args)
    wait_for(lambda: not runs.filter(status=TrainingRun.Status.RUNNING).exists(), timeout=args.stale_minutes * 60 + 400,
             what=f"run {run_id} to leave running", log=ctx["default"].log, poll=0.2)
    t_out = time.monotonic() - t_kill
    lost = runs.get()
    code, body = start(SMALL)
    assert code == 202, (code, body)
    again = TrainingRun.objects.filter(pk=body["id"])
    wait_for(lambda: again.exclude(status__in=TrainingRun.ACTIVE).exists(), timeout=300, what=f"run {body['id']} to finish",
             log=ctx["gpu"].log, poll=0.2)
    t_ok = time.monotonic() - t_kill
    restarted = again.get()
    print(f"[training] run {run_id} {lost.status} after {t_out:.1f} s (at step {lost.step}): {lost.error[:150]!r}; "
          f"run {restarted.pk} started again over the API: {restarted.status} {t_ok:.1f} s after the kill", flush=True)
    return {"run_id": run_id, "killed": killed, "step": step, "blocked_status": blocked, "status": lost.status, "error": lost.error,
            "recovery_s": t_out, "restart_s": t_ok, "restarted": restarted.status,
            "registered": ModelVersion.objects.filter(training_run_id=run_id).count()}


# ---------------------------------------------------------------- the lost messages, redelivered


def redeliver(ctx: dict, args, run_id: int) -> dict:
    """Hand the killed worker's unacknowledged ``sample_pairs`` and ``gpu_train`` messages back to
    their queues now, as kombu does once the visibility timeout (7 h) has passed, and check that
    they change nothing: the claim moved on (no second refill), the run stays failed."""
    from kombu import Connection

    from annotation.models import ModelVersion, TrainingRun

    lost = lost_messages(ctx, args, run_id)
    with Connection(args.broker) as conn:
        for tag in lost:
            conn.default_channel.qos.restore_by_tag(tag)
    log = ctx["gpu"].log

    def ended() -> bool:
        text = log.read_text()
        return all(f"{task} succeeded" in text or f"{task} raised" in text for task in lost.values())

    wait_for(ended, timeout=300, what="the redelivered tasks to end", log=log, poll=0.2)
    time.sleep(args.beat_seconds + 1)
    run = TrainingRun.objects.get(pk=run_id)
    ok = (sampling_state(ctx["sample"]) == (None, BUFFER) and run.status == TrainingRun.Status.FAILED
          and not ModelVersion.objects.filter(training_run_id=run_id).exists())
    print(f"[redelivery] {len(lost)} lost message(s) handed back as after the visibility timeout: "
          f"{sorted(v.split('[')[0].rsplit('.', 1)[1] for v in lost.values())}; afterwards {sampling_state(ctx['sample'])[1]} pairs, "
          f"run {run_id} {run.status}: {'nothing changed' if ok else 'CHANGED'}", flush=True)
    return {"n": len(lost), "ok": ok}


def run(ctx: dict, args, base: str) -> tuple[dict, list[str]]:
    """Both scenarios, beat running; the RESULT fields and a summary line."""
    from django.db import connections

    from annotation.models import Campaign, TrainingRun

    connections.close_all()  # a restart scenario before this one broke this process's connection
    beat = Beat(args.beat_seconds)
    beat.start()
    try:
        a = scenario_sampling(ctx, args)
        b = scenario_training(ctx, args, base)
        r = redeliver(ctx, args, b["run_id"])
    finally:
        beat.done.set()
        beat.join()
    # at the end: a refill claim still held, a run still queued or running
    stuck = (Campaign.objects.filter(pk=ctx["sample"], refill_requested_at__isnull=False).count()
             + TrainingRun.objects.filter(campaign_id=ctx["train_id"], status__in=TrainingRun.ACTIVE).count())
    fields = {"celery_kill": args.celery_kill, "stale_minutes": args.stale_minutes,
              "celery_refill_recovery_s": round(a["recovery_s"], 1), "training_recovery_s": round(b["recovery_s"], 1),
              "training_restart_s": round(b["restart_s"], 1), "stuck": stuck, "celery_duplicates": a["duplicates"],
              "celery_partial_pairs": a["partial"], "celery_balanced": int(a["balanced"]),
              "training_blocked_status": b["blocked_status"], "training_lost_registered": b["registered"],
              "redelivered": r["n"], "redelivered_harmless": int(r["ok"])}
    lines = [f"{'sample_pairs SIGKILL':<26} sampling again after {a['recovery_s']:.1f} s (claim freed after {a['claim_freed_s']:.1f} s; "
             f"killed {a['killed']})",
             f"{'training run SIGKILL':<26} run {b['status']} after {b['recovery_s']:.1f} s, a new run {b['restarted']} after "
             f"{b['restart_s']:.1f} s (killed {b['killed']})"]
    return fields, lines
