"""Check a feature cache end to end, print its metadata, and rebuild its entry file from the shards.

    python -m r2.cache verify cache/x.h5 [--no-values]   structure, shapes, dtypes, finite values, fingerprints,
                                                         coverage of the annotations; exit 0 complete, 1 valid but
                                                         incomplete (missing or failed videos/queries), 2 broken
    python -m r2.cache info cache/x.h5                   the entry's metadata and a line per segment
    python -m r2.cache convert SRC DST --store int8      the same features in another store (fp16, int8, fp8):
                                                         a new cache DST; SRC is only read; re-run to resume
    python extract/merge.py --out cache/x.h5 [--dataset D --annotations ...]
                                                         after a sharded extraction: (re)write the entry when it
                                                         is missing, verify every shard, say what is left to run

Errors (exit 2) mean the cache is wrong: a segment that cannot be read, a dataset with the wrong dtype or shape, an
index row outside its data, a non-finite feature, a segment made with other settings, shards of different counts
(`--shard i/4` mixed with `--shard j/8`), a video or query stored twice. Missing coverage (exit 1) is normal while
shards run or after videos failed to decode: the report names each shard's missing items and `failures.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from r2 import cache, datasets
from r2.errors import command

__all__ = ["Report", "ShardStatus", "verify", "info", "merge", "main"]

SEGMENT_RE = cache.SEGMENT_RE
TEXT_CONTEXT = 77  # CLIP's text context: a query's SOT..EOT tokens never exceed it
SCAN_BYTES = 64 << 20  # feature rows read per block when checking values


@dataclass
class ShardStatus:
    """One shard (i of n) of the extraction, as found on disk against what the extractor assigns to it."""
    shard: str  # "i/n"
    segments: list[str]  # its segment files (empty: never run)
    videos: int  # committed videos of its assignment
    expected_videos: int  # videos the extractor assigns to it
    failed: list[str]  # assigned videos logged in failures.jsonl and not in the cache
    missing: list[str]  # assigned videos neither cached nor failed (not extracted yet)
    missing_queries: int  # assigned query texts not in the cache

    @property
    def complete(self) -> bool:
        return not self.failed and not self.missing and not self.missing_queries


@dataclass
class Report:
    entry: Path
    dataset: str = ""
    errors: list[str] = field(default_factory=list)  # the cache is wrong: exit 2
    notes: list[str] = field(default_factory=list)  # harmless findings (rows left by a killed writer, temp files)
    videos: int = 0  # distinct committed videos
    queries: int = 0  # distinct committed query texts
    frames: int = 0
    store: str = ""  # fp16, int8 or fp8 (the fingerprint's dtype)
    feature_bytes: int = 0  # bytes of the committed features as stored (compact stores: codes and scales)
    file_bytes: int = 0  # bytes on disk: entry + segments
    segments: int = 0
    expected_videos: int = 0  # distinct videos in the entry's annotations
    expected_queries: int = 0
    shards: list[ShardStatus] = field(default_factory=list)
    extra_videos: list[str] = field(default_factory=list)  # cached, but in no annotation record
    values_checked: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.shards) and all(s.complete for s in self.shards)

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0 if self.complete else 1

    def lines(self) -> list[str]:
        """The human summary `verify` and `merge` print."""
        out = [f"{self.entry}: dataset {self.dataset or '?'} | {self.segments} segments | videos {self.videos}/"
               f"{self.expected_videos} | queries {self.queries}/{self.expected_queries} | frames {self.frames} | "
               f"features {_size(self.feature_bytes)} ({self.store or '?'}) | on disk {_size(self.file_bytes)}"
               + ("" if self.values_checked else " | values not scanned (--no-values)")]
        for s in self.shards:
            if s.complete:
                continue
            if not s.segments:
                out.append(f"shard {s.shard}: never run ({s.expected_videos} videos): run the extraction with "
                           f"--shard {s.shard}")
            else:
                parts = [f"{s.videos}/{s.expected_videos} videos"]
                if s.failed:
                    parts.append(f"{len(s.failed)} failed (failures.jsonl; a re-run retries them): "
                                 f"{_head(s.failed)}")
                if s.missing:
                    parts.append(f"{len(s.missing)} not extracted yet: {_head(s.missing)}")
                if s.missing_queries:
                    parts.append(f"{s.missing_queries} query texts not extracted yet")
                out.append(f"shard {s.shard}: incomplete: " + "; ".join(parts) + f"; re-run with --shard {s.shard}")
        if self.extra_videos:
            out.append(f"note: {len(self.extra_videos)} cached videos are in no annotation record (the entry was "
                       f"rewritten with fewer records?): {_head(self.extra_videos)}")
        out += [f"note: {n}" for n in self.notes]
        out += [f"error: {e}" for e in self.errors]
        verdict = {0: "OK: complete and valid", 1: "valid but incomplete", 2: f"BROKEN: {len(self.errors)} errors"}
        out.append(verdict[self.exit_code])
        return out


def _size(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _head(items: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:k])
    return shown + (f" (+{len(items) - k} more)" if len(items) > k else "")


# ----------------------------------------------------------------------------------------------- verify


@dataclass
class _Segment:
    """What verify read from one segment: its committed items with their row ranges."""
    path: Path
    shard: tuple[int, int]
    videos: dict[str, tuple[int, int]]  # vid -> (first_row, n_rows)
    queries: dict[str, tuple[int, int]]
    info: dict[str, tuple[float, float]]  # vid -> (duration s, sampling fps) as extracted


def _check_ranges(path: Path, what: str, data: str, index: np.ndarray, start: int, length: int, size: int,
                  errors: list[str], min_length: int) -> int:
    """Index column pairs (start, length) must lie inside the data and never overlap; returns the committed end."""
    if len(index) == 0:
        return 0
    s, n = index[:, start], index[:, length]
    bad = np.flatnonzero((s < 0) | (n < min_length) | (s + n > size))
    if len(bad):
        j = int(bad[0])
        errors.append(f"{path.name}: {what} index row {j} points to {data} rows [{s[j]}, {s[j] + n[j]}) outside "
                      f"0..{size} ({len(bad)} such rows): the segment is damaged; delete it and re-run its shard")
        return size
    order = np.argsort(s, kind="stable")
    overlap = np.flatnonzero(s[order][1:] < (s + n)[order][:-1])
    if len(overlap):
        errors.append(f"{path.name}: {len(overlap)} {what} index rows overlap in {data}: the segment is damaged; "
                      f"delete it and re-run its shard")
    return int((s + n).max())


def _finite_rows(block: np.ndarray) -> np.ndarray:
    """(rows,) True where a row of features holds only values its store can write: no NaN/inf; uint8 rows are
    float8_e4m3fn codes (NaN: S.1111.111), int8 rows codes in [-127, 127] (quantize never writes -128)."""
    flat = block.reshape(len(block), -1)
    if flat.dtype == np.uint8:
        return ((flat & 0x7F) != 0x7F).all(axis=1)
    if flat.dtype == np.int8:
        return (flat != -128).all(axis=1)
    return np.isfinite(flat).all(axis=1)


def _scan_scales(path: Path, f: h5py.File, name: str, ranges: dict[str, tuple[int, int]], what: str,
                 errors: list[str]):
    """Every committed scale row must be finite and >= 0 (ranges: item -> (first row, rows))."""
    if not ranges:
        return
    scales = f[name][:max(a + n for a, n in ranges.values())]  # (N, ...) float16
    flat = scales.reshape(len(scales), -1)
    ok = np.isfinite(flat).all(axis=1) & (flat >= 0).all(axis=1)  # (N,)
    bad = [item for item, (a, n) in ranges.items() if not ok[a:a + n].all()]
    if bad:
        errors.append(f"{path.name}: {name} of {what} {_head(bad)} are negative or not finite: delete the segment "
                      f"and re-run its shard")


def _scan_values(path: Path, f: h5py.File, name: str, ranges: dict[str, tuple[int, int]], what: str,
                 errors: list[str]):
    """Every committed row of a feature dataset must be finite; names the items holding non-finite values."""
    ds = f[name]
    if not ranges:
        return
    end = max(a + n for a, n in ranges.values())
    row_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
    step = max(1, SCAN_BYTES // row_bytes)
    bad_rows = []
    for a in range(0, end, step):
        block = ds[a:min(a + step, end)]  # (rows, ...) in the store's dtype
        finite = _finite_rows(block)  # (rows,)
        bad_rows.extend((a + np.flatnonzero(~finite)).tolist())
    if bad_rows:
        bad = np.asarray(bad_rows)
        items = [item for item, (a, n) in ranges.items() if ((bad >= a) & (bad < a + n)).any()]
        kind = "the int8 code -128 (outside ±127)" if ds.dtype == np.int8 else "NaN/inf"
        errors.append(f"{path.name}: {len(bad)} {name} rows hold {kind}, in {what} {_head(items)}: delete the "
                      f"segment and re-run its shard")


def _check_segment(path: Path, entry_fp: dict, entry_dims: dict, values: bool, report: Report) -> _Segment | None:
    errors = report.errors
    m = SEGMENT_RE.fullmatch(path.name)
    shard = (int(m[1]), int(m[2]))
    try:
        f = cache.open_segment(path)  # fails fast on a damaged file (never sleeps in HDF5's SWMR retries)
    except cache.CacheError as e:
        errors.append(str(e))
        return None
    with f:
        try:
            fp, dims = json.loads(f.attrs["fingerprint"]), json.loads(f.attrs["dims"])
            shard_attr = str(f.attrs["shard"])
        except (KeyError, ValueError, TypeError) as e:
            errors.append(f"{path.name}: missing or unreadable attribute ({e}): not written by r2's ShardWriter")
            return None
        if fp != entry_fp or dims != entry_dims:
            errors.append(f"{path.name} was made with other settings than {report.entry.name} "
                          f"({cache.fingerprint_diff(fp, entry_fp) or f'dims {dims} vs {entry_dims}'}): delete it "
                          f"and re-run shard {shard[0]}/{shard[1]}")
            return None
        if shard_attr != f"{shard[0]}/{shard[1]}":
            errors.append(f"{path.name}: its shard attribute says {shard_attr!r}, its name {shard[0]}/{shard[1]}")
        try:
            store = cache.store_of(fp)
        except cache.CacheError as e:
            errors.append(f"{path.name}: {e}")
            return None
        layout_ok = True
        for name, (dtype, row) in cache.expected_layout(dims, store).items():
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                errors.append(f"{path.name}: dataset {name!r} is missing")
                layout_ok = False
            elif ds.dtype != dtype or ds.shape[1:] != row:
                errors.append(f"{path.name}: {name} is {ds.dtype} (N, {', '.join(map(str, ds.shape[1:]))}), "
                              f"expected {dtype} (N, {', '.join(map(str, row))})")
                layout_ok = False
        if not layout_ok:
            return None
        n_err = len(errors)
        vindex, qindex = f["video_index"][...], f["query_index"][...]  # (N_videos, 4), (N_queries, 4)
        uncommitted = 0
        for what, index, pairs in (
                ("video", vindex, (("video_ids", 0, 1, 0), ("video_feats", 2, 3, 1), ("video_times", 2, 3, 1))),
                ("query", qindex, (("query_texts", 0, 1, 0), ("query_feats", 2, 3, 1)))):
            for data, start, length, min_length in pairs:
                end = _check_ranges(path, what, data, index, start, length, f[data].shape[0], errors, min_length)
                uncommitted += f[data].shape[0] - end if data.endswith("feats") else 0
        for name in ("video_info", "video_scales"):
            if name in f and f[name].shape[0] < len(vindex):
                errors.append(f"{path.name}: {name} has {f[name].shape[0]} rows for {len(vindex)} committed videos: "
                              f"the segment is damaged; delete it and re-run its shard")
        if "query_scales" in f and f["query_scales"].shape[0] < cache.rows_end(qindex):
            errors.append(f"{path.name}: query_scales has {f['query_scales'].shape[0]} rows for "
                          f"{cache.rows_end(qindex)} committed query tokens: the segment is damaged; delete it and "
                          f"re-run its shard")
        if len(errors) > n_err:
            return None
        try:  # a file cut short reads its lost rows back as zeros: its size must cover what its index commits
            cache.check_size(path, cache.size_needed(path, f, cache.rows_end(vindex), cache.rows_end(qindex)))
        except (cache.CacheError, OSError, RuntimeError) as e:
            errors.append(str(e))
            return None
        if uncommitted:
            report.notes.append(f"{path.name}: {uncommitted} feature rows past the last committed item (left by an "
                                f"interrupted writer; never read)")
        videos = _decode_items(path, "video id", f["video_ids"][...].tobytes(), vindex, errors)
        queries = _decode_items(path, "query text", f["query_texts"][...].tobytes(), qindex, errors)
        info = f["video_info"][: len(vindex)]  # (N_videos, 2) duration, fps
        vid_blob = f["video_ids"][...].tobytes()
        extracted_as = {}
        for (off, n, _, _), (duration, fps) in zip(vindex.tolist(), info.tolist()):
            extracted_as.setdefault(vid_blob[off:off + n].decode("utf-8", errors="replace"), (duration, fps))
        bad_info = np.flatnonzero(~np.isfinite(info).all(axis=1) | (info <= 0).any(axis=1))
        if len(bad_info):
            errors.append(f"{path.name}: videos {_head([list(videos)[j] for j in bad_info])} have a duration or fps "
                          f"that is not a positive number")
        times = f["video_times"][...]
        for vid, (a, n) in videos.items():
            t = times[a:a + n]
            if not (np.isfinite(t).all() and t[0] >= 0 and (np.diff(t) > 0).all()):
                errors.append(f"{path.name}: video {vid!r}: frame times are not finite, >= 0 and increasing")
        long = [q for q, (_, n) in queries.items() if n < 2 or n > TEXT_CONTEXT]
        if long:
            errors.append(f"{path.name}: queries {_head(long)} have a token count outside 2..{TEXT_CONTEXT} "
                          f"(SOT..EOT)")
        report.frames += sum(n for _, n in videos.values())
        row_bytes = {name: int(np.prod(f[name].shape[1:])) * f[name].dtype.itemsize
                     for name in ("video_feats", "query_feats")}
        report.feature_bytes += (sum(n for _, n in videos.values()) * row_bytes["video_feats"]
                                 + sum(n for _, n in queries.values()) * row_bytes["query_feats"])
        if store.compact:
            report.feature_bytes += (len(vindex) * int(np.prod(f["video_scales"].shape[1:]))
                                     + cache.rows_end(qindex) * f["query_scales"].shape[1]) * 2
        if values:
            _scan_values(path, f, "video_feats", videos, "videos", errors)
            _scan_values(path, f, "query_feats", queries, "queries", errors)
            if store.compact:
                _scan_scales(path, f, "video_scales", {v: (j, 1) for v, j in _first_rows(vid_blob, vindex).items()},
                             "videos", errors)
                _scan_scales(path, f, "query_scales", queries, "queries", errors)
    return _Segment(path, shard, videos, queries, extracted_as)


def _first_rows(blob: bytes, index: np.ndarray) -> dict[str, int]:
    """{id or text: the index row of its first occurrence} (the row of its scales)."""
    rows: dict[str, int] = {}
    for j, (off, n, _, _) in enumerate(index.tolist()):
        rows.setdefault(blob[off:off + n].decode("utf-8", errors="replace"), j)
    return rows


def _decode_items(path: Path, what: str, blob: bytes, index: np.ndarray, errors: list[str]) -> dict:
    """Index rows -> {id or text: (first_row, n_rows)}; an item twice in one segment is an error."""
    items: dict[str, tuple[int, int]] = {}
    for j, (off, n, first, rows) in enumerate(index.tolist()):
        try:
            key = blob[off:off + n].decode("utf-8")
        except UnicodeDecodeError:
            errors.append(f"{path.name}: {what} of index row {j} is not UTF-8: the segment is damaged")
            continue
        if key in items:
            errors.append(f"{path.name}: {what} {key!r} is stored twice in this segment")
            continue
        items[key] = (first, rows)
    return items


def _records(entry: Path, splits: list[str], errors: list[str]) -> list[datasets.Record]:
    try:
        return _read_records(entry, splits, errors)
    except (OSError, KeyError, UnicodeDecodeError) as e:
        errors.append(f"{entry.name}: its annotations cannot be read ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]}); rebuild the entry with extract/merge.py --dataset NAME")
        return []


def _read_records(entry: Path, splits: list[str], errors: list[str]) -> list[datasets.Record]:
    records = []
    with h5py.File(entry, "r") as f:
        group = f.get("annotations")
        for split in splits:
            if group is None or split not in group:
                errors.append(f"{entry.name}: split {split!r} is listed but annotations/{split} is missing")
                continue
            text = group[split][()].decode("utf-8")
            for ln, line in enumerate(text.splitlines(), 1):
                try:
                    records.append(datasets.Record.from_json(json.loads(line), f"{entry.name}:annotations/{split}"
                                                                                f":{ln}"))
                except ValueError as e:
                    errors.append(f"stored annotation record unreadable: {e}")
    return records


def _failures(entry: Path) -> dict[str, str]:
    """vid -> its last logged error, from the cache's failures.jsonl."""
    path = cache.parts_dir(entry) / "failures.jsonl"
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-append: the video is retried and logged again
            if isinstance(d, dict) and "vid" in d:
                out[str(d["vid"])] = str(d.get("error", ""))
    return out


