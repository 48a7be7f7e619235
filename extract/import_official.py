"""Import the authors' released CLIP features (clip_b32_vid_k4/, clip_b32_txt_k4/) into an r2 cache.

    python extract/import_official.py --dataset qvhighlights --features data/qvhighlights --out cache/qvhighlights.h5
    python extract/import_official.py --dataset tvsum --features data/tvsum --shard 0/4

The result is an ordinary r2 cache (verify, fit, evaluate and report all work on it) whose fingerprint says the
features are the authors' release, so the authors' checkpoints evaluate on it directly. Exit code: 0 when every
video and query was imported; 1 when some files were missing or malformed (listed in
cache/<name>.parts/failures.jsonl; a re-run retries them); 2 on a fatal error, reported as one line.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2 import cache  # noqa: E402
from r2.errors import R2Error  # noqa: E402
from r2.official_features import IMPORTABLE, ImportConfig, import_features  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=IMPORTABLE)
    p.add_argument("--features", required=True, type=Path,
                   help="folder holding the unpacked clip_b32_vid_k4/ and clip_b32_txt_k4/ folders")
    p.add_argument("--annotations", type=Path, nargs="+", default=[],
                   help="annotation files, one per split in the dataset's split order, only those splits are "
                        "imported (default: all the dataset's files under --data-root); custom: QVHighlights-format "
                        "jsonl, split = file stem")
    p.add_argument("--data-root", type=Path, help="benchmarks' annotation root (default: $R2_DATA)")
    p.add_argument("--out", type=Path, help="cache entry file (default: cache/<dataset>.h5)")
    p.add_argument("--shard", default="0/1", help="I/N: import the I-th of N disjoint parts (one per process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(args) -> int:
    try:
        cfg = ImportConfig(dataset=args.dataset, features=args.features,
                           out=args.out or Path("cache") / f"{args.dataset}.h5", annotations=args.annotations,
                           data_root=args.data_root, shard=cache.parse_shard(args.shard),
                           progress=not args.no_progress)
        summary = import_features(cfg)
    except (R2Error, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cfg.out}: {summary.line()}")
    failed = summary.failed + summary.failed_queries
    if failed:
        print(f"missing or malformed files are listed in {cache.parts_dir(cfg.out) / 'failures.jsonl'}; a re-run "
              f"retries them")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
