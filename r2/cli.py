"""r2's command lines: the error wrapper, the argparse flags built from a config dataclass, and the stage commands
(extract, merge, import-official, fit, evaluate, sweep) that the thin scripts extract/*.py and train/*.py and the
console scripts r2-extract, r2-fit, ... run.

Every command's `main(args) -> int` is wrapped by `r2.errors.command`: an `R2Error` becomes one "error: ..." line
and exit code 2, anything else keeps its traceback. Tests and scripts call the wrapped `main` directly.

`add_fields(parser, Config)` adds one flag per field of a dataclass, with the help text from the field's
`metadata={"help": ...}` and its real default ("default: ..."), or `metadata={"default": ...}` saying which
recipe value applies when the field's default is None. The same field gives the same flag in every command.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from r2.errors import command, field_type, flag, scalar_parser

__all__ = ["add_fields", "help_of", "shard"]


def help_of(f: dataclasses.Field, helps: dict[str, dict] | None = None) -> str:
    """'what the flag does (default: its default)' from the field's metadata (or `helps[f.name]`, metadata given by
    the command for a config it does not own); a field without help text is a bug."""
    meta = {**f.metadata, **(helps or {}).get(f.name, {})}
    if "help" not in meta:
        raise TypeError(f"field {f.name!r} has no metadata help text: add field(metadata={{'help': ...}})")
    if "default" in meta:
        default = meta["default"]
    elif f.default is not dataclasses.MISSING and f.default is not None:
        default = f.default
    else:
        return meta["help"]
    if isinstance(default, bool):
        default = "on" if default else "off"
    return f"{meta['help']} (default: {default})"


def add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: type, skip: tuple[str, ...] = (),
               dest_prefix: str = "", no_defaults: bool = False, required: tuple[str, ...] = (),
               helps: dict[str, dict] | None = None) -> None:
    """One flag per field of dataclass `config` (except `skip`): bools as --x / --no-x, the rest typed by the
    field's type. `no_defaults`: every flag defaults to None (a sweep's fixed values: absent means "not fixed");
    `dest_prefix` names the parsed attributes `<prefix><field>`; `required` fields must be given; `helps` gives
    metadata for fields that lack it."""
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        kind = field_type(config, f.name)
        meta = {**f.metadata, **(helps or {}).get(f.name, {})}
        default = None if no_defaults or f.default is dataclasses.MISSING else f.default
        kw = dict(dest=dest_prefix + f.name, default=default, help=help_of(f, helps))
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag(f.name), type=scalar_parser(config, f.name), required=f.name in required,
                                metavar=meta.get("metavar", f.name.upper()), **kw)


def shard(text: str) -> tuple[int, int]:
    """--shard I/N -> (I, N) by r2.cache.parse_shard (a ConfigError for a bad flag)."""
    from r2.cache import parse_shard  # here: the error wrapper itself needs neither h5py nor torch

    return parse_shard(text)


# ----------------------------------------------------------------------------------------------- the commands
# Each command is <name>_parser() + <name>_main(args) (tests and the thin scripts extract/*.py and train/*.py call
# them) and <name>() for its console script (pyproject.toml). The stage modules are imported inside the functions:
# every r2 module with a command line imports r2.cli, which must stay cheap.

EXTRACT_DOC = """Stage 1 CLI: extract frozen-CLIP layer features of a dataset's videos and queries into an HDF5 cache.

    python extract/run.py --dataset demo --clip tiny          (or: r2-extract --dataset demo --clip tiny)
    python extract/run.py --dataset tacos --layers 9-12 --videos /data/tacos/videos
    python extract/run.py --dataset custom --videos DIR --annotations train.jsonl val.jsonl --out cache/mine.h5

