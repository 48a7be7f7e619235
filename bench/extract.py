"""Stage-1 throughput on this machine: decoding, the CLIP encoder, the real extractor end to end, cache size and
cache write speed. Prints one markdown table; every ratio in it is computed from numbers measured in this run.

    python bench/extract.py            # full run: ViT-B/32-size CLIP with random weights, 150 s 400x224 videos
    python bench/extract.py --quick    # tiny sizes and the tiny CLIP, a few seconds: proves the script works

What is measured:
  decode        `r2.video.decode` of a generated H.264 video at --fps and at --fps-high: sampled frames per wall
                second, source seconds per wall second, ffmpeg CPU seconds per sampled frame.
  encoder       `r2.clip.encode_frames` on one video's worth of random frames (fp32, and bf16 autocast on fewer
                frames), the frames already in memory, after one untimed pass: frames/s and CPU seconds per frame.
  end to end    `r2.extract.extract` on a custom dataset of --videos copies of the generated video. The marginal rate
                (run on N videos minus run on 1 video) cancels the one-off costs (CLIP load and checksum, the first
                video's decode before the pipeline fills, text encoding); the whole-run rate is printed too.
  re-run        a fresh `python` process running the extractor on the 1-video dataset into a new cache, then again
                with nothing left to do: wall seconds of each as a user sees them (interpreter start, imports,
                CLIP load or not). A re-run loads neither torch nor CLIP when the CLIP's checksum is known without
                its weights (the tiny CLIP); a checkpoint is read and hashed (torch) to name its fingerprint.
  cache         bytes per frame of the N-video cache (every file: entry, segments) against the raw
                K x (P+1) x Dv x 2 bytes of fp16 features; `ShardWriter.add_video` MB/s of random fp16 features
                (to the page cache: the writer flushes HDF5 buffers but does not fsync).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from common import fill_defaults, machine, work_folder
from r2 import cache, clip, video
from r2.extract import ExtractConfig, extract
from r2.sweep import to_markdown

LAYERS = "9-12"  # the paper's taps
REPO = Path(__file__).resolve().parents[1]
FRESH_RUN = """
import sys
from pathlib import Path
from r2.extract import ExtractConfig, extract
out, spec, videos, annotations, fps, device = sys.argv[1:]
s = extract(ExtractConfig(dataset="custom", out=Path(out), clip=spec, layers="9-12", videos=Path(videos),
                          annotations=[Path(annotations)], fps=float(fps), device=device, progress=False))
print(s.done, s.skipped, "torch" in sys.modules)
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny CLIP, short small videos, few frames: seconds, for the smoke test (numbers meaningless)")
    p.add_argument("--clip", help="CLIP spec for encoder and end to end (default: a ViT-B/32-size checkpoint with "
                                  "random weights written to --work; --quick: tiny)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary folder, deleted afterwards)")
    p.add_argument("--seconds", type=float, help="length of the generated video (default 150, QVHighlights' length)")
    p.add_argument("--size", help="generated video WxH (default 400x224)")
    p.add_argument("--rate", type=int, help="generated video frame rate (default 30)")
    p.add_argument("--fps", type=float, default=0.5, help="sampling rate of decode and extraction (default 0.5)")
    p.add_argument("--fps-high", type=float, default=2.0, help="second decode sampling rate")
    p.add_argument("--videos", type=int, help="videos in the end-to-end dataset (default 4)")
    p.add_argument("--bf16-frames", type=int, help="frames for the bf16 encoder run (default 16: slow on CPUs "
                                                   "without bf16 matrix units)")
    p.add_argument("--write-videos", type=int, help="videos written in the cache write test (default 40)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP forward (extract.py's default)")
    p.add_argument("--device", default="auto", help="where CLIP runs, encoder and end to end alike: auto (a GPU "
                                                    "when there is one), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core; --quick: 1, which "
                                               "stays fast on a loaded machine)")
    return p


