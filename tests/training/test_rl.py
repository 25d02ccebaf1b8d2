"""PPO, RLOO and GRPO: the pieces against hand-worked numbers (GAE, the per-token KL reward,
clipping, leave-one-out and group-normalised advantages, the adaptive KL controller), then a
few steps of each on tiny random models (finite losses, parameters move), resume equal to an
uninterrupted run, and the overoptimisation monitor choosing the best-gold checkpoint."""

import json
import math

import pytest
import torch

from training import losses
from training.config import GRPOConfig, PPOConfig, RLOOConfig, config_from

PROMPTS = [[{"role": "user", "content": t}] for t in ("Name a colour.", "What is 3+4?", "Say hi.", "Name a fruit.")]
EVAL = [[{"role": "user", "content": t}] for t in ("Name a planet.", "Say bye.")]


def close(t: torch.Tensor, expected) -> None:
    torch.testing.assert_close(t.float(), torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)


def test_gae_against_a_hand_worked_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 1.0, 9.0]])  # 9: past the second response's end, ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = losses.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: δ2 = 1 − 0.3 = 0.7; δ1 = 0.3 − 0.4 = −0.1, A1 = −0.1 + 0.95·0.7 = 0.565; A0 = −0.1 + 0.95·0.565 = 0.43675
    # row 1: δ1 = 2 + 0 − 1 = 1; δ0 = 0 + 1 − 1 = 0, A0 = 0.95
    close(adv, [[0.43675, 0.565, 0.7], [0.95, 1.0, 0.0]])
    close(ret, [[0.93675, 0.965, 1.0], [1.95, 2.0, 0.0]])
    adv9, _ = losses.gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=1.0)  # γ < 1: δ1 = 0.9·0.3 − 0.4 = −0.13
    assert adv9[0, 1].item() == pytest.approx(-0.13 + 0.9 * 0.7)


def test_per_token_kl_reward_has_the_right_shape_and_sign():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.4], [-0.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([3.0, -1.0])
    rewards, kl = losses.ppo_token_rewards(scores, logp, ref, mask, beta=0.1)
    # policy above the reference (log-ratio 0.5) is penalised, below (−0.1) rewarded; the score sits on the last token
    close(rewards, [[-0.05, 0.0, 0.01 + 3.0], [0.05, -1.0, 0.0]])
    close(kl, [[0.5, 0.0, -0.1], [-0.5, 0.0, 0.0]])
    assert losses.kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]), "k3").item() == 0.0
    assert losses.kl_penalty(torch.tensor([-1.0]), torch.tensor([0.0]), "k3").item() == pytest.approx(math.e - 2)


def test_clipping_engages_only_outside_the_trust_region():
    logp = torch.log(torch.tensor([1.5, 1.1, 0.5, 0.5]))
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    loss, ratio, clipped = losses.clipped_policy_loss(logp, torch.zeros(4), adv, clip_eps=0.2)
    assert ratio.tolist() == pytest.approx([1.5, 1.1, 0.5, 0.5])
    # A > 0, ρ = 1.5: capped at 1.2; ρ = 1.1 inside; A > 0, ρ = 0.5: the pessimistic unclipped term; A < 0, ρ = 0.5: floor 0.8
    assert loss.tolist() == pytest.approx([-1.2, -1.1, -0.5, 0.8])
    assert clipped.tolist() == [True, False, False, True]
    v, vclip = losses.clipped_value_loss(torch.tensor([2.0, 1.05]), torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0]), clip=0.2)
    assert v.tolist() == pytest.approx([0.5 * (1.2 - 3.0) ** 2, 0.5 * (1.05 - 3.0) ** 2]) and vclip.tolist() == [True, False]


def test_leave_one_out_and_group_normalised_advantages():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    assert losses.rloo_advantages(r, 4).tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0, -4 / 3, -4 / 3, -4 / 3, 4.0])
    std = math.sqrt((4 + 1 + 0 + 9) / 3)  # unbiased, around the mean 3
    assert losses.group_advantages(r, 4)[:4].tolist() == pytest.approx([-2 / (std + 1e-4), -1 / (std + 1e-4), 0.0, 3 / (std + 1e-4)])
    assert losses.group_advantages(torch.ones(4), 4).tolist() == [0.0] * 4  # no spread: no signal


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    ctl = losses.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    ctl = losses.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(5.4, 50) == pytest.approx(0.1 * (1 - 0.1 * 0.5))


