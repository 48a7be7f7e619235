"""The six benchmarks (plus `demo` and `custom`): annotation loaders, one record form, saliency targets, video files.

Every loader returns `Record`s: query id, text, video id, duration (s), the frame rate the features are sampled at,
GT windows in seconds exactly as written in the file, and per-clip raw saliency scores (clips x annotators).

Bad-input policy (documented here once, applied by every loader):
- Structural problems (a line that is not JSON, a missing field, a wrong type, a non-finite number, a window that is
  not a [start, end] pair, saliency rows of unequal width, clip ids outside the video) raise one AnnotationError
  (a ValueError) "FILE:LINE: ..." that names the field and what to do. The benchmark files are clean, so this never fires on them.
- Semantic quirks of windows (reversed, zero-length, starting before 0 or ending past the duration) are kept as written:
  SPEC §4 fixes them when training targets are built (`clean_windows`), and the evaluators score the file as written.
  Ego4D-NLQ has such windows (zero-length, past the duration). For `demo` / `custom` files each quirk kind is reported
  once per file as a warning naming the first FILE:LINE and the count.
"""
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2.errors import AnnotationError, ConfigError, NotFoundError, command
from r2.recipes import DATASETS, DatasetInfo, recipe

__all__ = [
    "DATASETS", "ClipScores", "DatasetInfo", "Record", "TVSUM_SPLITS", "YOUTUBE_SPLITS", "VIDEO_EXTENSIONS",
    "data_root", "dataset_info", "duration_mismatch", "load_split", "saliency_target", "video_file",
]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm")


def dataset_info(name: str) -> DatasetInfo:
    """The dataset's facts (fps, splits, files, domains): `r2.recipes.recipe(name).info`."""
    return recipe(name).info


def data_root(path: str | Path | None = None) -> Path:
    """The folder holding the benchmarks' annotation folders: the argument, else env R2_DATA."""
    if path is None:
        path = os.environ.get("R2_DATA")
        if not path:
            raise ConfigError("no annotation root: pass --data-root PATH (or root=...) or set env R2_DATA to the "
                              "folder holding qvhighlights/, charades_sta/, tacos/, ego4d_nlq/, youtube_highlights/, "
                              "tvsum/")
    root = Path(path)
    if not root.is_dir():
        raise NotFoundError(f"annotation root {root} is not a folder: pass the folder holding the benchmarks "
                            f"(or set env R2_DATA)")
    return root


@dataclass
class Record:
    qid: int | str                       # as in the source file; written back unchanged in submissions
    query: str
    vid: str
    duration: float                      # seconds
    fps: float                           # frames sampled per second for this video
    windows: list[list[float]]           # [[start, end], ...] seconds, as in the file
    clip_scores: "list[list[float]] | ClipScores | None"  # (num_clips, annotators) raw scores, one row per
    #                                                        1/fps-second clip (ClipScores: listed clips only)
    domain: str | None = None            # YouTube / TVSum domain

    def to_json(self) -> dict:
        """QVHighlights-style dict; `relevant_clip_ids` lists the clips covered by a window or scored non-zero
        (for QVHighlights exactly the file's list), all clips when there are no windows (YouTube, TVSum)."""
        d = {"qid": self.qid, "query": self.query, "vid": self.vid, "duration": self.duration,
             "relevant_windows": [list(w) for w in self.windows], "fps": self.fps}
        if self.domain is not None:
            d["domain"] = self.domain
        if isinstance(self.clip_scores, ClipScores):
            d["relevant_clip_ids"] = list(self.clip_scores.rows)
            d["saliency_scores"] = [list(row) for row in self.clip_scores.rows.values()]
            d["num_clips"] = len(self.clip_scores)
        elif self.clip_scores is not None:
            n = len(self.clip_scores)
            if self.windows:
                covered = {k for s, e in self.windows for k in range(max(0, int(s * self.fps)),
                                                                    min(n, math.ceil(e * self.fps)))}
                ids = sorted(covered | {k for k, row in enumerate(self.clip_scores) if any(row)})
            else:
                ids = list(range(n))
            d["relevant_clip_ids"] = ids
            d["saliency_scores"] = [list(self.clip_scores[k]) for k in ids]
            d["num_clips"] = n
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "<record>") -> "Record":
        """Inverse of `to_json` (also reads QVHighlights-format dicts that carry "fps")."""
        if "fps" not in d:
            raise AnnotationError(f"{source}: field 'fps' missing: records written by Record.to_json carry it")
        fps = _number(d, "fps", source, positive=True)
        return _parse_grounding(d, source, fps, require_windows=False)


