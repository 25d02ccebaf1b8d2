"""Import files with a NUL character or a line that is not UTF-8: the line is reported by number
and the good lines are imported (strict: nothing is), through the commands and the API, on
PostgreSQL and on the embedded SQLite default. Neither may end in a database error."""

import io
import sqlite3
import subprocess
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from annotation.models import Preference, Prompt, Response
from tests.processes import ROOT, base_env

NUL = "contains a NUL character (U+0000), which the database cannot store"
PREFERENCES = b"\n".join([
    b'{"prompt": "q1", "chosen": "a\\u0000b", "rejected": "c"}',  # escaped NUL in a response
    b'{"prompt": [{"role": "user", "content": "q\\u0000"}], "chosen": "a", "rejected": "b"}',  # in a prompt turn
    b'{"prompt": "q3", "chosen": "a\x00", "rejected": "b"}',  # a raw NUL byte
    b'{"prompt": "q4", "chosen": "caf\xe9", "rejected": "b"}',  # Latin-1, not UTF-8
    b'{"prompt": "q5", "chosen": "good", "rejected": "bad"}',
    b"",
])
PREFERENCE_ERRORS = {
    1: f"chosen {NUL}",
    2: f"prompt[0].content {NUL}",
    3: f"the line {NUL}",
    4: "not UTF-8 text (byte 32 of the line is 0xe9)",
}
PROMPTS = b"\n".join([
    b'{"prompt": "fine"}',
    b'{"prompt": "tagged", "tags": ["ok", "b\\u0000d"]}',
    b'{"messages": [{"role": "user", "content": "\xff"}]}',
    b'{"prompt": "also fine", "split": "eval"}',
])
PROMPT_ERRORS = {2: f"tags[1] {NUL}", 3: "not UTF-8 text (byte 44 of the line is 0xff)"}
PROMPTS_CSV = b'prompt,tags\n"nul\x00 here",a\n"two\nlines \xff",b\nkept,c\n'
PROMPT_CSV_ERRORS = {2: f"prompt {NUL}", 4: "not UTF-8 text (byte 7 of the line is 0xff)"}


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def reported(err: str) -> dict[int, str]:
    return {int(n): reason.strip() for n, reason in (line.split(":", 2)[1:] for line in err.strip().splitlines())}


def nothing_imported() -> bool:
    return not (Prompt.objects.exists() or Response.objects.exists() or Preference.objects.exists())