def test_configs_validate():
    with pytest.raises(ValueError, match="k must be >= 2"):
        RLOOConfig(k=1)
    with pytest.raises(ValueError, match="divisible"):
        PPOConfig(k=1, prompts_per_rollout=3, num_minibatches=2)
    with pytest.raises(ValueError, match="advantage"):
        config_from(RLOOConfig, None, ["advantage=ppo"])
    assert GRPOConfig().advantage == "grpo" and GRPOConfig().beta == 0.0


def small(cls, tiny_policy, tiny_reward, **kw):
    base = dict(model=tiny_policy, reward_model=tiny_reward, prompts_per_rollout=2, max_new_tokens=6, max_steps=2,
                log_every=1, lr=1e-3, seed=5)
    return cls(**{**base, **kw})


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cls, extra", [
    (PPOConfig, {"ppo_epochs": 2, "num_minibatches": 2, "target_kl": 1.0}),
    (RLOOConfig, {"k": 2, "beta": 0.05}),
    (GRPOConfig, {"k": 3, "beta": 0.04, "loss_type": "grpo"}),
])
def test_a_few_steps_train_with_finite_losses(cls, extra, tiny_policy, tiny_reward, tmp_path):
    from safetensors.torch import load_file

    from training import ppo, rloo

    cfg = small(cls, tiny_policy, tiny_reward, **extra)
    seen = []
    result, report = (ppo if cls is PPOConfig else rloo).train(cfg, PROMPTS, tmp_path / "out", on_metrics=lambda s, m: seen.append(m))
    assert (report.rows, report.kept) == (4, 4)
    assert result.status == "completed" and result.step == 2
    rows = [m for m in seen if "loss" in m]
    assert len(rows) == 2 and all(math.isfinite(m["loss"]) for m in rows)
    for key in ("objective/scores", "objective/entropy", "response_length", "policy/clipfrac_avg", "policy/approxkl_avg"):
        assert all(math.isfinite(m[key]) for m in rows), key
    if cfg.beta:
        assert all("objective/kl" in m and "objective/rlhf_reward" in m for m in rows)
    if cls is PPOConfig:
        assert all(math.isfinite(m["loss/value_avg"]) and math.isfinite(m["val/clipfrac_avg"]) for m in rows)
        assert rows[1]["objective/beta"] != rows[0]["objective/beta"]  # the adaptive controller moved it
    assert rows[0]["episodes"] == 2 * cfg.k
    before = load_file(f"{tiny_policy}/model.safetensors")
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    saved = json.loads((tmp_path / "out" / "prefloop_config.json").read_text())
    assert saved["algorithm"] == {PPOConfig: "ppo", RLOOConfig: "rloo", GRPOConfig: "grpo"}[cls]


@pytest.mark.parametrize("cls", [PPOConfig, RLOOConfig])
def test_resume_equals_an_uninterrupted_run(cls, tiny_policy, tiny_reward, tmp_path):
    from safetensors.torch import load_file

    from training import ppo, rloo

    train = (ppo if cls is PPOConfig else rloo).train
    cfg = small(cls, tiny_policy, tiny_reward, max_steps=3, beta=0.05, **({"k": 2} if cls is RLOOConfig else {"target_kl": 1.0}))
    train(cfg, PROMPTS, tmp_path / "whole")
    calls = iter([False, False, True])  # cancel before the third rollout: a checkpoint at step 2
    first, _ = train(cfg, PROMPTS, tmp_path / "split", should_cancel=lambda: next(calls, False))
    assert first.status == "cancelled" and first.step == 2
    second, _ = train(cfg, PROMPTS, tmp_path / "split")
    assert second.status == "completed" and second.step == 3
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    split = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["objective/scores"] for m in whole] == pytest.approx([m["objective/scores"] for m in split])


