"""Use a trained checkpoint on any video file: moments and saliency for free-text queries.

    python -m r2.predict --checkpoint runs/x/best.pt --video clip.mp4 [more.mp4 | FOLDER ...] \\
        --query "a man opens the fridge" [--query ...] [--out out/] [--plot] [--html [--embed-video]] \\
        [--export-chapters] [--export-clips [moments|reel]]

Python: `r2.Predictor(checkpoint).predict(video, queries) -> Prediction`. The command line is r2/predict/cli.py,
the encoded-video cache r2/predict/features.py.

Features are made exactly as the cache the checkpoint was trained on: the CLIP named in the checkpoint's
fingerprint (its weight checksum must match), the same `r2.video` decode graph at the fingerprint's fps and frame
size, `r2.clip.encode_frames` on the fingerprint's layers in batches of 64 frames (extraction's batch), and the
float16 rounding the cache stores. A video no longer than the model's trained length is one model call, decoded
by the dataset's SPEC §6 rules: the same predictions the trained pipeline gives for it.

Longer videos: windows of W frames, W = the model's trained length, with stride S = W // 2 (50% overlap). They
start at 0, S, 2S, ... while a frame follows the window, then one last window ends at the video's last frame, so
every window is W frames long. Each window's moments (top 50, no rounding, no NMS, clamped to the window) are
shifted to absolute time, clamped to the video, rounded to the dataset's unit, merged by the dataset's NMS and cut
to the top 50; each frame's saliency is the mean over the windows that cover it. Frames stream through
`r2.video.iter_decode` in chunks of 64: at most W + 64 encoded frames are held at once, whatever the length.

W is the longest training video, recorded in the checkpoint by the trainer (`train_frames`), else
the dataset recipe's `trained_frames` (the longest training video of each benchmark, from its annotation files).
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from r2 import clip, video
from r2.checkpoint import build_model, load_checkpoint
from r2.decode import DecodeConfig, decode, finish_windows
from r2.errors import AnnotationError, R2Error
from r2.model import R2Model
from r2.predict.features import DEFAULT_CACHE_BYTES, ENCODE_CHUNK, FeatureCache, FeatureCacheWarning
from r2.recipes import recipe
from r2.runtime import pick_device, pick_precision
from r2.train_config import decode_config as run_decode_config
from r2.train_config import saved_config

__all__ = [
    "DEFAULT_CACHE_BYTES", "ENCODE_CHUNK", "FeatureCache", "FeatureCacheWarning", "Moment", "PredictError",
    "Prediction", "Predictor", "QueryPrediction", "average_saliency", "decode_config", "merge_moments",
    "read_ground_truth", "trained_frames", "window_starts",
]

QUERY_BATCH = 16  # queries per model call on one window

class PredictError(R2Error):
    """A checkpoint, CLIP or video that cannot be used for prediction; the message says what to do."""


@dataclass
class Moment:
    start: float  # seconds
    end: float  # seconds
    score: float  # after the dataset's NMS (hard NMS: 0 for suppressed windows)


@dataclass
class QueryPrediction:
    query: str
    moments: list[Moment]  # sorted by score, descending; empty for saliency-only models (TVSum, YouTube)
    saliency: list[float]  # one score per sampled frame; frame i covers [i / fps, (i + 1) / fps) seconds

    def top(self, n: int) -> list[Moment]:
        """The first n moments with a positive score (hard-NMS leaves suppressed windows at 0 in the tail)."""
        return [m for m in self.moments if m.score > 0][:n]


@dataclass
class Prediction:
    video: str  # the video file
    duration: float  # seconds (the decoded span when the file is truncated)
    fps: float  # frames sampled per second
    n_frames: int
    truncated: bool  # the file ended before its header's duration
    window_frames: int  # W: frames per model call
    stride_frames: int  # S: frames between window starts
    windows: list[tuple[int, int]]  # [first, end) frame ranges the model ran on
    frames_held: int  # the most encoded frames held in memory at once
    from_cache: bool  # features were read from the encoded-video cache (no decoding, no CLIP)
    queries: list[QueryPrediction]

    def to_json(self, all_moments: bool = True) -> dict:
        """Plain JSON (what `r2.viz` reads): video facts plus, per query, QVHighlights-style `pred_relevant_windows`
        [[start, end, score], ...] (every decoded window, or with all_moments=False those with a positive score)
        and `pred_saliency_scores`."""
        facts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "queries"}
        facts["windows"] = [list(w) for w in self.windows]
        return {**facts, "queries": [
            {"query": q.query, "pred_relevant_windows": [[m.start, m.end, m.score] for m in q.moments
                                                         if all_moments or m.score > 0],
             "pred_saliency_scores": q.saliency} for q in self.queries]}


# ----------------------------------------------------------------------------------------------- pure helpers


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """First frames of the windows over a video of n_frames: [0] when it fits one window; else 0, S, 2S, ... while a
    frame follows the window, then n_frames - W (the last window ends at the last frame)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1 frame, got window={window}, stride={stride}")
    if n_frames <= window:
        return [0]
    return list(range(0, n_frames - window, stride)) + [n_frames - window]