def resolve(args) -> argparse.Namespace:
    """Fill the size flags left unset from the full-run or --quick defaults."""
    full = {"seconds": 150.0, "size": "400x224", "rate": 30, "videos": 4, "bf16_frames": 16, "write_videos": 40}
    quick = {"seconds": 10.0, "size": "160x90", "rate": 5, "videos": 3, "bf16_frames": 2, "write_videos": 2,
             "threads": 1}
    return fill_defaults(args, full, quick)


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or of its reaped children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def make_video(path: Path, seconds: float, size: str, rate: int) -> Path:
    """A moving test pattern encoded as H.264 (x264 veryfast, CRF 23, yuv420p): like a downloaded web video."""
    subprocess.run([video.ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=s={size}:r={rate}:d={seconds}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def bench_decode(path: Path, fps: float) -> dict:
    cpu0, start = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    frames = video.decode(path, fps)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0  # the ffmpeg process, reaped by decode
    n = len(frames.frames)
    return {"frames": n, "frames_per_s": n / wall, "realtime": frames.duration / wall, "cpu_per_frame": cpu / n}


def bench_encoder(model: clip.Clip, n_frames: int, batch_size: int, bf16: bool) -> dict:
    layers = clip.parse_layers(LAYERS, model.vision_layers)
    side = model.image_size
    frames = np.random.default_rng(0).integers(0, 256, (n_frames, side, side, 3), dtype=np.uint8)  # (T, S, S, 3)
    with torch.inference_mode():
        clip.encode_frames(model, frames, layers, batch_size, bf16)  # warm-up: first use of each batch shape
        cpu0, start = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
        clip.encode_frames(model, frames, layers, batch_size, bf16)
        wall = time.perf_counter() - start
    cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu0
    return {"frames_per_s": n_frames / wall, "cpu_per_frame": cpu / n_frames}


def write_dataset(folder: Path, source: Path, n_videos: int, seconds: float) -> Path:
    """A custom dataset of `n_videos` copies of `source` (decode cost does not depend on the name) and its train
    split jsonl, one query per video. Returns the jsonl path."""
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_videos):
        shutil.copyfile(source, videos / f"video{i:03d}.mp4")
        rows.append({"qid": i, "query": f"a test pattern scrolls by, take {i}", "vid": f"video{i:03d}",
                     "duration": seconds, "relevant_windows": [[0.0, min(seconds, 10.0)]]})
    annotations = folder / "train.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return annotations


def run_extract(out: Path, spec: str, device: str, folder: Path, annotations: Path, fps: float,
                batch_size: int) -> dict:
    cpu_self0, cpu_child0 = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    summary = extract(ExtractConfig(dataset="custom", out=out, clip=spec, layers=LAYERS, videos=folder / "videos",
                                    annotations=[annotations], fps=fps, batch_size=batch_size, device=device,
                                    progress=False))
    if summary.failed or not summary.done:
        raise RuntimeError(f"benchmark extraction into {out} failed: {summary.line()}; see "
                           f"{cache.parts_dir(out) / 'failures.jsonl'}")
    return {"frames": summary.frames, "seconds": summary.seconds,
            "cpu_self": cpu_seconds(resource.RUSAGE_SELF) - cpu_self0,
            "cpu_ffmpeg": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_child0}


def fresh_extract(out: Path, spec: str, device: str, folder: Path, annotations: Path, fps: float) -> dict:
    """The extractor in a new Python process (what `extract/run.py` costs a user): wall seconds from outside, the
    videos it extracted and skipped, and whether it imported torch."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", FRESH_RUN, str(out), spec, str(folder / "videos"), str(annotations),
                             str(fps), device], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"benchmark extraction into {out} failed: {result.stderr.strip()[-500:]}")
    done, skipped, torch_imported = result.stdout.split()[-3:]
    return {"seconds": seconds, "done": int(done), "skipped": int(skipped), "torch": torch_imported == "True"}


def cache_bytes(entry: Path) -> int:
    """Bytes on disk of a cache: its entry file and every file of its parts folder."""
    return entry.stat().st_size + sum(p.stat().st_size for p in cache.parts_dir(entry).iterdir() if p.is_file())


def bench_write(entry: Path, dims: dict, n_videos: int, frames_per_video: int) -> float:
    """MB/s of `ShardWriter.add_video` (random fp16 features, one video at a time), the writer's close included."""
    k, p, dv = len(dims["layers"]), dims["tokens"], dims["video_dim"]
    feats = np.random.default_rng(0).standard_normal((frames_per_video, k, p, dv)).astype(np.float16)  # (T, K, P+1, Dv)
    times = np.arange(frames_per_video, dtype=np.float64) * 2.0
    fp = {"bench": "bench/extract.py write test"}
    cache.write_entry(entry, dataset="custom", fingerprint=fp, dims=dims, annotations={})
    start = time.perf_counter()
    with cache.ShardWriter(entry, shard=(0, 1), fingerprint=fp, dims=dims) as writer:
        for i in range(n_videos):
            writer.add_video(f"v{i}", feats, times, frames_per_video * 2.0, 0.5)
    return n_videos * feats.nbytes / 1e6 / (time.perf_counter() - start)


def measure(args, work: Path) -> list[dict]:
    rows: list[dict] = []

    def row(name: str, value: float, unit: str, note: str = ""):
        rows.append({"measure": name, "value": float(value), "unit": unit, "note": note})

    source = make_video(work / "source.mp4", args.seconds, args.size, args.rate)
    for fps in (args.fps, args.fps_high):
        d = bench_decode(source, fps)
        what = f"{args.size} {args.rate} fps H.264, {args.seconds:g} s"
        row(f"decode @ {fps:g} fps", d["frames_per_s"], "frames/s", f"{what}: {d['frames']} frames")
        row(f"decode @ {fps:g} fps, speed", d["realtime"], "x realtime", "source seconds per wall second")
        row(f"decode @ {fps:g} fps, ffmpeg CPU", d["cpu_per_frame"] * 1e3, "CPU ms/frame", "all ffmpeg threads")

    spec = args.clip or ("tiny" if args.quick else str(clip.write_vit_b32_checkpoint(work / "ViT-B-32-random.pt")))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    start = time.perf_counter()
    model = clip.load_clip(spec, device)
    load_s = time.perf_counter() - start
    name = "tiny CLIP" if spec == "tiny" else f"CLIP {Path(spec).name}"
    frames_per_video = int(np.floor(args.seconds * args.fps + 0.5))
    enc = bench_encoder(model, frames_per_video, args.batch_size, bf16=False)
    row("encoder fp32", enc["frames_per_s"], "frames/s",
        f"{name} on {device}, taps {LAYERS}, {frames_per_video} frames")
    row("encoder fp32, CPU", enc["cpu_per_frame"] * 1e3, "CPU ms/frame", "all torch threads")
    enc_bf16 = bench_encoder(model, args.bf16_frames, args.batch_size, bf16=True)
    row("encoder bf16 autocast", enc_bf16["frames_per_s"], "frames/s", f"{args.bf16_frames} frames")
    bf16_ratio = enc_bf16["frames_per_s"] / enc["frames_per_s"]
    row("encoder bf16 / fp32", bf16_ratio, "ratio", f"bf16 autocast is {'faster' if bf16_ratio > 1 else 'slower'} here")
    row("CLIP load + checksum", load_s, "s", "paid once per extract run")
    del model

    annotations_1 = write_dataset(work / "one", source, 1, args.seconds)
    annotations_n = write_dataset(work / "many", source, args.videos, args.seconds)
    one = run_extract(work / "one.h5", spec, device, work / "one", annotations_1, args.fps, args.batch_size)
    many = run_extract(work / "many.h5", spec, device, work / "many", annotations_n, args.fps, args.batch_size)
    frames = many["frames"] - one["frames"]
    marginal = frames / (many["seconds"] - one["seconds"])
    row("end to end, whole run", many["frames"] / many["seconds"], "frames/s",
        f"{args.videos} videos, {many['frames']} frames, CLIP load included")
    row("end to end, marginal", marginal, "frames/s", f"({args.videos} videos run) - (1 video run)")
    row("end to end / encoder fp32", marginal / enc["frames_per_s"], "ratio", "marginal; target >= 0.9")
    cpu_encode = (many["cpu_self"] - one["cpu_self"]) / frames
    cpu_decode = (many["cpu_ffmpeg"] - one["cpu_ffmpeg"]) / frames
    row("end to end, extractor CPU", cpu_encode * 1e3, "CPU ms/frame", "marginal: encoder + writer + Python")
    row("end to end, ffmpeg CPU", cpu_decode * 1e3, "CPU ms/frame", "marginal: decoding")
    row("CPU-bound ceiling of end to end / encoder", cpu_encode / (cpu_encode + cpu_decode), "ratio",
        "when decode and encode share saturated cores")

    first = fresh_extract(work / "rerun.h5", spec, device, work / "one", annotations_1, args.fps)
    again = fresh_extract(work / "rerun.h5", spec, device, work / "one", annotations_1, args.fps)
    if first["done"] != 1 or again["done"] != 0 or again["skipped"] != 1:
        raise RuntimeError(f"re-run benchmark: first run extracted {first['done']}, re-run {again['done']} (skipped "
                           f"{again['skipped']}); expected 1, then 0 with 1 skipped")
    row("extract, new process: first run", first["seconds"], "s", "1 video: imports, CLIP load, extraction")
    row("extract, new process: re-run, nothing to do", again["seconds"], "s",
        f"torch {'imported (the checkpoint is read to hash it)' if again['torch'] else 'not imported'}; target <= 3 s "
        f"plus hashing the checkpoint")

    dims = cache.Cache(work / "many.h5").dims
    raw = len(dims["layers"]) * dims["tokens"] * dims["video_dim"] * 2
    with h5py.File(sorted(cache.parts_dir(work / "many.h5").glob("shard-*.h5"))[0], "r") as f:
        stored = f["video_feats"].id.get_storage_size()
    row("cache bytes/frame, video_feats", stored / many["frames"] / raw, "x raw", f"raw K x (P+1) x Dv x 2 = {raw} B")
    row("cache bytes/frame, all files", cache_bytes(work / "many.h5") / many["frames"] / raw, "x raw",
        "entry + segments (queries, index) / frames; target <= 1.01")
    row("cache write", bench_write(work / "write.h5", dims, args.write_videos, frames_per_video), "MB/s",
        f"ShardWriter.add_video, {args.write_videos} x {frames_per_video} frames, no fsync")
    return rows


def main(args) -> pd.DataFrame:
    args = resolve(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    before = machine()
    try:
        with tempfile.TemporaryDirectory(prefix="r2-bench-extract-") as tmp:
            work = work_folder(args.work, tmp)
            table = pd.DataFrame(measure(args, work))
    finally:
        torch.set_num_threads(threads)
    after = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(to_markdown(table, f"bench/extract.py{' --quick' if args.quick else ''} on {before} (at the end: {after})"))
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