class ClipScores(Sequence):
    """(num_clips, annotators) saliency scores held sparsely: the listed clips' rows, zeros elsewhere.

    num_clips comes from the annotated duration, which can be far larger than the video (a typo: 1e12 s), so
    nothing here is sized by it: memory follows the file's listed rows, and `saliency_target` reads only as many
    clips as the video has frames."""

    def __init__(self, num_clips: int, rows: dict[int, list[float]]):
        self.num_clips = num_clips
        self.rows = dict(sorted(rows.items()))  # clip id -> one score per annotator
        self.width = len(next(iter(self.rows.values())))

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, k: int) -> list[float]:
        if not isinstance(k, int) or not -self.num_clips <= k < self.num_clips:
            raise IndexError(f"clip {k!r} outside 0..{self.num_clips - 1}")
        return list(self.rows.get(k % self.num_clips, [0.0] * self.width))

    def __eq__(self, other) -> bool:
        if isinstance(other, ClipScores):
            return (self.num_clips, self.rows) == (other.num_clips, other.rows)
        if isinstance(other, list):  # the dense form (YouTube / TVSum loaders): as long as this is
            return len(other) == self.num_clips and all(self[k] == list(row) for k, row in enumerate(other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"ClipScores(num_clips={self.num_clips}, rows={self.rows!r})"

    def dense(self, n: int) -> np.ndarray:
        """The first min(n, num_clips) clips' rows, float64 (clips, annotators)."""
        out = np.zeros((min(n, self.num_clips), self.width))
        for k, row in self.rows.items():
            if k < len(out):
                out[k] = row
        return out


# ---------------------------------------------------------------------------------------------------- parsing
def _number(d: dict, key: str, source: str, positive: bool = False) -> float:
    if key not in d:
        raise AnnotationError(f"{source}: field {key!r} missing")
    v = d[key]
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise AnnotationError(f"{source}: field {key!r} = {v!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AnnotationError(f"{source}: field {key!r} = {v!r} is not a finite number")
    if positive and v <= 0:
        raise AnnotationError(f"{source}: field {key!r} = {v!r} must be > 0")
    return v


def _text(d: dict, key: str, source: str) -> str:
    if key not in d:
        raise AnnotationError(f"{source}: field {key!r} missing")
    if not isinstance(d[key], str):
        raise AnnotationError(f"{source}: field {key!r} = {d[key]!r} must be a string")
    return d[key]


def _windows(d: dict, source: str, required: bool) -> list[list[float]]:
    w = d.get("relevant_windows")
    if w is None:
        if required:
            raise AnnotationError(f"{source}: field 'relevant_windows' missing: every query needs at least one "
                                  f"[start, end] window in seconds")
        return []
    if not isinstance(w, list) or (required and not w):
        raise AnnotationError(f"{source}: field 'relevant_windows' = {w!r} must be a non-empty list of [start, end]")
    for pair in w:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                           for x in pair)):
            raise AnnotationError(f"{source}: field 'relevant_windows' has {pair!r}: each window must be [start, end] "
                                  f"in seconds (finite numbers)")
    return w


def _clip_scores(d: dict, source: str, fps: float, duration: float) -> ClipScores | None:
    ids, scores = d.get("relevant_clip_ids"), d.get("saliency_scores")
    if ids is None and scores is None:
        return None
    if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores) or not ids:
        raise AnnotationError(f"{source}: fields 'relevant_clip_ids' and 'saliency_scores' must be non-empty lists of "
                              f"equal length (one score row per listed clip)")
    n = d["num_clips"] if "num_clips" in d else int(duration * fps)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AnnotationError(f"{source}: field 'num_clips' = {n!r} must be a whole number >= 1")
    width = len(scores[0]) if isinstance(scores[0], list) else -1
    rows = {}
    for k, row in zip(ids, scores):
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise AnnotationError(f"{source}: field 'relevant_clip_ids' has {k!r}, outside the video's {n} clips "
                                  f"(int(duration * fps)); fix the id or the duration")
        if (not isinstance(row, list) or len(row) != width or width <= 0
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                           for x in row)):
            raise AnnotationError(f"{source}: field 'saliency_scores' row {row!r} must hold one finite number per "
                                  f"annotator, {width} in every row")
        rows[k] = list(row)
    return ClipScores(n, rows)


