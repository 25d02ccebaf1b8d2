from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation import selectors, services
from annotation.management.commands._common import campaign_or_error


class Command(BaseCommand):
    help = (
        "Who annotates in a campaign: `add SLUG USER...` / `remove SLUG USER...` (usernames), `list SLUG`. "
        "Annotators see, lease and vote only in their campaigns; reviewers and admins see every campaign. "
        "Removing someone ends their live leases there."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["add", "remove", "list"])
        parser.add_argument("slug", help="campaign slug")
        parser.add_argument("usernames", nargs="*", metavar="USER")

    def handle(self, *args, action, slug, usernames, **options):
        campaign = campaign_or_error(slug)
        if action == "list":
            for user in selectors.campaign_members(campaign=campaign):
                self.stdout.write(user.get_username())
            return
        if not usernames:
            raise CommandError(f"Name at least one user to {action}.")
        users = list(get_user_model().objects.filter(username__in=usernames))
        unknown = sorted(set(usernames) - {u.get_username() for u in users})
        if unknown:  # nothing changes when one name is wrong: a typo should not half-apply
            raise CommandError(f"No user(s) {', '.join(unknown)}; nothing changed.")
        if action == "add":
            n = services.campaign_members_add(campaign=campaign, users=users, added_by=None)
            self.stdout.write(self.style.SUCCESS(f"{n} user(s) added to '{slug}' ({len(users) - n} already members)."))
        else:
            n = services.campaign_members_remove(campaign=campaign, users=users)
            self.stdout.write(self.style.SUCCESS(f"{n} user(s) removed from '{slug}' ({len(users) - n} were not members)."))
