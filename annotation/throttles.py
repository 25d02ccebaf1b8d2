"""Per-user rate limits (DRF scoped throttles), failing open. Scope "annotate": the annotation
calls (next, vote, skip): a script hammering them
gets 429 with Retry-After, a person never does (``PREFLOOP_ANNOTATE_RATE``, default 300/min,
i.e. 5 a second, per user, the three calls together). Counts live in the shared cache (Redis when the broker is
Redis), so the limit is per user across all web processes. When the cache is unreachable the
limit is not applied (fail open): an annotator's vote matters more than the limit. Scope
"chat": ``/v1/chat/completions`` (``PREFLOOP_CHAT_RATE``)."""

from __future__ import annotations

import logging

from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle

log = logging.getLogger(__name__)


class FailOpenScopedRateThrottle(ScopedRateThrottle):
    def allow_request(self, request, view):
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()  # a missing rate is a configuration error: raise it
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return SimpleRateThrottle.allow_request(self, request, view)
        except Exception:  # the cache (Redis) is down: serve, and say so in the log
            log.warning("rate limit not applied: the cache is unreachable", exc_info=True)
            return True
