"""Helpers shared by the test modules: generated videos, annotation lines, the CLIs run as a user runs them."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from r2.video import ffmpeg_exe

REPO = Path(__file__).resolve().parents[1]
# The authors' golden files (tests/test_reference.py, tests/test_official.py)
REFERENCE = Path(os.environ.get("R2_REFERENCE", REPO.parent / "shared" / "reference"))
# train/fit.py flags of a one-epoch run small enough for a test (the sweep tests pass them to every trial)
FAST = ["--epochs", "1", "--batch-size", "4", "--hidden", "64", "--workers", "0", "--no-progress"]


def make_video(path: Path, source: str, seconds: float, *extra: str, size: str = "64x48", rate: int = 4) -> Path:
    """Encode a lavfi source (argument list, no shell)."""
    head = f"{source}{':' if '=' in source else '='}s={size}:r={rate}"
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-t", str(seconds), "-i", head,
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def record(qid: int, vid: str, query: str, duration: float, window=(2, 8)) -> dict:
    """A QVHighlights-format line: one window, its 2 s clips scored by 3 annotators."""
    clips = list(range(int(window[0]) // 2, int(window[1]) // 2))
    return {"qid": qid, "query": query, "vid": vid, "duration": duration, "relevant_windows": [list(window)],
            "relevant_clip_ids": clips, "saliency_scores": [[4, 3, 2 + c % 3] for c in clips]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def extract_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "extract" / "run.py"), "--dataset", "custom", "--clip", "tiny",
            "--videos", str(root / "videos"), "--annotations", str(root / "train.jsonl"), str(root / "val.jsonl"),
            "--out", str(out), "--batch-size", "16", "--no-progress", *extra]


# One torch thread per child: on a busy 2-core machine two spinning OpenMP threads per process make these small
# runs ~10x slower. Every process of a comparison uses the same setting, so results stay comparable.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def start(cmd: list[str], stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=stdout, stderr=subprocess.PIPE, text=True)


def load_cli(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_{name.replace('/', '_')}", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layout(t: int, n_frames: list[int], strides=(1, 2, 4, 8)):
    """Points of a padded length t as the model lays them out, and each sample's point mask ((p + 1) * s <= T_b)."""
    import torch

    points, point_strides, position = [], [], []
    for s in strides:
        for p in range(t // s):
            points.append(p * s)
            point_strides.append(s)
            position.append(p)
    points = torch.tensor(points, dtype=torch.float32)
    point_strides = torch.tensor(point_strides, dtype=torch.float32)
    position = torch.tensor(position, dtype=torch.float32)
    mask = torch.stack([(position + 1) * point_strides <= n for n in n_frames])  # (B, N)
    return points, point_strides, mask
