"""Hyperparameter sweep on one cache: every --grid combination trained with the cache loaded once.

The same command as `r2-sweep`; its flags, help and exit codes are in r2/cli.py (`r2-sweep --help`).
"""
import sys

from r2.cli import sweep_main as main, sweep_parser as get_args_parser

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
