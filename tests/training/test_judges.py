"""training.judges: the combination rule, the local judge on a tiny model with the real tokenizer
(both orders cancel a pure position bias, batched = one at a time), the reward judge, and the
OpenAI-compatible judge over real HTTP against a small local server (no remote API: the server
answers as a chat-completions endpoint would, with retries exercised through real 500s)."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from training.judges import (
    LETTERS,
    JudgeError,
    LocalJudge,
    OpenAIJudge,
    Pair,
    RewardJudge,
    combine,
    judge_messages,
    letter_from_completion,
    letter_token_ids,
)

PAIRS = [
    Pair(prompt=[{"role": "user", "content": "Name a colour."}], a="Blue.", b="I think that a nice colour could be blue."),
    Pair(prompt=[{"role": "user", "content": "2+2?"}], a="4", b="Five."),
    Pair(prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], a="Hello!", b="Hi there, how can I help?"),
]


def test_combine_by_hand():
    choice, p, consistent, own = combine((0.6, 0.3, 0.1), (0.2, 0.7, 0.1))
    assert choice == "b" and p == pytest.approx((0.4, 0.5, 0.1)) and not consistent and own == ("a", "b")
    choice, p, consistent, own = combine((0.7, 0.2, 0.1), (0.6, 0.3, 0.1))
    assert (choice, consistent, own) == ("a", True, ("a", "a")) and p == pytest.approx((0.65, 0.25, 0.1))
    assert combine((0.1, 0.2, 0.7))[0] == "tie"


def test_judge_prompt_shows_the_guideline_conversation_and_both_orders():
    plain, swapped = judge_messages(PAIRS[0], "Shorter is better."), judge_messages(PAIRS[0], "Shorter is better.", swap=True)
    text = plain[1]["content"]
    assert "Shorter is better." in text and "User: Name a colour." in text
    assert text.index("Blue.") < text.index("I think that") and swapped[1]["content"].index("I think that") < swapped[1]["content"].index("Blue.")


def test_letters_are_single_tokens_of_the_real_tokenizer(tokenizer):
    ids = letter_token_ids(tokenizer)
    assert len(set(ids)) == 3 and [tokenizer.decode([i]) for i in ids] == list(LETTERS)


def bias_letter(model, tokenizer, letter: str, amount: float = 50.0):
    """A judge that answers ``letter`` whatever it reads: a pure position bias."""
    idx = letter_token_ids(tokenizer)[LETTERS.index(letter)]

    def hook(module, inputs, output):
        output = output.clone()
        output[..., idx] += amount
        return output

    return model.lm_head.register_forward_hook(hook)


def test_both_orders_cancel_a_pure_position_bias(tiny_model, tokenizer):
    handle = bias_letter(tiny_model, tokenizer, "A")
    try:
        one_order = LocalJudge(tiny_model, tokenizer, both_orders=False).judge(PAIRS)
        both = LocalJudge(tiny_model, tokenizer).judge(PAIRS)
    finally:
        handle.remove()
    assert all(v.choice == "a" and v.p_a > 0.99 and v.consistent for v in one_order)  # fooled: always the first shown
    for v in both:
        assert v.order_choices == ("a", "b") and not v.consistent  # each order picks the one shown first
        assert v.p_a == pytest.approx(v.p_b, abs=1e-6) and v.p_a == pytest.approx(0.5, abs=0.01)


def test_local_judge_batched_equals_one_at_a_time_and_a_separate_forward(tiny_model, tokenizer):
    import torch

    from training.data import prompt_tokens

    judge = LocalJudge(tiny_model, tokenizer, batch_size=8)
    batched = judge.judge(PAIRS)
    alone = [LocalJudge(tiny_model, tokenizer, batch_size=1).judge([p])[0] for p in PAIRS]
    ids = letter_token_ids(tokenizer)
    for v, w, pair in zip(batched, alone, PAIRS):
        assert (v.p_a, v.p_b, v.p_tie) == pytest.approx((w.p_a, w.p_b, w.p_tie), abs=1e-5)
        assert v.p_a + v.p_b + v.p_tie == pytest.approx(1.0)
        # The first order's letters, by hand: one unpadded forward, softmax over the three letters.
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt_tokens(tokenizer, judge_messages(pair))])).logits[0, -1]
        first = torch.softmax(logits[ids], -1).tolist()
        swapped_ids = torch.tensor([prompt_tokens(tokenizer, judge_messages(pair, swap=True))])
        with torch.no_grad():
            second = torch.softmax(tiny_model(swapped_ids).logits[0, -1][ids], -1).tolist()
        expected = [(first[0] + second[1]) / 2, (first[1] + second[0]) / 2, (first[2] + second[2]) / 2]
        assert [v.p_a, v.p_b, v.p_tie] == pytest.approx(expected, abs=1e-4)


def test_reward_judge_is_sigmoid_of_the_reward_difference(tmp_path, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from training.reward import load_reward_model, score

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_reward_model(str(tmp_path))
    verdicts = RewardJudge(model, tok).judge(PAIRS)
    for v, pair in zip(verdicts, PAIRS):
        ra, rb = score(model, tok, [(pair.prompt, pair.a), (pair.prompt, pair.b)])
        assert v.p_a == pytest.approx(1 / (1 + math.exp(rb - ra)), abs=1e-5) and v.p_tie == 0 and v.consistent
        assert v.choice == ("a" if ra > rb else "b")


def test_letter_from_completion_reads_logprobs_then_text():
    body = {"choices": [{"message": {"content": "B"}, "logprobs": {"content": [{"token": "B", "logprob": math.log(0.6),
            "top_logprobs": [{"token": "B", "logprob": math.log(0.6)}, {"token": "A", "logprob": math.log(0.3)},
                             {"token": "Hello", "logprob": math.log(0.1)}]}]}}]}
    probs, text = letter_from_completion(body)
    assert probs == pytest.approx((1 / 3, 2 / 3, 0.0)) and text == "B"
    assert letter_from_completion({"choices": [{"message": {"content": " c, a tie"}}]})[0] == (0.0, 0.0, 1.0)
    assert letter_from_completion({"choices": [{"message": {"content": "After thought, my answer: (B)."}}]})[0] == (0.0, 1.0, 0.0)
    with pytest.raises(JudgeError, match="no verdict letter"):
        letter_from_completion({"choices": [{"message": {"content": "I cannot decide."}}]})


class _Endpoint(BaseHTTPRequestHandler):
    """A chat-completions endpoint that prefers whichever response mentions 'blue', failing
    the first ``fail_first`` requests with HTTP 500 (to exercise the retries)."""

    fail_first = 0
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        text = body["messages"][1]["content"]
        shown_a = text.split("[Response A]\n", 1)[1].split("\n[End of Response A]", 1)[0]
        shown_b = text.split("[Response B]\n", 1)[1].split("\n[End of Response B]", 1)[0]
        letter = "A" if "blue" in shown_a.lower() and "blue" not in shown_b.lower() else "B" if "blue" in shown_b.lower() else "C"
        answer = {"choices": [{"message": {"role": "assistant", "content": letter}}],
                  "usage": {"prompt_tokens": 50, "completion_tokens": 1}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    _Endpoint.seen, _Endpoint.fail_first = [], 0
    server = HTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_judge_over_http_both_orders_retries_and_usage(endpoint, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    pairs = [Pair(prompt=[{"role": "user", "content": "A colour?"}], a="Red.", b="Blue."),
             Pair(prompt=[{"role": "user", "content": "Sky?"}], a="It is blue.", b="Grey.")]
    sleeps = []
    _Endpoint.fail_first = 2
    judge = OpenAIJudge(base_url=endpoint, model="judge-model", api_key_env="JUDGE_KEY", retries=3, backoff=0.5,
                        concurrency=1, sleep=sleeps.append)
    v1, v2 = judge.judge(pairs)
    assert (v1.choice, v1.consistent, v1.order_choices) == ("b", True, ("b", "b"))
    assert (v2.choice, v2.consistent) == ("a", True)
    assert (v1.prompt_tokens, v1.completion_tokens) == (100, 2) and v1.latency_s > 0
    assert sleeps == [0.5, 1.0]  # two 500s, exponential backoff, then success
    assert len(_Endpoint.seen) == 2 + 4 and {s[0] for s in _Endpoint.seen} == {"/v1/chat/completions"}
    assert {s[1] for s in _Endpoint.seen} == {"Bearer sk-test"} and {s[2]["model"] for s in _Endpoint.seen} == {"judge-model"}


def test_openai_judge_single_order_asks_once_per_pair(endpoint):
    v = OpenAIJudge(base_url=endpoint, model="m", both_orders=False, sleep=lambda s: None).judge(PAIRS[:1])[0]
    assert len(_Endpoint.seen) == 1 and len(v.order_choices) == 1 and v.completion_tokens == 1


def test_openai_judge_gives_up_with_the_reason(endpoint):
    _Endpoint.fail_first = 10
    v = OpenAIJudge(base_url=endpoint, model="m", retries=1, sleep=lambda s: None).judge(PAIRS[:1])[0]
    assert v.choice == "" and "HTTP 500: overloaded" in v.errors[0]
    dead = OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m", retries=0, timeout=2).judge(PAIRS[:1])[0]
    assert dead.choice == "" and "ConnectError" in dead.errors[0]
