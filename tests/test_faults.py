"""Faults at scale, through the real CLIs: extraction killed (SIGKILL) and resumed, training killed mid-epoch and
resumed, a full disk, two extractors on one shard, a sharded extraction merged and its entry rebuilt."""
import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from r2.cache import Cache, CacheError, parts_dir, read_segment_index
from r2.verify import verify
from tests.helpers import extract_cmd, load_cli, make_video, record, run, start, write_jsonl

pytestmark = pytest.mark.slow  # extractions killed and resumed, a disk filled, shards raced (about 30 s)

# (lavfi source, seconds, query): 8 short videos, 5-7 frames each at 0.5 fps; 6 train, 2 val
VIDEOS = [
    ("color=c=red", 10, "a red screen"), ("color=c=blue", 12, "a blue screen"),
    ("testsrc", 14, "a test pattern with a counter"), ("smptebars", 10, "colour bars"),
    ("mandelbrot", 12, "a fractal zooming in"), ("color=c=yellow", 14, "a yellow screen"),
    ("rgbtestsrc", 10, "red green and blue stripes"), ("color=c=lime", 12, "a green screen"),
]


def assert_same_features(cache: Cache, reference: Cache):
    assert sorted(cache.videos) == sorted(reference.videos) and sorted(cache.texts) == sorted(reference.texts)
    for vid in reference.videos:
        np.testing.assert_array_equal(cache.video(vid), reference.video(vid), err_msg=vid)
        np.testing.assert_array_equal(cache.times(vid), reference.times(vid))
        assert cache.video_info(vid) == reference.video_info(vid)
    for text in reference.texts:  # texts run in length-sorted batches cut to their longest member, so a text's
        # features move by an fp16 ulp with the batch it shared (another shard split, another batch)
        np.testing.assert_allclose(cache.query(text).astype(np.float32), reference.query(text).astype(np.float32),
                                   rtol=4e-3, atol=2e-3, err_msg=text)


def committed_videos(entry: Path) -> int:
    """Videos committed so far by a running extractor. A segment the writer is opening (before it turns SWMR on)
    is locked for a moment: read it again."""
    while True:
        try:
            return sum(len(read_segment_index(p).videos) for p in parts_dir(entry).glob("shard-*.h5"))
        except CacheError:
            time.sleep(0.01)


def wait_for_lock(entry: Path, shard: str, proc: subprocess.Popen, timeout: float = 120):
    """Until `proc` holds the shard's lock (its writer is open), or fail if it exits first."""
    i, n = (int(x) for x in shard.split("/"))
    lock = parts_dir(entry) / f"shard-{i:05d}-of-{n:05d}.lock"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.exists() and lock.read_text().startswith(f"pid {proc.pid} "):
            return
        if proc.poll() is not None:
            pytest.fail(f"extractor exited ({proc.returncode}) before opening its shard: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"extractor did not open {lock} within {timeout} s")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "videos").mkdir()
    records = []
    for i, (source, seconds, query) in enumerate(VIDEOS):
        make_video(root / "videos" / f"v{i}.mp4", source, seconds)
        records.append(record(i, f"v{i}", query, seconds))
    write_jsonl(root / "train.jsonl", records[:6])
    write_jsonl(root / "val.jsonl", records[6:])
    return root


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory) -> Path:
    """The reference cache, made the documented multi-process way: shards 0/2 and 1/2 at once, then merge."""
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    procs = [start(extract_cmd(corpus, out, "--shard", f"{i}/2")) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    done = run([sys.executable, "extract/merge.py", "--out", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "videos 8/8 | queries 8/8" in done.stdout and "OK: complete and valid" in done.stdout
    return out


# ----------------------------------------------------------------------------------------------- extraction


def test_sharded_extraction_is_complete_and_disjoint(clean):
    report = verify(clean)
    assert report.exit_code == 0, report.lines()
    assert [s.shard for s in report.shards] == ["0/2", "1/2"]
    assert [(s.videos, s.expected_videos) for s in report.shards] == [(4, 4), (4, 4)]
    cache = Cache(clean)
    assert not cache.duplicates and len(cache.segments) == 2
    assert {cache.num_frames(f"v{i}") for i in range(8)} == {5, 6, 7}  # 10, 12, 14 s at 0.5 fps


def test_merge_rebuilds_a_lost_entry_and_reports_a_missing_shard(corpus, clean, tmp_path, capsys):
    """Shards extracted on machines that do not share the cache folder: copy the parts, rebuild the entry."""
    entry = tmp_path / "copied.h5"
    shutil.copytree(parts_dir(clean), parts_dir(entry))
    merge_cli = load_cli("extract/merge.py")

    def merge(*args: str) -> int:
        return merge_cli.main(merge_cli.get_args_parser().parse_args(["--out", str(entry), *args]))

    assert merge() == 2 and "no entry file; pass --dataset" in capsys.readouterr().err
    rebuild = ["--dataset", "custom", "--annotations", str(corpus / "train.jsonl"), str(corpus / "val.jsonl")]
    done = run([sys.executable, "extract/merge.py", "--out", str(entry), *rebuild])  # the CLI itself, once
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_features(Cache(entry), Cache(clean))
    assert Cache(entry).records("val") == Cache(clean).records("val")

    # one shard's machine has not delivered yet: report it, by shard and by video
    for seg in parts_dir(entry).glob("shard-00001-of-00002.*.h5"):
        seg.unlink()
    entry.unlink()
    assert merge(*rebuild) == 1
    out = capsys.readouterr().out
    assert "shard 1/2: never run (4 videos): run the extraction with --shard 1/2" in out
    assert "valid but incomplete" in out
    assert len(Cache(entry).videos) == 4



def test_extraction_killed_at_random_points_then_resumed(corpus, clean, tmp_path):
    """SIGKILL the extractor three times at random moments while it writes, resume each time: every video exactly
    once, the cache verifies after every kill, and the features equal an uninterrupted extraction's."""
    out = tmp_path / "killed.h5"
    rng = np.random.default_rng(7)
    counts = []
    for _ in range(3):
        proc = start(extract_cmd(corpus, out), stdout=subprocess.DEVNULL)
        try:
            wait_for_lock(out, "0/1", proc)
            target = min(committed_videos(out) + int(rng.integers(0, 3)), 5)  # always >= 3 videos left
            while committed_videos(out) < target and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0, 0.03)))
            assert proc.poll() is None, "the extractor finished before the kill: the test did not test a kill"
        finally:
            proc.kill()
            proc.wait()
        report = verify(out)
        assert report.exit_code in (0, 1) and not report.errors, report.lines()  # valid (complete if killed on exit)
        counts.append(report.videos)
    assert min(counts) < 8  # at least one kill landed mid-extraction
    done = run(extract_cmd(corpus, out))
    assert done.returncode == 0, done.stderr
    assert counts == sorted(counts)  # committed work survives every kill
    report = verify(out)
    assert report.exit_code == 0, report.lines()
    assert report.videos == 8 and not Cache(out).duplicates
    assert_same_features(Cache(out), Cache(clean))


