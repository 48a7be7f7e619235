"""Frozen OpenAI CLIP: loading, tokenization and layer taps (SPEC §2).

A CLIP is named by one string: an OpenAI ViT name ("ViT-B/32", downloaded once into ~/.cache/clip or
$R2_CLIP_CACHE and checked against the SHA-256 in OpenAI's URL), a local checkpoint (OpenAI's TorchScript archive
or a torch.save state dict), or "tiny" (a small CLIP with deterministic random weights for offline tests).

The taps are the raw residual stream after chosen 1-based blocks: no ln_post / ln_final, no projection, no pooling.
OpenAI's `clip/model.py` and `clip/simple_tokenizer.py` are loaded from their files, because the package's
`__init__` imports torchvision and pkg_resources, which do not work beside this torch.

torch is imported by the functions that need it, not by this module: an extraction re-run with nothing to do
reads the tiny CLIP's identity (`identity`) and the cache's index and never pays torch's import.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np

from r2.errors import ConfigError, R2Error
from r2.fetch import fetch

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch
    from torch import nn

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "OPENAI_MODELS", "Clip", "ClipArch", "ClipIdentity", "ClipLoadError", "TINY_ARCH",
    "TINY_SHA256", "VIT_B32_ARCH", "encode_frames", "encode_texts", "identity", "load_clip", "parse_layers",
    "tiny_clip_state_dict", "tokenize", "weights_sha256", "write_clip_checkpoint", "write_vit_b32_checkpoint",
]

# OpenAI's image normalisation (RGB, applied to pixels scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenAI's ViT checkpoints; the folder before the file name is the file's SHA-256. ResNet CLIPs are left out:
# the taps need a ViT's token grid.
OPENAI_MODELS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/"
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/"
                      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

_WHAT_TO_PASS = "pass --clip PATH to a local OpenAI CLIP checkpoint, or --clip tiny for the offline test model"
_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"


class ClipLoadError(R2Error):
    """A CLIP checkpoint could not be found, downloaded, verified or read; the message says what to do."""


def _load_openai_module(name: str) -> ModuleType:
    """Load `clip/<name>.py` from the installed openai-clip package without running its `__init__`."""
    module_name = f"r2._openai_clip_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    package = importlib.util.find_spec("clip")
    if package is None or not package.submodule_search_locations:
        raise ImportError("openai-clip is not installed: pip install -r requirements.txt (openai-clip==1.0.1)")
    path = Path(package.submodule_search_locations[0]) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def __getattr__(name: str) -> ModuleType:  # clip.openai_model / clip.openai_tokenizer, loaded on first use
    if name in ("openai_model", "openai_tokenizer"):
        return _load_openai_module(name.removeprefix("openai_"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ClipArch:
    """The arguments of OpenAI's `CLIP` constructor for a ViT CLIP (what `build_model` infers from shapes)."""
    embed_dim: int           # joint image-text embedding size (output of visual.proj / text_projection)
    image_resolution: int    # input side in pixels
    vision_layers: int       # residual blocks in the image tower
    vision_width: int        # Dv; OpenAI's CLIP uses vision_width // 64 heads
    vision_patch_size: int   # patch side in pixels; tokens = (image_resolution / patch)^2 + 1
    context_length: int      # text positions
    vocab_size: int          # BPE vocabulary incl. SOT / EOT
    transformer_width: int   # Dq
    transformer_heads: int   # build_model infers transformer_width // 64
    transformer_layers: int  # residual blocks in the text tower


# Small CLIP for offline tests and the demo: OpenAI's class and vocabulary, 224 px frames (the real decode path),
# 12 blocks per tower, Dv != Dq (as in ViT-B/32) and several heads per tower (widths are multiples of 64 so
# build_model agrees). Patches of 56 px give 4x4 + 1 = 17 tokens per frame instead of ViT-B/32's 50: R²'s video
# MLP runs on every token of every frame, so this makes CPU training on the demo ~3x faster.
TINY_ARCH = ClipArch(embed_dim=64, image_resolution=224, vision_layers=12, vision_width=192, vision_patch_size=56,
                     context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                     transformer_layers=12)
