"""The rollout of online RL (PPO, RLOO, GRPO): the models (policy, frozen reference, frozen
reward model, an optional gold reward model), per-token forward passes on packed episodes
(each prompt laid out once for its k samples), the reward model's scores, and ``collect``: the
sampled responses with the old policy's per-token log-probs and entropies (from the decoding
loop itself, or a no-grad forward when a value head needs one), the reference's log-probs and
the scores. Per-token tensors are (B, T), the k samples of a prompt consecutive.

The reference is the starting policy: with LoRA the same model with its adapters disabled (no
second copy), else a frozen copy, loaded only when something reads it. ``training.rl`` runs the
loop around it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch
from torch.nn.utils.rnn import pad_sequence

from training.config import RLConfig
from training.data import prompt_tokens
from training.logprobs import token_logps
from training.models import load_model, return_freed_memory_to_the_os, unwrap
from training.packing import Packed, hidden_states, pack_shared

# ---------------------------------------------------------------- models


@dataclass
class Models:
    policy: object
    tokenizer: object
    device: torch.device
    reward: object
    reward_tokenizer: object
    reference: object | None = None  # a frozen copy (full fine-tuning); None with LoRA (adapters disabled) or unused
    gold: object | None = None
    gold_tokenizer: object | None = None
    value_head: torch.nn.Linear | None = None
    has_reference: bool = False
    reward_same_vocab: bool = True  # the reward model reads the policy's token ids as they are
    gold_same_vocab: bool = True

    @contextlib.contextmanager
    def reference_mode(self):
        """The reference model to run inside the block: the frozen copy, or the policy itself
        with its LoRA adapters disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy


def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def prompts_truncated(tokenizer, prompts: list[list[dict]], max_prompt_length: int) -> int:
    """How many prompts are longer than ``max_prompt_length`` tokens (their start is cut)."""
    return sum(1 for p in prompts if len(prompt_tokens(tokenizer, p)) > max_prompt_length)


def load_models(cfg: RLConfig, *, value_head: bool = False, needs_reference: bool) -> Models:
    from training.reward import load_reward_model

    if not cfg.reward_model:
        raise ValueError("reward_model is required: the reward model the policy is optimised against (train one with kind=reward)")
    policy, tokenizer, device = load_model(cfg)
    disable_dropout(policy)  # old and new log-probs from the same function: the first ratio is exactly 1
    reward, reward_tok = load_reward_model(cfg.reward_model, device=str(device))
    reward.requires_grad_(False)
    models = Models(policy=policy, tokenizer=tokenizer, device=device, reward=reward, reward_tokenizer=reward_tok,
                    reward_same_vocab=same_vocab(reward_tok, tokenizer))
    if cfg.gold_model:
        models.gold, models.gold_tokenizer = load_reward_model(cfg.gold_model, device=str(device))
        models.gold_same_vocab = same_vocab(models.gold_tokenizer, tokenizer)
        models.gold.requires_grad_(False)
    if needs_reference:
        models.has_reference = True
        if not cfg.lora_r:
            ref, _, _ = load_model(replace(cfg, lora_r=0, activation_checkpointing=False))
            models.reference = ref.eval().requires_grad_(False)
    if value_head:
        hidden = unwrap(policy).config.hidden_size
        models.value_head = torch.nn.Linear(hidden, 1).to(device)
        torch.nn.init.zeros_(models.value_head.weight)
        torch.nn.init.zeros_(models.value_head.bias)
    return_freed_memory_to_the_os()
    return models


# ---------------------------------------------------------------- per-token forward passes


