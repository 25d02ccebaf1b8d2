"""training.formats: the torch-free readers shared by importers and trainers."""

import pytest

from training.formats import FormatError, hh_preference, messages_hash, parse_hh_dialogue, prompt_from_row, trl_preference


def test_parse_hh_dialogue_multi_turn():
    turns = parse_hh_dialogue("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d")
    assert turns == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]


@pytest.mark.parametrize(
    "text,reason",
    [("Hello", "must start with"), ("\n\nAssistant: hi", "must start with a Human turn"), (3, "must be a string")],
)
def test_parse_hh_dialogue_errors(text, reason):
    with pytest.raises(FormatError, match=reason):
        parse_hh_dialogue(text)


def test_hh_preference_requires_ending_in_assistant_turns():
    with pytest.raises(FormatError, match="must end with an assistant turn"):
        hh_preference({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": "\n\nHuman: a\n\nAssistant: x"})


def test_trl_conversational_response_must_be_one_assistant_turn():
    with pytest.raises(FormatError, match="one assistant turn"):
        trl_preference({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"})


def test_prompt_rows():
    assert prompt_from_row({"prompt": "hi"}) == [{"role": "user", "content": "hi"}]
    with pytest.raises(FormatError, match="either"):
        prompt_from_row({"prompt": "hi", "messages": []})
    with pytest.raises(FormatError, match="last turn"):
        prompt_from_row({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    with pytest.raises(FormatError, match="unknown keys"):
        prompt_from_row({"messages": [{"role": "user", "content": "q", "name": "x"}]})


def test_messages_hash_is_order_of_keys_independent():
    assert messages_hash([{"role": "user", "content": "x"}]) == messages_hash([{"content": "x", "role": "user"}])
    assert messages_hash([{"role": "user", "content": "x"}]) != messages_hash([{"role": "user", "content": "y"}])
