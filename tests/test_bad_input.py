"""The bad-input corpus, through the real CLIs: every bad file or line gets a clear message or its documented
handling, nothing good is lost, and training runs on what was extracted. Untrusted checkpoints never run code."""
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from r2.cache import Cache
from r2.clip import tokenize
from r2.checkpoint import load_checkpoint
from r2.errors import CheckpointError
from r2.train import TrainConfig, Trainer
from r2.verify import verify
from r2.video import ffmpeg_exe
from tests.helpers import REPO, extract_cmd, load_cli, make_video, record, run, write_jsonl

LONG_QUERY = " ".join(["the person walks slowly across the crowded market square"] * 12)  # ~110 tokens
EMPTY_QUERY = ""
ACCENTS = "une vidéo où l'écran devient rouge, très rouge"
NOT_OURS = r"not an r2 (or R²-Tuning )?checkpoint"  # r2.checkpoint names both formats it reads
EMOJI = "a red screen 🔴🎬 — 赤い画面"

# good videos: id -> (lavfi source, seconds, extra ffmpeg args, expected frames at 0.5 fps, query)
GOOD = {
    "plain": ("color=c=red", 12, (), 6, "a red screen"),
    "sub/clip one.v2": ("color=c=blue", 10, (), 5, ACCENTS),  # an id with '/', a space and dots
    "clip; $(touch pwned) `touch pwned2`": ("testsrc", 10, (), 5, EMOJI),  # shell metacharacters
    "vfr": ("testsrc", 12, (), 6, LONG_QUERY),  # variable frame rate (made below)
    "huge": ("smptebars", 6, (), 3, EMPTY_QUERY),  # 4096x2160
    "one_frame": ("color=c=lime", 1, ("-frames:v", "1"), 1, "a green screen"),
    "shorter_than_a_clip": ("color=c=yellow", 0.5, (), 1, "a yellow screen"),
    "truncated_with_index": ("testsrc", 20, ("-movflags", "+faststart"), None, "a counter"),  # first half decodes
}
# bad files: id -> the message logged in failures.jsonl
BAD = {
    "zero_bytes": "file is empty (0 bytes)",
    "truncated": "moov atom not found",
    "audio_only": "no video stream",
    "text_named_mp4": "ffmpeg cannot read it",
    "missing_file": "not found",
    "../escapes": "leaves the videos folder",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad corpus")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    for vid, (source, seconds, extra, _, _) in GOOD.items():
        if vid not in ("vfr", "huge"):
            make_video(videos / f"{vid}.mp4", source, seconds, *extra)
    make_video(videos / "huge.mp4", "smptebars", 6, size="4096x2160", rate=1)
    # variable frame rate: 10 fps for 3 s, then one frame per 0.5 s, timestamps kept
    make_video(videos / "vfr.mp4", "testsrc", 12, "-vf", "select='lt(n,30)+gte(n,30)*not(mod(n,5))'",
               "-fps_mode", "vfr", rate=10)
    cut = videos / "truncated_with_index.mp4"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (videos / "zero_bytes.mp4").touch()
    whole = make_video(root / "whole.mp4", "testsrc", 20)
    (videos / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-t", "4", "-i", "sine",
                    "-c:a", "aac", str(videos / "audio_only.mp4")], check=True, capture_output=True)
    (videos / "text_named_mp4.mp4").write_text("this is not a video\n" * 40)
    make_video(root / "escapes.mp4", "color=c=red", 10)  # outside videos/: '../escapes' must not reach it

    train = [record(i, vid, GOOD[vid][4], GOOD[vid][1], window=(2, 6)) for i, vid in enumerate(
        ["plain", "sub/clip one.v2", "clip; $(touch pwned) `touch pwned2`", "vfr", "huge"])]
    train += [record(10 + i, vid, f"query about {vid}", 12.0) for i, vid in enumerate(BAD)]
    past_end = record(20, "plain", "a window past the end", 12.0, window=(8, 12))
    past_end["relevant_windows"] = [[8, 30]]  # outside the video: kept as written, repaired in training targets
    train.append(past_end)
    val = [record(30, "one_frame", GOOD["one_frame"][4], 2.0, window=(0, 2)),
           record(31, "shorter_than_a_clip", GOOD["shorter_than_a_clip"][4], 2.0, window=(0, 2))]
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "val.jsonl", val)
    # its own split: the cut file keeps 5 of the 10 clips its annotation scores, and training on such a record
    # stops with saliency_target's ValueError (reported to r2/data.py's owner)
    write_jsonl(root / "cut.jsonl", [record(32, "truncated_with_index", GOOD["truncated_with_index"][4], 20.0)])
    return root


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad cache") / "bad.h5"
    cmd = extract_cmd(corpus, out)
    cmd.insert(cmd.index("--annotations") + 3, str(corpus / "cut.jsonl"))
    done = run(cmd, cwd=corpus)
    return out, done


