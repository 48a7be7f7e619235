"""Stage 1: decode videos, run frozen CLIP once, write the tapped layers to the feature cache (`r2.cache`)."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from tqdm import tqdm

from r2 import cache, clip, datasets, video

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
    bf16: bool = False  # run CLIP under bfloat16 autocast (about 2x faster on CPU; changes the fingerprint)
    demo_videos: int = 300  # size of the generated demo dataset
    progress: bool = True


@dataclass
class Summary:
    done: int = 0  # videos extracted by this run
    skipped: int = 0  # videos already in the cache
    failed: int = 0  # videos that could not be decoded or encoded (see failures.jsonl)
    frames: int = 0  # frames extracted by this run
    queries: int = 0  # query texts extracted by this run
    bytes: int = 0  # feature bytes written by this run
    seconds: float = 0.0

    def line(self) -> str:
        return (f"videos: {self.done} done, {self.skipped} skipped, {self.failed} failed | frames: {self.frames} | "
                f"queries: {self.queries} | {self.bytes / 1e9:.3f} GB written | {self.seconds:.1f} s")


def ffmpeg_version() -> str:
    out = subprocess.run([video.ffmpeg_exe(), "-version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def fingerprint(model: clip.Clip, layers: list[int], fps: float | str, bf16: bool) -> dict:
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
        "dtype": "float16",
        "ffmpeg": ffmpeg_version(),
        "ffmpeg_python": version("ffmpeg-python"),
    }


def load_annotations(cfg: ExtractConfig) -> dict[str, list[datasets.Record]]:
    """The records of every split of the dataset, keyed by split name."""
    if cfg.dataset == "demo":
        root = cfg.annotations[0] if cfg.annotations else Path(cfg.out).parent / DEMO_DIR
        if not cfg.annotations:
            from r2.demo import make_demo
            make_demo(root, n_videos=cfg.demo_videos, progress=cfg.progress)
        return {split: datasets.load_split("demo", split, annotations=root) for split in ("train", "val")}
    if cfg.dataset == "custom":
        if not cfg.annotations:
            raise ValueError("--dataset custom needs --annotations FILE.jsonl [FILE.jsonl ...] (split = file stem)")
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
    raise ValueError(f"--dataset {cfg.dataset} needs --videos DIR, the folder holding its video files "
                     f"(README: 'The six benchmarks' says where to download them)")


def shard_items(items, shard: tuple[int, int]) -> list[str]:
    """The video ids (or query texts) that shard (i, n) extracts: every n-th of the sorted items, from the i-th.
    One rule for the extractor and for `r2.verify`, which reports what each shard still lacks."""
    i, n = shard
    return sorted(items)[i::n]


def extract(cfg: ExtractConfig) -> Summary:
    """Extract this shard's videos and query texts into the cache; safe to re-run (finished work is skipped)."""
    start = time.time()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model = clip.load_clip(cfg.clip, device)  # first: a missing checkpoint fails before any other work
    layers = clip.parse_layers(cfg.layers, model.vision_layers)
    splits = load_annotations(cfg)
    records = [r for rs in splits.values() for r in rs]
    folder = videos_dir(cfg)
    fps_of: dict[str, float] = {}
    for r in records:
        fps_of.setdefault(r.vid, r.fps)
    vids = shard_items(fps_of, cfg.shard)
    texts = shard_items({r.query for r in records}, cfg.shard)

    rates = sorted(set(fps_of.values()))
    fp = fingerprint(model, layers, rates[0] if len(rates) == 1 else "per-video", cfg.bf16)
    dims = {"video_dim": model.vision_width, "query_dim": model.text_width, "tokens": model.tokens,
            "layers": layers}
    summary = Summary()
    try:
        cache.write_entry(cfg.out, dataset=cfg.dataset, fingerprint=fp, dims=dims,
                          annotations={split: [r.to_json() for r in rs] for split, rs in splits.items()})
        _extract_shard(cfg, model, layers, fp, dims, vids, texts, fps_of, folder, summary)
    except OSError as e:  # the entry, a segment, the lock or failures.jsonl could not be written
        raise cache.CacheError(
            f"cannot write the cache {cfg.out} ({type(e).__name__}: {' '.join(str(e).split())[:300]}): disk full or "
            f"file size limit? The {summary.done + summary.skipped} videos committed in this shard are intact; free "
            f"space and re-run the same command to resume") from None
    summary.seconds = time.time() - start
    return summary


def _extract_shard(cfg: ExtractConfig, model: clip.Clip, layers: list[int], fp: dict, dims: dict, vids: list[str],
                   texts: list[str], fps_of: dict[str, float], folder: Path, summary: Summary):
    """Encode this shard's query texts, then its videos, appending each to the shard's segment as it is done."""
    with cache.ShardWriter(cfg.out, shard=cfg.shard, fingerprint=fp, dims=dims) as writer, torch.inference_mode():
        todo_texts = [t for t in texts if t not in writer.queries]
        for chunk in range(0, len(todo_texts), 1024):
            batch = todo_texts[chunk:chunk + 1024]
            for text, feats in zip(batch, clip.encode_texts(model, batch, layers, bf16=cfg.bf16)):
                writer.add_query(text, feats.cpu().numpy())
                summary.bytes += feats.numel() * 2
        summary.queries = len(todo_texts)

        todo = [v for v in vids if v not in writer.videos]
        summary.skipped = len(vids) - len(todo)
        bar = tqdm(total=len(todo), unit="video", disable=not cfg.progress, desc=f"extract {Path(cfg.out).stem}")

        def decode(vid: str) -> video.Frames:
            return video.decode(datasets.video_file(cfg.dataset, vid, folder), fps_of[vid], size=model.image_size)

        for vid, result in video.prefetch(todo, decode, depth=2):
            try:
                if isinstance(result, BaseException):
                    raise result
                feats = clip.encode_frames(model, result.frames, layers, batch_size=cfg.batch_size, bf16=cfg.bf16)
                feats = feats.to(torch.float16).cpu().numpy()  # (T, K, P+1, Dv)
                writer.add_video(vid, feats, result.times, result.duration, result.fps)
            except (video.VideoDecodeError, FileNotFoundError, ValueError) as e:
                summary.failed += 1
                writer.failed({"vid": vid, "error": f"{type(e).__name__}: {e}"})
                tqdm.write(f"skipped {vid!r}: {e}")
            else:
                summary.done += 1
                summary.frames += len(feats)
                summary.bytes += feats.nbytes
            bar.update()
            elapsed = max(bar.format_dict["elapsed"], 1e-9)
            bar.set_postfix(frames_per_s=f"{summary.frames / elapsed:.1f}", failed=summary.failed)
        bar.close()


def failures(entry: Path) -> list[dict]:
    """The failure lines logged for a cache (empty when every video was extracted)."""
    path = cache.parts_dir(entry) / "failures.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
