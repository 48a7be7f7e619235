"""The feature cache: frozen-CLIP layer taps on disk, written once by `extract/run.py`, read by the trainer.

Layout for a cache named `tacos`::

    cache/tacos.h5                      the entry file: the one path the trainer opens (small)
    cache/tacos.parts/                  the features, one or more HDF5 files per shard
        shard-00000-of-00004.000.h5     segment 0 of shard 0/4 (a resumed shard may have segments 001, 002, ...)
        shard-00000-of-00004.lock       held while an extractor writes shard 0/4 (a second one refuses)
        failures.jsonl                  one JSON line per video that could not be decoded/encoded

Entry file (`cache/<name>.h5`), attributes:
    format = "r2-cache", version = 1
    fingerprint   JSON: everything that changes the features (CLIP name and weight checksum, layers, fps,
                  frame size, resize/crop rule, normalisation, ffmpeg and decoder versions, stored dtype).
    dims          JSON: {"video_dim": Dv, "query_dim": Dq, "tokens": P+1, "layers": [9, 10, 11, 12]}
    dataset       the dataset name (demo, custom, qvhighlights, ...), `splits` JSON list of split names
  datasets:
    annotations/<split>   one UTF-8 string: the split's records as JSON lines (`r2.datasets.Record.to_json`),
                          so a cache is self-contained for training and evaluation.

Segment file (`<name>.parts/shard-IIIII-of-NNNNN.SSS.h5`), written in HDF5 SWMR mode so that a writer killed at
any moment (SIGKILL, power to the process gone) leaves a file whose committed content is intact. Every dataset is
append-only along its first axis; rows become visible only when their index row is committed, and the index is
flushed after the rows it points to, so readers never see a half-written video or query.
    video_feats  float16 (N_frames, K, P+1, Dv)   all frames of all videos, one video = a contiguous row range,
                                                  chunked one frame per chunk, uncompressed (activations gain
                                                  3-15% from compression and reads get 3-30x slower)
    video_times  float64 (N_frames,)              timestamp in seconds of each sampled frame
    video_index  int64   (N_videos, 4)            [id_offset, id_length, first_row, n_rows]
    video_info   float64 (N_videos, 2)            [duration seconds, sampling fps]
    video_ids    uint8   (N_id_bytes,)            UTF-8 video ids, back to back (ids never become HDF5 keys,
                                                  so `/`, dots or `..` in an id cannot escape anything)
    query_feats  float16 (N_tokens, K, Dq)        SOT..EOT tokens of every distinct query text (no 77-padding)
    query_index  int64   (N_queries, 4)           [text_offset, text_length, first_row, n_rows]
    query_texts  uint8   (N_text_bytes,)          UTF-8 query texts (features depend on the text alone, so a
                                                  text shared by several queries is stored once)
  The segment's attributes repeat `fingerprint` and `dims`, plus `shard` ("i/n").

Compact stores (`extract/run.py --store int8|fp8`, or `python -m r2.cache convert SRC DST --store int8`) keep the
same layout with 1-byte features and float16 scales:
    video_feats   int8 (int8 store) or uint8 (fp8 store: torch.float8_e4m3fn bit patterns), (N_frames, K, P+1, Dv)
    video_scales  float16 (N_videos, K, Dv)       one scale per (layer, channel) of each video: row j belongs to
                                                  video_index row j
    query_feats   int8 or uint8 (N_tokens, K, Dq)
    query_scales  float16 (N_tokens, K)           one scale per (token, layer) of each query: the same rows as
                                                  query_feats
  The rule (`quantize`): from the float16 features, scale = absmax / QMAX rounded up to a float16 (`scales_for`:
  nothing clips, and a nonzero group never gets scale 0; rounded down where QMAX x scale would pass 65504, the
  largest float16, so a decoded value is always finite), the absmax taken over
  a video's frames and tokens per (layer, channel) (VIDEO_AXES: CLIP's residual stream has a few channels far larger
  than the rest in every token) and over a query token's channels per layer (QUERY_AXES: a query has ~10 tokens, so
  per-channel scales would cost 1/L of its bytes, and its SOT token is far larger than the others); stored =
  x / scale clipped to [-QMAX, QMAX] and rounded to nearest, ties to even (QMAX 127 for int8, 448 = the largest
  float8_e4m3fn for fp8); an all-zero group has scale 0 and stores zeros. Decoded value = stored * scale in float32
  (exact: 8 x 11 significant bits), rounded to float16 (`dequantize`; on the training device `r2.data.dequantize`).
  The fingerprint's `dtype` and `scales` name the store, so caches of two stores never mix and a checkpoint records
  the store it was trained on.

A killed writer may leave rows past the last committed index row; they are never read, and a segment that was
not closed cleanly is never written again (its HDF5 status flags stay set): the next run appends a new segment.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from r2.errors import ConfigError, R2Error, not_a_folder

FORMAT = "r2-cache"
VERSION = 1
FEATURE_DTYPE = np.float16  # the fp16 store's features, and what `Cache.video` / `Cache.query` return for every store


@dataclass(frozen=True)
class Store:
    """How a cache stores its features: the fingerprint's `dtype`, the HDF5 dtype, and QMAX for compact stores."""
    name: str  # --store: fp16, int8, fp8
    dtype: str  # the fingerprint's "dtype" field
    storage: type  # numpy dtype of video_feats / query_feats
    qmax: float | None  # largest stored magnitude (None: no scales)

    @property
    def compact(self) -> bool:
        return self.qmax is not None

    def fields(self) -> dict:
        """The fingerprint fields that name this store (fp16 keeps the one field caches have always had)."""
        if not self.compact:
            return {"dtype": self.dtype}
        return {"dtype": self.dtype, "scales": f"float16 absmax/{self.qmax:g} per (video, layer, channel) and per "
                                               f"(query token, layer); round half to even, clipped"}


STORES = {
    "fp16": Store("fp16", "float16", np.float16, None),
    "int8": Store("int8", "int8", np.int8, 127.0),
    "fp8": Store("fp8", "float8_e4m3fn", np.uint8, 448.0),
}


def store_of(fingerprint: dict) -> Store:
    """The store a cache's fingerprint names (a fingerprint without `dtype` is fp16, the only store there was)."""
    dtype = fingerprint.get("dtype", "float16")
    for store in STORES.values():
        if store.dtype == dtype:
            return store
    raise CacheError(f"fingerprint dtype {dtype!r}: not a store this r2 reads ({', '.join(STORES)})")


def get_store(name: str) -> Store:
    if name not in STORES:
        raise CacheError(f"--store {name!r}: one of {', '.join(STORES)}")
    return STORES[name]


def with_store(fingerprint: dict, store: Store) -> dict:
    """The fingerprint of the same features kept in another store."""
    out = {k: v for k, v in fingerprint.items() if k not in ("dtype", "scales")}
    return {**out, **store.fields()}


