"""Loaders read every real annotation file end to end; bad input fails at load time with FILE:LINE; SPEC §4 targets."""
import collections
import json
import warnings

import numpy as np
import pytest

from r2.datasets import (DATASETS, Record, data_root, dataset_info, load_split, saliency_target,
                         video_file)

COUNTS = {
    ("qvhighlights", "train"): 7218, ("qvhighlights", "val"): 1550, ("qvhighlights", "test"): 1542,
    ("charades", "train"): 12404, ("charades", "test"): 3720,
    ("tacos", "train"): 9790, ("tacos", "val"): 4436, ("tacos", "test"): 4001,
    ("ego4d", "train"): 11291, ("ego4d", "val"): 3874,
    ("youtube", "train"): 235, ("youtube", "val"): 157,
    ("tvsum", "train"): 40, ("tvsum", "val"): 10,
}


@pytest.mark.parametrize("name,split", sorted(COUNTS))
def test_every_real_split_loads_with_readme_counts(data_root, name, split):
    records = load_split(name, split, root=data_root)
    assert len(records) == COUNTS[(name, split)]
    info = dataset_info(name)
    for r in records:
        assert r.duration > 0 and r.fps > 0 and r.query and r.vid
        if info.saliency in ("youtube", "tvsum"):
            assert r.domain in info.domains and r.qid == r.vid and r.clip_scores
        else:
            assert r.windows and r.fps == info.fps
    if name == "qvhighlights":
        assert all(len(r.clip_scores) == int(r.duration / 2) and len(r.clip_scores[0]) == 3 for r in records)


def test_youtube_and_tvsum_domains(data_root):
    val = load_split("youtube", "val", root=data_root)
    assert collections.Counter(r.domain for r in val) == {
        "dog": 17, "gymnastics": 26, "parkour": 11, "skating": 10, "skiing": 50, "surfing": 43}
    dog = load_split("youtube", "val", root=data_root, domain="dog")
    assert len(dog) == 17 and {r.domain for r in dog} == {"dog"}
    r = dog[0]
    assert len(r.clip_scores) == round(r.fps * r.duration)  # one frame per annotated clip
    tv = load_split("tvsum", "val", root=data_root, domain="BK")
    assert [r.vid for r in tv] == ["Se3oxnaPsz0"] and len(tv[0].clip_scores[0]) == 20 and tv[0].fps == 0.5
    assert collections.Counter(r.domain for r in load_split("tvsum", "train", root=data_root)) == \
        {d: 4 for d in dataset_info("tvsum").domains}
    with pytest.raises(ValueError, match="no domain 'cats'"):
        load_split("tvsum", "val", root=data_root, domain="cats")


def test_qvhighlights_record_json_round_trip(data_root):
    raw = [json.loads(line) for line in open(data_root / "qvhighlights" / "highlight_val_release.jsonl")][:200]
    for r, d in zip(load_split("qvhighlights", "val", root=data_root), raw):
        j = r.to_json()
        assert (j["qid"], j["relevant_windows"], j["relevant_clip_ids"], j["saliency_scores"]) == \
            (d["qid"], d["relevant_windows"], d["relevant_clip_ids"], d["saliency_scores"])
        assert Record.from_json(json.loads(json.dumps(j))) == r
    tv = load_split("tvsum", "val", root=data_root)[0]
    assert Record.from_json(tv.to_json()) == tv


def test_ego4d_quirky_windows_are_kept_as_written(data_root):
    records = load_split("ego4d", "val", root=data_root)
    assert sum(w[0] == w[1] for r in records for w in r.windows) == 341
    assert sum(w[1] > r.duration for r in records for w in r.windows) > 0


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"qid": 1, "query": "a dog", "vid": "v1", "duration": 20, "relevant_windows": [[2, 6]]}


def test_bad_lines_fail_with_file_and_line(tmp_path):
    cases = [("{not json", "not valid JSON"), ({**GOOD, "qid": 2, "query": None}, "field 'query'"),
             ({k: v for k, v in GOOD.items() if k != "duration"} | {"qid": 2}, "field 'duration' missing"),
             ({**GOOD, "qid": 2, "relevant_windows": [[1, 2, 3]]}, "relevant_windows"),
             ({**GOOD, "qid": 2, "relevant_windows": [[1, float("nan")]]}, "relevant_windows"),
             ({**GOOD, "qid": 2, "relevant_clip_ids": [12], "saliency_scores": [[1, 1, 1]]}, "outside the video"),
             ({**GOOD}, "qid 1 already used on line 1")]
    for i, (row, message) in enumerate(cases):
        path = _write(tmp_path / f"c{i}.jsonl", [GOOD, row])
        with pytest.raises(ValueError, match=f"c{i}.jsonl:2: .*{message}"):
            load_split("custom", f"c{i}", annotations=path)