def test_second_extractor_on_the_same_shard_refuses(corpus, clean, tmp_path):
    out = tmp_path / "twice.h5"
    first = start(extract_cmd(corpus, out))
    try:
        wait_for_lock(out, "0/1", first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-write while the second one starts
        second = run(extract_cmd(corpus, out))
        first.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        assert f"this shard is being written by pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    assert verify(out).exit_code == 0
    assert_same_features(Cache(out), Cache(clean))


def _file_size_limit(limit: int):
    def apply():  # in the child, before exec: writes past `limit` bytes fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_is_a_clear_error_and_the_cache_stays_intact(corpus, clean, tmp_path):
    out = tmp_path / "full.h5"
    frame_bytes = int(np.prod(Cache(clean).video("v0").shape[1:])) * 2
    limit = 18 * frame_bytes  # room for about three videos in the segment
    done = run(extract_cmd(corpus, out), preexec_fn=_file_size_limit(limit))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "disk full or file size limit" in done.stderr and "committed in this shard are intact" in done.stderr
    report = verify(out)
    assert report.exit_code == 1 and not report.errors and 0 < report.videos < 8, report.lines()
    partial = Cache(out)
    for vid in partial.videos:  # what was committed is exactly what an uninterrupted run writes
        np.testing.assert_array_equal(partial.video(vid), Cache(clean).video(vid))
    resumed = run(extract_cmd(corpus, out))
    assert resumed.returncode == 0, resumed.stderr
    assert verify(out).exit_code == 0
    assert_same_features(Cache(out), Cache(clean))


# ----------------------------------------------------------------------------------------------- training


def _fit_cmd(cache: Path, out: Path) -> list[str]:
    return [sys.executable, "train/fit.py", "--cache", str(cache), "--out", str(out), "--epochs", "3",
            "--batch-size", "2", "--passes", "6", "--hidden", "64", "--workers", "0", "--seed", "3",
            "--no-progress"]


def _log_without_times(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_training_killed_mid_epoch_then_resumed_matches_uninterrupted(clean, tmp_path):
    straight = start(_fit_cmd(clean, tmp_path / "straight"))
    killed_dir = tmp_path / "killed"
    victim = start(_fit_cmd(clean, killed_dir), stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (killed_dir / "last.pt").exists():  # written once epoch 1 is done: epoch 2 starts now
            assert victim.poll() is None and time.time() < deadline, victim.stderr.read()
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        victim.kill()
        victim.wait()
    assert len(_log_without_times(killed_dir)) == 1, "the kill did not land in epoch 2"
    resumed = run([sys.executable, "train/fit.py", "--cache", str(clean), "--resume", str(killed_dir),
                   "--workers", "0", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    assert _log_without_times(killed_dir) == _log_without_times(tmp_path / "straight")
    assert len(_log_without_times(killed_dir)) == 3
    assert (json.loads((killed_dir / "metrics.json").read_text())
            == json.loads((tmp_path / "straight" / "metrics.json").read_text()))
    assert os.path.getsize(killed_dir / "best.pt") > 0
