"""The one training step and the evaluation forward, shared by r2/train.py's Trainer and bench/train.py (so the
benchmark times exactly what `train/fit.py` runs).

`train_step`: forward under autocast (when an AMP dtype is given), the criterion in fp32, a finite-loss check, then
zero_grad -> scaler.scale(loss).backward() -> scaler.unscale_ -> grad-norm clip -> scaler.step -> scaler.update ->
scheduler.step. On CPU (fp32) the scaler is disabled and each scaler call is the plain one.
"""
from __future__ import annotations

import torch

__all__ = ["train_step", "eval_forward", "autocast"]


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
