"""Import and export through the management commands (the API shares the same services)."""

import io
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from annotation import services
from annotation.models import Preference, Prompt, Response
from tests.factories import ComparisonFactory
from tests.shared_data import shared_data

FIX = Path(settings.BASE_DIR) / "fixtures" / "tests"
HH = shared_data("hh-harmless-1800.jsonl")


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.skipif(not HH.exists(), reason="shared data not mounted")
def test_hh_harmless_1800_imports_1795_and_reports_5_lines_once(campaign):
    out, err = run("import_preferences", str(HH), "--campaign", campaign.slug, "--format", "hh")
    assert "1795 preference(s) imported" in out and "5 bad line(s)" in out
    bad = [line.split(":")[1] for line in err.strip().splitlines()]
    assert bad == ["957", "1326", "1525", "1527", "1594"]
    assert all("do not share the prompt" in line for line in err.strip().splitlines())
    assert Preference.objects.filter(campaign=campaign, source="import").count() == 1795
    counts = (Prompt.objects.count(), Response.objects.count())
    out, _ = run("import_preferences", str(HH), "--campaign", campaign.slug, "--format", "hh")
    assert "0 preference(s) imported, 1795 already present" in out
    assert Preference.objects.count() == 1795 and (Prompt.objects.count(), Response.objects.count()) == counts


def test_trl_formats_good_lines_imported_bad_lines_reported(campaign):
    out, err = run("import_preferences", str(FIX / "trl_mixed.jsonl"), "--campaign", campaign.slug, "--format", "trl")
    assert "3 preference(s) imported" in out
    reasons = dict(line.split(":", 2)[1:] for line in err.strip().splitlines())
    assert set(reasons) == {"4", "5", "6", "7", "8", "10"}
    assert "not valid JSON" in reasons["4"]
    assert "missing key(s): rejected" in reasons["5"]
    assert "prompt must be a string or a list of {role, content} turns, got int" in reasons["6"]
    assert "identical" in reasons["7"]
    assert "role must be one of" in reasons["8"]
    assert "expected a JSON object" in reasons["10"]
    rows = {p.prompt.messages[-1]["content"]: (p.chosen.text, p.rejected.text) for p in Preference.objects.all()}
    assert rows == {"What is 2+2?": ("4", "5"), "Capital of France?": ("Paris.", "Lyon."), "Hi": ("Hello! How can I help?", "What.")}
    system = Preference.objects.get(chosen__text="Paris.").prompt.messages
    assert system[0] == {"role": "system", "content": "Be brief."}


def test_strict_writes_nothing_when_any_line_is_bad(campaign):
    with pytest.raises(CommandError, match="nothing was imported"):
        run("import_preferences", str(FIX / "trl_mixed.jsonl"), "--campaign", campaign.slug, "--format", "trl", "--strict")
    assert not Preference.objects.exists() and not Prompt.objects.exists() and not Response.objects.exists()


def test_hh_small_file(campaign):
    out, err = run("import_preferences", str(FIX / "hh_small.jsonl"), "--campaign", campaign.slug, "--format", "hh")
    assert "1 preference(s) imported" in out and ":2: chosen and rejected do not share the prompt" in err
    p = Preference.objects.get()
    assert p.prompt.messages == [{"role": "user", "content": "Hi there"}]
    assert (p.chosen.text, p.rejected.text) == ("Hello! What can I do for you?", "Go away.")


def test_import_errors_for_unknown_campaign_and_missing_file(campaign):
    with pytest.raises(CommandError, match="No campaign 'nope'"):
        run("import_prompts", str(FIX / "prompts.jsonl"), "--campaign", "nope")
    with pytest.raises(CommandError, match="no such file"):
        run("import_prompts", "/nonexistent.jsonl", "--campaign", campaign.slug)


def test_oversized_field_is_a_reported_line(campaign, tmp_path, settings):
    settings.PREFLOOP = {**settings.PREFLOOP, "MAX_TEXT_CHARS": 50}
    f = tmp_path / "big.jsonl"
    f.write_text(json.dumps({"prompt": "p", "chosen": "x" * 51, "rejected": "y"}) + "\n")
    out, err = run("import_preferences", str(f), "--campaign", campaign.slug, "--format", "trl")
    assert "too long (51 characters, limit 50)" in err and not Preference.objects.exists()


def test_import_prompts_jsonl_and_csv(campaign):
    out, err = run("import_prompts", str(FIX / "prompts.jsonl"), "--campaign", campaign.slug)
    assert "2 prompt(s) imported, 1 already present, 3 bad line(s)" in out
    assert {":3:", ":4:", ":5:"} == {line[line.index(":"): line.index(":", line.index(":") + 1) + 1] for line in err.strip().splitlines()}
    assert Prompt.objects.get(split="eval").messages == [{"role": "user", "content": "Write a haiku about tea."}]
    out, err = run("import_prompts", str(FIX / "prompts.csv"), "--campaign", campaign.slug)
    assert "2 prompt(s) imported" in out and "1 bad line(s)" in out
    assert Prompt.objects.get(messages__0__content="How do I reverse a list in Python?").tags == ["coding", "python"]


def _completed_preference(campaign, annotators):
    c = ComparisonFactory(campaign=campaign)
    for user, rationale in zip(annotators, ["A is right", "", "clearer"]):
        a = services.assignment_next(campaign=campaign, annotator=user)
        pick = "a" if a.order == "ab" else "b"
        services.vote_submit(annotator=user, assignment_id=a.pk, choice=pick, rationale=rationale)
    return c


