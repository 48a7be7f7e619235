"""The authors' release (yeliudev/R2-Tuning): their nncore checkpoints, their model zoo and their feature layout.

An nncore checkpoint is `{'meta': {...}, 'state_dict': {...}}` (plus `optimizer` in a training checkpoint); its keys
are the official module names (`adapter.*`, `pyramid.blocks.*`, `class_head.module.*`, `coord_head.module.*`,
`coef`, `pooling.att.weight` and the fixed buffer `loss._loss_sal.scale`). This module maps those names to r2's
and back (`to_r2_state_dict` / `to_official_state_dict`), infers the model config from the weight shapes
(`infer_model_config`), names the dataset from a zoo file name (`dataset_from_name`) and resolves zoo names like
`r2-tuning:qvhighlights` to a verified download (`zoo_checkpoint`).
"""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch

from r2 import datasets
from r2.errors import CheckpointError
from r2.fetch import fetch
from r2.model import R2Config, config_for

__all__ = ["ZOO", "ZOO_URL", "FEATURES_URL", "SAL_SCALE", "is_official", "to_r2_state_dict", "to_official_state_dict",
           "infer_model_config", "dataset_from_name", "zoo_checkpoint", "official_fingerprint", "clip_layers"]

# The authors' model zoo (their README's "Model Zoo"): name -> file stem, whose 8-hex suffix is the SHA-256 prefix
# that nncore's publish_model appends.
ZOO_URL = "https://huggingface.co/yeliudev/R2-Tuning/resolve/main/checkpoints/"
FEATURES_URL = "https://huggingface.co/yeliudev/R2-Tuning/resolve/main/datasets/"
ZOO = {
    "qvhighlights": "r2_tuning_qvhighlights-ed516355",
    "ego4d": "r2_tuning_ego4d-6a6f5754",
    "charades": "r2_tuning_charades-1de02112",
    "tacos": "r2_tuning_tacos-81759b55",
    "youtube_dog": "r2_tuning_youtube_dog-702bd293",
    "youtube_gym": "r2_tuning_youtube_gym-ff68b1b3",
    "youtube_par": "r2_tuning_youtube_par-27442af0",
    "youtube_ska": "r2_tuning_youtube_ska-dad28398",
    "youtube_ski": "r2_tuning_youtube_ski-df2edc4c",
    "youtube_sur": "r2_tuning_youtube_sur-d384d8b2",
    "tvsum_bk": "r2_tuning_tvsum_bk-45b59440",
    "tvsum_bt": "r2_tuning_tvsum_bt-13683fdf",
    "tvsum_ds": "r2_tuning_tvsum_ds-d11b33d3",
    "tvsum_fm": "r2_tuning_tvsum_fm-2c8c119d",
    "tvsum_ga": "r2_tuning_tvsum_ga-58e79858",
    "tvsum_ms": "r2_tuning_tvsum_ms-d9b4f8fa",
    "tvsum_pk": "r2_tuning_tvsum_pk-1830ce03",
    "tvsum_pr": "r2_tuning_tvsum_pr-51d78fc9",
    "tvsum_vt": "r2_tuning_tvsum_vt-0069d8d3",
    "tvsum_vu": "r2_tuning_tvsum_vu-6f8ebb4b",
}
# The zoo's short YouTube domain names -> r2's (recipes.YOUTUBE_DOMAINS); TVSum domains are the upper-cased codes.
_YOUTUBE = {"dog": "dog", "gym": "gymnastics", "par": "parkour", "ska": "skating", "ski": "skiing", "sur": "surfing"}

SAL_SCALE = math.log(1 / 0.07)  # the fixed buffer loss._loss_sal.scale: exp(scale) = 1 / temperature
_SAL_KEY = "loss._loss_sal.scale"
_CLIP = "ViT-B/32"  # the CLIP of every zoo file and of the released features
_CLIP_BLOCKS = 12  # ViT-B/32's visual and text depth: the official taps are its last K blocks