Exit code: 0 when every video was extracted; 1 when some videos failed (they are counted in the closing summary
and listed in cache/<name>.parts/failures.jsonl, and a re-run retries them); 2 on a fatal error (bad arguments,
missing checkpoint, a cache made with other settings), reported as one line.
"""

# ExtractConfig's flags (r2/extract.py is another stage's module: its fields' help texts are given here, and a
# field's own metadata, where it has some, is merged under these).
EXTRACT_HELPS = {
    "clip": {"help": "the CLIP: an OpenAI model name (downloaded to ~/.cache/clip), a local checkpoint file, or "
                     "'tiny' (a random offline test model)", "metavar": "NAME"},
    "layers": {"help": "CLIP blocks to tap, 1-based: 9-12, 12, 4,8,12", "metavar": "BLOCKS"},
    "videos": {"help": "folder with the dataset's video files", "default": "demo: the generated videos; the "
                       "others need it", "metavar": "DIR"},
    "data_root": {"help": "the benchmarks' annotation root", "default": "$R2_DATA", "metavar": "DIR"},
    "fps": {"help": "custom dataset: frames sampled per second", "default": "0.5, one frame per 2 s clip",
            "metavar": "X"},
    "batch_size": {"help": "frames per CLIP forward (>= 1)", "metavar": "N"},
    "device": {"help": "where CLIP runs: auto (a GPU if present), cpu, cuda, cuda:N"},
    "bf16": {"help": "bfloat16 autocast for CLIP: faster only on GPUs and CPUs with bf16 units (AVX-512 BF16 / "
                     "AMX); on an AVX2-only CPU it is about 3x slower (README: Benchmarks). Changes the fingerprint, "
                     "so it needs its own cache"},
    "progress": {"help": "show progress bars"},
}
_EXTRACT_OWN = ("dataset", "out", "annotations", "shard", "demo_videos")  # flags whose types need their own parsing


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def extract_parser() -> argparse.ArgumentParser:
    from r2 import datasets
    from r2.demo import DEFAULT_VIDEOS
    from r2.extract import ExtractConfig

    p = _parser("r2-extract", EXTRACT_DOC)
    p.add_argument("--dataset", required=True, choices=datasets.DATASETS, help="the dataset to extract")
    p.add_argument("--out", type=Path, metavar="FILE", help="cache entry file (default: cache/<dataset>.h5)")
    p.add_argument("--annotations", type=Path, nargs="+", default=[], metavar="FILE",
                   help="annotation files (custom: QVHighlights-format jsonl, split = file stem; demo: its folder) "
                        "(default: the dataset's files under --data-root; demo: generated)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="extract the I-th of N disjoint parts (one per process) (default: 0/1, everything)")
    p.add_argument("--demo-videos", type=int, default=DEFAULT_VIDEOS, metavar="N",
                   help=f"number of generated demo videos (>= 1) (default: {DEFAULT_VIDEOS})")
    add_fields(p, ExtractConfig, skip=_EXTRACT_OWN, helps=EXTRACT_HELPS)
    return p


@command
def extract_main(args) -> int:
    from r2 import cache
    from r2.extract import ExtractConfig, extract

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExtractConfig) if f.name not in _EXTRACT_OWN}
    cfg = ExtractConfig(dataset=args.dataset, out=args.out or Path("cache") / f"{args.dataset}.h5",
                        annotations=args.annotations, shard=shard(args.shard), demo_videos=args.demo_videos,
                        **given)
    summary = extract(cfg)
    print(f"{cfg.out}: {summary.line()}")
    if summary.failed:
        print(f"failed videos are listed in {cache.parts_dir(cfg.out) / 'failures.jsonl'}; a re-run retries them")
    return 1 if summary.failed else 0


MERGE_DOC = """After a sharded extraction: verify every shard, report what is missing, (re)write the cache's entry file.

    python extract/merge.py --out cache/qvhighlights.h5
    python extract/merge.py --out cache/mine.h5 --dataset custom --annotations train.jsonl val.jsonl

Readers glob the shards (cache/<name>.parts/shard-*.h5), so nothing is copied: with only --out the entry must exist
(every extractor writes it) and the shards are verified against its annotations; with --dataset (and the same
annotation flags as extract/run.py) the entry is rebuilt from the shards' fingerprint and those annotations, for
shards extracted on machines that did not share the cache folder and were copied together afterwards.

Exit code: 0 every shard complete and valid; 1 valid but incomplete (the report names each shard's missing and
failed videos and the --shard to re-run); 2 broken (segments from other settings, mixed shard counts, duplicates,
damaged or non-finite data) or bad arguments.
"""


def merge_parser() -> argparse.ArgumentParser:
    from r2 import datasets

    p = _parser("r2-merge", MERGE_DOC)
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the cache entry file the shards were extracted to")
    p.add_argument("--dataset", choices=datasets.DATASETS, help="rebuild the entry with this dataset's annotations")
    p.add_argument("--annotations", type=Path, nargs="+", default=[], metavar="FILE",
                   help="as for r2-extract (custom: jsonl files, split = file stem; demo: its folder)")
    p.add_argument("--data-root", type=Path, metavar="DIR", help="the benchmarks' annotation root (default: $R2_DATA)")
    p.add_argument("--fps", type=float, metavar="X",
                   help="custom dataset: frames sampled per second (default: 0.5, one frame per 2 s clip)")
    p.add_argument("--no-values", action="store_true", help="skip reading every feature to check it is finite")
    return p


@command
def merge_main(args) -> int:
    from r2.extract import DEMO_DIR, ExtractConfig, load_annotations
    from r2.verify import merge

    annotations = None
    if args.dataset:
        demo_root = [args.out.parent / DEMO_DIR] if args.dataset == "demo" and not args.annotations else []
        cfg = ExtractConfig(dataset=args.dataset, out=args.out, annotations=args.annotations or demo_root,
                            data_root=args.data_root, fps=args.fps, progress=False)
        annotations = load_annotations(cfg)
    report = merge(args.out, args.dataset, annotations, values=not args.no_values)
    print("\n".join(report.lines()))
    return report.exit_code


IMPORT_DOC = """Import the authors' released CLIP features (clip_b32_vid_k4/, clip_b32_txt_k4/) into an r2 cache.

    python extract/import_official.py --dataset qvhighlights --features data/qvhighlights --out cache/qvhighlights.h5
    python extract/import_official.py --dataset tvsum --features data/tvsum --shard 0/4

