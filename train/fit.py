"""Stage 2 CLI: train R²-Tuning on a feature cache; every TrainConfig field is a flag.

    python train/fit.py --cache cache/demo.h5
    python train/fit.py --cache cache/tacos.h5 --lr 1e-4 --epochs 5 --out runs/tacos-lr1e-4
    python train/fit.py --cache cache/tvsum.h5 --domain BK
    python train/fit.py --resume runs/tacos-lr1e-4 --cache cache/tacos.h5 [--epochs 150]

Every value is checked before any work (a bad one is one "error: ..." line naming the flag). A resumed run keeps its
own settings and cache: only --epochs (to extend it), --device, --precision, --workers, --(no-)preload and
--(no-)progress may differ. Once a new run has a best.pt, <runs>/<cache name>-latest links to it.
"""
import argparse
import dataclasses
import sys
import types
import typing
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2.errors import R2Error, one_line_warning  # noqa: E402
from r2.train import TrainConfig, Trainer  # noqa: E402


def _field_type(f: dataclasses.Field):
    """The scalar type of a TrainConfig field (`int | None` -> int)."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f)
        default = None if f.default is dataclasses.MISSING else f.default
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=kind, default=default, required=f.name == "cache",
                           help=f"default: {default if default is not None else 'the dataset default'}")
    return p


def main(args) -> int:
    """Exit code 0 when the run finished; 2 for a setting or file it cannot use (one "error: ..." line, before
    any training). Warnings print as one "warning: ..." line each."""
    warnings.showwarning = one_line_warning
    try:
        trainer = Trainer(TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}))
    except (R2Error, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = trainer.fit()
    if trainer.rank == 0:
        print(f"best {best['metric']} = {best['value']:.2f} at epoch {best['epoch']} | run folder {trainer.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
