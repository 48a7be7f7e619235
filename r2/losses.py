"""Training criterion (SPEC §5, with the §9 fix for empty saliency-NCE rows/columns).

`Criterion(cfg)(outputs, batch)` returns every unweighted term under its own name and `loss`, their weighted sum;
the weights are applied there and nowhere else. Terms, all computed in fp32:
- `loss_cls`: focal loss (gamma 2, no alpha) over valid points / #valid points; TVSum/YouTube (`soft_cls`):
  BCE-with-logits to the soft saliency over valid frames / #valid frames.
- `loss_reg`: L1 between predicted and target boundaries (r / s) on positive points / (2 x #positives); absent
  with `soft_cls` (no boundary head).
- `loss_sal`: sampled NCE on the cosine saliency / temperature, candidates = valid frames whose saliency is <= the
  positive frame's; row term (over frames) + column term (over the batch at the positive frame); `soft_cls`: row
  term only.
- `loss_video_nce`: symmetric InfoNCE between each step's [CLS] at the positive frame and its pooled query, B x B
  per layer, averaged over layers. `loss_layer_nce`: the same K x K across layers per sample, averaged over samples.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2.recipes import recipe
from r2.targets import REGRESS_RANGES, point_targets

__all__ = ["LossConfig", "loss_config_for", "Criterion", "focal_loss", "sampled_nce_loss", "info_nce_loss"]


@dataclass
class LossConfig:
    cls_weight: float = 1.0  # focal (or soft BCE) class loss
    reg_weight: float = 0.2  # L1 boundary loss
    sal_weight: float = 0.1  # sampled saliency NCE; per dataset, see loss_config_for
    video_nce_weight: float = 0.1  # video-level InfoNCE (B x B per layer)
    layer_nce_weight: float = 0.1  # layer-wise InfoNCE (K x K per sample)
    temperature: float = 0.07  # fixed temperature of all three NCE terms
    soft_cls: bool = False  # TVSum/YouTube: BCE to the soft saliency, no boundary loss, saliency NCE row term only
    center_radius: float = 1.5  # centre-sampling radius in strides for point assignment
    regress_ranges: tuple[tuple[float, float], ...] = REGRESS_RANGES  # per level (stride 2**level), inclusive


def loss_config_for(dataset: str) -> LossConfig:
    """The SPEC §5 loss settings of a dataset: its recipe's saliency weight; soft_cls for highlight-only sets."""
    r = recipe(dataset)
    return LossConfig(sal_weight=r.sal_weight, soft_cls=r.highlight_only)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss without alpha, summed over the True entries of `mask`, divided by their count."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    return torch.where(mask, loss, torch.zeros_like(loss)).sum() / mask.sum().clamp(min=1)


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """log-softmax of `logits` over the True entries of `mask` along `dim`.

    Masked-out entries get finite values that callers must not use; a slice with no True entry gives finite values
    and finite (zero) gradients instead of the NaN that a -inf fill produces.
    """
    floor = logits.detach().amin(dim=dim, keepdim=True)
    shift = torch.where(mask, logits.detach(), floor).amax(dim=dim, keepdim=True)  # max over the candidates
    exp = torch.where(mask, (logits - shift).exp(), torch.zeros_like(logits))
    total = exp.sum(dim=dim, keepdim=True)
    total = torch.where(total > 0, total, torch.ones_like(total))
    return logits - shift - total.log()


