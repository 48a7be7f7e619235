"""The cache format: round trips, resumable shards, kills at random moments, locks, fingerprints."""
import fcntl
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from r2.cache import Cache, CacheError, ShardLockedError, ShardWriter, parse_shard, parts_dir, write_entry

FP = {"clip": "tiny", "clip_sha256": "abc", "layers": [1, 2], "fps": 0.5}
DIMS = {"video_dim": 8, "query_dim": 4, "tokens": 3, "layers": [1, 2]}


def video_feats(i: int, t: int) -> np.ndarray:
    """Deterministic content per video, so a reader can check every value it gets back."""
    return (np.arange(t * 2 * 3 * 8).reshape(t, 2, 3, 8) % 251 + i).astype(np.float16)


def make_entry(tmp_path, annotations=None):
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="demo", fingerprint=FP, dims=DIMS, annotations=annotations or {"train": []})
    return entry


def test_round_trip_with_unsafe_ids_and_texts(tmp_path):
    records = [{"qid": 7, "query": "q", "vid": "a/../b.c d"}]
    entry = make_entry(tmp_path, {"train": records, "val": []})
    ids = ["a/../b.c d", "/abs/path", "ünïcode 🎬", "x" * 300]
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        for i, vid in enumerate(ids):
            w.add_video(vid, video_feats(i, 3 + i), np.arange(3 + i) * 2.0, 2.0 * (3 + i), 0.5)
        w.add_query("a man 🎬 opens/closes the fridge", np.full((5, 2, 4), 0.25))
    cache = Cache(entry)
    assert sorted(cache.videos) == sorted(ids)
    for i, vid in enumerate(ids):
        np.testing.assert_array_equal(cache.video(vid), video_feats(i, 3 + i))
        np.testing.assert_array_equal(cache.times(vid), np.arange(3 + i) * 2.0)
        assert cache.video_info(vid) == (2.0 * (3 + i), 0.5)
        assert cache.num_frames(vid) == 3 + i
    q = cache.query("a man 🎬 opens/closes the fridge")
    assert q.shape == (5, 2, 4) and q.dtype == np.float16 and np.all(q == 0.25)
    assert cache.records("train") == records
    assert cache.splits == ["train", "val"]
    with pytest.raises(CacheError, match="no split 'test'"):
        cache.records("test")


def test_bytes_per_frame_close_to_raw(tmp_path):
    # a realistic ViT-B/32 K=4 layout: raw is 4 x 50 x 768 x 2 bytes per frame
    dims = {"video_dim": 768, "query_dim": 512, "tokens": 50, "layers": [9, 10, 11, 12]}
    entry = tmp_path / "big.h5"
    write_entry(entry, dataset="demo", fingerprint=FP, dims=dims, annotations={"train": []})
    frames = 0
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=dims) as w:
        for i in range(6):
            w.add_video(f"v{i}", np.zeros((20, 4, 50, 768), np.float16), np.arange(20) * 2.0, 40.0, 0.5)
            frames += 20
    size = sum(p.stat().st_size for p in parts_dir(entry).glob("*.h5"))
    raw = frames * 4 * 50 * 768 * 2
    assert raw <= size <= 1.01 * raw


def test_resume_skips_finished_and_reopens_segment(tmp_path):
    entry = make_entry(tmp_path)
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        w.add_video("a", video_feats(0, 2), np.arange(2.0), 4.0, 0.5)
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        assert w.videos == {"a"}
        w.add_video("b", video_feats(1, 2), np.arange(2.0), 4.0, 0.5)
    assert len(list(parts_dir(entry).glob("*.h5"))) == 1  # a cleanly closed segment is appended to
    assert sorted(Cache(entry).videos) == ["a", "b"]


def test_second_writer_of_a_shard_refuses(tmp_path):
    entry = make_entry(tmp_path)
    with ShardWriter(entry, shard=(0, 2), fingerprint=FP, dims=DIMS):
        with pytest.raises(ShardLockedError, match="being written by pid"):
            ShardWriter(entry, shard=(0, 2), fingerprint=FP, dims=DIMS)
        with ShardWriter(entry, shard=(1, 2), fingerprint=FP, dims=DIMS) as other:  # other shards are free
            other.add_video("z", video_feats(0, 1), np.zeros(1), 2.0, 0.5)


