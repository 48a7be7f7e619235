"""Configuration of the R² model (SPEC §3): one dataclass, and the per-dataset variant read from the recipe."""
from dataclasses import dataclass

from r2.recipes import DATASETS, recipe

__all__ = ["R2Config", "config_for", "DATASETS"]


@dataclass(frozen=True)
class R2Config:
    video_dim: int  # Dv: width of the CLIP visual residual stream (768 for ViT-B/32)
    query_dim: int  # Dq: width of the CLIP text residual stream (512 for ViT-B/32)
    tokens: int  # P+1: visual tokens per frame, [CLS] first (50 for ViT-B/32 at 224 px)
    layers: int  # K: number of tapped CLIP layers = recurrent steps of the R² Block
    hidden: int = 256  # C: hidden size of the R² Block, pyramid and heads
    heads: int = 8  # attention heads of the temporal layer
    ffn_ratio: int = 4  # FFN hidden width = ffn_ratio * C
    dropout: float = 0.5  # dropout inside video_map / query_map
    droppath: float = 0.1  # DropPath on each residual branch of the temporal layer
    tef: bool = True  # append the temporal endpoint feature [t/T, (t+1)/T] to every video token
    strides: tuple[int, ...] = (1, 2, 4, 8)  # temporal pyramid strides, powers of two, ascending
    boundary: bool = True  # build the boundary-regression head (False for TVSum / YouTube)

    def __post_init__(self):
        for name in ("video_dim", "query_dim", "tokens", "layers", "hidden", "heads", "ffn_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"R2Config.{name} = {getattr(self, name)}: must be a positive integer")
        if self.hidden % self.heads or self.hidden % 2:
            raise ValueError(f"R2Config.hidden = {self.hidden}: must be even (sin/cos pairs) and divisible by "
                             f"heads = {self.heads}")
        if not self.strides or any(s < 1 or s & (s - 1) for s in self.strides) or list(self.strides) != sorted(
            set(self.strides)
        ):
            raise ValueError(f"R2Config.strides = {self.strides}: need distinct ascending powers of two (e.g. 1,2,4,8)")


def config_for(dataset: str, video_dim: int, query_dim: int, tokens: int, layers: int) -> R2Config:
    """The SPEC §3 model variant for `dataset` (its recipe's dropout; highlight-only sets: no TEF, a single
    pyramid level, no boundary head); the dimensions come from the feature cache."""
    r = recipe(dataset)
    dims = dict(video_dim=video_dim, query_dim=query_dim, tokens=tokens, layers=layers, dropout=r.dropout)
    if r.highlight_only:
        return R2Config(**dims, tef=False, strides=(1,), boundary=False)
    return R2Config(**dims)
