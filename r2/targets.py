"""Training targets (SPEC §4): cleaned ground-truth windows and per-point class / regression targets.

Everything here works in FRAME units: a window [gs, ge] in frames, a pyramid point at frame index x of the level
with stride s. Saliency targets and the positive frame are built by the dataset code, not here.
"""
import math
from typing import Sequence

import torch

__all__ = ["REGRESS_RANGES", "clean_windows", "point_targets"]

# Regression range of each pyramid level, indexed by level (stride 2**level), inclusive on both ends (SPEC §4).
REGRESS_RANGES = ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, math.inf))


def clean_windows(windows_sec, n_frames: int, fps: float) -> torch.Tensor:
    """Clamp, un-reverse and widen GT windows given in seconds; return them in frames, float32 (n, 2).

    SPEC §4: windows are clamped to [0, n_frames / fps]; a reversed window is swapped; a window shorter than one
    frame becomes exactly one frame long around its centre, the centre kept at least half a frame inside the video
    (so a window lying wholly past the end becomes the last frame, one wholly before 0 the first frame).
    """
    if n_frames <= 0 or fps <= 0:
        raise ValueError(f"clean_windows: n_frames={n_frames} and fps={fps} must both be > 0")
    windows = torch.as_tensor(windows_sec, dtype=torch.float32)
    if windows.numel() == 0:
        windows = windows.reshape(0, 2)  # (0, 2)
    if windows.ndim != 2 or windows.shape[1] != 2:
        raise ValueError(f"clean_windows: windows must be a list of [start, end] pairs, got {windows_sec!r}")
    if not torch.isfinite(windows).all():
        raise ValueError(f"clean_windows: non-finite window in {windows_sec!r}; fix the annotation file")
    max_time = n_frames / fps
    one_frame = 1.0 / fps
    windows = windows.clamp(min=0.0, max=max_time)
    windows = torch.stack((windows.amin(dim=1), windows.amax(dim=1)), dim=1)  # (n, 2) reversed ones swapped
    short = windows[:, 1] - windows[:, 0] < one_frame  # (n,)
    centre = (windows.sum(dim=1) / 2).clamp(min=0.5 * one_frame, max=max_time - 0.5 * one_frame)  # (n,)
    widened = torch.stack((centre - 0.5 * one_frame, centre + 0.5 * one_frame), dim=1)  # (n, 2)
    windows = torch.where(short[:, None], widened, windows)
    return windows * fps


def _level_of(point_strides: torch.Tensor, n_ranges: int) -> torch.Tensor:
    """Level index log2(s) of each point's stride; loud error for a stride that is not a power of two in range."""
    level = torch.log2(point_strides.double()).round().long()  # (N,)
    if not torch.equal(2.0 ** level.double(), point_strides.double()):
        raise ValueError(f"point_targets: strides {point_strides.unique().tolist()} must be powers of two")
    if level.numel() and int(level.max()) >= n_ranges:
        raise ValueError(f"point_targets: stride {int(point_strides.max())} has no regression range; "
                         f"ranges cover {n_ranges} levels (strides 1..{2 ** (n_ranges - 1)})")
    return level


def point_targets(windows: Sequence[torch.Tensor], points: torch.Tensor, point_strides: torch.Tensor,
                  point_mask: torch.Tensor, radius: float = 1.5,
                  ranges: Sequence[tuple[float, float]] = REGRESS_RANGES) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign GT windows to pyramid points (SPEC §4).

    windows: B tensors (n_b, 2) in frames (already cleaned); points / point_strides: (N,) frame index x and stride
    s of each point; point_mask: bool (B, N), True on points inside the sample's own video.
    A point is a candidate for GT [gs, ge] (centre c) when x lies in [max(c - radius*s, gs), min(c + radius*s, ge)]
    and max(x - gs, ge - x) lies in its level's inclusive regression range; the shortest candidate GT wins (the
    first listed on equal lengths). Invalid points are never positive.
    Returns cls (B, N) float in {0, 1} and reg (B, N, 2) = (x - gs, ge - x) / s of the assigned GT (0 elsewhere).
    """
    batch, n_points = point_mask.shape
    if len(windows) != batch:
        raise ValueError(f"point_targets: {len(windows)} window tensors for a batch of {batch}")
    if points.shape != (n_points,) or point_strides.shape != (n_points,):
        raise ValueError(f"point_targets: points {tuple(points.shape)} and point_strides "
                         f"{tuple(point_strides.shape)} must both be ({n_points},) like point_mask's columns")
    level = _level_of(point_strides, len(ranges))
    bounds = torch.tensor(ranges, dtype=points.dtype, device=points.device)[level]  # (N, 2) [low, high]
    x = points[:, None]  # (N, 1)
    s = point_strides[:, None].to(points.dtype)  # (N, 1)

    cls = points.new_zeros(batch, n_points)
    reg = points.new_zeros(batch, n_points, 2)
    for b, gt in enumerate(windows):
        gt = gt.to(device=points.device, dtype=points.dtype).reshape(-1, 2)  # (G, 2)
        if gt.shape[0] == 0:
            continue
        order = torch.argsort(gt[:, 1] - gt[:, 0], stable=True)  # shortest first, ties in listed order
        gt = gt[order]  # (G, 2)
        gs, ge = gt[None, :, 0], gt[None, :, 1]  # (1, G) each
        centre = (gs + ge) / 2  # (1, G)
        inside = (x >= torch.maximum(centre - radius * s, gs)) & (x <= torch.minimum(centre + radius * s, ge))  # (N, G)
        r = torch.stack((x - gs, ge - x), dim=-1)  # (N, G, 2)
        r_max = r.amax(dim=-1)  # (N, G)
        in_range = (r_max >= bounds[:, 0:1]) & (r_max <= bounds[:, 1:2])  # (N, G)
        ok = inside & in_range & point_mask[b][:, None]  # (N, G)
        positive = ok.any(dim=1)  # (N,)
        first = ok.to(torch.uint8).argmax(dim=1)  # (N,) first qualifying GT in length order = the shortest
        chosen = r[torch.arange(n_points, device=points.device), first]  # (N, 2)
        cls[b] = positive.to(points.dtype)
        reg[b] = torch.where(positive[:, None], chosen / s, torch.zeros_like(chosen))
    return cls, reg
