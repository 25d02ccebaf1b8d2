"""Supervised fine-tuning: mean NLL of response tokens given the prompt (prompt tokens carry
no loss), sequences packed without padding, the LM head only at response positions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from training import losses
from training.config import SFTConfig  # torch-free, beside every recipe's config: see there
from training.data import Report, SFTExample, manifest, tokenize_sft
from training.logprobs import response_logps
from training.loop import Result, prepare_rows, train_loop
from training.models import load_model
from training.packing import pack
from training.seeds import seed_everything


def batch_nll(model, examples: list[SFTExample], device, chunk: int) -> tuple[torch.Tensor, int]:
    lp = response_logps(model, pack([(e.prompt_ids, e.response_ids) for e in examples]).to(device), chunk=chunk)
    return losses.sft_nll(lp.tokens, torch.ones_like(lp.tokens)), int(lp.counts.sum())


def train(
    cfg: SFTConfig,
    rows: list[tuple[list[dict], str]],
    out_dir: str | Path,
    *,
    eval_rows: list[tuple[list[dict], str]] | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[Result, Report]:
    # ---- setup
    seed_everything(cfg.seed)
    model, tokenizer, device = load_model(cfg)
    rows, train_ex, eval_ex, report = prepare_rows(cfg, rows, eval_rows, tokenizer, tokenize_sft)

    # ---- train
    def batch_loss(idx: list[int]):
        loss, n = batch_nll(model, [train_ex[i] for i in idx], device, cfg.logit_chunk)
        return loss, {"loss": loss.item(), "num_tokens": n}

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        total, tokens = 0.0, 0
        for a in range(0, len(eval_ex), cfg.batch_size):
            loss, n = batch_nll(model, eval_ex[a:a + cfg.batch_size], device, cfg.logit_chunk)
            total, tokens = total + loss.item() * n, tokens + n
        return {"loss": total / max(1, tokens)}

    extra = {"algorithm": "sft", "data": manifest([list(r) for r in rows]), "data_report": report.as_dict()}
    result = train_loop(cfg=cfg, model=model, tokenizer=tokenizer, n_rows=len(train_ex), batch_loss=batch_loss,
                        row_tokens=lambda i: len(train_ex[i].prompt_ids) + len(train_ex[i].response_ids),
                        row_weight=lambda i: len(train_ex[i].response_ids),
                        evaluate=evaluate if eval_ex else None, out_dir=Path(out_dir), extra=extra,
                        on_metrics=on_metrics, on_progress=on_progress,
                        should_cancel=should_cancel, progress=progress)
    return result, report
