"""Training and evaluation samples served from the feature cache, padded and masked in `collate`."""
from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from r2 import datasets
from r2.cache import Cache
from r2.targets import clean_windows

MIN_TRAIN_SECONDS = 5.0  # SPEC §4: videos shorter than this are dropped from training


class Preloaded:
    """The features a dataset needs, read once into memory (RAM, or GPU memory with device="cuda").

    Same read API as `Cache` (video / query / num_frames / video_info), so the dataset does not care which.
    """

    def __init__(self, cache: Cache, vids: list[str], texts: list[str], device: str | torch.device = "cpu"):
        start = time.time()
        self.cache = cache
        self._videos = {v: torch.from_numpy(cache.video(v)).to(device) for v in vids}
        self._queries = {t: torch.from_numpy(cache.query(t)).to(device) for t in texts}
        self.nbytes = sum(x.numel() * x.element_size() for d in (self._videos, self._queries) for x in d.values())
        self.seconds = time.time() - start

    @classmethod
    def whole(cls, cache: Cache, device: str | torch.device = "cpu") -> "Preloaded":
        """Every video and query text of the cache."""
        return cls(cache, cache.videos, cache.texts, device)

    def video(self, vid: str) -> torch.Tensor:
        return self._videos[vid]

    def query(self, text: str) -> torch.Tensor:
        return self._queries[text]

    def num_frames(self, vid: str) -> int:
        return self.cache.num_frames(vid)

    def video_info(self, vid: str) -> tuple[float, float]:
        return self.cache.video_info(vid)


@dataclass
class Sample:
    index: int  # position in the dataset's record list
    video: torch.Tensor  # (K, T, P+1, Dv) float16
    query: torch.Tensor  # (K, L, Dq) float16
    windows: torch.Tensor  # (n, 2) frames, cleaned (SPEC §4)
    saliency: torch.Tensor  # (T,) target in [0, 1]
    pos_frame: int  # the sampled positive frame
    fps: float
    duration: float  # seconds, as annotated (predictions are clamped to it)


class GroundingDataset(Dataset):
    """One item per (query, video) record of a split whose features are in the cache.

    Records whose video or query has no features (a video that failed to decode, an extraction still running)
    are left out and counted in `missing`. A small per-worker LRU keeps recently read videos, so the queries of a
    video read close together (evaluation order, or QVHighlights' several queries per clip) cost one read.
    """

    def __init__(self, cache: Cache, split: str, *, train: bool, source: Cache | Preloaded | None = None,
                 lru_videos: int = 8):
        self.cache = cache
        self.info = datasets.dataset_info(cache.dataset)
        self.source = source if source is not None else cache
        self.train = train
        self.seed = 0  # with the index, decides the sampled positive frame: the trainer sets seed * 1000 + epoch
        self.split = split
        records = [datasets.Record.from_json(d) for d in cache.records(split)]
        usable = [r for r in records if cache.has_video(r.vid) and cache.has_query(r.query)]
        self.missing = len(records) - len(usable)
        long_enough = [r for r in usable if not train or cache.video_info(r.vid)[0] >= MIN_TRAIN_SECONDS]
        self.short = len(usable) - len(long_enough)  # records SPEC §4 drops from training: say so, not silently
        if self.short:
            r = next(r for r in usable if cache.video_info(r.vid)[0] < MIN_TRAIN_SECONDS)
            warnings.warn(f"{cache.entry} split {split!r}: {self.short} of {len(usable)} records left out of "
                          f"training: their videos are shorter than {MIN_TRAIN_SECONDS:g} s (SPEC §4), e.g. "
                          f"{r.vid!r} ({cache.video_info(r.vid)[0]:g} s)")
        usable = long_enough
        self.records, self.unusable = [], []
        for r in usable:  # e.g. a truncated video kept with fewer frames than its annotated clips
            try:
                datasets.saliency_target(self.info, r, cache.num_frames(r.vid))
            except ValueError as e:
                self.unusable.append(f"{r.qid}: {e}")
                continue
            self.records.append(r)
        if self.unusable:
            warnings.warn(f"{cache.entry} split {split!r}: {len(self.unusable)} records left out, first: "
                          f"{self.unusable[0]}")
        self.lru_videos = lru_videos
        self._lru: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def _video(self, vid: str) -> torch.Tensor:
        if vid in self._lru:
            self._lru.move_to_end(vid)
            return self._lru[vid]
        feats = self.source.video(vid)
        feats = torch.from_numpy(feats) if isinstance(feats, np.ndarray) else feats  # (T, K, P+1, Dv)
        feats = feats.transpose(0, 1)  # (T, K, P+1, Dv) -> (K, T, P+1, Dv)
        self._lru[vid] = feats
        if len(self._lru) > self.lru_videos:
            self._lru.popitem(last=False)
        return feats

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        video = self._video(record.vid)
        query = self.source.query(record.query)
        query = torch.from_numpy(query) if isinstance(query, np.ndarray) else query
        query = query.transpose(0, 1)  # (L, K, Dq) -> (K, L, Dq)
        n_frames = video.shape[1]
        fps = self.cache.video_info(record.vid)[1]
        saliency = torch.as_tensor(datasets.saliency_target(self.info, record, n_frames), dtype=torch.float32)
        return Sample(
            index=index, video=video, query=query,
            windows=clean_windows(record.windows, n_frames, fps),
            saliency=saliency, pos_frame=positive_frame(saliency, self.info.saliency, self.seed * 100_003 + index), fps=fps,
            duration=record.duration,
        )

    def vids_and_texts(self) -> tuple[list[str], list[str]]:
        return sorted({r.vid for r in self.records}), sorted({r.query for r in self.records})


