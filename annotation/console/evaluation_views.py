"""The console's evaluation pages: one evaluation (candidate against baseline, the figures, the
example pairs, the gate's decision) with the admin's one-click promote and roll back, and the
campaign page's "Evaluate" form. Thin views: reads through selectors, writes through the
services (trigger "console"); reviewers read, admins (``manage_training``) write."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotation import selectors, services
from annotation.console import selectors as console
from annotation.console.views import MANAGE, POLL_SECONDS, _campaign, _flash, _manager, _reason, _rolled_back, console_view
from annotation.errors import ApplicationError
from annotation.limits import MAX_PROMOTION_REASON_CHARS
from annotation.models import Evaluation


def _evaluation(request, evaluation_id) -> Evaluation:
    try:
        evaluation_id = int(evaluation_id)
    except (TypeError, ValueError):
        raise Http404("No such evaluation.") from None
    return get_object_or_404(selectors.evaluations_visible_to(user=request.user).select_related("campaign__policy"),
                             pk=evaluation_id)


@console_view
@require_GET
def evaluation(request, evaluation_id: int):
    evaluation = _evaluation(request, evaluation_id)
    context = {
        "e": evaluation,
        "campaign": evaluation.campaign,
        "active": evaluation.status in Evaluation.ACTIVE,
        "page": console.evaluation_page(evaluation=evaluation),
        "can_manage": request.user.has_perm(MANAGE),
        "poll_seconds": POLL_SECONDS,
        "reason_max": MAX_PROMOTION_REASON_CHARS,
    }
    return render(request, "console/evaluation.html", context)


@console_view
@require_POST
def evaluation_promote(request, evaluation_id: int):
    """The admin's decision when the gate left it to them: one click, recorded with who."""
    _manager(request)
    evaluation = _evaluation(request, evaluation_id)

    def promote():
        services.evaluation_promote(evaluation=evaluation, user=request.user, note=_reason(request))
        return f"'{evaluation.candidate.name}' is now the active policy."

    _flash(request, promote)
    return redirect("console-evaluation", evaluation_id=evaluation.pk)


@console_view
@require_POST
def evaluation_cancel(request, evaluation_id: int):
    _manager(request)
    evaluation = _evaluation(request, evaluation_id)

    def cancel():
        services.evaluation_cancel(evaluation_id=evaluation.pk)
        return f"Evaluation {evaluation.pk} cancelled."

    _flash(request, cancel)
    return redirect("console-evaluation", evaluation_id=evaluation.pk)


@console_view
@require_POST
def evaluation_rollback(request, evaluation_id: int):
    """Undo the candidate's promotion, only while it is the promotion a roll-back undoes."""
    _manager(request)
    evaluation = _evaluation(request, evaluation_id)
    note = _reason(request) or "rolled back from the evaluation page"
    _flash(request, lambda: _rolled_back(services.campaign_policy_rollback(
        campaign=evaluation.campaign, user=request.user, undoing=evaluation.candidate,
        reason=f"evaluation {evaluation.pk}: {note}"[:MAX_PROMOTION_REASON_CHARS])))
    return redirect("console-evaluation", evaluation_id=evaluation.pk)


@console_view
@require_POST
def evaluation_start(request, slug: str):
    """The campaign page's "Evaluate" form: a policy version against the active one."""
    _manager(request)
    campaign = _campaign(request, slug)
    name = request.POST.get("candidate", "")
    try:
        candidate = selectors.model_version_named(name=name, field="candidate")
        evaluation = services.evaluation_create(campaign=campaign, candidate=candidate, created_by=request.user,
                                                trigger=Evaluation.Trigger.CONSOLE)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("console-campaign", slug=campaign.slug)
    messages.success(request, f"Evaluation {evaluation.pk} of '{candidate.name}' queued.")
    return redirect("console-evaluation", evaluation_id=evaluation.pk)
