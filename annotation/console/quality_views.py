"""The console's quality page: agreement among people and with AI judges, each voter's quality
(flags for review), the pairwise Cohen's kappa matrix, and the campaign's judges with a button to
let one vote. Reviewers read (``review_votes``), admins (``manage_training``) also run judges."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotation import services
from annotation.console.views import MANAGE, _campaign, _flash, _manager, console_view
from annotation.models import Judge
from annotation.quality import campaign_quality, judge_gate

REVIEW = "annotation.review_votes"


def _kappa_class(value) -> str:
    if value is None:
        return "na"
    return "good" if value >= 0.6 else "fair" if value >= 0.2 else "poor"


@console_view
@require_GET
def quality(request, slug: str):
    if not request.user.has_perm(REVIEW):
        raise PermissionDenied("You need the 'annotation.review_votes' permission for this.")
    campaign = _campaign(request, slug)
    report = campaign_quality(campaign=campaign)
    voters = sorted(report["people"]["cohen"])
    matrix = [
        {"voter": x, "cells": [{"other": y, "value": None if x == y else report["people"]["cohen"][x].get(y),
                                "n": report["people"]["cohen_common"][x].get(y, 0), "self": x == y,
                                "cls": "self" if x == y else _kappa_class(report["people"]["cohen"][x].get(y))} for y in voters]}
        for x in voters
    ]
    for j in report["judges"]:
        j["bar"] = {"low": f"{j['low'] * 100:.1f}", "width": f"{(j['high'] - j['low']) * 100:.1f}",
                    "point": f"{(j['rate'] or 0) * 100:.1f}"}
    context = {
        "campaign": campaign, "report": report, "matrix": matrix, "voters": voters,
        "judges": campaign.judges.order_by("name"), "can_manage": request.user.has_perm(MANAGE),
        "gate": judge_gate(campaign=campaign),
    }
    return render(request, "console/quality.html", context)


@console_view
@require_POST
def judge_run(request, slug: str, name: str):
    _manager(request)
    campaign = _campaign(request, slug)
    judge = get_object_or_404(Judge, campaign=campaign, name=name)

    def run():
        services.judge_run_request(judge=judge)
        return f"{judge.voter} queued: it votes on the comparisons it has not voted on yet."

    _flash(request, run)
    return redirect("console-quality", slug=campaign.slug)


@console_view
@require_GET
def leaderboard(request, slug: str):
    """Bradley-Terry ratings of the campaign's model versions with bootstrap intervals as bars."""
    from annotation.quality import campaign_leaderboard

    campaign = _campaign(request, slug)
    board = campaign_leaderboard(campaign=campaign, baseline=request.GET.get("baseline") or None)
    ratings = board["ratings"]
    if ratings:
        lo, hi = min(r["low"] for r in ratings), max(r["high"] for r in ratings)
        span = (hi - lo) or 1.0
        for r in ratings:
            r["bar"] = {"low": f"{(r['low'] - lo) / span * 100:.1f}", "width": f"{(r['high'] - r['low']) / span * 100:.1f}",
                        "point": f"{(r['rating'] - lo) / span * 100:.1f}"}
            r["win_share"] = r["wins"] / r["battles"] if r["battles"] else None
    return render(request, "console/leaderboard.html", {"campaign": campaign, "board": board})
