"""Evaluate a checkpoint on a split of a cache: writes the predictions and <split>_metrics.json to a new folder.

    python train/evaluate.py --checkpoint runs/demo-latest --cache cache/demo.h5 --split val
    python train/evaluate.py --checkpoint runs/demo-x/best.pt --cache cache/demo.h5 --split val
    python train/evaluate.py --checkpoint r2_tuning_qvhighlights-ed516355.pth --cache cache/qvhighlights.h5
    python train/evaluate.py --checkpoint r2-tuning:qvhighlights --cache cache/qvhighlights.h5

The checkpoint is r2's own (best.pt / last.pt, or a run folder: its best.pt; runs/<cache name>-latest links the
newest run of a cache), one of the authors' nncore files (.pth), or a zoo name
(r2-tuning:qvhighlights, r2-tuning:tvsum_bk, ...: downloaded once into ~/.cache/r2/zoo and checked).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2.errors import R2Error  # noqa: E402
from r2.train import evaluate_checkpoint  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="an r2 run folder (its best.pt, e.g. runs/demo-latest), best.pt/last.pt, an official "
                        "R²-Tuning .pth, or a zoo name (r2-tuning:NAME)")
    p.add_argument("--cache", required=True, type=Path, help="the cache entry file (cache/<name>.h5)")
    p.add_argument("--split", help="split to evaluate (default: the run's evaluation split, else the dataset's)")
    p.add_argument("--out", type=Path,
                   help="output folder (default: a new runs/eval-<checkpoint>-<cache>-<split>-<time>)")
    p.add_argument("--dataset", help="an official checkpoint's dataset when its file name does not say it "
                                     "(r2_tuning_<dataset>[_<domain>]-<sha>.pth)")
    p.add_argument("--domain", help="YouTube Highlights / TVSum domain (default: the checkpoint's)")
    p.add_argument("--allow-feature-source", action="store_true",
                   help="use a cache whose features were made another way (e.g. r2-extracted ViT-B/32 features "
                        "for a checkpoint trained on the authors' released ones): same CLIP, layers and fps only")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default: 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    return p


def main(args) -> int:
    if args.batch_size < 1:
        print(f"error: --batch-size {args.batch_size}: must be >= 1", file=sys.stderr)
        return 2
    try:
        scores, out = evaluate_checkpoint(args.checkpoint, args.cache, args.split, args.out, args.batch_size,
                                          args.device, args.domain, args.dataset, args.allow_feature_source)
    except (R2Error, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    print(f"predictions and metrics written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
