"""Server-rendered pages. The annotator page is one template; its script talks to the API."""

from django.contrib.auth.decorators import login_required, permission_required
from django.shortcuts import get_object_or_404, render
from django.views import defaults

from annotation import limits, selectors
from annotation.errors import prefix_error_response
from annotation.rendering import markdown_html


@login_required
def home(request):
    campaigns = list(selectors.campaigns_for_user(user=request.user).filter(is_active=True))
    can_annotate = request.user.has_perm("annotation.annotate")
    rows = [
        (c, selectors.annotator_progress(campaign=c, annotator=request.user) if can_annotate else None)
        for c in campaigns
    ]
    return render(request, "annotation/home.html", {"rows": rows, "can_annotate": can_annotate})


@login_required
@permission_required("annotation.annotate", raise_exception=True)
def annotate(request, slug: str):
    campaign = get_object_or_404(selectors.campaigns_for_user(user=request.user), slug=slug, is_active=True)
    guideline = selectors.campaign_guideline(campaign=campaign)
    return render(
        request,
        "annotation/annotate.html",
        {
            "campaign": campaign,
            "guideline": guideline,
            "guideline_html": markdown_html(guideline.text) if guideline else "",
            "progress": selectors.annotator_progress(campaign=campaign, annotator=request.user),
            "limits": limits,
        },
    )


def not_found(request, exception=None):
    """handler404: an unknown path under /api/ or /v1/ answers JSON in that prefix's error shape
    (API views' own 404s already do); pages keep the HTML page. With DEBUG on, Django shows its
    technical 404 page instead."""
    message = f"No API endpoint at {request.path_info[:200]}."
    response = prefix_error_response(request, status=404, code="not_found", message=message)
    return response or defaults.page_not_found(request, exception)
