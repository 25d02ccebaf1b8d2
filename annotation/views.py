"""Server-rendered pages. The annotator page is one template; its script talks to the API."""

from django.contrib.auth.decorators import login_required, permission_required
from django.shortcuts import get_object_or_404, render

from annotation import limits, selectors
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