# Official name prefix -> r2 name prefix, for the parts that map one to one (longest prefix first).
_PREFIXES = (
    ("adapter.tem.cross_att_norm.", "block.temporal.norm_cross."),
    ("adapter.tem.self_att_norm.", "block.temporal.norm_self."),
    ("adapter.tem.ffn_norm.", "block.temporal.norm_ffn."),
    ("adapter.tem.ffn.mapping.", "block.temporal.ffn."),
    ("adapter.tem.cross_att.m.", "block.temporal.cross_attn.out."),
    ("adapter.tem.self_att.m.", "block.temporal.self_attn.out."),
    ("adapter.tem.cross_att.", "block.temporal.cross_attn."),
    ("adapter.tem.self_att.", "block.temporal.self_attn."),
    ("adapter.video_map.", "block.video_map."),
    ("adapter.query_map.", "block.query_map."),
    ("adapter.v_map.", "block.w_v."),
    ("adapter.q_map.", "block.w_q."),
    ("adapter.scale", "block.scale"),
    ("adapter.gate", "block.gate"),
    ("class_head.module.1.", "class_head.conv1."),
    ("class_head.module.3.", "class_head.conv2."),
    ("coord_head.module.1.", "boundary_head.conv1."),
    ("coord_head.module.3.", "boundary_head.conv2."),
    ("pooling.att.", "pooling.att."),
    ("coef", "boundary_coef"),
)
_PREFIXES_BACK = tuple((b, a) for a, b in _PREFIXES)  # r2 prefix -> official prefix
# Official file order (nncore writes the modules' registration order); r2's order agrees within each entry.
_ORDER = ("coef", "adapter.gate", "adapter.scale", "adapter.video_map.", "adapter.query_map.", "adapter.v_map.",
          "adapter.q_map.", *(f"adapter.tem.{part}" for part in (
              "cross_att.q.", "cross_att.k.", "cross_att.v.", "cross_att.m.", "cross_att_norm.", "self_att.q.",
              "self_att.k.", "self_att.v.", "self_att.m.", "self_att_norm.", "ffn.", "ffn_norm.")),
          "pyramid.", "pooling.", "class_head.", "coord_head.", "loss.")
# pyramid.blocks.<level>.<5j+1> is the j-th downsampling conv of that level, <5j+3> its LayerNorm.
_PYRAMID_OFFICIAL = re.compile(r"^pyramid\.blocks\.(\d+)\.(\d+)\.(weight|bias)$")
_PYRAMID_R2 = re.compile(r"^pyramid\.levels\.(\d+)\.(\d+)\.(conv|norm)\.(weight|bias)$")


def is_official(obj) -> bool:
    """True for what nncore's save_checkpoint / publish_model / CheckpointHook write."""
    return isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and isinstance(obj.get("state_dict"), dict)


def _rename(key: str, table) -> str | None:
    for a, b in table:
        if key.startswith(a):
            return b + key[len(a):]
    return None


def _to_r2_key(key: str) -> str | None:
    m = _PYRAMID_OFFICIAL.match(key)
    if m:
        level, index, param = int(m[1]), int(m[2]), m[3]
        if index % 5 not in (1, 3):
            return None
        return f"pyramid.levels.{level}.{index // 5}.{'conv' if index % 5 == 1 else 'norm'}.{param}"
    return _rename(key, _PREFIXES)


def _to_official_key(key: str) -> str | None:
    m = _PYRAMID_R2.match(key)
    if m:
        level, step, part, param = int(m[1]), int(m[2]), m[3], m[4]
        return f"pyramid.blocks.{level}.{5 * step + (1 if part == 'conv' else 3)}.{param}"
    return _rename(key, _PREFIXES_BACK)


def to_r2_state_dict(state_dict: dict, source: str) -> OrderedDict:
    """Official state_dict -> r2's names. Drops a `module.` prefix (DataParallel/DDP), the frozen `clip.*` weights
    of an `init=True` model and the fixed saliency-NCE buffer (checked to be log(1/0.07)); any other unknown key is
    a `CheckpointError` naming it."""
    out = OrderedDict()
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("clip."):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        if key == _SAL_KEY:
            if value.numel() != 1 or abs(float(value) - SAL_SCALE) > 1e-4:
                raise CheckpointError(f"{source}: {_SAL_KEY} = {value.tolist()}, but R²-Tuning's saliency NCE uses "
                                      f"the fixed log(1/0.07) = {SAL_SCALE:.7f}; this checkpoint is not the paper's "
                                      f"model")
            continue
        name = _to_r2_key(key)
        if name is None:
            raise CheckpointError(f"{source}: unknown official parameter {key!r}; not an R²-Tuning checkpoint")
        out[name] = value.detach().to(torch.float32)
    return out


def to_official_state_dict(state_dict: dict) -> OrderedDict:
    """r2's state_dict -> the official names, in the official file order, with the fixed buffer
    `loss._loss_sal.scale` the authors' model registers (so their `load_checkpoint(strict=True)` accepts it)."""
    named = {}
    for key, value in state_dict.items():
        name = _to_official_key(key)
        if name is None:
            raise CheckpointError(f"r2 parameter {key!r} has no official name")
        named[name] = value.detach().cpu().to(torch.float32).clone()
    named[_SAL_KEY] = torch.tensor([SAL_SCALE], dtype=torch.float32)

    def rank(item):
        key = item[0]
        return next(i for i, prefix in enumerate(_ORDER) if key.startswith(prefix))

    return OrderedDict(sorted(named.items(), key=rank))  # stable: r2's order within an entry is kept


