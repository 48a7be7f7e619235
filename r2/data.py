"""Training and evaluation samples served from the feature cache, padded and masked in `collate`.

Features travel in their stored format: a compact cache's int8 / fp8 codes and their float16 scales go through the
dataset, the DataLoader workers and `collate` as they are (`video_scale` / `query_scale` in the batch), and
`to_device` decodes them to float16 on the training device (`dequantize`), so a batch crosses processes and the
host-to-device copy at half the bytes. `DeviceFeatures` keeps a whole split resident on one device (in its stored
format) and builds the same batches by indexing, without DataLoader workers.
"""
from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from r2 import datasets
from r2.cache import Cache
from r2.errors import OFF, R2Error
from r2.targets import clean_windows

MIN_TRAIN_SECONDS = 5.0  # SPEC §4: videos shorter than this are dropped from training
PRELOAD_CHOICES = (OFF, "cpu", "cuda", "auto")  # where `resident_features` keeps a split's features
HEADROOM_BYTES = 1 << 30  # left free beside resident features: the model, its optimizer and a batch's activations


def dequantize(stored: torch.Tensor, scales: torch.Tensor | None, kind: str) -> torch.Tensor:
    """float16 features from a compact store's codes and scales, on whatever device they are; the same values as
    `r2.cache.dequantize` (codes x scale in float32, exact, rounded once to float16). fp16 features (scales None)
    are returned as they are.

    kind "video": stored (..., T, P+1, Dv) with scales (..., Dv), one per (layer, channel): e.g. (B, K, T, P+1, Dv)
    and (B, K, Dv). kind "query": stored (..., L, Dq) with scales (..., L), one per (layer, token): (B, K, L, Dq)
    and (B, K, L). uint8 codes are float8_e4m3fn bit patterns, int8 codes integers."""
    if scales is None:
        return stored
    values = stored.view(torch.float8_e4m3fn).float() if stored.dtype == torch.uint8 else stored.float()
    scales = scales.float()
    scales = scales[..., None, None, :] if kind == "video" else scales[..., None]  # broadcast over tokens / channels
    return (values * scales).half()


