"""Temporal feature pyramid, prediction heads and adaptive query pooling (SPEC §3, paper §3.5)."""
import math

import torch
import torch.nn as nn

__all__ = ["ConvPyramid", "ConvHead", "AdaptivePooling", "level_mask"]


def level_mask(n_frames: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    """Position p of a level with this stride is valid iff (p + 1) * stride <= T_b. -> bool (B, length)

    A sample alone has exactly floor(T_b / stride) positions, so this rule does not depend on the batch padding.
    """
    p = torch.arange(length, device=n_frames.device)  # (length,)
    return (p[None] + 1) * stride <= n_frames[:, None]  # (B, length)


def _zero_invalid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, C), mask (B, T): invalid positions set to 0, so they read like a lone sample's conv zero padding."""
    return torch.where(mask[:, :, None], x, 0.0)


class _DownsampleStep(nn.Module):
    """Conv1d(C, C, k=2, s=2) -> LN -> ReLU over (B, T, C) features."""

    def __init__(self, dims: int):
        super().__init__()
        self.conv = nn.Conv1d(dims, dims, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C) -> (B, C, T) -> (B, C, T/2) -> (B, T/2, C)
        return self.norm(x).relu()


class ConvPyramid(nn.Module):
    """One level per stride, each branching from relu(h) independently: stride 1 is relu(h) itself, stride 2^p is
    p downsampling steps on it. The caller applies the ReLU once (SPEC §3: the reference's stride-1 level is an
    in-place ReLU on the block output, so every later use of h reads relu(h))."""

    def __init__(self, dims: int, strides: tuple[int, ...]):
        super().__init__()
        self.strides = tuple(strides)
        self.levels = nn.ModuleList(
            nn.ModuleList(_DownsampleStep(dims) for _ in range(int(math.log2(s)))) for s in self.strides
        )

    def forward(self, h: torch.Tensor, n_frames: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """h (B, T, C) = relu(block output), n_frames (B,) -> per present level: features (B, T // s, C),
        masks bool (B, T // s), strides.

        A level is absent when T < s (T = the padded length).
        """
        feats, masks, strides = [], [], []
        for stride, steps in zip(self.strides, self.levels):
            if h.size(1) < stride:
                continue
            x, current = h, 1
            for step in steps:
                x = step(_zero_invalid(x, level_mask(n_frames, x.size(1), current)))  # (B, T / 2^j, C)
                current *= 2
            feats.append(x)
            masks.append(level_mask(n_frames, x.size(1), stride))
            strides.append(stride)
        return feats, masks, strides


class ConvHead(nn.Module):
    """Conv1d(C, C, 3, pad 1) -> ReLU -> Conv1d(C, out, 3, pad 1), shared across pyramid levels."""

    def __init__(self, dims: int, out_dims: int):
        super().__init__()
        self.conv1 = nn.Conv1d(dims, dims, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims, out_dims, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), mask bool (B, T) -> (B, T, out); invalid positions are zeroed before each conv."""
        x = self.conv1(_zero_invalid(x, mask).transpose(1, 2)).transpose(1, 2).relu()  # (B, C, T) -> (B, T, C)
        return self.conv2(_zero_invalid(x, mask).transpose(1, 2)).transpose(1, 2)  # (B, out, T) -> (B, T, out)


class AdaptivePooling(nn.Module):
    """Token-wise adaptive pooling: Linear(C -> 1, no bias) logits, softmax over the real tokens, weighted sum."""

    def __init__(self, dims: int):
        super().__init__()
        self.att = nn.Linear(dims, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, C), mask bool (B, L) -> (B, C)"""
        logits = self.att(x).squeeze(-1)  # (B, L)
        weights = logits.masked_fill(~mask, torch.finfo(logits.dtype).min).softmax(dim=-1)  # (B, L)
        return torch.einsum("bl,blc->bc", weights, x)  # (B, C)
