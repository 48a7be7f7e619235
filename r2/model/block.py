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
  The constant terms are still added to the logits, so b_v and b2 keep their (analytically zero) gradients;
  * `TokenMap` fuses video_map's ReLU -> LayerNorm(C) -> Dropout and `SpatialPool` the pooling's two token
    contractions with the [CLS] row, so that the backward allocates two (rows × C) gradients per step instead of
    autograd's one per module and per contraction, the [CLS] select's zero-filled one and their sums;
  * the dropout masks are saved as their random words (`keep_words`: one bit an entry at p = 0.5) and expanded
    when needed, and every (rows × E) temporary that does not leave a forward or backward call lives in a
    `Workspace` that is reused across layers and steps: on CPU a fresh large tensor costs more in page faults
    than the elementwise pass that fills it.
Both paths draw their dropout masks from `keep_words` in the same order, so with the same seed they train the same.
Under torch.compile the plain path is traced whatever `fast` says: inductor fuses its elementwise chains itself, and
the fast path's Functions read per-sample lengths on the host and keep Python-side scratch memory (`Workspace`),
which would break the graph.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2.model.config import R2Config

__all__ = ["R2Block", "TemporalLayer", "MultiHeadAttention", "DropPath", "Dropout", "FeatureInput", "TokenMap",
           "SpatialPool", "Workspace", "keep_mask", "keep_words", "keep_values", "torch_dropout",
           "temporal_endpoint_feature", "sinusoidal_positions"]

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


