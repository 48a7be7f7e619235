"""Reliability round 2 on annotations and datasets: work is bounded by the video, never by an annotated duration,
and records left out of training are counted and explained."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from r2 import datasets
from r2.cache import Cache, ShardWriter, write_entry
from r2.data import GroundingDataset

REPO = Path(__file__).resolve().parents[1]

# Parses a record annotated 1e12 s long (saliency scores, a window to its end) under a 1.5 GB address-space limit
# and builds its targets for the 7 frames its video has: bounded by the video, it needs a few MB.
BOUNDED = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
    from r2 import datasets
    records = datasets.load_split("custom", "train", annotations=sys.argv[1])
    again = datasets.Record.from_json(json.loads(json.dumps(records[0].to_json())))
    assert again == records[0] and len(again.clip_scores) == 500_000_000_000
    try:
        datasets.saliency_target("custom", again, 7)
    except ValueError as e:
        print(e)
    scores = datasets.saliency_target("custom", records[1], 7)
    print("target", scores.tolist())
""")


def test_a_huge_annotated_duration_costs_what_the_video_costs(tmp_path):
    huge = {"qid": 0, "query": "q", "vid": "v", "duration": 1e12, "relevant_windows": [[0, 1e12]],
            "relevant_clip_ids": [0, 3], "saliency_scores": [[4, 4, 4], [2, 2, 2]]}
    fine = {**huge, "qid": 1, "duration": 14.0, "relevant_windows": [[0, 8]]}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(huge) + "\n" + json.dumps(fine) + "\n")
    done = subprocess.run([sys.executable, "-c", BOUNDED, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "7 frames but 500000000000 annotated clips (duration 1000000000000.0 s at 0.5 fps); fix the duration" \
        in lines[0]
    assert lines[1] == "target " + str([1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0])


FP = {"clip": "tiny", "clip_sha256": "abc", "layers": [1], "fps": 0.5}
DIMS = {"video_dim": 8, "query_dim": 4, "tokens": 3, "layers": [1]}


def test_short_training_videos_are_counted_and_explained(tmp_path):
    lengths = {"short": 4.0, "long": 12.0, "other": 10.0}
    records = [datasets.Record(qid=i, query=f"q{vid}", vid=vid, duration=d, fps=0.5, windows=[[0, 2]],
                               clip_scores=None).to_json() for i, (vid, d) in enumerate(lengths.items())]
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": records, "val": records})
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        for vid, d in lengths.items():
            n = int(d * 0.5)
            w.add_video(vid, np.ones((n, 1, 3, 8), np.float16), np.arange(n) * 2.0, d, 0.5)
            w.add_query(f"q{vid}", np.ones((3, 1, 4), np.float16))
    cache = Cache(entry)
    with pytest.warns(UserWarning, match=r"split 'train': 1 of 3 records left out of training: their videos are "
                                         r"shorter than 5 s \(SPEC §4\), e.g. 'short' \(4 s\)"):
        train = GroundingDataset(cache, "train", train=True)
    assert len(train) == 2 and train.short == 1
    evaluation = GroundingDataset(cache, "val", train=False)
    assert len(evaluation) == 3 and evaluation.short == 0
