"""Simulated annotators: the rules, the noisy vote, the evaluation under a rule, and
``manage.py simulate_loop`` end to end on a tiny model (sample, vote through the services,
preferences, a DPO run in this process, evaluation under the rule, promotion)."""

import io
import random

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Evaluation, ModelVersion, PolicyPromotion, Preference, TrainingRun, Vote
from tests.factories import CampaignFactory, PromptFactory
from training.rules import RULES, concise, judge, plain, rule_from_spec, structure_lines
from training.simulate import noisy_choice, rule_outcome

pytestmark = pytest.mark.timeout(600)

SMALL = {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 64, "min_response_tokens": 1, "log_every": 1, "lr": 1e-3}
M = [{"role": "user", "content": "Say something."}]


def longer_wins(prompt_messages, text_a, text_b):
    """A rule brought from outside (``tests.test_simulate:longer_wins``): the longer text wins,
    never a tie (equal lengths: the text that sorts last)."""
    return "a" if (len(text_a), text_a) > (len(text_b), text_b) else "b"


NOT_CALLABLE = 42


# ---------------------------------------------------------------- rules


def test_concise_prefers_the_shorter_and_ties_within_5_percent():
    assert concise(M, "short", "a much longer answer") == "a"
    assert concise(M, "a much longer answer", "short") == "b"
    assert concise(M, "x" * 100, "y" * 105) == "tie"  # 5 of 105 < 5%
    assert concise(M, "x" * 100, "y" * 106) == "a"  # 6 of 106 > 5%
    assert concise(M, "  same  ", "same") == "tie"  # surrounding whitespace does not count
    assert concise(M, "", "") == "tie"


def test_plain_prefers_fewer_list_and_heading_lines_whatever_the_length():
    listy = "# Steps\n- one\n* two\n+ three\n1. four\n2) five"
    assert structure_lines(listy) == 6
    assert structure_lines("a - b\n-not a list\n#hashtag\n1.5 is a number") == 0
    prose = "A long paragraph in prose, " * 20
    assert plain(M, prose, listy) == "a" and plain(M, listy, prose) == "b"
    assert plain(M, "- a", "- b") == "tie" and plain(M, "x", "y") == "tie"


def test_rule_from_spec_builtins_and_package_module_function():
    assert rule_from_spec("concise") is concise and rule_from_spec("plain") is plain
    assert set(RULES) == {"concise", "plain"}
    assert rule_from_spec("tests.test_simulate:longer_wins") is longer_wins