def _parse_grounding(d: dict, source: str, fps: float, require_windows: bool = True) -> Record:
    if not isinstance(d, dict):
        raise AnnotationError(f"{source}: expected a JSON object per line, got {type(d).__name__}")
    if "qid" not in d:
        raise AnnotationError(f"{source}: field 'qid' missing")
    qid = d["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise AnnotationError(f"{source}: field 'qid' = {qid!r} must be an int or a string")
    duration = _number(d, "duration", source, positive=True)
    windows = _windows(d, source, require_windows)
    domain = d.get("domain")
    return Record(qid=qid, query=_text(d, "query", source), vid=_text(d, "vid", source), duration=duration,
                  fps=fps, windows=windows, clip_scores=_clip_scores(d, source, fps, duration),
                  domain=domain if isinstance(domain, str) else None)


def _warn_window_quirks(path: Path, records: list[Record], lines: list[int]) -> None:
    quirks = {"reversed": lambda s, e, dur: e < s, "zero-length": lambda s, e, dur: e == s,
              "negative start": lambda s, e, dur: s < 0, "past the duration": lambda s, e, dur: e > dur}
    for kind, test in quirks.items():
        hits = [(ln, w) for r, ln in zip(records, lines) for w in r.windows if test(w[0], w[1], r.duration)]
        if hits:
            warnings.warn(f"{path}:{hits[0][0]}: window {hits[0][1]} is {kind} ({len(hits)} such windows in this "
                          f"file); kept as written: SPEC §4 repairs it in training targets, evaluation scores it "
                          f"as written", stacklevel=3)


def _read_jsonl(path: Path, fps: float, check_quirks: bool) -> list[Record]:
    if not path.is_file():
        raise NotFoundError(f"annotation file {path} not found: check the data root (R2_DATA) or --annotations")
    records, lines, seen = [], [], {}
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path}:{ln}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{source}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            r = _parse_grounding(d, source, fps)
            if r.qid in seen:
                raise AnnotationError(f"{source}: qid {r.qid!r} already used on line {seen[r.qid]}; qids must be unique")
            seen[r.qid] = ln
            records.append(r)
            lines.append(ln)
    if not records:
        raise AnnotationError(f"{path}: no records: expected one JSON object per line")
    if check_quirks:
        _warn_window_quirks(path, records, lines)
    return records


# ---------------------------------------------------------------------------------------------------- YouTube / TVSum
def read_json_videos(path: Path) -> dict:
    """A {video_id: {...}} JSON file (the UMT YouTube / TVSum schema, or a prediction file); clear errors."""
    if not path.is_file():
        raise NotFoundError(f"annotation file {path} not found: check the data root (R2_DATA) or --annotations")
    try:
        with open(path, encoding="utf-8") as f:
            anno = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(anno, dict):
        raise AnnotationError(f"{path}: expected {{video_id: {{...}}}} at the top level")
    return anno


def _split_vids(info: DatasetInfo, splits: dict, anno: dict, split: str, domain: str | None) -> list[tuple[str, str]]:
    if split not in info.splits:
        raise ConfigError(f"dataset {info.name!r} has no split {split!r}; valid splits = {info.splits}")
    if domain is not None and domain not in info.domains:
        raise ConfigError(f"dataset {info.name!r} has no domain {domain!r}; valid domains = {info.domains}")
    domains = info.domains if domain is None else (domain,)
    return [(dom, vid) for dom in domains for vid in splits[dom][split] if vid in anno]


def _video_entry(anno: dict, vid: str, keys: tuple[str, ...], path: Path) -> dict:
    entry = anno[vid]
    for key in keys:
        if not isinstance(entry, dict) or key not in entry:
            raise AnnotationError(f"{path}: video {vid!r}: field {key!r} missing")
    return entry


def _load_youtube(path: Path, split: str, domain: str | None) -> list[Record]:
    anno = read_json_videos(path)
    records = []
    for dom, vid in _split_vids(dataset_info("youtube"), YOUTUBE_SPLITS, anno, split, domain):
        e = _video_entry(anno, vid, ("fps", "frames", "domain", "info", "clip", "match"), path)
        source = f"{path}: video {vid!r}"
        duration = _number(e, "frames", source, positive=True) / _number(e, "fps", source, positive=True)
        if not isinstance(e["info"], list) or len(e["info"]) < 6 or not isinstance(e["info"][5], str):
            raise AnnotationError(f"{source}: field 'info' must be the YouTube metadata list with the title at index 5")
        match = e["match"]
        if not isinstance(match, list) or not match or len(match) != len(e["clip"]):
            raise AnnotationError(f"{source}: field 'match' must hold one value in {{-1, 0, 1}} per entry of 'clip'")
        records.append(Record(qid=vid, query=e["info"][5], vid=vid, duration=duration, fps=len(match) / duration,
                              windows=[], clip_scores=[[float(m)] for m in match], domain=dom))
    return records


def _load_tvsum(path: Path, split: str, domain: str | None) -> list[Record]:
    anno = read_json_videos(path)
    records = []
    for dom, vid in _split_vids(dataset_info("tvsum"), TVSUM_SPLITS, anno, split, domain):
        e = _video_entry(anno, vid, ("fps", "frames", "domain", "title", "anno"), path)
        source = f"{path}: video {vid!r}"
        duration = _number(e, "frames", source, positive=True) / _number(e, "fps", source, positive=True)
        rows = e["anno"]
        if not isinstance(rows, list) or not rows or any(not isinstance(r, list) or len(r) != len(rows[0])
                                                          for r in rows):
            raise AnnotationError(f"{source}: field 'anno' must be a (clips x annotators) matrix")
        records.append(Record(qid=vid, query=_text(e, "title", source), vid=vid, duration=duration, fps=0.5,
                              windows=[], clip_scores=[[float(x) for x in r] for r in rows], domain=dom))
    return records