def _fp8_table() -> np.ndarray:
    """float32 value of each float8_e4m3fn bit pattern (sign, 4 exponent bits with bias 7, 3 mantissa bits; exponent
    0 is subnormal; S.1111.111 is NaN, there is no infinity), so reading needs no torch."""
    code = np.arange(256)
    sign = np.where(code & 0x80, -1.0, 1.0)
    exponent, mantissa = (code >> 3) & 0xF, code & 0x7
    value = np.where(exponent == 0, mantissa / 8 * 2.0 ** -6, (1 + mantissa / 8) * 2.0 ** (exponent - 7.0))
    value = np.where((exponent == 0xF) & (mantissa == 0x7), np.nan, value)
    return (sign * value).astype(np.float32)


FP8_VALUES = _fp8_table()


VIDEO_AXES = (0, 2)  # video features (T, K, P+1, Dv): absmax over frames and tokens -> scales (K, Dv)
QUERY_AXES = (2,)  # query features (L, K, Dq): absmax over channels -> scales (L, K)


F16_MAX = float(np.finfo(np.float16).max)  # 65504


def scales_for(absmax: np.ndarray, qmax: float) -> np.ndarray:
    """float16 scales for groups of float32 absmax: absmax / qmax rounded up to a float16, so no value clips and a
    nonzero group never gets scale 0 (a float16 subnormal, at worst); rounded down instead where the largest code
    times the rounded-up scale would decode past float16's largest value (65504 would decode to inf)."""
    exact = absmax.astype(np.float32) / np.float32(qmax)
    scales = exact.astype(np.float16)
    low = scales.astype(np.float32) < exact
    scales[low] = np.nextafter(scales[low], np.float16(np.inf))
    over = scales.astype(np.float32) * np.float32(qmax) > F16_MAX
    scales[over] = np.nextafter(scales[over], np.float16(0))
    return scales


def quantize(feats: np.ndarray, store: Store, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Features -> (stored codes, float16 scales: the absmax over `axes` / QMAX, those axes dropped), by the rule in
    the module docstring. The input is rounded to float16 first, so extracting into a compact store and converting
    an fp16 cache give the same bytes."""
    x = np.asarray(feats).astype(np.float16).astype(np.float32)
    scales = scales_for(np.abs(x).max(axis=axes), store.qmax)  # (K, Dv) or (L, K)
    s = np.expand_dims(scales.astype(np.float32), axes)  # (1, K, 1, Dv) or (L, K, 1)
    y = np.where(s > 0, x / np.where(s > 0, s, 1), 0).clip(-store.qmax, store.qmax)
    if store.storage is np.int8:
        return np.rint(y).astype(np.int8), scales
    import torch  # numpy has no float8: torch's cast rounds to nearest, ties to even

    return torch.from_numpy(np.ascontiguousarray(y)).to(torch.float8_e4m3fn).view(torch.uint8).numpy(), scales


def dequantize(stored: np.ndarray, scales: np.ndarray | None, axes: tuple[int, ...]) -> np.ndarray:
    """float16 features from a store's codes and the scales `quantize` made over `axes`; fp16 features (scales
    None) come back as they are."""
    if scales is None:
        return stored
    values = FP8_VALUES[stored] if stored.dtype == np.uint8 else stored.astype(np.float32)
    return (values * np.expand_dims(scales.astype(np.float32), axes)).astype(np.float16)
SEGMENT_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.(\d{3})\.h5")  # shard i, shard count n, segment number


class CacheError(R2Error):
    """A cache that cannot be used as asked: the message names the file and what to do."""


def parts_dir(entry: Path) -> Path:
    """The folder beside the entry file that holds its shards: cache/x.h5 -> cache/x.parts."""
    entry = Path(entry)
    return entry.with_name(entry.stem + ".parts")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8), with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of four shards") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def shard_items(items, shard: tuple[int, int]) -> list[str]:
    """The video ids (or query texts) that shard (i, n) extracts: every n-th of the sorted items, from the i-th.
    One rule for the extractor, the importer and `r2.verify`, which reports what each shard still lacks."""
    i, n = shard
    return sorted(items)[i::n]


def _shard_stem(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]:05d}-of-{shard[1]:05d}"


def committed(entry: Path, shard: tuple[int, int]) -> tuple[set[str], set[str]]:
    """(video ids, query texts) committed in shard (i, n) of the cache at `entry`, from its segments' index rows
    (no lock taken: segments are append-only, so the answer can only grow while a writer runs)."""
    videos: set[str] = set()
    texts: set[str] = set()
    folder = parts_dir(entry)
    for path in sorted(folder.glob(f"{_shard_stem(shard)}.*.h5")) if folder.is_dir() else []:
        index = read_segment_index(path)
        videos.update(index.videos)
        texts.update(index.queries)
    return videos, texts


def fingerprint_diff(a: dict, b: dict) -> str:
    """A readable list of the fields where two fingerprints differ."""
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def settings_diff(cached: dict, asked: dict) -> str:
    """The fields where a cache's fingerprint differs from this run's, each side named."""
    keys = sorted(set(cached) | set(asked))
    return "; ".join(f"{k}: cache {cached.get(k)!r}, this run {asked.get(k)!r}" for k in keys
                     if cached.get(k) != asked.get(k))


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def describe_oserror(e: Exception) -> str:
    """One line naming an OSError's real cause and what to do: a full disk or file size limit, a permission, a
    missing folder, a name too long for the file system, or the error as the system gave it. Also takes the
    RuntimeError h5py raises for a failed flush (its errno is only in the text)."""
    code = e.errno if isinstance(getattr(e, "errno", None), int) else _errno_in_text(str(e))
    text = " ".join(str(e).split())[:300]
    if code in _FULL:
        return f"{text}: disk full or file size limit; free space (or raise the limit) and re-run to resume"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{text}: permission denied; make the folder writable or pass another --out"
    if code in (errno.ENOENT, errno.ENOTDIR):
        return f"{text}: a folder on the path is missing or not a folder; check the path"
    if code == errno.ENAMETOOLONG:
        return f"{text}: file name too long for the file system"
    return text


def _errno_in_text(text: str) -> int | None:
    """h5py reports some system errors only as text ("errno = 28, error message = 'No space left on device'")."""
    lowered = text.lower()
    for code in (*_FULL, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENAMETOOLONG):
        if os.strerror(code).lower() in lowered:
            return code
    return None


# ----------------------------------------------------------------------------------------------- writing


def write_entry(entry: Path, *, dataset: str, fingerprint: dict, dims: dict, annotations: dict[str, list[dict]]):
    """Create the entry file, or check that an existing one was made with the same settings.

    Written to a temporary name and renamed, so a reader never sees a half-written entry. An existing entry with
    another fingerprint is refused: mixing features from two settings in one cache would silently corrupt it.
    """
    entry = Path(entry)
    _check_entry(entry, fingerprint)
    _check_parts_folder(entry)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["dataset"] = dataset
            f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
            f.attrs["dims"] = json.dumps(dims, sort_keys=True)
            f.attrs["splits"] = json.dumps(sorted(annotations))
            group = f.create_group("annotations")
            for split, records in annotations.items():
                group.create_dataset(split, data="\n".join(json.dumps(r, ensure_ascii=False) for r in records),
                                     dtype=h5py.string_dtype("utf-8"))
        os.replace(tmp, entry)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"{entry}: cannot write the cache entry there ({describe_oserror(e)})") from None


def _check_parts_folder(entry: Path):
    """The cache's features folder (X.parts beside X.h5) must be a folder or absent."""
    folder = parts_dir(entry)
    if not_a_folder(folder):
        raise CacheError(f"{folder}: is a file or a dangling link, where the cache {entry} keeps its features; move "
                         f"it, or pass another --out")


