"""Stage 2: train R²-Tuning on a feature cache; every TrainConfig field is a flag.

The same command as `r2-fit`; its flags, help and exit codes are in r2/cli.py (`r2-fit --help`).
"""
import sys

from r2.cli import fit_main as main, fit_parser as get_args_parser

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