# ---------------------------------------------------------------------------------------------------- public
def load_split(name: str, split: str, root: str | Path | None = None, annotations: str | Path | None = None,
               domain: str | None = None, fps: float | None = None) -> list[Record]:
    """Records of one split. `annotations` overrides where the file is: a file is read as-is, a folder replaces
    `<root>/<dataset folder>`. demo: `annotations` is the folder with train.jsonl / val.jsonl. custom: `annotations` is
    the jsonl file (or a folder holding `<split>.jsonl`) and the split name is the file stem. `domain` selects one
    YouTube / TVSum domain (None = all domains). `fps` sets a custom dataset's sampling rate (default 0.5, one
    frame per 2 s clip; its saliency scores are then one row per 1/fps-second clip)."""
    info = dataset_info(name)
    name = info.name  # the recipe's spelling (the lookup takes any case)
    if fps is not None and name != "custom":
        raise ConfigError(f"dataset {name!r} is sampled at its own fixed rate; fps={fps} applies to custom only")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"--fps {fps}: must be a positive number of frames per second")
    if domain is not None and not info.domains:
        raise ConfigError(f"dataset {name!r} has no domains; domain={domain!r} applies to "
                          f"{' and '.join(n for n in DATASETS if dataset_info(n).domains)} only")
    if name in ("demo", "custom"):
        if annotations is None:
            what = "the folder with train.jsonl and val.jsonl" if name == "demo" else "the jsonl file (split = stem)"
            raise ConfigError(f"dataset {name!r} reads QVHighlights-format jsonl: pass annotations=PATH "
                              f"(--annotations), {what}")
        path = Path(annotations)
        if name == "demo":
            if not path.is_dir():
                raise ConfigError(f"demo annotations {path} must be the folder holding train.jsonl and val.jsonl")
            path = path / info.file_for(split)
        elif path.is_dir():
            path = path / f"{split}.jsonl"
        elif path.stem != split:
            raise ConfigError(f"custom split {split!r} does not match the file {path}: the split name is the file "
                              f"stem ({path.stem!r})")
        return _read_jsonl(path, fps or info.fps, check_quirks=True)
    file_name = info.file_for(split)
    if annotations is not None and Path(annotations).is_file():
        path = Path(annotations)
    else:
        folder = Path(annotations) if annotations is not None else data_root(root) / info.folder
        path = folder / file_name
    if name == "youtube":
        return _load_youtube(path, split, domain)
    if name == "tvsum":
        return _load_tvsum(path, split, domain)
    return _read_jsonl(path, info.fps, check_quirks=False)


def saliency_target(info_or_name: DatasetInfo | str, record: Record, n_frames: int) -> np.ndarray:
    """(n_frames,) saliency target in [0, 1] per SPEC §4.
    qvhighlights: clip score sum / (4 x annotators) (= /12 for QVHighlights' 3 annotators); windows: 1 on frames
    range(ceil(gs*fps), ceil(ge*fps)) of the repaired windows; tvsum: (sum - A) / (4A) for A annotators on a 1-5
    scale; youtube: (match + 1) / 2. Annotated clip counts that differ from n_frames (qvhighlights, tvsum: by < 5,
    as the reference allows) are cut or zero-padded; a larger gap or any YouTube mismatch raises, naming the video."""
    info = dataset_info(info_or_name) if isinstance(info_or_name, str) else info_or_name
    kind = info.saliency
    if kind == "windows" or (kind == "qvhighlights" and record.clip_scores is None):  # custom sets may lack scores
        from r2.targets import clean_windows  # here, not at the top: reading annotations needs no torch

        w = clean_windows(record.windows, n_frames, record.fps)  # (N, 2) frames
        target = np.zeros(n_frames, dtype=np.float32)
        for s, e in w.tolist():
            target[math.ceil(s):math.ceil(e)] = 1.0
        return target
    if record.clip_scores is None:
        raise AnnotationError(f"{info.name} video {record.vid!r} (qid {record.qid!r}) has no clip saliency scores")
    n_clips = len(record.clip_scores)
    if abs(n_clips - n_frames) >= 5 and kind != "youtube":
        raise AnnotationError(f"{info.name} video {record.vid!r} (qid {record.qid!r}): {n_frames} frames but {n_clips} "
                              f"annotated clips (duration {record.duration} s at {record.fps} fps); fix the duration, or "
                              f"re-extract at {record.fps} fps")
    scores = _score_matrix(record.clip_scores, n_frames)  # (min(num_clips, n_frames), annotators)
    a = scores.shape[1]
    if kind == "qvhighlights":
        per_clip = scores.sum(axis=1) / (4.0 * a)
    elif kind == "tvsum":
        per_clip = (scores.sum(axis=1) - a) / (4.0 * a)
    elif kind == "youtube":
        if n_clips != n_frames:
            raise AnnotationError(f"youtube video {record.vid!r}: {n_frames} frames but {n_clips} annotated clips; "
                                  f"extract one frame per clip (fps = clips / duration)")
        return ((scores[:, 0] + 1) / 2).astype(np.float32)
    else:
        raise ConfigError(f"dataset {info.name!r}: unknown saliency kind {kind!r}")
    target = np.zeros(n_frames, dtype=np.float32)
    m = min(n_frames, len(per_clip))
    target[:m] = per_clip[:m]
    return target


