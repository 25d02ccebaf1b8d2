"""``/v1/chat/completions`` end to end: Prefloop's web server (pytest-django's live server) relays
to a real Celery worker consuming ``serve`` on Redis + PostgreSQL, and the official ``openai``
client talks to it over real HTTP: no mock anywhere. The tiny model checks the protocol and the
numbers (greedy text and per-token log-probs equal to the model's own in this process); the
embedded SmolLM2 (slow) is then an ``openai`` judge's model, and its verdicts over HTTP equal
the local judge's on the same model."""

import pytest
from django.conf import settings as django_settings
from rest_framework.authtoken.models import Token

from annotation import services
from annotation.models import Judge, Vote
from tests.factories import CampaignFactory, ComparisonFactory
from tests.processes import celery_worker, worker_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def serve_worker(django_db_setup, tiny_policy, tmp_path_factory):
    import redis

    tmp = tmp_path_factory.mktemp("serve-worker")
    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).delete("serve")
    env = worker_env(PREFLOOP_DEFAULT_POLICY=tiny_policy)
    log = tmp / "worker.log"
    with celery_worker(env=env, log=log, queues="serve"):
        yield log


@pytest.fixture
def client_for(live_server, reviewer):
    import openai

    token = Token.objects.create(user=reviewer).key
    return lambda: openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=token, max_retries=0, timeout=120)


def test_openai_client_round_trip_with_exact_logprobs(serve_worker, client_for, tiny_policy):
    import torch

    from training.data import prompt_tokens
    from training.models import load_policy

    version = services.model_version_register_base(spec=tiny_policy)
    client = client_for()
    assert version.name in [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": "Name a colour."}]
    out = client.chat.completions.create(model=version.name, messages=messages, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=3)
    model, tokenizer = load_policy(tiny_policy)
    prompt = prompt_tokens(tokenizer, messages)
    with torch.no_grad():  # greedy, step by step, in this process
        ids, want = list(prompt), []
        for _ in range(6):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(logp.argmax())
            want.append((token, float(logp[token]), logp.topk(3)))
            ids.append(token)
            if token == tokenizer.eos_token_id:
                break
    choice = out.choices[0]
    assert out.model == version.name and out.object == "chat.completion" and len(out.choices) == 1
    assert out.usage.prompt_tokens == len(prompt) and out.usage.completion_tokens == len(want)
    assert choice.finish_reason == ("stop" if want[-1][0] == tokenizer.eos_token_id else "length")
    got = choice.logprobs.content
    assert [t.token for t in got] == [tokenizer.decode([w[0]]) for w in want]
    for entry, (token, lp, top) in zip(got, want):
        assert entry.logprob == pytest.approx(lp, abs=1e-4)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token
    text_ids = [w[0] for w in want if w[0] != tokenizer.eos_token_id]
    assert choice.message.content == tokenizer.decode(text_ids, skip_special_tokens=True).strip()

    # n samples at T=1 with a seed: reproducible; without logprobs none are sent back.
    a = client.chat.completions.create(model=version.name, messages=messages, max_tokens=5, n=3, temperature=1.0, seed=11)
    b = client.chat.completions.create(model=version.name, messages=messages, max_tokens=5, n=3, temperature=1.0, seed=11)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2] and a.choices[0].logprobs is None
    assert 3 <= a.usage.completion_tokens <= 15  # 1 to 5 tokens each


def test_client_errors_come_back_as_openai_exceptions(serve_worker, client_for):
    import openai

    client = client_for()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-version", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], stream=True)


@pytest.mark.slow
def test_openai_judge_over_http_equals_the_local_judge_on_the_embedded_model(serve_worker, client_for, live_server, monkeypatch):
    """The judges issue's round trip: a campaign's ``openai`` judge pointed at Prefloop's own
    endpoint serving the embedded SmolLM2; its letter probabilities (top-20 log-probs of the
    answer's first token) equal the local judge's on the same model, and latency and token
    usage are stored per vote."""
    from training.judges import LocalJudge, Pair
    from training.models import EMBEDDED, load_policy
    from workers.judging import run_judge

    version = services.model_version_register_base(spec=EMBEDDED)
    client_for()  # creates the reviewer's token
    monkeypatch.setenv("PREFLOOP_TEST_API_KEY", Token.objects.get().key)
    campaign = CampaignFactory(slug="served")
    texts = [("What is the capital of France?", "Paris.", "I like turtles."),
             ("Give me a synonym of 'big'.", "Large.", "Small."),
             ("Is water wet?", "Yes, water makes things wet.", "Bananas are yellow.")]
    comparisons = [ComparisonFactory(campaign=campaign, prompt__messages=[{"role": "user", "content": q}],
                                     response_a__text=a, response_b__text=b) for q, a, b in texts]
    judge = Judge.objects.create(campaign=campaign, name="served", kind="openai", base_url=f"{live_server.url}/v1",
                                 model=version.name, api_key_env="PREFLOOP_TEST_API_KEY", concurrency=2)
    report = run_judge(judge_id=judge.pk)
    assert (report.recorded, report.failed) == (3, []), report
    votes = {v.comparison_id: v for v in Vote.objects.filter(judge="judge:served")}
    model, tokenizer = load_policy(EMBEDDED)
    guideline = campaign.guidelines.order_by("-version").first().text
    local = LocalJudge(model, tokenizer, guideline=guideline).judge(
        [Pair(prompt=c.prompt.messages, a=c.response_a.text, b=c.response_b.text) for c in comparisons])
    for c, want in zip(comparisons, local):
        got = votes[c.pk]
        assert got.choice == want.choice
        assert got.judge_details["p_a"] == pytest.approx(want.p_a, abs=2e-3)
        assert got.judge_details["p_b"] == pytest.approx(want.p_b, abs=2e-3)
        assert got.judge_details["latency_s"] > 0 and got.judge_details["prompt_tokens"] > 100
        assert got.judge_details["completion_tokens"] == 2  # one letter per order
