"""Import the authors' released CLIP features (clip_b32_vid_k4/, clip_b32_txt_k4/) into an r2 cache.

The same command as `r2-import-official`; its flags, help and exit codes are in r2/cli.py (`r2-import-official --help`).
"""
import sys

from r2.cli import import_main as main, import_parser as get_args_parser

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
