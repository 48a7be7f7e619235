"""Stage 1 end to end: the CLI on generated videos with the tiny CLIP, and the real checkpoint-file code path."""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from r2 import clip, video
from r2.cache import Cache, parts_dir
from r2.demo import make_demo
from r2.extract import failures
from tests.helpers import load_cli, make_video, write_jsonl

extract_cli = load_cli("extract/run.py")

REPO = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> int:
    return extract_cli.main(extract_cli.get_args_parser().parse_args([*argv, "--no-progress"]))


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo.h5"
    assert cli("--dataset", "demo", "--clip", "tiny", "--demo-videos", "8", "--out", str(out)) == 0
    return out


def test_the_summary_counts_queries_and_distinct_texts(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for vid in ("a", "b"):
        make_video(videos / f"{vid}.mp4", "color=c=red", 4, size="96x64")
    write_jsonl(tmp_path / "train.jsonl", [  # three queries, two distinct texts
        {"qid": i, "query": text, "vid": vid, "duration": 4, "relevant_windows": [[0, 2]]}
        for i, (text, vid) in enumerate([("a red screen", "a"), ("a red screen", "b"), ("the end", "b")])])
    assert cli("--dataset", "custom", "--clip", "tiny", "--videos", str(videos), "--out", str(tmp_path / "c.h5"),
               "--annotations", str(tmp_path / "train.jsonl")) == 0
    out = capsys.readouterr().out
    assert "queries: 3 (2 distinct texts)" in out
    # the estimate printed before the videos: 2 videos of 4 s at 0.5 fps = 4 frames, at a measured CLIP rate
    assert re.search(r"≈ \d+ (s|min) on this machine: 4 frames of 2 videos at [\d.]+ frames/s \(CLIP tiny\)", out)


def test_demo_extraction_writes_every_video_and_query(demo_cache):
    cache = Cache(demo_cache)
    records = [r for split in ("train", "val") for r in cache.records(split)]
    assert cache.dataset == "demo" and sorted(cache.splits) == ["train", "val"]
    assert sorted(cache.videos) == sorted({r["vid"] for r in records})
    assert sorted(cache.texts) == sorted({r["query"] for r in records})
    assert cache.dims == {"video_dim": 192, "query_dim": 128, "tokens": 17, "layers": [9, 10, 11, 12]}
    fp = cache.fingerprint
    assert fp["clip"] == "tiny" and fp["layers"] == [9, 10, 11, 12] and fp["fps"] == 0.5 and fp["frame_size"] == 224
    for r in records:
        feats = cache.video(r["vid"])
        assert feats.dtype == np.float16 and feats.shape[1:] == (4, 17, 192)
        assert len(feats) == round(r["duration"] * 0.5)  # one frame per 2 s clip
        np.testing.assert_allclose(cache.times(r["vid"]), np.arange(len(feats)) * 2.0)
        q = cache.query(r["query"])
        assert q.shape[1:] == (4, 128) and 3 <= len(q) <= 77
    assert failures(demo_cache) == []


def test_cached_features_equal_a_direct_encode(demo_cache):
    cache = Cache(demo_cache)
    vid = sorted(cache.videos)[0]
    frames = video.decode(demo_cache.parent / "demo" / "videos" / f"{vid}.mp4", 0.5)
    model = clip.load_clip("tiny")
    with torch.inference_mode():
        direct = clip.encode_frames(model, frames.frames, [9, 10, 11, 12]).to(torch.float16).numpy()
    np.testing.assert_array_equal(cache.video(vid), direct)


def test_rerun_does_nothing(demo_cache, capsys):
    before = {p: p.stat().st_size for p in parts_dir(demo_cache).glob("*.h5")}
    assert cli("--dataset", "demo", "--clip", "tiny", "--demo-videos", "8", "--out", str(demo_cache)) == 0
    assert "0 done, 8 skipped, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_size for p in parts_dir(demo_cache).glob("*.h5")} == before


def test_other_layers_into_the_same_cache_are_refused(demo_cache, capsys):
    code = cli("--dataset", "demo", "--clip", "tiny", "--layers", "11-12", "--demo-videos", "8",
               "--out", str(demo_cache))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "other settings" in err and "layers" in err and "--out" in err


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    code = cli("--dataset", "demo", "--clip", str(tmp_path / "nope.pt"), "--demo-videos", "2",
               "--out", str(tmp_path / "x.h5"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "nope.pt" in err and "--clip tiny" in err


def test_custom_dataset_with_a_broken_video_logs_it_and_goes_on(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "good one.mp4", "color=c=red", 8, size="96x64")
    (videos / "broken.mp4").write_text("not a video")
    rows = [{"qid": 1, "query": "a red screen", "vid": "good one", "duration": 8, "relevant_windows": [[2, 6]]},
            {"qid": 2, "query": "something", "vid": "broken", "duration": 8, "relevant_windows": [[0, 2]]},
            {"qid": 3, "query": "nothing", "vid": "absent", "duration": 8, "relevant_windows": [[0, 2]]}]
    write_jsonl(tmp_path / "train.jsonl", rows[:2])
    write_jsonl(tmp_path / "val.jsonl", rows[2:])
    out = tmp_path / "mine.h5"
    code = cli("--dataset", "custom", "--clip", "tiny", "--videos", str(videos), "--out", str(out),
               "--annotations", str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"))
    assert code == 1
    assert "1 done, 0 skipped, 2 failed" in capsys.readouterr().out
    cache = Cache(out)
    assert cache.videos == ["good one"] and sorted(cache.splits) == ["train", "val"]
    assert sorted(f["vid"] for f in failures(out)) == ["absent", "broken"]
    assert all("error" in f and f["error"] for f in failures(out))


@pytest.mark.slow  # an extraction killed, then resumed (~13 s)
def test_sigkill_mid_extraction_then_rerun_completes(tmp_path):
    """kill -9 the CLI while it writes, several times, then re-run: every video present exactly once."""
    make_demo(tmp_path / "demo", n_videos=12, progress=False)  # where extraction looks for the demo videos
    out = tmp_path / "demo.h5"
    cmd = [sys.executable, str(REPO / "extract" / "run.py"), "--dataset", "demo", "--clip", "tiny",
           "--demo-videos", "12", "--out", str(out), "--no-progress"]
    for delay in (0.2, 0.6, 1.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and not list(parts_dir(out).glob("*.h5")):  # wait until it writes
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        Cache(out)  # readable after every kill
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cache = Cache(out)
    expected = {r["vid"] for split in ("train", "val") for r in cache.records(split)}
    assert sorted(cache.videos) == sorted(expected) and not cache.duplicates


@pytest.mark.slow
def test_full_size_vit_b32_checkpoint_through_the_cli(vit_b32_file, tmp_path):
    """The real code path: an OpenAI-format ViT-B/32 file (random weights) passed as --clip PATH."""
    ckpt = vit_b32_file
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "v.mp4", "color=c=blue", 4, size="96x64")
    write_jsonl(tmp_path / "train.jsonl", [{"qid": 0, "query": "a blue screen", "vid": "v", "duration": 4,
                                             "relevant_windows": [[0, 2]]}])
    out = tmp_path / "vit.h5"
    assert cli("--dataset", "custom", "--clip", str(ckpt), "--videos", str(videos), "--out", str(out),
               "--annotations", str(tmp_path / "train.jsonl")) == 0
    cache = Cache(out)
    assert cache.dims == {"video_dim": 768, "query_dim": 512, "tokens": 50, "layers": [9, 10, 11, 12]}
    assert cache.video("v").shape == (2, 4, 50, 768)
    assert cache.fingerprint["clip"] == str(ckpt) and cache.fingerprint["clip_sha256"] == clip.load_clip(str(ckpt)).sha256