def test_the_monitor_picks_the_best_gold_checkpoint(tiny_policy, tiny_reward, tiny_gold, tmp_path):
    from safetensors.torch import load_file

    from training import rloo
    from training.rl import best_gold

    cfg = small(RLOOConfig, tiny_policy, tiny_reward, k=2, max_steps=4, monitor_every=1, gold_model=tiny_gold, lr=3e-3)
    result, _ = rloo.train(cfg, PROMPTS, tmp_path / "out", eval_records=EVAL)
    monitor = [m for m in result.metrics if "monitor/gold_score" in m]
    assert [m["step"] for m in monitor] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(m["monitor/proxy_score"]) and math.isfinite(m["monitor/kl"]) for m in monitor)
    assert monitor[0]["monitor/kl"] == pytest.approx(0.0, abs=1e-5)  # step 0: the policy is the reference
    best = max(monitor, key=lambda m: m["monitor/gold_score"])
    assert best_gold(result.metrics)["step"] == best["step"]
    saved = json.loads((tmp_path / "out" / "prefloop_config.json").read_text())
    assert saved["chosen_step"] == best["step"] and saved["best_gold"]["monitor/gold_score"] == best["monitor/gold_score"]
    final = load_file(str(tmp_path / "out" / "model.safetensors"))
    chosen = load_file(str(tmp_path / "out" / f"monitor-{best['step']:07d}" / "model.safetensors"))
    assert all(torch.equal(final[k], chosen[k]) for k in final)  # the output IS the best-gold policy
    if best["step"] != 4:
        last = load_file(str(tmp_path / "out" / "last" / "model.safetensors"))
        assert any(not torch.equal(final[k], last[k]) for k in final)


def test_best_gold_prefers_the_highest_then_the_earliest():
    rows = [{"step": 0, "monitor/gold_score": 0.1}, {"step": 5, "loss": 1.0}, {"step": 10, "monitor/gold_score": 0.4},
            {"step": 20, "monitor/gold_score": 0.4}, {"step": 30, "monitor/gold_score": -1.0}]
    from training.rl import best_gold

    assert best_gold(rows)["step"] == 10 and best_gold([{"step": 1, "loss": 0.0}]) is None


