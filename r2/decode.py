"""Inference decoding (SPEC §6): model outputs -> moment windows and per-frame saliency, one dict per sample.

Each sample is decoded from its own valid points and frames only (its n_frames, fps, duration), so a batched call
returns exactly what B separate calls return.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from r2.recipes import recipe

__all__ = ["DecodeConfig", "decode_config_for", "decode", "finish_windows", "nms", "top_windows", "upsample_level"]


@dataclass
class DecodeConfig:
    unit: Optional[float] = None  # seconds to round window ends to (None: no rounding)
    nms: Optional[str] = None  # "hard" (suppressed -> score 0), "soft" (linear: score *= 1 - IoU) or None
    nms_iou: float = 0.7  # hard-NMS threshold, suppress at IoU >= nms_iou
    top_k: int = 50  # windows kept by score before clamping, rounding and NMS
    soft_cls: bool = False  # TVSum/YouTube: no windows; saliency = sigmoid of the stride-1 class logit


def decode_config_for(dataset: str) -> DecodeConfig:
    """The SPEC §6 decoding settings of a dataset: its recipe's unit and NMS; soft_cls for highlight-only sets."""
    r = recipe(dataset)
    return DecodeConfig(unit=r.unit, nms=r.nms, soft_cls=r.highlight_only)


def _iou_one_to_many(window: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Temporal IoU of window (2,) with others (M, 2); 0 where the union is empty (two zero-length windows)."""
    inter = (torch.minimum(window[1], others[:, 1]) - torch.maximum(window[0], others[:, 0])).clamp(min=0)  # (M,)
    union = (window[1] - window[0]) + (others[:, 1] - others[:, 0]) - inter  # (M,)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def nms(windows: torch.Tensor, mode: str, iou_threshold: float) -> torch.Tensor:
    """Greedy temporal NMS on (M, 3) [start, end, score]; returns a new tensor sorted by score (descending).

    Step i moves the highest remaining score to position i (swapping it with the window there), then either sets
    the score of every later window with IoU >= iou_threshold to 0 ("hard") or multiplies each later score by
    1 - IoU ("soft", linear). Suppressed windows stay in the output, at the tail.
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"nms mode {mode!r} not supported; use 'hard', 'soft' or None")
    out = windows.clone()
    for i in range(out.shape[0]):
        best = i + int(out[i:, 2].argmax())
        out[[i, best]] = out[[best, i]]
        iou = _iou_one_to_many(out[i, :2], out[i + 1:, :2])  # (M - i - 1,)
        if mode == "hard":
            out[i + 1:, 2] = torch.where(iou >= iou_threshold, torch.zeros_like(iou), out[i + 1:, 2])
        else:
            out[i + 1:, 2] = out[i + 1:, 2] * (1 - iou)
    order = torch.argsort(out[:, 2], descending=True, stable=True)
    return out[order]


def upsample_level(scores: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Per-position scores (n,) of one level -> (n_frames,) per SPEC §6: repeat each value floor(n_frames / n)
    times (the reference's rule; not always the stride: T = 63, s = 8 gives n = 7 and 9 repeats), then pad with
    the last value up to n_frames."""
    frames = scores.repeat_interleave(n_frames // scores.shape[0])  # (floor(T / n) * n,)
    tail = frames[-1:].expand(n_frames - frames.shape[0])  # (T - floor(T / n) * n,)
    return torch.cat((frames, tail))


def top_windows(logits: torch.Tensor, boundaries: torch.Tensor, points: torch.Tensor, strides: torch.Tensor,
                fps: float, top_k: int) -> torch.Tensor:
    """The test branch of one sample (SPEC §6, before clamp/round/NMS) from its valid points: logits (M,),
    boundaries (M, 2), points / strides (M,) -> (min(M, top_k), 3) [start_s, end_s, sigmoid score] by score."""
    score = logits.sigmoid()  # (M,)
    start = (points - boundaries[:, 0] * strides) / fps  # (M,)
    end = (points + boundaries[:, 1] * strides) / fps  # (M,)
    order = torch.argsort(score, descending=True, stable=True)[:top_k]
    return torch.stack((start, end, score), dim=1)[order]  # (k, 3)


def finish_windows(windows: torch.Tensor, duration: float, cfg: DecodeConfig) -> torch.Tensor:
    """SPEC §6 on (M, 3) [start, end, score] windows in seconds: clamp to [0, duration], round to `unit` unless the
    window reaches the duration, NMS; returned sorted by score (stable). Shared by decode and r2.predict's merge."""
    windows = windows.clone()
    before_end = windows[:, 1] < duration  # (M,) windows that do not reach the video end get rounded
    windows[:, :2] = windows[:, :2].clamp(min=0, max=duration)
    if cfg.unit is not None:
        rounded = torch.round(windows[:, :2] / cfg.unit) * cfg.unit  # (M, 2)
        windows[:, :2] = torch.where(before_end[:, None], rounded, windows[:, :2])
    if cfg.nms is not None:
        return nms(windows, cfg.nms, cfg.nms_iou)
    return windows[torch.argsort(windows[:, 2], descending=True, stable=True)]


def decode(outputs: dict, batch: dict, cfg: DecodeConfig) -> list[dict]:
    """One dict per sample: `pred_relevant_windows` [[start, end, score], ...] in seconds sorted by score
    (descending; absent with cfg.soft_cls) and `pred_saliency_scores`, one float per frame of the sample."""
    for key in ("class_logits", "point_mask", "points", "point_strides") + (() if cfg.soft_cls else ("saliency",)):
        if key not in outputs:
            raise KeyError(f"decode: outputs lacks {key!r}; pass R2Model.forward's dict unchanged")
    if not cfg.soft_cls and "boundaries" not in outputs:
        raise KeyError("decode: outputs has no 'boundaries' (model built without a boundary head); use "
                       "decode_config_for('tvsum'|'youtube') for such a model")
    with torch.no_grad():
        class_logits = outputs["class_logits"].detach().float()  # (B, N)
        point_mask = outputs["point_mask"]  # (B, N)
        points = outputs["points"].detach().float()  # (N,)
        strides = outputs["point_strides"].detach().float()  # (N,)
        n_frames = batch["n_frames"].tolist()
        fps = batch["fps"].tolist()
        duration = batch["duration"].tolist()
        level_strides = sorted({int(s) for s in strides.tolist()})

        results = []
        for b in range(class_logits.shape[0]):
            valid = point_mask[b]  # (N,)
            n = int(n_frames[b])
            if cfg.soft_cls:
                stride_one = valid & (strides == 1)  # (N,)
                scores = class_logits[b][stride_one].sigmoid()  # (T_b,)
                if scores.shape[0] != n:
                    raise ValueError(f"decode: sample {b} has {scores.shape[0]} valid stride-1 points for "
                                     f"n_frames={n}; point_mask and batch['n_frames'] disagree")
                results.append({"pred_saliency_scores": scores.tolist()})
                continue

            levels = []
            for s in level_strides:
                on_level = valid & (strides == s)  # (N,)
                if bool(on_level.any()):
                    levels.append(upsample_level(class_logits[b][on_level].sigmoid(), n))  # (T_b,)
            saliency = torch.stack(levels).amax(dim=0) * outputs["saliency"][b, :n].detach().float()  # (T_b,)
            windows = top_windows(class_logits[b][valid], outputs["boundaries"][b][valid].detach().float(),
                                  points[valid], strides[valid], float(fps[b]), cfg.top_k)
            windows = finish_windows(windows, float(duration[b]), cfg)
            results.append({"pred_relevant_windows": windows.tolist(), "pred_saliency_scores": saliency.tolist()})
        return results
