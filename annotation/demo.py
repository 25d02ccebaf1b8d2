"""The demo campaign: prompts, gold items and users from ``fixtures/``; the demo annotators are
members of the demo campaign.

Its pairs come from the embedded policy (``manage.py sample_pairs`` and the gpu worker's
buffer refills); ``fixture_pairs=True`` adds the hand-written pairs in the fixture instead,
for a demo without any model work.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from annotation import roles, services
from annotation.models import Campaign, Comparison, Response

FIXTURES = Path(settings.BASE_DIR) / "fixtures"
DEMO_SLUG = "demo"
DEMO_USERS = [("admin", roles.ADMIN), ("alice", roles.ANNOTATOR), ("bob", roles.ANNOTATOR), ("carol", roles.ANNOTATOR)]


@dataclass
class SeedResult:
    campaign: Campaign
    comparisons_created: int = 0
    passwords: dict[str, str] = field(default_factory=dict)  # only users created now
    existing_users: list[str] = field(default_factory=list)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def demo_seed(*, fixtures: Path = FIXTURES, fixture_pairs: bool = False) -> SeedResult:
    """Create (or complete) the demo campaign and users. Idempotent: running it twice adds nothing."""
    roles.roles_ensure()
    with transaction.atomic():
        campaign = Campaign.objects.filter(slug=DEMO_SLUG).first() or services.campaign_create(
            slug=DEMO_SLUG,
            name="Demo: helpful and harmless",
            description="Compare two assistant responses to everyday, coding, writing and safety prompts.",
            guideline=(fixtures / "guideline.md").read_text(encoding="utf-8"),
            votes_per_pair=3,
            gold_rate=0.1,
            # Short answers keep CPU sampling quick (about 40 tokens/s batched on 2 cores).
            sampling_params={"max_new_tokens": 160, "batch_size": 32},
            buffer_size=20,
        )
        result = SeedResult(campaign=campaign)
        before = campaign.comparisons.count()
        for row in _jsonl(fixtures / "demo_prompts.jsonl"):
            prompt, _ = services.prompt_get_or_create(campaign=campaign, messages=row["messages"], tags=row.get("tags", []))
            if fixture_pairs:
                a, b = (services.response_get_or_create_text(prompt=prompt, text=t, source=Response.Source.HUMAN) for t in row["responses"])
                services.comparison_create(campaign=campaign, prompt=prompt, response_a=a, response_b=b)
        for row in _jsonl(fixtures / "demo_gold.jsonl"):
            prompt, _ = services.prompt_get_or_create(campaign=campaign, messages=row["messages"], tags=["gold"], split="eval")
            a, b = (services.response_get_or_create_text(prompt=prompt, text=t, source=Response.Source.HUMAN) for t in row["responses"])
            services.comparison_create(
                campaign=campaign, prompt=prompt, response_a=a, response_b=b, kind=Comparison.Kind.GOLD, gold_answer=row["gold"]
            )
        result.comparisons_created = campaign.comparisons.count() - before
        User = get_user_model()
        annotators = []
        for username, role in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is not None:
                result.existing_users.append(username)
            else:
                password = secrets.token_urlsafe(9)
                user = roles.user_create(username=username, password=password, role=role)
                if role == roles.ADMIN:
                    user.is_superuser = True
                    user.save(update_fields=["is_superuser"])
                result.passwords[username] = password
            if role == roles.ANNOTATOR:
                annotators.append(user)
        # Annotators work only in campaigns they are members of (existing users too: idempotent).
        services.campaign_members_add(campaign=campaign, users=annotators, added_by=None)
    return result