def test_bad_videos_are_logged_and_skipped_good_ones_extracted(corpus, extracted):
    out, done = extracted
    assert done.returncode == 1, done.stderr  # some videos failed
    assert f"videos: {len(GOOD)} done, 0 skipped, {len(BAD)} failed" in done.stdout
    assert "failures.jsonl" in done.stdout
    failures = [json.loads(line) for line in (out.with_suffix(".parts") / "failures.jsonl").read_text().splitlines()]
    logged = {f["vid"]: f["error"] for f in failures}
    assert sorted(logged) == sorted(BAD)
    for vid, message in BAD.items():
        assert message in logged[vid], (vid, logged[vid])
        assert "\n" not in logged[vid]
    cache = Cache(out)
    assert sorted(cache.videos) == sorted(GOOD)
    for vid, (_, seconds, _, frames, _) in GOOD.items():
        if frames is not None:
            assert cache.num_frames(vid) == frames, vid
    # a truncated file whose index survived: the frames before the cut, its duration the span they cover
    t = cache.num_frames("truncated_with_index")
    assert 1 <= t < 10 and cache.video_info("truncated_with_index")[0] == pytest.approx(t / 0.5)
    # a VFR video (last frame at 11.5 s): sampled on its timestamps, 6 frames like a constant-rate 12 s video
    assert cache.video_info("vfr")[0] == pytest.approx(11.6, abs=0.11)
    # shell metacharacters went to ffmpeg as one argument: nothing ran
    assert not any(p.name.startswith("pwned") for d in (corpus, corpus / "videos", REPO) for p in d.iterdir())


def test_queries_of_every_shape_are_extracted(extracted):
    cache = Cache(extracted[0])
    long = cache.query(LONG_QUERY)
    assert len(tokenize(LONG_QUERY)[0].nonzero()) == 77 and long.shape[0] == 77  # truncated to the context
    assert cache.query(EMPTY_QUERY).shape[0] == 2  # SOT, EOT
    assert cache.query(EMOJI).shape[0] == len(tokenize(EMOJI)[0].nonzero()) > 5
    assert ACCENTS in cache.texts and EMOJI in cache.texts


