"""Hyperparameter sweep on one cache: every --grid combination (or --samples of them) trained with the cache loaded
once, one run folder per trial, a table ranked by the dataset's headline metric (results.csv / results.md).

    python train/sweep.py --cache cache/demo.h5 --grid lr=2.5e-4,5e-4 --grid dropout=0.3,0.5
    python train/sweep.py --cache cache/tacos.h5 --grid lr=1e-4,2.5e-4,5e-4 --grid dropout=0.3,0.5 --samples 4
    python train/sweep.py --cache cache/demo.h5 --grid seed=1,2,3 --epochs 10 --trials-parallel 3

Any TrainConfig field (the flags of train/fit.py) can be a --grid key; given as a plain flag it is fixed for every
trial. The table is rewritten after each trial; an interrupted sweep (Ctrl-C, a killed process: its trial processes
die with it) resumes with the same command and --out, keeping the finished trials. Exit code: 0 when every trial
finished, 1 when some failed (listed in the table), 2 on a bad argument, 130 when interrupted.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2.errors import R2Error  # noqa: E402
from r2.sweep import RESERVED, SweepConfig, field_type, parse_grid, run_sweep  # noqa: E402
from r2.train import TrainConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="the cache entry file every trial trains on")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a TrainConfig field and its values; repeat for more keys (all combinations are run)")
    p.add_argument("--samples", type=int, help="run this many combinations drawn at random (default: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --samples draw")
    p.add_argument("--trials-parallel", type=int, default=1,
                   help="trials run at once, each with its share of the torch threads (default 1)")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True,
                   help="read the cache's features into memory once for all trials (--no-preload: share the file)")
    p.add_argument("--out", help="sweep folder (default runs/sweep-<cache name>-<time>)")
    fixed = p.add_argument_group("fixed for every trial (train/fit.py's flags; default: the dataset default)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESERVED:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(f.name)
        if kind is bool:
            fixed.add_argument(flag, dest=f"fixed_{f.name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            fixed.add_argument(flag, dest=f"fixed_{f.name}", type=kind, default=None, metavar=f.name.upper())
    return p


def main(args) -> int:
    fixed = {k[len("fixed_"):]: v for k, v in vars(args).items() if k.startswith("fixed_") and v is not None}
    try:
        grid = parse_grid(args.grid)
        cfg = SweepConfig(cache=args.cache, grid={k: [v for _, v in values] for k, values in grid.items()},
                          fixed=fixed, samples=args.samples, sample_seed=args.sample_seed,
                          trials_parallel=args.trials_parallel, preload=args.preload, out=args.out)
        result = run_sweep(cfg, grid_texts={k: [t for t, _ in values] for k, values in grid.items()})
    except (R2Error, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the finished trials are ranked in the sweep folder's results.csv; run the same command "
              "(with its --out) to resume", file=sys.stderr)
        return 130
    print((result.out / "results.md").read_text())
    print(f"results: {result.out / 'results.csv'}" + (f" | {result.failed} trials failed" if result.failed else ""))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