def test_a_readers_momentary_lock_probe_does_not_refuse_a_writer(tmp_path):
    """A reader that cannot open a segment probes the shard lock (shared, for an instant) to name its writer; a
    writer starting in that instant waits it out instead of reporting a second writer."""
    entry = make_entry(tmp_path)
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        w.add_video("a", video_feats(0, 2), np.arange(2.0), 4.0, 0.5)
    [lock] = parts_dir(entry).glob("*.lock")
    with open(lock) as probe:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        release = threading.Timer(0.05, fcntl.flock, (probe, fcntl.LOCK_UN))
        release.start()
        try:
            with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
                w.add_video("b", video_feats(1, 2), np.arange(2.0), 4.0, 0.5)
        finally:
            release.join()
    assert sorted(Cache(entry).videos) == ["a", "b"]


def test_other_settings_are_refused(tmp_path):
    entry = make_entry(tmp_path)
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        w.add_video("a", video_feats(0, 2), np.arange(2.0), 4.0, 0.5)
    other = {**FP, "layers": [1, 2, 3]}
    with pytest.raises(CacheError, match=r"other settings \(layers: \[1, 2, 3\] vs \[1, 2\]\)|other settings"):
        write_entry(entry, dataset="demo", fingerprint=other, dims=DIMS, annotations={"train": []})
    with pytest.raises(CacheError, match="other settings"):
        ShardWriter(entry, shard=(0, 1), fingerprint=other, dims=DIMS)


def test_bad_shapes_and_shard_text():
    with pytest.raises(ValueError, match="I/N"):
        parse_shard("3")
    with pytest.raises(ValueError, match="0 <= I < N"):
        parse_shard("4/4")
    assert parse_shard("1/4") == (1, 4)


def test_not_a_cache(tmp_path):
    (tmp_path / "junk.h5").write_text("hello")
    with pytest.raises(CacheError, match="junk.h5: not a readable HDF5 file"):
        Cache(tmp_path / "junk.h5")
    with pytest.raises(CacheError, match="no such cache"):
        Cache(tmp_path / "missing.h5")


WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, {repo!r})
    from r2.cache import ShardWriter
    from tests.test_cache import FP, DIMS, video_feats
    with ShardWriter({entry!r}, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        for i in range(400):
            vid = f"v{{i:03d}}"
            if vid not in w.videos:
                w.add_video(vid, video_feats(i, 5 + i % 7), np.arange(5 + i % 7) * 2.0, 10.0, 0.5)
            if f"query {{i}}" not in w.queries:
                w.add_query(f"query {{i}}", np.full((3 + i % 4, 2, 4), i % 100, dtype=np.float16))
            time.sleep(float(sys.argv[1]))  # slow the first runs down so that every kill lands mid-way
""")


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    """Kill the writer (SIGKILL) several times mid-write, resume each time: every video exactly once, intact."""
    repo = str(Path(__file__).resolve().parents[1])
    entry = make_entry(tmp_path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=repo, entry=str(entry)))
    rng = np.random.default_rng(0)
    seen_counts = []
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(script), "0.004"], cwd=repo)
        deadline = time.time() + 60
        while time.time() < deadline and not list(parts_dir(entry).glob("*.h5")):  # wait until it writes
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cache = Cache(entry)  # readable after every kill
        seen_counts.append(len(cache.videos))
        assert not cache.duplicates
    assert seen_counts == sorted(seen_counts) and seen_counts[-1] < 400  # never lost; every kill was mid-way
    subprocess.run([sys.executable, str(script), "0"], cwd=repo, check=True, timeout=120)
    cache = Cache(entry)
    assert sorted(cache.videos) == [f"v{i:03d}" for i in range(400)]
    assert not cache.duplicates
    for i in range(400):
        np.testing.assert_array_equal(cache.video(f"v{i:03d}"), video_feats(i, 5 + i % 7))
        q = cache.query(f"query {i}")
        assert q.shape == (3 + i % 4, 2, 4) and np.all(q == i % 100)
    assert len(list(parts_dir(entry).glob("*.h5"))) >= 2  # killed segments are left as they are, read-only
