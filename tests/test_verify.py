"""r2.verify on hand-built caches: every check fires on the damage it is for, and only on it."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from r2.cache import Cache, CacheError, ShardWriter, parts_dir, read_segment_index, write_entry
from r2.cache import shard_items
from r2.verify import main, merge, verify

FP = {"clip": "tiny", "clip_sha256": "abc", "layers": [1, 2], "fps": 0.5}
DIMS = {"video_dim": 8, "query_dim": 4, "tokens": 3, "layers": [1, 2]}
VIDS = ["a", "b/../c", "d e.f", "/abs", "ünï 🎬", "v5"]
TEXTS = ["q0", "q1", "q 🎬 2"]


def feats(i: int, t: int) -> np.ndarray:
    return (np.arange(t * 2 * 3 * 8).reshape(t, 2, 3, 8) % 97 / 10 + i).astype(np.float16)  # (T, K, P+1, Dv)


def records() -> list[dict]:
    return [{"qid": i, "query": TEXTS[i % 3], "vid": vid, "duration": 2.0 * (2 + i), "fps": 0.5,
             "relevant_windows": [[0, 2]]} for i, vid in enumerate(VIDS)]  # durations as `build` extracts them


def build(tmp_path, shards=2, skip=(), fp=FP):
    """A cache of VIDS split the extractor's way over `shards` shards; `skip` leaves videos out."""
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": records()})
    for i in range(shards):
        with ShardWriter(entry, shard=(i, shards), fingerprint=fp, dims=DIMS) as w:
            for vid in shard_items(VIDS, (i, shards)):
                if vid not in skip:
                    k = VIDS.index(vid)
                    w.add_video(vid, feats(k, 2 + k), np.arange(2 + k) * 2.0, 2.0 * (2 + k), 0.5)
            for text in shard_items(TEXTS, (i, shards)):
                w.add_query(text, np.full((2 + TEXTS.index(text), 2, 4), 0.5, np.float16))
    return entry


def test_complete_cache_with_unsafe_ids(tmp_path):
    entry = build(tmp_path)
    report = verify(entry)
    assert report.exit_code == 0 and not report.errors and not report.notes, report.lines()
    frames = sum(2 + k for k in range(len(VIDS)))
    assert (report.videos, report.queries, report.frames, report.segments) == (6, 3, frames, 2)
    assert report.feature_bytes == frames * 2 * 3 * 8 * 2 + (2 + 3 + 4) * 2 * 4 * 2
    assert report.lines()[-1] == "OK: complete and valid"
    # ids are data, never HDF5 keys: each segment holds exactly the eight datasets, whatever the ids
    for seg in parts_dir(entry).glob("*.h5"):
        with h5py.File(seg, "r") as f:
            assert sorted(f) == sorted(["video_feats", "video_times", "video_index", "video_info", "video_ids",
                                        "query_feats", "query_index", "query_texts"])
    cache = Cache(entry)
    for k, vid in enumerate(VIDS):
        np.testing.assert_array_equal(cache.video(vid), feats(k, 2 + k))


def test_missing_and_failed_videos_are_named_per_shard(tmp_path):
    missing, failed = shard_items(VIDS, (1, 2))[:2]
    entry = build(tmp_path, skip=(missing, failed))
    with open(parts_dir(entry) / "failures.jsonl", "w") as out:
        out.write(json.dumps({"shard": "1/2", "vid": failed, "error": "VideoDecodeError: cannot decode"}) + "\n")
        out.write('{"shard": "1/2", "vid": "cut by a ki')  # a line cut by a kill mid-append is skipped
    report = verify(entry)
    assert report.exit_code == 1 and not report.errors
    s0, s1 = report.shards
    assert s0.complete and (s1.videos, s1.expected_videos, s1.failed, s1.missing) == (1, 3, [failed], [missing])
    text = "\n".join(report.lines())
    assert f"shard 1/2: incomplete: 1/3 videos; 1 failed (failures.jsonl; a re-run retries them): {failed!r}" in text
    assert f"1 not extracted yet: {missing!r}; re-run with --shard 1/2" in text
    assert "shard 0/2" not in text


def test_a_shard_never_run_and_an_empty_cache(tmp_path):
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": records()})
    report = verify(entry)
    assert report.exit_code == 1 and report.shards[0].missing == sorted(VIDS)
    assert "shard 0/1: never run (6 videos)" in "\n".join(report.lines())
    with ShardWriter(entry, shard=(2, 3), fingerprint=FP, dims=DIMS):
        pass
    report = verify(entry)
    assert [s.shard for s in report.shards] == ["0/3", "1/3", "2/3"]
    assert [bool(s.segments) for s in report.shards] == [False, False, True]


def test_non_finite_features_are_found_and_named(tmp_path):
    entry = build(tmp_path)
    bad = VIDS[3]
    seg = next(p for p in parts_dir(entry).glob("*.h5") if bad in read_segment_index(p).videos)
    first = read_segment_index(seg).videos[bad][0]
    with h5py.File(seg, "r+") as f:
        f["video_feats"][first + 1, 0, 2, 5] = np.nan
    report = verify(entry)
    assert report.exit_code == 2
    assert len(report.errors) == 1 and "1 video_feats rows hold NaN/inf, in videos '/abs'" in report.errors[0]
    assert verify(entry, values=False).exit_code == 0  # --no-values trades this scan for speed


