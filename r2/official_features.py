"""Import the authors' released CLIP features into an ordinary r2 cache (`extract/import_official.py`).

The release (`<dataset>_clip_b32_{vid,txt}_k4.tar.gz`) unpacks to one NumPy file per video and per query:

    DIR/clip_b32_vid_k4/<vid>.npy   float16 (T, K, 50, 768)   the last K residual streams of ViT-B/32, ascending
                                                              depth (blocks 9..12 for K = 4), all 50 tokens
    DIR/clip_b32_txt_k4/<qid>.npy   float16 (L, K, 512)       the same blocks of the text tower, SOT..EOT tokens

which is exactly the layout of r2's taps (SPEC §2), so the arrays are written unchanged. Queries are keyed by qid
there and by text in an r2 cache (features depend on the text alone): every qid's file is read, a text shared by
several qids is stored once (its files agree), and a qid whose file is missing or malformed is logged in
`failures.jsonl` and skipped, like an undecodable video. The import is sharded and resumable like extraction, and
the cache's fingerprint is `r2.official.official_fingerprint`, the one official checkpoints carry.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r2 import cache, datasets, official
from r2.errors import R2Error
from r2.extract import ExtractConfig, Summary, load_annotations

__all__ = ["ImportConfig", "ImportSummary", "import_features", "feature_dirs"]

IMPORTABLE = ("qvhighlights", "charades", "tacos", "ego4d", "youtube", "tvsum", "custom")
TOKENS = 50  # ViT-B/32 at 224 px: [CLS] + 7 x 7 patches
VIDEO_DIM, QUERY_DIM = 768, 512


@dataclass
class ImportConfig:
    dataset: str  # one of the six benchmarks (or custom, with --annotations)
    features: Path  # the folder holding clip_b32_vid_k<K>/ and clip_b32_txt_k<K>/
    out: Path  # the cache entry file, e.g. cache/qvhighlights.h5
    annotations: list[Path] = field(default_factory=list)  # override the dataset's annotation files
    data_root: Path | None = None  # benchmarks' annotation root (default: $R2_DATA)
    shard: tuple[int, int] = (0, 1)  # (i, n): this process imports the i-th of n disjoint parts
    progress: bool = True


@dataclass
class ImportSummary(Summary):
    failed_queries: int = 0  # query texts none of whose qid files was usable (see failures.jsonl)

    def line(self) -> str:
        return super().line() + f" | queries failed: {self.failed_queries}"


def feature_dirs(root: Path) -> tuple[Path, Path, int]:
    """(video folder, query folder, K) of an unpacked release; a clear error when the layout is not there."""
    root = Path(root)
    vids = sorted(root.glob("clip_b32_vid_k*"))
    if not root.is_dir() or len(vids) != 1:
        found = ", ".join(p.name for p in vids) or "none"
        raise R2Error(f"{root}: expected exactly one clip_b32_vid_k<K>/ folder of the authors' release (found "
                      f"{found}); unpack <dataset>_clip_b32_vid_k4.tar.gz there (README: 'Start from the authors' "
                      f"features')")
    k_text = vids[0].name.rsplit("_k", 1)[1]
    txt = root / f"clip_b32_txt_k{k_text}"
    if not k_text.isdigit() or int(k_text) < 1 or not txt.is_dir():
        raise R2Error(f"{root}: {vids[0].name}/ needs its query features in {txt.name}/; unpack "
                      f"<dataset>_clip_b32_txt_k{k_text}.tar.gz there")
    return vids[0], txt, int(k_text)


def _read(path: Path, shape: tuple) -> np.ndarray:
    """One feature file as float16 with the expected trailing `shape` (None = any length); ValueError if not."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is not in {path.parent}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({' '.join(str(e).split())[:160]})") from None
    if array.ndim != len(shape) or array.shape[0] == 0 or any(
            want is not None and got != want for got, want in zip(array.shape, shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{path}: shape {array.shape}, expected {want}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: dtype {array.dtype}, expected float16 features")
    array = array.astype(np.float16, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: non-finite values")
    return array


def _splits(cfg: ImportConfig) -> dict[str, list[datasets.Record]]:
    """The records per split: the dataset's files under the data root, or exactly the --annotations given (one per
    split, in the dataset's split order; custom: split = file stem)."""
    if cfg.dataset == "custom" or not cfg.annotations:
        return load_annotations(ExtractConfig(dataset=cfg.dataset, out=cfg.out, annotations=cfg.annotations,
                                              data_root=cfg.data_root, progress=cfg.progress))
    names = datasets.dataset_info(cfg.dataset).splits
    if len(cfg.annotations) > len(names):
        raise R2Error(f"--annotations: {len(cfg.annotations)} files for the {len(names)} splits of {cfg.dataset} "
                      f"({', '.join(names)}): give one file per split, in that order")
    return {split: datasets.load_split(cfg.dataset, split, annotations=path)
            for split, path in zip(names, cfg.annotations)}


def _video_file(folder: Path, dataset: str, vid: str) -> Path:
    """<vid>.npy; TACoS files may carry the video file suffix (-cam-002) as well."""
    path = folder / f"{vid}.npy"
    suffix = datasets.dataset_info(dataset).video_suffix
    if not path.is_file() and suffix and (folder / f"{vid}{suffix}.npy").is_file():
        return folder / f"{vid}{suffix}.npy"
    return path


def import_features(cfg: ImportConfig) -> ImportSummary:
    """Write this shard's videos and queries from the release into the cache; safe to re-run (done work skipped).
    Every check runs before anything is written."""
    start = time.time()
    if cfg.dataset not in IMPORTABLE:
        raise R2Error(f"--dataset {cfg.dataset}: the authors released features for {', '.join(IMPORTABLE[:-1])} "
                      f"(or use custom with --annotations for a set in their layout)")
    vid_dir, txt_dir, k = feature_dirs(cfg.features)
    splits = _splits(cfg)
    records = [r for rs in splits.values() for r in rs]
    layers = official.clip_layers(k)
    fp = official.official_fingerprint(cfg.dataset, layers)
    dims = {"video_dim": VIDEO_DIM, "query_dim": QUERY_DIM, "tokens": TOKENS, "layers": layers}
    fps_of, duration_of, qids_of = {}, {}, {}
    for r in records:
        fps_of.setdefault(r.vid, r.fps)
        duration_of.setdefault(r.vid, r.duration)
        qids_of.setdefault(r.query, []).append(r.qid)
    vids = cache.shard_items(fps_of, cfg.shard)
    texts = cache.shard_items(qids_of, cfg.shard)

    summary = ImportSummary()
    cache.write_entry(cfg.out, dataset=cfg.dataset, fingerprint=fp, dims=dims,
                      annotations={split: [r.to_json() for r in rs] for split, rs in splits.items()})
    with cache.ShardWriter(cfg.out, shard=cfg.shard, fingerprint=fp, dims=dims) as writer:
        for text in (t for t in texts if t not in writer.queries):
            feats = _query_features(writer, txt_dir, text, qids_of[text], k)
            if feats is None:
                summary.failed_queries += 1
                continue
            writer.add_query(text, feats)
            summary.texts += 1
            summary.queries += len(qids_of[text])
            summary.bytes += feats.nbytes
        todo = [v for v in vids if v not in writer.videos]
        summary.skipped = len(vids) - len(todo)
        for vid in tqdm(todo, unit="video", disable=not cfg.progress, desc=f"import {Path(cfg.out).stem}"):
            try:
                feats = _read(_video_file(vid_dir, cfg.dataset, vid), (None, k, TOKENS, VIDEO_DIM))
            except (FileNotFoundError, ValueError) as e:
                summary.failed += 1
                writer.failed({"vid": vid, "error": f"{type(e).__name__}: {e}"})
                continue
            times = np.arange(len(feats), dtype=np.float64) / fps_of[vid]  # (T,) frame i sampled at i / fps
            writer.add_video(vid, feats, times, duration_of[vid], fps_of[vid])
            summary.done += 1
            summary.frames += len(feats)
            summary.bytes += feats.nbytes
    summary.seconds = time.time() - start
    return summary


def _query_features(writer: cache.ShardWriter, folder: Path, text: str, qids: list, k: int) -> np.ndarray | None:
    """The features of one query text from its qids' files: the first readable one, checked against the others
    (fp16 rounding apart); unreadable files are logged per qid. None when no qid of the text has a usable file."""
    found = None
    for qid in qids:
        try:
            feats = _read(folder / f"{qid}.npy", (None, k, QUERY_DIM))
        except (FileNotFoundError, ValueError) as e:
            writer.failed({"qid": qid, "query": text, "error": f"{type(e).__name__}: {e}"})
            continue
        if found is None:
            found = feats
        elif feats.shape != found.shape or np.abs(feats.astype(np.float32) - found).max() > 1e-2:
            writer.failed({"qid": qid, "query": text, "error": f"features differ from those of qid {qids[0]!r} "
                                                              f"with the same text; the first file is used"})
    return found