def _score_matrix(scores: "list[list[float]] | ClipScores", n: int) -> np.ndarray:
    """The first n clips' score rows, float64 (clips, annotators): work bounded by the video, not the annotation."""
    if isinstance(scores, ClipScores):
        return scores.dense(n)
    return np.asarray(scores[:n], dtype=np.float64)


DURATION_TOLERANCE = 0.1  # annotated vs decoded duration: more than 10 % (and two sample periods) apart is reported


def duration_mismatch(annotated: float, decoded: float, n_frames: int, fps: float) -> str | None:
    """A sentence when a record's duration and its decoded video disagree beyond the tolerance, else None."""
    if abs(annotated - decoded) <= max(2.0 / fps, DURATION_TOLERANCE * max(annotated, decoded)):
        return None
    return (f"annotated as {annotated:g} s but the file decodes to {decoded:g} s ({n_frames} frames at {fps:g} fps): "
            f"training clamps windows to the decoded frames (past the end: the last frame) and evaluation uses the "
            f"annotated {annotated:g} s; fix the duration in the annotation file, or the video")


def video_file(name: str, vid: str, videos_dir: Path) -> Path:
    """The video file of `vid`: `<videos_dir>/<vid><suffix><ext>` for ext in VIDEO_EXTENSIONS (first found). An id
    is a path inside `videos_dir` ('/' names a sub-folder); one that would leave it is an AnnotationError."""
    info = dataset_info(name)
    stem = f"{vid}{info.video_suffix}"
    if Path(stem).is_absolute() or ".." in Path(stem).parts:
        raise AnnotationError(f"{name} video id {vid!r} leaves the videos folder {videos_dir} (an absolute path or '..'); "
                              f"ids name files inside it, '/' for a sub-folder")
    candidates = [Path(videos_dir) / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS]
    for path in candidates:
        if path.is_file():
            return path
    raise NotFoundError(f"{name} video {vid!r} not found: looked for {stem}{{{','.join(VIDEO_EXTENSIONS)}}} "
                        f"in {videos_dir}")