def merge_moments(windows: Sequence[Sequence[float]], duration: float, cfg: DecodeConfig) -> list[list[float]]:
    """Moments from several windows, [start, end, score] in absolute seconds -> the video's moments: clamp to
    [0, duration], round to cfg.unit unless the end reaches the duration, cfg.nms, sort by score, keep cfg.top_k.
    The inputs are not changed."""
    if len(windows) == 0:
        return []
    merged = torch.tensor([list(w) for w in windows], dtype=torch.float32)  # (M, 3)
    merged = finish_windows(merged, duration, cfg)
    return merged[:cfg.top_k].tolist()


def average_saliency(parts: Sequence[tuple[int, np.ndarray]], n_frames: int) -> np.ndarray:
    """Per-window saliency (start frame, (Q, n) scores) -> (Q, n_frames): each frame's mean over the windows that
    cover it. Every frame must be covered."""
    n_queries = parts[0][1].shape[0]
    total = np.zeros((n_queries, n_frames))
    count = np.zeros(n_frames)
    for start, scores in parts:
        total[:, start:start + scores.shape[1]] += scores
        count[start:start + scores.shape[1]] += 1
    if not count.all():
        raise ValueError(f"frames {np.flatnonzero(count == 0).tolist()[:5]}... are in no window")
    return total / count


def decode_config(ckpt: dict) -> DecodeConfig:
    """The checkpoint's decoding: the dataset's SPEC §6 settings with the run's --nms / --nms-iou / --unit."""
    return run_decode_config(ckpt["dataset"], saved_config(ckpt))


def trained_frames(ckpt: dict) -> tuple[int, str]:
    """(W, where it comes from): the longest training video, recorded in the checkpoint by the trainer; else the
    dataset recipe's trained_frames."""
    if ckpt.get("train_frames"):
        return int(ckpt["train_frames"]), "longest training video (recorded in the checkpoint)"
    return recipe(ckpt["dataset"]).trained_frames, f"default for {ckpt['dataset']}"


