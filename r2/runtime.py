"""Where and how a run computes: the device, the autocast precision, the DDP process group, the seeds.

Shared by training (r2.train), evaluation and prediction (r2.predict), so that every stage picks its device and
precision by the same rules.
"""
from __future__ import annotations

import os
import random
import re
import shlex

import numpy as np
import torch

from r2.errors import ConfigError

__all__ = ["DEVICE", "DEVICE_ALLOWED", "pick_device", "pick_precision", "precision_name", "seed_everything",
           "start_distributed"]

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # the device names a --device flag takes
DEVICE_ALLOWED = "one of auto, cpu, cuda or cuda:N"


def start_distributed(device: str) -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) join the process group: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        gpu = pick_device(device).type == "cuda"
        torch.distributed.init_process_group("nccl" if gpu else "gloo")
    return torch.distributed.get_rank(), world


def pick_device(name: str) -> torch.device:
    """auto: this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU. A device this
    machine does not have is a ConfigError."""
    if not isinstance(name, str) or DEVICE.fullmatch(name) is None:
        raise ConfigError(f"--device {shlex.quote(str(name))}: must be {DEVICE_ALLOWED}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU on this machine (torch.cuda.is_available() is False); use "
                          f"--device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 .. "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def precision_name(name: str, device: torch.device) -> str:
    """auto -> bf16 on GPUs that support it, else fp16 on a GPU, fp32 on a CPU; other names as given."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision_name(name, device)]


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
