import os

import pytest
from rest_framework.test import APIClient

from annotation import roles, services
from tests.factories import CampaignFactory, ComparisonFactory, UserFactory

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def campaign(db):
    return CampaignFactory(slug="c1", votes_per_pair=3)


@pytest.fixture
def comparisons(campaign):
    return [ComparisonFactory(campaign=campaign) for _ in range(5)]


@pytest.fixture
def annotators(campaign):
    """Four annotators, members of ``campaign`` (annotators work only in their campaigns; make
    them members of another one with ``CampaignFactory(members=...)``)."""
    users = [UserFactory(role=roles.ANNOTATOR) for _ in range(4)]
    services.campaign_members_add(campaign=campaign, users=users)
    return users


@pytest.fixture
def annotator(annotators):
    return annotators[0]


@pytest.fixture
def reviewer(db):
    return UserFactory(role=roles.REVIEWER)


@pytest.fixture
def admin_user(db):
    return UserFactory(role=roles.ADMIN)


@pytest.fixture
def api():
    def client_for(user=None):
        c = APIClient()
        if user is not None:
            c.force_authenticate(user)
        return c

    return client_for


@pytest.fixture
def sent(monkeypatch):
    """Tasks the code under test enqueues by name (annotation.enqueue), captured instead of sent
    to the broker: [(task name, args)]."""
    from annotation import enqueue

    calls = []
    monkeypatch.setattr(enqueue.app, "send_task", lambda name, args=None, **kw: calls.append((name, args)))
    return calls


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    """A local model directory (tiny random Llama, real tokenizer): a fast policy spec."""
    from tests.tiny import save_tiny_policy

    return save_tiny_policy(tmp_path_factory.mktemp("tiny-policy"), seed=0)


@pytest.fixture(scope="session")
def tiny_policy_other(tmp_path_factory) -> str:
    """A second tiny policy with other weights (an arena opponent)."""
    from tests.tiny import save_tiny_policy

    return save_tiny_policy(tmp_path_factory.mktemp("tiny-policy-other"), seed=1)


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory) -> str:
    """A tiny random reward model directory (the proxy reward of RL tests)."""
    from tests.tiny import save_tiny_reward

    return save_tiny_reward(tmp_path_factory.mktemp("tiny-reward"), seed=3, scale=20.0)


@pytest.fixture(scope="session")
def tiny_gold(tmp_path_factory) -> str:
    """A second tiny reward model with other weights (the monitor's gold reward)."""
    from tests.tiny import save_tiny_reward

    return save_tiny_reward(tmp_path_factory.mktemp("tiny-gold"), seed=4, scale=20.0)
