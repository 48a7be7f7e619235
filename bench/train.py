"""Stage-2 throughput on this machine: training steps/s on QVHighlights-shaped batches fed from the HDF5 cache
(streaming), from memory (preloaded) and from CLIP run in the loop, peak memory, and the sweep's time per trial.
Prints one markdown table; every ratio in it is computed from numbers measured in this run.

    python bench/train.py            # full run: ViT-B/32 dims (Dv 768, Dq 512, 50 tokens, K 4), T 75, batch 32
    python bench/train.py --quick    # tiny CLIP dims, 4 frames, batch 4: seconds, for the smoke test

What is measured (each mode in its own Python process, so its peak RSS is its own):
  (a) stream    GroundingDataset reading the cache + DataLoader(collate, --workers) -> R2Model (the qvhighlights
                config from `config_for`), Criterion, AdamW, grad clipping: the training step of r2/train.py.
                The cache is read once beforehand, so the page cache is warm.
  (b) preload   the same, with `Preloaded.whole(cache)` as the dataset's source.
  (d) clip      the same model step, its features made in the loop by a ViT-B/32-size CLIP (random weights) from
                random uint8 frames (T per video) and the batch's query texts. On CPU, only --clip-videos of the
                batch's videos are encoded per step and the video-encoding time is scaled to the whole batch
                (linear in frames); the note says so. Batches come from the preloaded features (for masks and
                targets); that fetch is not counted. Its warm-up steps run on the cached features.
  step          the training step alone on preloaded batches, r2's fast path (what train/fit.py runs) against
                the plain eager path (`R2Block.fast = False` with torch's bernoulli dropout: the op-by-op SPEC §3
                code r2 ran before the fast path), interleaved A B A B in one process: seconds per step (median),
                samples/s, the ratio (median of the per-pair ratios), achieved GFLOP/s (matmul/conv FLOPs of one
                forward + backward, counted by torch's FlopCounterMode) against the machine's nominal fp32 peak and
                a measured 2048³ sgemm, and a per-op table (torch.profiler, self CPU time) of one step of each.
                With --compile, torch.compile(model) (train/fit.py --compile) is a third variant in the same
                interleaving: its graph breaks (torch._dynamo.explain), its first step (the compile), s/step
                and its per-op table (compiled code traces the plain path: R2Block.fast applies to eager only).
                `--compile eager` (or aot_eager) compiles with that backend instead of inductor.
  sweep         `r2.sweep.bench_per_trial` on a small demo cache (tiny CLIP): seconds per trial in one sweep
                versus separate train/fit.py runs, and the sweep's overhead around its trials (% of a trial).

Every mode's step is `r2.engine.train_step`, the function r2/train.py's Trainer calls (autocast, GradScaler,
grad-norm clip 35, AdamW, LR scheduler). `--step-only` runs just the step comparison (the QVHighlights-shape
figure of the README); `--compile` adds torch.compile to it.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from common import fill_defaults, machine, nominal_peak_gflops, work_folder
from r2 import clip, engine
from r2.cache import Cache, ShardWriter, write_entry
from r2.data import GroundingDataset, Preloaded, collate, to_device
from r2.datasets import Record
from r2.extract import ExtractConfig, extract
from r2.losses import Criterion, loss_config_for
from r2.model import R2Model, config_for
from r2.model.block import torch_dropout
from r2.sweep import bench_per_trial, to_markdown
from r2.recipes import recipe
from r2.runtime import pick_device, pick_precision
from r2.train_config import TrainConfig

DATASET = "qvhighlights"
FPS = 0.5  # QVHighlights: one frame per 2 s clip
LAYERS = [9, 10, 11, 12]  # the paper's taps
MODES = {"stream": "(a) stream", "preload": "(b) preload", "clip": "(d) CLIP in the loop"}
STEP = "step"  # the fast-vs-plain comparison, its own process too
WORDS = ("a man woman child dog cat walks runs talks cooks sits near the in on of with red blue green car kitchen "
         "beach street park table camera shows people group small large old young bright dark").split()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny CLIP dims, few frames and samples: seconds, for the smoke test (numbers meaningless)")
    p.add_argument("--work", type=Path, help="scratch folder, empty or new (default: a temporary folder)")
    p.add_argument("--videos", type=int, help="videos in the synthetic cache (default 96)")
    p.add_argument("--queries-per-video", type=int, default=2, help="records per video (default 2)")
    p.add_argument("--frames", type=int, help="frames per video (default 75: QVHighlights' 150 s at 0.5 fps)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--steps", type=int, help="timed steps of (a) and (b) (default 2)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps first (allocations, worker start); (d) warms up on cached features")
    p.add_argument("--workers", type=int, help="DataLoader workers of (a) and (b) (default: as train/fit.py, "
                                               "0 on a CPU, 4 on a GPU)")
    p.add_argument("--clip-steps", type=int, help="timed steps of (d) (default 1)")
    p.add_argument("--clip-videos", type=int,
                   help="videos encoded per (d) step, the rest scaled (default: the whole batch on CUDA, 2 on CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch threads of every process (default: torch's, one per core; "
                                               "--quick: 1, which stays fast on a loaded machine)")
    p.add_argument("--sweep-demo-videos", type=int, help="demo videos of the sweep's cache (default 24)")
    p.add_argument("--no-sweep", action="store_true", help="leave out the sweep row")
    p.add_argument("--ab-rounds", type=int, help="interleaved fast/plain step pairs of the step comparison (default 3)")
    p.add_argument("--step-only", action="store_true", help="only the step comparison (no (a)/(b)/(d), no sweep)")
    p.add_argument("--ops", type=int, default=12, help="rows of each per-op table (default 12)")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="add torch.compile(model, backend=BACKEND) to the step comparison (its graph breaks, compile "
                        "time, s/step); BACKEND defaults to inductor, what train/fit.py --compile uses; eager or "
                        "aot_eager time dynamo's trace (and AOTAutograd's) without inductor's code generation")
    # internal: run one mode in this process and print its result as JSON
    p.add_argument("--mode", choices=list(MODES) + [STEP], help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--clip", help=argparse.SUPPRESS)
    return p


def resolve(args) -> argparse.Namespace:
    """Fill the size flags left unset from the full-run or --quick defaults."""
    full = {"videos": 96, "frames": 75, "batch_size": 32, "steps": 2, "clip_steps": 1, "sweep_demo_videos": 24,
            "ab_rounds": 3}
    quick = {"videos": 8, "frames": 4, "batch_size": 4, "steps": 2, "clip_steps": 1, "sweep_demo_videos": 5,
             "threads": 1, "ab_rounds": 2}
    return fill_defaults(args, full, quick)


def arch_dims(arch: clip.ClipArch) -> dict:
    """The cache `dims` a CLIP of this architecture writes with the paper's taps."""
    tokens = (arch.image_resolution // arch.vision_patch_size) ** 2 + 1  # [CLS] + patches
    return {"video_dim": arch.vision_width, "query_dim": arch.transformer_width, "tokens": tokens,
            "layers": LAYERS}


def query_texts(n: int, rng: random.Random) -> list[str]:
    """`n` distinct queries of 12-20 CLIP tokens (SOT + 10-18 one-token words + EOT), like QVHighlights'."""
    texts: set[str] = set()
    while len(texts) < n:
        texts.add(" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 18))))
    return sorted(texts)


def token_count(texts: list[str]) -> list[int]:
    """SOT..EOT length of each text under CLIP's tokenizer (what `encode_texts` returns)."""
    return (clip.tokenize(texts).argmax(dim=1) + 1).tolist()  # EOT has the largest id


def qvhighlights_record(qid: int, query: str, vid: str, n_frames: int, rng: random.Random) -> dict:
    """A QVHighlights-style record: one or two windows on the 2 s clip grid, 3 annotators' 0-4 scores inside."""
    n_clips = n_frames  # one frame per clip at 0.5 fps
    scores = [[0, 0, 0] for _ in range(n_clips)]
    windows = []
    for _ in range(rng.randint(1, 2)):
        start = rng.randrange(n_clips)
        end = min(n_clips, start + rng.randint(1, max(1, n_clips // 4)))
        windows.append([start / FPS, end / FPS])
        for k in range(start, end):
            scores[k] = [rng.randint(1, 4) for _ in range(3)]
    record = Record(qid=qid, query=query, vid=vid, duration=n_frames / FPS, fps=FPS, windows=sorted(windows),
                    clip_scores=scores)
    return record.to_json()  # qid, query, vid, duration, relevant_windows, relevant_clip_ids, saliency_scores


def write_cache(entry: Path, dims: dict, n_videos: int, n_frames: int, queries_per_video: int) -> int:
    """A qvhighlights cache of random fp16 features (train split only). Returns its feature bytes."""
    rng = random.Random(0)
    k, p, dv, dq = len(dims["layers"]), dims["tokens"], dims["video_dim"], dims["query_dim"]
    texts = query_texts(n_videos * queries_per_video, rng)
    rng.shuffle(texts)
    vids = [f"bench{i:04d}" for i in range(n_videos)]
    records = [qvhighlights_record(i, text, vids[i // queries_per_video], n_frames, rng)
               for i, text in enumerate(texts)]
    fp = {"bench": "bench/train.py synthetic features", "dims": dims}
    write_entry(entry, dataset=DATASET, fingerprint=fp, dims=dims, annotations={"train": records})
    noise = np.random.default_rng(0)
    pool = [noise.standard_normal((n_frames, k, p, dv), dtype=np.float32).astype(np.float16) for _ in range(4)]
    times = np.arange(n_frames) / FPS  # (T,)
    nbytes = 0
    with ShardWriter(entry, shard=(0, 1), fingerprint=fp, dims=dims) as writer:
        for i, vid in enumerate(vids):
            writer.add_video(vid, pool[i % len(pool)], times, n_frames / FPS, FPS)  # (T, K, P+1, Dv)
            nbytes += pool[0].nbytes
        for text, length in zip(texts, token_count(texts)):
            feats = noise.standard_normal((length, k, dq), dtype=np.float32).astype(np.float16)  # (L, K, Dq)
            writer.add_query(text, feats)
            nbytes += feats.nbytes
    return nbytes


def read_all(entry: Path) -> float:
    """Read every feature of the cache once (warms the page cache); returns the seconds it took."""
    start = time.perf_counter()
    cache = Cache(entry)
    for vid in cache.videos:
        cache.video(vid)
    for text in cache.texts:
        cache.query(text)
    cache.close()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------- one mode


def endless(loader: DataLoader):
    while True:
        yield from loader


def clip_features(encoder: clip.Clip, batch: dict, dataset: GroundingDataset, frames: np.ndarray,
                  n_encode: int) -> tuple[dict, float]:
    """Replace the batch's cached features by CLIP's, run now: the first `n_encode` videos are encoded (each from
    `frames[:T_i]`), the others reuse them; every query text is encoded. Returns the batch and the seconds spent
    encoding videos."""
    n_frames = batch["n_frames"].tolist()
    start = time.perf_counter()
    encoded = [clip.encode_frames(encoder, frames[:n], LAYERS) for n in n_frames[:n_encode]]  # each (T_i, K, P+1, Dv)
    video_s = time.perf_counter() - start
    texts = [dataset.records[i].query for i in batch["index"].tolist()]
    queries = clip.encode_texts(encoder, texts, LAYERS)  # each (L_i, K, Dq)
    video = torch.zeros_like(batch["video"])  # (B, K, T, P+1, Dv)
    for i, n in enumerate(n_frames):
        video[i, :, :n] = encoded[i % n_encode][:n].transpose(0, 1).to(video.dtype)  # (T, K, ..) -> (K, T, ..)
    length = max(len(q) for q in queries)
    query = batch["query"].new_zeros(len(queries), len(LAYERS), length, encoder.text_width)  # (B, K, L, Dq)
    query_mask = torch.zeros(len(queries), length, dtype=torch.bool)
    for i, q in enumerate(queries):
        query[i, :, :len(q)] = q.transpose(0, 1).to(query.dtype)  # (L, K, Dq) -> (K, L, Dq)
        query_mask[i, :len(q)] = True
    return {**batch, "video": video, "query": query, "query_mask": query_mask}, video_s


def _setup(args):
    """What every timed mode starts from: threads, seed, device, precision, the cache, a QVHighlights-config model
    in train mode with its criterion and optimizer / scaler / scheduler (as train/fit.py builds them)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = pick_device(args.device)
    autocast_dtype = pick_precision("auto", device)
    cache = Cache(args.cache)
    dims = cache.dims
    model = R2Model(config_for(DATASET, video_dim=dims["video_dim"], query_dim=dims["query_dim"],
                               tokens=dims["tokens"], layers=len(dims["layers"]))).to(device).train()
    criterion = Criterion(loss_config_for(DATASET))
    return device, autocast_dtype, cache, model, criterion, make_optimizer(model, device, autocast_dtype)


def run_mode(args) -> dict:
    """Time `args.steps` training steps (after `args.warmup`) in mode `args.mode`; peak memory of this process."""
    device, autocast_dtype, cache, model, criterion, (optimizer, scaler, scheduler) = _setup(args)
    source = Preloaded.whole(cache) if args.mode in ("preload", "clip") else None
    dataset = GroundingDataset(cache, "train", train=True, source=source)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)  # as r2.train
    workers = 0 if args.mode == "clip" else workers
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), drop_last=True,
                        pin_memory=device.type == "cuda")
    encoder, frames, n_encode = None, None, args.batch_size
    steps = args.clip_steps if args.mode == "clip" else args.steps
    if args.mode == "clip":
        encoder = clip.load_clip(args.clip, device)
        side = encoder.image_size
        frames = np.random.default_rng(0).integers(0, 256, (args.frames, side, side, 3), dtype=np.uint8)  # (T, S, S, 3)
        n_encode = min(args.batch_size, args.clip_videos or (args.batch_size if device.type == "cuda" else 2))
    batches = endless(loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    extra_s = 0.0  # (d): video-encoding seconds added for the videos not encoded, minus cached-feature fetches
    for step in range(args.warmup + steps):
        if step == args.warmup:
            sync()
            start = time.perf_counter()
        fetch = time.perf_counter()
        batch = next(batches)
        if encoder is not None and step >= args.warmup:
            extra_s -= time.perf_counter() - fetch  # (d) makes its features with CLIP: the cached ones are unused
            batch, video_s = clip_features(encoder, batch, dataset, frames, n_encode)
            extra_s += video_s * (args.batch_size / n_encode - 1)
        batch = to_device(batch, device)
        engine.train_step(model, criterion, optimizer, scaler, batch, device, autocast_dtype, TrainConfig.grad_clip,
                          scheduler=scheduler, where=f"bench mode {args.mode} step {step}")
    sync()
    seconds = time.perf_counter() - start + extra_s
    del batches, loader  # shuts the DataLoader workers down, so their peak RSS is counted below
    gc.collect()
    return {
        "steps_per_s": steps / seconds, "samples_per_s": steps * args.batch_size / seconds,
        "encoded_videos": n_encode, "workers": workers,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def make_optimizer(model, device: torch.device, autocast_dtype):
    """AdamW, GradScaler and LR scheduler as r2/train.py's Trainer builds them (constant LR: the warm-up and
    drop change no cost)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe(DATASET).schedule.lr, weight_decay=TrainConfig.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    return optimizer, scaler, scheduler


def op_table(prof, n: int) -> list[dict]:
    """The `n` ops with the most self CPU time of one profiled step: name, ms, share, calls."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:n]] + [{"op": "total", "self_ms": total / 1e3, "share": 1.0,
                                                         "calls": sum(e.count for e in events)}]


def sgemm_gflops(device: torch.device, n: int = 2048, reps: int = 3) -> float:
    """Measured fp32 GEMM rate (n x n x n) on this device with this process's threads: the attainable ceiling."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def run_step_comparison(args) -> dict:
    """r2's fast step against the plain eager step (and torch.compile with --compile), interleaved on the same
    preloaded batches (see the docstring)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    device, autocast_dtype, cache, model, criterion, (optimizer, scaler, scheduler) = _setup(args)
    dataset = GroundingDataset(cache, "train", train=True, source=Preloaded.whole(cache))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate, num_workers=0,
                        generator=torch.Generator().manual_seed(0), drop_last=True)
    batches = [to_device(b, device) for b, _ in zip(loader, range(2))]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = [0]
    variants = ["fast", "plain"] + (["compiled"] if args.compile else [])
    compiled = torch.compile(model, backend=args.compile) if args.compile else None

    def step(variant: str):
        model.block.fast = variant == "fast"
        batch = batches[calls[0] % len(batches)]
        calls[0] += 1
        with torch_dropout() if variant == "plain" else contextlib.nullcontext():
            engine.train_step(compiled if variant == "compiled" else model, criterion, optimizer, scaler, batch,
                              device, autocast_dtype, TrainConfig.grad_clip, scheduler=scheduler, where="bench step")

    def timed(variant: str) -> float:
        sync()
        start = time.perf_counter()
        step(variant)
        sync()
        return time.perf_counter() - start

    extra = {}
    if args.compile:
        b = batches[0]
        with engine.autocast(device, autocast_dtype):
            explanation = torch._dynamo.explain(model)(b["video"], b["video_mask"], b["query"], b["query_mask"])
        extra = {"graph_breaks": explanation.graph_break_count, "compile_s": timed("compiled")}  # first call compiles
    for variant in variants:  # warm-up (allocations, first-call costs)
        for _ in range(args.warmup):
            step(variant)
    times = {v: [] for v in variants}
    for r in range(args.ab_rounds):
        for variant in (variants if r % 2 == 0 else variants[::-1]):  # A B, B A, ...: none always goes first
            times[variant].append(timed(variant))
    flops, ops = {}, {}
    for variant in variants:
        if variant != "compiled":  # FlopCounterMode counts eager ops; compiled code runs the plain path's FLOPs
            counter = FlopCounterMode(display=False)
            with counter:
                step(variant)
            flops[variant] = counter.get_total_flops()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
            step(variant)
        ops[variant] = op_table(prof, args.ops)
    median = lambda xs: float(np.median(xs))  # noqa: E731
    result = {
        "fast_s": median(times["fast"]), "plain_s": median(times["plain"]),
        "ratio": median([a / b for a, b in zip(times["fast"], times["plain"])]),
        "fast_gflop": flops["fast"] / 1e9, "plain_gflop": flops["plain"] / 1e9, "sgemm_gflops": sgemm_gflops(device),
        "fast_ops": ops["fast"], "plain_ops": ops["plain"], "times": times,
        "threads": torch.get_num_threads(), "device": str(device),
    }
    if args.compile:
        result |= {"compiled_s": median(times["compiled"]), "compiled_ops": ops["compiled"],
                   "compiled_ratio": median([a / b for a, b in zip(times["compiled"], times["fast"])]), **extra}
    return result


def spawn_mode(mode: str, args, entry: Path, spec: str) -> dict:
    """Run one mode in a fresh Python process (its own peak RSS) and return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--cache", str(entry), "--clip", spec,
           "--frames", str(args.frames), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--clip-steps", str(args.clip_steps), "--device", args.device]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.clip_videos:
        cmd += ["--clip-videos", str(args.clip_videos)]
    if mode == STEP:
        cmd += ["--ab-rounds", str(args.ab_rounds), "--ops", str(args.ops)]
        cmd += ["--compile", args.compile] if args.compile else []
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench/train.py mode {mode} failed (exit {done.returncode}): "
                           f"{' '.join(done.stderr.split())[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- the table


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Within the block, this process and the processes it starts (train/fit.py) use `n` torch threads."""
    if not n:
        yield
        return
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env


def sweep_row(work: Path, n_videos: int, quick: bool, threads: int | None) -> dict:
    entry = work / "demo" / "demo.h5"
    fixed = {"epochs": 1, "hidden": 32 if quick else 64, "batch_size": 4, "workers": 0}
    with torch_threads(threads):
        extract(ExtractConfig(dataset="demo", out=entry, clip="tiny", demo_videos=n_videos, progress=False))
        return {**bench_per_trial(entry, work / "sweep", n_trials=2, **fixed), "fixed": fixed}


def measure(args, work: Path) -> list[dict]:
    rows: list[dict] = []

    def row(measure: str, value: float, unit: str, note: str = ""):
        rows.append({"measure": measure, "value": float(value), "unit": unit, "note": note})

    arch = clip.TINY_ARCH if args.quick else clip.VIT_B32_ARCH
    spec = "tiny" if args.quick else str(clip.write_vit_b32_checkpoint(work / "ViT-B-32-random.pt"))
    dims = arch_dims(arch)
    entry = work / "bench.h5"
    nbytes = write_cache(entry, dims, args.videos, args.frames, args.queries_per_video)
    warm_s = read_all(entry)
    shape = (f"B {args.batch_size}, T {args.frames}, K {len(LAYERS)}, {dims['tokens']} tokens, Dv {dims['video_dim']}, "
             f"Dq {dims['query_dim']}")
    row("synthetic cache read once (page cache warm)", nbytes / 1e6 / warm_s, "MB/s",
        f"{args.videos} videos x {args.queries_per_video} queries, {nbytes / 1e9:.2f} GB")

    s = spawn_mode(STEP, args, entry, spec)
    step_rows(row, s, args, shape)
    tables = {"fast": s["fast_ops"], "plain eager": s["plain_ops"]} | (
        {"torch.compile": s["compiled_ops"]} if args.compile else {})
    if args.step_only:
        return rows, tables

    results = {mode: spawn_mode(mode, args, entry, spec) for mode in MODES}
    for mode, name in MODES.items():
        r = results[mode]
        if mode == "clip":
            note = (f"CLIP on frames + texts, then the step; {r['encoded_videos']} of {args.batch_size} videos "
                    f"encoded per step, video encoding time scaled to {args.batch_size}; {args.clip_steps} steps")
        else:
            note = f"{shape}; {r['workers']} workers; {args.steps} steps after {args.warmup} warm-up"
        row(f"{name}: steps/s", r["steps_per_s"], "steps/s", note)
        row(f"{name}: samples/s", r["samples_per_s"], "samples/s")
    stream, preload, with_clip = results["stream"], results["preload"], results["clip"]
    row("(c) = (a) / (b)", stream["samples_per_s"] / preload["samples_per_s"], "ratio", "target >= 0.9")
    row("(b) / (d) speed-up of cached features", preload["samples_per_s"] / with_clip["samples_per_s"], "x")
    for mode in ("stream", "preload"):
        r = results[mode]
        row(f"{MODES[mode]}: peak RSS, main process", r["rss_mb"], "MB")
        if r["workers"]:
            row(f"{MODES[mode]}: peak RSS, largest worker", r["worker_rss_mb"], "MB",
                "forked workers also count the parent's pages they share (preloaded features)")
        if r["gpu_peak_mb"] is not None:
            row(f"{MODES[mode]}: peak GPU memory", r["gpu_peak_mb"], "MB", "torch.cuda.max_memory_allocated")

    if not args.no_sweep:
        s = sweep_row(work, args.sweep_demo_videos, args.quick, args.threads)
        setting = ", ".join(f"{k}={v}" for k, v in s["fixed"].items())
        row("sweep: seconds per trial", s["sweep_s_per_trial"], "s/trial",
            f"demo cache ({args.sweep_demo_videos} videos, tiny CLIP), {s['trials']} trials, {setting}")
        row("sweep: a trial's own seconds", s["trial_s"], "s/trial", "r2.sweep.run_trial: Trainer, fit, trial.json")
        row("sweep: overhead per trial", 100 * s["overhead"], "% of a trial",
            "(sweep wall / trials - a trial's own seconds) / a trial's own seconds; target <= 5")
        row("separate train/fit.py: seconds per trial", s["fit_s_per_trial"], "s/trial", "one process per trial")
        row("sweep speed-up per trial", s["fit_s_per_trial"] / s["sweep_s_per_trial"], "x")
    return rows, tables


def step_rows(row, s: dict, args, shape: str):
    b = args.batch_size
    peak, peak_note = nominal_peak_gflops(s["threads"], s["device"])
    pairs = f"median of {args.ab_rounds} interleaved pairs after {args.warmup} warm-up each"
    row("step, fast path: s/step", s["fast_s"], "s", f"{shape}; r2.engine.train_step on preloaded batches; {pairs}")
    row("step, plain eager path: s/step", s["plain_s"], "s", "R2Block.fast = False, torch bernoulli dropout")
    row("step: fast / plain eager", s["ratio"], "ratio", "median of the per-pair ratios; target <= 0.5")
    row("step, fast path: samples/s", b / s["fast_s"], "samples/s")
    row("step, plain eager path: samples/s", b / s["plain_s"], "samples/s")
    for name, key, gflop in (("fast path", "fast_s", s["fast_gflop"]), ("plain eager path", "plain_s", s["plain_gflop"])):
        rate = gflop / s[key]
        note = f"{gflop:.0f} GFLOP/step (matmul/conv, fwd + bwd)"
        if peak:
            note += f"; {100 * rate / peak:.0f} % of the nominal peak"
        row(f"step, {name}: GFLOP/s", rate, "GFLOP/s", note)
    if "compiled_s" in s:
        row("step, torch.compile: s/step", s["compiled_s"], "s",
            f"torch.compile(model, backend={args.compile!r}); {s['graph_breaks']} graph breaks (torch._dynamo.explain)")
        row("step: torch.compile / fast", s["compiled_ratio"], "ratio", "median of the per-variant ratios")
        row("step, torch.compile: samples/s", b / s["compiled_s"], "samples/s")
        row("step, torch.compile: first step", s["compile_s"], "s", f"tracing + {args.compile} compile of forward and backward")
        row("step, torch.compile: graph breaks", s["graph_breaks"], "count", "0: the whole forward is one graph")
    if peak:
        row("nominal fp32 peak", peak, "GFLOP/s", peak_note)
    row("measured sgemm 2048^3", s["sgemm_gflops"], "GFLOP/s", f"{s['threads']} threads, same process")


def main(args) -> pd.DataFrame | dict:
    if args.mode == STEP:
        result = run_step_comparison(args)
        print(json.dumps(result))
        return result
    if args.mode:
        result = run_mode(args)
        print(json.dumps(result))
        return result
    args = resolve(args)
    before = machine() + (f" (children: --threads {args.threads})" if args.threads else "")
    with tempfile.TemporaryDirectory(prefix="r2-bench-train-") as tmp:
        work = work_folder(args.work, tmp)
        rows, tables = measure(args, work)
        table = pd.DataFrame(rows)
    after = "/".join(f"{x:.1f}" for x in os.getloadavg())
    flags = "".join(f" --{name}" for name in ("quick", "step-only") if getattr(args, name.replace("-", "_")))
    flags += f" --compile {args.compile}" if args.compile else ""
    print(to_markdown(table, f"bench/train.py{flags} on {before} (at the end: {after})"))
    for name, ops in tables.items():
        print(f"Per-op self time, one training step, {name} (torch.profiler):\n")
        print("| op | self ms | share | calls |\n|---|---|---|---|")
        for o in ops:
            print(f"| {o['op']} | {o['self_ms']:.1f} | {100 * o['share']:.1f} % | {o['calls']} |")
        print()
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