# The fixed train/val videos of UMT / R2-Tuning (`datasets/constants.py`), intersected with the annotation file's keys.
YOUTUBE_SPLITS = {
    "dog": {
        "train": [
            "BsjTtq337mM", "eGCD1F74iy8", "x2Za-t1yHtI", "iyYiqa0QZXM", "azy9ijU6f9I", "NNtSZ6cPiwA", "U9CBalvFfbM",
            "AZDkqJaOgJU", "-olTgMPAyMI", "i35F1Ec3Ats", "6bS6-GVLBeM", "ZGszTEn28v8", "EEb8iSMqwj4", "p2hYGNkRMCw",
            "3kbptPDIz4U", "iLHRqR-M9HQ", "zyooMDuAgCA", "dOVsQ63N0gg", "7H_qqQvPUzY", "Z5BEFsaYIS4", "iWO6io44-Fs",
            "vVmGisWK0QI", "L10kN7Btk90", "2yql1mvWbDs", "Iu2nbtr_Uuk", "NSmOKAauZpM", "PAhQGoURAro", "uJ81Us4mBOc",
            "1krGVyfIaOw", "p9yW6FxsrJ4", "DLGRJfpGmCQ", "0XTXKe2TOAg", "qpc4OSqeV7I", "q_PJFuBOk7k", "0Uu53hCnKQ4",
            "-szRD9kyNug", "rUPxwWmJYpg", "hseONiKKx_8", "BLaQcOcDfjo", "nW5JulWYEc8", "rMvH1SMGwwI", "l6KlvTJkTgk",
            "O8j4U3NjNvs", "8AJTZeEeStk"],
        "val": [
            "a2nj7XCo2Rk", "9rP5yF9EC3Y", "OxSsRZqPfyk", "bZzP2MieC1c", "PcvdX5OVgfQ", "p0oxRJD1GUk", "msjK8nHZHZ0",
            "hSRyclcZyGM", "dlH2K9N_jSM", "OCVXhRG2fEA", "MkBdHvXPocc", "yN7h90Y-04g", "PWqLJKZeBC8", "9D_Q8l_ruQk",
            "Mp8Pz86J660", "1gjntnYm8NA", "O3XxuutEvoo", "wf_qlAizlSM", "fXx44D1sqUw", "P0MnXh6bnKk", "sTd06idFa0E",
            "ppNjl3I3iJs", "Om5mczkpcVg", "xZIN_s-qhbU"]},
    "gymnastics": {
        "train": [
            "Wfv90YJ2YtA", "MbD5OIR9yWc", "fZwCJWkC_Qw", "AyRI1CioQfY", "xV_5YCdVqSM", "19UO7T32DJI", "o2gAP2Clg_s",
            "ewyfAOrBzjQ", "CMTKpA683Ig", "aNjphhjTgqs", "dmJ0Nq4DF2w", "57IQ6EudvGU", "BAlUYtPUsVI", "_UU4XqYVDqE",
            "Kq4OhBiQk_E", "D6nyvx9kEac", "g-m4-zeCisU", "_45vTFtcduE", "9L-Pocc_u70", "0636XaURL-A", "GCabQyaHSMg",
            "vUi1Scb35fQ", "eK-Yuoou_1I", "kkS7TgNZwJI", "2EFkINKg3nA", "eKvALYDh7RU", "Hyp3Hpk6dyA", "9rpzf3sgQkw",
            "kHNAnpewyeo", "ydQij10qrZM", "41u2V_ZAKto", "6NSWsMKAgEU", "kUs_yUR-C2k", "bs3ZBcfhvKA"],
        "val": [
            "2AuigNFEsTM", "rPsKpHKzUso", "tzq5cJQ9NQA", "DyZ0gZ5xmxI", "PEKRfJYYEgU", "affAIVH9uRA", "FT7yIi3-tG0",
            "T_zWyrVzyvw", "RoiLzMA_ilA", "nBZiGSccsTg", "z3cNtOMKK7A", "EwQ-aMK2sKg", "Rq0BpciuvBM", "s6LNwTThBgs",
            "-hE9v3izo4c", "KldEfRhv7H0", "eUyuw2J5FaE", "E0aRE1_ea8E", "BU7YlQAOBkM", "iDJM9j11U-c", "zr5LSPMBpiI",
            "NAfBa7lqg2Q", "eB4Toq9dUWs", "YPd7RDN5CkE", "86YLsw7efDM", "iQRMMFiYAUw", "lzEhLAPxZyQ", "PAjJbT1DRnY"]},
    "parkour": {
        "train": [
            "qz1UnnxlWhI", "MzODICzycHs", "0swXWs9yWA4", "Nnv22OW_PaI", "LUhZJLY2uKc", "yZz8z1l3XJU", "3dvjtdMC2ls",
            "e27ppPer9XY", "HJNn2WlKFhM", "j4OxlxnapNI", "rhABvn7VjSQ", "3PCwXpwYqLs", "LECL1bIpi5w", "w0ouP79iZWc",
            "z6aKQPMJUC0", "kATlFTwxBVY", "3SM6a8eyuVA", "v-Sfc4COqRQ", "64eu8pwuIUE", "7WKm0XDk3og", "2F5Sc0Jgk4g"],
        "val": [
            "TFdbCRkVeIA", "uGLs9atTvNc", "qlGPuopK3CI", "ucTkpjZO_o4", "4-4BgyGphLQ", "08k4ysX_XJE", "6sMNnWqa_as",
            "oT6g0I2Ok9o", "Be4IlnKeBOo", "yUjJq0kvxcw", "fLek7GRIxjE"]},
    "skating": {
        "train": [
            "7owXLUkpoNY", "1OLM0_Jzt5M", "b1LXb0Sbiy0", "3fGux6-ttlA", "HQvRun80GyA", "a8M-5nTrll8", "bA3CxZllhsI",
            "AUAsfZtcB4E", "FG57uCJvQLw", "jXIuv5uFPTI", "eG-hdYLoS98", "2SdJBl251PU", "2PHJqqrGC80", "EtZkkFhniRw",
            "jUiwyguxzIw", "FL6mXlaF78Q", "BdemklZtYWI", "ATk_ncI1-BA", "4wiKDfq3X8U", "BN7GBjVlFTo", "JiMZvMkkbRo",
            "2DIXYkSnRf4", "dZ3i-HuhQXM", "7jZydh62m8M"],
        "val": [
            "2oOe2_Ew6Ao", "DGcO0QgcXtw", "ixsKaNplm6o", "7TQbqKWjLcI", "CQZNrEstSag", "g1WbAIzkw80", "4cyx1VpDjc4",
            "BGZaaqFjoRY", "AJ98A2y1dVw", "1n7Afe5AZCM", "8x8ESK5MnR0"]},
    "skiing": {
        "train": [
            "6Usy87KaF-A", "DtjKkp_4KDQ", "4Wt7TM2wDxI", "iKnzSGFwdbc", "nALCc6HPQNs", "WL4TA--CVcA", "dFrfsgW1M98",
            "x6qmrVojcYc", "pvcmQ9J_BYw", "S3VEYFAP_pk", "pU57a3jYMEk", "33TrLdo3ook", "xLhHU8uo2aY", "fAHBmka6Psc",
            "9HYzZk5kiJA", "T0gjqYbeU1g", "7o628W-bFy0", "YKDm_PCa-HM", "R3DV2zDnNqg", "NCe9YeXTvHo", "5tXxvscmZ-Y",
            "thNiPQLbi5w", "1TtJy8cSzqA", "zDRzOsmwa08", "gCI4gArPjNA", "uw0i26NHucs", "1giAsZC_ywQ", "OvgaPTfEnqo",
            "bFD_p5znoq4", "uKmqaAvjKgw", "5ivw_sdCTCU", "iwCSAYGwPq4", "HmmOPntPlRA", "FHCEyiM-NoY", "EUSFMmoE_jI",
            "igvSxtdsT8w", "zEgMYFiEaX4", "0K2FKccDp9A", "tdyz6h4ZtYs", "PO7GEbi2z3c", "mmiu7rRmSAU", "qL6Kic-CdTo",
            "0fNCsOY1WGk", "V3J26hr1ZSE", "GS-qBunN3B4", "ZLNvg8025Nw", "puAxGH6aWMY", "h-SlvHubhs8", "AdovZ4OAS8I",
            "UDvA1XMa1m4", "qdo3d7mR_9s", "qAinbyORWIw", "v1JpJueAElY", "TjH29fdjcqI", "f76B1uucoyo", "DNPPDcOd5eQ",
            "-GX95udKKm8", "YRO_RQ3aBgg", "1ptV2E7lm9U", "qa7dtf1Qcew", "_UJTkqYNrpA", "md14DNKq2_o", "tpewrb9dDyo",
            "yGoWYi_dHLY", "DZ3NRjDHwy8", "aMFcEuJUqpk", "6fT9KLuE7no", "lPdQMMAuOZo"],
        "val": [
            "SSlv7qJK5zA", "_BYqZjuKpKA", "ZueaKXReGjU", "mGST8ZekCZc", "JJSu7Lh9rvs", "IyoD3G5igY0", "MXyv-Ut9HRg",
            "Z8X9WIojH1U", "vT33-8KUb2Q", "HW6_sPym938", "9wtXO2lF6hM", "mRdthCqe6Nk", "RGxiOb9hlS0", "ruySf5zL7Kw",
            "I7wFmP6P7p0", "0AHkDElk3ws", "zqXd4EgUFhE", "91lDbBHUx0w", "iaHbK6ogafc", "jRbst8kjWW8", "drHPy6wSZGs",
            "5VaY6LgIqDs", "bXq9rRSbI3c", "hjZLa2DTuqs", "Ka2qcp3jmWo", "ZnA4-ggkFu8", "iXdt4v42mbs", "8aWN-0NZErI",
            "09v0HNf81J0", "YJCR2q-WRhQ", "RjagI4pAUpw", "_10CbYdTG5M", "lhgmIgzBQxs", "2pstGBM4p0w", "b53-VPsWom4",
            "x-G4r153n6o", "qBbqK5qlVSM", "XamrS9XyHuQ", "u_n7jMS1vlw", "AO6p0jlOd6U", "m-W-lcTkBQ0", "bMuyPVIlXW8",
            "kAAvTAKkIy4", "U6vnbCurZQA", "dHE8q7sZ70U", "w7fzLVRPSUc", "FLYkD7zHuHQ", "nhOhI24P7dM", "n5q2KhfoiWw",
            "7Hcyse0h9HE", "6_BPy_VaPSY"]},
    "surfing": {
        "train": [
            "Ai9FwQGn5ds", "hBl0Sm3_auw", "LMxMeg407Vg", "D3fk8doVui4", "Y9pxmLg6ti8", "p_JsivYdbgQ", "UokX-hcXQeo",
            "VYe5QfM5ecE", "I48VJ92ouTQ", "Tn-ebtUnq6E", "eWae-nWocPU", "-Yamat_0tbw", "c2Fy-rdXJy4", "xQ4NAp4vWbI",
            "g9kXCIjIjoE", "A96Jx6gv6_4", "e427qElqqN0", "tTcA5hiViPo", "wMdXzj_3aA0", "fqNzMz1n6uA", "jKVOA7RFCUo",
            "TJBJrk9iPPA", "_C8EjMxrS2s", "yj7abHfZTQQ", "NDcqgpsyWaU", "UJjwoivaGNo", "GZ_XS8EnnWo", "kJUBIcBjUZ0",
            "lWoLyR7lDAU", "FilbyF_PGjI", "fapRkcOe4vE", "t05r50PQqww", "QgStLppe610", "2TY8Q2WXUyk", "9y_ED3DyNhE",
            "CGwtinVGkVU", "nOuRhrAMaIw", "UN4TwjDajtQ", "-FHmVZWWgcE", "ksx0_BfpsLg", "agOBPDsQrTM", "XqggBwFOmFU",
            "orNzj1J8i-4", "6ZbTCHwt1gk", "0un3wh_pQAc", "4u6OURBLZDs", "us0agAKuvEM", "mVQYl7Q-TQs", "cB2SdlGHLMQ",
            "WK5t4To0zlA", "NNEuH_juUHI", "KTU7xfVOat0", "Y1nhbNaY1ZY", "YlXJnZe575s", "SH7Ns0ANzJU", "3TbZfeokCkE"],
        "val": [
            "o0on6yIXJQE", "4RsZz_8d8Ro", "p8VUjcZyK70", "0P2PZXUa0Bg", "p2eU5z647Mw", "mSVxaAJcNJQ", "bcmXVyFbsRg",
            "Eiq8GHi4kEo", "H5FEdJYokO4", "Mkyp0z_Cgig", "NB5Ez5kJfMU", "Xa0y6b6Vm6U", "gVcCGUtpA90", "0-fstXuo_Pw",
            "-d72e4v9skA", "lbp6_wCXqvw", "9GpZHq1n8ps", "CefGXyYu_zU", "SI2JbS48Upg", "hdklRTNrq0I", "J-P-t6g19SM",
            "K0f_DpVOjfA", "lw_1fEY9QTo", "uUuYnKLETLw", "HwKv3Xc5MAE", "wvQ0h5Nwsxc", "l8ME6z_EWKE", "s9dTu2fcbNg",
            "GS09SevPYT4", "YbwdDCzVczU", "jaCOI_VwIjc", "3Y1Jp1_fFLQ", "82OzgxT2tH8", "IjQhHPlTfdE", "KzQcJrT91jU",
            "t05AD0c08zE", "rGxWxX6nYO4", "QGp0kRzKiAc", "pK9gDWoOyko", "Srjd4pe6vck", "twGcxuhCXoU", "AshLUHPEb8M",
            "8En3M5CUc2E", "8sTJfTUk1d0", "o-bubyWTw60", "NctbssxGCtU", "L09Qo1ql0nM"]},
}

