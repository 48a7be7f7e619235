"""python -m r2.predict: the command line of r2/predict/cli.py."""
import sys

from r2.predict.cli import run

if __name__ == "__main__":
    sys.exit(run())