def keep_words(n: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The random draw behind an n-entry keep mask (`keep_mask`): int32 words from 63-bit draws of torch's generator.

    p = 0.5: ceil(n / 31) words, one random bit per entry (n / 8 bytes: cheap to keep for backward); other p: n words.
    """
    words = -(-n // 31) if 1.0 - p == 0.5 else n
    if torch.compiler.is_compiling():  # dynamo cannot trace random_; bits 0..30 of each word are all that is read
        return torch.randint(0, 2 ** 31, (words,), dtype=torch.int32, device=device)
    return torch.empty(-(-words // 2), dtype=torch.int64, device=device).random_().view(torch.int32)[:words]


def keep_values(words: torch.Tensor, n: int, p: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """The inverted-dropout multiplier of `keep_words(n, p)`: float32, flat; its first n entries are the mask.

    Integer ops only (CPU `bernoulli_` costs ~17 ns an entry, this ~0.3 ns at p = 0.5 and ~4 ns otherwise). p = 0.5:
    bits 0..30 of word i are entries i, words + i, ..., 30·words + i, exact. Other p: entry i is kept iff the low 31
    bits of word i are below round((1-p)·2^31), so P(keep) is within 2^-32 of 1-p (torch's float bernoulli draws
    24 bits). The value 1/(1-p) is written as its float32 bit pattern, so it is exact; that pattern is a 0-d tensor,
    not a Python int, because torch.compile turns p into a symbolic float once it has seen two values of it (a
    sweep of --dropout in one process), and a symbolic float has no bit pattern in Python. `out` (int32, at least
    31·len(words) entries at p = 0.5, else len(words)) is written instead of a new tensor (`Workspace`).
    """
    keep = 1.0 - p
    scale_bits = torch.full((), 1.0 / keep, dtype=torch.float32, device=words.device).view(torch.int32)  # () bits
    if keep == 0.5:
        shift = (30 - torch.arange(31, dtype=torch.int32, device=words.device))[:, None]  # (31, 1)
        size = (31, words.numel())
        target = out.view(-1)[:math.prod(size)].view(size) if out is not None else None
        bits = torch.bitwise_left_shift(words[None, :], shift, out=target)  # (31, words): bit 30 = the draw
        bits.bitwise_and_(scale_bits)  # 2.0 or 0.0 as float32 bits
    else:  # one 31-bit uniform per entry: keep iff it is below the threshold
        target = out.view(-1)[:words.numel()] if out is not None else None
        bits = torch.bitwise_and(words, 0x7FFFFFFF, out=target)
        bits.sub_(round(keep * 2 ** 31)).bitwise_right_shift_(31).bitwise_and_(scale_bits)
    return bits.view(-1).view(torch.float32)[:n]


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverted-dropout multiplier of `shape`: each entry independently 1/(1-p) with probability 1-p, else 0
    (`keep_words` then `keep_values`)."""
    n = math.prod(shape)
    return keep_values(keep_words(n, p, device), n, p)[:n].view(shape).to(dtype)


class Workspace:
    """Scratch memory reused across calls: one flat buffer per name, grown when a call needs more.

    A fresh large CPU tensor is expensive: the kernel faults in and zeroes every new page (measured on the 2-core
    benchmark VM: ~1.5 ms per MB, against ~0.2 ms per MB to overwrite memory that is already mapped; glibc maps
    every block over 32 MB anew and unmaps it on free). The fast path's (rows × E) temporaries live only within one
    forward or one backward call, so they take their memory from here. A buffer is valid until the next `get` of
    the same name; no caller lets one escape its call. One per R2Block (a model runs one step at a time); it holds
    the largest request per name for the model's lifetime (~1 GB at the QVHighlights shape, batch 32: less than the
    float masks the fast path saved before). Scratch, not state: a deep copy starts empty.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def __deepcopy__(self, memo) -> "Workspace":
        return Workspace()

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat tensor of at least `numel` entries of `dtype` on `device` (contents undefined)."""
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        buf = self._buffers.get(name)
        if buf is None or buf.device != device or buf.numel() < nbytes:
            buf = self._buffers[name] = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return buf[:nbytes].view(dtype)


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
    as zeros) or None (no padding), tef (B, T, 2) or None, LayerNorm weight/bias (E,), Linear weight (C, E) / bias
    (C,), words: `keep_words` of the (B, T, P+1, E) dropout mask with probability p, or None (eval / p = 0), eps,
    a `Workspace`. E = Dv + 2 with a TEF, else Dv. -> z (B, T, P+1, C) (the autocast dtype under autocast, like
    nn.Linear; else float32).

    Forward: one fp32 workspace buffer (rows × E) holds x, then x - mean, then the normalised rows, then the affine
    and the mask, and feeds the GEMM; the TEF columns' contribution to mean and variance is added analytically
    (two-pass: mean first, then the centred sum of squares). The mask is expanded from its random words into a
    second workspace buffer; only the words are saved (n/8 bytes at p = 0.5). Backward: with u = mask ⊙ x̂ rebuilt
    in the first buffer from x, A1 = Gᵀu and A2 = Gᵀmask (Gᵀ1 without a mask) give dW = A1·γ + A2·β,
    dγ = Σ_c W ⊙ A1, dβ = Σ_c W ⊙ A2 — the same gradients as autograd through LN -> Dropout -> Linear, with two
    (C × E) products instead of the (rows × E) input gradient, and no (rows × E) tensor allocated.
    """

    @staticmethod
    def _normalised(x, n_frames, tef, eps, workspace, mean=None, rstd=None):
        """fp32 (B, T, P, E) workspace view of x̂ = (x - mean) * rstd (TEF columns included); computes mean/rstd
        if None."""
        b, t, p, d = x.shape
        e = d + (2 if tef is not None else 0)
        y = workspace.get("rows", b * t * p * e, torch.float32, x.device).view(b, t, p, e)
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
    def _mask(words, p, shape, workspace, device):
        """The dropout multiplier (B, T, P, E) of `words`, expanded into the workspace's "mask" buffer."""
        n = math.prod(shape)
        size = 31 * words.numel() if 1.0 - p == 0.5 else n
        return keep_values(words, n, p, out=workspace.get("mask", size, torch.int32, device)).view(shape)

    @staticmethod
    def _low_precision(rows, amp, workspace):
        """rows (R, E) fp32 -> the autocast dtype, in the workspace's "rows_amp" buffer."""
        out = workspace.get("rows_amp", rows.numel(), amp, rows.device).view(rows.shape)
        return out.copy_(rows)

    @staticmethod
    def forward(ctx, x, n_frames, tef, gamma, beta, weight, bias, words, p, eps, workspace):
        amp = _amp_dtype(x.device)
        y, mean, rstd = FeatureInput._normalised(x, n_frames, tef, eps, workspace)
        torch.addcmul(beta.float(), y, gamma.float(), out=y)  # x̂·γ + β, in place
        if words is not None:
            y.mul_(FeatureInput._mask(words, p, y.shape, workspace, x.device))
        rows = y.view(-1, y.size(-1))  # (R, E)
        with torch.autocast(x.device.type, enabled=False):
            if amp is None:
                z = torch.addmm(bias.float(), rows, weight.float().t())
            else:
                z = torch.addmm(bias.to(amp), FeatureInput._low_precision(rows, amp, workspace), weight.to(amp).t())
        ctx.save_for_backward(x, n_frames, tef, gamma, beta, weight, words, mean, rstd)
        ctx.eps, ctx.p, ctx.amp, ctx.workspace = eps, p, amp, workspace
        return z.view(*x.shape[:3], -1)

    @staticmethod
    def backward(ctx, grad):
        x, n_frames, tef, gamma, beta, weight, words, mean, rstd = ctx.saved_tensors
        need_gamma, need_beta, need_w, need_b = ctx.needs_input_grad[3:7]
        g = grad.reshape(-1, grad.size(-1))  # (R, C)
        dtype, ws = ctx.amp or torch.float32, ctx.workspace
        with torch.autocast(x.device.type, enabled=False):
            g = g.to(dtype)
            d_bias = g.float().sum(dim=0) if need_b else None
            d_gamma = d_beta = d_weight = None
            if need_gamma or need_beta or need_w:
                u, _, _ = FeatureInput._normalised(x, n_frames, tef, ctx.eps, ws, mean, rstd)
                mask = FeatureInput._mask(words, ctx.p, u.shape, ws, x.device) if words is not None else None
                if mask is not None:
                    u.mul_(mask)
                e = u.size(-1)
                rows = u.view(-1, e)  # (R, E)
                a1 = (g.t() @ (rows if ctx.amp is None else FeatureInput._low_precision(rows, dtype, ws))).float()
                if mask is not None:  # (C, E) = Gᵀ(mask ⊙ x̂), Gᵀ mask
                    rows = mask.view(-1, e)
                    a2 = (g.t() @ (rows if ctx.amp is None else FeatureInput._low_precision(rows, dtype, ws))).float()
                else:
                    a2 = g.float().sum(dim=0)[:, None]  # (C, 1) = Gᵀ1
                w = weight.float()
                d_weight = a1 * gamma.float() + a2 * beta.float() if need_w else None
                d_gamma = (w * a1).sum(dim=0) if need_gamma else None
                d_beta = (w * a2).sum(dim=0) if need_beta else None
        return None, None, None, d_gamma, d_beta, d_weight, d_bias, None, None, None, None


