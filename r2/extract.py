"""Stage 1: decode videos, run frozen CLIP once, write the tapped layers to the feature cache (`r2.cache`).

torch and the CLIP model are loaded only when there is something to extract: a re-run over a finished cache reads
the annotations and the cache's index, checks the fingerprint, and returns (for the tiny CLIP, whose checksum is
known without building it, without importing torch at all).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r2 import cache, clip, datasets, video
from r2.demo import DEFAULT_VIDEOS, make_demo
from r2.errors import R2Error

DEMO_DIR = "demo"  # under the cache folder: the generated demo videos and their jsonl


@dataclass
class ExtractConfig:
    dataset: str  # one of r2.datasets.DATASETS
    out: Path  # the cache entry file, e.g. cache/tacos.h5
    clip: str = "ViT-B/32"  # an OpenAI model name, a checkpoint path, or "tiny" (the offline test model)
    layers: str = "9-12"  # CLIP blocks to tap, 1-based: "9-12", "12", "4,8,12"
    videos: Path | None = None  # folder of the dataset's video files
    annotations: list[Path] = field(default_factory=list)  # override the dataset's annotation files
    data_root: Path | None = None  # benchmarks' annotation root (default: $R2_DATA)
    fps: float | None = None  # custom dataset sampling rate (default 0.5 = one frame per 2 s clip)
    shard: tuple[int, int] = (0, 1)  # (i, n): this process extracts the i-th of n disjoint parts
    batch_size: int = 64  # frames per CLIP forward
    device: str = "auto"  # where CLIP runs: auto (a GPU when there is one), cpu, cuda, cuda:N
    bf16: bool = False  # CLIP under bfloat16 autocast (faster only with bf16 units; changes the fingerprint)
    demo_videos: int = DEFAULT_VIDEOS  # size of the generated demo dataset
    progress: bool = True
    store: str = field(default="fp16", metadata={"help": "how features are stored: fp16, int8 or fp8 "
                                                         "(float8_e4m3fn), the 1-byte stores with float16 scales per "
                                                         "(video, layer, channel) and per (query token, layer), "
                                                         "about 0.505x the fp16 bytes; both keep mAP within 0.3 "
                                                         "points where bench/compact.py can resolve it, int8 decodes "
                                                         "4x closer to fp16 than fp8; "
                                                         "changes the fingerprint, so it needs its own cache (python "
                                                         "-m r2.cache convert makes one from an fp16 cache)"})

    def __post_init__(self):
        """Every numeric and enumerated field is checked when the config is built, so a bad flag is a one-line
        error before a model is loaded or a file written (a batch size of -1 once returned unwritten memory)."""
        if self.dataset not in datasets.DATASETS:
            raise ExtractConfigError(f"--dataset {self.dataset!r}: one of {', '.join(datasets.DATASETS)}")
        _check_count("--batch-size", self.batch_size)
        _check_count("--demo-videos", self.demo_videos)
        fps = self.fps
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                                or fps <= 0):
            raise ExtractConfigError(f"--fps {fps!r}: must be a positive number of frames per second, e.g. 0.5")
        i, n = self.shard
        if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
            raise ExtractConfigError(f"--shard {i}/{n}: need whole numbers with 0 <= I < N, e.g. 0/4")
        _check_device_name(self.device)
        if self.store not in cache.STORES:
            raise ExtractConfigError(f"--store {self.store!r}: one of {', '.join(cache.STORES)}")


class ExtractConfigError(R2Error, ValueError):
    """A bad extraction setting (a flag out of range); the message names the flag and what it accepts."""


def _check_count(flag: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExtractConfigError(f"{flag} {value!r}: must be a whole number >= 1")


_DEVICE_RE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def _check_device_name(device: str) -> None:
    """The spelling of --device, checked without torch (which GPUs exist is checked when CLIP is loaded)."""
    if _DEVICE_RE.fullmatch(str(device)) is None:
        raise ExtractConfigError(f"--device {device!r}: one of auto, cpu, cuda, cuda:N")


def resolve_device(device: str) -> str:
    """'auto' becomes a GPU when there is one, else the CPU; 'cuda' / 'cuda:N' must name a visible GPU."""
    import torch

    _check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = _DEVICE_RE.fullmatch(device)
    if device != "cpu":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(match[1] or 0) >= visible:
            raise ExtractConfigError(f"--device {device}: {visible} CUDA GPUs visible; use --device cpu or auto")
    return device


@dataclass
class Summary:
    done: int = 0  # videos extracted by this run
    skipped: int = 0  # videos already in the cache
    failed: int = 0  # videos that could not be decoded or encoded (see failures.jsonl)
    frames: int = 0  # frames extracted by this run
    queries: int = 0  # query records whose text was extracted by this run
    texts: int = 0  # distinct query texts extracted by this run (a text shared by several queries is stored once)
    bytes: int = 0  # feature bytes written by this run
    seconds: float = 0.0

    duration_warnings: int = 0  # videos whose decoded duration is far from the annotated one

    def line(self) -> str:
        warned = f" | {self.duration_warnings} duration mismatches" if self.duration_warnings else ""
        return (f"videos: {self.done} done, {self.skipped} skipped, {self.failed} failed | frames: {self.frames} | "
                f"queries: {self.queries} ({self.texts} distinct texts) | {self.bytes / 1e9:.3f} GB written | {self.seconds:.1f} s{warned}")


def ffmpeg_version() -> str:
    out = subprocess.run([video.ffmpeg_exe(), "-version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def fingerprint(model: clip.Clip | clip.ClipIdentity, layers: list[int], fps: float | str, bf16: bool,
                store: str = "fp16") -> dict:
    """Everything that changes the cached features; a checkpoint trained on a cache carries it."""
    return {
        "clip": model.name,
        "clip_sha256": model.sha256,
        "layers": layers,
        "fps": fps,
        "frame_size": model.image_size,
        "resize": "short side to frame_size, bicubic",
        "crop": "center",
        "mean": list(clip.CLIP_MEAN),
        "std": list(clip.CLIP_STD),
        "precision": "bf16-autocast" if bf16 else "fp32",
        **cache.get_store(store).fields(),  # fp16: {"dtype": "float16"}, as every cache before compact stores
        "ffmpeg": ffmpeg_version(),
        "ffmpeg_python": version("ffmpeg-python"),
    }


def load_annotations(cfg: ExtractConfig) -> dict[str, list[datasets.Record]]:
    """The records of every split of the dataset, keyed by split name."""
    if cfg.dataset == "demo":
        root = cfg.annotations[0] if cfg.annotations else Path(cfg.out).parent / DEMO_DIR
        if not cfg.annotations:
            make_demo(root, n_videos=cfg.demo_videos, progress=cfg.progress)
        return {split: datasets.load_split("demo", split, annotations=root) for split in ("train", "val")}
    if cfg.dataset == "custom":
        if not cfg.annotations:
            raise ExtractConfigError("--dataset custom needs --annotations FILE.jsonl [FILE.jsonl ...] (split = file stem)")
        return {Path(p).stem: datasets.load_split("custom", Path(p).stem, annotations=Path(p), fps=cfg.fps)
                for p in cfg.annotations}
    info = datasets.dataset_info(cfg.dataset)
    root = None if cfg.annotations else datasets.data_root(cfg.data_root)
    files = dict(zip(info.splits, cfg.annotations)) if cfg.annotations else {}
    return {split: datasets.load_split(cfg.dataset, split, root=root, annotations=files.get(split))
            for split in info.splits}


def videos_dir(cfg: ExtractConfig) -> Path:
    if cfg.videos is not None:
        return Path(cfg.videos)
    if cfg.dataset == "demo":
        root = cfg.annotations[0] if cfg.annotations else Path(cfg.out).parent / DEMO_DIR
        return Path(root) / "videos"
    raise ExtractConfigError(f"--dataset {cfg.dataset} needs --videos DIR, the folder holding its video files "
                     f"(README: 'The six benchmarks' says where to download them)")


def extract(cfg: ExtractConfig) -> Summary:
    """Extract this shard's videos and query texts into the cache; safe to re-run (finished work is skipped).
    Every check (settings, annotations, the cache's fingerprint and shard count) passes before anything is
    written to the cache."""
    start = time.time()
    ident = clip.identity(cfg.clip)  # the tiny CLIP: known without building it
    model = _load_model(cfg, ident) if ident is None else None  # first: a missing checkpoint fails before other work
    ident = ident or model
    layers = clip.parse_layers(cfg.layers, ident.vision_layers)
    splits = load_annotations(cfg)
    records = [r for rs in splits.values() for r in rs]
    folder = videos_dir(cfg)
    fps_of: dict[str, float] = {}
    durations: dict[str, set[float]] = {}
    for r in records:
        fps_of.setdefault(r.vid, r.fps)
        durations.setdefault(r.vid, set()).add(r.duration)
    vids = cache.shard_items(fps_of, cfg.shard)
    texts = cache.shard_items({r.query for r in records}, cfg.shard)

    rates = sorted(set(fps_of.values()))
    fp = fingerprint(ident, layers, rates[0] if len(rates) == 1 else "per-video", cfg.bf16, cfg.store)
    dims = {"video_dim": ident.vision_width, "query_dim": ident.text_width, "tokens": ident.tokens,
            "layers": layers}
    cache.check_before_writing(cfg.out, fp, dims, cfg.shard)
    if model is None and _pending(cfg, vids, texts):  # work to do: the device is checked before anything is written
        model = _load_model(cfg, ident)
    summary = Summary()
    try:
        with cache.ShardWriter(cfg.out, shard=cfg.shard, fingerprint=fp, dims=dims) as writer:
            cache.write_entry(cfg.out, dataset=cfg.dataset, fingerprint=fp, dims=dims,
                              annotations={split: [r.to_json() for r in rs] for split, rs in splits.items()})
            job = _Job(cfg, model, ident, layers, writer, fps_of, durations, folder, summary)
            job.texts(texts, [r.query for r in records])
            job.videos(vids)
    except OSError as e:  # the entry, the lock or failures.jsonl could not be written
        kept = summary.done + summary.skipped
        raise cache.CacheError(f"cannot write the cache {cfg.out} ({cache.describe_oserror(e)})"
                               + (f"; the {kept} videos committed in this shard are intact" if kept else "")) from None
    summary.seconds = time.time() - start
    return summary


def _load_model(cfg: ExtractConfig, ident: clip.ClipIdentity | None) -> clip.Clip:
    """Load CLIP on the resolved device; a model whose checksum is not the identity it was fingerprinted with
    (the tiny CLIP drawn differently by another torch) is refused rather than mixed into the cache."""
    model = clip.load_clip(cfg.clip, resolve_device(cfg.device))
    if ident is not None and model.sha256 != ident.sha256:
        raise clip.ClipLoadError(f"CLIP {cfg.clip!r} built with weight checksum {model.sha256}, not the "
                                 f"{ident.sha256} its fingerprint names (r2.clip.TINY_SHA256): this torch draws "
                                 f"other random weights; update TINY_SHA256 and extract into a new cache")
    return model


def _pending(cfg: ExtractConfig, vids: list[str], texts: list[str]) -> bool:
    """Whether this shard still lacks any of `vids` or `texts` (read from its segments' committed index rows)."""
    done_videos, done_texts = cache.committed(cfg.out, cfg.shard)
    return not (done_videos.issuperset(vids) and done_texts.issuperset(texts))


@dataclass
class _Job:
    """One shard's extraction: query texts, then videos, each appended to the shard's segment as it is done."""
    cfg: ExtractConfig
    model: clip.Clip | None  # None until something needs encoding (`clip()` loads it)
    ident: clip.ClipIdentity | clip.Clip  # the CLIP the fingerprint names
    layers: list[int]
    writer: cache.ShardWriter
    fps_of: dict[str, float]  # vid -> sampling rate
    durations: dict[str, set[float]]  # vid -> the durations its records annotate
    folder: Path  # the videos folder
    summary: Summary

    def encoder(self) -> clip.Clip:
        if self.model is None:  # the index changed since `_pending` read it (another run's segment appeared)
            self.model = _load_model(self.cfg, self.ident if isinstance(self.ident, clip.ClipIdentity) else None)
        return self.model

    def texts(self, texts: list[str], queries: list[str]):
        """Encode this shard's `texts` not yet in the cache; `queries` (one text per record) is what they count for."""
        todo = [t for t in texts if t not in self.writer.queries]
        for chunk in range(0, len(todo), 1024):
            batch = todo[chunk:chunk + 1024]
            for text, feats in zip(batch, clip.encode_texts(self.encoder(), batch, self.layers, bf16=self.cfg.bf16)):
                self.summary.bytes += self.writer.add_query(text, feats.cpu().numpy())
        self.summary.texts = len(todo)
        done = set(todo)
        self.summary.queries = sum(q in done for q in queries)

    def _decode(self, vid: str) -> video.Frames:
        path = datasets.video_file(self.cfg.dataset, vid, self.folder)
        return video.decode(path, self.fps_of[vid], size=self.ident.image_size)

    def videos(self, vids: list[str]):
        todo = [v for v in vids if v not in self.writer.videos]
        self.summary.skipped = len(vids) - len(todo)
        if not todo:
            return
        import torch

        self.encoder()
        tqdm.write(self._estimate(todo))
        bar = tqdm(total=len(todo), unit="video", disable=not self.cfg.progress,
                   desc=f"extract {Path(self.cfg.out).stem}")
        with torch.inference_mode():
            for vid, result in video.prefetch(todo, self._decode, depth=2):
                self._one_video(vid, result)
                bar.update()
                elapsed = max(bar.format_dict["elapsed"], 1e-9)
                bar.set_postfix(frames_per_s=f"{self.summary.frames / elapsed:.1f}", failed=self.summary.failed)
        bar.close()

    def _estimate(self, todo: list[str]) -> str:
        """'≈ 7 min on this machine: 1,200 frames at 2.9 frames/s', from the annotated durations and one timed
        CLIP batch of 8 frames (after a warm-up one); decoding runs alongside and is not counted."""
        import torch

        frames = sum(max(1, round(max(self.durations[v]) * self.fps_of[v])) for v in todo)
        side = self.model.image_size
        probe = np.zeros((min(self.cfg.batch_size, 8), side, side, 3), np.uint8)
        with torch.inference_mode():
            clip.encode_frames(self.model, probe, self.layers, batch_size=self.cfg.batch_size, bf16=self.cfg.bf16)
            start = time.perf_counter()
            clip.encode_frames(self.model, probe, self.layers, batch_size=self.cfg.batch_size, bf16=self.cfg.bf16)
        rate = len(probe) / max(time.perf_counter() - start, 1e-6)
        minutes = frames / rate / 60
        when = f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
        return (f"≈ {when} on this machine: {frames:,} frames of {len(todo)} videos at {rate:.1f} frames/s "
                f"(CLIP {self.model.name})")

    def _one_video(self, vid: str, result: video.Frames | Exception):
        """Encode and append one decoded video. Anything wrong with this video alone (a decode error, a missing
        file, an OSError such as a name too long for the file system) is its failure, logged in failures.jsonl;
        a failed cache write (CacheWriteError) stops the shard."""
        import torch

        try:
            if isinstance(result, Exception):
                raise result
            feats = clip.encode_frames(self.model, result.frames, self.layers, batch_size=self.cfg.batch_size,
                                       bf16=self.cfg.bf16)
            feats = feats.to(torch.float16).cpu().numpy()  # (T, K, P+1, Dv)
        except (video.VideoDecodeError, OSError, ValueError) as e:
            self.summary.failed += 1
            reason = cache.describe_oserror(e) if isinstance(e, OSError) else str(e)
            self.writer.failed({"vid": vid, "error": f"{type(e).__name__}: {reason}"})
            tqdm.write(f"skipped {vid!r}: {reason}")
            return
        self._check_duration(vid, result)
        self.summary.bytes += self.writer.add_video(vid, feats, result.times, result.duration, result.fps)
        self.summary.done += 1
        self.summary.frames += len(feats)

    def _check_duration(self, vid: str, frames: video.Frames):
        problems = [m for d in sorted(self.durations[vid])
                    if (m := datasets.duration_mismatch(d, frames.duration, len(frames.times), frames.fps))]
        if problems:
            self.summary.duration_warnings += 1
            tqdm.write(f"warning: video {vid!r}: {problems[0]}")


def failures(entry: Path) -> list[dict]:
    """The failure lines logged for a cache (empty when every video was extracted)."""
    path = cache.parts_dir(entry) / "failures.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
