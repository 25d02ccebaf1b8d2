"""Imports within bounds: the file is read in pieces (never whole), the report lists the first
``MAX_REPORTED_ERRORS`` bad lines and counts them all, an upload over ``MAX_UPLOAD_BYTES`` is
refused (413, ``too_large``) before its body is read, or as soon as a body sent without a
Content-Length passes the limit; nothing is written then."""

import io
import tracemalloc

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

from annotation import limits
from annotation.models import Preference, Prompt, Response

GOOD_PROMPT = b'{"prompt": "kept %d"}'
GOOD_PREFERENCE = b'{"prompt": "q %d", "chosen": "good", "rejected": "bad"}'
ENDPOINTS = [("prompts", {}, GOOD_PROMPT), ("preferences", {"format": "trl"}, GOOD_PREFERENCE)]


def url(endpoint: str) -> str:
    return f"/api/campaigns/c1/{endpoint}/import/"


def multipart(content: bytes, name: str = "f.jsonl", **fields) -> bytes:
    return encode_multipart(BOUNDARY, {"file": SimpleUploadedFile(name, content), **fields})


def nothing_imported() -> bool:
    return not (Prompt.objects.exists() or Response.objects.exists() or Preference.objects.exists())


class Stream(io.BytesIO):
    """A request body that counts what the server read of it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.taken = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.taken += len(chunk)
        return chunk


def raw_post(client, path: str, body: bytes, *, content_length: int | None, **environ):
    stream = Stream(body)
    if content_length is not None:
        environ["CONTENT_LENGTH"] = str(content_length)
    response = client.request(
        REQUEST_METHOD="POST", PATH_INFO=path, CONTENT_TYPE=MULTIPART_CONTENT, **{"wsgi.input": stream}, **environ
    )
    return response, stream


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.content[:500]
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


# ---------------------------------------------------------------- the report: first errors, all counted


@pytest.mark.parametrize("endpoint,fields,good", ENDPOINTS)
def test_report_lists_the_first_errors_and_counts_them_all(api, campaign, admin_user, endpoint, fields, good):
    n_bad = limits.MAX_REPORTED_ERRORS + 150
    body = b"\n".join([b"not json"] * n_bad + [good % 1, good % 2])
    client = api(admin_user)
    r = client.post(url(endpoint), {"file": SimpleUploadedFile("f.jsonl", body), "strict": "true", **fields}, format="multipart")
    err = assert_error(r, 400, "invalid_file")
    assert err["message"].startswith(f"{n_bad} bad line(s)")
    details = err["details"]
    assert details["error_count"] == n_bad and details["errors_truncated"] is True
    assert [e["line"] for e in details["errors"]] == list(range(1, limits.MAX_REPORTED_ERRORS + 1))
    assert nothing_imported()
    r = client.post(url(endpoint), {"file": SimpleUploadedFile("f.jsonl", body), **fields}, format="multipart")
    assert r.status_code == 201, r.content[:500]
    report = r.json()
    assert (report["created"], report["lines"], report["error_count"]) == (2, n_bad + 2, n_bad)
    assert len(report["errors"]) == limits.MAX_REPORTED_ERRORS and report["errors_truncated"] is True
    few = client.post(url(endpoint), {"file": SimpleUploadedFile("f.jsonl", b"nope\n" + good % 3), **fields}, format="multipart")
    assert few.json()["error_count"] == 1 and few.json()["errors_truncated"] is False


def test_a_reason_quoting_a_long_key_is_cut_short(api, campaign, admin_user):
    body = b'{"prompt": "x", "' + b"k" * 100_000 + b'": 1}'
    r = api(admin_user).post(url("prompts"), {"file": SimpleUploadedFile("f.jsonl", body)}, format="multipart")
    (error,) = r.json()["errors"]
    assert error["reason"].startswith("unknown column(s): kkk") and len(error["reason"]) <= limits.MAX_ERROR_REASON_CHARS


def test_command_prints_the_first_errors_and_counts_them_all(campaign, tmp_path):
    n_bad = limits.MAX_REPORTED_ERRORS + 150
    f = tmp_path / "p.jsonl"
    f.write_bytes(b"\n".join([b"[1]"] * n_bad + [GOOD_PROMPT % 1]))
    out, err = io.StringIO(), io.StringIO()
    call_command("import_prompts", str(f), "--campaign", campaign.slug, stdout=out, stderr=err)
    listed = err.getvalue().strip().splitlines()
    assert len(listed) == limits.MAX_REPORTED_ERRORS + 1 and listed[0] == f"{f}:1: expected a JSON object, got list"
    assert listed[-1] == f"{f}: 150 more bad line(s) not listed"
    assert f"1 prompt(s) imported, 0 already present, {n_bad} bad line(s) skipped ({n_bad + 1} lines read)" in out.getvalue()
    with pytest.raises(CommandError, match=f"{n_bad} bad line"):
        call_command("import_prompts", str(f), "--campaign", campaign.slug, "--strict", stdout=io.StringIO(), stderr=io.StringIO())


# ---------------------------------------------------------------- bounded memory

# 8 MB of long bad lines: a reader that holds the file (or its lines) whole peaks well above 4 MB.
BIG_BAD = b"\n".join([b"x" * 999] * 8_000)


def traced_peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_upload_is_read_in_pieces(campaign, admin_user, settings):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024  # the upload itself goes to a temporary file
    client = Client()
    client.force_login(admin_user)
    body = multipart(BIG_BAD)
    client.get("/api/campaigns/")  # warm: the first request imports and sets up things once
    r, peak = traced_peak(lambda: raw_post(client, url("prompts"), body, content_length=len(body))[0])
    assert r.status_code == 200, r.content[:300]
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert r.json()["error_count"] == 8_000


def test_the_command_reads_its_file_in_pieces(campaign, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(BIG_BAD)
    run = lambda: call_command("import_prompts", str(f), "--campaign", campaign.slug, stdout=io.StringIO(), stderr=io.StringIO())  # noqa: E731
    _, peak = traced_peak(run)
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------- the size limit, before the body


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", 10_000)
    return 10_000


@pytest.mark.parametrize("endpoint,fields,good", ENDPOINTS)
def test_a_declared_length_over_the_limit_is_refused_unread(api, campaign, admin_user, small_limit, endpoint, fields, good):
    body = multipart(b"x" * (small_limit + limits.MULTIPART_SLACK_BYTES), **fields)
    r, stream = raw_post(api(admin_user), url(endpoint), body, content_length=len(body))
    err = assert_error(r, 413, "too_large")
    assert err["details"] == {"limit_bytes": small_limit, "content_length": len(body)}
    assert stream.taken == 0 and nothing_imported()


def test_the_limit_comes_before_the_session_csrf_check_reads_the_body(campaign, admin_user, small_limit):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    body = multipart(b"x" * 2 * small_limit + b"\n" + GOOD_PROMPT % 1)
    r, stream = raw_post(client, url("prompts"), body, content_length=len(body) + limits.MULTIPART_SLACK_BYTES)
    assert_error(r, 413, "too_large")
    assert stream.taken == 0 and nothing_imported()


def test_a_file_over_the_limit_in_a_body_within_it_is_refused(api, campaign, admin_user, small_limit):
    body = multipart(b"\n".join([GOOD_PROMPT % i for i in range(small_limit // 10)]))
    assert small_limit < len(body) < small_limit + limits.MULTIPART_SLACK_BYTES
    r, _ = raw_post(api(admin_user), url("prompts"), body, content_length=len(body))
    assert_error(r, 413, "too_large")
    assert nothing_imported()


@pytest.mark.parametrize("endpoint,fields,good", ENDPOINTS)
def test_a_body_without_length_is_cut_off_past_the_limit(api, campaign, admin_user, small_limit, endpoint, fields, good):
    body = multipart(b"\n".join([good % i for i in range(20_000)]), **fields)
    r, stream = raw_post(api(admin_user), url(endpoint), body, content_length=None, **{"wsgi.input_terminated": True})
    assert_error(r, 413, "too_large")
    assert stream.taken <= small_limit + limits.MULTIPART_SLACK_BYTES + 1 < len(body)
    assert nothing_imported()


@pytest.mark.parametrize("endpoint,fields,good", ENDPOINTS)
def test_a_small_body_without_length_is_imported(api, campaign, admin_user, endpoint, fields, good):
    body = multipart(b"\n".join([good % i for i in range(5)]), **fields)
    r, _ = raw_post(api(admin_user), url(endpoint), body, content_length=None, **{"wsgi.input_terminated": True})
    assert r.status_code == 201 and r.json()["created"] == 5, r.content[:500]


def test_a_body_without_length_the_server_cannot_end_is_refused(api, campaign, admin_user):
    body = multipart(GOOD_PROMPT % 1)
    r, stream = raw_post(api(admin_user), url("prompts"), body, content_length=None, HTTP_TRANSFER_ENCODING="chunked")
    assert_error(r, 411, "length_required")
    assert stream.taken == 0 and nothing_imported()