class TokenMap(torch.autograd.Function):
    """y = mask ⊙ LayerNorm(ReLU(z)) on every token row: video_map's middle (ReLU -> LN -> Dropout), fused.

    z (B, T, P+1, C) the first Linear's output (`FeatureInput`), LayerNorm weight/bias (C,), words: `keep_words` of
    the (B, T, P+1, C) mask with probability p, or None, eps, a `Workspace`. -> y (B, T, P+1, C) float32 (as the
    plain path: LayerNorm runs in fp32 under autocast).

    Autograd through the three modules keeps ReLU(z), the LN output's input and the float mask, and allocates three
    (rows × C) gradients; this saves z (already allocated by the GEMM) and the mask's random words, recomputes
    ReLU(z) into the workspace, and allocates only dz. LayerNorm forward/backward are torch's own kernels
    (native_layer_norm[_backward]), so the values are the plain path's.
    """

    @staticmethod
    def _relu(z, workspace):
        """ReLU(z) in fp32, in the workspace's "act" buffer (one pass when z is fp32)."""
        act = workspace.get("act", z.numel(), torch.float32, z.device).view(z.shape)
        return torch.clamp_min(z, 0, out=act) if z.dtype == torch.float32 else act.copy_(z).clamp_min_(0)

    @staticmethod
    def forward(ctx, z, gamma, beta, words, p, eps, workspace):
        c = z.size(-1)
        act = TokenMap._relu(z, workspace)
        y, mean, rstd = torch.native_layer_norm(act, (c,), gamma.float(), beta.float(), eps)
        if words is not None:
            y.mul_(FeatureInput._mask(words, p, y.shape, workspace, z.device))
        ctx.save_for_backward(z, gamma, beta, words, mean, rstd)
        ctx.p, ctx.eps, ctx.workspace = p, eps, workspace
        return y

    @staticmethod
    def backward(ctx, grad):
        z, gamma, beta, words, mean, rstd = ctx.saved_tensors
        ws = ctx.workspace
        if words is not None:  # through the dropout: dn = mask ⊙ dy
            mask = FeatureInput._mask(words, ctx.p, grad.shape, ws, z.device)
            grad = torch.mul(grad, mask, out=ws.get("grad", grad.numel(), torch.float32, z.device).view(grad.shape))
        act = TokenMap._relu(z, ws)
        d_act, d_gamma, d_beta = torch.ops.aten.native_layer_norm_backward(
            grad, act, (z.size(-1),), mean, rstd, gamma.float(), beta.float(), list(ctx.needs_input_grad[:3]))
        if d_act is not None:  # ReLU'(z), in place: the plain path's threshold_backward (0 at z = 0)
            torch.ops.aten.threshold_backward.grad_input(d_act, z.to(d_act.dtype), 0.0, grad_input=d_act)
        return d_act, d_gamma, d_beta, None, None, None, None


