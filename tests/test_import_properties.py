"""Properties of the importers (Hypothesis): whatever the bytes, the parsers and importers give a
report, never an exception; good lines mixed with bad ones are counted exactly, and each bad line
is reported by its number."""

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotation import limits, services
from annotation.models import Preference, Prompt
from annotation.parsing import ImportReport, StreamedLines, csv_rows, json_lines, parse_rows, prompt_row
from tests.factories import CampaignFactory
from training.formats import PREFERENCE_READERS, iter_numbered_lines, numbered_lines

# No example database: nothing written into the checkout, every run starts afresh.
PURE = settings(max_examples=300, deadline=None, database=None)
DB = settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Bytes that look like import files often enough to reach past the JSON parser.
PIECES = [
    b'{"prompt": ', b'{"messages": [', b'{"role": "user", "content": ', b'"chosen": ', b'"rejected": ', b'"tags": [',
    b'"split": "eval"', b'"\\n\\nHuman: q\\n\\nAssistant: ', b'"', b"{", b"}", b"[", b"]", b",", b":", b" ", b"null",
    b"\\u0000", b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\\\", b"\x00", b"\n", b"\r", b"\r\n", b"\xef\xbb\xbf",
    b"\xff", b"\xed\xa0\x80", b"\xc3", b"\xe2\x80\xa8", b"1e999", b"9" * 5000, b"prompt,tags\n", b'"a,b"',
]
file_bytes = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=20), st.text(max_size=20).map(str.encode)), max_size=60).map(b"".join),
)
# Any JSON value, with any text (lone surrogates included), as JSON lines: escaped or raw.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None, exclude_categories=())),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_line = st.builds(
    lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"), json_values, st.booleans()
)
row_line = st.builds(  # objects with the keys an importer looks at, holding any JSON values
    lambda d, ascii_only: json.dumps(d, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"),
    st.dictionaries(st.sampled_from(["prompt", "messages", "chosen", "rejected", "tags", "split", "role", "content"]), json_values, max_size=4),
    st.booleans(),
)


def prompt_parse(row):
    return prompt_row(row, max_text_chars=1000, splits=("train", "eval"))


PARSERS = {"prompt": prompt_parse, **{k: (lambda r, f=f: f(r, max_chars=1000)) for k, f in PREFERENCE_READERS.items()}}


def check_report(report: ImportReport, good: int) -> None:
    assert report.lines == good + report.error_count
    assert len(report.errors) == min(report.error_count, limits.MAX_REPORTED_ERRORS)
    assert report.errors_truncated == (report.error_count > limits.MAX_REPORTED_ERRORS)
    assert [n for n, _ in report.errors] == sorted(n for n, _ in report.errors)
    assert all(len(reason) <= limits.MAX_ERROR_REASON_CHARS for _, reason in report.errors)
    json.dumps(report.as_dict(), ensure_ascii=False).encode("utf-8")  # it can be sent as is


# ---------------------------------------------------------------- pure: lines and rows


@PURE
@given(file_bytes, st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_lines_do_not_depend_on_how_the_file_is_cut(data, cuts):
    chunks, at = [], 0
    for size in cuts * (len(data) // max(1, sum(cuts)) + 1):
        chunks.append(data[at:at + size])
        at += size
    assert at >= len(data)
    assert list(iter_numbered_lines(chunks)) == numbered_lines(data)


@PURE
@given(st.one_of(file_bytes, st.lists(st.one_of(json_line, row_line, file_bytes), max_size=12).map(b"\n".join)))
def test_any_bytes_give_a_report_from_every_parser(data):
    for parse in PARSERS.values():
        report = ImportReport()
        good = list(json_lines(numbered_lines(data), report, parse, max_line_chars=2000))
        check_report(report, len(good))
    report = ImportReport()
    try:
        rows = list(parse_rows(csv_rows(numbered_lines(data), report), report, prompt_parse))
    except ValueError as exc:  # FileError: the file as a whole is not a CSV prompt file (no header, bad quoting)
        assert type(exc).__name__ == "FileError"
    else:
        check_report(report, len(rows))


@PURE
@given(st.binary(max_size=400), st.integers(min_value=16, max_value=64))
def test_a_line_too_long_to_hold_is_a_bad_line_and_the_next_one_is_read(junk, limit):
    data = b"x" * (limit + 1) + junk.replace(b"\n", b"").replace(b"\r", b"") + b'\n{"prompt": "ok"}'
    lines = list(iter_numbered_lines([data[i:i + 7] for i in range(0, len(data), 7)], max_line_bytes=limit))
    assert lines[0][0] == 1 and "too long" in lines[0][1].reason
    assert lines[1:] == [(2, '{"prompt": "ok"}')]


# ---------------------------------------------------------------- database: exact counts


def good_text():
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30).filter(str.strip)


bad_prompt_line = st.one_of(
    st.binary(max_size=30).map(lambda b: b"\xff" + b.replace(b"\n", b"").replace(b"\r", b"")),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("prompt", "messages", "chosen", "rejected")), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    good_text().map(lambda t: json.dumps({"prompt": t + "\x00"}).encode()),
    good_text().map(lambda t: json.dumps({"prompt": t + "\ud800"}).encode()),
    good_text().map(lambda t: json.dumps({"prompt": t}, ensure_ascii=False).encode()[:-1]),  # cut short
    st.just(b'{"prompt": "a\x00"}'),
    st.just(b'{"prompt": " "}'),
)
items = st.lists(
    st.one_of(good_text().map(lambda t: ("good", t)), bad_prompt_line.map(lambda b: ("bad", b)), st.just(("blank", b""))),
    max_size=40,
)


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(limits, "IMPORT_BATCH_ROWS", 4)  # later batches meet rows of earlier ones
    monkeypatch.setattr(limits, "IMPORT_READ_BYTES", 5)  # pieces that cut lines, CR LF pairs and characters


def streamed(data: bytes) -> StreamedLines:
    return StreamedLines(lambda: io.BytesIO(data))


def check_counts(report: ImportReport, good: list, bad: list[int], *, strict: bool) -> None:
    check_report(report, len(good))
    assert report.error_count == len(bad) and [n for n, _ in report.errors] == bad[: limits.MAX_REPORTED_ERRORS]
    assert report.written == (not strict or not bad)
    if report.written:
        assert (report.created, report.duplicates) == (len(set(good)), len(good) - len(set(good)))
    else:
        assert (report.created, report.duplicates) == (0, 0)


def numbered(entries, good_line, newline: bytes):
    """The file, the good values in order and the numbers of the bad lines."""
    lines, good, bad = [], [], []
    for kind, value in entries:
        lines.append(good_line(value) if kind == "good" else value)
        if kind == "good":
            good.append(value)
        elif kind == "bad":
            bad.append(len(lines))
    return newline.join(lines), good, bad


@pytest.mark.django_db
@DB
@given(items, st.booleans(), st.booleans(), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_prompts_mixed_with_garbage_are_counted_exactly(small_pieces, entries, ascii_only, strict, newline):
    data, good, bad = numbered(entries, lambda t: json.dumps({"prompt": t}, ensure_ascii=ascii_only).encode(), newline)
    campaign = CampaignFactory()
    report = services.prompts_import(campaign=campaign, lines=streamed(data), strict=strict)
    check_counts(report, good, bad, strict=strict)
    stored = {p.messages[0]["content"] for p in Prompt.objects.filter(campaign=campaign)}
    assert stored == (set(good) if report.written else set())


@pytest.mark.django_db
@DB
@given(st.lists(st.one_of(
    st.tuples(good_text(), good_text(), good_text()).filter(lambda t: t[1] != t[2]).map(lambda t: ("good", t)),
    bad_prompt_line.map(lambda b: ("bad", b)),
    st.just(("bad", b'{"prompt": "q", "chosen": "same", "rejected": "same"}')),
), max_size=30), st.booleans())
def test_preferences_mixed_with_garbage_are_counted_exactly(small_pieces, entries, strict):
    line = lambda t: json.dumps({"prompt": t[0], "chosen": t[1], "rejected": t[2]}, ensure_ascii=False).encode()  # noqa: E731
    data, good, bad = numbered(entries, line, b"\n")
    campaign = CampaignFactory()
    report = services.preferences_import(campaign=campaign, lines=streamed(data), fmt="trl", strict=strict)
    check_counts(report, good, bad, strict=strict)
    stored = {(p.prompt.messages[0]["content"], p.chosen.text, p.rejected.text) for p in Preference.objects.filter(campaign=campaign)}
    assert stored == (set(good) if report.written else set())


@pytest.mark.django_db
@DB
@given(file_bytes, st.sampled_from(["f.jsonl", "f.csv", "trl", "hh"]), st.booleans())
def test_any_upload_gets_a_report_or_an_error_in_the_one_shape(admin_user, data, kind, strict):
    from rest_framework.test import APIClient

    campaign = CampaignFactory()
    client = APIClient()
    client.force_authenticate(admin_user)
    fields = {"file": SimpleUploadedFile("f.csv" if kind == "f.csv" else "f.jsonl", data), "strict": str(strict).lower()}
    if kind in ("trl", "hh"):
        r = client.post(f"/api/campaigns/{campaign.slug}/preferences/import/", {**fields, "format": kind}, format="multipart")
    else:
        r = client.post(f"/api/campaigns/{campaign.slug}/prompts/import/", fields, format="multipart")
    body = r.json()
    if r.status_code in (200, 201):
        assert body["written"] and body["lines"] == body["created"] + body["duplicates"] + body["error_count"]
    else:
        assert r.status_code == 400 and body["error"]["code"] in ("invalid", "invalid_file"), body