def _stored(pair: tuple[np.ndarray, np.ndarray | None], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    feats, scales = pair
    return torch.from_numpy(feats).to(device), None if scales is None else torch.from_numpy(scales).to(device)


class Preloaded:
    """The features a dataset needs, read once into memory (RAM, or GPU memory with device="cuda"), in the cache's
    stored format (a compact cache stays compact).

    Same read API as `Cache` (video / query / stored_video / stored_query / num_frames / video_info), so the
    dataset does not care which.
    """

    def __init__(self, cache: Cache, vids: list[str], texts: list[str], device: str | torch.device = "cpu"):
        start = time.time()
        self.cache = cache
        self._videos = {v: _stored(cache.stored_video(v), device) for v in vids}
        self._queries = {t: _stored(cache.stored_query(t), device) for t in texts}
        self.nbytes = sum(x.numel() * x.element_size() for d in (self._videos, self._queries) for pair in d.values()
                          for x in pair if x is not None)
        self.seconds = time.time() - start

    @classmethod
    def whole(cls, cache: Cache, device: str | torch.device = "cpu") -> "Preloaded":
        """Every video and query text of the cache."""
        return cls(cache, cache.videos, cache.texts, device)

    def video(self, vid: str) -> torch.Tensor:
        """float16 (T, K, P+1, Dv), decoded."""
        feats, scales = self._videos[vid]
        return dequantize(feats.transpose(0, 1), scales, "video").transpose(0, 1)  # via (K, T, P+1, Dv)

    def query(self, text: str) -> torch.Tensor:
        """float16 (L, K, Dq), decoded (its scales (L, K) broadcast over the channels as they are)."""
        return dequantize(*self._queries[text], "query")

    def stored_video(self, vid: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._videos[vid]

    def stored_query(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._queries[text]

    def num_frames(self, vid: str) -> int:
        return self.cache.num_frames(vid)

    def video_info(self, vid: str) -> tuple[float, float]:
        return self.cache.video_info(vid)


@dataclass
class Sample:
    index: int  # position in the dataset's record list
    video: torch.Tensor  # (K, T, P+1, Dv) in the stored dtype (float16, or int8 / uint8 codes)
    query: torch.Tensor  # (K, L, Dq) in the stored dtype
    windows: torch.Tensor  # (n, 2) frames, cleaned (SPEC §4)
    saliency: torch.Tensor  # (T,) target in [0, 1]
    pos_frame: int  # the sampled positive frame
    fps: float
    duration: float  # seconds, as annotated (predictions are clamped to it)
    video_scale: torch.Tensor | None = None  # (K, Dv) float16 scales of a compact store, else None
    query_scale: torch.Tensor | None = None  # (K, L) float16


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
        self._lru: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def _video(self, vid: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if vid in self._lru:
            self._lru.move_to_end(vid)
            return self._lru[vid]
        feats, scale = (_as_tensor(x) for x in self.source.stored_video(vid))  # (T, K, P+1, Dv), (K, Dv)
        feats = feats.transpose(0, 1)  # (T, K, P+1, Dv) -> (K, T, P+1, Dv)
        self._lru[vid] = feats, scale
        if len(self._lru) > self.lru_videos:
            self._lru.popitem(last=False)
        return feats, scale

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        video, video_scale = self._video(record.vid)
        query, query_scale = (_as_tensor(x) for x in self.source.stored_query(record.query))  # (L, K, Dq), (L, K)
        query = query.transpose(0, 1)  # (L, K, Dq) -> (K, L, Dq)
        query_scale = None if query_scale is None else query_scale.transpose(0, 1)  # (L, K) -> (K, L)
        n_frames = video.shape[1]
        fps = self.cache.video_info(record.vid)[1]
        saliency = torch.as_tensor(datasets.saliency_target(self.info, record, n_frames), dtype=torch.float32)
        return Sample(
            index=index, video=video, query=query,
            windows=clean_windows(record.windows, n_frames, fps),
            saliency=saliency, pos_frame=positive_frame(saliency, self.info.saliency, self.seed * 100_003 + index), fps=fps,
            duration=record.duration, video_scale=video_scale, query_scale=query_scale,
        )

    def vids_and_texts(self) -> tuple[list[str], list[str]]:
        return sorted({r.vid for r in self.records}), sorted({r.query for r in self.records})


def _as_tensor(x: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


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
    """Pad a list of samples to the longest video and query; masks mark the real frames and tokens. Features keep
    their stored dtype; a compact store's scales come along as `video_scale` (B, K, Dv) and `query_scale` (B, K, L)
    (zero for padded tokens), for `to_device` to decode."""
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
    scales = {}
    if samples[0].video_scale is not None:
        scales["video_scale"] = torch.stack([s.video_scale for s in samples])  # (B, K, Dv)
        query_scale = samples[0].query_scale.new_zeros(b, k, length)  # (B, K, L)
        for i, s in enumerate(samples):
            query_scale[i, :, :s.query_scale.shape[1]] = s.query_scale
        scales["query_scale"] = query_scale
    return {
        "video": video, "video_mask": video_mask, "query": query, "query_mask": query_mask, **scales,
        "saliency": saliency,
        "pos_frame": torch.tensor([s.pos_frame for s in samples]),
        "windows": [s.windows for s in samples],
        "n_frames": video_mask.sum(1),
        "fps": torch.tensor([s.fps for s in samples], dtype=torch.float32),
        "duration": torch.tensor([s.duration for s in samples], dtype=torch.float32),
        "index": torch.tensor([s.index for s in samples]),
    }


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch on `device`, a compact store's features decoded there to float16 (`dequantize`): the result has
    the keys and dtypes of an fp16 cache's batch, whatever the store."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    if "video_scale" in out:
        out["video"] = dequantize(out["video"], out.pop("video_scale"), "video")
        out["query"] = dequantize(out["query"], out.pop("query_scale"), "query")
    return out


# ----------------------------------------------------------------------------------------------- resident features


class ResidentMemoryError(R2Error):
    """A split's features do not fit in the memory of the device asked to hold them; the message says what to pass."""


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors: `torch.cuda.mem_get_info` on a GPU, MemAvailable of /proc/meminfo on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    raise R2Error("cannot read MemAvailable from /proc/meminfo to size --preload cpu; pass --preload none")


class DeviceFeatures:
    """Every feature a dataset uses, resident on one device in the cache's stored format, and batches built there
    by indexing (no DataLoader, no workers). `batch(indices)` equals `collate([dataset[i] for i in indices])` moved
    to the device: the same tensors, masks and positive frames (drawn from `dataset.seed` at call time), compact
    scales included, so `to_device` decodes both alike.

    Layout: all frames of all videos in one (N_frames + 1, K, P+1, Dv) tensor and all query tokens in one
    (N_tokens + 1, K, Dq) tensor; the extra last row is zeros, the row padded positions gather. Saliency targets
    are one (N_records' frames + 1,) float32 tensor laid out the same way.
    """

    def __init__(self, dataset: GroundingDataset, device: str | torch.device):
        start = time.time()
        self.dataset = dataset
        self.device = torch.device(device)
        cache, source = dataset.cache, dataset.source
        vids, texts = dataset.vids_and_texts()
        records = dataset.records
        k, p, dv, dq = len(cache.dims["layers"]), cache.dims["tokens"], cache.dims["video_dim"], cache.dims["query_dim"]
        store = cache.store
        code_bytes = np.dtype(store.storage).itemsize
        frames = sum(cache.num_frames(v) for v in vids)
        tokens = sum(cache.num_tokens(t) for t in texts)
        sal_rows = sum(cache.num_frames(r.vid) for r in records)
        needed = ((frames + 1) * k * p * dv + (tokens + 1) * k * dq) * code_bytes + (sal_rows + 1) * 4
        if store.compact:
            needed += ((len(vids) + 1) * k * dv + (tokens + 1) * k) * 2
        free = free_bytes(self.device)
        if needed + HEADROOM_BYTES > free:
            raise ResidentMemoryError(
                f"--preload {self.device.type}: the {dataset.split} split's features need {needed / 1e9:.2f} GB on "
                f"{self.device} ({store.name}, {len(vids)} videos, {frames} frames) plus {HEADROOM_BYTES / 1e9:.2f} "
                f"GB headroom, but {free / 1e9:.2f} GB are free; pass --preload none (stream from the cache)"
                + ("" if self.device.type == "cpu" else " or --preload cpu")
                + ("" if store.compact else ", or train on a compact copy (python -m r2.cache convert SRC DST "
                                            "--store int8: half the bytes)"))
        dtype = torch.from_numpy(np.zeros(0, store.storage)).dtype
        self.video = torch.zeros(frames + 1, k, p, dv, dtype=dtype, device=self.device)  # (N_frames + 1, K, P+1, Dv)
        self.query = torch.zeros(tokens + 1, k, dq, dtype=dtype, device=self.device)  # (N_tokens + 1, K, Dq)
        self.video_scale = torch.zeros(len(vids) + 1, k, dv, dtype=torch.float16, device=self.device) \
            if store.compact else None  # (N_videos + 1, K, Dv)
        self.query_scale = torch.zeros(tokens + 1, k, dtype=torch.float16, device=self.device) \
            if store.compact else None  # (N_tokens + 1, K)
        video_at: dict[str, tuple[int, int, int]] = {}  # vid -> (first frame row, frames, scale row)
        row = 0
        for j, vid in enumerate(vids):
            feats, scale = (_as_tensor(x) for x in source.stored_video(vid))  # (T, K, P+1, Dv), (K, Dv)
            self.video[row:row + len(feats)] = feats.to(self.device)
            if scale is not None:
                self.video_scale[j] = scale.to(self.device)
            video_at[vid] = (row, len(feats), j)
            row += len(feats)
        query_at: dict[str, tuple[int, int]] = {}  # text -> (first token row, tokens)
        row = 0
        for text in texts:
            feats, scale = (_as_tensor(x) for x in source.stored_query(text))  # (L, K, Dq), (L, K)
            self.query[row:row + len(feats)] = feats.to(self.device)
            if scale is not None:
                self.query_scale[row:row + len(feats)] = scale.to(self.device)
            query_at[text] = (row, len(feats))
            row += len(feats)
        # Per record, on the CPU: where its rows are, and the targets `__getitem__` computes for it.
        saliency, windows, self._saliency_cpu = [], [], []
        self._video_first, self._n_frames, self._scale_row, self._query_first, self._n_tokens = [], [], [], [], []
        self._saliency_first, row = [], 0
        for r in records:
            first, n, j = video_at[r.vid]
            fps = cache.video_info(r.vid)[1]
            target = torch.as_tensor(datasets.saliency_target(dataset.info, r, n), dtype=torch.float32)  # (T,)
            self._video_first.append(first)
            self._n_frames.append(n)
            self._scale_row.append(j)
            self._query_first.append(query_at[r.query][0])
            self._n_tokens.append(query_at[r.query][1])
            self._saliency_first.append(row)
            self._saliency_cpu.append(target)
            saliency.append(target)
            windows.append(clean_windows(r.windows, n, fps).to(self.device))
            row += n
        self.saliency = torch.cat(saliency + [torch.zeros(1)]).to(self.device)  # (N_record_frames + 1,)
        self.windows = windows
        self.fps = torch.tensor([cache.video_info(r.vid)[1] for r in records], dtype=torch.float32, device=self.device)
        self.duration = torch.tensor([r.duration for r in records], dtype=torch.float32, device=self.device)
        self.nbytes = sum(x.numel() * x.element_size() for x in (self.video, self.query, self.video_scale,
                                                                  self.query_scale, self.saliency) if x is not None)
        self.free = free
        self.seconds = time.time() - start
        self.summary = (f"resident on {self.device}: {dataset.split} split, {len(vids)} videos ({frames} frames), "
                        f"{len(texts)} query texts: {self.nbytes / 1e9:.3f} GB as {store.name} in {self.seconds:.1f} s "
                        f"({free / 1e9:.1f} GB were free)")

    def _rows(self, first: list[int], n: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) row indices of each sample's [first, first + n), padded with row `pad`, and the (B, T) mask."""
        length = max(n)
        steps = torch.arange(length)  # (T,)
        mask = steps[None] < torch.tensor(n)[:, None]  # (B, T)
        rows = torch.where(mask, torch.tensor(first)[:, None] + steps[None], pad)  # (B, T)
        return rows.to(self.device), mask

    def batch(self, indices: list[int]) -> dict:
        """The batch of dataset items `indices`, on the device, in the stored format (pass it to `to_device`)."""
        ds = self.dataset

        def pick(values: list) -> list:
            return [values[i] for i in indices]

        frame_rows, video_mask = self._rows(pick(self._video_first), pick(self._n_frames), len(self.video) - 1)
        token_rows, query_mask = self._rows(pick(self._query_first), pick(self._n_tokens), len(self.query) - 1)
        sal_rows, _ = self._rows(pick(self._saliency_first), pick(self._n_frames), len(self.saliency) - 1)
        video = self.video[frame_rows].transpose(1, 2).contiguous()  # (B, T, K, P+1, Dv) -> (B, K, T, P+1, Dv)
        query = self.query[token_rows].transpose(1, 2).contiguous()  # (B, L, K, Dq) -> (B, K, L, Dq)
        index = torch.tensor(indices)
        scales = {}
        if self.video_scale is not None:
            scales["video_scale"] = self.video_scale[torch.tensor(pick(self._scale_row), device=self.device)]  # (B, K, Dv)
            scales["query_scale"] = self.query_scale[token_rows].transpose(1, 2).contiguous()  # (B, L, K) -> (B, K, L)
        pos = [positive_frame(self._saliency_cpu[i], ds.info.saliency, ds.seed * 100_003 + i) for i in indices]
        video_mask = video_mask.to(self.device)
        on = index.to(self.device)
        return {
            "video": video, "video_mask": video_mask, "query": query, "query_mask": query_mask.to(self.device),
            **scales,
            "saliency": self.saliency[sal_rows],
            "pos_frame": torch.tensor(pos, device=self.device),
            "windows": pick(self.windows),
            "n_frames": video_mask.sum(1),
            "fps": self.fps[on],
            "duration": self.duration[on],
            "index": on,
        }

    def batches(self, sampler: Iterable[list[int]]) -> Iterator[dict]:
        """One batch per list of indices the sampler yields (e.g. a `GlobalBatchSampler`), in its order."""
        for indices in sampler:
            yield self.batch(indices)


def resident_features(dataset: GroundingDataset, preload: str, device: torch.device) -> tuple[DeviceFeatures | None, str]:
    """The dataset's features kept resident as `preload` asks, with the one line to print about it:
    none: None (batches stream from the cache through a DataLoader); cpu / cuda: on that device (ResidentMemoryError
    when they do not fit); auto: on the training device when they fit there, else None (streaming, the line says
    why)."""
    if preload not in PRELOAD_CHOICES:
        raise R2Error(f"--preload {preload!r}: one of {', '.join(PRELOAD_CHOICES)}")
    if preload == OFF:
        return None, ""
    if preload == "cuda" and not torch.cuda.is_available():
        raise R2Error("--preload cuda: no CUDA GPU is visible; pass --preload cpu, auto or none")
    where = torch.device(device) if preload == "auto" else torch.device(preload)
    if where.type == "cuda" and where.index is None and torch.device(device).type == "cuda":
        where = torch.device(device)  # the training GPU of this rank
    try:
        features = DeviceFeatures(dataset, where)
    except ResidentMemoryError as e:
        if preload != "auto":
            raise
        return None, f"--preload auto: streaming {dataset.split} from the cache: {e}"
    return features, features.summary
