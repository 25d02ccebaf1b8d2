"""The admins' console pages: who may open them, what they show (progress, lineage, the run
form generated from the config dataclass, a run's live block and series, two runs' config
diff) and the writes behind their buttons (start, cancel, promote, roll back)."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from annotation import roles, services
from annotation.console import config_form
from annotation.models import PolicyPromotion, Preference, RetrainPolicy, TrainingRun, Vote
from tests.factories import ComparisonFactory, PromptFactory, ResponseFactory, UserFactory
from tests.processes import ROOT
from training.config import DPOConfig, RewardConfig


def client_for(user):
    c = Client()
    c.force_login(user)
    return c



@pytest.fixture
def base(campaign):
    version = services.model_version_register_base(spec="some/base-model")
    campaign.policy = version
    campaign.save(update_fields=["policy"])
    return version


def finished_run(campaign, base, *, kind="dpo", config=None):
    """A run that succeeded and registered its version (as the gpu worker would)."""
    run = services.training_run_create(campaign=campaign, kind=kind, config=config or {}, base_version=base)
    services.training_run_start(run_id=run.pk, device="cpu", data_manifest={"rows": 3, "sha256": "ab" * 32})
    services.training_run_log(run_id=run.pk, metrics={"loss": 0.69, "learning_rate": 1e-6, "rewards/accuracies": 0.5}, step=1)
    services.training_run_log(run_id=run.pk, metrics={"loss": 0.61, "learning_rate": 5e-7, "rewards/accuracies": 1.0}, step=2)
    services.training_run_progress(run_id=run.pk, step=2, total_steps=2)
    version = services.training_run_finish(run_id=run.pk, status="succeeded", artifact_path="/tmp/nowhere")
    run.refresh_from_db()
    return run, version


def stat(html: str, name: str) -> int:
    return int(re.search(rf'id="stat-{name}">(\d+)<', html).group(1))


def test_console_is_for_admins_and_reviewers_only(campaign, base, annotator, reviewer, admin_user, sent):
    run = services.training_run_create(campaign=campaign, kind="dpo", base_version=base)
    pages = ["/console/", "/console/c1/", "/console/c1/run-form/?kind=sft", f"/console/runs/{run.pk}/",
             f"/console/runs/{run.pk}/status/", f"/console/runs/{run.pk}/series.json", f"/console/runs/compare/?a={run.pk}&b={run.pk}"]
    writes = ["/console/c1/runs/", "/console/c1/promote/", "/console/c1/rollback/", f"/console/runs/{run.pk}/cancel/"]
    for url in pages:
        r = Client().get(url)
        assert r.status_code == 302 and r["Location"].startswith("/accounts/login/"), url
        for user in (annotator, UserFactory()):
            assert client_for(user).get(url).status_code == 403, url
        assert client_for(reviewer).get(url).status_code == 200, url
        assert client_for(admin_user).get(url).status_code == 200, url
    for url in writes:  # reviewers read the console; only admins (manage_training) write
        assert client_for(annotator).post(url, {"kind": "dpo"}).status_code == 403, url
        assert client_for(reviewer).post(url, {"kind": "dpo", "version": base.name}).status_code == 403, url
    assert TrainingRun.objects.get().status == "queued" and not PolicyPromotion.objects.exists()
    reviewer_html = client_for(reviewer).get("/console/c1/").content.decode()
    assert 'id="start-run"' not in reviewer_html and 'id="promote-form"' not in reviewer_html
    # The header links to the console for admins and reviewers only.
    assert 'href="/console/"' in client_for(admin_user).get("/").content.decode()
    assert 'href="/console/"' in client_for(reviewer).get("/").content.decode()
    assert 'href="/console/"' not in client_for(annotator).get("/").content.decode()


def test_overview_numbers_buffer_throughput_and_lineage(campaign, base, admin_user, django_assert_max_num_queries):
    campaign.buffer_size = 10
    campaign.save(update_fields=["buffer_size"])
    for _ in range(3):
        ComparisonFactory(campaign=campaign)
    ComparisonFactory(campaign=campaign, kind="gold", gold_answer="a")  # not part of the buffer
    done = [ComparisonFactory(campaign=campaign, status="complete", vote_count=2) for _ in range(2)]
    voters = [UserFactory(role=roles.ANNOTATOR) for _ in range(2)]
    votes = [Vote.objects.create(comparison=c, annotator=u, choice="a") for c in done for u in voters]
    Vote.objects.filter(pk=votes[0].pk).update(created_at=timezone.now() - timedelta(days=2))
    Vote.objects.filter(pk=votes[1].pk).update(created_at=timezone.now() - timedelta(days=30))  # outside the 7 days
    for c in done:
        Preference.objects.create(campaign=campaign, prompt=c.prompt, chosen=c.response_a, rejected=c.response_b,
                                  comparison=c, source="human", n_votes=2)
    held_out = PromptFactory(campaign=campaign, split="eval")
    Preference.objects.create(campaign=campaign, prompt=held_out, chosen=ResponseFactory(prompt=held_out),
                              rejected=ResponseFactory(prompt=held_out), source="import")
    run, v1 = finished_run(campaign, base)
    services.campaign_policy_promote(campaign=campaign, version=v1, user=admin_user)
    RetrainPolicy.objects.create(campaign=campaign, kind="dpo", every_n_preferences=5, min_interval_minutes=0)

    c = client_for(admin_user)
    with django_assert_max_num_queries(25):  # a fixed number: counts are aggregates, not one query per row
        html = c.get("/console/c1/").content.decode()
    assert (stat(html, "open"), stat(html, "completed"), stat(html, "votes"), stat(html, "ready")) == (3, 2, 4, 2)
    assert "of 3</span>" in html  # all preferences, the held-out one included
    assert "<strong>3</strong> open normal comparisons of a buffer of <strong>10</strong>" in html
    per_day = [int(n) for n in re.findall(r'class="bar"[^>]*data-n="(\d+)"', html)]
    assert len(per_day) == 7 and per_day[-1] == 2 and per_day[-3] == 1 and sum(per_day) == 3
    lineage = html[html.index('id="lineage"'):html.index("</table>", html.index('id="lineage"'))]
    assert lineage.index(v1.name) < lineage.index("↑ some/base-model")
    assert f'href="/console/runs/{run.pk}/">run {run.pk}</a>' in lineage and "base model some/base-model" in lineage
    assert f"Not due: 0 new preference(s) since run {run.pk}, 5 needed" in html
    assert "promote" in html[html.index('id="promotions"'):] and admin_user.username in html
    # The list page: one row per campaign with the same counts.
    listing = client_for(admin_user).get("/console/").content.decode()
    assert 'href="/console/c1/"' in listing and "3 / 10" in listing and v1.name in listing


def test_run_form_is_generated_from_the_config_dataclass(campaign, admin_user):
    html = client_for(admin_user).get("/console/c1/").content.decode()
    form = html[html.index('id="start-run"'):]
    assert 'name="cfg-beta" value="0.1"' in form and "strength of the KL anchor to the reference" in form
    assert 'name="cfg-lr" value="1e-06"' in form and "peak learning rate (AdamW)" in form  # help from the base class
    assert "AdamW (beta1, beta2)" in form and 'value="0.9, 0.999"' in form
    assert 'name="cfg-model"' not in form  # a run trains its base version
    assert 'hx-get="/console/c1/run-form/"' in form  # switching kind reloads the fields
    # htmx and uPlot are vendored under static/, with their licences; nothing comes from a CDN.
    assert "/static/vendor/htmx-2.0.11/htmx.min.js" in html and "/static/vendor/uplot-1.6.32/uPlot.iife.min.js" in html
    assert "http://" not in html and "https://" not in html
    vendor = ROOT / "annotation" / "static" / "vendor"
    assert (vendor / "htmx-2.0.11" / "LICENSE").is_file() and (vendor / "uplot-1.6.32" / "LICENSE").is_file()
    sft = client_for(admin_user).get("/console/c1/run-form/?kind=reward").content.decode()
    assert sft.startswith('<fieldset id="config-fields"') and 'name="cfg-beta"' not in sft
    assert 'name="cfg-center_coef" value="0.0"' in sft and 'name="cfg-lr" value="1e-05"' in sft
    # Help for every field: the trailing comments of training/config.py.
    assert all(f.help for f in config_form.config_fields(DPOConfig)) and all(f.help for f in config_form.config_fields(RewardConfig))


def test_bad_values_and_unknown_keys_are_shown_next_to_the_field(campaign, admin_user, sent):
    c = client_for(admin_user)
    r = c.post("/console/c1/runs/", {"kind": "dpo", "cfg-beta": "high", "cfg-lr": "1e-06"})
    html = r.content.decode()
    assert r.status_code == 400
    assert re.search(r'data-field="beta">Invalid dpo config: beta: could not convert string to float', html)
    assert 'name="cfg-beta" value="high"' in html  # what was typed stays
    r = c.post("/console/c1/runs/", {"kind": "dpo", "cfg-beta": "-1"})
    assert 'data-field="beta">Invalid dpo config: beta must be &gt; 0' in r.content.decode()
    r = c.post("/console/c1/runs/", {"kind": "dpo", "cfg-max_prompt_length": "600"})
    assert 'data-field="max_prompt_length">' in r.content.decode()
    r = c.post("/console/c1/runs/", {"kind": "dpo", "cfg-betta": "0.1"})
    assert r.status_code == 400
    assert 'data-field="config">Invalid dpo config: unknown config key(s) for DPOConfig: betta' in r.content.decode()
    r = c.post("/console/c1/runs/", {"kind": "dpo", "base_version": "nope"})
    assert 'data-field="base_version">No model version' in r.content.decode()
    assert not TrainingRun.objects.exists() and sent == []


def test_start_run_queues_a_console_run_with_only_the_changed_values(campaign, base, admin_user, sent):
    c = client_for(admin_user)
    form = {"kind": "dpo", "base_version": "", "cfg-beta": "0.2", "cfg-lr": "1e-6", "cfg-max_steps": "3",
            "cfg-activation_checkpointing": "true", "cfg-adam_betas": "0.9, 0.999", "cfg-eval_every": ""}
    r = c.post("/console/c1/runs/", form)
    run = TrainingRun.objects.get()
    assert r.status_code == 302 and r["Location"] == f"/console/runs/{run.pk}/"
    assert (run.status, run.trigger, run.created_by, run.kind) == ("queued", "console", admin_user, "dpo")
    assert run.config == {"beta": 0.2, "max_steps": 3} and run.base_version == base
    # A second run of the kind is refused, naming the first.
    r = c.post("/console/c1/runs/", form)
    assert r.status_code == 409 and f'href="/console/runs/{run.pk}/"' in r.content.decode()
    other = services.model_version_register_base(spec="other/base")
    r = c.post("/console/c1/runs/", {"kind": "sft", "base_version": other.name, "cfg-lr": "2e-05"})
    sft = TrainingRun.objects.get(kind="sft")
    assert r.status_code == 302 and sft.config == {} and sft.base_version == other
    assert "queued" in c.get(r["Location"]).content.decode()


def test_run_page_series_cancel_and_compare(campaign, base, admin_user, sent):
    c = client_for(admin_user)
    done, version = finished_run(campaign, base, config={"beta": 0.2, "max_steps": 2})
    html = c.get(f"/console/runs/{done.pk}/").content.decode()
    # Finished, its evaluation decided: not polled (test_loop_upkeep: polled while one is awaited).
    services.evaluation_fail(evaluation_id=services.evaluation_create(campaign=campaign, candidate=version).pk, error="x")
    html = c.get(f"/console/runs/{done.pk}/").content.decode()
    assert 'data-status="succeeded"' in html and "hx-trigger" not in html
    assert version.name in html and "Cancel run" not in html and "&quot;sha256&quot;" in html
    assert "loss=0.61" in html and "rewards/accuracies=1" in html  # the log tail
    assert re.search(r'<tr class="set"><th>beta</th><td>0.2</td>', html) and "<th>loss_type</th><td>sigmoid</td>" in html
    series = c.get(f"/console/runs/{done.pk}/series.json").json()
    assert series["status"] == "succeeded" and series["active"] is False
    assert series["series"]["loss"] == [[1, 0.69], [2, 0.61]] and series["series"]["learning_rate"][0] == [1, 1e-6]

    live = services.training_run_create(campaign=campaign, kind="reward", config={"lr": 2e-5}, base_version=base)
    html = c.get(f"/console/runs/{live.pk}/").content.decode()
    assert f'hx-get="/console/runs/{live.pk}/status/" hx-trigger="every 2s"' in html and "Cancel run" in html
    r = c.post(f"/console/runs/{live.pk}/cancel/")
    assert r.status_code == 302 and TrainingRun.objects.get(pk=live.pk).status == "cancelled"
    assert f"Run {live.pk} cancelled." in c.get(r["Location"]).content.decode()
    r = c.post(f"/console/runs/{done.pk}/cancel/", follow=True)  # a finished run: refused, and said so
    assert "already succeeded" in r.content.decode() and TrainingRun.objects.get(pk=done.pk).status == "succeeded"

    html = c.get(f"/console/runs/compare/?a={done.pk}&b={live.pk}").content.decode()
    diff = html[html.index('id="config-diff"'):]
    assert re.search(r'class="differs" data-key="kind"><th>kind</th><td>dpo</td><td>reward</td>', diff)
    assert re.search(r'class="differs" data-key="lr"><th>lr</th><td>1e-06</td><td>2e-05</td>', diff)
    assert re.search(r'class="differs" data-key="beta"><th>beta</th><td>0.2</td><td>—</td>', diff)
    assert re.search(r'class="same" data-key="batch_size"><th>batch_size</th><td>4</td><td>4</td>', diff)
    assert f"/console/runs/{done.pk}/series.json" in html and f"/console/runs/{live.pk}/series.json" in html
    assert c.get(f"/console/runs/compare/?a={done.pk}&b=x").status_code == 404


def test_promote_and_roll_back_buttons(campaign, base, admin_user, sent):
    c = client_for(admin_user)
    _, v1 = finished_run(campaign, base)
    html = c.get("/console/c1/").content.decode()
    promote_form = html[html.index('id="promote-form"'):html.index("</form>", html.index('id="promote-form"'))]
    assert f'<option value="{v1.name}">' in promote_form and f'<option value="{base.name}">' not in promote_form
    r = c.post("/console/c1/promote/", {"version": v1.name, "reason": "wins 70%"}, follow=True)
    campaign.refresh_from_db()
    assert campaign.policy == v1 and f"&#x27;{v1.name}&#x27; is now the active policy." in r.content.decode()
    record = PolicyPromotion.objects.get()
    assert (record.action, record.by, record.reason, record.from_version) == ("promote", admin_user, "wins 70%", base)
    r = c.post("/console/c1/rollback/", {"reason": "regressed"}, follow=True)
    campaign.refresh_from_db()
    assert campaign.policy == base and f"Rolled back: the active policy is {base.name}." in r.content.decode()
    r = c.post("/console/c1/rollback/", follow=True)
    assert "has no promotion to roll back" in r.content.decode()
    r = c.post("/console/c1/promote/", {"version": "nope"}, follow=True)
    assert "No model version &#x27;nope&#x27;." in r.content.decode() and PolicyPromotion.objects.count() == 2


def test_config_form_helpers_keep_only_changed_values_and_name_the_key():
    values = {"beta": "0.1", "lr": "2e-6", "lora_targets": "q_proj, v_proj", "activation_checkpointing": "false", "max_steps": "",
              "betta": "1"}
    assert config_form.config_from_form(DPOConfig, values) == {
        "lr": 2e-6, "lora_targets": ["q_proj", "v_proj"], "activation_checkpointing": False, "betta": "1"}
    assert config_form.config_from_form(DPOConfig, {"beta": "high"}) == {"beta": "high"}  # the service says why
    assert config_form.config_error_field("Invalid dpo config: beta: could not convert", DPOConfig) == "beta"
    assert config_form.config_error_field("Invalid dpo config: unknown config key(s) for DPOConfig: betta", DPOConfig) is None


def test_rl_run_page_plots_scores_against_kl_and_marks_the_chosen_checkpoint(campaign, base, admin_user):
    from annotation.models import ModelVersion

    ModelVersion.objects.create(name="rm-x", kind="reward", base="some/rm", artifact_path="/tmp/rm")
    run = services.training_run_create(campaign=campaign, kind="ppo", config={"reward_model": "rm-x"}, base_version=base)
    services.training_run_start(run_id=run.pk, device="cpu", data_manifest={"prompts": 4})
    # Gao et al.'s shape: the proxy keeps rising with KL, the gold score peaks at step 20, then falls.
    for step, kl, proxy, gold in [(0, 0.0, 0.1, 0.1), (10, 1.0, 0.5, 0.4), (20, 2.5, 0.9, 0.6), (30, 5.0, 1.4, 0.2)]:
        services.training_run_log(run_id=run.pk, step=step, metrics={"monitor/kl": kl, "monitor/proxy_score": proxy,
                                                                     "monitor/gold_score": gold})
    services.training_run_log(run_id=run.pk, step=30, metrics={"objective/kl": 4.0, "objective/scores": 1.3, "loss/policy_avg": 0.1})
    page = client_for(admin_user).get(f"/console/runs/{run.pk}/").content.decode()
    assert 'id="frontier"' in page and 'data-group="scores"' in page and 'data-group="kl"' in page
    assert re.search(r'id="frontier-best" data-step="20"', page) and "chosen: step 20" in page
    assert page.count('class="gold"><title>') == 4 and page.count('class="proxy"><title>') == 4
    dpo, _ = finished_run(campaign, base)
    other = client_for(admin_user).get(f"/console/runs/{dpo.pk}/").content.decode()
    assert 'id="frontier"' not in other and 'data-group="kl"' not in other


def test_start_form_offers_the_rl_kinds_and_says_when_there_is_no_reward_model(campaign, base, admin_user):
    c = client_for(admin_user)
    form = c.get(f"/console/{campaign.slug}/run-form/?kind=grpo").content.decode()
    assert 'name="cfg-reward_model"' in form and 'name="cfg-k"' in form and 'name="cfg-model"' not in form
    r = c.post(f"/console/{campaign.slug}/runs/", {"kind": "rloo"})
    assert r.status_code == 400 and "has none yet: train one first" in r.content.decode()
    assert not TrainingRun.objects.filter(kind="rloo").exists()