def read_ground_truth(path: str | Path, vid: str) -> dict[str, list[list[float]]]:
    """query -> relevant_windows [[start, end], ...] of video `vid` in a QVHighlights-format jsonl file."""
    found: dict[str, list[list[float]]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            missing = [k for k in ("vid", "query", "relevant_windows") if k not in record]
            if missing:
                raise AnnotationError(f"{path}:{number}: field {missing[0]!r} missing (QVHighlights format: vid, query, "
                                 f"relevant_windows)")
            if record["vid"] == vid:
                found.setdefault(record["query"], []).extend([float(s), float(e)] for s, e in
                                                             record["relevant_windows"])
    return found


class _FeatureStream:
    """Iterating yields float16 feature chunks (n, K, P+1, Dv), read from the encoded-video cache or decoded and
    encoded (and then stored); once iteration ends `n_frames`, `duration`, `truncated` are set."""

    def __init__(self, predictor: "Predictor", path: Path):
        self.predictor, self.path = predictor, path
        self.n_frames, self.duration, self.truncated = 0, 0.0, False
        self.from_cache = False

    def __iter__(self) -> Iterator[torch.Tensor]:
        p = self.predictor
        store = p.feature_cache
        key = store.key(self.path, p.fingerprint, p.fps) if store is not None else None
        cached = store.get(key) if store is not None else None
        if cached is not None:
            feats, meta = cached
            self.from_cache = True
            for start in range(0, len(feats), ENCODE_CHUNK):
                yield torch.from_numpy(np.array(feats[start:start + ENCODE_CHUNK]))  # (n, K, P+1, Dv) copy
            self.n_frames, self.duration, self.truncated = len(feats), meta["duration"], meta["truncated"]
            return
        writer = store.writer(key) if store is not None else None
        try:
            frames = video.iter_decode(self.path, p.fps, size=p.clip.image_size, chunk_frames=ENCODE_CHUNK)
            for chunk, _ in frames:
                feats = clip.encode_frames(p.clip, chunk, p.layers, batch_size=ENCODE_CHUNK, bf16=p.bf16)
                feats = feats.to(torch.float16)  # (n, K, P+1, Dv), rounded as the cache stores it
                if writer is not None:
                    writer.append(feats.numpy())
                yield feats
            self.n_frames, self.duration, self.truncated = frames.n_frames, float(frames.duration), frames.truncated
            if writer is not None:
                writer.commit({"video": str(self.path.resolve()), "duration": self.duration,
                               "truncated": self.truncated, "fps": p.fps})
                writer = None
        finally:
            if writer is not None:  # decoding failed or the consumer stopped early
                writer.discard()


# ----------------------------------------------------------------------------------------------- predictor


class Predictor:
    """A trained checkpoint with the frozen CLIP its features came from, ready for any video file.

    checkpoint: best.pt / last.pt of a run. clip: where the checkpoint's CLIP is (a name, a path, or an already
    loaded `r2.clip.Clip`; default: the name in the fingerprint); its weight checksum must be the fingerprint's.
    fps: only for checkpoints trained at per-video rates. device: auto | cpu | cuda | cuda:N. window_frames:
    override W. feature_cache: folder of the encoded-video cache ("auto": $R2_PREDICT_CACHE, else
    ~/.cache/r2/features), None for no cache.
    """

    def __init__(self, checkpoint: str | Path, clip: str | Path | "clip.Clip" | None = None, fps: float | None = None,
                 device: str = "auto", window_frames: int | None = None,
                 feature_cache: str | Path | None = "auto",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dataset: str | None = None):
        self.checkpoint = checkpoint
        ckpt = load_checkpoint(checkpoint, dataset)
        self.dataset: str = ckpt["dataset"]
        self.fingerprint: dict = ckpt["fingerprint"]
        self.dims: dict = ckpt["dims"]
        self.fps = self._fps(fps)
        self.layers: list[int] = list(self.fingerprint["layers"])
        self.bf16 = self.fingerprint.get("precision") == "bf16-autocast"
        self.device = pick_device(device)
        self.autocast_dtype = pick_precision("auto", self.device)
        self.clip = self._load_clip(clip)
        self.model: R2Model = build_model(ckpt).to(self.device).eval()
        self.decode_cfg = decode_config(ckpt)
        if window_frames is not None:
            self.window_frames, self.window_source = int(window_frames), "set by the caller"
        else:
            self.window_frames, self.window_source = trained_frames(ckpt)
        if self.window_frames < 1:
            raise PredictError(f"--window {self.window_frames}: must be >= 1 frame")
        self.stride_frames = max(1, self.window_frames // 2)
        if feature_cache == "auto":
            feature_cache = FeatureCache.default_folder()
        self.feature_cache = FeatureCache(feature_cache, cache_bytes) if feature_cache is not None else None
        self._check_ffmpeg()

    def _fps(self, fps: float | None) -> float:
        trained = self.fingerprint["fps"]
        if trained == "per-video":
            if fps is None:
                raise PredictError(f"{self.checkpoint} was trained at per-video sampling rates: pass --fps "
                                   f"(frames per second to sample this video at)")
            return float(fps)
        if fps is not None and float(fps) != float(trained):
            raise PredictError(f"{self.checkpoint} was trained on features at {trained} fps; --fps {fps} would "
                               f"feed it other features: drop --fps")
        return float(trained)

    def _load_clip(self, spec) -> "clip.Clip":
        fp = self.fingerprint
        model = spec if isinstance(spec, clip.Clip) else clip.load_clip(str(spec or fp["clip"]), self.device)
        if fp["clip_sha256"] is None:  # the authors' released features record the CLIP by name only
            if model.name != fp["clip"]:
                warnings.warn(f"{self.checkpoint} was trained on features of {fp['clip']}; {model.name} is used "
                              f"without a checksum to compare (the release records none)")
        elif model.sha256 != fp["clip_sha256"]:
            raise PredictError(f"CLIP {model.name} has weights {model.sha256[:12]}..., but {self.checkpoint} was "
                               f"trained on features of {fp['clip']} ({fp['clip_sha256'][:12]}...): pass --clip PATH "
                               f"to that checkpoint")
        if model.image_size != fp["frame_size"] or model.vision_width != self.dims["video_dim"] \
                or model.text_width != self.dims["query_dim"] or model.tokens != self.dims["tokens"]:
            raise PredictError(f"CLIP {model.name} does not give the features {self.checkpoint} expects "
                               f"(dims {self.dims}, frame size {fp['frame_size']})")
        return model

    def _check_ffmpeg(self):
        from r2.extract import ffmpeg_version

        if self.fingerprint.get("ffmpeg") not in (None, ffmpeg_version()):
            warnings.warn(f"{self.checkpoint} was trained on frames decoded by {self.fingerprint['ffmpeg']!r}; this "
                          f"machine has {ffmpeg_version()!r}: frames may differ slightly", stacklevel=3)

    # -- encoders

    def encode_queries(self, queries: Sequence[str]) -> list[torch.Tensor]:
        """float16 (L_i, K, Dq) per query, rounded as the cache stores query features."""
        if not queries:
            raise PredictError("no query: pass at least one query text (--query TEXT)")
        return [q.to(torch.float16) for q in clip.encode_texts(self.clip, list(queries), self.layers, bf16=self.bf16)]

    def features(self, path: str | Path) -> tuple[np.ndarray, float, bool]:
        """The whole video's features as the cache stores them: (float16 (T, K, P+1, Dv), duration, truncated).
        Holds the whole video: for long videos use `predict`, which streams."""
        stream = _FeatureStream(self, self._video_path(path))
        feats = torch.cat(list(stream)).numpy()  # (T, K, P+1, Dv)
        return feats, stream.duration, stream.truncated

    @staticmethod
    def _video_path(path: str | Path) -> Path:
        path = Path(path)
        if not path.is_file():
            raise video.VideoDecodeError(path, "file not found" if not path.exists() else "not a regular file")
        return path

    # -- model

    @torch.no_grad()
    def _run(self, feats: torch.Tensor, queries: list[torch.Tensor], duration: float,
             dec_cfg: DecodeConfig) -> list[dict]:
        """The model on one window, feats (n, K, P+1, Dv), for every query -> one `r2.decode.decode` dict each."""
        n = feats.shape[0]
        clip_video = feats.to(self.device).transpose(0, 1)  # (n, K, P+1, Dv) -> (K, n, P+1, Dv)
        results = []
        for start in range(0, len(queries), QUERY_BATCH):
            group = queries[start:start + QUERY_BATCH]
            b, length = len(group), max(q.shape[0] for q in group)
            query = group[0].new_zeros(b, self.model.cfg.layers, length, group[0].shape[-1])  # (B, K, L, Dq)
            query_mask = torch.zeros(b, length, dtype=torch.bool)  # (B, L)
            for i, q in enumerate(group):
                query[i, :, :q.shape[0]] = q.transpose(0, 1)  # (L_i, K, Dq) -> (K, L_i, Dq)
                query_mask[i, :q.shape[0]] = True
            batch = {
                "video": clip_video.unsqueeze(0).expand(b, -1, -1, -1, -1),  # (B, K, n, P+1, Dv), no copy
                "video_mask": torch.ones(b, n, dtype=torch.bool, device=self.device),  # (B, n)
                "query": query.to(self.device), "query_mask": query_mask.to(self.device),
                "n_frames": torch.full((b,), n, device=self.device),
                "fps": torch.full((b,), self.fps, dtype=torch.float32, device=self.device),
                "duration": torch.full((b,), duration, dtype=torch.float32, device=self.device),
            }
            dtype = self.autocast_dtype
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                outputs = self.model(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])
            results.extend(decode(outputs, batch, dec_cfg))
        return results

    def predict(self, path: str | Path, queries: str | Sequence[str]) -> Prediction:
        """Moments and per-frame saliency of each query in the video at `path` (any length)."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        query_feats = self.encode_queries(queries)
        stream = _FeatureStream(self, self._video_path(path))
        w, s = self.window_frames, self.stride_frames
        window_cfg = dataclasses.replace(self.decode_cfg, unit=None, nms=None)  # rounding + NMS after merging
        held = None  # encoded frames [held_start, seen) (n, K, P+1, Dv)
        held_start, seen, next_start, frames_held = 0, 0, 0, 0
        windows: list[tuple[int, int]] = []
        saliency: list[tuple[int, np.ndarray]] = []
        moments: list[list[list[float]]] = [[] for _ in queries]

        def run_window(start: int, duration: float, cfg: DecodeConfig):
            feats = held[start - held_start:start - held_start + w]  # (W, K, P+1, Dv)
            offset = start / self.fps
            out = self._run(feats, query_feats, duration, cfg)
            windows.append((start, start + w))
            saliency.append((start, np.array([o["pred_saliency_scores"] for o in out])))  # (Q, W)
            for q, o in enumerate(out):
                moments[q].extend([a + offset, b + offset, c] for a, b, c in o.get("pred_relevant_windows", []))

        for chunk in stream:
            held = chunk if held is None else torch.cat([held, chunk])  # (n, K, P+1, Dv)
            seen += len(chunk)
            frames_held = max(frames_held, len(held))
            while next_start + w < seen:  # a frame follows this window: it is not the last one
                run_window(next_start, w / self.fps, window_cfg)
                next_start += s
            keep_from = max(held_start, min(next_start, seen - w))  # the last window needs the last W frames
            held, held_start = held[keep_from - held_start:], keep_from

        duration = stream.duration
        if not windows:  # the whole video fits one window: exactly the trained pipeline
            out = self._run(held, query_feats, duration, self.decode_cfg)
            windows = [(0, seen)]
            results = [QueryPrediction(q, [Moment(*m) for m in o.get("pred_relevant_windows", [])],
                                       o["pred_saliency_scores"]) for q, o in zip(queries, out)]
        else:
            run_window(seen - w, duration - (seen - w) / self.fps, window_cfg)
            averaged = average_saliency(saliency, seen)  # (Q, T)
            results = [QueryPrediction(q, [Moment(*m) for m in merge_moments(moments[i], duration, self.decode_cfg)],
                                       averaged[i].tolist()) for i, q in enumerate(queries)]
        return Prediction(video=str(path), duration=duration, fps=self.fps, n_frames=seen, truncated=stream.truncated,
                          window_frames=w, stride_frames=s, windows=windows, frames_held=frames_held,
                          from_cache=stream.from_cache, queries=results)
