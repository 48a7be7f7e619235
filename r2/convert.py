"""Convert checkpoints between the authors' nncore format and r2's, losslessly.

    python -m r2.convert r2_tuning_qvhighlights-ed516355.pth --out runs/qvh-official/best.pt
    python -m r2.convert official.pth --dataset tvsum --domain BK --out runs/tvsum-bk/best.pt
    python -m r2.convert runs/x/best.pt --to-official --out r2_tuning_x.pth

An official file becomes an r2 checkpoint (names mapped, config inferred from the weight shapes, the dataset from
--dataset or the zoo file name) that every r2 command reads; `--to-official` writes {'meta', 'state_dict'} with the
official names, order and the fixed buffer `loss._loss_sal.scale`, which the authors' `load_checkpoint` accepts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r2 import checkpoint
from r2.errors import ConfigError, check_new_file, command

__all__ = ["convert", "get_args_parser", "main"]


def convert(src: str | Path, out: str | Path, to_official: bool = False, dataset: str | None = None,
            domain: str | None = None) -> Path:
    """Read `src` (either format, or a zoo name) and write it to `out` in r2's format, or the official one; `out`
    must be a new file (a finished run's best.pt, or anything else there, is never replaced)."""
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise ConfigError(f"--out {out} is the input file: write the converted checkpoint elsewhere")
    check_new_file(out)
    ckpt = checkpoint.load_checkpoint(src, dataset)
    if to_official:
        obj = checkpoint.to_official(ckpt)
    else:
        obj = {**checkpoint.provenance(), **ckpt}
        if domain is not None:
            obj["config"] = {**obj["config"], "domain": domain}
    checkpoint.save(obj, out)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="an official .pth, an r2 best.pt/last.pt, or a zoo name (r2-tuning:NAME)")
    p.add_argument("--out", required=True, type=Path, help="the file to write")
    p.add_argument("--to-official", action="store_true", help="write the authors' nncore format (default: r2's)")
    p.add_argument("--dataset", help="an official file's dataset when its name does not say it")
    p.add_argument("--domain", help="YouTube Highlights / TVSum domain to record (default: from the zoo file name)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = convert(args.checkpoint, args.out, args.to_official, args.dataset, args.domain)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
