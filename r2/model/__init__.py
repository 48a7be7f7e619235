"""The R² model on cached CLIP taps: `R2Model(cfg)(video, video_mask, query, query_mask) -> dict`."""
from r2.model.config import DATASETS, R2Config, config_for
from r2.model.r2 import R2Model

__all__ = ["R2Model", "R2Config", "config_for", "DATASETS"]