def test_segment_from_other_settings(tmp_path):
    entry = build(tmp_path, fp={**FP, "clip_sha256": "other"})  # both shards written with another checkpoint
    report = verify(entry)
    assert report.exit_code == 2 and len(report.errors) == 2
    assert "was made with other settings than x.h5 (clip_sha256: 'other' vs 'abc')" in report.errors[0]


def test_mixed_shard_counts_and_duplicates(tmp_path):
    entry = build(tmp_path, shards=2)
    with ShardWriter(entry, shard=(0, 3), fingerprint=FP, dims=DIMS) as w:  # a run with another --shard N
        w.add_video("a", feats(0, 2), np.arange(2) * 2.0, 4.0, 0.5)
    report = verify(entry)
    assert report.exit_code == 2
    assert any("different shard counts (2 of N=2, 1 of N=3)" in e for e in report.errors)
    assert any("1 videos are stored in more than one segment, e.g. 'a'" in e for e in report.errors)


def test_damaged_segments(tmp_path):
    entry = build(tmp_path)
    seg = sorted(parts_dir(entry).glob("*.h5"))[0]
    with h5py.File(seg, "r+") as f:
        idx = f["video_index"][...]
        idx[-1, 3] += 100  # the last video claims rows that do not exist
        f["video_index"][...] = idx
    (parts_dir(entry) / "shard-00001-of-00002.001.h5").write_bytes(b"\x89HDF\r\n" + bytes(200))  # not HDF5
    (parts_dir(entry) / "shard-notes.h5").write_text("x")  # would be globbed by readers
    report = verify(entry)
    errors = "\n".join(report.errors)
    assert report.exit_code == 2 and len(report.errors) == 4, errors
    for data in ("video_feats", "video_times"):
        assert f"{seg.name}: video index row {len(idx) - 1} points to {data} rows" in errors
    assert "shard-00001-of-00002.001.h5: not an HDF5 segment" in errors
    assert "shard-notes.h5: not a segment name" in errors


def test_wrong_dtype_or_shape(tmp_path):
    entry = build(tmp_path, shards=1)
    seg = next(parts_dir(entry).glob("*.h5"))
    with h5py.File(seg, "r+") as f:
        del f["video_times"]
        f.create_dataset("video_times", data=np.zeros(3, np.float32), maxshape=(None,))
        del f["query_feats"]
        f.create_dataset("query_feats", data=np.zeros((9, 2, 5), np.float16), maxshape=(None, 2, 5))
    errors = verify(entry).errors
    assert "video_times is float32 (N, ), expected float64 (N, )" in errors[0]
    assert "query_feats is float16 (N, 2, 5), expected float16 (N, 2, 4)" in errors[1]


def test_rows_left_by_a_killed_writer_are_a_note_not_an_error(tmp_path):
    entry = build(tmp_path, shards=1)
    seg = next(parts_dir(entry).glob("*.h5"))
    with h5py.File(seg, "r+") as f:  # rows appended, index row never written: what a kill leaves
        f["video_feats"].resize(f["video_feats"].shape[0] + 4, axis=0)
    (parts_dir(entry) / "shard-00000-of-00001.001.h5.tmp").write_bytes(b"")
    report = verify(entry)
    assert report.exit_code == 0, report.lines()
    assert any("4 feature rows past the last committed item" in n for n in report.notes)
    assert any("001.h5.tmp: a segment whose creation was interrupted" in n for n in report.notes)


def test_not_a_cache(tmp_path, capsys):
    assert "no such cache" in verify(tmp_path / "nope.h5").errors[0]
    (tmp_path / "text.h5").write_text("hello")
    assert verify(tmp_path / "text.h5").exit_code == 2
    assert main(["info", str(tmp_path / "text.h5")]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err


def test_info_and_cli(tmp_path, capsys):
    entry = build(tmp_path)
    assert main(["info", str(entry)]) == 0
    out = capsys.readouterr().out
    assert "dataset custom" in out and "splits: train (6 records)" in out
    assert "annotated: 6 videos, 3 query texts" in out and '  clip_sha256: "abc"' in out
    assert "segment shard-00000-of-00002.000.h5: 3 videos" in out and "segment shard-00001-of-00002.000.h5" in out
    assert main(["verify", str(entry)]) == 0
    assert "videos 6/6 | queries 3/3" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "r2.verify", "verify", "--no-values", str(entry)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "values not scanned" in done.stdout


def test_merge_rebuilds_the_entry_from_the_shards(tmp_path):
    from r2.datasets import Record
    entry = build(tmp_path)
    entry.unlink()
    with pytest.raises(CacheError, match="no entry file; pass --dataset"):
        merge(entry)
    annotations = {"train": [Record.from_json(r) for r in records()]}
    report = merge(entry, "custom", annotations)
    assert report.exit_code == 0 and Cache(entry).fingerprint == FP
    with ShardWriter(entry, shard=(0, 3), fingerprint={**FP, "fps": 1.0}, dims=DIMS):
        pass
    with pytest.raises(CacheError, match=r"were made with other settings \(fps: (0.5 vs 1.0|1.0 vs 0.5)\)"):
        merge(entry, "custom", annotations)
