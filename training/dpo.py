"""The DPO family (DPO / cDPO, robust DPO, IPO, hinge, SimPO) from preference rows.

Lean by design (see issue 4 and ``benchmarks/dpo_vs_trl.py``):
- the reference model's log-probs are computed once, before training, by the policy itself
  (it IS the reference at step 0), so no second model sits in memory (``reference="live"``
  keeps a frozen copy instead: for checking, or when the reference is another model);
- chosen and rejected go through one forward, packed end to end without padding, attention
  kept within each sequence;
- the LM head runs only at response positions, in checkpointed chunks;
- metrics are the log-prob sums already computed (no full-vocabulary side metrics).

Metric names follow TRL: loss, rewards/chosen, rewards/rejected, rewards/accuracies,
rewards/margins, logps/chosen, logps/rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from training import losses
from training.config import DPOConfig  # torch-free, beside every recipe's config: see there
from training.data import PreferenceExample, Report, manifest, tokenize_preferences
from training.formats import PreferenceRecord
from training.logprobs import response_logps
from training.loop import Result, prepare_rows, train_loop
from training.models import load_model
from training.packing import pack_pairs
from training.seeds import seed_everything


def _pairs_packed(examples: list[PreferenceExample], device):
    """Every pair in one packed row, its prompt laid out once for both responses."""
    return pack_pairs([(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples]).to(device)


def policy_logps(model, examples: list[PreferenceExample], *, device, chunk: int, average: bool):
    """(chosen, rejected) log-probs (B,) each: sums, or per-token means when ``average``."""
    lp = response_logps(model, _pairs_packed(examples, device), chunk=chunk)
    values = lp.means if average else lp.sums
    n = len(examples)
    return values[:n], values[n:]


@torch.no_grad()
def reference_logps(model, examples: list[PreferenceExample], cfg: DPOConfig, device, progress: bool = False) -> torch.Tensor:
    """(N, 2) reference log-probs of (chosen, rejected) per example, in batches."""
    was_training = model.training
    model.eval()
    out = []
    batches = range(0, len(examples), cfg.batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="reference log-probs", unit="batch")
    for a in batches:
        w, l = policy_logps(model, examples[a:a + cfg.batch_size], device=device, chunk=cfg.logit_chunk, average=cfg.loss_type == "ipo")
        out.append(torch.stack([w, l], dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def pair_loss(cfg: DPOConfig, logp_w, logp_l, ref_w, ref_l) -> tuple[torch.Tensor, dict]:
    """Mean loss and TRL-named metrics of a batch."""
    if cfg.loss_type == "simpo":
        per = losses.simpo(logp_w, logp_l, beta=cfg.beta, gamma=cfg.simpo_gamma, label_smoothing=cfg.label_smoothing)
        r_w, r_l = cfg.beta * logp_w.detach(), cfg.beta * logp_l.detach()
    else:
        per = losses.dpo(logp_w, logp_l, ref_w, ref_l, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)
        r_w = losses.dpo_rewards(logp_w.detach(), ref_w, cfg.beta)
        r_l = losses.dpo_rewards(logp_l.detach(), ref_l, cfg.beta)
    loss = per.mean()
    stats = {
        "loss": loss.item(),
        "rewards/chosen": r_w.mean().item(),
        "rewards/rejected": r_l.mean().item(),
        "rewards/accuracies": (r_w > r_l).float().mean().item(),
        "rewards/margins": (r_w - r_l).mean().item(),
        "logps/chosen": logp_w.detach().mean().item(),
        "logps/rejected": logp_l.detach().mean().item(),
    }
    return loss, stats


def train(
    cfg: DPOConfig,
    records: list[PreferenceRecord],
    out_dir: str | Path,
    *,
    eval_records: list[PreferenceRecord] | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[Result, Report]:
    # ---- setup
    seed_everything(cfg.seed)
    model, tokenizer, device = load_model(cfg)
    records, train_ex, eval_ex, report = prepare_rows(cfg, records, eval_records, tokenizer, tokenize_preferences)
    average = cfg.loss_type in ("ipo", "simpo")  # length-normalised log-probs, as TRL computes them
    live_ref = None
    ref = ref_eval = None
    if cfg.loss_type != "simpo":
        if cfg.reference == "live":
            live_ref, _, _ = load_model(cfg)
            live_ref.eval().requires_grad_(False)
        else:
            ref = reference_logps(model, train_ex, cfg, device, progress=progress)
            ref_eval = reference_logps(model, eval_ex, cfg, device)

    def refs(examples, idx, table):
        if cfg.loss_type == "simpo":
            return None, None
        if live_ref is not None:
            with torch.no_grad():
                return policy_logps(live_ref, examples, device=device, chunk=cfg.logit_chunk, average=average)
        return table[idx, 0].to(device), table[idx, 1].to(device)

    # ---- train
    def batch_loss(rows: list[int]):
        examples = [train_ex[i] for i in rows]
        logp_w, logp_l = policy_logps(model, examples, device=device, chunk=cfg.logit_chunk, average=average)
        ref_w, ref_l = refs(examples, torch.tensor(rows), ref)
        return pair_loss(cfg, logp_w, logp_l, ref_w, ref_l)

    @torch.no_grad()
    def evaluate() -> dict:
        if not eval_ex:
            return {}
        model.eval()
        totals: dict[str, float] = {}
        for a in range(0, len(eval_ex), cfg.batch_size):
            examples = eval_ex[a:a + cfg.batch_size]
            logp_w, logp_l = policy_logps(model, examples, device=device, chunk=cfg.logit_chunk, average=average)
            ref_w, ref_l = refs(examples, torch.arange(a, a + len(examples)), ref_eval)
            _, stats = pair_loss(cfg, logp_w, logp_l, ref_w, ref_l)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v * len(examples)
        return {k: v / len(eval_ex) for k, v in totals.items()}

    extra = {"algorithm": "dpo", "data": manifest(records), "data_report": report.as_dict()}
    result = train_loop(cfg=cfg, model=model, tokenizer=tokenizer, n_rows=len(train_ex), batch_loss=batch_loss,
                        row_tokens=lambda i: len(train_ex[i].prompt_ids) + len(train_ex[i].chosen_ids) + len(train_ex[i].rejected_ids),
                        evaluate=evaluate if eval_ex else None, out_dir=Path(out_dir), extra=extra,
                        on_metrics=on_metrics, on_progress=on_progress,
                        should_cancel=should_cancel, progress=progress)
    return result, report
