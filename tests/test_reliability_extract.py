"""Reliability round 2 through the extraction and merge CLIs: every numeric flag checked up front, a bad video is
that video's logged failure (with its real cause), nothing is written before every check passes, a cache of
another shard count or fps is refused, durations far from the video are reported."""
import json
import shutil
from pathlib import Path

import h5py
import pytest

from r2.cache import Cache, parts_dir
from r2.verify import verify
from tests.helpers import load_cli, make_video, record, write_jsonl

REPO = Path(__file__).resolve().parents[1]
run_cli, merge_cli = load_cli("extract/run.py"), load_cli("extract/merge.py")
LONG_ID = "v" * 300  # longer than the 255-byte file-name limit of Linux file systems


def extract(root: Path, out: Path, *extra: str) -> int:
    argv = ["--dataset", "custom", "--clip", "tiny", "--videos", str(root / "videos"), "--annotations",
            str(root / "train.jsonl"), str(root / "val.jsonl"), "--out", str(out), "--batch-size", "8",
            "--no-progress", *extra]
    return run_cli.main(run_cli.get_args_parser().parse_args(argv))


def merge(*argv: str) -> int:
    return merge_cli.main(merge_cli.get_args_parser().parse_args(list(argv)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three short videos (one annotated 100 s for its 14 s) and one record whose id is too long for a file."""
    root = tmp_path_factory.mktemp("reliability corpus")
    (root / "videos").mkdir()
    for vid, source, seconds in (("a", "color=c=red", 8), ("b", "testsrc", 10), ("c", "smptebars", 14)):
        make_video(root / "videos" / f"{vid}.mp4", source, seconds)
    wrong = record(2, "c", "colour bars", 100.0, window=(80, 90))  # the file has 14 s
    write_jsonl(root / "train.jsonl", [record(0, "a", "a red screen", 8.0, window=(2, 6)),
                                       record(1, LONG_ID, "a long name", 10.0), wrong])
    write_jsonl(root / "val.jsonl", [record(3, "b", "a test pattern", 10.0)])
    return root


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extracted") / "c.h5"
    assert extract(corpus, out) == 1  # the long id failed; the others are in
    return out


def copy_cache(entry: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / entry.name
    copy.parent.mkdir()
    shutil.copy(entry, copy)
    shutil.copytree(parts_dir(entry), parts_dir(copy))
    return copy


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "-1", "--batch-size -1: must be a whole number >= 1"),
    ("--batch-size", "0", "--batch-size 0: must be a whole number >= 1"),
    ("--demo-videos", "0", "--demo-videos 0: must be a whole number >= 1"),
    ("--fps", "-2", "--fps -2.0: must be a positive number"),
    ("--fps", "nan", "--fps nan: must be a positive number"),
    ("--fps", "inf", "--fps inf: must be a positive number"),
    ("--shard", "2/2", "need 0 <= I < N"),
    ("--shard", "-1/2", "need 0 <= I < N"),
    ("--shard", "1/0", "need 0 <= I < N"),
    ("--device", "gpu0", "--device 'gpu0': one of auto, cpu, cuda, cuda:N"),
    ("--device", "cuda:7", "--device cuda:7:"),
])
def test_every_numeric_flag_is_checked_before_any_work(corpus, tmp_path, capsys, flag, value, message):
    out = tmp_path / "c.h5"
    assert extract(corpus, out, f"{flag}={value}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not out.exists() and not parts_dir(out).exists()


def test_merge_checks_its_fps_flag(corpus, tmp_path, capsys):
    assert merge("--out", str(tmp_path / "c.h5"), "--dataset", "custom", "--annotations", str(corpus / "train.jsonl"),
                 "--fps", "0") == 2
    assert "--fps 0.0: must be a positive number" in capsys.readouterr().err


def test_a_name_too_long_is_that_videos_failure_with_its_real_cause(extracted, corpus, capsys):
    cache = Cache(extracted)
    assert sorted(cache.videos) == ["a", "b", "c"] and len(cache.texts) == 4
    logged = [json.loads(line) for line in (parts_dir(extracted) / "failures.jsonl").read_text().splitlines()]
    assert [f["vid"] for f in logged] == [LONG_ID]
    assert "File name too long" in logged[0]["error"] and "disk full" not in logged[0]["error"]
    # a re-run retries it, fails the same way, and does not log the same failure again
    assert extract(corpus, extracted) == 1
    assert len((parts_dir(extracted) / "failures.jsonl").read_text().splitlines()) == 1
    assert "videos: 0 done, 3 skipped, 1 failed" in capsys.readouterr().out


def test_a_duration_far_from_the_video_is_reported(extracted, corpus, capsys):
    # extraction printed the warning when it decoded 'c'; a fresh extraction shows it again
    fresh = extracted.parent / "again.h5"
    assert extract(corpus, fresh) == 1
    out = capsys.readouterr()
    assert "video 'c': annotated as 100 s but the file decodes to 14 s" in out.out + out.err
    assert "1 duration mismatches" in out.out
    report = verify(extracted)
    notes = "\n".join(report.lines())
    assert "1 records annotate a duration far from their video" in notes and "'c'" in notes, notes


def test_a_refused_run_writes_nothing_and_the_original_command_still_works(extracted, corpus, tmp_path, capsys):
    copy = copy_cache(extracted, tmp_path)
    segments = sorted(p.name for p in parts_dir(copy).iterdir())
    copy.unlink()  # the entry is lost; the features are not
    assert extract(corpus, copy, "--layers", "12") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "layers: cache [9, 10, 11, 12], this run [12]" in err
    assert not copy.exists() and sorted(p.name for p in parts_dir(copy).iterdir()) == segments
    assert extract(corpus, copy) == 1  # the original command: nothing to do but the failed long id
    assert sorted(Cache(copy).videos) == ["a", "b", "c"] and verify(copy).exit_code == 1


def test_a_damaged_entry_is_rebuilt_by_the_same_command(extracted, corpus, tmp_path, capsys):
    copy = copy_cache(extracted, tmp_path)
    whole = copy.read_bytes()
    copy.write_bytes(whole[:300])  # an entry cut short: still HDF5's, rewritten in place
    assert extract(corpus, copy) == 1 and sorted(Cache(copy).videos) == ["a", "b", "c"]
    copy.write_bytes(b"not an HDF5 file")  # r2 cannot tell it from a file of the user's: never overwritten
    report = verify(copy)
    assert report.exit_code == 2 and "delete it, then re-run the extraction command that made it" in report.errors[0]
    assert extract(corpus, copy) == 2 and copy.read_bytes() == b"not an HDF5 file"
    assert "if it is this cache's damaged entry, delete it and re-run" in capsys.readouterr().err
    copy.unlink()
    assert extract(corpus, copy) == 1
    assert sorted(Cache(copy).videos) == ["a", "b", "c"]


def test_another_shard_count_is_refused(extracted, corpus, tmp_path, capsys):
    copy = copy_cache(extracted, tmp_path)
    before = sorted(p.name for p in parts_dir(copy).iterdir())
    assert extract(corpus, copy, "--shard", "0/2") == 2
    err = capsys.readouterr().err
    assert "holds shards of 1" in err and "run with --shard I/1" in err
    assert sorted(p.name for p in parts_dir(copy).iterdir()) == before


def test_merge_with_another_fps_is_refused_and_verify_catches_it(extracted, corpus, tmp_path, capsys):
    copy = copy_cache(extracted, tmp_path)
    copy.unlink()
    annotations = [str(corpus / "train.jsonl"), str(corpus / "val.jsonl")]
    assert merge("--out", str(copy), "--dataset", "custom", "--annotations", *annotations, "--fps", "1") == 2
    err = capsys.readouterr().err
    assert "fps" in err and "0.5" in err and not copy.exists(), err
    assert merge("--out", str(copy), "--dataset", "custom", "--annotations", *annotations) == 1
    with h5py.File(copy, "r+") as f:  # an entry whose records say 1 fps for features sampled at 0.5
        text = f["annotations"]["val"][()].decode().replace('"fps": 0.5', '"fps": 1.0')
        del f["annotations"]["val"]
        f["annotations"].create_dataset("val", data=text, dtype=h5py.string_dtype("utf-8"))
    report = verify(copy)
    assert report.exit_code == 2 and any("fps 1.0" in e and "'b'" in e for e in report.errors), report.errors


def test_an_unwritable_out_names_the_real_cause(corpus, tmp_path, capsys):
    (tmp_path / "a file").write_text("x")
    assert extract(corpus, tmp_path / "a file" / "c.h5") == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "disk full" not in err, err


def test_bf16_help_says_where_it_is_slower():
    text = " ".join(run_cli.get_args_parser().format_help().split())
    assert "faster on CPU" not in text and "on an AVX2-only CPU it is about 3x slower" in text


def test_merge_refuses_mixed_shard_counts_before_writing_the_entry(extracted, corpus, tmp_path, capsys):
    copy = copy_cache(extracted, tmp_path)
    copy.unlink()
    segment = next(parts_dir(copy).glob("shard-00000-of-00001.*.h5"))
    shutil.copy(segment, parts_dir(copy) / "shard-00001-of-00002.000.h5")  # a segment of another shard count
    annotations = [str(corpus / "train.jsonl"), str(corpus / "val.jsonl")]
    assert merge("--out", str(copy), "--dataset", "custom", "--annotations", *annotations) == 2
    assert "holds shards of" in capsys.readouterr().err and not copy.exists()