def test_verify_counts_the_failures_and_training_uses_the_good_videos(extracted, tmp_path):
    out, _ = extracted
    report = verify(out)
    assert report.exit_code == 1 and not report.errors, report.lines()
    assert (report.videos, report.expected_videos) == (len(GOOD), len(GOOD) + len(BAD))
    assert sorted(report.shards[0].failed) == sorted(BAD) and not report.shards[0].missing
    assert f"{len(BAD)} failed (failures.jsonl" in "\n".join(report.lines())

    cfg = TrainConfig(cache=str(out), out=str(tmp_path / "run"), epochs=1, batch_size=4, hidden=64, workers=0,
                      progress=False)
    trainer = Trainer(cfg)
    # 5 s and longer only (SPEC §4), failed videos left out and counted
    assert sorted(r.vid for r in trainer.train_set.records) == sorted(
        ["plain", "sub/clip one.v2", "clip; $(touch pwned) `touch pwned2`", "vfr", "huge", "plain"])
    assert trainer.train_set.missing == len(BAD)
    best = trainer.fit()
    assert best["epoch"] == 1 and best["value"] == best["value"]  # finite, not NaN
    assert (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.parametrize("line,message", [
    ('{"qid": 1, "query": "q", "duration": 10, "relevant_windows": [[0, 2]]}', r"train\.jsonl:2: field 'vid' missing"),
    ('{"qid": 1, "vid": "v", "query": "q", "relevant_windows": [[0, 2]]}', r"train\.jsonl:2: field 'duration' missing"),
    ('{"qid": 1, "vid": "v", "query": "q", "duration": 10, "relevant_windows": [[0, 2]]',
     r"train\.jsonl:2: not valid JSON"),
    ('{"qid": 1, "vid": "v", "query": 5, "duration": 10, "relevant_windows": [[0, 2]]}',
     r"train\.jsonl:2: field 'query' = 5 must be a string"),
])
def test_bad_annotation_lines_stop_extraction_with_file_and_line(tmp_path, capsys, line, message):
    good = json.dumps(record(0, "a", "q", 10.0))
    train = tmp_path / "train.jsonl"
    train.write_text(good + "\n" + line + "\n")
    cli = load_cli("extract/run.py")
    args = cli.get_args_parser().parse_args(["--dataset", "custom", "--clip", "tiny", "--videos", str(tmp_path),
                                             "--annotations", str(train), "--out", str(tmp_path / "c.h5")])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "c.h5").exists()  # nothing written for a bad annotation file


# ----------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(extracted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    trainer = Trainer(TrainConfig(cache=str(extracted[0]), out=str(out / "run"), epochs=1, batch_size=4, hidden=64,
                                  workers=0, progress=False))
    trainer.fit()
    return out / "run" / "best.pt"


def _evaluate(checkpoint: Path, cache: Path, capsys) -> tuple[int, str]:
    cli = load_cli("train/evaluate.py")
    code = cli.main(cli.get_args_parser().parse_args(["--checkpoint", str(checkpoint), "--cache", str(cache),
                                                      "--split", "val", "--out", str(checkpoint.parent / "eval")]))
    return code, capsys.readouterr().err


def test_checkpoint_on_a_cache_from_another_clip_is_refused(extracted, checkpoint, tmp_path, capsys):
    assert _evaluate(checkpoint, extracted[0], capsys)[0] == 0
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["fingerprint"] = {**ckpt["fingerprint"], "clip": "ViT-B/16", "clip_sha256": "5806e77c"}
    other = tmp_path / "other_clip.pt"
    torch.save(ckpt, other)
    code, err = _evaluate(other, extracted[0], capsys)
    assert code == 2 and "trained on features made differently" in err and "clip: 'ViT-B/16' vs 'tiny'" in err


@pytest.mark.parametrize("content", ["foreign_state_dict", "text", "empty"])
def test_a_checkpoint_that_is_not_ours_is_refused(extracted, tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content == "foreign_state_dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
    elif content == "text":
        path.write_text("not a checkpoint\n")
    else:
        path.touch()
    with pytest.raises(CheckpointError, match=NOT_OURS):
        load_checkpoint(path)
    code, err = _evaluate(path, extracted[0], capsys)
    assert code == 2 and re.search(NOT_OURS, err) and err.count("\n") == 1


class _Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_checkpoint_with_code_in_its_pickle_is_refused_without_running_it(extracted, checkpoint, tmp_path,
                                                                             capsys):
    marker = tmp_path / "code_ran"
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["extra"] = _Payload(marker)
    hostile = tmp_path / "hostile.pt"
    torch.save(ckpt, hostile)
    with pytest.raises(CheckpointError, match=NOT_OURS):
        load_checkpoint(hostile)
    code, err = _evaluate(hostile, extracted[0], capsys)
    assert code == 2
    # --resume reads last.pt the same way
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(hostile, run_dir / "last.pt")
    fit = load_cli("train/fit.py")
    assert fit.main(fit.get_args_parser().parse_args(["--cache", str(extracted[0]), "--resume", str(run_dir)])) == 2
    assert re.search(NOT_OURS, capsys.readouterr().err)
    assert not marker.exists()
    # the payload is live: plain pickle would have run it
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
