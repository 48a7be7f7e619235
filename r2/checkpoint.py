"""Checkpoint I/O: r2's own checkpoints and the authors' nncore files, read into one form.

`load_checkpoint(spec)` takes a path (an r2 `best.pt` / `last.pt`, a run folder meaning its `best.pt`, or an
official `.pth` as nncore writes it) or a zoo name (`r2-tuning:qvhighlights`), always with `weights_only=True`, and
returns r2's checkpoint dict:

    format_version, r2_version, torch_version, git_sha   who wrote it (absent in checkpoints older than version 2)
    dataset, train_frames, fingerprint, dims             what the model was trained on (features and dataset)
    cache_identity   the training cache's resolved path and annotations digest (r2 runs since resume checks)
    config           the run's TrainConfig fields (an official file: only `domain`)
    model_config     the R2Config fields; model: the state_dict (r2 names)
    official         only for an official file: its `meta` and the file it came from

An official checkpoint's features fingerprint is `r2.official.official_fingerprint`: the authors' released
features, which `extract/import_official.py` imports with the same fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
import warnings
from pathlib import Path

import torch

import r2
from r2 import official
from r2.cache import Cache, fingerprint_diff
from r2.errors import CheckpointError
from r2.model import R2Config, R2Model

__all__ = ["FORMAT_VERSION", "cache_identity", "checkpoint_file", "checkpoint_meta", "load_checkpoint",
           "check_compatible", "check_same_cache", "build_model", "from_official", "to_official", "save"]

FORMAT_VERSION = 2
_R2_KEYS = {"model", "fingerprint", "dims", "model_config"}
# Fingerprint fields that describe the features themselves; the others describe how they were made (decoder
# versions, resize rule, who extracted them). --allow-feature-source lets the latter differ, never the former.
_FEATURE_FIELDS = ("clip", "layers", "fps", "frame_size")  # the stored format (dtype, scales) is a source detail


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict:
    """Who wrote a checkpoint: plain strings only (a `TorchVersion` would be refused by weights_only readers)."""
    return {"format_version": FORMAT_VERSION, "r2_version": r2.__version__, "torch_version": str(torch.__version__),
            "git_sha": _git_sha()}


def cache_identity(cache: Cache) -> dict:
    """Which cache a run trains on: the entry file's resolved path and a digest of every split's annotations.
    Two caches extracted with the same settings share a fingerprint; they differ here."""
    digest = hashlib.sha256()
    for split in cache.splits:
        digest.update(json.dumps([split, cache.records(split)], sort_keys=True).encode())
    return {"path": str(cache.entry.resolve()), "annotations_sha256": digest.hexdigest()}


def checkpoint_meta(cache: Cache, identity: dict, config: dict, model_cfg: R2Config, train_frames: int) -> dict:
    return {
        **provenance(),
        "dataset": cache.dataset,
        "train_frames": train_frames,  # the longest training video: r2.predict windows longer videos to this
        "fingerprint": cache.fingerprint,
        "dims": cache.dims,
        "cache_identity": identity,  # cache_identity(cache), computed once per run
        "config": config,
        "model_config": dataclasses.asdict(model_cfg),
    }


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError for foreign or damaged files
        reason = " ".join(str(e).split())[:200] or "empty or truncated file"
        raise CheckpointError(f"{path}: not an r2 or R²-Tuning checkpoint ({type(e).__name__}: {reason})") from None


def checkpoint_file(spec: str | Path) -> str | Path:
    """A run folder -> its best.pt (a CheckpointError when it has none); a file or a zoo name as given."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    if not (path / "best.pt").is_file():
        raise CheckpointError(f"{path}: a folder without best.pt (not an r2 run folder, or a run that has not "
                              f"finished an epoch yet); pass a run folder or a checkpoint file")
    return path / "best.pt"


def load_checkpoint(spec: str | Path, dataset: str | None = None) -> dict:
    """r2's checkpoint dict from an r2 file, an official nncore file or a zoo name (see the module doc).

    `dataset` names an official file's dataset (default: read from a zoo file name such as
    r2_tuning_tvsum_bk-45b59440.pth); it is ignored for r2 files, which record theirs."""
    if str(spec).startswith("r2-tuning:"):
        spec = official.zoo_checkpoint(str(spec))
    path = Path(checkpoint_file(spec))
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (pass an r2 run's best.pt, an official R²-Tuning .pth, or a "
                              f"zoo name such as r2-tuning:qvhighlights)")
    obj = _read(path)
    if official.is_official(obj):
        return from_official(obj, path, dataset)
    if not isinstance(obj, dict) or not _R2_KEYS <= set(obj):
        raise CheckpointError(f"{path}: not an r2 checkpoint (missing model/fingerprint/dims/model_config) and not "
                              f"an official one (no meta/state_dict)")
    return obj


