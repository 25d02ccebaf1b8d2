"""A lease's campaign on the lease itself (filled in from its comparison), with an index of a
campaign's live leases, and the comparisons' index in hand-out order (issue 13: a hand-out
reads one campaign's live leases and stops at its first open comparison). Three indexes that
others already cover go: every lease, vote and skip paid for them."""

import django.db.models.deletion
from django.db import migrations, models

FILL = """UPDATE annotation_assignment SET campaign_id =
    (SELECT c.campaign_id FROM annotation_comparison c WHERE c.id = annotation_assignment.comparison_id)"""


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0011_audit_log"),
    ]

    operations = [
        migrations.AddField(
            model_name="assignment",
            name="campaign",
            field=models.ForeignKey(null=True, editable=False, on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                    to="annotation.campaign"),
        ),
        migrations.RunSQL(FILL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="assignment",
            name="campaign",
            field=models.ForeignKey(editable=False, on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                    to="annotation.campaign"),
        ),
        migrations.RemoveIndex(
            model_name="comparison",
            name="annotation__campaig_c96025_idx",
        ),
        migrations.AddIndex(
            model_name="comparison",
            index=models.Index(fields=["campaign", "status", "kind", "vote_count", "id"], name="comparison_handout_idx"),
        ),
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(condition=models.Q(("state", "active")), fields=["campaign", "expires_at", "comparison"],
                               name="assignment_live_idx"),
        ),
        migrations.RemoveIndex(
            model_name="assignment",
            name="annotation__compari_8e57ca_idx",
        ),
        migrations.AlterField(  # assignment_unique_per_annotator begins with it
            model_name="assignment",
            name="comparison",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="assignments",
                                    to="annotation.comparison"),
        ),
        migrations.AlterField(  # comparison_handout_idx and comparison_unique_pair begin with it
            model_name="comparison",
            name="campaign",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="comparisons",
                                    to="annotation.campaign"),
        ),
    ]