def clip_layers(k: int) -> list[int]:
    """The official taps of a K-layer model: the last K of ViT-B/32's 12 blocks (1-based), ascending depth."""
    return list(range(_CLIP_BLOCKS - k + 1, _CLIP_BLOCKS + 1))


def infer_model_config(state_dict: dict, dataset: str, tokens: int = 50) -> R2Config:
    """The R2Config of an r2-named state_dict. Width, depth, K, FFN ratio and pyramid strides come from the weight
    shapes; a boundary head means the grounding variant (TEF on, so the video input width is Dv + 2), none means
    the TVSum / YouTube variant (no TEF). `tokens` (P + 1) is not in the file: 50 for ViT-B/32 at 224 px."""
    def shape(key):
        if key not in state_dict:
            raise CheckpointError(f"checkpoint lacks {_to_official_key(key) or key!r}; not an R²-Tuning checkpoint")
        return tuple(state_dict[key].shape)

    boundary = "boundary_head.conv2.weight" in state_dict
    width = shape("block.video_map.0.weight")[0]
    hidden = shape("block.video_map.2.weight")[0]
    n_levels = shape("boundary_coef")[0] if boundary else 1
    base = config_for(dataset, video_dim=width - 2 if boundary else width, query_dim=shape("block.query_map.0.weight")[0],
                      tokens=tokens, layers=shape("block.scale")[0])
    if base.boundary != boundary:
        variant = "a boundary head (moment retrieval)" if boundary else "no boundary head (highlight detection only)"
        raise CheckpointError(f"the checkpoint has {variant}, which is not the {dataset} model; pass the dataset it "
                              f"was trained on with --dataset")
    return R2Config(**{**base.__dict__, "hidden": hidden,
                       "ffn_ratio": shape("block.temporal.ffn.0.weight")[0] // hidden,
                       "strides": tuple(2 ** i for i in range(n_levels)) if boundary else base.strides})


def dataset_from_name(path: str | Path) -> tuple[str, str | None] | None:
    """(dataset, domain) of a zoo file name such as r2_tuning_tvsum_bk-45b59440.pth, or None for another name."""
    m = re.match(r"^r2_tuning_([a-z0-9]+)(?:_([a-z]+))?(?:-[0-9a-f]{8})?$", Path(path).stem)
    if not m or m[1] not in ("qvhighlights", "ego4d", "charades", "tacos", "youtube", "tvsum"):
        return None
    name, domain = m[1], m[2]
    if name == "youtube":
        return (name, _YOUTUBE.get(domain, domain)) if domain else None
    if name == "tvsum":
        return (name, domain.upper()) if domain else None
    return (name, None) if domain is None else None


def official_fingerprint(dataset: str, layers: list[int]) -> dict:
    """The feature fingerprint of the authors' released features (`clip_b32_{vid,txt}_k<K>`), which their
    checkpoints were trained on. Imported caches carry it, and so does a converted official checkpoint: the two
    match exactly, while features that r2 extracted itself (with `source` absent and its own decode settings) are
    told apart. `clip_sha256` is None: the release does not record the weights' checksum (it is OpenAI's ViT-B/32)."""
    info = datasets.dataset_info(dataset)
    return {
        "source": "official",
        "features": f"R2-Tuning release clip_b32_vid_k{len(layers)} / clip_b32_txt_k{len(layers)}",
        "clip": _CLIP,
        "clip_sha256": None,
        "layers": list(layers),
        "fps": info.fps if info.fps is not None else "per-video",
        "frame_size": 224,
        "dtype": "float16",
    }


def _zoo_dir() -> Path:
    return Path(os.environ.get("R2_ZOO_CACHE", Path.home() / ".cache" / "r2" / "zoo")).expanduser()


def zoo_checkpoint(spec: str) -> Path:
    """`r2-tuning:NAME` -> the verified local copy of that zoo file, downloaded into ~/.cache/r2/zoo (or
    $R2_ZOO_CACHE) first if missing, from the authors' URL (or $R2_ZOO_URL, a mirror with the same file names).
    The file name's 8-hex suffix must be the file's SHA-256 prefix."""
    name = spec.split(":", 1)[1].lower()
    if name not in ZOO:
        raise CheckpointError(f"{spec}: no such zoo checkpoint; names are r2-tuning:" + ", r2-tuning:".join(ZOO))
    stem = ZOO[name]
    url = os.environ.get("R2_ZOO_URL", ZOO_URL) + stem + ".pth"
    return fetch(url, _zoo_dir() / f"{stem}.pth", stem.rsplit("-", 1)[1], what=spec,
                 alternative=f"download {url} yourself and pass --checkpoint PATH to it (or set R2_ZOO_CACHE to a "
                             f"writable folder)", error=CheckpointError)
