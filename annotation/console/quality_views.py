"""The console's quality page: agreement among people and with AI judges, each voter's quality
(flags for review), the pairwise Cohen's kappa matrix, and the campaign's judges (configured
here: add, change, switch off, pick the training judge and the gate's thresholds) with a button
to let one vote; every table also as CSV. The guideline editor (versions, diff between two).
Reviewers read (``review_votes``), admins (``manage_training``) also change and run."""

from __future__ import annotations

import csv
import difflib
import io

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import services
from annotation.console.views import MANAGE, _campaign, _flash, _manager, console_view
from annotation.errors import InvalidInput
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
    _reviewer(request)
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
        "gate": judge_gate(campaign=campaign), "kinds": Judge.Kind.choices,
    }
    return render(request, "console/quality.html", context)


def _reviewer(request) -> None:
    if not request.user.has_perm(REVIEW):
        raise PermissionDenied("You need the 'annotation.review_votes' permission for this.")


def _judge_values(post) -> dict:
    """The judge form's fields as typed values (a checkbox absent = off)."""
    values = {k: post.get(k, "").strip() for k in ("kind", "model", "base_url", "api_key_env")}
    for key in ("batch_size", "concurrency"):
        raw = post.get(key, "").strip()
        try:
            values[key] = int(raw)
        except ValueError:
            raise InvalidInput(f"{key}: enter a whole number (got {raw[:20]!r}).", details={"field": key}) from None
        if values[key] < 1:
            raise InvalidInput(f"{key}: at least 1.", details={"field": key})
    values["both_orders"] = post.get("both_orders") == "on"
    values["enabled"] = post.get("enabled") == "on"
    return values


@console_view
@require_POST
def judge_save(request, slug: str):
    """Add a judge (a new name) or change one (its name posted as ``existing``)."""
    _manager(request)
    campaign = _campaign(request, slug)
    existing = request.POST.get("existing", "")
    if not request.user.has_perm("annotation.change_judge" if existing else "annotation.add_judge"):
        raise PermissionDenied("You need the permission to add or change judges.")
    judge = get_object_or_404(Judge, campaign=campaign, name=existing) if existing else None

    def save():
        saved = services.judge_save(campaign=campaign, name=request.POST.get("name", "").strip(), values=_judge_values(request.POST),
                                    judge=judge)
        return f"{saved.voter} {'changed' if judge else 'added'}."

    _flash(request, save)
    return redirect("console-quality", slug=campaign.slug)


@console_view
@require_POST
def judge_gate_save(request, slug: str):
    _manager(request)
    campaign = _campaign(request, slug)

    def save():
        name = request.POST.get("training_judge", "")
        judge = get_object_or_404(Judge, campaign=campaign, name=name) if name else None
        try:
            agreement = float(request.POST.get("judge_gate_min_agreement", ""))
            comparisons = int(request.POST.get("judge_gate_min_comparisons", ""))
        except ValueError:
            raise InvalidInput("Enter a number for the minimum agreement and a whole number of comparisons.") from None
        services.judge_gate_configure(campaign=campaign, training_judge=judge, min_agreement=agreement, min_comparisons=comparisons)
        return f"Judge gate: {'training judge ' + judge.voter if judge else 'no training judge'}, agreement ≥ {agreement:g} on ≥ {comparisons} comparisons."

    _flash(request, save)
    return redirect("console-quality", slug=campaign.slug)


def _csv(name: str, header: list[str], rows) -> HttpResponse:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    response = HttpResponse(buf.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response


VOTER_COLUMNS = ["voter", "votes", "majority_agreement", "majority_units", "gold_accuracy", "gold_votes", "left_share",
                 "left_p_value", "longer_share", "tie_rate", "both_bad_rate", "median_seconds", "reliability", "is_outlier", "flags"]
JUDGE_COLUMNS = ["judge", "rate", "low", "high", "n", "order_inconsistency", "both_orders_votes"]


@console_view
@require_GET
def quality_csv(request, slug: str, table: str):
    """One table of the quality page as CSV: ``voters``, ``judges`` or ``cohen``."""
    _reviewer(request)
    campaign = _campaign(request, slug)
    report = campaign_quality(campaign=campaign)
    name = f"{campaign.slug}-{table}"
    if table == "voters":
        return _csv(name, VOTER_COLUMNS, ([("; ".join(v[c]) if c == "flags" else v.get(c)) for c in VOTER_COLUMNS] for v in report["voters"]))
    if table == "judges":
        return _csv(name, JUDGE_COLUMNS, ([j.get(c) for c in JUDGE_COLUMNS] for j in report["judges"]))
    if table == "cohen":
        kappa, common = report["people"]["cohen"], report["people"]["cohen_common"]
        return _csv(name, ["voter", "other", "cohen_kappa", "comparisons_in_common"],
                    ([x, y, kappa[x].get(y), common[x].get(y, 0)] for x in sorted(kappa) for y in sorted(kappa) if x != y))
    raise Http404("No such table.")


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
    if request.GET.get("download") == "csv":
        columns = ["rank", "model", "rating", "low", "high", "battles", "wins", "lc_win_rate"]
        return _csv(f"{campaign.slug}-leaderboard", columns, ([r.get(c) for c in columns] for r in ratings))
    return render(request, "console/leaderboard.html", {"campaign": campaign, "board": board})


def _diff_lines(old: str, new: str) -> list[dict]:
    """A unified diff of two guideline texts as lines with their kind (add / del / hunk / same)."""
    out = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=2):
        if line.startswith(("---", "+++")):
            continue
        kind = "hunk" if line.startswith("@@") else "add" if line.startswith("+") else "del" if line.startswith("-") else "same"
        out.append({"kind": kind, "text": line})
    return out


@console_view
@require_http_methods(["GET", "POST"])
def guideline(request, slug: str):
    """The guideline editor: the current text (admins publish a new version), every version,
    and the diff between two (``?a=&b=``; default: the previous and the current)."""
    campaign = _campaign(request, slug)
    if request.method == "POST":
        _manager(request)

        def publish():
            before = campaign.guidelines.order_by("-version").values_list("version", flat=True).first()
            version = services.guideline_publish(campaign=campaign, text=request.POST.get("text", ""), user=request.user)
            if version.version == before:
                return f"Unchanged: version {version.version} stays current."
            return f"Version {version.version} published: annotators see it from their next comparison."

        _flash(request, publish)
        return redirect("console-guideline", slug=campaign.slug)
    versions = list(campaign.guidelines.order_by("-version").select_related("created_by"))
    by_number = {v.version: v for v in versions}

    def pick(key, default):
        try:
            return by_number.get(int(request.GET.get(key, "")), default)
        except ValueError:
            return default

    new = pick("b", versions[0] if versions else None)
    old = pick("a", versions[1] if len(versions) > 1 else None)
    diff = _diff_lines(old.text, new.text) if old and new else []
    context = {"campaign": campaign, "versions": versions, "current": versions[0] if versions else None, "old": old, "new": new,
               "diff": diff, "can_manage": request.user.has_perm(MANAGE)}
    return render(request, "console/guideline.html", context)
