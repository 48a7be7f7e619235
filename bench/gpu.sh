#!/usr/bin/env bash
# Every GPU check of r2 in one run (< 8 min on one H100/H200-class GPU), printed as one markdown table:
#   - AMP: one training step's loss terms and gradients under bf16 and fp16 autocast (fp16 with the GradScaler)
#     against fp32 on the same weights, batch and random draws (tolerances in the table's notes);
#   - training steps (r2.engine.train_step: what train/fit.py runs) at the QVHighlights shape, fp32 / bf16 / fp16,
#     fast path and plain eager path: s/step, samples/s, peak GPU memory (torch.cuda.max_memory_allocated);
#   - samples/s from GPU-resident features: a synthetic cache's train split held on the GPU by r2.data.DeviceFeatures
#     (train/fit.py --preload cuda), batches built by indexing (no DataLoader, no host copy), bf16 steps;
#   - ViT-B/32 extraction: frames/s of r2.clip.encode_frames with random ViT-B/32 weights, fp32 and bf16;
#   - torch.compile(model) on CUDA: compile time, graph breaks (torch._dynamo.explain), s/step against eager.
# On a machine without a usable CUDA device it prints one line saying "no GPU" and exits 0.
#
#   bash bench/gpu.sh                 # the full run
#   bash bench/gpu.sh --cpu-smoke     # the same code on the CPU at toy sizes (seconds; for the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python - "$@" <<'PY'
import contextlib
import copy
import importlib.util
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))

smoke = "--cpu-smoke" in sys.argv[1:]
if not smoke and not torch.cuda.is_available():
    print(f"bench/gpu.sh: no GPU (torch {torch.__version__}, torch.cuda.is_available() is False"
          f"{'' if torch.backends.cuda.is_built() else ': this torch is built without CUDA'}); nothing measured")
    sys.exit(0)

from common import machine  # noqa: E402
from r2 import clip, engine  # noqa: E402
from r2.cache import Cache  # noqa: E402
from r2.data import DeviceFeatures, GlobalBatchSampler, GroundingDataset, to_device  # noqa: E402
from r2.losses import Criterion, loss_config_for  # noqa: E402
from r2.model import R2Model, config_for  # noqa: E402
from r2.model.block import torch_dropout  # noqa: E402

device = torch.device("cpu" if smoke else "cuda")
if smoke:
    torch.set_num_threads(1)
B, T, K, P, DV, DQ, L = (2, 6, 4, 5, 32, 24, 5) if smoke else (32, 75, 4, 50, 768, 512, 16)
POOL = 4 if smoke else 256  # GPU-resident samples: POOL / 2 videos x 2 queries (128 x 23 MB fp16 = 2.9 GB)
STEPS = 1 if smoke else 5
rows = []
started = time.perf_counter()


