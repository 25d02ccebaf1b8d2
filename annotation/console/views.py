"""The admins' console: campaigns, a campaign's overview (progress, policy lineage, buffer,
retraining, promotions, runs, start a run), a run's page with live curves, two runs side by
side. Thin views: reads through selectors, writes through the services (trigger "console").
Reviewers (``view_trainingrun``) read; writing needs ``manage_training``. Evaluations:
``evaluation_views``."""

from __future__ import annotations

import functools
import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotation import selectors, services
from annotation.console import config_form
from annotation.console import selectors as console
from annotation.errors import ApplicationError, Conflict, InvalidInput
from annotation.limits import MAX_PROMOTION_REASON_CHARS
from annotation.models import RetrainPolicy, TrainingRun
from training.recipes import RECIPES

MANAGE = "annotation.manage_training"
DEFAULT_KIND = "dpo"
MAX_EVALUATIONS_LISTED = 20  # on the campaign page, newest first
POLL_SECONDS = 2  # the run page refreshes its status and curves this often while the run is active


def console_view(view):
    """Logged in, and an admin or reviewer: anyone else gets 403."""

    @login_required
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        if not console.console_allowed(user=request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapped


def _manager(request) -> None:
    if not request.user.has_perm(MANAGE):
        raise PermissionDenied


def _campaign(request, slug: str):
    return get_object_or_404(selectors.campaigns_for_user(user=request.user), slug=slug)


def _run(request, run_id) -> TrainingRun:
    try:
        run_id = int(run_id)
    except (TypeError, ValueError):
        raise Http404("No such run.") from None
    return get_object_or_404(selectors.training_runs_visible_to(user=request.user), pk=run_id)


# ---------------------------------------------------------------- campaigns


@console_view
@require_GET
def campaigns(request):
    return render(request, "console/campaigns.html", {"campaigns": console.console_campaigns(user=request.user)})


def _start_form(campaign, *, kind: str = DEFAULT_KIND, values=None, errors=None, base: str = "",
                scope: str = TrainingRun.DataScope.ALL) -> dict:
    recipe = RECIPES.get(kind) or RECIPES[DEFAULT_KIND]
    return {
        "kind": recipe.kind,
        "kinds": [(r.kind, r.help) for r in RECIPES.values()],
        "fields": config_form.config_fields(recipe.config_cls, values=values, errors=errors),
        "errors": errors or {},
        "base": base,  # "": the campaign's active policy
        "scopes": TrainingRun.DataScope.choices,
        "scope": scope,
    }


def _overview(request, campaign, *, form: dict | None = None, status: int = 200):
    retrain = RetrainPolicy.objects.filter(campaign=campaign).first()
    versions = list(console.policy_versions_for(campaign=campaign))
    context = {
        "campaign": campaign,
        "progress": console.campaign_progress(campaign=campaign),
        "lineage": console.model_version_lineage(version=campaign.policy),
        "retrain": retrain,
        "retrain_check": selectors.retrain_policy_check(policy=retrain) if retrain and retrain.enabled else None,
        "promotions": console.campaign_promotions(campaign=campaign),
        "versions": versions,
        "promotable": [v for v in versions if v.pk != campaign.policy_id],
        "runs": selectors.training_runs_visible_to(user=request.user, campaign=campaign)[:50],
        "evaluations": selectors.evaluations_visible_to(user=request.user, campaign=campaign)[:MAX_EVALUATIONS_LISTED],
        "can_manage": request.user.has_perm(MANAGE),
        "form": form or _start_form(campaign),
        "reason_max": MAX_PROMOTION_REASON_CHARS,
    }
    return render(request, "console/campaign.html", context, status=status)


@console_view
@require_GET
def campaign(request, slug: str):
    return _overview(request, _campaign(request, slug))


@console_view
@require_GET
def run_form(request, slug: str):
    """The config fields of the kind picked (htmx swaps them in when the kind changes)."""
    campaign = _campaign(request, slug)
    return render(request, "console/_config_fields.html", {"form": _start_form(campaign, kind=request.GET.get("kind", DEFAULT_KIND))})


@console_view
@require_POST
def run_start(request, slug: str):
    _manager(request)
    campaign = _campaign(request, slug)
    kind, base_name = request.POST.get("kind", ""), request.POST.get("base_version", "")
    scope = request.POST.get("data_scope") or TrainingRun.DataScope.ALL
    values = config_form.submitted_values(request.POST)
    recipe = RECIPES.get(kind)
    try:
        if recipe is None:
            raise InvalidInput(f"Unknown kind {kind!r}.", details={"field": "kind"})
        base = selectors.model_version_named(name=base_name, field="base_version") if base_name else None
        run = services.training_run_create(
            campaign=campaign, kind=kind, config=config_form.config_from_form(recipe.config_cls, values),
            base_version=base, created_by=request.user, trigger=TrainingRun.Trigger.CONSOLE,
            data_scope=scope,
        )
    except ApplicationError as exc:
        field = exc.details.get("field", "form")
        if field == "config" and recipe is not None:
            field = config_form.config_error_field(exc.message, recipe.config_cls) or "config"
        elif field not in ("kind", "base_version", "data_scope"):
            field = "form"  # shown above the form
        form = _start_form(campaign, kind=kind, values=values, errors={field: exc.message}, base=base_name, scope=scope)
        if isinstance(exc, Conflict) and "run_id" in exc.details:
            form["conflict_run"] = exc.details["run_id"]
        return _overview(request, campaign, form=form, status=exc.status)
    messages.success(request, f"Run {run.pk} ({run.kind}) queued.")
    return redirect("console-run", run_id=run.pk)


def _flash(request, action) -> bool:
    """Run ``action()`` (a service call returning the success message); the message, or the
    service's refusal, becomes the page's flash message. True when it succeeded."""
    try:
        messages.success(request, action())
        return True
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return False


def _rolled_back(record) -> str:
    return f"Rolled back: the active policy is {record.to_version.name if record.to_version else 'the default policy'}."


def _reason(request) -> str:
    return request.POST.get("reason", "").strip()[:MAX_PROMOTION_REASON_CHARS]


@console_view
@require_POST
def promote(request, slug: str):
    _manager(request)
    campaign = _campaign(request, slug)

    def promote_named():
        version = selectors.model_version_named(name=request.POST.get("version", ""))
        services.campaign_policy_promote(campaign=campaign, version=version, user=request.user, reason=_reason(request))
        return f"'{version.name}' is now the active policy."

    _flash(request, promote_named)
    return redirect("console-campaign", slug=campaign.slug)


@console_view
@require_POST
def rollback(request, slug: str):
    _manager(request)
    campaign = _campaign(request, slug)
    _flash(request, lambda: _rolled_back(services.campaign_policy_rollback(campaign=campaign, user=request.user, reason=_reason(request))))
    return redirect("console-campaign", slug=campaign.slug)


# ---------------------------------------------------------------- runs


def _run_context(request, run: TrainingRun) -> dict:
    return {
        "run": run,
        "live": console.training_run_summary(run=run),
        "log_tail": [
            "  ".join(f"{k}={'null' if v is None else format(v, '.6g')}" for k, v in row.items())
            for row in console.training_run_log_tail(run=run)
        ],
        "manifest_json": json.dumps(run.data_manifest, indent=2, sort_keys=True),
        "can_manage": request.user.has_perm(MANAGE),
        "poll_seconds": POLL_SECONDS,
    }


@console_view
@require_GET
def run(request, run_id: int):
    run = _run(request, run_id)
    config = {k: config_form.show(v) for k, v in console.training_run_effective_config(run=run).items()}
    recipe = RECIPES.get(run.kind)
    context = {**_run_context(request, run), "config": config, "online": bool(recipe and recipe.online),
               "frontier": console.monitor_frontier(run=run)}
    return render(request, "console/run.html", context)


@console_view
@require_GET
def run_status(request, run_id: int):
    """The run page's live block (htmx polls it while the run is queued or running)."""
    return render(request, "console/_run_status.html", _run_context(request, _run(request, run_id)))


@console_view
@require_GET
def run_series(request, run_id: int):
    """``{"status", "active", "step", "total_steps", "series": {name: [[step, value], ...]}}`` for the charts."""
    run = _run(request, run_id)
    return JsonResponse(
        {
            "id": run.pk, "status": run.status, "active": run.status in TrainingRun.ACTIVE, "step": run.step,
            "total_steps": run.total_steps,
            "series": {name: [list(p) for p in points] for name, points in selectors.training_run_series(run=run).items()},
        }
    )


@console_view
@require_POST
def run_cancel(request, run_id: int):
    _manager(request)
    run = _run(request, run_id)

    def cancel():
        services.training_run_cancel(run_id=run.pk)
        return f"Run {run.pk} cancelled."

    _flash(request, cancel)
    return redirect("console-run", run_id=run.pk)


@console_view
@require_GET
def compare(request):
    a, b = _run(request, request.GET.get("a")), _run(request, request.GET.get("b"))
    rows = console.training_runs_config_diff(a=a, b=b)
    return render(
        request,
        "console/compare.html",
        {"a": a, "b": b, "runs": [a, b], "rows": rows, "n_differ": sum(r.differs for r in rows)},
    )
