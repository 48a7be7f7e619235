"""python -m r2.download NAME|all [NAME ...] [--root DIR] [--mirror URL]   (also `python -m r2.datasets download`)

Fetches the six benchmarks' annotation files from their public GitHub sources, pinned to the commit they were
checked at, into the layout `R2_DATA` / `--data-root` expect: DIR/<folder>/<file> (see `r2.datasets`). Every file is
checked against the SHA-256 shipped here (`r2.fetch.fetch`: a download lands under a temporary name and is renamed
into place only once verified; a file already there with the right checksum is kept, one with another checksum is
an error, never overwritten). NAME: qvhighlights, charades, tacos, ego4d, youtube, tvsum, or all. --root defaults
to $R2_DATA. --mirror URL fetches from a server with the same `<owner>/<repo>/<commit>/<path>` layout instead of
GitHub's raw file host. The videos are not included: the README's table says where each benchmark's videos are.

Exit code: 0 every file in place; 1 some files failed (each named on one line, the others are fetched);
2 a bad argument.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from r2.errors import R2Error, command
from r2.recipes import DATASETS, recipe
from r2.fetch import fetch

__all__ = ["BENCHMARKS", "FILES", "RAW_HOST", "SOURCES", "AnnotationFile", "DownloadError", "download",
           "get_args_parser", "main", "url_of"]

RAW_HOST = "https://raw.githubusercontent.com"
# Repositories the files come from, at the commit they were checked at (the SHA-256s below are of those files).
SOURCES = {
    "moment_detr": ("jayleicn/moment_detr", "b7e553ac3b0c898ee6b85e03ee507c064eab89ca"),
    "cgdetr": ("wjun0830/CGDETR", "212b2e49a0893512930d63b9294a8c066347e606"),
}
BENCHMARKS = tuple(n for n in DATASETS if recipe(n).info.folder)  # the six with files under the data root


class DownloadError(R2Error):
    """An annotation file that could not be fetched or does not match its checksum."""


@dataclass(frozen=True)
class AnnotationFile:
    dataset: str  # r2's dataset name
    path: str  # where it goes under the root: <r2.datasets folder>/<file>
    source: str  # a key of SOURCES
    source_path: str  # its path in that repository
    sha256: str


FILES = (
    AnnotationFile("qvhighlights", "qvhighlights/highlight_train_release.jsonl", "moment_detr",
                   "data/highlight_train_release.jsonl",
                   "fd28404187468f57cf99242be2963127dc9b4aef26c7de3cb9469569801f2625"),
    AnnotationFile("qvhighlights", "qvhighlights/highlight_val_release.jsonl", "moment_detr",
                   "data/highlight_val_release.jsonl",
                   "f668a1eaea156ec5315e14718999cea043a8cf948d3cafbd8e8d655318c3cd02"),
    AnnotationFile("qvhighlights", "qvhighlights/highlight_test_with_gt.jsonl", "moment_detr",
                   "data/highlight_test_with_gt.jsonl",
                   "bd50ec6bb5dd3f72571126ba5fdc7418efdd9219a9487984e483a02e2ce5d493"),
    AnnotationFile("charades", "charades_sta/charades_sta_train_tvr_format.jsonl", "cgdetr",
                   "data/charades_sta/charades_sta_train_tvr_format.jsonl",
                   "bcb0deddbb552354323a26dd39d3d9f2fe6d9b70fd9e51697344317364962442"),
    AnnotationFile("charades", "charades_sta/charades_sta_test_tvr_format.jsonl", "cgdetr",
                   "data/charades_sta/charades_sta_test_tvr_format.jsonl",
                   "13d6e9152794d87bb501a827edcbe69e5c0428f0af60e926e6b87e4f452ad5b2"),
    AnnotationFile("tacos", "tacos/train.jsonl", "cgdetr", "data/tacos/train.jsonl",
                   "d5c931511093d0e4a4a7f5b6592420ac1c33e2a824eb3024408f538593959e7f"),
    AnnotationFile("tacos", "tacos/val.jsonl", "cgdetr", "data/tacos/val.jsonl",
                   "1f75348f28e3dcf1e4941eb3477cf7c7b6d587ca21c060d38a35b25029090107"),
    AnnotationFile("tacos", "tacos/test.jsonl", "cgdetr", "data/tacos/test.jsonl",
                   "07e29508bfc2d512f1ec2f7b70b289ab094dd8ed8f39403fc42be14be62bb675"),
    AnnotationFile("ego4d", "ego4d_nlq/nlq_train.jsonl", "cgdetr", "data/nlq/nlq_train.jsonl",
                   "9339df74296e3b7ebea18db8a2fc1f455f18c97aa2356ee6c63550d0602fcd15"),
    AnnotationFile("ego4d", "ego4d_nlq/nlq_val.jsonl", "cgdetr", "data/nlq/nlq_val.jsonl",
                   "9bac6bd155bfdb44ccff6e3c9dc6aabf121ae4f9e61ece396726c1c2a14a6d63"),
    AnnotationFile("youtube", "youtube_highlights/youtube_anno.json", "cgdetr", "data/youtube_uni/youtube_anno.json",
                   "5331ec78d80900cd70745a426f7e02be027acbca378badcb0bff45fa05a138e5"),
    AnnotationFile("tvsum", "tvsum/tvsum_train_sfc.json", "cgdetr", "data/tvsum/tvsum_train_sfc.json",
                   "2afb1be629d1d44d8028291364606560976540a8a074d1f75dfbcecdffe97ed2"),
)


def url_of(file: AnnotationFile, mirror: str | None = None) -> str:
    repo, commit = SOURCES[file.source]
    return f"{(mirror or RAW_HOST).rstrip('/')}/{repo}/{commit}/{file.source_path}"


def _names(names: Sequence[str]) -> list[str]:
    """NAME arguments -> benchmark names in BENCHMARKS order ("all" is every one)."""
    unknown = [n for n in names if n != "all" and n not in BENCHMARKS]
    if unknown:
        raise DownloadError(f"unknown dataset {unknown[0]!r}: one of {', '.join(BENCHMARKS)}, or all")
    return [b for b in BENCHMARKS if b in names or "all" in names]


def download(names: Sequence[str], root: str | Path, mirror: str | None = None) -> tuple[list[Path], list[str]]:
    """Fetch the annotation files of `names` into `root`: (the files in place, one error line per file that is
    not). Files already there with the right checksum are not fetched again."""
    root = Path(root)
    done, errors = [], []
    for name in _names(names):
        fetched = 0
        files = [f for f in FILES if f.dataset == name]
        for file in files:
            target, repo = root / file.path, SOURCES[file.source][0]
            existed = target.is_file()
            try:
                done.append(fetch(url_of(file, mirror), target, file.sha256, what=f"{name} annotations {file.path}",
                                  alternative=f"copy {file.source_path} of github.com/{repo} to {target} by hand",
                                  error=DownloadError))
                fetched += not existed
            except DownloadError as err:
                errors.append(str(err))
        ok = sum(1 for f in files if (root / f.path) in done)
        print(f"{name}: {ok} of {len(files)} files in {root / files[0].path.split('/')[0]} ({fetched} downloaded)",
              file=sys.stderr)
    return done, errors


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.download", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="NAME", help=f"{' | '.join(BENCHMARKS)} | all")
    p.add_argument("--root", type=Path, help="the annotation root (default: $R2_DATA)")
    p.add_argument("--mirror", help="base URL of a server with the <owner>/<repo>/<commit>/<path> layout "
                   f"(default {RAW_HOST})")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    root = args.root or (Path(os.environ["R2_DATA"]) if os.environ.get("R2_DATA") else None)
    if root is None:
        raise DownloadError("no annotation root: pass --root DIR (or set env R2_DATA)")
    _, errors = download(args.names, root, args.mirror)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if not errors:
        print(f"annotations ready: point R2_DATA (or --data-root) at {root}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
