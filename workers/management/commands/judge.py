"""python manage.py judge --campaign SLUG [--judge NAME] [--limit N]

Let the campaign's AI judges (all enabled ones, or the one named) vote, here and now, on the
comparisons each has not voted on yet, with a progress bar (what the task ``judge_pending``
does on a worker)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotation.management.commands._common import campaign_or_error
from annotation.models import Judge


class Command(BaseCommand):
    help = "Let a campaign's AI judges vote on the comparisons they have not voted on yet."

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--judge", help="the judge's name (default: every enabled judge of the campaign)")
        parser.add_argument("--limit", type=int, default=None, help="at most this many comparisons per judge")

    def handle(self, *args, campaign, judge, limit, **options):
        from workers.judging import JudgeUnavailable, run_judge

        camp = campaign_or_error(campaign)
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1.")
        judges = Judge.objects.filter(campaign=camp).order_by("name")
        judges = judges.filter(name=judge) if judge else judges.filter(enabled=True)
        if not judges.exists():
            raise CommandError(f"No judge '{judge}' in campaign '{camp.slug}'." if judge else
                               f"Campaign '{camp.slug}' has no enabled judge: add one in the console or the Django admin.")
        for j in judges:
            try:
                report = run_judge(judge_id=j.pk, limit=limit, progress=True)
            except (JudgeUnavailable, ValueError, OSError) as exc:
                raise CommandError(f"{j.voter}: {exc}") from None
            self.stdout.write(
                f"{j.voter}: {report.recorded} vote(s) recorded, {report.already} already there, "
                f"{len(report.failed)} failed, {report.inconsistent} order-inconsistent"
                + (f"; {report.preferences} preference(s) made (the training judge)." if report.preferences else ".")
                + (f" First failure: {report.failed[0]}" if report.failed else "")
            )
