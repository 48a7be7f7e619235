"""One recipe per dataset: everything r2 knows about a dataset, in one frozen dataclass each.

A `Recipe` holds the dataset's facts (`DatasetInfo`: fps, clip length, splits, files, domains), the model variant
(SPEC §3), the loss and decoding settings (SPEC §5, §6), the training schedule (SPEC §7), the trained length that
prediction windows long videos by, and the paper's published R²-Tuning numbers with the columns they are reported
in. Every module reads these values through `recipe(name)`; none keeps a table of its own.

`recipe(name)` is the one lookup: names are matched lower-cased ("TACoS" is "tacos"), and an unknown name is one
ConfigError listing the valid ones. This module imports nothing from r2 but its errors, so any module may read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from r2.errors import ConfigError

__all__ = ["DATASETS", "DatasetInfo", "Recipe", "Schedule", "by_dataset", "recipe", "TVSUM_DOMAINS", "YOUTUBE_DOMAINS"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    fps: float | None              # frames sampled per second; None = per video (YouTube: clips / seconds)
    clip_len: float | None         # seconds per clip = 1 / fps; None = per video
    splits: tuple[str, ...]        # the splits the loaders read
    train_split: str
    eval_split: str                # the split the paper reports (and best.pt is picked on)
    headline: str                  # metric key that picks best.pt (the paper's main column; see `_QVH_HEADLINE`)
    saliency: str                  # "qvhighlights" | "windows" | "tvsum" | "youtube": how SPEC §4 builds targets
    folder: str                    # sub-folder of the data root ("" for demo/custom: `annotations` gives the files)
    files: tuple[tuple[str, str], ...]  # (split, file name inside `folder`)
    video_suffix: str = ""         # appended to the video id to form the video file stem (TACoS: "-cam-002")
    domains: tuple[str, ...] = ()  # YouTube / TVSum domains (trained and evaluated separately)

    def file_for(self, split: str) -> str:
        for s, f in self.files:
            if s == split:
                return f
        raise ConfigError(f"dataset {self.name!r} has no split {split!r}; valid splits = {self.splits}")


@dataclass(frozen=True)
class Schedule:
    """SPEC §7: the training schedule of a dataset."""
    batch_size: int
    epochs: int
    lr: float
    lr_drop: int | None  # epoch at which the LR is multiplied by 0.1 (None: never)
    warmup_iters: int
    passes: int = 1  # passes over the training data per epoch (QVHighlights: 4)


@dataclass(frozen=True)
class Recipe:
    info: DatasetInfo
    schedule: Schedule
    trained_frames: int  # longest training video in frames: prediction's window length when the checkpoint
    #                      does not record its own (train split of the annotation files)
    columns: tuple[tuple[str, str, float], ...]  # the paper's columns: (column, metric key, scale to the paper's)
    dropout: float = 0.5  # SPEC §3 / §7: feature dropout of video_map and query_map
    sal_weight: float = 0.1  # SPEC §5: weight of the sampled saliency NCE
    unit: float | None = None  # SPEC §6: seconds window ends are rounded to (None: no rounding)
    nms: str | None = None  # SPEC §6: "hard" | "soft" | None
    cap_warmup: bool = False  # the default warm-up is capped at a fraction of the run (custom sets; see r2.train)
    paper: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)  # eval split -> (source,
    #                                                                                  {column: published value})

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def highlight_only(self) -> bool:
        """Saliency-only sets (YouTube Highlights, TVSum): per-clip scores and no windows in the annotations, so the
        model has no TEF, one pyramid level and no boundary head (SPEC §3), the class loss is BCE to the soft
        saliency (SPEC §5), decoding gives saliency only (SPEC §6), and each domain is trained on its own."""
        return self.info.saliency in ("tvsum", "youtube")


YOUTUBE_DOMAINS = ("dog", "gymnastics", "parkour", "skating", "skiing", "surfing")
TVSUM_DOMAINS = ("BK", "BT", "DS", "FM", "GA", "MS", "PK", "PR", "VT", "VU")

# Headline metric = the paper's main column for the dataset, and the first key of the reference's EvalHook
# `high_keys` list that the dataset's evaluator reports:
#  QVHighlights: MR mAP averaged over IoU 0.50:0.05:0.95 (Table 1 "Avg."); demo / custom as QVHighlights.
#  Charades / TACoS / Ego4D: mIoU (Table 2; a smooth summary of its R@{0.3,0.5,0.7} columns).
#  YouTube / TVSum: mAP (Tables 3, 4; with one domain per run this is that domain's mAP).
_QVH_HEADLINE, _MR_HEADLINE, _HL_HEADLINE = "MR-full-mAP", "MR-full-mIoU", "mAP"

# (column, metric key, scale): scale 100 turns the YouTube / TVSum fractions into the paper's percentages.
_MR_COLUMNS = (("R1@0.3", "MR-full-R1@0.3", 1), ("R1@0.5", "MR-full-R1@0.5", 1), ("R1@0.7", "MR-full-R1@0.7", 1),
               ("mIoU", "MR-full-mIoU", 1))
_QVH_COLUMNS = (("R1@0.5", "MR-full-R1@0.5", 1), ("R1@0.7", "MR-full-R1@0.7", 1), ("mAP@0.5", "MR-full-mAP@0.5", 1),
                ("mAP@0.75", "MR-full-mAP@0.75", 1), ("mAP", "MR-full-mAP", 1),
                ("HD mAP", "HL-min-VeryGood-mAP", 1), ("HIT@1", "HL-min-VeryGood-Hit1", 1))
_YOUTUBE_COLUMNS = tuple((c, f"mAP-{d}", 100) for c, d in (
    ("Dog", "dog"), ("Gym.", "gymnastics"), ("Par.", "parkour"), ("Ska.", "skating"), ("Ski.", "skiing"),
    ("Sur.", "surfing"))) + (("Avg.", "mAP", 100),)
_TVSUM_COLUMNS = tuple((d, f"mAP-{d}", 100) for d in ("VT", "VU", "GA", "MS", "PK", "PR", "FM", "BK", "BT", "DS")) + (
    ("Avg.", "mAP", 100),)

# The paper's R²-Tuning rows are from the paper (README: The six benchmarks). The demo / custom schedules are not in
# the paper: the default demo (70 videos) reaches val R1@0.5 ~88 in its 12 epochs, in under 2 minutes of training
# on 2 CPU cores with the tiny CLIP (tests/test_demo.py holds it to >= 60); custom sets (often small) get the same
# recipe with more epochs. Their dropout (0.1) is sized for small
# sets that must train in minutes on a CPU: raise it with --dropout for a large custom set.
_RECIPES = (
    Recipe(
        DatasetInfo("qvhighlights", 0.5, 2.0, ("train", "val", "test"), "train", "val", _QVH_HEADLINE,
                    "qvhighlights", "qvhighlights",
                    (("train", "highlight_train_release.jsonl"), ("val", "highlight_val_release.jsonl"),
                     ("test", "highlight_test_with_gt.jsonl"))),
        Schedule(128, 30, 5e-4, 20, 500, passes=4), trained_frames=75,  # 150 s at 0.5 fps
        columns=_QVH_COLUMNS, dropout=0.5, sal_weight=0.1, unit=2.0, nms="hard",
        paper={"test": ("paper Table 1 (test)", {
                   "R1@0.5": 68.03, "R1@0.7": 49.35, "mAP@0.5": 69.04, "mAP@0.75": 47.56, "mAP": 46.17,
                   "HD mAP": 40.75, "HIT@1": 64.20}),
               "val": ("paper Tables 5/9 (val)", {
                   "R1@0.5": 68.71, "R1@0.7": 52.06, "mAP": 47.59, "HD mAP": 40.59, "HIT@1": 64.32})}),
    Recipe(
        DatasetInfo("charades", 1.0, 1.0, ("train", "test"), "train", "test", _MR_HEADLINE, "windows", "charades_sta",
                    (("train", "charades_sta_train_tvr_format.jsonl"), ("test", "charades_sta_test_tvr_format.jsonl"))),
        Schedule(32, 50, 2.5e-4, 30, 500), trained_frames=194,  # 194.3 s at 1 fps
        columns=_MR_COLUMNS, dropout=0.35, sal_weight=0.01, unit=0.1, nms="soft",
        paper={"test": ("paper Table 2", {"R1@0.3": 70.91, "R1@0.5": 59.78, "R1@0.7": 37.02, "mIoU": 50.86})}),
    Recipe(
        DatasetInfo("tacos", 0.5, 2.0, ("train", "val", "test"), "train", "test", _MR_HEADLINE, "windows", "tacos",
                    (("train", "train.jsonl"), ("val", "val.jsonl"), ("test", "test.jsonl")), video_suffix="-cam-002"),
        Schedule(32, 100, 2.5e-4, 50, 500), trained_frames=701,  # 1402 s at 0.5 fps
        columns=_MR_COLUMNS, dropout=0.5, sal_weight=0.05, unit=None, nms="soft",
        paper={"test": ("paper Table 2", {"R1@0.3": 49.71, "R1@0.5": 38.72, "R1@0.7": 25.12, "mIoU": 35.92})}),
    Recipe(
        DatasetInfo("ego4d", 0.5, 2.0, ("train", "val"), "train", "val", _MR_HEADLINE, "windows", "ego4d_nlq",
                    (("train", "nlq_train.jsonl"), ("val", "nlq_val.jsonl"))),
        Schedule(32, 30, 2.5e-4, 20, 500), trained_frames=600,  # 1200 s at 0.5 fps
        columns=_MR_COLUMNS, dropout=0.3, sal_weight=0.1, unit=None, nms="soft",
        paper={"val": ("paper Table 2", {"R1@0.3": 7.20, "R1@0.5": 4.49, "R1@0.7": 2.12, "mIoU": 4.94})}),
    Recipe(
        DatasetInfo("youtube", None, None, ("train", "val"), "train", "val", _HL_HEADLINE, "youtube",
                    "youtube_highlights", (("train", "youtube_anno.json"), ("val", "youtube_anno.json")),
                    domains=YOUTUBE_DOMAINS),
        Schedule(4, 200, 5e-4, None, 50), trained_frames=741,  # clips of the longest training video
        columns=_YOUTUBE_COLUMNS, sal_weight=0.1,
        paper={"val": ("paper Table 3", {"Dog": 75.6, "Gym.": 73.5, "Par.": 73.0, "Ska.": 74.6, "Ski.": 74.8,
                                         "Sur.": 84.8, "Avg.": 76.1})}),
    Recipe(
        DatasetInfo("tvsum", 0.5, 2.0, ("train", "val"), "train", "val", _HL_HEADLINE, "tvsum", "tvsum",
                    (("train", "tvsum_train_sfc.json"), ("val", "tvsum_train_sfc.json")), domains=TVSUM_DOMAINS),
        Schedule(4, 500, 5e-4, None, 50), trained_frames=223,  # 446 s at 0.5 fps
        columns=_TVSUM_COLUMNS, sal_weight=0.1,
        paper={"val": ("paper Table 4", {"VT": 85.0, "VU": 85.9, "GA": 91.0, "MS": 81.7, "PK": 88.8, "PR": 87.4,
                                         "FM": 78.1, "BK": 89.2, "BT": 90.3, "DS": 74.7, "Avg.": 85.2})}),
    Recipe(
        DatasetInfo("demo", 0.5, 2.0, ("train", "val"), "train", "val", _QVH_HEADLINE, "qvhighlights", "",
                    (("train", "train.jsonl"), ("val", "val.jsonl"))),
        Schedule(16, 12, 1e-3, 10, 100), trained_frames=75,  # as QVHighlights
        columns=_QVH_COLUMNS, dropout=0.1, sal_weight=0.1, unit=2.0, nms="hard"),
    Recipe(
        DatasetInfo("custom", 0.5, 2.0, (), "train", "val", _QVH_HEADLINE, "qvhighlights", "", ()),
        Schedule(16, 30, 1e-3, 20, 100), trained_frames=75,  # as QVHighlights
        columns=_QVH_COLUMNS, dropout=0.1, sal_weight=0.1, unit=2.0, nms="hard", cap_warmup=True),
)
_BY_NAME = {r.name: r for r in _RECIPES}
DATASETS: tuple[str, ...] = tuple(_BY_NAME)  # the six benchmarks, then demo and custom


def recipe(name: str) -> Recipe:
    """The recipe of dataset `name` (any case); ConfigError listing the valid names when there is none."""
    found = _BY_NAME.get(name.lower()) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"dataset {name!r} not supported; available datasets = {', '.join(DATASETS)}")
    return found


def _shown(v) -> str:
    """A recipe value as a help text writes it: None -> none, 0.0005 -> 5e-4, 0.35 -> 0.35."""
    if v is None:
        return "none"
    if isinstance(v, float) and v and abs(v) < 0.01:
        mantissa, exponent = f"{v:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def by_dataset(value) -> str:
    """Each distinct `value(recipe)` with the datasets that have it, for help texts:
    by_dataset(lambda r: r.schedule.batch_size) -> '128 qvhighlights; 32 charades, tacos, ego4d; 4 youtube, ...'."""
    groups: dict[str, list[str]] = {}
    for name in DATASETS:
        groups.setdefault(_shown(value(_BY_NAME[name])), []).append(name)
    return "; ".join(f"{v} {', '.join(names)}" for v, names in groups.items())
