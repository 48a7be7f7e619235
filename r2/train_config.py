"""What a training or evaluation run is configured with: TrainConfig (train/fit.py's flags, each checked against
its rule when the config is made), EvaluateConfig (train/evaluate.py's), and what a checkpoint's saved config means
again: `saved_config` reads it back, `decode_config` gives the decoding it ran with. No trainer here: r2.predict
reads a checkpoint's config without importing the training loop.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import typing
import warnings
from dataclasses import dataclass, field
from typing import Callable

from r2.data import PRELOAD_CHOICES
from r2.decode import DecodeConfig, decode_config_for
from r2.errors import OFF, ConfigError, allows_off, flag, scalar_kind
from r2.losses import LossConfig
from r2.model import R2Config
from r2.recipes import by_dataset
from r2.runtime import DEVICE, DEVICE_ALLOWED

__all__ = ["EvaluateConfig", "LOSS_WEIGHTS", "TrainConfig", "decode_config", "override", "saved_config", "shown"]


def _number(test: Callable[[float], bool]) -> Callable[[float], bool]:
    return lambda v: math.isfinite(v) and test(v)


_HEADS = next(f.default for f in dataclasses.fields(R2Config) if f.name == "heads")
_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
_AT_LEAST_0 = (lambda v: v >= 0, "an integer >= 0")
_WEIGHT = (_number(lambda v: v >= 0), "a number >= 0")
_FRACTION = (_number(lambda v: 0 <= v < 1), "a number in [0, 1)")
# field -> (test of a value of the field's type, what it allows); None (where a field's type allows it) always
# passes: it means the dataset's default
_RULES: dict[str, tuple[Callable, str]] = {
    "cache": (lambda v: True, "a cache entry file (cache/<name>.h5)"),  # "": an official checkpoint's (none)
    "out": (bool, "a folder path"),
    "domain": (bool, "a domain name (YouTube Highlights / TVSum)"),
    "batch_size": _AT_LEAST_1,
    "epochs": _AT_LEAST_1,
    "lr": (_number(lambda v: v > 0), "a number > 0"),
    "lr_drop": (lambda v: v >= 1, f"an epoch >= 1, or {OFF} for no LR drop"),
    "warmup_iters": _AT_LEAST_0,
    "passes": _AT_LEAST_1,
    "warmup_ratio": (_number(lambda v: 0 <= v <= 1), "a number between 0 and 1"),
    "weight_decay": _WEIGHT,
    "grad_clip": (_number(lambda v: v > 0), "a number > 0"),
    "dropout": _FRACTION,
    "droppath": _FRACTION,
    "hidden": (lambda v: v >= _HEADS and v % _HEADS == 0, f"a positive multiple of {_HEADS} (the attention heads)"),
    "cls_weight": _WEIGHT,
    "reg_weight": _WEIGHT,
    "sal_weight": _WEIGHT,
    "video_nce_weight": _WEIGHT,
    "layer_nce_weight": _WEIGHT,
    "nms": (lambda v: v in ("hard", "soft", OFF), f"one of hard, soft, {OFF}"),
    "nms_iou": (_number(lambda v: 0 < v <= 1), "a number in (0, 1]"),
    "unit": (_number(lambda v: v > 0), f"a number of seconds > 0, or {OFF} for no rounding"),
    "train_split": (bool, "a split name"),
    "eval_split": (bool, "a split name"),
    "seed": (lambda v: 0 <= v < 2 ** 32, "an integer in 0 .. 2**32 - 1"),
    "device": (lambda v: DEVICE.fullmatch(v) is not None, DEVICE_ALLOWED),
    "precision": (lambda v: v in ("auto", "fp32", "bf16", "fp16"), "one of auto, fp32, bf16, fp16"),
    "preload": (lambda v: v in PRELOAD_CHOICES, "one of " + ", ".join(PRELOAD_CHOICES)),
    "workers": _AT_LEAST_0,
    "resume": (bool, "a run folder"),
}


def _checked(name: str, hint, value):
    """`value` for field `name` of type `hint` (`int | None` ...), ints made floats where a float is asked;
    ConfigError when its type or its rule refuses it."""
    kind = scalar_kind(hint)
    if value is None and type(None) in typing.get_args(hint):
        return value
    if value == OFF and allows_off(hint):
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag(name)} {shown(value)}: must be true or false")
        return value
    test, allowed = _RULES[name]
    accepted = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) or not isinstance(value, accepted) or not test(kind(value)):
        was_off = allows_off(hint) and value in (-1, 0)  # r2 <= 0.2 spelt off -1 (--lr-drop) and 0 (--unit)
        raise ConfigError(f"{flag(name)} {shown(value)}: must be {allowed}"
                          + (f" (since r2 0.3, {shown(value)} no longer means off)" if was_off else ""))
    return kind(value)


def shown(value) -> str:
    """A value as it would be typed after its flag (shell-quoted)."""
    return shlex.quote(str(value))


def _opt(help: str, default: str | None = None, metavar: str | None = None):
    """A TrainConfig field's metadata: what its flag does; `default` says what None means (a recipe value)."""
    meta = {"help": help}
    if default is not None:
        meta["default"] = default
    if metavar is not None:
        meta["metavar"] = metavar
    return field(default=None, metadata=meta)


