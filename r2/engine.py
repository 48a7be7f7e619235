"""The training and evaluation loops: one step, one epoch, one split's predictions and metrics. Shared by
r2/train.py's Trainer (which orchestrates: config, checkpoints, logs) and bench/train.py (so the benchmark times
exactly what `train/fit.py` runs).

`train_step`: forward under autocast (when an AMP dtype is given), the criterion in fp32, a finite-loss check, then
zero_grad -> scaler.scale(loss).backward() -> scaler.unscale_ -> grad-norm clip -> scaler.step -> scaler.update ->
scheduler.step. On CPU (fp32) the scaler is disabled and each scaler call is the plain one.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader

from r2 import metrics
from r2.data import GroundingDataset, collate, to_device
from r2.decode import DecodeConfig, decode

__all__ = ["autocast", "eval_forward", "evaluate_split", "predict_split", "train_epoch", "train_step"]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward's autocast context: `dtype` on `device`, or disabled (plain fp32) when dtype is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def train_step(model, criterion, optimizer, scaler, batch: dict, device: torch.device,
               autocast_dtype: torch.dtype | None, grad_clip: float, params=None, scheduler=None,
               where: str = "train step") -> dict[str, torch.Tensor]:
    """One optimisation step on a batch already on `device`. `model` may be a DDP wrapper; `params` are the
    parameters to clip (default: model.parameters()). Returns the criterion's terms (attached tensors).
    Raises FloatingPointError, naming `where` and every term, on a non-finite loss (before any update)."""
    with autocast(device, autocast_dtype):
        outputs = model(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])
    losses = criterion(outputs, batch)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: non-finite loss { {k: float(v.detach()) for k, v in losses.items()} }")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(list(params) if params is not None else model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    return losses


@torch.no_grad()
def eval_forward(model, batch: dict, device: torch.device, autocast_dtype: torch.dtype | None) -> dict:
    """The model's outputs on a batch (eval mode is the caller's), under the same autocast as training."""
    with autocast(device, autocast_dtype):
        return model(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])


def train_epoch(model, criterion, optimizer, scaler, batches: Iterable[dict], device: torch.device,
                autocast_dtype: torch.dtype | None, grad_clip: float, params=None, scheduler=None, where: str = "epoch",
                on_step: Callable[[dict[str, torch.Tensor]], None] | None = None) -> dict[str, float]:
    """`train_step` on every batch (moved to `device` here); the mean of each criterion term over the steps.
    `on_step(losses)` runs after each step (a progress bar); `where` names the epoch in a non-finite-loss error."""
    sums: dict[str, float] = {}
    steps = 0
    for batch in batches:
        losses = train_step(model, criterion, optimizer, scaler, to_device(batch, device), device, autocast_dtype,
                            grad_clip, params=params, scheduler=scheduler, where=f"{where} step {steps}")
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        steps += 1
        if on_step is not None:
            on_step(losses)
    return {k: sums[k] / max(steps, 1) for k in sorted(sums)}


@torch.no_grad()
def predict_split(model, loader: DataLoader, dataset: GroundingDataset, dec_cfg: DecodeConfig, device: torch.device,
                  autocast_dtype: torch.dtype | None) -> list[dict]:
    """Predictions of a whole split in the QVHighlights submission format (plus `query`), in eval mode."""
    model.eval()
    preds = []
    for batch in loader:
        batch = to_device(batch, device)
        outputs = eval_forward(model, batch, device, autocast_dtype)
        for i, pred in zip(batch["index"].tolist(), decode(outputs, batch, dec_cfg)):
            r = dataset.records[i]
            preds.append({"qid": r.qid, "query": r.query, "vid": r.vid, **pred})
    return preds


def evaluate_split(model, dataset: GroundingDataset, dec_cfg: DecodeConfig, device: torch.device,
                   autocast_dtype: torch.dtype | None, batch_size: int, workers: int) -> tuple[list[dict], dict]:
    """(predictions, metrics) of `model` on a dataset split, scored by the dataset's evaluator."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)
    preds = predict_split(model, loader, dataset, dec_cfg, device, autocast_dtype)
    gt = [r.to_json() for r in dataset.records]
    return preds, metrics.evaluate(dataset.cache.dataset, preds, gt)
