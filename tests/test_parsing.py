"""annotation.parsing and the line reading it shares with training.formats: bytes to numbered
lines, the checks every imported row passes, CSV rows and the one JSONL writer. Pure
functions: no database."""

import codecs
import json

import pytest

from annotation.parsing import (
    ImportReport,
    UndecodableLine,
    FileError,
    check_storable,
    csv_rows,
    json_lines,
    jsonl_lines,
    prompt_row,
)
from training.formats import FormatError, numbered_lines, trl_preference

NUL_REASON = "contains a NUL character (U+0000), which the database cannot store"


def test_numbered_lines_split_on_newline_only_and_drop_cr_and_bom():
    data = codecs.BOM_UTF8 + b'{"a": 1}\r\n{"b": "x\xe2\x80\xa8y"}\n\n'
    assert numbered_lines(data) == [(1, '{"a": 1}'), (2, '{"b": "x\u2028y"}'), (3, ""), (4, "")]
    assert numbered_lines(b"x\n" + codecs.BOM_UTF8 + b"y")[1] == (2, "\ufeffy")  # only line 1 loses a BOM
    assert numbered_lines(b"a\rb\r\nc") == [(1, "a"), (2, "b"), (3, "c")]  # old Mac line ends too


def test_an_undecodable_line_is_kept_by_number_and_the_others_decode():
    lines = numbered_lines(b"good\nba\xffd\n\xc3\xa9t\xc3\xa9")
    assert lines[0] == (1, "good") and lines[2] == (3, "été")
    assert lines[1] == (2, UndecodableLine("not UTF-8 text (byte 3 of the line is 0xff)"))


def test_json_lines_report_undecodable_and_nul_lines_and_keep_the_good_ones():
    data = b"\n".join([
        b'{"prompt": "q", "chosen": "a\\u0000", "rejected": "b"}',
        b'{"prompt": "q", "chosen": "\xff", "rejected": "b"}',
        b'{"prompt": "q", "chosen": "a\x00", "rejected": "b"}',
        b'{"prompt": "q", "chosen": "good", "rejected": "bad"}',
        b"",
    ])
    report = ImportReport()
    good = list(json_lines(numbered_lines(data), report, trl_preference, max_line_chars=1000))
    assert [n for n, _ in good] == [4] and good[0][1].chosen == "good"
    assert report.lines == 4
    assert report.errors == [
        (1, f"chosen {NUL_REASON}"),
        (2, "not UTF-8 text (byte 28 of the line is 0xff)"),
        (3, f"the line {NUL_REASON}"),
    ]


@pytest.mark.parametrize(
    "row,where",
    [
        ({"prompt": [{"role": "user", "content": "x\x00"}]}, "prompt[0].content"),
        ({"messages": [{"role": "user", "content": "ok"}], "tags": ["a", "b\x00"]}, "tags[1]"),
        ({"chosen": "\n\nHuman: hi\x00\n\nAssistant: a"}, "chosen"),
        ({"rejected": [{"role": "assistant\x00", "content": "b"}]}, "rejected[0].role"),
        ({"x\x00": 1}, "row key"),
    ],
)
def test_every_string_of_a_row_is_checked_for_nul(row, where):
    with pytest.raises(FormatError) as exc:
        check_storable(row)
    assert str(exc.value) == f"{where} {NUL_REASON}"


def test_csv_rows_report_the_undecodable_line_and_skip_its_row():
    data = b'prompt,tags\n"first",a\n"multi\nline \xff here",b\n"\xfe"\n"last\x00",c\n,empty\n"ok",d\n'
    report = ImportReport()
    rows = list(csv_rows(numbered_lines(data), report))
    # Line 7's row has no prompt: csv_rows leaves empty cells out, prompt_row reports it later.
    assert [(n, r.get("prompt")) for n, r in rows] == [(2, "first"), (7, None), (8, "ok")]
    assert report.lines == 6  # 2 undecodable lines (the multi-line row is skipped) + 4 rows
    assert (4, "not UTF-8 text (byte 6 of the line is 0xff)") in report.errors
    assert (5, "not UTF-8 text (byte 2 of the line is 0xfe)") in report.errors
    assert (6, f"prompt {NUL_REASON}") in report.errors


def test_prompt_row_takes_its_limits_as_arguments():
    assert prompt_row({"prompt": "hi", "tags": "a, b"}, max_text_chars=10, splits=("train", "eval")) == (
        [{"role": "user", "content": "hi"}], ["a", "b"], "train")
    with pytest.raises(FormatError, match="too long"):
        prompt_row({"prompt": "x" * 11}, max_text_chars=10, splits=("train", "eval"))
    with pytest.raises(FormatError, match="split must be one of train, eval"):
        prompt_row({"prompt": "x", "split": "dev"}, max_text_chars=10, splits=("train", "eval"))


def test_jsonl_lines_write_utf8_as_is_one_row_per_line():
    rows = [{"prompt": "été\u2028", "n": 1}, {"x": None}]
    out = "".join(jsonl_lines(rows))
    assert out == '{"prompt": "été\u2028", "n": 1}\n{"x": null}\n'
    assert [json.loads(line) for line in out.split("\n")[:-1]] == rows


def test_lone_surrogates_and_huge_integers_are_reported_lines_not_crashes():
    data = b"\n".join([
        b'{"prompt": "q", "chosen": "a", "rejected": "b", "tags": ["\\ud800"]}',
        b'{"\\udfff": 1}',
        b'{"prompt": "q", "chosen": "a", "rejected": "b", "id": ' + b"1" * 5000 + b"}",
        b'{"prompt": "q", "chosen": "fine \\u00e9", "rejected": "b"}',
    ])
    report = ImportReport()
    good = list(json_lines(numbered_lines(data), report, trl_preference, max_line_chars=10_000))
    assert [n for n, _ in good] == [4] and good[0][1].chosen == "fine \u00e9"
    reasons = dict(report.errors)
    assert reasons[1] == "tags[0] contains text that is not valid Unicode (a lone surrogate escape)"
    assert reasons[2] == "row key contains text that is not valid Unicode (a lone surrogate escape)"
    assert reasons[3].startswith("not readable JSON (Exceeds the limit (4300 digits)")
    json.dumps(report.as_dict(), ensure_ascii=False).encode("utf-8")  # the report itself can be sent


def test_csv_keeps_line_breaks_inside_quoted_fields():
    report = ImportReport()
    rows = list(csv_rows(numbered_lines(b'prompt,tags\r\n"first line\r\nsecond line",a\r\n"x",b\r\n'), report))
    assert rows == [(3, {"prompt": "first line\nsecond line", "tags": "a"}), (4, {"prompt": "x", "tags": "b"})]
    assert report.errors == []


def test_an_undecodable_csv_header_is_a_file_error_that_says_so():
    with pytest.raises(FileError, match="line 1: the CSV header is not UTF-8"):
        list(csv_rows(numbered_lines(b"pro\xffmpt,tags\n\"x\",a\n"), ImportReport()))


def test_training_readers_share_the_line_reading(tmp_path):
    from training.data import read_preferences

    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"\n".join([
        '{"prompt": "q\u2028x", "chosen": "a\u2029", "rejected": "b"}'.encode(),  # U+2028 raw, as the export writes it
        b'{"prompt": "q", "chosen": "\xff", "rejected": "b"}',
        b'{"prompt": "q", "chosen": "c", "rejected": "d"}',
    ]))
    records, report = read_preferences(path)
    assert [r.chosen for r in records] == ["a\u2029", "c"]
    assert report.errors == ["line 2: not UTF-8 text (byte 28 of the line is 0xff)"]