def _mean_over(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the True entries of `keep` (0, still attached to the graph, when there are none)."""
    return torch.where(keep, values, torch.zeros_like(values)).sum() / keep.sum().clamp(min=1)


def sampled_nce_loss(cosine: torch.Tensor, video_mask: torch.Tensor, saliency: torch.Tensor,
                     pos_frame: torch.Tensor, temperature: float, column: bool) -> torch.Tensor:
    """Sampled saliency NCE (SPEC §5) on cosine (B, T) = cos(h_t, pooled q).

    Candidates of sample b: valid frames t with saliency[b, t] <= saliency[b, pos_frame[b]]. Row term: -log-softmax
    over sample b's candidate frames, at its positive. Column term: -log-softmax at frame pos_frame[b] over the
    samples b' for which that frame is a candidate, at b. A row or column whose positive is not itself a candidate
    (hence possibly empty) is left out of its mean (SPEC §9); otherwise each term is averaged over the batch.
    """
    batch = cosine.shape[0]
    rows = torch.arange(batch, device=cosine.device)
    logits = cosine.float() / temperature  # (B, T)
    pos_score = saliency[rows, pos_frame][:, None]  # (B, 1)
    candidate = video_mask & (saliency <= pos_score)  # (B, T)
    keep = candidate[rows, pos_frame]  # (B,) the positive is one of its own candidates

    row_log_prob = _masked_log_softmax(logits, candidate, dim=1)[rows, pos_frame]  # (B,)
    loss = -_mean_over(row_log_prob, keep)
    if column:
        col_logits = logits[:, pos_frame].t()  # (B, B'): row b = frame pos_frame[b] of every sample b'
        col_mask = candidate[:, pos_frame].t()  # (B, B')
        col_log_prob = _masked_log_softmax(col_logits, col_mask, dim=1)[rows, rows]  # (B,)
        loss = loss - _mean_over(col_log_prob, keep)
    return loss


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows of a and b (..., M, C), L2-normalised; mean over all leading dims."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    m = a.shape[-2]
    logits = a @ b.transpose(-1, -2) / temperature  # (..., M, M)
    target = torch.arange(m, device=a.device).expand(logits.shape[:-1])  # (..., M)
    a_to_b = F.cross_entropy(logits.reshape(-1, m), target.reshape(-1))  # (... * M, M) rows
    b_to_a = F.cross_entropy(logits.transpose(-1, -2).reshape(-1, m), target.reshape(-1))
    return (a_to_b + b_to_a) / 2


def _require(mapping: dict, keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise KeyError(f"Criterion: {what} lacks {missing}; see the contract in r2/losses.py's module docstring")


class Criterion(nn.Module):
    """All training losses of R²-Tuning; no parameters (the NCE temperature is fixed)."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def weights(self) -> dict[str, float]:
        cfg = self.cfg
        weights = {"loss_cls": cfg.cls_weight, "loss_sal": cfg.sal_weight,
                   "loss_video_nce": cfg.video_nce_weight, "loss_layer_nce": cfg.layer_nce_weight}
        if not cfg.soft_cls:
            weights["loss_reg"] = cfg.reg_weight
        return weights

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        _require(outputs, ("saliency", "class_logits", "point_mask", "points", "point_strides", "video_cls",
                           "query_step"), "outputs")
        _require(batch, ("video_mask", "saliency", "pos_frame") + (() if cfg.soft_cls else ("windows",)), "batch")
        with torch.autocast(device_type=outputs["class_logits"].device.type, enabled=False):
            terms = self._terms(outputs, batch)
        weights = self.weights()
        terms["loss"] = sum(weights[name] * terms[name] for name in weights)
        return terms

    def _terms(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        class_logits = outputs["class_logits"].float()  # (B, N)
        point_mask = outputs["point_mask"]  # (B, N)
        points, strides = outputs["points"], outputs["point_strides"]  # (N,) each
        saliency = batch["saliency"].float()  # (B, T)
        video_mask = batch["video_mask"]  # (B, T)
        pos_frame = batch["pos_frame"]  # (B,)
        rows = torch.arange(pos_frame.shape[0], device=pos_frame.device)
        if not bool(video_mask[rows, pos_frame].all()):
            raise ValueError("Criterion: batch['pos_frame'] points at a padded frame; the dataset must draw it "
                             "among the sample's own frames")
        terms = {}

        if cfg.soft_cls:
            if not bool((strides == 1).all()):
                raise ValueError("Criterion: soft_cls (TVSum/YouTube) needs a stride-1-only pyramid, got strides "
                                 f"{strides.unique().tolist()}; build the model with config_for('tvsum'|'youtube')")
            target = saliency[:, points.long()]  # (B, N) the frame each stride-1 point sits on
            bce = F.binary_cross_entropy_with_logits(class_logits, target, reduction="none")
            terms["loss_cls"] = _mean_over(bce, point_mask)
        else:
            if "boundaries" not in outputs:
                raise KeyError("Criterion: outputs has no 'boundaries' (model built without a boundary head); "
                               "use loss_config_for('tvsum'|'youtube') for such a model")
            cls_t, reg_t = point_targets(batch["windows"], points.float(), strides.float(), point_mask,
                                         radius=cfg.center_radius, ranges=cfg.regress_ranges)
            terms["loss_cls"] = focal_loss(class_logits, cls_t, point_mask)
            positive = cls_t.bool()[..., None].expand_as(reg_t)  # (B, N, 2)
            l1 = (outputs["boundaries"].float() - reg_t).abs()  # (B, N, 2)
            terms["loss_reg"] = _mean_over(l1, positive)

        terms["loss_sal"] = sampled_nce_loss(outputs["saliency"], video_mask, saliency, pos_frame,
                                             cfg.temperature, column=not cfg.soft_cls)

        video_pos = outputs["video_cls"][rows, :, pos_frame]  # (B, K, C) [CLS] of each step at the positive frame
        query = outputs["query_step"]  # (B, K, C)
        terms["loss_video_nce"] = info_nce_loss(video_pos.transpose(0, 1), query.transpose(0, 1),
                                                cfg.temperature)  # (K, B, C): B x B per layer
        terms["loss_layer_nce"] = info_nce_loss(video_pos, query, cfg.temperature)  # (B, K, C): K x K per sample
        return terms