def test_command_reports_nul_and_undecodable_lines_and_imports_the_rest(campaign, tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_bytes(PREFERENCES)
    with pytest.raises(CommandError, match="4 bad line"):
        run("import_preferences", str(f), "--campaign", campaign.slug, "--format", "trl", "--strict")
    assert nothing_imported()
    out, err = run("import_preferences", str(f), "--campaign", campaign.slug, "--format", "trl")
    assert "1 preference(s) imported" in out and "4 bad line(s) skipped (5 lines read)" in out
    assert reported(err) == PREFERENCE_ERRORS
    assert [(p.chosen.text, p.rejected.text) for p in Preference.objects.all()] == [("good", "bad")]


def test_prompt_command_jsonl_and_csv(campaign, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(PROMPTS)
    with pytest.raises(CommandError, match="nothing was imported"):
        run("import_prompts", str(f), "--campaign", campaign.slug, "--strict")
    assert nothing_imported()
    out, err = run("import_prompts", str(f), "--campaign", campaign.slug)
    assert "2 prompt(s) imported" in out and reported(err) == PROMPT_ERRORS
    csv = tmp_path / "p.csv"
    csv.write_bytes(PROMPTS_CSV)
    out, err = run("import_prompts", str(csv), "--campaign", campaign.slug)
    assert "1 prompt(s) imported" in out and reported(err) == PROMPT_CSV_ERRORS
    assert sorted(p.messages[0]["content"] for p in Prompt.objects.all()) == ["also fine", "fine", "kept"]


@pytest.mark.parametrize(
    "endpoint,data,body,errors",
    [
        ("preferences", {"format": "trl"}, PREFERENCES, PREFERENCE_ERRORS),
        ("prompts", {}, PROMPTS, PROMPT_ERRORS),
    ],
)
def test_api_upload_reports_the_same_lines(api, campaign, admin_user, endpoint, data, body, errors):
    client = api(admin_user)
    url = f"/api/campaigns/{campaign.slug}/{endpoint}/import/"
    upload = lambda: SimpleUploadedFile("f.jsonl", body, content_type="application/jsonl")  # noqa: E731
    r = client.post(url, {"file": upload(), "strict": "true", **data}, format="multipart")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file"
    assert {e["line"]: e["reason"] for e in r.json()["error"]["details"]["errors"]} == errors
    assert nothing_imported()
    r = client.post(url, {"file": upload(), **data}, format="multipart")
    assert r.status_code == 201, r.content
    report = r.json()
    assert report["written"] and report["created"] >= 1
    assert {e["line"]: e["reason"] for e in report["errors"]} == errors


def test_embedded_sqlite_reports_the_same_lines(tmp_path):
    env = base_env(PREFLOOP_VAR=str(tmp_path), DJANGO_SETTINGS_MODULE="webapp.settings.local")
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(key, None)
    prefs, prompts = tmp_path / "prefs.jsonl", tmp_path / "p.csv"
    prefs.write_bytes(PREFERENCES)
    prompts.write_bytes(PROMPTS_CSV)

    def manage(*args, ok=True):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert (out.returncode == 0) == ok, out.stderr[-3000:]
        return out

    manage("migrate", "--noinput", "-v0")
    manage("shell", "-c", "from annotation import services; services.campaign_create(slug='s', name='S', guideline='g')")
    strict = manage("import_preferences", str(prefs), "--campaign", "s", "--format", "trl", "--strict", ok=False)
    assert "nothing was imported" in strict.stderr and "Traceback" not in strict.stderr
    out = manage("import_preferences", str(prefs), "--campaign", "s", "--format", "trl")
    assert "1 preference(s) imported" in out.stdout and reported(out.stderr) == PREFERENCE_ERRORS
    out = manage("import_prompts", str(prompts), "--campaign", "s")
    assert "1 prompt(s) imported" in out.stdout and reported(out.stderr) == PROMPT_CSV_ERRORS
    with sqlite3.connect(tmp_path / "prefloop.sqlite3") as con:
        assert con.execute("select count(*) from annotation_preference").fetchone()[0] == 1
        assert con.execute("select count(*) from annotation_response where instr(text, char(0)) > 0").fetchone()[0] == 0


# Every way a line can carry text PostgreSQL cannot store, or bytes that are not UTF-8: each is
# that line's error (number and reason), the good lines around them are imported, no 500.
NOT_UNICODE = "contains text that is not valid Unicode (a lone surrogate escape)"
ODD_LINES = [
    (b'{"prompt": "a\\u0000b"}', f"prompt {NUL}"),
    (b'{"prompt": "a", "id": {"deep": ["x", "\\u0000"]}}', f"id.deep[1] {NUL}"),
    (b'{"prompt": "a", "\\u0000": 1}', f"row key {NUL}"),
    (b'{"prompt": "a\\ud800"}', f"prompt {NOT_UNICODE}"),
    (b'{"prompt": "\\udfff\\ud800"}', f"prompt {NOT_UNICODE}"),
    (b'{"prompt": "a", "tags": ["\\udbff"]}', f"tags[0] {NOT_UNICODE}"),
    (b'{"prompt": "a", "\\ud800": 1}', f"row key {NOT_UNICODE}"),
    (b'{"prompt": "a\x00"}', f"the line {NUL}"),
    (b"\x00", f"the line {NUL}"),
    (b'{"prompt": "\xed\xa0\x80"}', "not UTF-8 text (byte 13 of the line is 0xed)"),  # a surrogate in UTF-8 bytes (CESU-8)
    (b'{"prompt": "\xc0\x80"}', "not UTF-8 text (byte 13 of the line is 0xc0)"),  # an overlong NUL (modified UTF-8)
    (b'{"prompt": "\xf4\x90\x80\x80"}', "not UTF-8 text (byte 13 of the line is 0xf4)"),  # past U+10FFFF
    (b'{"prompt": "caf\xc3"}', "not UTF-8 text (byte 16 of the line is 0xc3)"),  # cut in the middle of a character
]


def odd_file() -> tuple[bytes, dict[int, str]]:
    lines, errors = [], {}
    for i, (line, reason) in enumerate(ODD_LINES):
        lines.append(b'{"prompt": "good %d \\ud83d\\ude00"}' % i)  # an escaped surrogate pair is fine
        lines.append(line)
        errors[len(lines)] = reason
    return b"\r\n".join(lines), errors


@pytest.mark.parametrize("read_bytes", [None, 3])  # 3: chunk boundaries inside characters and CR LF pairs
def test_api_reports_every_unstorable_or_undecodable_line(api, campaign, admin_user, monkeypatch, read_bytes):
    from annotation import limits

    if read_bytes:
        monkeypatch.setattr(limits, "IMPORT_READ_BYTES", read_bytes)
    body, errors = odd_file()
    r = api(admin_user).post(f"/api/campaigns/{campaign.slug}/prompts/import/",
                             {"file": SimpleUploadedFile("f.jsonl", body)}, format="multipart")
    assert r.status_code == 201, r.content[:500]
    assert {e["line"]: e["reason"] for e in r.json()["errors"]} == errors
    assert r.json()["created"] == len(ODD_LINES) == Prompt.objects.count()
    assert Prompt.objects.filter(messages__0__content="good 0 \U0001f600").exists()


def test_command_reports_every_unstorable_or_undecodable_line(campaign, tmp_path):
    body, errors = odd_file()
    f = tmp_path / "p.jsonl"
    f.write_bytes(body)
    out, err = run("import_prompts", str(f), "--campaign", campaign.slug)
    assert reported(err) == errors and f"{len(ODD_LINES)} prompt(s) imported" in out
