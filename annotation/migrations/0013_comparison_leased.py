"""A comparison's count of active leases (issue 13): whether a slot is free is read on its row,
instead of grouping the campaign's live leases in every hand-out (a cost that grew with the
annotators at work). Leases already past their expiry are ended first, as the sweep would, so the
count starts at the live leases, and the database checks the overlap with it. The index of active
leases now leads with (campaign, annotator): the lease an annotator holds is one entry, not a
walk over the campaign's."""

from django.db import migrations, models
from django.db.models import Count, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce


def fill(apps, schema_editor):
    from django.utils import timezone

    Assignment, Comparison = apps.get_model("annotation", "Assignment"), apps.get_model("annotation", "Comparison")
    Assignment.objects.filter(state="active", expires_at__lte=timezone.now()).update(state="expired")
    active = (Assignment.objects.filter(comparison=OuterRef("pk"), state="active").order_by()
              .values("comparison").annotate(n=Count("pk")).values("n"))
    Comparison.objects.update(leased=Coalesce(Subquery(active), Value(0)))


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0012_assignment_campaign"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="assignment",
            name="assignment_live_idx",
        ),
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(condition=Q(state="active"), fields=["campaign", "annotator", "expires_at"], name="assignment_active_idx"),
        ),
        migrations.AddField(
            model_name="comparison",
            name="leased",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="comparison",
            constraint=models.CheckConstraint(condition=Q(kind="gold") | Q(vote_count__lte=F("votes_required") - F("leased")),
                                              name="comparison_slots_within_required"),
        ),
    ]
