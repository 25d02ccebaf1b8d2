"""A query budget per annotation call (issue 13's speed work): a lease (next), a vote, a vote that
asks for the next lease, and a skip may not grow their SQL. Set at what they make now, savepoints
included (the test client's user keeps its permissions after the first call; a token request reads
them with its token, in no query more). Before issue 13: next 15 (+4 with gold due), held lease 7,
vote 11, skip 11.

next: permissions, campaign, [membership locked, candidate locked with what it is shown with and the
annotator's lease held if any (read after the lock), INSERT ... SELECT re-checking it and counting the
slot], progress in one statement. A lease already held (a reload, a second tab) is read whole only
once the candidate's statement found it: one query more on that rare path, none on the common one.
vote: [lease and comparison locked with the membership check; vote, lease done and the comparison's
counts in one statement]. skip: [the same lock, lease skipped, its slot given back]."""

import pytest

NEXT_BUDGET, HELD_BUDGET, VOTE_BUDGET, SKIP_BUDGET = 8, 7, 4, 5
# gold due: the gold candidate is locked beside the normal one (checked still open in that statement)
GOLD_EXTRA = 1
# the vote's transaction, then the lease's and the progress: no permission or campaign query of its own
VOTE_NEXT_BUDGET = VOTE_BUDGET + 6


@pytest.mark.parametrize("gold", [False, True])
def test_next_vote_skip_stay_within_their_query_budget(api, campaign, comparisons, annotator, django_assert_max_num_queries,
                                                       gold, monkeypatch):
    from tests.factories import ComparisonFactory

    if gold:
        campaign.gold_rate = 0.5
        campaign.save(update_fields=["gold_rate"])
        for _ in range(4):
            ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")
        monkeypatch.setattr("annotation.services.assignment._gold_due", lambda **kw: True)  # the costlier path, every time
    c = api(annotator)
    for _ in range(2):
        with django_assert_max_num_queries(NEXT_BUDGET + GOLD_EXTRA * gold):
            lease = c.post("/api/campaigns/c1/next/").json()["assignment"]["id"]
        with django_assert_max_num_queries(HELD_BUDGET):
            assert c.post("/api/campaigns/c1/next/").json()["assignment"]["id"] == lease
        with django_assert_max_num_queries(VOTE_BUDGET):
            assert c.post(f"/api/assignments/{lease}/vote/", {"choice": "a"}, format="json").status_code == 201
    lease = c.post("/api/campaigns/c1/next/").json()["assignment"]["id"]
    with django_assert_max_num_queries(VOTE_NEXT_BUDGET + GOLD_EXTRA * gold):
        answer = c.post(f"/api/assignments/{lease}/vote/", {"choice": "a", "next": True}, format="json").json()
    lease = answer["next"]["assignment"]["id"]
    with django_assert_max_num_queries(SKIP_BUDGET):
        assert c.post(f"/api/assignments/{lease}/skip/", {"reason": "unsure"}, format="json").status_code == 200


def test_a_token_request_reads_its_user_and_permissions_in_one_query(campaign, comparisons, annotator,
                                                                       django_assert_max_num_queries):
    """Token authentication reads the user's permissions, their own and their groups', in its own
    statement (``annotation.authentication``): each request's user is new, and would read them in a
    query of their own (``annotation.access.ModelBackend``): before, a token request made two."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    with django_assert_max_num_queries(NEXT_BUDGET):
        lease = c.post("/api/campaigns/c1/next/").json()["assignment"]["id"]
    with django_assert_max_num_queries(VOTE_NEXT_BUDGET + 1):
        assert c.post(f"/api/assignments/{lease}/vote/", {"choice": "b", "next": True}, format="json").status_code == 201


def test_token_authentication_reads_the_same_permissions_as_the_backend(db):
    """Own and group permissions, as Django's backend reads them; a superuser keeps every one; an
    inactive user is refused."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission
    from rest_framework.authtoken.models import Token
    from rest_framework.exceptions import AuthenticationFailed

    from annotation import roles
    from annotation.access import ModelBackend
    from annotation.authentication import TokenAuthentication

    def via_token(user):
        authed, _token = TokenAuthentication().authenticate_credentials(Token.objects.get_or_create(user=user)[0].key)
        return authed

    reviewer = roles.user_create(username="rev", password="pw-123-long-enough", role=roles.REVIEWER)
    reviewer.user_permissions.add(Permission.objects.get(codename="delete_campaign"))  # one of their own beside the group's
    extra = Group.objects.create(name="extra")
    extra.permissions.add(Permission.objects.get(codename="manage_training"))  # not a reviewer's
    reviewer.groups.add(extra)
    plain = get_user_model().objects.create_user("plain", password="pw-123-long-enough")  # no group, no permission
    for user in (reviewer, plain):
        expected = ModelBackend().get_all_permissions(get_user_model().objects.get(pk=user.pk))
        authed = via_token(user)
        assert authed._perm_cache == expected  # read by the token's statement: the backend asks nothing more
        assert authed.has_perm("annotation.delete_campaign") == (user is reviewer)
        assert authed.has_perm("annotation.manage_training") == (user is reviewer)  # from the extra group
        assert not authed.has_perm("annotation.change_campaign")
    assert via_token(reviewer).has_perm("annotation.review_votes")  # their role's group

    boss = get_user_model().objects.create_superuser("boss", password="pw-123-long-enough")
    assert via_token(boss).has_perm("annotation.any_permission_at_all")
    plain.is_active = False
    plain.save()
    with pytest.raises(AuthenticationFailed):
        via_token(plain)