def fps_mismatches(records: list[datasets.Record], video_fps: dict[str, float]) -> str | None:
    """A sentence when records use another sampling rate than their cached videos (their saliency targets and
    windows would be computed at the wrong rate), else None."""
    wrong = [r for r in records if r.vid in video_fps and not math.isclose(r.fps, video_fps[r.vid], rel_tol=1e-9)]
    if not wrong:
        return None
    r = wrong[0]
    return (f"{len(wrong)} annotation records use another fps than their extracted videos, e.g. qid {r.qid!r} "
            f"(video {r.vid!r}): fps {r.fps} in the records, {video_fps[r.vid]} in the features; rebuild the entry "
            f"with the extraction's fps (extract/merge.py --fps {video_fps[r.vid]}, or no --fps for a benchmark)")


def _check_records_against_videos(records: list[datasets.Record], videos: dict[str, tuple[float, float, int]],
                                  report: Report):
    """Records against the videos as extracted (vid -> duration, fps, frames): another fps is an error, a
    duration far from the decoded one a note."""
    mismatch = fps_mismatches(records, {v: fps for v, (_, fps, _) in videos.items()})
    if mismatch:
        report.errors.append(mismatch)
    far = [(r, problem) for r in records if r.vid in videos
           if (problem := datasets.duration_mismatch(r.duration, videos[r.vid][0], videos[r.vid][2], r.fps))]
    if far:
        (r, problem), vids = far[0], sorted({r.vid for r, _ in far})
        report.notes.append(f"{len(far)} records annotate a duration far from their video ({len(vids)} videos: "
                            f"{_head(vids)}); e.g. qid {r.qid!r}: {problem}")


