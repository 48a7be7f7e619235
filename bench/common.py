"""What both benchmark scripts share: size defaults and the machine description printed with each table."""
import argparse
import os
from pathlib import Path

import torch


def fill_defaults(args: argparse.Namespace, full: dict, quick: dict) -> argparse.Namespace:
    """A copy of args with the size flags left unset taken from the full-run or --quick defaults."""
    args = argparse.Namespace(**vars(args))
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def machine() -> str:
    """CPU model, usable cores, torch threads, GPU and the load average (1, 5, 15 min) now."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{model}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads{gpu}, "
            f"load average {load}")
