"""Stage 1 CLI: extract frozen-CLIP layer features of a dataset's videos and queries into an HDF5 cache.

    python extract/run.py --dataset demo --clip tiny
    python extract/run.py --dataset tacos --layers 9-12 --videos /data/tacos/videos
    python extract/run.py --dataset custom --videos DIR --annotations train.jsonl val.jsonl --out cache/mine.h5

Exit code: 0 when every video was extracted; 1 when some videos failed (they are counted in the closing summary
and listed in cache/<name>.parts/failures.jsonl, and a re-run retries them); 2 on a fatal error (bad arguments,
missing checkpoint, a cache made with other settings), reported as one line.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r2 import cache, datasets  # noqa: E402
from r2.demo import DEFAULT_VIDEOS  # noqa: E402
from r2.errors import R2Error  # noqa: E402
from r2.extract import ExtractConfig, extract  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=datasets.DATASETS)
    p.add_argument("--clip", default="ViT-B/32",
                   help="OpenAI model name (downloaded to ~/.cache/clip), a local checkpoint file, or 'tiny' "
                        "(random offline test model)")
    p.add_argument("--layers", default="9-12", help="CLIP blocks to tap, 1-based: 9-12, 12, 4,8,12")
    p.add_argument("--videos", type=Path, help="folder with the dataset's video files")
    p.add_argument("--annotations", type=Path, nargs="+", default=[],
                   help="annotation files (custom: QVHighlights-format jsonl, split = file stem; demo: its folder)")
    p.add_argument("--data-root", type=Path, help="benchmarks' annotation root (default: $R2_DATA)")
    p.add_argument("--fps", type=float, help="custom dataset: frames sampled per second (default 0.5)")
    p.add_argument("--out", type=Path, help="cache entry file (default: cache/<dataset>.h5)")
    p.add_argument("--shard", default="0/1", help="I/N: extract the I-th of N disjoint parts (one per process)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP forward (>= 1)")
    p.add_argument("--device", default="auto", help="where CLIP runs: auto (a GPU if present), cpu, cuda, cuda:N")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for CLIP: faster only on GPUs and CPUs with bf16 units (AVX-512 BF16 / "
                        "AMX); on an AVX2-only CPU it is about 3x slower (README: Benchmarks). Changes the "
                        "fingerprint, so it needs its own cache")
    p.add_argument("--demo-videos", type=int, default=DEFAULT_VIDEOS,
                   help=f"number of generated demo videos (>= 1; default {DEFAULT_VIDEOS})")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(args) -> int:
    try:
        cfg = ExtractConfig(
            dataset=args.dataset, out=args.out or Path("cache") / f"{args.dataset}.h5", clip=args.clip,
            layers=args.layers, videos=args.videos, annotations=args.annotations, data_root=args.data_root,
            fps=args.fps, shard=cache.parse_shard(args.shard), batch_size=args.batch_size, device=args.device,
            bf16=args.bf16, demo_videos=args.demo_videos, progress=not args.no_progress,
        )
        summary = extract(cfg)
    except (R2Error, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cfg.out}: {summary.line()}")
    if summary.failed:
        print(f"failed videos are listed in {cache.parts_dir(cfg.out) / 'failures.jsonl'}; a re-run retries them")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