def _recipe(what: str, value: Callable) -> str:
    return f"the recipe's {what}: {by_dataset(value)}"


def _with(help: str, default, **meta):
    return field(default=default, metadata={"help": help, **meta})


_DEVICE_META = {"help": "where the model runs: auto (this process's GPU when there is one, else the CPU), cpu, "
                        "cuda, cuda:N"}


@dataclass
class TrainConfig:
    cache: str = field(metadata={"help": "the feature cache entry file to train on (cache/<name>.h5)",
                                 "metavar": "FILE"})
    out: str | None = _opt("the run folder", "runs/<cache name>-<time>", "DIR")
    domain: str | None = _opt("the YouTube Highlights / TVSum domain to train and evaluate (required there)",
                              "the whole set")
    # schedule (None: the dataset recipe's, SPEC §7)
    batch_size: int | None = _opt("the global batch size (split over DDP processes)",
                                  _recipe("batch size", lambda r: r.schedule.batch_size))
    epochs: int | None = _opt("epochs to train", _recipe("epochs", lambda r: r.schedule.epochs))
    lr: float | None = _opt("peak AdamW learning rate", _recipe("lr", lambda r: r.schedule.lr))
    lr_drop: int | str | None = _opt(f"epoch from which the LR is multiplied by 0.1; {OFF}: never",
                               _recipe("lr drop (none = never)", lambda r: r.schedule.lr_drop))
    warmup_iters: int | None = _opt("iterations of linear LR warm-up",
                                    _recipe("warm-up (custom sets: at most 500/6780 of the run)",
                                            lambda r: r.schedule.warmup_iters))
    passes: int | None = _opt("passes over the training data per epoch",
                              _recipe("passes", lambda r: r.schedule.passes))
    warmup_ratio: float = _with("the warm-up starts from this fraction of the LR", 1e-3)
    weight_decay: float = _with("AdamW weight decay", 1e-4)
    grad_clip: float = _with("largest gradient norm (clipped above)", 35.0)
    # model (None: the recipe's, SPEC §3)
    dropout: float | None = _opt("feature dropout of video_map / query_map", _recipe("dropout", lambda r: r.dropout))
    droppath: float | None = _opt("DropPath rate on each residual branch of the temporal layer",
                                  f"{R2Config.droppath}, every dataset")
    hidden: int | None = _opt("hidden size C of the R² Block, pyramid and heads", f"{R2Config.hidden}, every dataset")
    # loss weights (None: the recipe's, SPEC §5)
    cls_weight: float | None = _opt("weight of the focal (TVSum/YouTube: soft BCE) class loss",
                                    f"{LossConfig.cls_weight}, every dataset")
    reg_weight: float | None = _opt("weight of the L1 boundary loss", f"{LossConfig.reg_weight}, every dataset")
    sal_weight: float | None = _opt("weight of the sampled saliency NCE",
                                    _recipe("saliency weight", lambda r: r.sal_weight))
    video_nce_weight: float | None = _opt("weight of the video-level InfoNCE",
                                          f"{LossConfig.video_nce_weight}, every dataset")
    layer_nce_weight: float | None = _opt("weight of the layer-wise InfoNCE",
                                          f"{LossConfig.layer_nce_weight}, every dataset")
    # decoding (None: the recipe's, SPEC §6)
    nms: str | None = _opt("NMS of the decoded windows: hard, soft or none", _recipe("nms", lambda r: r.nms))
    nms_iou: float | None = _opt("IoU at which hard NMS suppresses a window", f"{DecodeConfig.nms_iou}, every dataset")
    unit: float | str | None = _opt(f"seconds window ends are rounded to; {OFF}: no rounding",
                              _recipe("unit (none = no rounding)", lambda r: r.unit))
    # run
    train_split: str | None = _opt("the split to train on", _recipe("train split", lambda r: r.info.train_split))
    eval_split: str | None = _opt("the split evaluated every epoch (best.pt is picked on it)",
                                  _recipe("eval split", lambda r: r.info.eval_split))
    seed: int = _with("seed of the model init, sampling and dropout", 42)
    device: str = dataclasses.field(default="auto", metadata=_DEVICE_META)
    precision: str = _with("autocast: auto (bf16 on capable GPUs, else fp16 on a GPU, fp32 on a CPU), fp32, bf16, "
                           "fp16", "auto")
    workers: int | None = _opt("DataLoader worker processes (each opens the cache itself)",
                               "0 on a CPU (workers would compete with torch's threads), 4 on a GPU")
    preload: str = _with("keep the splits' features in memory: none (stream from the cache), cpu, cuda (the "
                         "training split resident on that device in its stored format, batches built by indexing, "
                         "no DataLoader workers), auto (the training device when it fits, else stream)", OFF)
    progress: bool = _with("show a progress bar per epoch", True)
    compile: bool = _with("torch.compile the model (the plain path, not the fused eager one): the first epoch "
                        "compiles, and on a CPU steps are 2.8x slower than without it (README Benchmarks)", False)
    resume: str | None = _opt("a run folder: continue from its last.pt with its own settings", "a new run", "DIR")

    def __post_init__(self):
        """Check every field against its rule (`_RULES`; bools: true or false), so that a bad value is refused
        before any work, on one line naming the flag and what it allows."""
        for name, hint in typing.get_type_hints(TrainConfig).items():
            setattr(self, name, _checked(name, hint, getattr(self, name)))


