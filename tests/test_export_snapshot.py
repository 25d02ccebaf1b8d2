"""Exports read one snapshot: a preference committed while an export streams is not in it, and
the API's streamed rows agree with the state at their first row."""

import json
import threading

import pytest
from django.db import connection

from annotation.models import Preference
from annotation.selectors import preferences_export_rows
from annotation.snapshots import snapshot_rows
from annotation.models import Comparison, Vote
from tests.factories import CampaignFactory, ComparisonFactory, PromptFactory, ResponseFactory, UserFactory


def _preference(campaign):
    prompt = PromptFactory(campaign=campaign)
    a, b = ResponseFactory(prompt=prompt), ResponseFactory(prompt=prompt)
    return Preference.objects.create(campaign=campaign, prompt=prompt, chosen=a, rejected=b, source=Preference.Source.IMPORT)


def _commit_in_another_connection(fn):
    """Run ``fn`` in another thread (its own database connection, autocommit) and wait."""
    errors = []

    def run():
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            connection.close()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors


def _both_bad(campaign):
    """A completed comparison people called "both bad" (no preference): the KTO export's second read."""
    c = ComparisonFactory(campaign=campaign, status=Comparison.Status.COMPLETE)
    Vote.objects.create(comparison=c, annotator=UserFactory(), choice="both_bad")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("snapshot", [True, False])
def test_an_export_does_not_see_what_is_committed_while_it_streams(snapshot):
    campaign = CampaignFactory(slug="snap")
    for _ in range(3):
        _preference(campaign)
    make = lambda: preferences_export_rows(campaign=campaign, fmt="kto")  # noqa: E731  (two queries: preferences, then both-bad)
    rows = snapshot_rows(make) if snapshot else make()
    first = next(rows)
    _commit_in_another_connection(lambda: _both_bad(campaign))
    rest = list(rows)
    n = 1 + len(rest)
    if snapshot:
        assert n == 6  # 3 preferences x (chosen, rejected) as of the first row
    else:
        assert n == 8  # without one the second read sees the later commit (2 rows more): what the snapshot prevents
    assert first["label"] is True


@pytest.mark.django_db(transaction=True)
def test_the_export_api_streams_inside_one_snapshot(api, admin_user):
    campaign = CampaignFactory(slug="snap-api")
    for _ in range(2):
        _preference(campaign)
    response = api(admin_user).get("/api/campaigns/snap-api/preferences.jsonl?export_format=kto")
    assert response.status_code == 200
    stream = iter(response.streaming_content)
    first = next(stream)
    _commit_in_another_connection(lambda: _both_bad(campaign))
    lines = [first, *stream]
    assert [json.loads(x)["label"] for x in lines] == [True, False, True, False]  # not the both-bad pair committed meanwhile