def from_official(obj: dict, path: Path, dataset: str | None = None) -> dict:
    """An nncore checkpoint ({'meta', 'state_dict'}[, 'optimizer']) -> r2's checkpoint dict."""
    named = official.dataset_from_name(path)  # (dataset, domain) of a zoo file name, else None
    if dataset is None:
        if named is None:
            raise CheckpointError(f"{path}: an official R²-Tuning checkpoint does not record its dataset: pass "
                                  f"--dataset NAME (qvhighlights, charades, tacos, ego4d, youtube, tvsum)")
        dataset = named[0]
    domain = named[1] if named and named[0] == dataset else None
    state = official.to_r2_state_dict(obj["state_dict"], str(path))
    model_cfg = official.infer_model_config(state, dataset)
    layers = official.clip_layers(model_cfg.layers)
    model = R2Model(model_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the official weights do not fit the {dataset} model "
                              f"({' '.join(str(e).split())[:300]})") from None
    return {
        "dataset": dataset,
        "train_frames": None,
        "fingerprint": official.official_fingerprint(dataset, layers),
        "dims": {"video_dim": model_cfg.video_dim, "query_dim": model_cfg.query_dim, "tokens": model_cfg.tokens,
                 "layers": layers},
        "config": {"cache": "", "domain": domain},
        "model_config": dataclasses.asdict(model_cfg),
        "model": model.state_dict(),
        "official": {"meta": dict(obj["meta"]), "file": str(path)},
    }


def to_official(ckpt: dict) -> dict:
    """r2's checkpoint dict -> what nncore's save_checkpoint writes: {'meta', 'state_dict'} with official names."""
    meta = dict(ckpt.get("official", {}).get("meta") or {})
    meta = {"nncore_version": meta.get("nncore_version", "0.4.4"),
            "create_time": meta.get("create_time", time.strftime("%Y-%m-%d %H:%M:%S"))}
    return {"meta": meta, "state_dict": official.to_official_state_dict(ckpt["model"])}


def save(obj: dict, path: str | Path):
    """torch.save to a temporary name, then rename: a kill while saving never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def check_compatible(ckpt: dict, cache: Cache, what: str, allow_feature_source: bool = False):
    """Refuse features from a cache made differently from the checkpoint's.

    With `allow_feature_source`, the fields that say how the features were made or stored (source, decoder
    versions, resize rule, precision, an fp16 / int8 / fp8 store) may differ, with a warning; the CLIP, its weights
    (where both sides know them), the layers, fps and frame size must still agree."""
    if ckpt["dims"] != cache.dims:
        raise CheckpointError(f"{what} expects features with dims {ckpt['dims']}, but {cache.entry} has {cache.dims}")
    a, b = ckpt["fingerprint"], cache.fingerprint
    if a == b:
        return
    diff = fingerprint_diff(a, b)
    same_features = all(a.get(k) == b.get(k) for k in _FEATURE_FIELDS) and (
        a.get("clip_sha256") is None or b.get("clip_sha256") is None or a.get("clip_sha256") == b.get("clip_sha256"))
    if same_features and allow_feature_source:
        warnings.warn(f"{what} was trained on features made differently from {cache.entry} ({diff}); used anyway "
                      f"(--allow-feature-source)", stacklevel=2)
        return
    hint = (" or pass --allow-feature-source to use them anyway (same CLIP, layers and fps)" if same_features else "")
    raise CheckpointError(f"{what} was trained on features made differently from {cache.entry} ({diff}); re-extract "
                          f"with the checkpoint's settings{hint}, or train on this cache")


def check_same_cache(ckpt: dict, identity: dict, what: str):
    """Refuse to continue a run on a cache other than the one it was trained on: the same fingerprint is not
    enough (another cache made with the same settings holds other videos and annotations, and the run's log would
    mix two evaluation sets). Checkpoints older than the recorded identity are compared by their cache path."""
    recorded = ckpt.get("cache_identity") or {"path": str(Path(ckpt["config"]["cache"]).resolve())}
    if recorded["path"] != identity["path"]:
        raise CheckpointError(f"{what} was trained on the cache {recorded['path']}; {identity['path']} is another "
                              f"one: resume with --cache {recorded['path']}, or start a new run on this cache")
    if recorded.get("annotations_sha256", identity["annotations_sha256"]) != identity["annotations_sha256"]:
        raise CheckpointError(f"{what} was trained on the cache {recorded['path']}, whose annotations have changed "
                              f"since (it was rebuilt); start a new run on it")


def build_model(ckpt: dict) -> R2Model:
    fields = {f.name for f in dataclasses.fields(R2Config)}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["model_config"].items() if k in fields}
    model = R2Model(R2Config(**cfg))
    model.load_state_dict(ckpt["model"])
    return model