def test_export_is_read_by_datasets_as_is(campaign, annotators, tmp_path):
    import datasets

    c = _completed_preference(campaign, annotators)
    run("import_preferences", str(FIX / "trl_mixed.jsonl"), "--campaign", campaign.slug, "--format", "trl")
    out = tmp_path / "prefs.jsonl"
    run("export_preferences", "--campaign", campaign.slug, "--format", "trl", "-o", str(out))
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == 4 and set(ds.column_names) == {"prompt", "chosen", "rejected"}
    first = ds[0]
    assert first["prompt"] == c.prompt.messages
    assert first["chosen"] == [{"role": "assistant", "content": c.response_a.text}]
    assert first["rejected"] == [{"role": "assistant", "content": c.response_b.text}]


def test_export_with_meta(campaign, annotators, tmp_path):
    _completed_preference(campaign, annotators)
    out = tmp_path / "meta.jsonl"
    run("export_preferences", "--campaign", campaign.slug, "--with-meta", "-o", str(out))
    row = json.loads(out.read_text().splitlines()[0])
    assert row["source"] == "human" and row["votes"] == 3 and row["agreement"] == 1.0 and row["margin"] == 1.0
    assert row["rationales"] == ["A is right", "clearer"]
    assert row["chosen_model"] is None and row["split"] == "train"


def test_export_to_missing_directory_is_an_error(campaign):
    with pytest.raises(CommandError, match="no such directory"):
        run("export_preferences", "--campaign", campaign.slug, "-o", "/nonexistent/dir/out.jsonl")


def test_csv_without_prompt_column_is_a_clear_error(campaign, tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("question\nwhat?\n")
    with pytest.raises(CommandError, match="needs a 'prompt' column"):
        run("import_prompts", str(f), "--campaign", campaign.slug)
    assert not Prompt.objects.exists()


def test_pathological_lines_are_reported_not_crashing(campaign, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("[" * 100000 + "\n" + '{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n' + '{"prompt": "ok", "chosen": "a", "rejected": "b"}\n')
    out, err = run("import_preferences", str(f), "--campaign", campaign.slug, "--format", "trl")
    assert "1 preference(s) imported" in out
    assert ":1: JSON nested too deeply" in err and ":2: prompt contains text that is not valid Unicode" in err


def _people_vote(campaign, annotators, comparison, wanted, strengths=("", "", ""), rationales=("", "", "")):
    """Each annotator votes ``wanted[i]`` (A/B terms) on ``comparison``, the only open one."""
    for user, want, strength, rationale in zip(annotators, wanted, strengths, rationales):
        a = services.assignment_next(campaign=campaign, annotator=user)
        assert a.comparison_id == comparison.pk
        shown = want if a.order == "ab" else {"a": "b", "b": "a"}.get(want, want)
        services.vote_submit(annotator=user, assignment_id=a.pk, choice=shown, strength=strength, rationale=rationale)


def test_kto_export_unpairs_preferences_and_counts_both_bad_as_undesirable(campaign, annotators, tmp_path, api, admin_user):
    """KTO rows: a preference gives chosen = desirable and rejected = undesirable; a comparison
    people called "both bad" (majority) gives two undesirable rows, also when one vote picked a
    side (which made a preference); a tie majority gives none. TRL's loader reads the file."""
    import datasets

    clear = ComparisonFactory(campaign=campaign)
    _people_vote(campaign, annotators, clear, "abb", strengths=("much", "slightly", "much"), rationales=("", "B cites", ""))
    mostly_bad = ComparisonFactory(campaign=campaign)
    _people_vote(campaign, annotators, mostly_bad, ["both_bad", "a", "both_bad"])
    all_bad = ComparisonFactory(campaign=campaign)
    _people_vote(campaign, annotators, all_bad, ["both_bad"] * 3)
    tied = ComparisonFactory(campaign=campaign)
    _people_vote(campaign, annotators, tied, ["tie", "tie", "both_bad"])
    out = tmp_path / "kto.jsonl"
    _, err = run("export_preferences", "--campaign", campaign.slug, "--format", "kto", "-o", str(out))
    assert "6 kto row(s)" in err
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert set(ds.column_names) == {"prompt", "completion", "label"}
    got = [(r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in ds]
    want = [(clear.prompt.messages[0]["content"], clear.response_b.text, True),
            (clear.prompt.messages[0]["content"], clear.response_a.text, False),
            (mostly_bad.prompt.messages[0]["content"], mostly_bad.response_a.text, False),
            (mostly_bad.prompt.messages[0]["content"], mostly_bad.response_b.text, False),
            (all_bad.prompt.messages[0]["content"], all_bad.response_a.text, False),
            (all_bad.prompt.messages[0]["content"], all_bad.response_b.text, False)]
    assert got == want

    run("export_preferences", "--campaign", campaign.slug, "--format", "kto", "--with-meta", "-o", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["role"] for r in rows] == ["chosen", "rejected", "both_bad", "both_bad", "both_bad", "both_bad"]
    assert rows[0]["strengths"] == ["slightly", "much"] and rows[0]["rationales"] == ["B cites"] and rows[0]["votes"] == 3
    assert rows[4]["preference_id"] is None and rows[4]["comparison_id"] == all_bad.pk and rows[4]["votes"] == 3
    # The paired export's meta carries the strengths too; the API serves both formats.
    run("export_preferences", "--campaign", campaign.slug, "--with-meta", "-o", str(out))
    paired = json.loads(out.read_text().splitlines()[0])
    assert paired["strengths"] == ["slightly", "much"] and paired["comparison_id"] == clear.pk
    client = api(admin_user)
    r = client.get(f"/api/campaigns/{campaign.slug}/preferences.jsonl?export_format=kto")
    assert r.status_code == 200 and len(b"".join(r.streaming_content).splitlines()) == 6
    r = client.get(f"/api/campaigns/{campaign.slug}/preferences.jsonl?export_format=csv")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid"
