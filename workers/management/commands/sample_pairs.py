from django.core.management.base import BaseCommand, CommandError

from annotation import selectors
from annotation.models import Campaign


class Command(BaseCommand):
    help = "Sample response pairs for a campaign from its active policy, here and now (what the gpu worker does)."

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--n", type=int, required=True, help="pairs to sample")
        parser.add_argument("--top-up", action="store_true", help="sample only what it takes to have N open comparisons")
        parser.add_argument("--seed", type=int, default=None, help="base seed (random when omitted; stored with each response)")

    def handle(self, *args, campaign, n, top_up, seed, **options):
        from workers.sampling import campaign_sample_pairs

        c = Campaign.objects.filter(slug=campaign).first()
        if c is None:
            raise CommandError(f"No campaign {campaign!r}.")
        if n < 1:
            raise CommandError("--n must be at least 1.")
        if top_up:
            n -= selectors.campaign_open_pairs(campaign=c)
            if n <= 0:
                self.stdout.write(f"Campaign '{c.slug}' already has {selectors.campaign_open_pairs(campaign=c)} open comparisons.")
                return
        try:
            report = campaign_sample_pairs(campaign_id=c.pk, n=n, seed=seed, progress=True)
        except (ValueError, OSError) as exc:  # invalid sampling parameters, a model that cannot be loaded
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Campaign '{c.slug}': {report.created} pair(s) sampled from {report.policy}"
            + (f" vs {report.arena_policy}" if report.arena_policy else "")
            + f" (seed {report.seed}); {report.dropped} dropped as identical or empty."
        )
