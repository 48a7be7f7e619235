"""After a sharded extraction: verify every shard, report what is missing, (re)write the cache's entry file.

The same command as `r2-merge`; its flags, help and exit codes are in r2/cli.py (`r2-merge --help`).
"""
import sys

from r2.cli import merge_main as main, merge_parser as get_args_parser

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
