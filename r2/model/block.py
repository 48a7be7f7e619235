"""The R² Block (SPEC §3, paper §3.3): query-modulated spatial pooling and recurrent temporal refinement.

Inputs are the raw CLIP residual streams of K tapped layers; one set of weights is applied K times, from the
deepest tapped layer to the shallowest, refining a hidden state h of one C-vector per frame.
"""
import math

import torch
import torch.nn as nn

from r2.model.config import R2Config

__all__ = ["R2Block", "TemporalLayer", "MultiHeadAttention", "DropPath", "temporal_endpoint_feature",
           "sinusoidal_positions"]


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
    return nn.Sequential(nn.LayerNorm(in_dims), nn.Dropout(dropout), nn.Linear(in_dims, dims), nn.ReLU(),
                         nn.LayerNorm(dims), nn.Dropout(dropout), nn.Linear(dims, dims))


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

    def spatial_pool(self, v: torch.Tensor, q: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Query-modulated spatial pooling (paper eq. 4-5), before the tanh(scale) weighting.

        v (B, T, P+1, C) mapped visual tokens, q (B, L, C) mapped query tokens -> e_token (B, T, C):
        per frame, A = softmax over tokens of (W_q q)(W_v v)^T / sqrt(C); o = A v + q; max over real query tokens.
        """
        logits = torch.einsum("blc,btpc->btlp", self.w_q(q), self.w_v(v)) / math.sqrt(v.size(-1))  # (B, T, L, P+1)
        o = torch.einsum("btlp,btpc->btlc", logits.softmax(dim=-1), v) + q[:, None]  # (B, T, L, C)
        o = o.masked_fill(~query_mask[:, None, :, None], torch.finfo(o.dtype).min)
        return o.amax(dim=2)  # (B, T, C)

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """video (B, K, T, P+1, Dv), video_mask (B, T), query (B, K, L, Dq), query_mask (B, L), K index 0 shallowest.

        Returns `hidden` h (B, T, C) after the last (shallowest) step, `video_cls` (B, K, T, C) and `query_maps`
        (B, K, L, C): each step's mapped [CLS] row and query tokens, in layer order.
        """
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