class SpatialPool(torch.autograd.Function):
    """The two token contractions of the rewritten spatial pooling, fused, with the [CLS] row (SPEC §3, eq. 4-5).

    y (B, T, P+1, C) video_map's rows before its last Linear, q2 (B, L, C) = (W_q q + b_q) W_v W2, const (B, L)
    (the logits' term that is the same for every token). -> y_cls (B, T, C) = y[:, :, 0] and pooled (B, T, L, C)
    = A·y with A = softmax_p((q2·y_p + const) / sqrt(C)) (B, T, L, P+1).

    Autograd through the two einsums and the [CLS] select gives y three (rows × C) gradients (two bmm outputs and
    a zero-filled select gradient) and adds them; this backward writes the one dy in place — dy = dlogits q2 (a
    bmm into dy), += Aᵀ d_pooled (baddbmm_ into dy), += d_cls on the [CLS] rows — and saves only y, q2 and A.
    """

    @staticmethod
    def forward(ctx, y, q2, const):
        b, t, p, c = y.shape
        l = q2.size(1)
        scores = torch.bmm(q2, y.view(b, t * p, c).transpose(1, 2))  # (B, L, T·(P+1)): q2·y_p for every frame
        logits = (scores.view(b, l, t, p) + const[:, :, None, None]) / math.sqrt(c)  # (B, L, T, P+1)
        attn = logits.softmax(dim=-1).transpose(1, 2).contiguous()  # (B, L, T, P+1) -> (B, T, L, P+1)
        pooled = torch.bmm(attn.view(b * t, l, p), y.view(b * t, p, c)).view(b, t, l, c)  # (B·T, L, C) -> (B, T, L, C)
        ctx.save_for_backward(y, q2, attn)
        return y[:, :, 0].contiguous(), pooled

    @staticmethod
    def backward(ctx, d_cls, d_pooled):
        y, q2, attn = ctx.saved_tensors
        b, t, p, c = y.shape
        l = q2.size(1)
        # in y's dtype (fp32 under AMP too, where q2 and pooled are the autocast dtype)
        q2, attn, d_pooled, d_cls = (x.to(y.dtype) for x in (q2, attn, d_pooled, d_cls))
        d_pooled = d_pooled.reshape(b * t, l, c)  # (B·T, L, C)
        d_attn = torch.bmm(d_pooled, y.view(b * t, p, c).transpose(1, 2)).view(b, t, l, p)  # (B, T, L, P+1)
        d_logits = attn * (d_attn - (attn * d_attn).sum(dim=-1, keepdim=True)) / math.sqrt(c)  # softmax backward
        d_const = d_logits.sum(dim=(1, 3))  # (B, L)
        d_scores = d_logits.transpose(1, 2).reshape(b, l, t * p)  # (B, T, L, P+1) -> (B, L, T·(P+1))
        d_q2 = torch.bmm(d_scores, y.view(b, t * p, c))  # (B, L, C)
        dy = torch.bmm(d_scores.transpose(1, 2), q2)  # (B, T·(P+1), C) = dscoresᵀ q2
        dy = dy.view(b * t, p, c)  # (B·T, P+1, C)
        dy.baddbmm_(attn.view(b * t, l, p).transpose(1, 2), d_pooled)  # += Aᵀ d_pooled
        dy = dy.view(b, t, p, c)
        dy[:, :, 0] += d_cls
        return dy, d_q2, d_const


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
        self.workspace = Workspace()  # the fast path's scratch memory (not state: not saved, not copied to a device)

    def spatial_pool(self, v: torch.Tensor, q: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Query-modulated spatial pooling (paper eq. 4-5), before the tanh(scale) weighting.

        v (B, T, P+1, C) mapped visual tokens, q (B, L, C) mapped query tokens -> e_token (B, T, C):
        per frame, A = softmax over tokens of (W_q q)(W_v v)^T / sqrt(C); o = A v + q; max over real query tokens.
        """
        logits = torch.einsum("blc,btpc->btlp", self.w_q(q), self.w_v(v)) / math.sqrt(v.size(-1))  # (B, T, L, P+1)
        o = torch.einsum("btlp,btpc->btlc", logits.softmax(dim=-1), v) + q[:, None]  # (B, T, L, C)
        o = o.masked_fill(~query_mask[:, None, :, None], torch.finfo(o.dtype).min)
        return o.amax(dim=2)  # (B, T, C)

    def spatial_pool_fast(self, y: torch.Tensor, q: torch.Tensor,
                          query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`spatial_pool` on v = W2 y + b2 (W2, b2: video_map's last Linear) without computing v for every token.

        y (B, T, P+1, C) video_map's input to that Linear, q (B, L, C) -> (v[:, :, 0] (B, T, C), e_token (B, T, C)).
        Exact rewrite (module docstring): logits = ((W_q q + b_q) W_v W2)·y_p + const_l, A·v = (A·y) W2ᵀ + b2.
        """
        last = self.video_map[6]
        qk = self.w_q(q)  # (B, L, C)
        q1 = qk @ self.w_v.weight  # (B, L, C): W_vᵀ applied to each query row
        q2 = q1 @ last.weight  # (B, L, C)
        const = qk @ self.w_v.bias + q1 @ last.bias  # (B, L): the same for every token p, softmax drops it
        y_cls, pooled = SpatialPool.apply(y, q2, const)  # (B, T, C), (B, T, L, C) = A·y
        o = last(pooled) + q[:, None]  # (B, T, L, C) = A·v + q
        o = o.masked_fill(~query_mask[:, None, :, None], torch.finfo(o.dtype).min)
        return last(y_cls), o.amax(dim=2)  # (B, T, C) each

    def _video_step_fast(self, x: torch.Tensor, n_frames: torch.Tensor | None,
                         tef: torch.Tensor | None) -> torch.Tensor:
        """video_map up to (not including) its last Linear: x (B, T, P+1, Dv) -> y (B, T, P+1, C).

        `FeatureInput` (LN -> Dropout -> Linear) then `TokenMap` (ReLU -> LN -> Dropout); the two masks are drawn
        in the plain path's order (its two Dropout modules)."""
        norm, drop, linear, norm2, drop2 = (self.video_map[i] for i in (0, 1, 2, 4, 5))
        train = self.training and drop.p > 0
        e = x.size(-1) + (2 if tef is not None else 0)
        words = keep_words(math.prod((*x.shape[:3], e)), drop.p, x.device) if train else None
        z = FeatureInput.apply(x, n_frames, tef, norm.weight, norm.bias, linear.weight, linear.bias, words, drop.p,
                               norm.eps, self.workspace)  # (B, T, P+1, C)
        words = keep_words(z.numel(), drop2.p, z.device) if self.training and drop2.p > 0 else None
        return TokenMap.apply(z, norm2.weight, norm2.bias, words, drop2.p, norm2.eps, self.workspace)

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """video (B, K, T, P+1, Dv), video_mask (B, T), query (B, K, L, Dq), query_mask (B, L), K index 0 shallowest.

        Returns `hidden` h (B, T, C) after the last (shallowest) step, `video_cls` (B, K, T, C) and `query_maps`
        (B, K, L, C): each step's mapped [CLS] row and query tokens, in layer order.
        """
        if self.fast and not torch.compiler.is_compiling():
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
            cls, pooled = self.spatial_pool_fast(y, q, query_mask)  # (B, T, C) = v[:, :, 0], e_token
            video_cls[k], query_maps[k] = cls, q
            f = cls + self.scale[k].tanh() * pooled  # (B, T, C)
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