def row(measure, value, unit, note=""):
    rows.append((measure, value, unit, note))


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def batch_of(video, query, seed):
    """A training batch (B unpadded samples) around given fp16 features, with QVHighlights-like targets."""
    g = torch.Generator().manual_seed(seed)
    b, t = video.shape[0], video.shape[2]
    saliency = torch.zeros(b, t)
    windows, pos = [], []
    for i in range(b):
        s = int(torch.randint(0, max(1, t - 3), (1,), generator=g))
        e = min(t, s + 2 + int(torch.randint(0, max(1, t // 4), (1,), generator=g)))
        saliency[i, s:e] = torch.rand(e - s, generator=g) + 0.1
        windows.append(torch.tensor([[float(s), float(e)]], device=device))
        pos.append(s)
    return {"video": video, "query": query, "video_mask": torch.ones(b, t, dtype=torch.bool, device=device),
            "query_mask": torch.ones(b, query.shape[2], dtype=torch.bool, device=device),
            "saliency": saliency.to(device), "pos_frame": torch.tensor(pos, device=device), "windows": windows}


def random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, K, T, P, DV, generator=g).half().to(device)
    query = torch.randn(B, K, L, DQ, generator=g).half().to(device)
    return batch_of(video, query, seed)


def new_model(seed=0):
    torch.manual_seed(seed)
    return R2Model(config_for("qvhighlights", DV, DQ, P, K)).to(device).train()


def optimizer_for(model, amp):
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    return opt, scaler


crit = Criterion(loss_config_for("qvhighlights"))
AMPS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
if smoke:  # CPU autocast: bf16 only
    AMPS.pop("fp16")

# ---------------------------------------------------------------- AMP == fp32 within tolerance
base = new_model()
batch = random_batch(1)
grads, losses = {}, {}
for name, amp in AMPS.items():
    model = copy.deepcopy(base)
    opt, scaler = optimizer_for(model, amp)
    torch.manual_seed(5)
    with engine.autocast(device, amp):
        out = model(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])
    terms = crit(out, batch)
    scaler.scale(terms["loss"]).backward()
    scaler.unscale_(opt)
    losses[name] = {k: float(v.detach()) for k, v in terms.items()}
    grads[name] = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
for name in AMPS:
    if name == "fp32":
        continue
    worst = max(abs(losses[name][k] - v) / max(abs(v), 1e-6) for k, v in losses["fp32"].items())
    cos = float(torch.nn.functional.cosine_similarity(grads[name], grads["fp32"], dim=0))
    ok = worst <= 0.05 and cos >= 0.99
    row(f"AMP {name} vs fp32: worst loss term", worst, "rel. diff", "tolerance 0.05 (one step, same weights, batch, draws)")
    row(f"AMP {name} vs fp32: gradient cosine", cos, "cosine", f"tolerance >= 0.99; {'PASS' if ok else 'FAIL'}")

# ---------------------------------------------------------------- training steps: s/step, samples/s, peak memory
def time_steps(model, opt, scaler, amp, batches, fast=True, steps=STEPS):
    model.block.fast = fast
    ctx = contextlib.nullcontext() if fast else torch_dropout()
    with ctx:
        engine.train_step(model, crit, opt, scaler, batches[0], device, amp, 35.0)  # warm-up
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for i in range(steps):
            engine.train_step(model, crit, opt, scaler, batches[i % len(batches)], device, amp, 35.0)
        sync()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else float("nan")
    return seconds, peak


shape = f"B {B}, T {T}, K {K}, {P} tokens, Dv {DV}, Dq {DQ}, L {L}"
batches = [batch, random_batch(2)]
feature_mb = sum(b["video"].numel() * 2 + b["query"].numel() * 2 for b in batches) / 2 ** 20
for name, amp in AMPS.items():
    for fast in (True, False):
        model = copy.deepcopy(base)
        opt, scaler = optimizer_for(model, amp)
        seconds, peak = time_steps(model, opt, scaler, amp, batches, fast)
        path = "fast" if fast else "plain eager"
        row(f"step {name}, {path}: s/step", seconds, "s", f"{shape}; {STEPS} steps after 1 warm-up")
        row(f"step {name}, {path}: samples/s", B / seconds, "samples/s")
        row(f"step {name}, {path}: peak GPU memory", peak, "MB",
            f"includes the {feature_mb:.0f} MB of the two input batches")
        del model, opt, scaler
        if device.type == "cuda":
            torch.cuda.empty_cache()

# ---------------------------------------------------------------- GPU-resident features
# A synthetic qvhighlights cache (bench/train.py's write_cache) held on the device by r2.data.DeviceFeatures (what
# train/fit.py --preload cuda uses): batches built there by indexing, then decoded by to_device, then the step.
spec = importlib.util.spec_from_file_location("bench_train", Path("bench") / "train.py")
bench_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_train)
with tempfile.TemporaryDirectory() as tmp:
    entry = Path(tmp) / "resident.h5"
    dims = {"video_dim": DV, "query_dim": DQ, "tokens": P, "layers": [9, 10, 11, 12]}
    bench_train.write_cache(entry, dims, n_videos=POOL // 2, n_frames=T, queries_per_video=2)
    cache = Cache(entry)
    dataset = GroundingDataset(cache, "train", train=True)
    resident = DeviceFeatures(dataset, device)
    sampler = GlobalBatchSampler(len(dataset), B, seed=0)
    amp = torch.bfloat16
    model = copy.deepcopy(base)
    opt, scaler = optimizer_for(model, amp)
    model.block.fast = True
    batches = resident.batches(itertools.cycle(sampler))
    engine.train_step(model, crit, opt, scaler, to_device(next(batches), device), device, amp, 35.0)  # warm-up
    sync()
    start = time.perf_counter()
    n = 0
    for _ in range(STEPS * 2):
        b = to_device(next(batches), device)
        engine.train_step(model, crit, opt, scaler, b, device, amp, 35.0)
        n += b["video"].shape[0]
    sync()
    row("GPU-resident features, bf16 fast: samples/s", n / (time.perf_counter() - start), "samples/s",
        f"r2.data.DeviceFeatures: {len(dataset)} samples of {POOL // 2} videos resident "
        f"({resident.nbytes / 2 ** 30:.2f} GiB fp16), batches by indexing, no DataLoader")
    del resident, model, opt, batches
    cache.close()
if device.type == "cuda":
    torch.cuda.empty_cache()

# ---------------------------------------------------------------- ViT-B/32 extraction with random weights
with tempfile.TemporaryDirectory() as tmp:
    spec = "tiny" if smoke else str(clip.write_vit_b32_checkpoint(Path(tmp) / "ViT-B-32-random.pt"))
    encoder = clip.load_clip(spec, device)
    n_frames = 8 if smoke else 1024
    frames = np.random.default_rng(0).integers(0, 256, (n_frames, encoder.image_size, encoder.image_size, 3),
                                               dtype=np.uint8)
    for bf16 in (False, True):
        clip.encode_frames(encoder, frames[:64], [9, 10, 11, 12], bf16=bf16)  # warm-up
        sync()
        start = time.perf_counter()
        clip.encode_frames(encoder, frames, [9, 10, 11, 12], batch_size=256, bf16=bf16)
        sync()
        row(f"extraction {'ViT-B/32' if not smoke else 'tiny'} {'bf16' if bf16 else 'fp32'}: frames/s",
            n_frames / (time.perf_counter() - start), "frames/s",
            f"r2.clip.encode_frames, random weights, {n_frames} frames, taps 9-12, batch 256, incl. copy to host")
    del encoder

# ---------------------------------------------------------------- torch.compile on CUDA
if not smoke:
    model = copy.deepcopy(base)
    opt, scaler = optimizer_for(model, torch.bfloat16)
    try:
        explain = torch._dynamo.explain(model)(batch["video"], batch["video_mask"], batch["query"], batch["query_mask"])
        row("torch.compile: graph breaks", explain.graph_break_count, "count",
            "; ".join(sorted({str(r.reason)[:60] for r in explain.break_reasons}))[:300])
        torch._dynamo.reset()
        compiled = torch.compile(model)
        start = time.perf_counter()
        engine.train_step(compiled, crit, opt, scaler, batch, device, torch.bfloat16, 35.0, params=model.parameters())
        sync()
        row("torch.compile: first step (compile)", time.perf_counter() - start, "s", "bf16")
        start = time.perf_counter()
        for i in range(STEPS):
            engine.train_step(compiled, crit, opt, scaler, batches[i % 2], device, torch.bfloat16, 35.0,
                              params=model.parameters())
        sync()
        row("torch.compile: bf16 s/step", (time.perf_counter() - start) / STEPS, "s",
            "compiled code traces the plain path; compare with 'step bf16, fast: s/step'")
    except Exception as error:  # a compile failure is a finding, not a crash of the whole check
        row("torch.compile: failed", 0.0, "-", f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")

title = f"bench/gpu.sh{' --cpu-smoke' if smoke else ''} on {machine()}, torch {torch.__version__}"
if device.type == "cuda":
    title += f", CUDA {torch.version.cuda}"
print(f"### {title} ({time.perf_counter() - started:.0f} s)\n")
print("| measure | value | unit | note |\n|---|---|---|---|")
for measure, value, unit, note in rows:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"| {measure} | {text} | {unit} | {str(note).replace('|', '/')} |")
PY
