"""R2Model: R² Block -> temporal pyramid -> class / boundary heads, adaptive query pooling, cosine saliency."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from r2.model.block import R2Block
from r2.model.config import R2Config
from r2.model.pyramid import AdaptivePooling, ConvHead, ConvPyramid

__all__ = ["R2Model"]


def _is_prefix(mask: torch.Tensor) -> torch.Tensor:
    """True where each row of a bool (B, N) mask is a run of Trues followed by Falses."""
    positions = torch.arange(mask.size(1), device=mask.device)  # (N,)
    return (mask == (positions[None] < mask.sum(dim=1, keepdim=True))).all(dim=1)  # (B,)


class R2Model(nn.Module):
    """The learnable part of R²-Tuning on cached CLIP taps (SPEC §3). CLIP itself is not part of this module."""

    def __init__(self, cfg: R2Config):
        super().__init__()
        self.cfg = cfg
        self.block = R2Block(cfg)
        self.pyramid = ConvPyramid(cfg.hidden, cfg.strides)
        self.pooling = AdaptivePooling(cfg.hidden)
        self.class_head = ConvHead(cfg.hidden, 1)
        self.boundary_head = ConvHead(cfg.hidden, 2) if cfg.boundary else None
        # One boundary scale per pyramid level, init 1. The reference holds it even without a boundary head
        # (TVSum / YouTube), where it is unused; it is part of the published parameter count (SPEC §3).
        self.boundary_coef = nn.Parameter(torch.ones(len(cfg.strides)))

    def _check_inputs(self, video, video_mask, query, query_mask):
        cfg = self.cfg
        if video.dim() != 5 or video.shape[1] != cfg.layers or video.shape[3:] != (cfg.tokens, cfg.video_dim):
            raise ValueError(f"video has shape {tuple(video.shape)}; expected (B, {cfg.layers}, T, {cfg.tokens}, "
                             f"{cfg.video_dim}) from R2Config: rebuild the config from the feature cache's dims")
        b, _, t = video.shape[:3]
        if query.dim() != 4 or query.shape[:2] != (b, cfg.layers) or query.shape[3] != cfg.query_dim:
            raise ValueError(f"query has shape {tuple(query.shape)}; expected ({b}, {cfg.layers}, L, {cfg.query_dim})")
        for name, mask, shape in (("video_mask", video_mask, (b, t)), ("query_mask", query_mask, (b, query.shape[2]))):
            if mask.dtype != torch.bool or tuple(mask.shape) != shape:
                raise ValueError(f"{name} is {mask.dtype} {tuple(mask.shape)}; expected torch.bool {shape}")
            ok = mask.any(dim=1).all() & _is_prefix(mask).all()
            why = f"{name}: every sample needs a non-empty prefix of True (real items first, then padding)"
            if torch.compiler.is_compiling():  # a check in the graph (RuntimeError at run time), not a graph break
                torch._assert_async(ok, why)
            elif not bool(ok):
                raise ValueError(why)

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on one padded batch (shapes: see the inputs below).

        video (B, K, T, P+1, Dv) fp16/fp32, K index 0 = shallowest tap; video_mask bool (B, T) prefix of real frames;
        query (B, K, L, Dq); query_mask bool (B, L) prefix of real tokens.

        Returns (all fp32; N = total pyramid positions, levels in stride order, level s has T // s positions):
          saliency (B, T): cos(relu(h)_t, pooled query) on real frames, 0 on padding.
          class_logits (B, N); boundaries (B, N, 2) = exp(head) * coef_level in stride units (only with a
            boundary head); point_mask bool (B, N): (p + 1) * s <= T_b; points (N,) frame index p * s;
            point_strides (N,) s.
          video_cls (B, K, T, C): each step's mapped [CLS] row, layer order.
          query_step (B, K, C): adaptive pooling of each step's mapped query, layer order.
        """
        self._check_inputs(video, video_mask, query, query_mask)
        b, k_layers = video.shape[:2]
        n_frames = video_mask.sum(dim=1)  # (B,)
        block = self.block(video, video_mask, query, query_mask)
        # SPEC §3: the reference's stride-1 level is an in-place ReLU on the block output, so the stride-2/4/8
        # levels, the cosine saliency and the saliency loss all read relu(h). Applied once, here, explicitly.
        hidden = block["hidden"].relu()  # (B, T, C)
        levels, level_masks, strides = self.pyramid(hidden, n_frames)

        with torch.autocast(device_type=video.device.type, enabled=False):
            query_maps = block["query_maps"].float().flatten(0, 1)  # (B, K, L, C) -> (B*K, L, C)
            step_mask = query_mask.repeat_interleave(k_layers, dim=0)  # (B*K, L)
            query_step = self.pooling(query_maps, step_mask).view(b, k_layers, -1)  # (B*K, C) -> (B, K, C)
            cosine = F.cosine_similarity(hidden.float(), query_step[:, None, 0], dim=-1)  # (B, T), shallowest step's query
            out = {"saliency": torch.where(video_mask, cosine, 0.0)}

            out["class_logits"] = torch.cat(
                [self.class_head(x.float(), m)[..., 0] for x, m in zip(levels, level_masks)], dim=1)  # (B, N)
            if self.boundary_head is not None:
                out["boundaries"] = torch.cat(
                    [self.boundary_head(x.float(), m).exp() * self.boundary_coef[self.cfg.strides.index(s)]
                     for x, m, s in zip(levels, level_masks, strides)], dim=1)  # (B, N, 2)

            out["point_mask"] = torch.cat(level_masks, dim=1)  # (B, N)
            out["points"] = torch.cat(
                [torch.arange(x.size(1), device=video.device, dtype=torch.float32) * s for x, s in zip(levels, strides)])
            out["point_strides"] = torch.cat(
                [torch.full((x.size(1),), float(s), device=video.device) for x, s in zip(levels, strides)])
            out["video_cls"] = block["video_cls"].float()  # (B, K, T, C)
            out["query_step"] = query_step  # (B, K, C)
        return out
