"""training.data: chat-templated token ids (EOS/BOS, masks), truncation, readers and the split
(real SmolLM2 tokenizer)."""

from training.data import read_preferences, read_sft, split_rows, tokenize_preferences, tokenize_sft
from training.formats import PreferenceRecord
from tests.processes import ROOT

Q = [{"role": "user", "content": "What is the capital of France?"}]


def test_tokens_template_one_eos_no_double_bos(tokenizer):
    ex, report = tokenize_preferences(tokenizer, [PreferenceRecord(Q, "Paris.", "Lyon, I think.")])
    (e,) = ex
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    assert tokenizer.decode(e.prompt_ids).endswith("<|im_start|>assistant\n")
    assert e.prompt_ids[:2] != [bos, bos]
    for resp, text in ((e.chosen_ids, "Paris."), (e.rejected_ids, "Lyon, I think.")):
        assert resp[-1] == eos and resp.count(eos) == 1  # exactly one EOS, at the end (no trailing newline)
        assert tokenizer.decode(resp[:-1]) == text
    # The prompt + response is what the chat template renders for the whole conversation, minus the trailing newline.
    full = tokenizer.apply_chat_template(Q + [{"role": "assistant", "content": "Paris."}], tokenize=True)
    full = full["input_ids"] if not isinstance(full, list) else full
    assert e.prompt_ids + e.chosen_ids == list(full)[: len(e.prompt_ids) + len(e.chosen_ids)]
    assert report.as_dict()["kept"] == 1


def test_literal_eos_inside_a_response_is_not_a_second_eos(tokenizer):
    (e,), _ = tokenize_sft(tokenizer, [(Q, "Paris<|im_end|> and more")])
    assert e.response_ids.count(tokenizer.eos_token_id) == 1 and e.response_ids[-1] == tokenizer.eos_token_id


def test_truncation_keeps_prompt_end_and_response_start_and_drops_what_cannot_fit(tokenizer):
    long_q = [{"role": "user", "content": "word " * 200 + "FINAL QUESTION?"}]
    long_a = "START " + "blah " * 200
    ex, report = tokenize_sft(tokenizer, [(long_q, long_a)], max_length=96, max_prompt_length=64, min_response_tokens=4)
    (e,) = ex
    assert len(e.prompt_ids) == 64 and len(e.prompt_ids) + len(e.response_ids) == 96
    assert "FINAL QUESTION?" in tokenizer.decode(e.prompt_ids) and tokenizer.decode(e.prompt_ids).endswith("assistant\n")
    assert tokenizer.decode(e.response_ids).startswith("START")
    assert report.truncated == 1 and report.kept == 1
    # 6 tokens of room left but 8 required: counted as dropped, not cut to nothing.
    ex, report = tokenize_sft(tokenizer, [(long_q, long_a), (Q, "Paris.")], max_length=70, max_prompt_length=64,
                              min_response_tokens=8)
    assert len(ex) == 1 and report.dropped_too_long == 1 and report.kept == 1
    # A short answer that fits whole is kept even when shorter than min_response_tokens.
    assert len(ex[0].response_ids) < 8
    # A pair is dropped when either response would be cut below the minimum, even if the other fits.
    short, long_ = PreferenceRecord(long_q, "Yes.", long_a), PreferenceRecord(long_q, long_a, "Yes.")
    ex, report = tokenize_preferences(tokenizer, [short, long_], max_length=70, max_prompt_length=64, min_response_tokens=8)
    assert ex == [] and report.dropped_too_long == 2


def test_readers_report_bad_lines():
    records, report = read_preferences(ROOT / "fixtures" / "tests" / "trl_mixed.jsonl")
    assert len(records) >= 3 and report.errors and report.errors[0].startswith("line 4:")
    hh, report = read_preferences(ROOT / "fixtures" / "tests" / "hh_small.jsonl")
    assert len(hh) == 1 and hh[0].chosen == "Hello! What can I do for you?" and len(report.errors) == 1
    rows, report = read_sft(ROOT / "fixtures" / "tests" / "trl_mixed.jsonl")
    assert rows[0] == ([{"role": "user", "content": "What is 2+2?"}], "4")


def test_split_is_deterministic_and_disjoint():
    rows = list(range(100))
    tr, ev = split_rows(rows, eval_fraction=0.2, seed=0)
    assert len(ev) == 20 and not set(tr) & set(ev) and sorted(tr + ev) == rows
    assert split_rows(rows, eval_fraction=0.2, seed=0) == (tr, ev)
    assert split_rows(rows, eval_fraction=0.2, seed=1) != (tr, ev)