def positive_frame(saliency: torch.Tensor, kind: str, seed: int) -> int:
    """SPEC §4: one frame drawn uniformly among the positives (saliency > 0; TVSum above the median; YouTube >
    0.5). A sample without any positive frame uses its most salient frame. The draw depends on `seed` alone (not
    on a process's RNG), so workers, ranks and resumed runs all draw the same frame for the same sample."""
    if kind == "tvsum":
        positive = saliency > saliency.median()
    elif kind == "youtube":
        positive = saliency > 0.5
    else:
        positive = saliency > 0
    candidates = positive.nonzero().flatten()
    if len(candidates) == 0:
        return int(saliency.argmax())
    generator = torch.Generator().manual_seed(seed)
    return int(candidates[torch.randint(len(candidates), (), generator=generator)])


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Shuffled global batches of `batch_size`, each split across `world` ranks; this rank yields its part.

    Every rank draws the same permutation (from `seed`), so one process with batch B and N processes with B / N
    each see the same global batches. A last global batch smaller than the number of ranks is dropped when
    world > 1 (a rank without samples would stall the others)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def _batches(self) -> list[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        out = []
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) < self.world:
                continue
            per_rank = [batch[i::self.world] for i in range(self.world)]  # as even as possible
            out.append(per_rank[self.rank])
        return out

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def collate(samples: list[Sample]) -> dict:
    """Pad a list of samples to the longest video and query; masks mark the real frames and tokens."""
    b = len(samples)
    k, _, p, dv = samples[0].video.shape
    dq = samples[0].query.shape[-1]
    t = max(s.video.shape[1] for s in samples)
    length = max(s.query.shape[1] for s in samples)
    video = samples[0].video.new_zeros(b, k, t, p, dv)  # (B, K, T, P+1, Dv)
    query = samples[0].query.new_zeros(b, k, length, dq)  # (B, K, L, Dq)
    video_mask = torch.zeros(b, t, dtype=torch.bool)
    query_mask = torch.zeros(b, length, dtype=torch.bool)
    saliency = torch.zeros(b, t)
    for i, s in enumerate(samples):
        n, l = s.video.shape[1], s.query.shape[1]
        video[i, :, :n] = s.video
        query[i, :, :l] = s.query
        video_mask[i, :n] = True
        query_mask[i, :l] = True
        saliency[i, :n] = s.saliency
    return {
        "video": video, "video_mask": video_mask, "query": query, "query_mask": query_mask,
        "saliency": saliency,
        "pos_frame": torch.tensor([s.pos_frame for s in samples]),
        "windows": [s.windows for s in samples],
        "n_frames": video_mask.sum(1),
        "fps": torch.tensor([s.fps for s in samples], dtype=torch.float32),
        "duration": torch.tensor([s.duration for s in samples], dtype=torch.float32),
        "index": torch.tensor([s.index for s in samples]),
    }


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    return out
