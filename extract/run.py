"""Stage 1: extract frozen-CLIP layer features of a dataset's videos and queries into an HDF5 cache.

The same command as `r2-extract`; its flags, help and exit codes are in r2/cli.py (`r2-extract --help`).
"""
import sys

from r2.cli import extract_main as main, extract_parser as get_args_parser

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
