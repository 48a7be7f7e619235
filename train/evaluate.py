"""Evaluate a trained checkpoint on a split of a cache: writes the predictions and <split>_metrics.json.

    python train/evaluate.py --checkpoint runs/demo-x/best.pt --cache cache/demo.h5 --split val
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2.cache import CacheError  # noqa: E402
from r2.train import evaluate_checkpoint  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--cache", required=True, type=Path)
    p.add_argument("--split", required=True)
    p.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--domain", help="YouTube Highlights / TVSum domain (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    return p


def main(args) -> int:
    try:
        scores = evaluate_checkpoint(args.checkpoint, args.cache, args.split, args.out, args.batch_size,
                                     args.device, args.domain)
    except (CacheError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