def _check_entry(entry: Path, fingerprint: dict):
    """An existing entry made with other settings is refused, and so is anything at that path that is not an r2
    cache (a checkpoint, notes, another HDF5 file: never overwritten); a damaged entry (it holds metadata and
    annotations only, the features are in the parts) may be rewritten."""
    if not entry.exists() and not entry.is_symlink():
        return
    try:
        old = open_entry_attrs(entry)
    except CacheError:
        other = _not_a_cache(entry)
        if other:
            raise CacheError(f"{entry} exists and is not an r2 cache ({other}); r2 never overwrites it: pass "
                             f"another --out / destination, or move it away") from None
        return
    if old["fingerprint"] != fingerprint:
        raise CacheError(f"{entry} was extracted with other settings ({settings_diff(old['fingerprint'], fingerprint)})"
                         f"; re-run with the cache's settings, or pass --out for a new cache (deleting {entry} and "
                         f"{parts_dir(entry)} discards its features)")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _not_a_cache(entry: Path) -> str | None:
    """What the existing path `entry` is when it is not an r2 cache's entry; None when it is one, perhaps damaged:
    an HDF5 file whose `format` attribute says so, or, with its parts folder beside it, an HDF5 file that cannot
    be read (cut short) or an empty one."""
    if entry.is_dir():
        return "a folder"
    if not entry.exists():
        return "a link to a missing file"
    try:
        with h5py.File(entry, "r") as f:
            return None if f.attrs.get("format") == FORMAT else "an HDF5 file without r2's format attribute"
    except OSError:
        with open(entry, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
        if parts_dir(entry).is_dir() and head in (b"", HDF5_SIGNATURE):
            return None
        return ("not an HDF5 file; if it is this cache's damaged entry, delete it and re-run: the features in "
                f"{parts_dir(entry)} are kept" if parts_dir(entry).is_dir() else "not an HDF5 file")


def check_before_writing(entry: Path, fingerprint: dict, dims: dict, shard: tuple[int, int]):
    """Refuse, before anything is written, an extraction that the cache at `entry` cannot take: an entry or any
    segment (of any shard) made with other settings, a damaged segment, or segments of another shard count (each
    count splits the videos differently: mixing them extracts videos twice)."""
    entry = Path(entry)
    _check_entry(entry, fingerprint)
    folder = parts_dir(entry)
    counts: dict[int, list[str]] = {}
    for path in sorted(folder.glob("shard-*.h5")) if folder.is_dir() else []:
        match = SEGMENT_RE.fullmatch(path.name)
        if match is None:
            raise CacheError(f"{path}: not a segment name (shard-IIIII-of-NNNNN.SSS.h5); readers glob shard-*.h5, so "
                             f"move it out of {folder}")
        index = read_segment_index(path)
        _check_segment(path, index.fingerprint, index.dims, fingerprint, dims)
        counts.setdefault(int(match[2]), []).append(path.name)
    other = {n: names for n, names in counts.items() if n != shard[1]}
    if other:
        n, names = next(iter(other.items()))
        raise CacheError(f"{folder} holds shards of {n} ({names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''}"
                         f"), not of {shard[1]}: run with --shard I/{n} (one process per I), or pass --out for a new "
                         f"cache")


def open_entry_attrs(entry: Path) -> dict:
    """Read and check the entry file's attributes; a clear error for anything that is not an r2 cache."""
    entry = Path(entry)
    if not entry.is_file():
        raise CacheError(f"{entry}: no such cache; make one with `python extract/run.py --dataset NAME` first")
    rebuild = (f"rebuild it: delete it, then re-run the extraction command that made it, or `python "
               f"extract/merge.py --out {entry} --dataset NAME` (the features in {parts_dir(entry)} are kept)")
    try:
        with h5py.File(entry, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise CacheError(f"{entry}: not a readable HDF5 file ({' '.join(str(e).split())[:200]}); {rebuild}") from None
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{entry}: not an r2 cache (no format={FORMAT!r} attribute)")
    try:
        if int(attrs["version"]) != VERSION:
            raise CacheError(f"{entry}: cache format version {attrs['version']}, this r2 reads version {VERSION}")
        return {
            "dataset": str(attrs["dataset"]),
            "fingerprint": json.loads(attrs["fingerprint"]),
            "dims": json.loads(attrs["dims"]),
            "splits": json.loads(attrs["splits"]),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise CacheError(f"{entry}: damaged entry (attribute {e} missing or unreadable); {rebuild}") from None


class ShardLockedError(CacheError):
    pass


class CacheWriteError(CacheError):
    """A write to a segment failed (disk full, file size limit, I/O error); what was committed before is intact."""


class ShardWriter:
    """Appends videos and queries to one shard of a cache, safely against kills and concurrent writers.

    Usage::
        with ShardWriter(entry, shard=(0, 1), fingerprint=fp, dims=dims) as w:
            if vid not in w.videos: w.add_video(vid, feats, times, duration, fps)
    """

    def __init__(self, entry: Path, *, shard: tuple[int, int], fingerprint: dict, dims: dict):
        self.entry = Path(entry)
        self.shard = shard
        self.fingerprint = fingerprint
        self.dims = dims
        self.store = store_of(fingerprint)
        self.dir = parts_dir(self.entry)
        _check_parts_folder(self.entry)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"{self.dir}: cannot create the cache's features folder ({describe_oserror(e)})") from None
        stem = _shard_stem(shard)
        self._lock = _acquire_lock(self.dir / f"{stem}.lock")
        try:
            self.videos: set[str] = set()
            self.queries: set[str] = set()
            segments = sorted(self.dir.glob(f"{stem}.*.h5"))
            for seg in segments:
                index = read_segment_index(seg)
                _check_segment(seg, index.fingerprint, index.dims, fingerprint, dims)
                self.videos.update(index.videos)
                self.queries.update(index.queries)
            self.file = self._open_segment(segments, stem)
            # Dataset handles stay open for the writer's life: HDF5 writes feature chunks from its cache when they
            # are flushed or their handle closes, and h5py reports a failed write only from an explicit flush
            # (closing a handle swallows it). Held handles + a flush before each commit make a full disk an error
            # raised before the index row that would expose the unwritten rows.
            self._ds = {name: self.file[name] for name in datasets_of(self.store)}
            self._broken: str | None = None
            self._logged: set[str] | None = None  # failures.jsonl lines, read on the first failure
        except BaseException:
            self._lock.close()
            raise

    def _open_segment(self, segments: list[Path], stem: str) -> h5py.File:
        # Reopen the last segment if it was closed cleanly; a segment left by a killed writer keeps its status
        # flags and is only ever read from now on: new work goes to a fresh segment.
        if segments:
            try:
                f = h5py.File(segments[-1], "r+", libver="latest")
            except OSError:
                f = None
            if f is not None:
                _truncate_to_committed(f)
                f.swmr_mode = True
                return f
            number = int(segments[-1].suffixes[-2].lstrip(".")) + 1
        else:
            number = 0
        path = self.dir / f"{stem}.{number:03d}.h5"
        tmp = path.with_name(path.name + ".tmp")
        f = h5py.File(tmp, "w", libver="latest")
        try:
            f.attrs["fingerprint"] = json.dumps(self.fingerprint, sort_keys=True)
            f.attrs["dims"] = json.dumps(self.dims, sort_keys=True)
            f.attrs["shard"] = f"{self.shard[0]}/{self.shard[1]}"
            k, p, dv, dq = len(self.dims["layers"]), self.dims["tokens"], self.dims["video_dim"], self.dims["query_dim"]
            _appendable(f, "video_feats", (k, p, dv), self.store.storage, rows_per_chunk=1)
            _appendable(f, "video_times", (), np.float64, rows_per_chunk=4096)
            _appendable(f, "video_index", (4,), np.int64, rows_per_chunk=1024)
            _appendable(f, "video_info", (2,), np.float64, rows_per_chunk=1024)
            _appendable(f, "video_ids", (), np.uint8, rows_per_chunk=16384)
            _appendable(f, "query_feats", (k, dq), self.store.storage, rows_per_chunk=16)
            _appendable(f, "query_index", (4,), np.int64, rows_per_chunk=1024)
            _appendable(f, "query_texts", (), np.uint8, rows_per_chunk=16384)
            if self.store.compact:
                _appendable(f, "video_scales", (k, dv), np.float16, rows_per_chunk=16)
                _appendable(f, "query_scales", (k,), np.float16, rows_per_chunk=16)
            f.flush()
        except (OSError, RuntimeError) as e:
            try:
                f.close()  # always attempted: an HDF5 file left open crashes the interpreter's exit
            except (OSError, RuntimeError):
                pass
            tmp.unlink(missing_ok=True)
            raise CacheWriteError(f"cannot create {path} ({describe_oserror(e)}); nothing of this shard was lost") from None
        f.close()
        os.replace(tmp, path)  # the segment appears under its final name only once its structure is complete
        f = h5py.File(path, "r+", libver="latest")
        f.swmr_mode = True
        return f

    def _encode(self, feats: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """Features as this store keeps them: (fp16 features, None) or (1-byte codes, float16 scales)."""
        if self.store.compact:
            return quantize(feats, self.store, axes)
        return feats.astype(FEATURE_DTYPE, copy=False), None

    def add_video(self, vid: str, feats: np.ndarray, times: np.ndarray, duration: float, fps: float) -> int:
        """Append one video: feats (T, K, P+1, Dv), times (T,). Visible to readers only once complete. Returns the
        feature bytes stored (codes and scales)."""
        k, p, dv = len(self.dims["layers"]), self.dims["tokens"], self.dims["video_dim"]
        if feats.ndim != 4 or feats.shape[1:] != (k, p, dv) or len(times) != len(feats) or len(feats) == 0:
            raise ValueError(f"video {vid!r}: features {feats.shape} / times {np.shape(times)} do not match "
                             f"(T, {k}, {p}, {dv}) with T >= 1")
        self._check_writable()
        ds = self._ds
        stored, scales = self._encode(feats, VIDEO_AXES)
        try:
            first = _append(ds["video_feats"], stored)
            _append(ds["video_times"], np.asarray(times, dtype=np.float64))
            id_offset, id_len = _append_bytes(ds["video_ids"], vid)
            _append(ds["video_info"], np.array([[duration, fps]], dtype=np.float64))
            if scales is not None:
                _append(ds["video_scales"], scales[None])
            for name in ("video_feats", "video_times", "video_ids", "video_info", "video_scales"):
                if name in ds:
                    ds[name].flush()
            _append(ds["video_index"], np.array([[id_offset, id_len, first, len(feats)]], dtype=np.int64))
            ds["video_index"].flush()  # the commit point
        except (OSError, RuntimeError) as e:  # h5py raises RuntimeError for a failed flush, OSError for a write
            raise self._write_failed(f"video {vid!r}", e) from None
        self.videos.add(vid)
        return stored.nbytes + (scales.nbytes if scales is not None else 0)

    def add_query(self, text: str, feats: np.ndarray) -> int:
        """Append one query text's token features (L, K, Dq); returns the feature bytes stored."""
        k, dq = len(self.dims["layers"]), self.dims["query_dim"]
        if feats.ndim != 3 or feats.shape[1:] != (k, dq) or len(feats) == 0:
            raise ValueError(f"query {text!r}: features {feats.shape} do not match (L, {k}, {dq})")
        self._check_writable()
        ds = self._ds
        stored, scales = self._encode(feats, QUERY_AXES)
        try:
            first = _append(ds["query_feats"], stored)
            offset, length = _append_bytes(ds["query_texts"], text)
            if scales is not None:
                _append(ds["query_scales"], scales)  # (L, K): the rows of query_feats
                ds["query_scales"].flush()
            ds["query_feats"].flush()
            ds["query_texts"].flush()
            _append(ds["query_index"], np.array([[offset, length, first, len(feats)]], dtype=np.int64))
            ds["query_index"].flush()  # the commit point
        except (OSError, RuntimeError) as e:
            raise self._write_failed(f"query {text!r}", e) from None
        self.queries.add(text)
        return stored.nbytes + (scales.nbytes if scales is not None else 0)

    def _check_writable(self):
        if self._broken is not None:
            raise CacheWriteError(f"{self.file.filename}: an earlier write failed ({self._broken}); open a new "
                                  f"ShardWriter to resume")

    def _write_failed(self, what: str, error: Exception) -> CacheWriteError:
        self._broken = describe_oserror(error)
        return CacheWriteError(f"cannot write {what} to {self.file.filename} ({self._broken}); the {len(self.videos)} "
                               f"videos and {len(self.queries)} query texts committed in this shard are intact")

    def failed(self, record: dict):
        """Append one failure line (video id, file, error) to the cache's failures file, unless the same failure is
        already logged (a re-run retries failed videos; it does not repeat their lines)."""
        line = json.dumps({"shard": f"{self.shard[0]}/{self.shard[1]}", **record}, ensure_ascii=False)
        path = self.dir / "failures.jsonl"
        if self._logged is None:
            self._logged = set(path.read_text(encoding="utf-8").splitlines()) if path.exists() else set()
        if line in self._logged:
            return
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
        self._logged.add(line)

    def close(self):
        try:
            if self._broken is None:
                self._ds.clear()
                self.file.close()
            else:
                # The failed chunks are still in HDF5's cache and closing a dataset retries them: it fails again on
                # a full disk, and a dataset whose close failed stays open for the interpreter's exit to crash on.
                # So the uncommitted rows (and their chunks) are dropped first, while the handles are open. The
                # error was reported; the segment keeps its open status flags, so it is read-only from now on
                # (readers see its committed rows) and the next run appends a new segment.
                try:
                    _truncate_to_committed(self.file)  # drops the unwritten chunks from HDF5's cache
                except (OSError, RuntimeError):
                    pass
                self._ds.clear()
                try:
                    self.file.close()  # always attempted: an HDF5 file left open crashes the interpreter's exit
                except (OSError, RuntimeError):
                    pass
        finally:
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_DATASETS = ("video_feats", "video_times", "video_index", "video_info", "video_ids", "query_feats", "query_index",
             "query_texts")
SCALE_DATASETS = ("video_scales", "query_scales")  # compact stores only: one row per video / query index row


def datasets_of(store: Store) -> tuple[str, ...]:
    """The datasets a segment of this store holds."""
    return _DATASETS + (SCALE_DATASETS if store.compact else ())


def _acquire_lock(path: Path, attempts: int = 50):
    """The shard lock, exclusive, held by the returned handle. A writer holds it for its whole run; a reader's
    `_lock_holder` probe holds it shared for an instant, so a refused attempt is retried for ~0.5 s before it means
    another writer."""
    handle = open(path, "a+")
    try:
        for attempt in range(attempts):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == attempts - 1:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise ShardLockedError(f"{path}: this shard is being written by {holder}; run each shard once "
                                           f"(--shard I/N), or wait for it to finish") from None
                time.sleep(0.01)
    except BaseException:  # refused, or interrupted while waiting: the handle is not kept
        handle.close()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


def _appendable(f: h5py.File, name: str, row_shape: tuple, dtype, rows_per_chunk: int):
    f.create_dataset(name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=dtype,
                     chunks=(rows_per_chunk, *row_shape))


def _append(ds: h5py.Dataset, rows: np.ndarray) -> int:
    first = ds.shape[0]
    ds.resize(first + len(rows), axis=0)
    ds[first:] = rows
    return first


def _append_bytes(ds: h5py.Dataset, text: str) -> tuple[int, int]:
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return _append(ds, data), len(data)


def _truncate_to_committed(f: h5py.File):
    """Drop rows past the last committed index row (left by a writer that failed between the two). Every dataset is
    tried even when another one's resize fails, since a resize is also what drops a failed write's new chunks from
    HDF5's cache, which its close would otherwise retry (and, failing, leave the file open for the interpreter's
    exit to crash on); the first error is raised at the end."""
    n = f["video_index"].shape[0]
    ends = {"video_info": n, "video_scales": n}
    for index, pairs in (("video_index", [("video_ids", 0, 1), ("video_feats", 2, 3), ("video_times", 2, 3)]),
                         ("query_index", [("query_texts", 0, 1), ("query_feats", 2, 3), ("query_scales", 2, 3)])):
        idx = f[index][...]
        for name, start, length in pairs:
            ends[name] = int((idx[:, start] + idx[:, length]).max()) if len(idx) else 0
    first_error = None
    for name, end in ends.items():
        if name in f and f[name].shape[0] != end:
            try:
                f[name].resize(end, axis=0)
            except (OSError, RuntimeError) as e:
                first_error = first_error or e
    if first_error is not None:
        raise first_error


def _check_segment(path: Path, fp: dict, dims: dict, want_fp: dict, want_dims: dict):
    if fp != want_fp:
        raise CacheError(f"{path} holds features made with other settings ({settings_diff(fp, want_fp)}); re-run "
                         f"with the cache's settings, or pass --out for a new cache (deleting {path.parent} "
                         f"discards its features)")
    if dims != want_dims:
        raise CacheError(f"{path}: dims {dims} differ from {want_dims}")


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class SegmentIndex:
    """What one segment file holds, read from its committed index rows only."""
    path: Path
    fingerprint: dict
    dims: dict
    videos: dict[str, tuple[int, int, float, float]]  # vid -> (first_row, n_rows, duration, fps)
    queries: dict[str, tuple[int, int]]  # text -> (first_row, n_rows)
    size_needed: int = 0  # bytes the file must keep for its committed rows (checked again on every read)
    video_rows: dict[str, int] = field(default_factory=dict)  # vid -> its video_index row (its video_scales row)


SWMR_READ_ATTEMPTS = 24  # HDF5 retries a metadata read whose checksum fails this many times in SWMR mode,
# sleeping 2^attempt ns between tries: its default of 100 sleeps for hours on a damaged segment; 24 is ~30 ms.


def _superblock(path: Path) -> tuple[int, int]:
    """(status flags, stored end-of-file address) from a segment's version 2/3 superblock, read as bytes.

    Flags are 0 once the file was closed cleanly; a writer (or one killed while writing) leaves them set, and
    then the stored end-of-file address is stale. ShardWriter files always have their superblock at offset 0."""
    try:
        with open(path, "rb") as f:
            head = f.read(36)
    except OSError as e:
        raise CacheError(f"{path}: cannot read this cache segment ({describe_oserror(e)})") from None
    if len(head) < 36 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
        raise CacheError(f"{path}: not an HDF5 segment written by r2 (no version 2/3 superblock; {len(head)} bytes "
                         f"read); delete it and re-run extraction for its shard")
    return head[11], int.from_bytes(head[28:36], "little")


def _swmr_access() -> h5py.h5p.PropFAID:
    """File access properties for SWMR reads: latest format, metadata read attempts bounded (see above)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    set_attempts = _hdf5_function("H5Pset_metadata_read_attempts")
    if set_attempts is not None:
        set_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(SWMR_READ_ATTEMPTS))
    return fapl


@functools.lru_cache(maxsize=None)
def _hdf5_function(name: str):
    """A C function of the HDF5 library h5py loaded (h5py does not wrap every property setter), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    libs = sorted({line.split()[-1] for line in maps.splitlines()
                   if "libhdf5" in line and "_hl" not in line and line.split()[-1].startswith("/")})
    for lib in libs:
        function = getattr(ctypes.CDLL(lib), name, None)
        if function is not None:
            return function
    return None


def open_segment(path: Path, attempts: int = 20) -> h5py.File:
    """Open a segment for reading, failing fast (never sleeping in HDF5's retries) on a damaged file.

    A segment closed cleanly and as long as its stored end of file is opened in plain read mode (HDF5 verifies
    every metadata checksum once). Any other (a writer running or killed: status flags set; or space allocated
    but never written, as after a full disk) is read in SWMR mode with bounded metadata retries, and its committed
    chunks are then checked against the file size (`size_needed`). A writer holds an exclusive lock for the moment
    between reopening a segment and switching to SWMR: retry briefly."""
    for attempt in range(attempts):
        flags, stored_eof = _superblock(path)
        try:
            if flags == 0 and _file_size(path) >= stored_eof:
                return h5py.File(path, "r", libver="latest")
            fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=_swmr_access())
            return h5py.File(fid)
        except OSError as e:
            locked = "unable to lock file" in str(e) or "already open for write" in str(e)
            reopening = "not already open for SWMR writing" in str(e)  # flags of a non-SWMR writer
            if (locked or reopening) and attempt < attempts - 1:  # a writer is (re)opening it right now
                time.sleep(0.05)
                continue
            holder = _lock_holder(path)
            if holder:  # a live writer (perhaps stopped) holds it: busy, not damaged
                raise ShardLockedError(f"{path}: this shard is being written by {holder}; wait for it to "
                                       f"finish (or run each shard once, --shard I/N)") from None
            if locked:
                raise CacheError(f"{path}: another process holds this cache segment open for writing (HDF5 file "
                                 f"lock); close it, then re-run") from None
            if reopening:  # no live writer, yet flagged open by a non-SWMR writer: one killed while reopening it
                raise CacheError(f"{path}: its writer was killed while reopening it, and HDF5 refuses the file's "
                                 f"'open for writing' flags; to keep its committed videos, clear the flags with "
                                 f"HDF5's `h5clear -s {path}` (then `python -m r2.cache verify` checks them), or "
                                 f"delete it and re-run extraction for its shard (its videos are extracted "
                                 f"again)") from None
            raise CacheError(f"{path}: cannot open this cache segment ({' '.join(str(e).split())[:200]}); delete it "
                             f"and re-run extraction for its shard") from None


def _lock_holder(segment: Path) -> str | None:
    """Who holds the shard lock of `segment` ("pid N on HOST"), or None when no live process holds it. Tested by
    taking the lock without waiting and releasing it at once; the lock file is never created or written here."""
    match = SEGMENT_RE.fullmatch(segment.name)
    if match is None:
        return None
    lock = segment.with_name(f"{_shard_stem((int(match[1]), int(match[2])))}.lock")
    try:
        handle = open(lock)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _committed_end(f: h5py.File, name: str, rows: int) -> int:
    """Byte offset where the chunk holding row `rows - 1` of dataset `name` ends (0 when rows == 0)."""
    if rows == 0:
        return 0
    ds = f[name]
    info = ds.id.get_chunk_info_by_coord((rows - 1,) + (0,) * (ds.ndim - 1))
    return int(info.byte_offset + info.size)


def size_needed(path: Path, f: h5py.File, video_rows: int, query_rows: int) -> int:
    """Bytes a segment must hold for its committed rows to be on disk: the stored end of file of a segment opened
    plain, else the end of the last committed feature chunks; never less than the committed feature bytes."""
    feature_bytes = sum(n * int(np.prod(f[name].shape[1:])) * f[name].dtype.itemsize
                        for name, n in (("video_feats", video_rows), ("query_feats", query_rows)))
    if not f.swmr_mode:  # opened plain: the whole file up to its stored end of file was there
        return max(_superblock(path)[1], feature_bytes)
    scales = [_committed_end(f, name, rows) for name, rows in
              (("video_scales", f["video_index"].shape[0]), ("query_scales", query_rows)) if name in f]
    return max(feature_bytes, _committed_end(f, "video_feats", video_rows), _committed_end(f, "query_feats", query_rows),
               *scales)


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise CacheError(f"{path}: cannot read this cache segment ({describe_oserror(e)})") from None


def check_size(path: Path, needed: int):
    """A segment smaller than its committed content was truncated (a copy cut short, a damaged disk): its missing
    rows would read back as zeros, so it is an error naming the file."""
    size = _file_size(path)
    if size < needed:
        raise CacheError(f"{path} is truncated or damaged: its index commits {needed} bytes but the file holds {size}; "
                         f"delete it and re-run extraction for its shard (python -m r2.cache verify names the shard)")


def expected_layout(dims: dict, store: Store) -> dict[str, tuple[np.dtype, tuple]]:
    """dataset name -> (dtype, row shape) that `ShardWriter` creates for these dims in this store."""
    k, p, dv, dq = len(dims["layers"]), dims["tokens"], dims["video_dim"], dims["query_dim"]
    feats, f16, f64, i64, u8 = (np.dtype(t) for t in (store.storage, np.float16, np.float64, np.int64, np.uint8))
    layout = {
        "video_feats": (feats, (k, p, dv)), "video_times": (f64, ()), "video_index": (i64, (4,)),
        "video_info": (f64, (2,)), "video_ids": (u8, ()), "query_feats": (feats, (k, dq)),
        "query_index": (i64, (4,)), "query_texts": (u8, ()),
    }
    if store.compact:
        layout.update(video_scales=(f16, (k, dv)), query_scales=(f16, (k,)))
    return layout


def read_segment_index(path: Path) -> SegmentIndex:
    with open_segment(path) as f:
        try:
            vindex = f["video_index"][...]
            vinfo = f["video_info"][: len(vindex)]
            vid_bytes = f["video_ids"][...].tobytes()
            qindex = f["query_index"][...]
            q_bytes = f["query_texts"][...].tobytes()
            fp, dims = json.loads(f.attrs["fingerprint"]), json.loads(f.attrs["dims"])
            problem = _layout_problem(f, expected_layout(dims, store_of(fp)), vindex, qindex)
            needed = size_needed(path, f, rows_end(vindex), rows_end(qindex)) if problem is None else 0
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py: RuntimeError for some calls
            raise CacheError(f"{path}: damaged cache segment ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                             f"delete it and re-run extraction for its shard") from None
        except CacheError as e:  # a fingerprint naming no store this r2 reads
            raise CacheError(f"{path}: {e}") from None
    if problem is not None:
        raise CacheError(f"{path}: damaged cache segment ({problem}); delete it and re-run extraction for its shard "
                         f"(`python -m r2.cache verify` lists every problem)")
    check_size(path, needed)
    videos, video_rows = {}, {}
    for j, ((off, n, first, rows), (duration, fps)) in enumerate(zip(vindex, vinfo)):
        vid = vid_bytes[off:off + n].decode("utf-8")
        videos.setdefault(vid, (int(first), int(rows), float(duration), float(fps)))
        video_rows.setdefault(vid, j)
    queries = {}
    for off, n, first, rows in qindex:
        queries.setdefault(q_bytes[off:off + n].decode("utf-8"), (int(first), int(rows)))
    return SegmentIndex(path, fp, dims, videos, queries, needed, video_rows)


def _layout_problem(f: h5py.File, layout: dict, vindex: np.ndarray, qindex: np.ndarray) -> str | None:
    """The first way the segment's datasets differ from `layout` (dtype, row shape), or hold fewer rows than its
    index commits (a row per video: video_info, video_scales; per frame: video_feats, video_times; per query
    token: query_feats, query_scales); None if none."""
    for name, (dtype, row) in layout.items():
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            return f"dataset {name!r} is missing"
        if ds.dtype != dtype or ds.shape[1:] != row:
            return (f"{name} is {ds.dtype} (N, {', '.join(map(str, ds.shape[1:]))}), expected {dtype} "
                    f"(N, {', '.join(map(str, row))})")
    frames, tokens = rows_end(vindex), rows_end(qindex)
    for name, rows in (("video_info", len(vindex)), ("video_scales", len(vindex)), ("video_feats", frames),
                       ("video_times", frames), ("query_feats", tokens), ("query_scales", tokens)):
        if name in layout and f[name].shape[0] < rows:
            return f"{name} has {f[name].shape[0]} rows, its index commits {rows}"
    return None


def rows_end(index: np.ndarray) -> int:
    """The feature rows an index commits: the end of its furthest [first_row, first_row + n_rows) range."""
    return int((index[:, 2] + index[:, 3]).max()) if len(index) else 0


class Cache:
    """Read side of a cache: one entry path in, features per video and per query text out.

    Index reading happens once, in the constructor; the segment files are opened lazily and per process, so a
    `Cache` can be handed to DataLoader workers (each worker opens its own handles after fork).
    """

    def __init__(self, entry: str | Path):
        self.entry = Path(entry)
        attrs = open_entry_attrs(self.entry)
        self.dataset: str = attrs["dataset"]
        self.fingerprint: dict = attrs["fingerprint"]
        self.dims: dict = attrs["dims"]
        self.splits: list[str] = attrs["splits"]
        try:
            self.store: Store = store_of(self.fingerprint)
        except CacheError as e:
            raise CacheError(f"{self.entry}: {e}; a newer r2 wrote it?") from None
        self.segments: list[Path] = sorted(parts_dir(self.entry).glob("shard-*.h5"))
        self._videos: dict[str, tuple[int, int, int, float, float]] = {}  # vid -> (segment, first, rows, dur, fps)
        self._queries: dict[str, tuple[int, int, int]] = {}  # text -> (segment, first, rows)
        self._scale_row: dict[str, int] = {}  # vid -> its video_scales row (query scales share query_feats' rows)
        self.duplicates: list[str] = []
        self._needed: list[int] = []  # per segment: bytes its committed rows need (a shrunk file is damaged)
        for s, path in enumerate(self.segments):
            index = read_segment_index(path)
            self._needed.append(index.size_needed)
            if index.fingerprint != self.fingerprint or index.dims != self.dims:
                raise CacheError(f"{path} was made with other settings than {self.entry} "
                                 f"({fingerprint_diff(index.fingerprint, self.fingerprint)}); delete it and "
                                 f"re-run extraction for its shard")
            for vid, (first, rows, duration, fps) in index.videos.items():
                if vid in self._videos:
                    self.duplicates.append(vid)
                    continue
                self._videos[vid] = (s, first, rows, duration, fps)
                self._scale_row[vid] = index.video_rows[vid]
            for text, (first, rows) in index.queries.items():
                self._queries.setdefault(text, (s, first, rows))
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    # -- metadata
    @property
    def videos(self) -> list[str]:
        return list(self._videos)

    @property
    def texts(self) -> list[str]:
        return list(self._queries)

    def has_video(self, vid: str) -> bool:
        return vid in self._videos

    def has_query(self, text: str) -> bool:
        return text in self._queries

    def num_frames(self, vid: str) -> int:
        return self._videos[vid][2]

    def num_tokens(self, text: str) -> int:
        """L: the SOT..EOT tokens stored for a query text."""
        return self._queries[text][2]

    def video_info(self, vid: str) -> tuple[float, float]:
        """(duration seconds, sampling fps) of a cached video."""
        return self._videos[vid][3:]

    def records(self, split: str) -> list[dict]:
        """A split's annotation records (Record.to_json dicts) as stored in the entry file."""
        if split not in self.splits:
            raise CacheError(f"{self.entry}: no split {split!r}; this cache has {self.splits}")
        try:
            with h5py.File(self.entry, "r") as f:
                text = f["annotations"][split][()].decode("utf-8")
            return [json.loads(line) for line in text.splitlines() if line]
        except (OSError, KeyError, ValueError) as e:  # ValueError: bad UTF-8 or JSON
            raise CacheError(f"{self.entry}: cannot read the annotations of split {split!r} ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); rebuild the entry: re-run the extraction command "
                             f"or extract/merge.py --dataset NAME") from None

    # -- features
    def _file(self, segment: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked into a worker: never share HDF5 handles across processes
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(segment)
        if f is None:
            f = self._handles[segment] = open_segment(self.segments[segment])
        return f

    def video(self, vid: str) -> np.ndarray:
        """float16 (T, K, P+1, Dv): one contiguous read of every tapped layer of the video (decoded for compact
        stores)."""
        return dequantize(*self.stored_video(vid), VIDEO_AXES)

    def stored_video(self, vid: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The video as stored: (features (T, K, P+1, Dv) in the store's dtype, float16 scales (K, Dv) or None)."""
        try:
            s, first, rows, _, _ = self._videos[vid]
        except KeyError:
            raise KeyError(f"video {vid!r} is not in {self.entry}") from None
        feats = self._read(s, "video_feats", first, rows)
        if not self.store.compact:
            return feats, None
        return feats, self._scales(s, "video_scales", self._scale_row[vid], 1, f"video {vid!r}")[0]

    def times(self, vid: str) -> np.ndarray:
        s, first, rows, _, _ = self._videos[vid]
        return self._read(s, "video_times", first, rows)

    def query(self, text: str) -> np.ndarray:
        """float16 (L, K, Dq): the query's SOT..EOT token features (decoded for compact stores)."""
        return dequantize(*self.stored_query(text), QUERY_AXES)

    def stored_query(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The query as stored: (features (L, K, Dq) in the store's dtype, float16 scales (L, K) or None)."""
        try:
            s, first, rows = self._queries[text]
        except KeyError:
            raise KeyError(f"query {text!r} is not in {self.entry}") from None
        feats = self._read(s, "query_feats", first, rows)
        if not self.store.compact:
            return feats, None
        return feats, self._scales(s, "query_scales", first, rows, f"query {text!r}")

    def _scales(self, segment: int, name: str, first: int, rows: int, what: str) -> np.ndarray:
        """A compact store's scale rows, which must be finite and >= 0 (a negative one would flip the features'
        signs, silently)."""
        scales = self._read(segment, name, first, rows)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise CacheError(f"{self.segments[segment]}: the {name} of {what} are negative or not finite: the "
                             f"segment is damaged; delete it and re-run extraction for its shard")
        return scales

    def _read(self, segment: int, name: str, first: int, rows: int) -> np.ndarray:
        """Rows [first, first + rows) of a segment's dataset, after checking that the file still holds every
        committed byte: HDF5 reads a chunk lost to truncation (a file cut while a trainer runs) as zeros."""
        path = self.segments[segment]
        try:
            f = self._file(segment)
            out = f[name][first:first + rows]
            if _file_size(path) < self._needed[segment]:  # the file shrank: do these rows' chunks still fit?
                check_size(path, _committed_end(f, name, first + rows))
        except (OSError, RuntimeError) as e:
            raise CacheError(f"{path}: cannot read {name} rows {first}..{first + rows} "
                             f"({' '.join(str(e).split())[:200]}); the segment is damaged: delete it and re-run "
                             f"extraction for its shard") from None
        return out

    def close(self):
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self):  # picklable for DataLoader workers with the spawn start method
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


# ----------------------------------------------------------------------------------------------- converting


@dataclass
class Converted:
    videos: int = 0  # videos written by this run
    queries: int = 0  # query texts written by this run
    skipped: int = 0  # videos and texts already in DST (a resumed conversion)
    bytes: int = 0  # feature bytes written by this run (codes and scales)
    source_bytes: int = 0  # feature bytes the same items take in SRC

    def line(self) -> str:
        ratio = f" ({self.bytes / self.source_bytes:.3f}x the source's)" if self.source_bytes else ""
        return (f"videos {self.videos}, query texts {self.queries} converted, {self.skipped} already there | "
                f"{self.bytes / 1e6:.1f} MB written{ratio}")


def _finite(feats: np.ndarray, src: Path, dst: Path, what: str) -> np.ndarray:
    """Features about to be converted, refused when the source holds NaN or inf (a compact store would hide them
    behind a finite scale; an fp16 copy would carry them on)."""
    if not np.isfinite(feats).all():
        raise CacheError(f"{src}: {what} holds non-finite features (NaN or inf); {dst} keeps what was converted "
                         f"before it; `python -m r2.cache verify {src}` names every damaged item")
    return feats


def _check_same_source(reader: "Cache", dst: Path):
    """A DST that already holds a conversion must be one of this source, so that a re-run resumes it: the same
    dataset and annotations, and no video or query text the source lacks."""
    if not dst.is_file():
        return
    try:
        old = Cache(dst)
    except CacheError:  # a damaged entry beside its parts: rewritten from this source
        return
    differs = (old.dataset != reader.dataset or old.splits != reader.splits
               or any(old.records(split) != reader.records(split) for split in old.splits))
    extra = sorted(set(old.videos) - set(reader.videos)) + sorted(set(old.texts) - set(reader.texts))
    old.close()
    if differs or extra:
        why = "its annotations differ" if differs else f"it holds {extra[0]!r}, which the source lacks"
        raise CacheError(f"{dst} holds a conversion of another cache than {reader.entry} ({why}); pass a new "
                         f"destination, or delete {dst} and {parts_dir(dst)} to convert into that path again")


def convert(src: str | Path, dst: str | Path, store: str) -> Converted:
    """Write the features of the cache SRC into a new cache DST kept in `store` (fp16, int8, fp8), with SRC's
    annotations, fingerprint (its dtype changed) and failures. SRC is only read. Every item is committed as it is
    written, so an interrupted conversion resumes where it stopped when run again; a DST made from another
    source or store is refused like an extraction with other settings."""
    src, dst = Path(src), Path(dst)
    target = get_store(store)
    if dst.resolve() == src.resolve() or parts_dir(dst).resolve() == parts_dir(src).resolve():
        raise CacheError(f"{dst}: the destination must be a new cache, not the source {src} (convert never "
                         f"writes to its source)")
    reader = Cache(src)
    if reader.store == target:
        raise CacheError(f"{src} is already stored as {store}: nothing to convert (copy {src} and "
                         f"{parts_dir(src)} to duplicate it)")
    fp, dims = with_store(reader.fingerprint, target), reader.dims
    check_before_writing(dst, fp, dims, (0, 1))
    _check_same_source(reader, dst)
    out = Converted()
    with ShardWriter(dst, shard=(0, 1), fingerprint=fp, dims=dims) as writer:
        write_entry(dst, dataset=reader.dataset, fingerprint=fp, dims=dims,
                    annotations={split: reader.records(split) for split in reader.splits})
        for text in reader.texts:
            if text in writer.queries:
                out.skipped += 1
                continue
            stored, scales = reader.stored_query(text)
            out.bytes += writer.add_query(text, _finite(dequantize(stored, scales, QUERY_AXES), src, dst,
                                                        f"query {text!r}"))
            out.source_bytes += stored.nbytes + (scales.nbytes if scales is not None else 0)
            out.queries += 1
        for vid in reader.videos:
            if vid in writer.videos:
                out.skipped += 1
                continue
            stored, scales = reader.stored_video(vid)
            duration, fps = reader.video_info(vid)
            feats = _finite(dequantize(stored, scales, VIDEO_AXES), src, dst, f"video {vid!r}")
            out.bytes += writer.add_video(vid, feats, reader.times(vid), duration, fps)
            out.source_bytes += stored.nbytes + (scales.nbytes if scales is not None else 0)
            out.videos += 1
        failures = parts_dir(src) / "failures.jsonl"
        for line in failures.read_text(encoding="utf-8").splitlines() if failures.is_file() else []:
            record = json.loads(line)
            if not reader.has_video(record.get("vid")):
                writer.failed({k: v for k, v in record.items() if k != "shard"})
    reader.close()
    return out


if __name__ == "__main__":  # python -m r2.cache verify|info|convert ...
    from r2.verify import main

    sys.exit(main())
