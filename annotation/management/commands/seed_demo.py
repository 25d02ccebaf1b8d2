from django.core.management.base import BaseCommand

from annotation.demo import DEMO_USERS, demo_seed


class Command(BaseCommand):
    help = (
        "Create the demo campaign (50 prompts, 8 gold items, a guideline) and demo users. Pairs come from "
        "the embedded policy (`manage.py sample_pairs --campaign demo --n N`, or the worker's buffer refills)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fixture-pairs", action="store_true", help="also add the fixture's hand-written pairs (no model needed)")

    def handle(self, *args, fixture_pairs=False, **options):
        result = demo_seed(fixture_pairs=fixture_pairs)
        c = result.campaign
        self.stdout.write(
            f"Campaign '{c.slug}': {c.prompts.count()} prompts, {c.comparisons.count()} comparisons "
            f"({result.comparisons_created} new), votes per pair {c.votes_per_pair}, gold rate {c.gold_rate}."
        )
        if result.passwords:
            self.stdout.write(self.style.WARNING("Logins (shown once; change them with `python manage.py changepassword NAME`):"))
            roles = dict(DEMO_USERS)
            for name, password in result.passwords.items():
                self.stdout.write(f"  {name:<8} {password:<16} ({roles[name]})")
        if result.existing_users:
            self.stdout.write(f"Users already present (passwords unchanged): {', '.join(result.existing_users)}")
