"""The R² Block (SPEC §3, paper §3.3): query-modulated spatial pooling and recurrent temporal refinement.

Inputs are the raw CLIP residual streams of K tapped layers; one set of weights is applied K times, from the
deepest tapped layer to the shallowest, refining a hidden state h of one C-vector per frame.

Two implementations of the same function live here (`R2Block.fast`, default True):
- the plain path (`fast = False`) is SPEC §3 written op by op, as in the reference: concat the TEF, LayerNorm,
  dropout and Linear on every (frame, token) row, project every token with W_v, then pool;
- the fast path is an exact algebraic rewrite of it, for the (B·T·(P+1)) × (Dv+2) tensors where the time goes:
  * `FeatureInput` fuses fp16 -> fp32, TEF, LayerNorm(Dv+2), the dropout mask and the first Linear into one
    autograd function that works in one fp32 buffer, takes the LayerNorm statistics of the two TEF columns
    analytically, saves no (rows × Dv) activation for backward (it recomputes the normalised rows from the fp16
    input) and gets the LayerNorm affine gradients from two (C × Dv) products instead of a (rows × Dv) one;
  * the spatial pooling never projects the tokens: (W_q q + b_q)·(W_v v_p + b_v) = ((W_q q + b_q) W_v)·v_p + a
    term constant over p (softmax drops it), and v_p = W2 y_p + b2 is the last Linear of `video_map`, so the
    logits are (q' W2)·y_p + const and A·v = (A·y) W2ᵀ + b2 (A's rows sum to 1). The last Linear then runs on the
    B·T·L pooled rows and the T [CLS] rows instead of all B·T·(P+1) token rows, and W_v on L query rows.
  The constant terms are still added to the logits, so b_v and b2 keep their (analytically zero) gradients.
Both paths draw their dropout masks from `keep_mask` in the same order, so with the same seed they train the same.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2.model.config import R2Config

__all__ = ["R2Block", "TemporalLayer", "MultiHeadAttention", "DropPath", "Dropout", "FeatureInput", "keep_mask",
           "torch_dropout", "temporal_endpoint_feature", "sinusoidal_positions"]

_TORCH_DROPOUT = False  # True inside `torch_dropout()`: Dropout uses F.dropout (the plain baseline of bench/train.py)


@contextmanager
def torch_dropout():
    """Within the block, `Dropout` draws its masks with torch's own F.dropout (bernoulli_), as r2 did before the
    fast path; only bench/train.py's plain-eager baseline uses it."""
    global _TORCH_DROPOUT
    before, _TORCH_DROPOUT = _TORCH_DROPOUT, True
    try:
        yield
    finally:
        _TORCH_DROPOUT = before


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverted-dropout multiplier of `shape`: each entry independently 1/(1-p) with probability 1-p, else 0.

    Built from 63-bit integer draws of torch's generator with integer ops only (CPU `bernoulli_` costs ~17 ns an
    entry, this ~0.3 ns at p = 0.5 and ~4 ns otherwise). p = 0.5: one random bit per entry, exact. Other p: a
    31-bit uniform integer per entry compared with round((1-p)·2^31), so P(keep) is within 2^-32 of 1-p (torch's
    float bernoulli draws 24 bits). The value 1/(1-p) is written as its float32 bit pattern, so it is exact.
    """
    n = math.prod(shape)
    keep = 1.0 - p
    scale_bits = int(torch.tensor(1.0 / keep, dtype=torch.float32).view(torch.int32))
    if keep == 0.5:  # bits 0..30 of both int32 halves of a 63-bit draw; bit j of word i -> entry j * words + i
        words = -(-n // 31)
        w = torch.empty(-(-words // 2), dtype=torch.int64, device=device).random_().view(torch.int32)[:words]
        shift = (30 - torch.arange(31, dtype=torch.int32, device=device))[:, None]  # (31, 1)
        out = torch.bitwise_left_shift(w[None, :], shift).bitwise_and_(scale_bits)  # (31, words): 2.0 or 0.0 bits
    else:  # one 31-bit uniform per entry: keep iff it is below the threshold
        w = torch.empty(-(-n // 2), dtype=torch.int64, device=device).random_().view(torch.int32)[:n]
        threshold = round(keep * 2 ** 31)
        out = w.bitwise_and(0x7FFFFFFF).sub_(threshold).bitwise_right_shift_(31).bitwise_and_(scale_bits)
    return out.reshape(-1)[:n].view(torch.float32).view(shape).to(dtype)


class Dropout(nn.Dropout):
    """nn.Dropout with masks from `keep_mask` (same semantics: inverted dropout, identity in eval or at p = 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if _TORCH_DROPOUT:
            return F.dropout(x, self.p, True)
        return x * keep_mask(x.shape, self.p, x.device, x.dtype)


def temporal_endpoint_feature(n_frames: torch.Tensor, length: int) -> torch.Tensor:
    """TEF [t/T_b, (t+1)/T_b] for t = 0..length-1, normalised by each sample's own frame count. -> (B, T, 2)"""
    t = torch.arange(length, device=n_frames.device, dtype=torch.float32)  # (T,)
    total = n_frames.to(torch.float32)[:, None]  # (B, 1)
    return torch.stack((t / total, (t + 1) / total), dim=-1)  # (B, T, 2)


def sinusoidal_positions(n_frames: torch.Tensor, length: int, dims: int, temperature: float = 1e4) -> torch.Tensor:
    """Normalised sinusoidal encoding: position p = 1..length mapped to p / T_b * 2π, sin/cos interleaved.

    Computed on the fly for any length; T_b is each sample's own frame count. -> (B, T, dims) float32
    """
    p = torch.arange(1, length + 1, device=n_frames.device, dtype=torch.float32)  # (T,)
    angle = p / n_frames.to(torch.float32)[:, None] * (2 * math.pi)  # (B, T)
    i = torch.arange(dims, device=n_frames.device)
    freq = temperature ** ((i // 2 * 2).to(torch.float32) / dims)  # (dims,): one frequency per sin/cos pair
    x = angle[..., None] / freq  # (B, T, dims)
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(2)  # (B, T, dims/2, 2) -> (B, T, dims)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: drop the whole branch per sample with probability p (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        shape = (x.size(0),) + (1,) * (x.dim() - 1)  # (B, 1, 1): one draw per sample
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate q/k/v/output projections and a boolean key mask."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dims, dims)
        self.k = nn.Linear(dims, dims)
        self.v = nn.Linear(dims, dims)
        self.out = nn.Linear(dims, dims)
        for linear in (self.q, self.k, self.v, self.out):  # SPEC §3: xavier-uniform, zero bias
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
        """query (B, Tq, C), key/value (B, Tk, C), key_mask bool (B, Tk) True on keys to attend -> (B, Tq, C)"""
        b, tq, c = query.shape
        tk, d = key.size(1), c // self.heads
        q = self.q(query).view(b, tq, self.heads, d).transpose(1, 2)  # (B, H, Tq, d)
        k = self.k(key).view(b, tk, self.heads, d).transpose(1, 2)  # (B, H, Tk, d)
        v = self.v(value).view(b, tk, self.heads, d).transpose(1, 2)  # (B, H, Tk, d)
        logits = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, Tq, Tk)
        logits = logits.masked_fill(~key_mask[:, None, None, :], torch.finfo(logits.dtype).min)
        out = logits.softmax(dim=-1) @ v  # (B, H, Tq, d)
        return self.out(out.transpose(1, 2).reshape(b, tq, c))  # (B, H, Tq, d) -> (B, Tq, C)


class TemporalLayer(nn.Module):
    """Post-norm transformer layer: cross-attention to the query -> self-attention over frames -> FFN.

    DropPath on each of the three residual branches, no other dropout (SPEC §3).
    """

    def __init__(self, dims: int, heads: int, ffn_ratio: int, droppath: float):
        super().__init__()
        self.cross_attn = MultiHeadAttention(dims, heads)
        self.self_attn = MultiHeadAttention(dims, heads)
        self.ffn = nn.Sequential(nn.Linear(dims, dims * ffn_ratio), nn.ReLU(), nn.Linear(dims * ffn_ratio, dims))
        for layer in (self.ffn[0], self.ffn[2]):  # SPEC §3: kaiming-normal (fan_out), zero bias
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        self.norm_cross = nn.LayerNorm(dims)
        self.norm_self = nn.LayerNorm(dims)
        self.norm_ffn = nn.LayerNorm(dims)
        self.droppath = DropPath(droppath)

    def forward(self, x: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor,
                pe: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) frames, video_mask (B, T), query (B, L, C), query_mask (B, L), pe (B, T, C) -> (B, T, C)"""
        x = self.norm_cross(x + self.droppath(self.cross_attn(x + pe, query, query, query_mask)))
        x = self.norm_self(x + self.droppath(self.self_attn(x + pe, x + pe, x, video_mask)))
        return self.norm_ffn(x + self.droppath(self.ffn(x)))


def _feature_map(in_dims: int, dims: int, dropout: float) -> nn.Sequential:
    """video_map / query_map: LN -> Dropout -> Linear -> ReLU -> LN -> Dropout -> Linear."""
    return nn.Sequential(nn.LayerNorm(in_dims), Dropout(dropout), nn.Linear(in_dims, dims), nn.ReLU(),
                         nn.LayerNorm(dims), Dropout(dropout), nn.Linear(dims, dims))


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for this device type now, or None."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


class FeatureInput(torch.autograd.Function):
    """z = Linear(mask ⊙ LayerNorm([x, tef])) on every token row, fused; x is never differentiated (CLIP is frozen).

    x (B, T, P+1, Dv) any float dtype (the cache's fp16), n_frames (B,) real frames per sample (padded frames read
    as zeros), tef (B, T, 2) or None, LayerNorm weight/bias (E,), Linear weight (C, E) / bias (C,), mask
    (B, T, P+1, E) from `keep_mask` or None (eval / p = 0), eps. E = Dv + 2 with a TEF, else Dv. -> z (B, T, P+1, C)
    (the autocast dtype under autocast, like nn.Linear; else float32).

    Forward: one fp32 buffer (rows × E) holds x, then x - mean, then the normalised rows, then the affine and the
    mask, and feeds the GEMM; the TEF columns' contribution to mean and variance is added analytically (two-pass:
    mean first, then the centred sum of squares). Backward: with u = mask ⊙ x̂ rebuilt in that buffer from x,
    A1 = Gᵀu and A2 = Gᵀmask (Gᵀ1 without a mask) give dW = A1·γ + A2·β, dγ = Σ_c W ⊙ A1, dβ = Σ_c W ⊙ A2 —
    the same gradients as autograd through LN -> Dropout -> Linear, with two (C × E) products instead of the
    (rows × E) input gradient.
    """

    @staticmethod
    def _normalised(x, n_frames, tef, eps, mean=None, rstd=None):
        """fp32 (B, T, P, E) buffer of x̂ = (x - mean) * rstd (TEF columns included); computes mean/rstd if None."""
        b, t, p, d = x.shape
        e = d + (2 if tef is not None else 0)
        y = torch.empty(b, t, p, e, dtype=torch.float32, device=x.device)
        yx = y[..., :d]
        yx.copy_(x)
        if n_frames is not None:  # padding reads as zeros (what the plain path's torch.where does)
            for i, n in enumerate(n_frames.tolist()):
                if n < t:
                    yx[i, n:].zero_()
        tef = tef.float()[:, :, None, :] if tef is not None else None  # (B, T, 1, 2)
        if mean is None:
            total = yx.sum(dim=-1)  # (B, T, P)
            if tef is not None:
                total = total + tef.sum(dim=-1)
            mean = total / e
        yx.sub_(mean[..., None])
        yt = tef - mean[..., None] if tef is not None else None  # (B, T, P, 2)
        if rstd is None:
            sq = torch.linalg.vector_norm(yx, dim=-1).square_()  # (B, T, P) centred sum of squares, Dv part
            if yt is not None:
                sq = sq + yt.square().sum(dim=-1)
            rstd = torch.rsqrt(sq / e + eps)
        yx.mul_(rstd[..., None])
        if yt is not None:
            y[..., d:] = yt * rstd[..., None]
        return y, mean, rstd

    @staticmethod
    def forward(ctx, x, n_frames, tef, gamma, beta, weight, bias, mask, eps):
        amp = _amp_dtype(x.device)
        y, mean, rstd = FeatureInput._normalised(x, n_frames, tef, eps)
        y.mul_(gamma.float()).add_(beta.float())
        if mask is not None:
            y.mul_(mask)
        rows = y.view(-1, y.size(-1))  # (R, E)
        with torch.autocast(x.device.type, enabled=False):
            if amp is None:
                z = torch.addmm(bias.float(), rows, weight.float().t())
            else:
                z = torch.addmm(bias.to(amp), rows.to(amp), weight.to(amp).t())
        ctx.save_for_backward(x, n_frames, tef, gamma, beta, weight, mask, mean, rstd)
        ctx.eps, ctx.amp = eps, amp
        return z.view(*x.shape[:3], -1)

    @staticmethod
    def backward(ctx, grad):
        x, n_frames, tef, gamma, beta, weight, mask, mean, rstd = ctx.saved_tensors
        need_gamma, need_beta, need_w, need_b = ctx.needs_input_grad[3:7]
        g = grad.reshape(-1, grad.size(-1))  # (R, C)
        dtype = ctx.amp or torch.float32
        with torch.autocast(x.device.type, enabled=False):
            g = g.to(dtype)
            d_bias = g.float().sum(dim=0) if need_b else None
            d_gamma = d_beta = d_weight = None
            if need_gamma or need_beta or need_w:
                u, _, _ = FeatureInput._normalised(x, n_frames, tef, ctx.eps, mean, rstd)
                if mask is not None:
                    u.mul_(mask)
                e = u.size(-1)
                a1 = (g.t() @ u.view(-1, e).to(dtype)).float()  # (C, E) = Gᵀ(mask ⊙ x̂)
                del u
                if mask is not None:
                    a2 = (g.t() @ mask.view(-1, e).to(dtype)).float()  # (C, E) = Gᵀ mask
                else:
                    a2 = g.float().sum(dim=0)[:, None]  # (C, 1) = Gᵀ1
                w = weight.float()
                d_weight = a1 * gamma.float() + a2 * beta.float() if need_w else None
                d_gamma = (w * a1).sum(dim=0) if need_gamma else None
                d_beta = (w * a2).sum(dim=0) if need_beta else None
        return None, None, None, d_gamma, d_beta, d_weight, d_bias, None, None


class R2Block(nn.Module):
    """Reversed recurrent tuning over K CLIP layers with weights shared across the K steps."""

    def __init__(self, cfg: R2Config):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden
        self.video_map = _feature_map(cfg.video_dim + (2 if cfg.tef else 0), c, cfg.dropout)
        self.query_map = _feature_map(cfg.query_dim, c, cfg.dropout)
        self.w_q = nn.Linear(c, c)  # projects query tokens for the spatial-pooling attention
        self.w_v = nn.Linear(c, c)  # projects visual tokens for the spatial-pooling attention
        # Indexed by tapped layer (0 = shallowest). tanh(scale) weighs the pooled branch, 0 at init (off);
        # sigmoid(gate) mixes the new frame features with the previous step's h, 0.5 at init. The deepest
        # layer runs first and has no previous state, hence K - 1 gates.
        self.scale = nn.Parameter(torch.zeros(cfg.layers))
        self.gate = nn.Parameter(torch.zeros(cfg.layers - 1))
        self.temporal = TemporalLayer(c, cfg.heads, cfg.ffn_ratio, cfg.droppath)
        self.fast = True  # the fused / rewritten path (module docstring); False: the plain op-by-op path

    def spatial_pool(self, v: torch.Tensor, q: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Query-modulated spatial pooling (paper eq. 4-5), before the tanh(scale) weighting.

        v (B, T, P+1, C) mapped visual tokens, q (B, L, C) mapped query tokens -> e_token (B, T, C):
        per frame, A = softmax over tokens of (W_q q)(W_v v)^T / sqrt(C); o = A v + q; max over real query tokens.
        """
        logits = torch.einsum("blc,btpc->btlp", self.w_q(q), self.w_v(v)) / math.sqrt(v.size(-1))  # (B, T, L, P+1)
        o = torch.einsum("btlp,btpc->btlc", logits.softmax(dim=-1), v) + q[:, None]  # (B, T, L, C)
        o = o.masked_fill(~query_mask[:, None, :, None], torch.finfo(o.dtype).min)
        return o.amax(dim=2)  # (B, T, C)

    def spatial_pool_fast(self, y: torch.Tensor, q: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """`spatial_pool` on v = W2 y + b2 (W2, b2: video_map's last Linear) without computing v for every token.

        y (B, T, P+1, C) video_map's input to that Linear, q (B, L, C) -> e_token (B, T, C). Exact rewrite (module
        docstring): logits = ((W_q q + b_q) W_v W2)·y_p + const_l, A·v = (A·y) W2ᵀ + b2.
        """
        last = self.video_map[6]
        qk = self.w_q(q)  # (B, L, C)
        q1 = qk @ self.w_v.weight  # (B, L, C): W_vᵀ applied to each query row
        q2 = q1 @ last.weight  # (B, L, C)
        const = qk @ self.w_v.bias + q1 @ last.bias  # (B, L): the same for every token p, softmax drops it
        logits = (torch.einsum("blc,btpc->btlp", q2, y) + const[:, None, :, None]) / math.sqrt(y.size(-1))
        pooled = torch.einsum("btlp,btpc->btlc", logits.softmax(dim=-1), y)  # (B, T, L, C) = A·y
        o = last(pooled) + q[:, None]  # (B, T, L, C) = A·v + q
        o = o.masked_fill(~query_mask[:, None, :, None], torch.finfo(o.dtype).min)
        return o.amax(dim=2)  # (B, T, C)

    def _video_step_fast(self, x: torch.Tensor, n_frames: torch.Tensor | None,
                         tef: torch.Tensor | None) -> torch.Tensor:
        """video_map up to (not including) its last Linear: x (B, T, P+1, Dv) -> y (B, T, P+1, C)."""
        norm, drop = self.video_map[0], self.video_map[1]
        mask = None
        if self.training and drop.p > 0:
            e = x.size(-1) + (2 if tef is not None else 0)
            mask = keep_mask((*x.shape[:3], e), drop.p, x.device)  # the plain path's first mask, same draw
        linear = self.video_map[2]
        z = FeatureInput.apply(x, n_frames, tef, norm.weight, norm.bias, linear.weight, linear.bias, mask, norm.eps)
        return self.video_map[5](self.video_map[4](self.video_map[3](z)))  # ReLU -> LN -> Dropout

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """video (B, K, T, P+1, Dv), video_mask (B, T), query (B, K, L, Dq), query_mask (B, L), K index 0 shallowest.

        Returns `hidden` h (B, T, C) after the last (shallowest) step, `video_cls` (B, K, T, C) and `query_maps`
        (B, K, L, C): each step's mapped [CLS] row and query tokens, in layer order.
        """
        if self.fast:
            return self._forward_fast(video, video_mask, query, query_mask)
        return self._forward_plain(video, video_mask, query, query_mask)

    def _forward_fast(self, video, video_mask, query, query_mask) -> dict[str, torch.Tensor]:
        b, k_layers, t = video.shape[:3]
        n_frames = video_mask.sum(dim=1)  # (B,)
        pe = sinusoidal_positions(n_frames, t, self.cfg.hidden)  # (B, T, C)
        tef = temporal_endpoint_feature(n_frames, t) if self.cfg.tef else None  # (B, T, 2)
        padded = n_frames if not bool(video_mask.all()) else None
        token_keep = query_mask[:, :, None]  # (B, L, 1)

        video_cls, query_maps = [None] * k_layers, [None] * k_layers
        h = None
        for k in reversed(range(k_layers)):  # deepest tapped layer first (SPEC §3)
            y = self._video_step_fast(video[:, k], padded, tef)  # (B, T, P+1, C), before video_map's last Linear
            q = self.query_map(torch.where(token_keep, query[:, k].float(), 0.0))  # (B, L, C)
            cls = self.video_map[6](y[:, :, 0])  # (B, T, C) = v[:, :, 0]
            video_cls[k], query_maps[k] = cls, q
            f = cls + self.scale[k].tanh() * self.spatial_pool_fast(y, q, query_mask)  # (B, T, C)
            if h is not None:
                g = self.gate[k].sigmoid()
                f = g * f + (1 - g) * h
            h = self.temporal(f, video_mask, q, query_mask, pe)
        return {"hidden": h, "video_cls": torch.stack(video_cls, dim=1), "query_maps": torch.stack(query_maps, dim=1)}

    def _forward_plain(self, video, video_mask, query, query_mask) -> dict[str, torch.Tensor]:
        b, k_layers, t = video.shape[:3]
        n_frames = video_mask.sum(dim=1)  # (B,)
        pe = sinusoidal_positions(n_frames, t, self.cfg.hidden)  # (B, T, C)
        tef = temporal_endpoint_feature(n_frames, t)[:, :, None].expand(-1, -1, video.size(3), -1)  # (B, T, P+1, 2)
        frame_keep = video_mask[:, :, None, None]  # (B, T, 1, 1)
        token_keep = query_mask[:, :, None]  # (B, L, 1)

        video_cls, query_maps = [None] * k_layers, [None] * k_layers
        h = None
        for k in reversed(range(k_layers)):  # deepest tapped layer first (SPEC §3)
            frames = torch.where(frame_keep, video[:, k].float(), 0.0)  # (B, T, P+1, Dv): padding reads as zeros
            if self.cfg.tef:
                frames = torch.cat((frames, tef), dim=-1)  # (B, T, P+1, Dv+2)
            v = self.video_map(frames)  # (B, T, P+1, C)
            q = self.query_map(torch.where(token_keep, query[:, k].float(), 0.0))  # (B, L, C)
            video_cls[k], query_maps[k] = v[:, :, 0], q
            f = v[:, :, 0] + self.scale[k].tanh() * self.spatial_pool(v, q, query_mask)  # (B, T, C)
            if h is not None:
                g = self.gate[k].sigmoid()
                f = g * f + (1 - g) * h
            h = self.temporal(f, video_mask, q, query_mask, pe)
        return {"hidden": h, "video_cls": torch.stack(video_cls, dim=1), "query_maps": torch.stack(query_maps, dim=1)}