LOSS_WEIGHTS = ("cls_weight", "reg_weight", "sal_weight", "video_nce_weight", "layer_nce_weight")

@dataclass
class EvaluateConfig:
    """What `evaluate_checkpoint` takes, as train/evaluate.py's flags."""
    checkpoint: str = field(metadata={
        "help": "an r2 run folder (its best.pt, e.g. runs/demo-latest), best.pt / last.pt, an official R²-Tuning "
                ".pth, or a zoo name (r2-tuning:NAME)", "metavar": "CKPT"})
    cache: str = field(metadata={"help": "the feature cache entry file to evaluate on (cache/<name>.h5)",
                                 "metavar": "FILE"})
    split: str | None = _opt("the split to evaluate", "the run's evaluation split, else the recipe's eval split")
    out: str | None = _opt("the output folder", "a new runs/eval-<checkpoint>-<cache>-<split>-<time>", "DIR")
    dataset: str | None = _opt("an official checkpoint's dataset when its file name does not say it "
                               "(r2_tuning_<dataset>[_<domain>]-<sha>.pth)", "from the checkpoint")
    domain: str | None = _opt("the YouTube Highlights / TVSum domain", "the checkpoint's")
    allow_feature_source: bool = _with(
        "use a cache whose features were made another way (e.g. r2-extracted ViT-B/32 features for a checkpoint "
        "trained on the authors' released ones): same CLIP, layers and fps only", False)
    batch_size: int = _with("samples per evaluation forward", 32, metavar="N")
    device: str = dataclasses.field(default="auto", metadata=_DEVICE_META)

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size {shown(self.batch_size)}: must be a whole number >= 1")


def decode_config(dataset: str, cfg: TrainConfig) -> DecodeConfig:
    """The dataset's SPEC §6 decoding with the run's --nms / --nms-iou / --unit overrides (OFF: none)."""
    dec_cfg = decode_config_for(dataset)
    if cfg.nms is not None:
        dec_cfg = dataclasses.replace(dec_cfg, nms=None if cfg.nms == OFF else cfg.nms)
    if cfg.unit is not None:
        dec_cfg = dataclasses.replace(dec_cfg, unit=None if cfg.unit == OFF else cfg.unit)
    return override(dec_cfg, nms_iou=cfg.nms_iou)


def override(obj, **values):
    """`obj` (a frozen config) with the fields of `values` that are not None."""
    return dataclasses.replace(obj, **{k: v for k, v in values.items() if v is not None})


def saved_config(ckpt: dict) -> TrainConfig:
    """The TrainConfig a checkpoint records; fields this r2 no longer has are dropped with a warning, so an older
    checkpoint still loads (fields it lacks take today's defaults)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = dict(ckpt["config"])
    if isinstance(values.get("preload"), bool):  # r2 <= 0.2 saved preload as a flag: true read the split into RAM
        values["preload"] = "cpu" if values["preload"] else OFF
    if values.get("lr_drop") == -1:  # r2 <= 0.2 spelt "never" -1 ...
        values["lr_drop"] = OFF
    if values.get("unit") == 0:  # ... and "no rounding" 0
        values["unit"] = OFF
    dropped = sorted(set(values) - known)
    if dropped:
        warnings.warn(f"checkpoint config fields {dropped} are not TrainConfig fields of this r2; ignored")
    return TrainConfig(**{k: v for k, v in values.items() if k in known})
