"""Enqueue Celery tasks by name: ``annotation`` never imports ``workers`` (DESIGN.md), so a web
process loads neither the tasks nor what they import.

``send_task`` goes through the same router as ``Task.delay``: CELERY_TASK_ROUTES still sends
``sample_pairs`` and ``gpu_*`` to the ``gpu`` queue. Call these from ``transaction.on_commit``
so a worker never sees an id whose row is not committed yet.
"""

from __future__ import annotations

from webapp.celery import app


def enqueue(task: str, *args, queue: str | None = None) -> None:
    """Send ``workers.tasks.<task>(*args)`` to its queue (``queue``: this one instead of the route's)."""
    options = {"queue": queue} if queue else {}
    app.send_task(f"workers.tasks.{task}", args=list(args), **options)


def gpu_train(run_id: int) -> None:
    enqueue("gpu_train", run_id)


def sample_pairs(campaign_id: int, n: int) -> None:
    enqueue("sample_pairs", campaign_id, n)


def gpu_evaluate(evaluation_id: int) -> None:
    enqueue("gpu_evaluate", evaluation_id)


def judge_pending(campaign_id: int, judge_id: int, *, remote: bool) -> None:
    """A judge's pending comparisons: on the gpu queue for a local or reward model, on the
    default queue for an endpoint (``remote``), which needs no model on this side."""
    enqueue("judge_pending", campaign_id, judge_id, queue=None if remote else "gpu")


def chat_complete(request: dict, *, expires: float):
    """A chat completion for a model worker (the ``serve`` queue); the ``AsyncResult`` to wait on.
    A worker that receives it after ``expires`` seconds (nobody waits any more) discards it."""
    return app.send_task("workers.tasks.chat_complete", args=[request], expires=expires)
