"""Evaluate a checkpoint on a split of a cache: the predictions and <split>_metrics.json in a new folder.

The same command as `r2-evaluate`; its flags, help and exit codes are in r2/cli.py (`r2-evaluate --help`).
"""
import sys

from r2.cli import evaluate_main as main, evaluate_parser as get_args_parser

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