TVSUM_SPLITS = {
    "BK": {"train": ["WxtbjNsCQ8A", "EE-bNr36nyA", "oDXZc0tZe04", "uGu_10sucQo"], "val": ["Se3oxnaPsz0"]},
    "BT": {"train": ["eQu1rNs0an0", "qqR6AEXwxoQ", "EYqVtI9YWJA", "iVt07TCkFM0"], "val": ["JgHubY5Vw3Y"]},
    "DS": {"train": ["kLxoNp-UchI", "NyBmCxDoHJU", "jcoYJXDG9sw", "-esJrBWj2d8"], "val": ["E11zDS9XGzg"]},
    "FM": {"train": ["_xMr-HKMfVA", "byxOvuiIJV0", "VuWGsYPqAX8", "xmEERLqJ2kU"], "val": ["JKpqYvAdIsw"]},
    "GA": {"train": ["xxdtq8mxegs", "i3wAGJaaktw", "0tmA_C6XwfM", "3eYKfiOEJNs"], "val": ["Bhxk-O1Y7Ho"]},
    "MS": {"train": ["Hl-__g2gn_A", "WG0MBPpPC6I", "LRw_obCPUt0", "37rzWOQsNIw"], "val": ["Yi4Ij2NM7U4"]},
    "PK": {"train": ["GsAD1KT1xo8", "XkqCExn6_Us", "b626MiF1ew4", "PJrm840pAUI"], "val": ["cjibtmSLxQ4"]},
    "PR": {"train": ["RBCABdttQmI", "z_6gVvQb2d0", "4wU_LUjG5Ic", "91IHQYk1IQM"], "val": ["fWutDQy1nnY"]},
    "VT": {"train": ["gzDbaEs1Rlg", "XzYM3PfTM4w", "98MoyGZKHXc", "AwmHb44_ouw"], "val": ["J0nA4VgnoCo"]},
    "VU": {"train": ["akI8YFjEmUw", "HT5vyqe0Xaw", "vdmoEJ5YbrQ", "xwqBXPGE9pQ"], "val": ["sTEELN-vY30"]},
}


@command
def main(argv: list[str] | None = None) -> int:
    """`python -m r2.datasets download NAME|all [--root DIR] [--mirror URL]`: fetch the benchmarks' annotation
    files (r2.download)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["download"]:
        print("usage: python -m r2.datasets download NAME|all [--root DIR] [--mirror URL]", file=sys.stderr)
        return 2
    from r2.download import main as download_main

    return download_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
