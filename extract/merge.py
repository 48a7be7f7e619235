"""After a sharded extraction: verify every shard, report what is missing, (re)write the cache's entry file.

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
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2 import datasets  # noqa: E402
from r2.errors import R2Error  # noqa: E402
from r2.extract import DEMO_DIR, ExtractConfig, load_annotations  # noqa: E402
from r2.verify import merge  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the cache entry file the shards were extracted to")
    p.add_argument("--dataset", choices=datasets.DATASETS, help="rebuild the entry with this dataset's annotations")
    p.add_argument("--annotations", type=Path, nargs="+", default=[],
                   help="as for extract/run.py (custom: jsonl files, split = file stem; demo: its folder)")
    p.add_argument("--data-root", type=Path, help="benchmarks' annotation root (default: $R2_DATA)")
    p.add_argument("--fps", type=float, help="custom dataset: frames sampled per second (default 0.5)")
    p.add_argument("--no-values", action="store_true", help="skip reading every feature to check it is finite")
    return p


def main(args) -> int:
    try:
        annotations = None
        if args.dataset:
            demo_root = [args.out.parent / DEMO_DIR] if args.dataset == "demo" and not args.annotations else []
            cfg = ExtractConfig(dataset=args.dataset, out=args.out, annotations=args.annotations or demo_root,
                                data_root=args.data_root, fps=args.fps, progress=False)
            annotations = load_annotations(cfg)
        report = merge(args.out, args.dataset, annotations, values=not args.no_values)
    except (R2Error, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