def test_ppo_with_lora_uses_the_adapters_disabled_as_reference(tiny_policy, tiny_reward, tmp_path):
    from training import ppo

    cfg = small(PPOConfig, tiny_policy, tiny_reward, lora_r=4, lora_targets=("q_proj", "v_proj"), max_steps=1, beta=0.1)
    result, _ = ppo.train(cfg, PROMPTS, tmp_path / "out")
    row = next(m for m in result.metrics if "loss" in m)
    # The first rollout is sampled before any update: policy = reference, so the KL is exactly 0.
    assert row["objective/kl"] == pytest.approx(0.0, abs=1e-6) and math.isfinite(row["loss"])
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_cli_trains_grpo_from_a_prompt_file_without_django(tiny_policy, tiny_reward, tiny_gold, tmp_path):
    import subprocess
    import sys

    from tests.processes import ROOT, base_env

    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"messages": p}) for p in PROMPTS) + "\n{not json}\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text("\n".join(json.dumps({"prompt": p[0]["content"]}) for p in EVAL) + "\n")
    env = base_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = subprocess.run(
        [sys.executable, "-c", "import sys, training.__main__ as m; m.main(sys.argv[1:]); "
         "assert not any(n.startswith('django') for n in sys.modules), 'django imported'",
         "grpo", "--data", str(data), "--eval-data", str(evals), "--model", tiny_policy, "--out", str(tmp_path / "out"),
         f"reward_model={tiny_reward}", f"gold_model={tiny_gold}", "k=2", "prompts_per_rollout=2", "max_steps=2",
         "max_new_tokens=4", "log_every=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "line 5" in out.stderr and "(skipped)" in out.stderr  # the bad line is reported, the rest trains
    assert "grpo: completed after 2 step(s)" in out.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert "monitor/gold_score" in (tmp_path / "out" / "metrics.jsonl").read_text()
    missing = subprocess.run([sys.executable, "-m", "training", "ppo", "--data", str(data), "--model", tiny_policy,
                              "--out", str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "reward_model is required" in missing.stderr


def test_rloo_and_grpo_losses_against_hand_worked_numbers():
    from training.rloo import policy_loss

    new = torch.log(torch.tensor([[1.5, 0.5]]))
    old, ref, mask, adv = torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([1.0])
    # GRPO, dapo, β = 0.1: token 1 ρ = 1.5 → −1.2 + 0.1·1.5·k3, k3 = 1/1.5 + ln 1.5 − 1; token 2 ρ = 0.5 → −0.5 + 0.1·0.5·(2 − ln 2 − 1)
    k3_a, k3_b = 1 / 1.5 + math.log(1.5) - 1, 2 - math.log(2) - 1
    want = ((-1.2 + 0.1 * 1.5 * k3_a) + (-0.5 + 0.1 * 0.5 * k3_b)) / 2
    loss, stats = policy_loss(new, old, ref, mask, adv, GRPOConfig(beta=0.1))
    assert loss.item() == pytest.approx(want, abs=1e-6) and stats["policy/clipfrac_avg"] == 0.5
    loss, _ = policy_loss(new, old, ref, mask, adv, GRPOConfig(beta=0.1, kl_ratio_correction=False))
    assert loss.item() == pytest.approx(((-1.2 + 0.1 * k3_a) + (-0.5 + 0.1 * k3_b)) / 2, abs=1e-6)
    # RLOO: one sequence-level ratio exp(ln 1.5 + ln 0.5) = 0.75 inside [0.8, 1.2]? no: below, and A > 0 keeps the unclipped −0.75
    loss, stats = policy_loss(new, old, None, mask, adv, RLOOConfig(k=2))
    assert loss.item() == pytest.approx(-0.75, abs=1e-6) and stats["policy/clipfrac_avg"] == 0.0


def test_rollout_log_probs_are_the_sampling_distributions_and_the_first_ratio_is_one(tiny_policy, tiny_reward):
    """At temperature 0.7 the old log-probs are log softmax(logits / 0.7) (as TRL takes them),
    equal to what the loss recomputes before any update: the first ratio is exactly 1."""
    from training.data import prompt_tokens
    from training.rollout import collect, load_models, sample, to_padded, train_stats

    cfg = small(RLOOConfig, tiny_policy, tiny_reward, k=2, temperature=0.7, lora_dropout=0.0)
    models = load_models(cfg, needs_reference=True)
    responses = sample(models, cfg, PROMPTS[:2], seed=3, k=2)
    r = collect(models, cfg, PROMPTS[:2], responses, k=2)
    models.policy.train()
    lp, _ = train_stats(models.policy, r.packed(list(range(r.n)), models.device), chunk=64, temperature=0.7)
    assert torch.allclose(to_padded(lp.detach(), r.counts) * r.mask, r.logp * r.mask, atol=1e-5)
    ids = prompt_tokens(models.tokenizer, PROMPTS[0]) + responses[0]
    with torch.no_grad():
        logits = models.policy(input_ids=torch.tensor([ids])).logits[0].float()
    start = len(ids) - len(responses[0]) - 1
    want = torch.log_softmax(logits[start:start + len(responses[0])] / 0.7, -1).gather(-1, torch.tensor(responses[0])[:, None])
    assert torch.allclose(r.logp[0, :len(responses[0])], want.squeeze(-1), atol=1e-4)
    assert torch.allclose(r.ref_logp * r.mask, r.logp * r.mask, atol=1e-5)  # before any update: the reference itself


def test_shared_prompt_packing_equals_packing_each_sequence(tiny_policy, tiny_reward):
    """k samples of a prompt laid out after one copy of it: the same per-token log-probs and
    the same reward-model scores as each sequence packed whole."""
    from training.logprobs import response_logps
    from training.models import load_policy
    from training.packing import pack, pack_shared, use_packed_attention
    from training.reward import load_reward_model, sequence_rewards

    model, _ = load_policy(tiny_policy)
    use_packed_attention(model)
    rm, _ = load_reward_model(tiny_reward)
    seqs = [([1, 5, 9], [11, 12, 2]), ([1, 5, 9], [13]), ([1, 5, 9], [14, 15, 16, 2]), ([1, 7], [17, 2]), ([1, 7], [18, 19])]
    whole, shared = pack(seqs), pack_shared(seqs)
    assert shared.n_tokens == 3 + 3 + 1 + 4 + 2 + 2 + 2 < whole.n_tokens
    with torch.no_grad():
        a, b = response_logps(model, whole), response_logps(model, shared)
        torch.testing.assert_close(b.tokens, a.tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.sums, a.sums, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sequence_rewards(rm, shared), sequence_rewards(rm, whole), atol=1e-5, rtol=1e-5)


def test_the_samplers_own_log_probs_and_entropies_equal_a_forward_pass(tiny_policy, tiny_reward):
    from training.rollout import collect, load_models, sample

    cfg = small(RLOOConfig, tiny_policy, tiny_reward, k=2, temperature=0.8)
    models = load_models(cfg, needs_reference=False)
    responses, logps, ents = sample(models, cfg, PROMPTS[:2], seed=9, k=2, stats=True)
    from_sampler = collect(models, cfg, PROMPTS[:2], responses, k=2, sampled=(logps, ents))
    from_forward = collect(models, cfg, PROMPTS[:2], responses, k=2)
    assert torch.allclose(from_sampler.logp, from_forward.logp, atol=1e-4)
    assert torch.allclose(from_sampler.entropy, from_forward.entropy, atol=1e-3)
