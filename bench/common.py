"""What the benchmark scripts share: size defaults, the scratch folder and the machine description printed with
each table."""
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


def work_folder(given: str | Path | None, temporary: str) -> Path:
    """The scratch folder: --work (created; refused unless empty, since caches left there would be skipped, not
    re-made) or the run's temporary folder."""
    work = Path(given) if given else Path(temporary)
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty: caches left there would be skipped, not re-made; pass an "
                         f"empty or new folder")
    work.mkdir(parents=True, exist_ok=True)
    return work


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


def nominal_peak_gflops(threads: int, device: str = "cpu") -> tuple[float | None, str]:
    """fp32 peak of `threads` cores of this CPU: threads x FLOP/cycle (2 FMA pipes x vector width x 2) x clock.

    FLOP/cycle from /proc/cpuinfo's flags (avx512f 64, avx2 + fma 32, avx 16, else 8; two FMA pipes assumed, true
    of Zen 2-4 and Intel since Haswell), the clock from its `cpu MHz` (the nominal clock under a hypervisor; turbo
    would raise the real peak). (None, why) on a GPU or without /proc/cpuinfo."""
    if not device.startswith("cpu"):
        return None, "GPU: no CPU peak"
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None, "no /proc/cpuinfo"
    text = cpuinfo.read_text()
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    mhz = next((float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")), None)
    if mhz is None:
        return None, "no clock in /proc/cpuinfo"
    per_cycle, isa = ((64, "AVX-512") if "avx512f" in flags else (32, "AVX2+FMA") if {"avx2", "fma"} <= flags
                      else (16, "AVX") if "avx" in flags else (8, "SSE"))
    peak = threads * per_cycle * mhz / 1e3
    return peak, f"{threads} threads x {per_cycle} FLOP/cycle ({isa}, fp32) x {mhz / 1e3:.2f} GHz"
