"""Use a trained checkpoint on any video file: moments and saliency for free-text queries.

    python -m r2.predict --checkpoint runs/x/best.pt --video clip.mp4 [more.mp4 | FOLDER ...] \\
        --query "a man opens the fridge" [--query ...] [--out out/] [--plot] [--html [--embed-video]] \\
        [--export-chapters] [--export-clips [moments|reel]]

Python: `r2.Predictor(checkpoint).predict(video, queries) -> Prediction`.

The command loads the checkpoint and CLIP once for every video given. Each video's outputs are named after it:
OUT/<video>.json (the prediction: moments with a positive score unless --all-moments), .png, .html, .vtt and
clips/<video>_q<N>_...mp4; a name that another video already holds in OUT (same file name, other folder) becomes
<video>-2, -3, ..., so nothing a user has is overwritten. The table and JSON printed show times to 0.01 s and scores
to 1e-4. A video that cannot be decoded is one error line and the others go on (exit 1; 2 when none worked).

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

Encoded videos are kept on disk (`FeatureCache`, least recently used out beyond a byte budget), keyed by the file's
content (SHA-256, one read of the file: about a second per GB), the sampling rate and the checkpoint's feature
fingerprint: a new query on the same video costs the text encoder and the model only, and a file replaced under the
same name and dates is encoded again. A damaged entry is encoded again; a cache that cannot be written only warns.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from r2 import clip, video
from r2.decode import DecodeConfig, decode, finish_windows
from r2.errors import AnnotationError, ConfigError, R2Error, command
from r2.fetch import file_sha256
from r2.model import R2Model
from r2.recipes import recipe
from r2.checkpoint import build_model, load_checkpoint
from r2.runtime import pick_device, pick_precision
from r2.train import saved_config
from r2.train import decode_config as train_decode_config

__all__ = [
    "DEFAULT_CACHE_BYTES", "ENCODE_CHUNK", "FeatureCache", "FeatureCacheWarning", "Moment",
    "PredictError", "Prediction", "Predictor", "QueryPrediction", "average_saliency", "decode_config", "display_json",
    "format_table", "get_args_parser", "main", "merge_moments", "output_stem", "read_ground_truth", "trained_frames",
    "video_files", "window_starts",
]

ENCODE_CHUNK = 64  # frames per decode chunk and per CLIP batch: ExtractConfig.batch_size, so features are identical
QUERY_BATCH = 16  # queries per model call on one window
DEFAULT_CACHE_BYTES = 4 * 2**30  # encoded-video cache budget (ViT-B/32, 4 layers: ~300 KB per frame)

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
    return train_decode_config(ckpt["dataset"], saved_config(ckpt))


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


# ----------------------------------------------------------------------------------------------- encoded videos


class FeatureCacheWarning(UserWarning):
    """The encoded-video cache could not be read or written; the prediction goes on without it."""


def _cache_warning(message: str):
    warnings.warn(f"encoded-video cache: {message}; the prediction goes on without it", FeatureCacheWarning,
                  stacklevel=3)


class FeatureCache:
    """Encoded videos on disk: `<key>.f16` (float16 (T, K, P+1, Dv) in C order) and `<key>.json` (shape, sha256 of
    the .f16 bytes, duration, truncated, source file). The key hashes the video file's content (not its name or
    dates), the sampling rate and the checkpoint's feature fingerprint. An entry exists once its json does (written
    last, by rename); one whose json, size or checksum is wrong is deleted and the video encoded again. Using an
    entry marks it recent; after a new entry is written, the least recently used others are deleted until the total
    is within `max_bytes`. A cache that cannot be read or written (full disk, file size limit, read-only folder) is
    a `FeatureCacheWarning`, never a failed prediction."""

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.folder = Path(folder).expanduser()
        self.max_bytes = int(max_bytes)

    @staticmethod
    def default_folder() -> Path:
        return Path(os.environ.get("R2_PREDICT_CACHE", Path.home() / ".cache" / "r2" / "features"))

    @staticmethod
    def key(path: Path, fingerprint: dict, fps: float) -> str:
        try:
            content = file_sha256(path)
        except OSError as err:
            raise video.VideoDecodeError(path, f"cannot read it ({err.strerror or err})") from None
        ident = {"sha256": content, "fps": fps, "fingerprint": fingerprint}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple[np.memmap, dict] | None:
        """(features (T, K, P+1, Dv) float16 memory-mapped, meta) or None (absent, damaged or unreadable)."""
        meta_path, data_path = self.folder / f"{key}.json", self.folder / f"{key}.f16"
        try:
            if not meta_path.is_file():
                return None
            meta = json.loads(meta_path.read_text())
            shape = tuple(int(n) for n in meta["shape"])
            meta["duration"], meta["truncated"] = float(meta["duration"]), bool(meta["truncated"])
            size = data_path.stat().st_size
            if size != 2 * math.prod(shape):
                raise ValueError(f"{data_path.name} holds {size} bytes, its shape {list(shape)} needs "
                                 f"{2 * math.prod(shape)}")
            if file_sha256(data_path) != meta["sha256"]:
                raise ValueError(f"{data_path.name} does not match its checksum")
            feats = np.memmap(data_path, dtype=np.float16, mode="r", shape=shape)
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"encoded-video cache entry {meta_path} is unusable ({err}): encoding the video again",
                          FeatureCacheWarning, stacklevel=3)
            self.remove(key)
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves its entries
            os.utime(meta_path)  # most recently used
        return feats, meta

    def remove(self, key: str):
        for suffix in (".json", ".f16"):
            with contextlib.suppress(OSError):
                (self.folder / f"{key}{suffix}").unlink(missing_ok=True)

    def writer(self, key: str) -> "_EntryWriter":
        return _EntryWriter(self, key)

    def evict(self, keep: str):
        """Delete the least recently used entries beyond max_bytes (never `keep`) and the temporary files of
        writers that died (their process is gone)."""
        self._remove_orphans()
        entries = []  # (last used, key, bytes)
        for meta_path in self.folder.glob("[!.]*.json"):
            with contextlib.suppress(OSError):  # an entry another process just removed
                data = meta_path.with_suffix(".f16")
                entries.append((meta_path.stat().st_mtime, meta_path.stem, data.stat().st_size if data.exists() else 0))
        total = 0
        for _, key, size in sorted(entries, reverse=True):
            total += size
            if total > self.max_bytes and key != keep:
                self.remove(key)


    def _remove_orphans(self):
        for tmp in self.folder.glob(".*.*.*"):  # .<key>.<pid>.f16 / .json of a writer
            pid = tmp.name.split(".")[2]
            if pid.isdigit() and not _process_alive(int(pid)):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


class _EntryWriter:
    """Appends feature chunks to a temporary file; `commit` publishes the entry, `discard` removes it. Any OSError
    (unwritable folder, full disk, file size limit) warns once and turns the writer off: the caller's features are
    unaffected."""

    def __init__(self, cache: FeatureCache, key: str):
        self.cache, self.key = cache, key
        self.tmp = cache.folder / f".{key}.{os.getpid()}.f16"
        self.digest = hashlib.sha256()
        self.tail: tuple[int, ...] | None = None
        self.frames = 0
        self.file = None
        self._guard(self._open)

    def _open(self):
        self.cache.folder.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")

    def _guard(self, step, *args) -> bool:
        """Run one step of writing; on OSError warn, clean up and stop writing. True when it succeeded."""
        try:
            step(*args)
            return True
        except OSError as err:
            _cache_warning(f"cannot write to {self.cache.folder} ({err.strerror or err})")
            self.discard()
            return False

    def _append(self, feats: np.ndarray):
        data = np.ascontiguousarray(feats, dtype=np.float16).tobytes()
        self.file.write(data)
        self.digest.update(data)
        self.tail = tuple(feats.shape[1:])
        self.frames += feats.shape[0]

    def append(self, feats: np.ndarray):
        if self.file is not None:
            self._guard(self._append, feats)

    def _commit(self, meta: dict):
        self.file.close()
        self.file = None
        folder = self.cache.folder
        os.replace(self.tmp, folder / f"{self.key}.f16")
        tmp_meta = folder / f".{self.key}.{os.getpid()}.json"
        tmp_meta.write_text(json.dumps({**meta, "shape": [self.frames, *self.tail],
                                        "sha256": self.digest.hexdigest()}))
        os.replace(tmp_meta, folder / f"{self.key}.json")
        self.cache.evict(keep=self.key)

    def commit(self, meta: dict):
        if self.file is not None and not self._guard(self._commit, meta):
            self.cache.remove(self.key)

    def discard(self):
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="best.pt / last.pt of a training run, an official R²-Tuning .pth, or a zoo name "
                        "(r2-tuning:qvhighlights, ...)")
    p.add_argument("--dataset", help="an official checkpoint's dataset when its file name does not say it")
    p.add_argument("--video", required=True, type=Path, nargs="+", action="extend",
                   help="video files, or folders of videos (their files with a video extension, sorted); CLIP and "
                        "the model are loaded once for all of them")
    p.add_argument("--query", action="append", default=[], help="a query text; repeat for several")
    p.add_argument("--annotations", type=Path, help="QVHighlights-format jsonl: ground truth of the videos' "
                   "queries for the plot and page (and their queries when no --query is given)")
    p.add_argument("--vid", help="the video's id in --annotations (default: the file name without extension; "
                   "one video only)")
    p.add_argument("--out", type=Path, default=Path("out"),
                   help="folder for OUT/<video>.json, .png, .html, .vtt and clips/; a name already used by another "
                        "video gets -2, -3, ...")
    p.add_argument("--top", type=int, default=5, help="moments shown per query (table, plot, page, chapters, clips)")
    p.add_argument("--all-moments", action="store_true", help="write every decoded window to OUT/<video>.json "
                   "(the reference's full list, suppressed ones at score 0); default: those with score > 0")
    p.add_argument("--plot", action="store_true", help="write OUT/<video>.png: saliency, moments, frames")
    p.add_argument("--html", action="store_true", help="write OUT/<video>.html: player, curves, moments")
    p.add_argument("--embed-video", action="store_true", help="with --html: put the video inside the page, so "
                   "it opens anywhere (videos up to 256 MiB)")
    p.add_argument("--export-chapters", action="store_true",
                   help="write OUT/<video>.vtt: WebVTT chapters of the top moments")
    p.add_argument("--export-clips", nargs="?", const="moments", choices=("moments", "reel"),
                   help="cut OUT/clips/*.mp4 (with audio): the top moments (default) or a reel of the most salient "
                        "clips")
    p.add_argument("--reel-seconds", type=float, default=30.0, help="length of a highlight reel")
    p.add_argument("--clip", help="the checkpoint's CLIP, when it is not where its fingerprint says (name or path)")
    p.add_argument("--fps", type=float, help="sampling rate, only for checkpoints trained at per-video rates")
    p.add_argument("--window", type=int, help="frames per model call (default: the model's trained length)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--feature-cache", default="auto", help="folder of encoded videos reused by later predictions "
                   "(auto: $R2_PREDICT_CACHE, else ~/.cache/r2/features)")
    p.add_argument("--no-feature-cache", action="store_true", help="neither read nor write encoded videos")
    return p


def video_files(specs: Sequence[Path]) -> list[Path]:
    """--video arguments -> video files: a file as given, a folder as its files with a video extension (sorted)."""
    from r2.datasets import VIDEO_EXTENSIONS

    files: list[Path] = []
    for spec in specs:
        if spec.is_dir():
            found = sorted(p for p in spec.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise PredictError(f"--video {spec}: the folder holds no {'/'.join(VIDEO_EXTENSIONS)} file")
            files.extend(found)
        elif spec.is_file():
            files.append(spec)
        else:
            raise video.VideoDecodeError(spec, "file not found" if not spec.exists() else "not a regular file")
    return list(dict.fromkeys(files))


def output_stem(out: Path, video_path: Path, taken: set[str]) -> str:
    """The name of a video's outputs in `out`: its stem, or stem-2, stem-3, ... when that name is taken by another
    video of this call, or OUT/<name>.json holds the prediction of another file."""
    stem, number = video_path.stem, 1
    while True:
        name = stem if number == 1 else f"{stem}-{number}"
        if name not in taken and _json_video(out / f"{name}.json") in (None, str(video_path.resolve())):
            return name
        number += 1


def _json_video(path: Path) -> str | None:
    """The video a prediction file is of ("" when it is not a prediction file), None when there is no file."""
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["video_file"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def display_json(pred: Prediction, top: int) -> dict:
    """What is printed: per query its first `top` moments with a positive score, seconds to 0.01, scores to 1e-4 (a
    window clamped to the video's end shows as the duration, not 29.966667)."""
    return {"video": pred.video, "queries": [
        {"query": q.query, "moments": [[round(m.start, 2), round(m.end, 2), round(m.score, 4)] for m in q.top(top)]}
        for q in pred.queries]}


def format_table(pred: Prediction, top: int) -> str:
    """The top moments of each query as aligned text."""
    lines = [f"{pred.video}: {pred.duration:.1f} s, {pred.n_frames} frames at {pred.fps:g} fps, "
             f"{len(pred.windows)} window(s) of {pred.window_frames} frames"
             + (" (truncated file)" if pred.truncated else "")]
    for q in pred.queries:
        lines.append(f"query: {q.query!r}")
        moments = q.top(top)
        best = f"most salient clip at {int(np.argmax(q.saliency)) / pred.fps:.1f} s"
        if top == 0:
            lines.append(f"  {best} (moments not shown: --top 0)")
        elif not q.moments:
            lines.append(f"  no moments (saliency-only model); {best}")
        elif not moments:
            lines.append(f"  no moment with a score > 0; {best}")
        else:
            lines.append(f"  {'rank':>4} {'start':>9} {'end':>9} {'score':>7}")
            lines.extend(f"  {rank:>4} {m.start:>9.2f} {m.end:>9.2f} {m.score:>7.4f}"
                         for rank, m in enumerate(moments, 1))
    return "\n".join(lines)


def _write_outputs(args: argparse.Namespace, pred: Prediction, record: dict, truth: dict, stem: str) -> list[Path]:
    """OUT/<stem>.json and the outputs the flags ask for."""
    from r2 import viz

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plain = pred.to_json()
    saved = {**record, "video_file": str(Path(pred.video).resolve()), **pred.to_json(args.all_moments)}
    written = [out / f"{stem}.json"]
    written[0].write_text(json.dumps(saved))
    if args.plot:
        written.append(viz.plot_prediction(plain, out / f"{stem}.png", truth, args.top))
    if args.html:
        written.append(viz.write_html(plain, out / f"{stem}.html", truth, args.top, embed_video=args.embed_video))
    if args.export_chapters:
        written.append(viz.write_chapters(plain, out / f"{stem}.vtt", args.top))
    if args.export_clips == "moments":
        written.extend(viz.export_moments(plain, out / "clips", args.top, stem=stem))
    elif args.export_clips == "reel":
        written.extend(viz.export_reel(plain, out / "clips", args.reel_seconds, stem=stem))
    return written


def _check_args(args: argparse.Namespace, videos: list[Path]):
    if args.top < 0:
        raise ConfigError(f"--top {args.top}: must be >= 0 (0 shows no moments)")
    if args.reel_seconds <= 0:
        raise ConfigError(f"--reel-seconds {args.reel_seconds:g}: must be > 0")
    if args.vid and len(videos) > 1:
        raise ConfigError(f"--vid names one video, but --video gives {len(videos)}: each video's id in --annotations "
                          f"is then its file name without extension")
    if args.embed_video and not args.html:
        raise ConfigError("--embed-video is for the page: add --html")
    if args.annotations and not args.annotations.is_file():
        raise ConfigError(f"--annotations {args.annotations}: file not found")
    if any(not q.strip() for q in args.query):
        raise ConfigError("--query '': a query needs some text")


def _predict_one(args: argparse.Namespace, predictor: Predictor, path: Path, taken: set[str]) -> list[Path]:
    vid = args.vid or path.stem
    truth = read_ground_truth(args.annotations, vid) if args.annotations else {}
    queries = args.query or list(truth)
    if not queries:
        raise PredictError(f"{path}: no query: pass --query TEXT (or --annotations with records of this video: none "
                         f"has vid {vid!r})")
    pred = predictor.predict(path, queries)
    stem = output_stem(args.out, path, taken)
    taken.add(stem)
    written = _write_outputs(args, pred, {"checkpoint": str(args.checkpoint),
                                          "window_source": predictor.window_source}, truth, stem)
    print(format_table(pred, args.top))
    print(json.dumps(display_json(pred, args.top)), flush=True)
    return written


@command
def main(args: argparse.Namespace) -> int:
    """Exit code: 0 every video predicted; 1 some failed (each named on one line); 2 none (or a bad argument).
    Warnings are printed as one "warning: ..." line each."""
    videos = video_files(args.video)
    _check_args(args, videos)
    predictor = Predictor(args.checkpoint, clip=args.clip, fps=args.fps, device=args.device, dataset=args.dataset,
                          window_frames=args.window, feature_cache=None if args.no_feature_cache else args.feature_cache)
    taken: set[str] = set()
    failed = 0
    for path in videos:
        try:
            written = _predict_one(args, predictor, path, taken)
        except (R2Error, OSError) as err:  # OSError: an output that cannot be written
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    if failed:
        print(f"{len(videos) - failed} of {len(videos)} videos predicted, {failed} failed", file=sys.stderr)
    return 0 if not failed else 1 if failed < len(videos) else 2


def run() -> int:
    """The `r2-predict` console script."""
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(run())
