"""The encoded-video cache of r2.predict.

Encoded videos are kept on disk (`FeatureCache`, least recently used out beyond a byte budget), keyed by the file's
content (SHA-256, one read of the file: about a second per GB), the sampling rate and the checkpoint's feature
fingerprint: a new query on the same video costs the text encoder and the model only, and a file replaced under the
same name and dates is encoded again. A damaged entry is encoded again; a cache that cannot be written only warns.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from r2 import video
from r2.fetch import file_sha256

__all__ = ["DEFAULT_CACHE_BYTES", "ENCODE_CHUNK", "FeatureCache", "FeatureCacheWarning"]

ENCODE_CHUNK = 64  # frames per decode chunk and per CLIP batch: ExtractConfig.batch_size, so features are identical
DEFAULT_CACHE_BYTES = 4 * 2**30  # encoded-video cache budget (ViT-B/32, 4 layers: ~300 KB per frame)


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
