"""r2.demo: the generated dataset follows the QVHighlights jsonl contract, is deterministic and resumable, and its
videos show what the annotations say."""
import json
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from r2.demo import CONCEPTS, DEFAULT_VIDEOS, DemoQuery, annotation, demo_video, make_demo
from r2.video import decode
from tests.helpers import REPO

N = 8
KEYS = ["qid", "query", "duration", "vid", "relevant_clip_ids", "saliency_scores", "relevant_windows"]
SOLID_RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    a = make_demo(tmp_path_factory.mktemp("demo_a"), seed=0, n_videos=N, progress=False)
    b = make_demo(tmp_path_factory.mktemp("demo_b"), seed=0, n_videos=N, progress=False)
    return a, b


def _records(root):
    return {s: [json.loads(line) for line in (root / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val")}


def test_files_and_manifest(demo_dirs):
    root = demo_dirs[0]
    recs = _records(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["n_videos"] == N and manifest["complete"] is True
    assert manifest["counts"]["queries"] == {s: len(r) for s, r in recs.items()}
    vids = {s: {r["vid"] for r in rs} for s, rs in recs.items()}
    assert not vids["train"] & vids["val"]  # split by video
    assert len(vids["train"] | vids["val"]) == N == sum(manifest["counts"]["videos"].values())
    assert manifest["counts"]["videos"]["val"] == round(0.2 * N)
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(f"{v}.mp4" for v in vids["train"] | vids["val"])


def test_jsonl_schema_windows_clips_and_saliency(demo_dirs):
    recs = _records(demo_dirs[0])
    all_recs = recs["train"] + recs["val"]
    assert len({r["qid"] for r in all_recs}) == len(all_recs)
    for r in all_recs:
        assert list(r) == KEYS
        assert isinstance(r["qid"], int) and isinstance(r["query"], str) and r["query"]
        assert isinstance(r["duration"], int) and 16 <= r["duration"] <= 32 and r["duration"] % 2 == 0
        covered = []
        for start, end in r["relevant_windows"]:
            assert 0 <= start < end <= r["duration"] and start % 2 == 0 and end % 2 == 0
            covered += range(start // 2, end // 2)
        assert r["relevant_clip_ids"] == covered  # exactly the 2 s clips the windows cover, in order
        assert len(r["saliency_scores"]) == len(covered)
        for row in r["saliency_scores"]:
            assert len(row) == 3 and all(isinstance(s, int) and 2 <= s <= 4 for s in row)


def test_query_names_the_concept_of_every_window():
    for i in range(40):
        video = demo_video(0, i)
        for q in video.queries:
            assert q.query in CONCEPTS[q.concept][1]
            starts = [s for s, _ in video.windows(q.concept)]
            assert len(starts) == sum(c == q.concept for c, _, _ in video.segments) >= 1


def test_content_spec_over_300_videos():
    videos = [demo_video(0, i) for i in range(300)]
    repeated = 0
    for v in videos:
        names = [c for c, _, _ in v.segments]
        assert 3 <= len(names) <= 5 and len(set(names)) >= len(names) - 1 >= 2  # at most one concept twice
        assert all(a != b for a, b in zip(names, names[1:]))  # never the same concept twice in a row
        assert all(s >= 4 and s % 2 == 0 for _, s, _ in v.segments) and 16 <= v.duration <= 32
        assert [q.concept for q in v.queries] == list(dict.fromkeys(names))  # every concept, in order of first sight
        assert [q.qid for q in v.queries] == [5 * int(v.vid[5:]) + j for j in range(len(v.queries))]
        repeated += len(set(names)) < len(names)
        for q in v.queries:  # the repeated concept's query has two windows, every other query one
            assert len(v.windows(q.concept)) == names.count(q.concept)
    assert 0.2 <= repeated / len(videos) <= 0.4
    assert Counter(c for v in videos for c, _, _ in v.segments).keys() == CONCEPTS.keys()
    assert len({v.vid for v in videos}) == 300


def test_default_size_is_small_enough_to_extract_in_minutes():
    """The README's first command extracts DEFAULT_VIDEOS videos: ~850 frames at 0.5 fps (ViT-B/32 runs ~3 frames/s
    on a 2-core CPU), with several queries per video for training."""
    videos = [demo_video(0, i) for i in range(DEFAULT_VIDEOS)]
    frames = sum(v.duration // 2 for v in videos)
    queries = sum(len(v.queries) for v in videos)
    assert 700 <= frames <= 1000 and queries >= 3 * DEFAULT_VIDEOS


def test_saliency_peaks_inside_windows():
    video = next(v for v in (demo_video(0, i) for i in range(100)) if max(s for _, s, _ in v.segments) >= 12)
    concept = next(c for c, s, _ in video.segments if s >= 12)
    rec = annotation(video, DemoQuery(qid=999, concept=concept, query="x"), seed=0)
    start, end = next((s, e) for s, e in rec["relevant_windows"] if e - s >= 12)
    rows = [sum(r) for cid, r in zip(rec["relevant_clip_ids"], rec["saliency_scores"]) if start // 2 <= cid < end // 2]
    assert max(rows[0], rows[-1]) < max(rows[2:-2])  # edges lower than the middle


def test_deterministic(demo_dirs):
    a, b = demo_dirs
    for name in ("train.jsonl", "val.jsonl", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for video in (a / "videos").iterdir():  # same ffmpeg build here: same bytes
        assert video.read_bytes() == (b / "videos" / video.name).read_bytes()


def test_rerun_does_nothing(demo_dirs):
    root = demo_dirs[0]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    make_demo(root, seed=0, n_videos=N, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_resume_regenerates_only_missing_video(demo_dirs, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(demo_dirs[0], root)
    lost = root / "videos" / "demo_00003.mp4"
    lost.unlink()
    (root / "videos" / "demo_00003.partial.mp4").write_bytes(b"half a video")  # a killed run's leftover
    kept = {p: p.stat().st_mtime_ns for p in (root / "videos").glob("demo_0000[!3].mp4")}
    make_demo(root, seed=0, n_videos=N, progress=False)
    assert lost.read_bytes() == (demo_dirs[0] / "videos" / lost.name).read_bytes()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_other_seed_in_same_folder_is_refused(demo_dirs, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(demo_dirs[0], root)
    with pytest.raises(ValueError, match=r"manifest\.json records seed 0.*use another folder"):
        make_demo(root, seed=1, n_videos=N, progress=False)


def test_a_folder_that_is_not_a_demo_folder_is_never_written(tmp_path):
    """The demo is generated beside the cache (cache/demo/): a folder there that r2 did not make (no manifest.json)
    keeps its files, e.g. the user's own train.jsonl; a file there is refused too."""
    root = tmp_path / "demo"
    root.mkdir()
    (root / "train.jsonl").write_text("mine\n")
    with pytest.raises(ValueError, match=r"holds files but no manifest\.json, so it is not a demo folder r2 made"):
        make_demo(root, seed=0, n_videos=2, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["train.jsonl"] and (root / "train.jsonl").read_text() == "mine\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file: is a file; the demo dataset needs a folder there"):
        make_demo(tmp_path / "file", seed=0, n_videos=2, progress=False)


def test_videos_decode_to_duration_over_two_frames_and_show_their_concepts(demo_dirs):
    root = demo_dirs[0]
    for i in range(N):
        video = demo_video(0, i)
        out = decode(root / "videos" / f"{video.vid}.mp4", 0.5)
        assert out.frames.shape[0] == video.duration // 2 and out.duration == pytest.approx(video.duration)
        start = 0
        for concept, seconds, _ in video.segments:
            clip_frames = out.frames[start // 2 : (start + seconds) // 2].astype(float)  # (n, 224, 224, 3)
            if concept in SOLID_RGB:
                assert np.abs(clip_frames.mean(axis=(1, 2)) - SOLID_RGB[concept]).max() < 12
            else:
                assert clip_frames.std(axis=(1, 2)).mean() > 20  # a textured source, not a flat field
            start += seconds


def test_video_with_two_identical_segments(tmp_path):
    """Video 88 of seed 0 shows the same 6 s red segment twice: both copies must be encoded."""
    from r2.demo import _write_video

    video = demo_video(0, 88)
    assert [(c, s) for c, s, _ in video.segments].count(("red", 6)) == 2
    _write_video(video, tmp_path)
    out = decode(tmp_path / f"{video.vid}.mp4", 0.5)
    assert out.frames.shape[0] == video.duration // 2
    for start, end in video.windows("red"):
        red = out.frames[start // 2 : end // 2].astype(float).mean(axis=(1, 2))  # (n, 3)
        assert np.abs(red - SOLID_RGB["red"]).max() < 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{video.vid}.mp4"]  # no partial file left behind


@pytest.mark.slow
def test_readme_offline_first_command_trains_the_demo_past_r1_at_05_of_60(tmp_path):
    """The README's offline first command, run as written in a fresh folder: generate and extract the default demo
    with the tiny CLIP, train with the demo's defaults; the best epoch's val R1@0.5 is >= 60 (a few minutes)."""
    command = "python extract/run.py --dataset demo --clip tiny && python train/fit.py --cache cache/demo.h5"
    assert command in (REPO / "README.md").read_text()
    for step in command.split(" && "):
        _, script, *args = step.split()
        done = subprocess.run([sys.executable, str(REPO / script), *args, "--no-progress"], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "cache" / "demo" / "manifest.json").read_text())
    assert manifest["n_videos"] == DEFAULT_VIDEOS
    metrics = json.loads((tmp_path / "runs" / "demo-latest" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["MR-full-R1@0.5"] >= 60, metrics