The result is an ordinary r2 cache (verify, fit, evaluate and report all work on it) whose fingerprint says the
features are the authors' release, so the authors' checkpoints evaluate on it directly. Exit code: 0 when every
video and query was imported; 1 when some files were missing or malformed (listed in
cache/<name>.parts/failures.jsonl; a re-run retries them); 2 on a fatal error, reported as one line.
"""


def import_parser() -> argparse.ArgumentParser:
    from r2.official_features import IMPORTABLE

    p = _parser("r2-import-official", IMPORT_DOC)
    p.add_argument("--dataset", required=True, choices=IMPORTABLE, help="the dataset the features belong to")
    p.add_argument("--features", required=True, type=Path, metavar="DIR",
                   help="folder holding the unpacked clip_b32_vid_k4/ and clip_b32_txt_k4/ folders")
    p.add_argument("--annotations", type=Path, nargs="+", default=[], metavar="FILE",
                   help="annotation files, one per split in the dataset's split order, only those splits are "
                        "imported (default: all the dataset's files under --data-root); custom: QVHighlights-format "
                        "jsonl, split = file stem")
    p.add_argument("--data-root", type=Path, metavar="DIR", help="the benchmarks' annotation root (default: $R2_DATA)")
    p.add_argument("--out", type=Path, metavar="FILE", help="cache entry file (default: cache/<dataset>.h5)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="import the I-th of N disjoint parts (one per process) (default: 0/1, everything)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars (default: on)")
    return p


@command
def import_main(args) -> int:
    from r2 import cache
    from r2.official_features import ImportConfig, import_features

    cfg = ImportConfig(dataset=args.dataset, features=args.features, out=args.out or Path("cache") / f"{args.dataset}.h5",
                       annotations=args.annotations, data_root=args.data_root, shard=shard(args.shard),
                       progress=args.progress)
    summary = import_features(cfg)
    print(f"{cfg.out}: {summary.line()}")
    failed = summary.failed + summary.failed_queries
    if failed:
        print(f"missing or malformed files are listed in {cache.parts_dir(cfg.out) / 'failures.jsonl'}; a re-run "
              f"retries them")
    return 1 if failed else 0


FIT_DOC = """Stage 2 CLI: train R²-Tuning on a feature cache; every TrainConfig field is a flag.

    python train/fit.py --cache cache/demo.h5        (or: r2-fit --cache cache/demo.h5)
    python train/fit.py --cache cache/tacos.h5 --lr 1e-4 --epochs 5 --out runs/tacos-lr1e-4
    python train/fit.py --cache cache/tvsum.h5 --domain BK
    python train/fit.py --resume runs/tacos-lr1e-4 --cache cache/tacos.h5 [--epochs 150]

Every value is checked before any work (a bad one is one "error: ..." line naming the flag). A resumed run keeps its
own settings and cache: only --epochs (to extend it), --device, --precision, --workers, --preload,
--(no-)progress and --(no-)compile may differ. Once a new run has a best.pt, <runs>/<cache name>-latest links to it.
Exit code 0 when the run finished; 2 for a setting or file it cannot use (before any training).
"""


def fit_parser() -> argparse.ArgumentParser:
    from r2.train_config import TrainConfig

    p = _parser("r2-fit", FIT_DOC)
    add_fields(p, TrainConfig, required=("cache",))
    return p


@command
def fit_main(args) -> int:
    from r2.train import Trainer
    from r2.train_config import TrainConfig

    trainer = Trainer(TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}))
    best = trainer.fit()
    if trainer.rank == 0:
        print(f"best {best['metric']} = {best['value']:.2f} at epoch {best['epoch']} | run folder {trainer.out}")
    return 0


EVALUATE_DOC = """Evaluate a checkpoint on a split of a cache: writes the predictions and <split>_metrics.json to a new folder.

    python train/evaluate.py --checkpoint runs/demo-latest --cache cache/demo.h5 --split val   (or: r2-evaluate ...)
    python train/evaluate.py --checkpoint runs/demo-x/best.pt --cache cache/demo.h5 --split val
    python train/evaluate.py --checkpoint r2_tuning_qvhighlights-ed516355.pth --cache cache/qvhighlights.h5
    python train/evaluate.py --checkpoint r2-tuning:qvhighlights --cache cache/qvhighlights.h5