def verify(entry: str | Path, values: bool = True) -> Report:
    """Check everything about a cache; never raises for a broken cache (the report lists what is wrong)."""
    report = Report(Path(entry), values_checked=values)
    try:
        attrs = cache.open_entry_attrs(report.entry)
    except cache.CacheError as e:
        report.errors.append(str(e))
        return report
    report.dataset = attrs["dataset"]
    fp, dims = attrs["fingerprint"], attrs["dims"]
    try:
        report.store = cache.store_of(fp).name
    except cache.CacheError as e:
        report.errors.append(f"{report.entry}: {e}")
    records = _records(report.entry, attrs["splits"], report.errors)
    report.file_bytes = report.entry.stat().st_size
    folder = cache.parts_dir(report.entry)
    paths = sorted(folder.glob("shard-*")) if folder.is_dir() else []
    segments: list[_Segment] = []
    for path in paths:
        if path.suffix == ".lock":
            continue
        if path.name.endswith(".h5.tmp"):
            report.notes.append(f"{path.name}: a segment whose creation was interrupted (never read; safe to delete)")
            continue
        if not SEGMENT_RE.fullmatch(path.name):
            report.errors.append(f"{path.name}: not a segment name (shard-IIIII-of-NNNNN.SSS.h5); readers glob "
                                 f"shard-*.h5, so move it out of {folder}")
            continue
        report.file_bytes += path.stat().st_size
        report.segments += 1
        try:
            seg = _check_segment(path, fp, dims, values, report)
        except (OSError, RuntimeError) as e:  # HDF5 found damaged metadata or data while reading it
            report.errors.append(f"{path.name}: damaged ({' '.join(str(e).split())[:200]}): delete it and re-run "
                                 f"its shard")
            seg = None
        if seg is not None:
            segments.append(seg)

    counts = Counter(seg.shard[1] for seg in segments)
    if len(counts) > 1:
        found = ", ".join(f"{c} of N={n}" for n, c in sorted(counts.items()))
        report.errors.append(f"segments from different shard counts ({found}): each count splits the videos "
                             f"differently; keep one N and delete the other segments")
    for kind in ("videos", "queries"):
        where: dict[str, list[str]] = {}
        for seg in segments:
            for item in getattr(seg, kind):
                where.setdefault(item, []).append(seg.path.name)
        twice = {item: segs for item, segs in where.items() if len(segs) > 1}
        if twice:
            item, segs = next(iter(twice.items()))
            report.errors.append(f"{len(twice)} {kind} are stored in more than one segment, e.g. {item!r} in "
                                 f"{', '.join(segs)}: two extractions with different --shard counts (or copied "
                                 f"segments) overlap; delete the extra segments")
        setattr(report, kind, len(where))

    _check_records_against_videos(records, {v: (*i, seg.videos[v][1]) for seg in segments
                                            for v, i in seg.info.items()}, report)
    vids = {r.vid for r in records}
    texts = {r.query for r in records}
    report.expected_videos, report.expected_queries = len(vids), len(texts)
    cached_v = {v for seg in segments for v in seg.videos}
    cached_q = {q for seg in segments for q in seg.queries}
    report.extra_videos = sorted(cached_v - vids)
    failed = _failures(report.entry)
    n = max(counts, key=counts.get) if counts else 1
    for i in range(n):
        assigned = cache.shard_items(vids, (i, n))
        report.shards.append(ShardStatus(
            shard=f"{i}/{n}",
            segments=[seg.path.name for seg in segments if seg.shard == (i, n)],
            videos=sum(v in cached_v for v in assigned),
            expected_videos=len(assigned),
            failed=[v for v in assigned if v not in cached_v and v in failed],
            missing=[v for v in assigned if v not in cached_v and v not in failed],
            missing_queries=sum(q not in cached_q for q in cache.shard_items(texts, (i, n))),
        ))
    return report