VIT_B32_ARCH = ClipArch(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                        context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                        transformer_layers=12)


@dataclass(frozen=True)
class Clip:
    """A loaded, frozen CLIP and the dimensions the taps produce."""
    model: nn.Module = field(repr=False)  # OpenAI `CLIP`, fp32, eval(), requires_grad False
    name: str           # the spec it was loaded from ("ViT-B/32", a path, "tiny")
    sha256: str         # checksum of the weights (see `weights_sha256`), independent of the file format
    vision_width: int   # Dv
    text_width: int     # Dq
    vision_layers: int  # residual blocks in the image tower
    text_layers: int    # residual blocks in the text tower
    tokens: int         # P + 1 visual tokens per frame ([CLS] + patches)
    image_size: int     # frames must be (image_size, image_size) RGB


@dataclass(frozen=True)
class ClipIdentity:
    """What a CLIP contributes to a cache's fingerprint and dims, known without building the model."""
    name: str
    sha256: str
    vision_width: int
    text_width: int
    vision_layers: int
    text_layers: int
    tokens: int
    image_size: int


# `weights_sha256` of `tiny_clip_state_dict(0)`: the tiny CLIP is defined by its seed, so its checksum is known
# before it is built (tests/test_compact.py builds it and checks this value).
TINY_SHA256 = "978d4dad2b4f6a476d91848a8ae831d81f6d90761afd186a10c0c3ff3172e032"