def to_padded(flat: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(N,) values laid out sequence after sequence -> (B, T), 0 past each sequence's end."""
    return pad_sequence(list(torch.split(flat, counts)), batch_first=True)


def response_mask(counts: list[int], device=None) -> torch.Tensor:
    T = max(counts) if counts else 0
    return (torch.arange(T, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]).float()


@torch.no_grad()
def token_stats(model, packed: Packed, *, chunk: int, entropy: bool = False, value_head=None, temperature: float = 1.0):
    """No grad: each response token's log-prob (N,) under the sampling distribution (logits /
    ``temperature``, as TRL takes them), the entropy at its position (N,, or None) and the
    value head's estimate there (N,, or None), from one forward."""
    h = hidden_states(model, packed)[packed.target_pos]
    head = unwrap(model).get_output_embeddings()
    lps, ents = [], []
    for a in range(0, h.shape[0], chunk):
        logits = head(h[a:a + chunk]).float() / temperature
        lse = torch.logsumexp(logits, dim=-1)
        lps.append(logits.gather(-1, packed.target_ids[a:a + chunk, None]).squeeze(-1) - lse)
        if entropy:
            p = torch.softmax(logits, dim=-1)
            ents.append(lse - (p * logits).sum(-1))
    lp = torch.cat(lps) if lps else h.new_zeros(0)
    values = value_head(h.float()).squeeze(-1) if value_head is not None else None
    return lp, (torch.cat(ents) if entropy and ents else None), values


def train_stats(model, packed: Packed, *, chunk: int, value_head=None, temperature: float = 1.0):
    """With grad: each response token's log-prob (N,) at ``temperature`` (chunked LM head; the
    head has no bias, so h / T gives logits / T) and value (N,) or None."""
    h = hidden_states(model, packed)[packed.target_pos]
    head = unwrap(model).get_output_embeddings()
    if head.bias is not None and temperature != 1.0:
        raise ValueError("temperature != 1 needs an LM head without bias")
    lp = token_logps(head, h / temperature if temperature != 1.0 else h, packed.target_ids, chunk)
    values = value_head(h.float()).squeeze(-1) if value_head is not None else None
    return lp, values


def same_vocab(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


@torch.no_grad()
def reward_scores(model, model_tokenizer, policy_tokenizer, prompts: list[list[dict]], prompt_ids: list[list[int]],
                  responses: list[list[int]], batch_size: int = 16, same: bool | None = None) -> torch.Tensor:
    """The reward model's score of each (prompt, response), read at the response's last token:
    the sampled token ids as they are when the reward model shares the policy's vocabulary
    (``same``; None: compare the two vocabularies now), else the decoded text re-tokenised its way."""
    from training.reward import score, sequence_rewards

    same = same_vocab(model_tokenizer, policy_tokenizer) if same is None else same
    device = next(model.parameters()).device
    if same:
        out = []
        for a in range(0, len(responses), batch_size):
            seqs = list(zip(prompt_ids[a:a + batch_size], responses[a:a + batch_size]))
            out.append(sequence_rewards(model, pack_shared(seqs).to(device)).float().cpu())
        return torch.cat(out)
    eos = policy_tokenizer.eos_token_id
    texts = [policy_tokenizer.decode([t for t in r if t != eos], skip_special_tokens=True).strip() for r in responses]
    return torch.tensor(score(model, model_tokenizer, list(zip(prompts, texts)), batch_size=batch_size))


# ---------------------------------------------------------------- rollout


@dataclass
class Rollout:
    prompts: list[list[dict]]  # per episode
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # the EOS included when produced
    counts: list[int]  # response tokens per episode
    mask: torch.Tensor  # (B, T)
    logp: torch.Tensor  # (B, T) old policy (the sampling policy, temperature 1)
    ref_logp: torch.Tensor | None  # (B, T)
    entropy: torch.Tensor  # (B, T)
    values: torch.Tensor | None  # (B, T) value head (PPO)
    scores: torch.Tensor  # (B,) reward model, minus the missing-EOS penalty
    eos: torch.Tensor  # (B,) bool
    extra: dict = field(default_factory=dict)  # what the recipe's prepare() adds (advantages, returns, ...)

    @property
    def n(self) -> int:
        return len(self.response_ids)

    def packed(self, rows: list[int], device) -> Packed:
        """The episodes ``rows`` packed, each prompt laid out once for its samples."""
        return pack_shared([(self.prompt_ids[i], self.response_ids[i]) for i in rows]).to(device)


def sample(models: Models, cfg: RLConfig, prompts: list[list[dict]], *, seed: int, k: int, stats: bool = False):
    """k responses per prompt (token ids, EOS included when produced), the k of a prompt
    consecutive; with ``stats``, (ids, per-token log-probs, per-token entropies) under the
    sampling distribution, from the decoding loop itself (no forward pass after it)."""
    from training.sampling import SamplingParams, generate

    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            batch_size=min(32, max(1, len(prompts) * k)))
    was_training = models.policy.training
    models.policy.eval()
    out = generate(models.policy, models.tokenizer, prompts, k=k, params=params, seed=seed, step_stats=stats)
    models.policy.train(was_training)
    flat = [s for per_prompt in out for s in per_prompt]
    if stats:
        return [s.token_ids for s in flat], [list(s.step_logps) for s in flat], [list(s.step_entropies) for s in flat]
    return [s.token_ids for s in flat]


def collect(models: Models, cfg: RLConfig, prompts: list[list[dict]], response_ids: list[list[int]], *, k: int,
            sampled: tuple[list[list[float]], list[list[float]]] | None = None) -> Rollout:
    """The rollout of ``response_ids`` (k per prompt, consecutive): old and reference per-token
    log-probs, entropy, values, scores. Separate from sampling so a given rollout can be replayed
    (tests, parity with TRL). ``sampled``: the sampler's own (log-probs, entropies) per token;
    without a value head they stand for the old policy's, and its forward pass is skipped."""
    episodes = [p for p in prompts for _ in range(k)]
    prompt_ids = [prompt_tokens(models.tokenizer, p)[-cfg.max_prompt_length:] for p in prompts]  # a long prompt keeps its end
    p_ids = [ids for ids in prompt_ids for _ in range(k)]
    counts = [len(r) for r in response_ids]
    if min(counts) < 1:
        raise ValueError("every response needs at least one token")
    device = models.device
    packed = pack_shared(list(zip(p_ids, response_ids))).to(device)
    was_training = models.policy.training
    models.policy.eval()
    if sampled is not None and models.value_head is None:
        lp, ent, values = torch.tensor([x for row in sampled[0] for x in row]), torch.tensor([x for row in sampled[1] for x in row]), None
    else:
        lp, ent, values = token_stats(models.policy, packed, chunk=cfg.logit_chunk, entropy=True, value_head=models.value_head,
                                      temperature=cfg.temperature)
    ref = None
    if models.has_reference:
        with models.reference_mode() as ref_model:
            ref, _, _ = token_stats(ref_model, packed, chunk=cfg.logit_chunk, temperature=cfg.temperature)
    models.policy.train(was_training)
    eos_id = models.tokenizer.eos_token_id
    eos = torch.tensor([bool(r) and r[-1] == eos_id for r in response_ids])
    scores = reward_scores(models.reward, models.reward_tokenizer, models.tokenizer, episodes, p_ids, response_ids,
                           same=models.reward_same_vocab)
    if cfg.missing_eos_penalty:
        scores = scores - cfg.missing_eos_penalty * (~eos).float()
    pad = lambda x: None if x is None else to_padded(x.float().cpu(), counts)  # noqa: E731
    return Rollout(prompts=episodes, prompt_ids=p_ids, response_ids=response_ids, counts=counts,
                   mask=response_mask(counts), logp=pad(lp), ref_logp=pad(ref), entropy=pad(ent), values=pad(values),
                   scores=scores.float(), eos=eos)


def rollout_metrics(r: Rollout, beta: float) -> dict:
    """TRL's rollout metrics: objective/kl (mean per-sequence KL to the reference, k1),
    objective/entropy (mean per-sequence entropy), objective/scores, objective/non_score_reward
    and objective/rlhf_reward (= scores − β·KL), response length, EOS share."""
    m = {"objective/scores": r.scores.mean().item(), "objective/entropy": (r.entropy * r.mask).sum(1).mean().item(),
         "val/num_eos_tokens": float(r.eos.sum()), "response_length": float(sum(r.counts)) / r.n}
    if r.ref_logp is not None:
        kl = ((r.logp - r.ref_logp) * r.mask).sum(1)
        m.update({"objective/kl": kl.mean().item(), "objective/non_score_reward": (-beta * kl).mean().item(),
                  "objective/rlhf_reward": (r.scores - beta * kl).mean().item()})
    return m