# ----------------------------------------------------------------------------------------------- info


def info(entry: str | Path) -> list[str]:
    """The entry's metadata and one line per segment (index reads only: fast on any size)."""
    entry = Path(entry)
    attrs = cache.open_entry_attrs(entry)
    errors: list[str] = []
    records = _records(entry, attrs["splits"], errors)
    per_split = Counter()
    with h5py.File(entry, "r") as f:
        for split in attrs["splits"]:
            if "annotations" in f and split in f["annotations"]:
                per_split[split] = sum(1 for line in f["annotations"][split][()].decode("utf-8").splitlines() if line)
    lines = [f"{entry}: r2 cache format {cache.VERSION}, dataset {attrs['dataset']}",
             "splits: " + ", ".join(f"{s} ({per_split[s]} records)" for s in attrs["splits"]),
             f"annotated: {len({r.vid for r in records})} videos, {len({r.query for r in records})} query texts",
             f"store: {_store_line(attrs['fingerprint'])}",
             f"dims: {json.dumps(attrs['dims'], sort_keys=True)}", "fingerprint:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in sorted(attrs["fingerprint"].items())]
    folder = cache.parts_dir(entry)
    for path in sorted(folder.glob("shard-*.h5")) if folder.is_dir() else []:
        index = cache.read_segment_index(path)
        frames = sum(rows for _, rows, _, _ in index.videos.values())
        lines.append(f"segment {path.name}: {len(index.videos)} videos, {frames} frames, {len(index.queries)} "
                     f"queries, {_size(path.stat().st_size)}")
    n_failed = len(_failures(entry))
    if n_failed:
        lines.append(f"failures.jsonl: {n_failed} videos logged as failed")
    lines += [f"error: {e}" for e in errors]
    return lines


def _store_line(fingerprint: dict) -> str:
    try:
        store = cache.store_of(fingerprint)
    except cache.CacheError as e:
        return f"unknown ({e})"
    if not store.compact:
        return "fp16 (float16 features)"
    return f"{store.name} ({store.dtype} features, {fingerprint.get('scales', 'float16 scales')})"


# ----------------------------------------------------------------------------------------------- merge


def merge(entry: str | Path, dataset: str | None = None, annotations: dict[str, list[datasets.Record]] | None = None,
          values: bool = True) -> Report:
    """After a sharded extraction: (re)write the entry file when annotations are given, then verify every shard.

    Readers glob the shards, so merging moves no features: the entry (written by every extractor) is rebuilt from
    the segments' own fingerprint and dims plus the dataset's annotations when it is missing (shards extracted on
    machines that did not share the cache folder) or when the annotations should be refreshed. Segments that
    disagree on their fingerprint are refused, naming the field that differs.
    """
    entry = Path(entry)
    if annotations is None:
        if not entry.is_file():
            raise cache.CacheError(f"{entry}: no entry file; pass --dataset (and its --annotations) to rebuild it "
                                   f"from the shards in {cache.parts_dir(entry)}")
        return verify(entry, values)
    paths = sorted(cache.parts_dir(entry).glob("shard-*.h5"))
    if not paths:
        raise cache.CacheError(f"{cache.parts_dir(entry)}: no shard segment (shard-*.h5) to merge; run "
                               f"`python extract/run.py ... --out {entry} --shard I/N` first")
    indexes = [cache.read_segment_index(path) for path in paths]
    first = indexes[0]
    for path, index in zip(paths[1:], indexes[1:]):
        if index.fingerprint != first.fingerprint or index.dims != first.dims:
            raise cache.CacheError(f"{path} and {paths[0]} were made with other settings "
                                   f"({cache.fingerprint_diff(index.fingerprint, first.fingerprint) or 'dims differ'})"
                                   f": re-extract one of them with the other's settings")
    shard_count = int(SEGMENT_RE.fullmatch(paths[0].name)[2]) if SEGMENT_RE.fullmatch(paths[0].name) else 1
    cache.check_before_writing(entry, first.fingerprint, first.dims, (0, shard_count))  # mixed counts, stray files
    mismatch = fps_mismatches([r for rs in annotations.values() for r in rs],
                              {v: fps for index in indexes for v, (_, _, _, fps) in index.videos.items()})
    if mismatch:
        raise cache.CacheError(f"{entry}: not written: {mismatch}")
    cache.write_entry(entry, dataset=dataset, fingerprint=first.fingerprint, dims=first.dims,
                      annotations={split: [r.to_json() for r in rs] for split, rs in annotations.items()})
    return verify(entry, values)


# ----------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check structure, values, fingerprints and coverage; print a summary")
    v.add_argument("entry", type=Path, help="the cache entry file, e.g. cache/demo.h5")
    v.add_argument("--no-values", action="store_true", help="skip reading every feature to check it is finite")
    i = sub.add_parser("info", help="print the cache's metadata")
    i.add_argument("entry", type=Path)
    c = sub.add_parser("convert", help="write a cache's features into a new cache in another store")
    c.add_argument("src", type=Path, help="the cache to read (never written)")
    c.add_argument("dst", type=Path, help="the new cache's entry file, e.g. cache/demo-int8.h5")
    c.add_argument("--store", required=True, choices=list(cache.STORES),
                   help="fp16, int8 or fp8 (float8_e4m3fn); int8/fp8 keep per-(layer, channel) float16 scales")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "convert":
        done = cache.convert(args.src, args.dst, args.store)
        print(f"{args.dst}: {done.line()}")
        report = verify(args.dst, values=False)
        print("\n".join(report.lines()))
        return report.exit_code
    if args.command == "info":
        print("\n".join(info(args.entry)))
        return 0
    report = verify(args.entry, values=not args.no_values)
    print("\n".join(report.lines()))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