def identity(spec: str) -> ClipIdentity | None:
    """The identity of CLIP `spec` when it is known without loading weights (the tiny CLIP), else None: the
    weights of a name or a checkpoint must be read (and hashed) to know their checksum."""
    if spec != "tiny":
        return None
    arch = TINY_ARCH
    return ClipIdentity(name="tiny", sha256=TINY_SHA256, vision_width=arch.vision_width,
                        text_width=arch.transformer_width, vision_layers=arch.vision_layers,
                        text_layers=arch.transformer_layers,
                        tokens=(arch.image_resolution // arch.vision_patch_size) ** 2 + 1,
                        image_size=arch.image_resolution)


# ---------------------------------------------------------------------------------------------------- tokenizer

@lru_cache(maxsize=1)
def _tokenizer():
    return _load_openai_module("simple_tokenizer").SimpleTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP token ids, (N, context_length) int64: SOT, BPE ids, EOT, zero padding; equal to
    `clip.tokenize(texts, context_length, truncate=True)`: a text too long keeps its first ids and ends in EOT."""
    import torch

    if isinstance(texts, str):
        texts = [texts]
    tokenizer = _tokenizer()
    sot, eot = tokenizer.encoder[_SOT], tokenizer.encoder[_EOT]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot, *tokenizer.encode(text)][:context_length - 1] + [eot]
        result[i, :len(ids)] = torch.tensor(ids)
    return result


# ---------------------------------------------------------------------------------------------------- weights

def _init_std(key: str, shape: torch.Size, arch: ClipArch) -> float:
    """Std of the normal draw for one random weight, after OpenAI's init (scaled so 12 blocks stay well behaved)."""
    if key in ("visual.class_embedding", "visual.positional_embedding"):
        return arch.vision_width ** -0.5
    if key == "positional_embedding":
        return 0.01
    if key == "token_embedding.weight":
        return 0.02
    if key in ("visual.proj", "text_projection"):  # (in, out)
        return shape[0] ** -0.5
    if key.endswith((".bias", "in_proj_bias")):
        return 0.02
    if key == "visual.conv1.weight" or key.endswith(("attn.in_proj_weight", "mlp.c_fc.weight")):  # (out, in...)
        return math.prod(shape[1:]) ** -0.5
    if key.endswith(("attn.out_proj.weight", "mlp.c_proj.weight")):  # residual branches: damped by depth
        layers = arch.vision_layers if key.startswith("visual.") else arch.transformer_layers
        return shape[1] ** -0.5 * (2 * layers) ** -0.5
    raise KeyError(f"no random init rule for CLIP weight {key!r} {tuple(shape)}")


def _random_state_dict(arch: ClipArch, seed: int) -> dict[str, torch.Tensor]:
    """fp32 weights for OpenAI's CLIP with `arch`, drawn from a local generator (the global RNG is untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):  # the template's own random init is discarded: keys and shapes only
        shapes = {key: value.shape for key, value in
                  _load_openai_module("model").CLIP(**asdict(arch)).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key == "logit_scale":
            state_dict[key] = torch.full(shape, math.log(1 / 0.07))
        elif re.search(r"\.ln_\w+\.weight$|^ln_final\.weight$", key):  # LayerNorm gains near 1
            state_dict[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state_dict[key] = _init_std(key, shape, arch) * torch.randn(shape, generator=generator)
    return state_dict


def tiny_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the "tiny" CLIP (TINY_ARCH), identical on every call and machine for a given seed."""
    return _random_state_dict(TINY_ARCH, seed)


def _build_model(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """OpenAI's build_model (fp16 as OpenAI ships); its throwaway random init runs on a forked global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return _load_openai_module("model").build_model(dict(state_dict))  # build_model deletes keys: give it a copy


def write_clip_checkpoint(state_dict: dict[str, torch.Tensor], path: str | Path, torchscript: bool = True) -> Path:
    """Write CLIP weights in OpenAI's shipped form (fp16, as build_model converts them): a TorchScript archive traced
    on a dummy image + text (like the downloaded ViT-B-32.pt), or with `torchscript=False` a torch.save state dict."""
    import torch

    path = Path(path)
    model = _build_model(state_dict)
    if torchscript:
        side = model.visual.input_resolution
        image = torch.zeros(1, 3, side, side, dtype=torch.float16)  # (B, 3, H, W)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks frozen for this fixed input
            warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
            traced = torch.jit.trace(model, (image, tokenize("a dummy query")), check_trace=False)
            torch.jit.save(traced, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def write_vit_b32_checkpoint(path: str | Path, seed: int = 0, torchscript: bool = True) -> Path:
    """A random-weight ViT-B/32 (OpenAI's shapes) written by `write_clip_checkpoint`, for offline tests."""
    return write_clip_checkpoint(_random_state_dict(VIT_B32_ARCH, seed), path, torchscript)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict in sorted key order: each key, its shape and its values as fp32 bytes."""
    import torch

    digest = hashlib.sha256()
    state_dict = model.state_dict()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _cache_dir() -> Path:
    return Path(os.environ.get("R2_CLIP_CACHE", Path.home() / ".cache" / "clip")).expanduser()


def _openai_checkpoint(name: str) -> Path:
    """The cached, SHA-256-verified OpenAI checkpoint `name`, downloaded first if missing."""
    url = OPENAI_MODELS[name]
    return fetch(url, _cache_dir() / url.split("/")[-1], url.split("/")[-2], what=f"CLIP {name}",
                 alternative=_WHAT_TO_PASS + " (or set R2_CLIP_CACHE to a writable folder)", error=ClipLoadError)


_REQUIRED_KEYS = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
                  "token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The CLIP state dict in a TorchScript archive or a torch.save file (a bare dict or {"state_dict": ...})."""
    import torch

    if not path.is_file():
        raise ClipLoadError(f"CLIP checkpoint {path} not found: use an OpenAI name ({', '.join(OPENAI_MODELS)}), "
                            f"or {_WHAT_TO_PASS}")
    try:
        if _is_torchscript(path):  # OpenAI ships TorchScript: torch's deprecation note is no news to the user
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning)
                state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files; all end here, named
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClipLoadError(f"cannot read CLIP checkpoint {path} ({reason}); {_WHAT_TO_PASS}") from err
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict):
        raise ClipLoadError(f"{path} holds a {type(state_dict).__name__}, not a CLIP state dict; {_WHAT_TO_PASS}")
    if "visual.attnpool.positional_embedding" in state_dict:
        raise ClipLoadError(f"{path} is a ResNet CLIP; the taps need a ViT CLIP (e.g. ViT-B/32)")
    missing = [key for key in _REQUIRED_KEYS if not isinstance(state_dict.get(key), torch.Tensor)]
    if missing:
        raise ClipLoadError(f"{path} is not an OpenAI ViT CLIP state dict (missing {', '.join(missing)}); "
                            f"{_WHAT_TO_PASS}")
    return state_dict


def load_clip(spec: str, device: str | torch.device = "cpu") -> Clip:
    """Load a frozen fp32 CLIP from an OpenAI name ("ViT-B/32"), a local checkpoint path, or "tiny"."""
    if spec == "tiny":
        state_dict, source = tiny_clip_state_dict(), "tiny"
    elif spec in OPENAI_MODELS:
        path = _openai_checkpoint(spec)
        state_dict, source = _read_state_dict(path), str(path)
    else:
        path = Path(spec).expanduser()
        state_dict, source = _read_state_dict(path), str(path)
    try:
        model = _build_model(state_dict)
    except (RuntimeError, KeyError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ClipLoadError(f"{source} does not fit OpenAI's CLIP ({reason}); {_WHAT_TO_PASS}") from err
    model = model.float().eval().requires_grad_(False)
    sha256 = weights_sha256(model)
    model = model.to(device)
    visual = model.visual
    return Clip(model=model, name=spec, sha256=sha256,
                vision_width=visual.conv1.out_channels, text_width=model.ln_final.normalized_shape[0],
                vision_layers=len(visual.transformer.resblocks), text_layers=len(model.transformer.resblocks),
                tokens=visual.positional_embedding.shape[0], image_size=visual.input_resolution)


# ---------------------------------------------------------------------------------------------------- taps

def parse_layers(text: str, n_layers: int) -> list[int]:
    """1-based block numbers from "9-12", "12" or "4,8,12" (ranges and commas may mix: "2,9-12")."""
    layers = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ConfigError(f"bad CLIP layers {text!r}: write 'A-B', 'N' or 'A,B,C' with ascending 1-based block "
                             f"numbers in 1..{n_layers}, e.g. '9-12'")
        layers.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
    return _check_layers(layers, n_layers)


def _check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    layers = [int(layer) for layer in layers]
    if not layers or any(not 1 <= layer <= n_layers for layer in layers):
        raise ConfigError(f"CLIP layers {layers} out of range: blocks are numbered 1..{n_layers}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ConfigError(f"CLIP layers {layers} must be strictly ascending block numbers in 1..{n_layers}, "
                         f"e.g. [9, 10, 11, 12]")
    return layers


def _autocast(bf16: bool, device: torch.device):
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _run_blocks(blocks: nn.Sequential, x: torch.Tensor, layers: list[int], causal: bool = False) -> list[torch.Tensor]:
    """Run blocks 1..max(layers) on x (N, B, D); return the residual stream after each tapped block, fp32 (B, N, D).

    `causal` runs CLIP's text blocks over the first N positions only: their mask is built for the full context, so
    the block's two residual branches are applied here with a causal boolean mask of size N (True = masked)."""
    import torch

    mask = torch.ones(len(x), len(x), dtype=torch.bool, device=x.device).triu(1) if causal else None  # (N, N)
    taps = []
    for number, block in enumerate(blocks[:layers[-1]], start=1):
        if causal:
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        else:
            x = block(x)
        if number in layers:
            taps.append(x.permute(1, 0, 2).float())  # (N, B, D) -> (B, N, D)
    return taps


def _check_batch_size(batch_size: int):
    """A batch size < 1 would skip every batch and return an output buffer that was never written."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r}: must be an integer >= 1")


def encode_frames(clip: Clip, frames: np.ndarray | torch.Tensor, layers: Sequence[int], batch_size: int = 64,
                  bf16: bool = False) -> torch.Tensor:
    """Visual taps: uint8 RGB frames (T, S, S, 3) at S = clip.image_size -> float32 (T, K, P+1, Dv), the residual
    stream after each 1-based block in `layers` (ascending), [CLS] at token 0."""
    import torch

    layers = _check_layers(layers, clip.vision_layers)
    _check_batch_size(batch_size)
    side = clip.image_size
    if frames.dtype not in (np.uint8, torch.uint8) or tuple(frames.shape[1:]) != (side, side, 3) or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 RGB of shape (T, {side}, {side}, 3); got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    visual = clip.model.visual
    device = visual.conv1.weight.device
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    out = torch.empty(len(frames), len(layers), clip.tokens, clip.vision_width)  # (T, K, P+1, Dv)
    with torch.no_grad(), _autocast(bf16, device):
        for start in range(0, len(frames), batch_size):
            batch = frames[start:start + batch_size]
            batch = batch.to(device) if isinstance(batch, torch.Tensor) else torch.from_numpy(batch.copy()).to(device)
            x = batch.permute(0, 3, 1, 2).float().div_(255)  # (B, S, S, 3) -> (B, 3, S, S)
            x = (x - mean) / std
            x = visual.conv1(x).float()  # (B, Dv, g, g); the residual stream stays fp32 under autocast
            x = x.flatten(2).transpose(1, 2)  # (B, Dv, g, g) -> (B, P, Dv)
            cls = visual.class_embedding.float().expand(len(x), 1, -1)  # (B, 1, Dv)
            x = torch.cat([cls, x], dim=1) + visual.positional_embedding.float()  # (B, P+1, Dv)
            x = visual.ln_pre(x).permute(1, 0, 2)  # (B, P+1, Dv) -> (P+1, B, Dv): CLIP's blocks take LND
            taps = _run_blocks(visual.transformer.resblocks, x, layers)
            out[start:start + len(batch)] = torch.stack(taps, dim=1).cpu()  # K x (B, P+1, Dv) -> (B, K, P+1, Dv)
    return out


def encode_texts(clip: Clip, texts: Sequence[str], layers: Sequence[int], batch_size: int = 256,
                 bf16: bool = False) -> list[torch.Tensor]:
    """Text taps: one float32 (L_i, K, Dq) per text, tokens SOT..EOT of `tokenize` (truncated to the context),
    the residual stream after each 1-based block in `layers` (ascending), under CLIP's causal mask.

    L_i is the EOT position + 1: the count of non-zero ids would be one short whenever BPE id 0 ("!") occurs
    inside a query (e.g. "wow!😀"). Texts run in batches of similar length, each cut to its longest text: under the
    causal mask a position never sees later ones, so the padding beyond it changes nothing."""
    import torch

    layers = _check_layers(layers, clip.text_layers)
    _check_batch_size(batch_size)
    model = clip.model
    device = model.token_embedding.weight.device
    tokens = tokenize(list(texts), model.context_length)  # (N, 77)
    lengths = (tokens.argmax(dim=1) + 1).tolist()  # EOT has the largest id
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    out: list[torch.Tensor] = [torch.empty(0)] * len(lengths)
    with torch.no_grad(), _autocast(bf16, device):
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            width = max(lengths[i] for i in index)
            ids = tokens[index, :width].to(device)  # (B, W)
            x = model.token_embedding(ids).float() + model.positional_embedding[:width].float()  # (B, W, Dq)
            x = x.permute(1, 0, 2)  # (B, W, Dq) -> (W, B, Dq): CLIP's blocks take LND
            taps = _run_blocks(model.transformer.resblocks, x, layers, causal=True)
            stacked = torch.stack(taps, dim=2).cpu()  # K x (B, W, Dq) -> (B, W, K, Dq)
            for row, i in enumerate(index):
                out[i] = stacked[row, :lengths[i]].clone()  # (L_i, K, Dq)
    return out
