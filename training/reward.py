"""Bradley-Terry reward model: an LM backbone with a scalar head read at the last token of
the response (its EOS), trained on preference rows (Ouyang et al. 2022, §3.5).

Chosen and rejected sequences go through one packed forward (no padding). The model is a
``*ForSequenceClassification`` with ``num_labels=1``, so the saved directory loads with
``AutoModelForSequenceClassification`` (and TRL) as is. Metric names follow TRL:
loss, accuracy, margin, mean_reward.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from training import losses
from training.config import RewardConfig  # torch-free, beside every recipe's config: see there
from training.data import PreferenceExample, Report, manifest, prompt_tokens, response_tokens, tokenize_preferences
from training.formats import PreferenceRecord
from training.loop import Result, prepare_rows, train_loop
from training.models import load_model, load_tokenizer, model_path, resolve_device, resolve_dtype, unwrap
from training.packing import Packed, hidden_states, pack, pack_pairs, use_packed_attention
from training.seeds import seed_everything


def sequence_rewards(model, packed: Packed) -> torch.Tensor:
    """(S,) scalar reward per packed sequence, from the hidden state at its last token."""
    h = hidden_states(model, packed)  # (T, H)
    return unwrap(model).score(h[packed.seq_last]).squeeze(-1).float()


def pair_rewards(model, examples: list[PreferenceExample], device) -> tuple[torch.Tensor, torch.Tensor]:
    r = sequence_rewards(model, pack_pairs([(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples]).to(device))
    return r[: len(examples)], r[len(examples):]


def load_reward_model(spec: str, device: str = "auto", dtype: str | torch.dtype = "auto"):
    """(model, tokenizer) of a trained reward model directory, in eval mode, with the packed
    attention ``sequence_rewards`` reads through (the model is this caller's own)."""
    from transformers import AutoModelForSequenceClassification

    dev = resolve_device(device)
    model = AutoModelForSequenceClassification.from_pretrained(model_path(spec), num_labels=1, dtype=resolve_dtype(dtype, dev))
    model.to(dev).eval()
    use_packed_attention(model)
    return model, load_tokenizer(spec)


@torch.no_grad()
def score(model, tokenizer, items: list[tuple[list[dict], str]], *, batch_size: int = 16) -> list[float]:
    """The reward of each (prompt messages, response text), tokenised as in training (chat
    template, the response ending with one EOS) and read at its last token, ``batch_size``
    sequences per packed forward."""
    device = next(model.parameters()).device
    out: list[float] = []
    for a in range(0, len(items), batch_size):
        seqs = []
        for messages, text in items[a:a + batch_size]:
            p = prompt_tokens(tokenizer, messages)
            seqs.append((p, response_tokens(tokenizer, messages, p, text)))
        out.extend(sequence_rewards(model, pack(seqs).to(device)).tolist())
    return out


def pair_stats(r_w: torch.Tensor, r_l: torch.Tensor) -> dict:
    return {
        "accuracy": (r_w > r_l).float().mean().item(),
        "margin": (r_w - r_l).mean().item(),
        "mean_reward": torch.cat([r_w, r_l]).mean().item(),
    }


def train(
    cfg: RewardConfig,
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
    model, tokenizer, device = load_model(cfg, auto_class="AutoModelForSequenceClassification", num_labels=1)
    unwrap(model).config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora_r:  # the new head must train too
        unwrap(model).score.requires_grad_(True)
    records, train_ex, eval_ex, report = prepare_rows(cfg, records, eval_records, tokenizer, tokenize_preferences)

    # ---- train
    def batch_loss(rows: list[int]):
        r_w, r_l = pair_rewards(model, [train_ex[i] for i in rows], device)
        loss = losses.bradley_terry(r_w, r_l, center_coef=cfg.center_coef).mean()
        return loss, {"loss": loss.item(), **pair_stats(r_w.detach(), r_l.detach())}

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        ws, ls = [], []
        for a in range(0, len(eval_ex), cfg.batch_size):
            r_w, r_l = pair_rewards(model, eval_ex[a:a + cfg.batch_size], device)
            ws.append(r_w)
            ls.append(r_l)
        r_w, r_l = torch.cat(ws), torch.cat(ls)
        return {"loss": losses.bradley_terry(r_w, r_l).mean().item(), **pair_stats(r_w, r_l)}

    extra = {"algorithm": "reward", "data": manifest(records), "data_report": report.as_dict()}
    result = train_loop(cfg=cfg, model=model, tokenizer=tokenizer, n_rows=len(train_ex), batch_loss=batch_loss,
                        row_tokens=lambda i: len(train_ex[i].prompt_ids) + len(train_ex[i].chosen_ids) + len(train_ex[i].rejected_ids),
                        evaluate=evaluate if eval_ex else None, out_dir=Path(out_dir), extra=extra,
                        on_metrics=on_metrics, on_progress=on_progress,
                        should_cancel=should_cancel, progress=progress)
    return result, report
