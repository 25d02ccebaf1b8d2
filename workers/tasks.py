"""Celery tasks: thin wrappers that take ids and plain values and call services."""

import logging

from celery import shared_task

from annotation import services

logger = logging.getLogger(__name__)


@shared_task(name="workers.tasks.expire_leases", ignore_result=False, soft_time_limit=60, time_limit=120)
def expire_leases() -> int:
    """Beat, every minute: mark leases past their expiry as expired (they already count as free)."""
    n = services.assignments_expire()
    if n:
        logger.info("expired %d lease(s)", n)
    return n