The checkpoint is r2's own (best.pt / last.pt, or a run folder: its best.pt; runs/<cache name>-latest links the
newest run of a cache), one of the authors' nncore files (.pth), or a zoo name
(r2-tuning:qvhighlights, r2-tuning:tvsum_bk, ...: downloaded once into ~/.cache/r2/zoo and checked).
Exit code 0, or 2 with one "error: ..." line for a checkpoint, cache or flag it cannot use.
"""


def evaluate_parser() -> argparse.ArgumentParser:
    from r2.train_config import EvaluateConfig

    p = _parser("r2-evaluate", EVALUATE_DOC)
    add_fields(p, EvaluateConfig, required=("checkpoint", "cache"))
    return p


@command
def evaluate_main(args) -> int:
    import json

    from r2.train import evaluate_checkpoint
    from r2.train_config import EvaluateConfig

    cfg = EvaluateConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluateConfig)})
    scores, out = evaluate_checkpoint(cfg.checkpoint, cfg.cache, cfg.split, cfg.out, cfg.batch_size, cfg.device,
                                      cfg.domain, cfg.dataset, cfg.allow_feature_source)
    print(json.dumps(scores, indent=2))
    print(f"predictions and metrics written to {out}", file=sys.stderr)
    return 0


SWEEP_DOC = """Hyperparameter sweep on one cache: every --grid combination (or --samples of them) trained with the cache loaded
once, one run folder per trial, a table ranked by the dataset's headline metric (results.csv / results.md).

    python train/sweep.py --cache cache/demo.h5 --grid lr=2.5e-4,5e-4 --grid dropout=0.3,0.5      (or: r2-sweep ...)
    python train/sweep.py --cache cache/tacos.h5 --grid lr=1e-4,2.5e-4,5e-4 --grid dropout=0.3,0.5 --samples 4
    python train/sweep.py --cache cache/demo.h5 --grid seed=1,2,3 --epochs 10 --trials-parallel 3

Any TrainConfig field (the flags of train/fit.py) can be a --grid key; given as a plain flag it is fixed for every
trial. The table is rewritten after each trial; an interrupted sweep (Ctrl-C, a killed process: its trial processes
die with it) resumes with the same command and --out, keeping the finished trials. Exit code: 0 when every trial
finished, 1 when some failed (listed in the table), 2 on a bad argument, 130 when interrupted.
"""


def sweep_parser() -> argparse.ArgumentParser:
    from r2.sweep import RESERVED, SweepConfig
    from r2.train_config import TrainConfig

    p = _parser("r2-sweep", SWEEP_DOC)
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a TrainConfig field and its values; repeat for more keys (all combinations are run)")
    add_fields(p, SweepConfig, skip=("grid", "fixed"), required=("cache",))
    fixed = p.add_argument_group("fixed for every trial (r2-fit's flags, with the same defaults)")
    add_fields(fixed, TrainConfig, skip=RESERVED, dest_prefix="fixed_", no_defaults=True)
    return p


@command
def sweep_main(args) -> int:
    from r2.sweep import SweepConfig, parse_grid, run_sweep

    fixed = {k[len("fixed_"):]: v for k, v in vars(args).items() if k.startswith("fixed_") and v is not None}
    grid = parse_grid(args.grid)
    cfg = SweepConfig(cache=args.cache, grid={k: [v for _, v in values] for k, values in grid.items()},
                      fixed=fixed, samples=args.samples, sample_seed=args.sample_seed,
                      trials_parallel=args.trials_parallel, preload=args.preload, out=args.out)
    try:
        result = run_sweep(cfg, grid_texts={k: [t for t, _ in values] for k, values in grid.items()})
    except KeyboardInterrupt:
        print("interrupted: the finished trials are ranked in the sweep folder's results.csv; run the same command "
              "(with its --out) to resume", file=sys.stderr)
        return 130
    print((result.out / "results.md").read_text())
    print(f"results: {result.out / 'results.csv'}" + (f" | {result.failed} trials failed" if result.failed else ""))
    return 1 if result.failed else 0


# the console scripts (pyproject.toml [project.scripts])
def extract() -> int:
    return extract_main(extract_parser().parse_args())


def merge() -> int:
    return merge_main(merge_parser().parse_args())


def import_official() -> int:
    return import_main(import_parser().parse_args())


def fit() -> int:
    return fit_main(fit_parser().parse_args())


def evaluate() -> int:
    return evaluate_main(evaluate_parser().parse_args())


def sweep() -> int:
    return sweep_main(sweep_parser().parse_args())