def test_custom_and_demo_files(tmp_path):
    rows = [GOOD, {**GOOD, "qid": "b", "relevant_windows": [[8, 4]]},
            {**GOOD, "qid": "c", "relevant_windows": [[4, 30]]}]
    path = _write(tmp_path / "mine.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_split("custom", "mine", annotations=path)
    assert [r.qid for r in records] == [1, "b", "c"] and records[1].windows == [[8, 4]]
    messages = [str(w.message) for w in caught]
    assert any("mine.jsonl:2" in m and "reversed" in m for m in messages)
    assert any("mine.jsonl:3" in m and "past the duration" in m for m in messages)
    with pytest.raises(ValueError, match="file stem"):
        load_split("custom", "val", annotations=path)
    _write(tmp_path / "train.jsonl", [GOOD])
    _write(tmp_path / "val.jsonl", [GOOD, {**GOOD, "qid": 5}])
    assert len(load_split("demo", "val", annotations=tmp_path)) == 2
    with pytest.raises(ValueError, match="annotations"):
        load_split("demo", "train")


def test_dataset_info_and_data_root(tmp_path, monkeypatch):
    assert set(DATASETS) == {"qvhighlights", "charades", "tacos", "ego4d", "youtube", "tvsum", "demo", "custom"}
    with pytest.raises(ValueError, match="not supported; available datasets"):
        dataset_info("kinetics")
    assert dataset_info("charades").fps == 1.0 and dataset_info("tacos").eval_split == "test"
    assert data_root(tmp_path) == tmp_path
    monkeypatch.delenv("R2_DATA", raising=False)
    with pytest.raises(ValueError, match="R2_DATA"):
        data_root()
    monkeypatch.setenv("R2_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(ValueError, match="no split 'val'"):
        load_split("charades", "val")


def test_video_file_rules(tmp_path):
    (tmp_path / "s30-d52-cam-002.avi").write_bytes(b"")
    (tmp_path / "abc_10.0_160.0.mp4").write_bytes(b"")
    assert video_file("tacos", "s30-d52", tmp_path).name == "s30-d52-cam-002.avi"
    assert video_file("qvhighlights", "abc_10.0_160.0", tmp_path).suffix == ".mp4"
    with pytest.raises(FileNotFoundError, match="s30-d99-cam-002"):
        video_file("tacos", "s30-d99", tmp_path)


def test_saliency_targets_per_kind(data_root):
    q = Record(1, "q", "v", 10, 0.5, [[2, 6]], [[0, 0, 0], [4, 4, 4], [3, 0, 3], [0, 0, 0], [0, 0, 0]])
    assert saliency_target("qvhighlights", q, 5).tolist() == pytest.approx([0, 1, 0.5, 0, 0])
    assert saliency_target("qvhighlights", q, 6).tolist() == pytest.approx([0, 1, 0.5, 0, 0, 0])  # padded
    with pytest.raises(ValueError, match="re-extract"):
        saliency_target("qvhighlights", q, 11)
    c = Record(1, "q", "v", 10.0, 1.0, [[2.5, 5.2]], None)
    assert np.flatnonzero(saliency_target("charades", c, 10)).tolist() == [3, 4, 5]  # ceil(2.5) .. ceil(5.2) - 1
    t = Record("v", "t", "v", 10, 0.5, [], [[1] * 20, [5] * 20, [3] * 20])
    assert saliency_target("tvsum", t, 3).tolist() == pytest.approx([0, 1, 0.5])
    y = Record("v", "t", "v", 10, 0.3, [], [[-1.0], [0.0], [1.0]])
    assert saliency_target("youtube", y, 3).tolist() == [0, 0.5, 1]
    with pytest.raises(ValueError, match="one frame per clip"):
        saliency_target("youtube", y, 4)
    r = load_split("qvhighlights", "val", root=data_root)[0]
    target = saliency_target("qvhighlights", r, int(r.duration / 2))
    assert target.max() <= 1 and (target > 0).sum() == len(r.to_json()["relevant_clip_ids"]) - \
        sum(not any(s) for s in r.to_json()["saliency_scores"])