@pytest.mark.parametrize("spec, message", [
    ("shortest", "unknown rule 'shortest'; built in: concise, plain"),
    ("tests.no_such_module:f", "cannot import 'tests.no_such_module'"),
    ("tests.test_simulate:missing", "has no 'missing'"),
    ("tests.test_simulate:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
    ("tests.test_simulate:", "expected package.module:function"),
])
def test_rule_from_spec_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        rule_from_spec(spec)


def test_judge_refuses_an_answer_that_is_not_a_choice():
    with pytest.raises(ValueError, match="returned 'left'"):
        judge(lambda m, a, b: "left", M, "x", "y")


def test_noisy_choice_follows_the_rule_flips_coins_at_its_rate_and_is_seeded():
    rng = random.Random(0)
    assert {noisy_choice(concise, M, "a", "bbbb", rng=rng, noise=0.0) for _ in range(50)} == {"a"}
    coins = [noisy_choice(concise, M, "a", "bbbb", rng=random.Random(i), noise=1.0) for i in range(400)]
    assert set(coins) == {"a", "b"} and 0.4 < coins.count("a") / 400 < 0.6
    votes = [noisy_choice(concise, M, "a", "bbbb", rng=rng, noise=0.2) for _ in range(2000)]
    assert 0.87 < votes.count("a") / 2000 < 0.93  # 0.8 + 0.2 / 2
    draw = lambda: [noisy_choice(concise, M, "a", "bbbb", rng=random.Random(7), noise=0.5) for _ in range(20)]  # noqa: E731
    assert draw() == draw()
    with pytest.raises(ValueError, match="noise must be in"):
        noisy_choice(concise, M, "a", "b", rng=rng, noise=1.5)


def test_rule_outcome_is_from_the_current_policys_side_in_either_position():
    assert rule_outcome(concise, M, "short", "much longer", current_first=True) == 1
    assert rule_outcome(concise, M, "short", "much longer", current_first=False) == 1
    assert rule_outcome(concise, M, "much longer", "short", current_first=False) == -1
    assert rule_outcome(lambda m, a, b: 1 / 0, M, "same", "same", current_first=True) == 0  # identical: not asked


def test_evaluate_by_rule_of_a_policy_against_itself_is_all_ties_and_zero_kl(tiny_policy):
    from training.models import load_policy
    from training.params import SamplingParams
    from training.simulate import evaluate_by_rule

    model, tok = load_policy(tiny_policy)
    params = SamplingParams(max_new_tokens=5, batch_size=4, temperature=1.0, top_p=1.0)
    result = evaluate_by_rule(model, tok, model, tok, [M, [{"role": "user", "content": "Hi?"}]], longer_wins, params, seed=3)
    assert (result.wins, result.ties, result.losses, result.win_rate) == (0, 2, 0, 0.5)
    assert result.kl == 0.0 and result.win_low < 0.5 < result.win_high
    assert result.mean_length == result.mean_length_original > 0


# ---------------------------------------------------------------- the command


@pytest.fixture
def sim_campaign(db, settings, tiny_policy, tmp_path):
    settings.PREFLOOP = {**settings.PREFLOOP, "DEFAULT_POLICY": tiny_policy, "ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    c = CampaignFactory(slug="sim", votes_per_pair=3,
                        sampling_params={"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "top_p": 1.0})
    for _ in range(4):
        PromptFactory(campaign=c)
    for _ in range(2):
        PromptFactory(campaign=c, split="eval")
    return c


def simulate(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("simulate_loop", *args, stdout=out, stderr=err)
    return out.getvalue()


def test_simulate_loop_one_round_end_to_end(sim_campaign, sent, django_capture_on_commit_callbacks):
    config = [f"{k}={v}" for k, v in SMALL.items()]
    with django_capture_on_commit_callbacks(execute=True):
        out = simulate("--campaign", "sim", "--rounds", "1", "--pairs", "4", "--rule", "tests.test_simulate:longer_wins",
                       "--noise", "0", "--seed", "5", "--eval-prompts", "2", "--config", *config)
    original = ModelVersion.objects.get(parent=None, kind="policy")
    # Votes: 3 simulated annotators on each of the 4 pairs, through the services (leases done).
    votes = Vote.objects.filter(comparison__campaign=sim_campaign).select_related("annotator", "assignment")
    assert votes.count() == 12
    assert {v.annotator.username for v in votes} == {"sim-1", "sim-2", "sim-3"}
    assert all(v.assignment.state == "done" and v.judge == "" for v in votes)
    # Preferences: unanimous (no noise), the longer text chosen whatever order it was shown in.
    prefs = Preference.objects.filter(campaign=sim_campaign).select_related("chosen", "rejected")
    assert prefs.count() == 4
    for p in prefs:
        assert (p.n_votes, p.agreement, p.source) == (3, 1.0, "human")
        assert longer_wins(None, p.chosen.text, p.rejected.text) == "a"
    # Trained in this process: nothing queued for a gpu worker, no reward-model evaluation.
    run = TrainingRun.objects.get()
    assert (run.status, run.kind, run.trigger, run.config["max_steps"]) == ("succeeded", "dpo", "shell", 2)
    assert sent == [] and not Evaluation.objects.exists()
    new = ModelVersion.objects.get(training_run=run)
    sim_campaign.refresh_from_db()
    assert sim_campaign.policy == new and new.parent == original
    promotion = PolicyPromotion.objects.get()
    assert (promotion.from_version, promotion.to_version, promotion.reason) == (original, new, "simulate_loop round 1")
    assert "rule tests.test_simulate:longer_wins, 4 pairs per round, 3 simulated annotators per pair" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("round 1: "))
    assert f"{new.name} (run {run.pk}), 4 pairs, 12 votes, 4 new preferences (4 in all)" in line
    assert "win rate vs original " in line and " of 2), KL " in line and "mean length " in line
    assert "minutes sample " in line and " / vote " in line and " / train " in line and " / eval " in line


def test_bad_arguments_are_command_errors_before_anything_runs(sim_campaign):
    with pytest.raises(CommandError, match="unknown rule 'nope'"):
        simulate("--campaign", "sim", "--rule", "nope")
    with pytest.raises(CommandError, match="has no 'missing'"):
        simulate("--campaign", "sim", "--rule", "tests.test_simulate:missing")
    with pytest.raises(CommandError, match="No campaign 'other'"):
        simulate("--campaign", "other", "--rule", "concise")
    with pytest.raises(CommandError, match="--noise must be in"):
        simulate("--campaign", "sim", "--rule", "concise", "--noise", "2")
    with pytest.raises(CommandError, match="unknown config key"):
        simulate("--campaign", "sim", "--rule", "concise", "--config", "betta=1")
    with pytest.raises(CommandError, match="invalid choice: 'reward'"):
        simulate("--campaign", "sim", "--rule", "concise", "--kind", "reward")
    sim_campaign.prompts.filter(split="eval").delete()
    with pytest.raises(CommandError, match="no eval-split prompts"):
        simulate("--campaign", "sim", "--rule", "concise")
    assert not Vote.objects.exists() and not TrainingRun.objects.exists()
