"""r2.predict / r2.viz: a tiny demo checkpoint used on video files, short (one window) and long (sliding windows)."""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import r2
from r2 import clip, predict, video, viz
from r2.data import GroundingDataset, collate
from r2.decode import DecodeConfig, decode
from r2.predict import (ENCODE_CHUNK, FeatureCache, Moment, Prediction, PredictError, Predictor, QueryPrediction,
                        average_saliency, merge_moments, window_starts)
from r2.predict import cli as predict_cli
from r2.predict.cli import display_json, format_table
from r2.engine import predict_split as trained_predict

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # one_thread, tiny, demo and predictor: tests/conftest.py


def _val_records(demo) -> dict[str, list[dict]]:
    by_vid: dict[str, list[dict]] = {}
    for r in demo["cache"].records("val"):
        by_vid.setdefault(r["vid"], []).append(r)
    return by_vid


def _run_reference(model, feats: np.ndarray, query: torch.Tensor, fps: float, duration: float,
                   cfg: DecodeConfig) -> dict:
    """The model on one window of cached features for one query, decoded like the evaluation does."""
    n, length = len(feats), len(query)
    clip_video = torch.from_numpy(np.array(feats)).transpose(0, 1)[None]  # (n, K, P+1, Dv) -> (1, K, n, P+1, Dv)
    with torch.no_grad():
        out = model(clip_video, torch.ones(1, n, dtype=torch.bool), query.transpose(0, 1)[None],
                    torch.ones(1, length, dtype=torch.bool))
    batch = {"n_frames": torch.tensor([n]), "fps": torch.tensor([fps], dtype=torch.float32),
             "duration": torch.tensor([duration], dtype=torch.float32)}
    return decode(out, batch, cfg)[0]


def _assert_close(a: QueryPrediction, b: QueryPrediction):
    assert a.query == b.query
    np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-5)
    np.testing.assert_allclose([[m.start, m.end, m.score] for m in a.moments],
                               [[m.start, m.end, m.score] for m in b.moments], atol=1e-5)


# ----------------------------------------------------------------------------------------------- pure helpers


def test_window_starts_cover_the_video_with_full_windows():
    assert window_starts(4, 4, 2) == [0]
    assert window_starts(3, 4, 2) == [0]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 2) == [0, 2, 4, 6, 7]
    assert window_starts(600, 28, 14)[-1] == 572
    with pytest.raises(ValueError, match="stride"):
        window_starts(10, 4, 0)


def test_merge_moments_clamps_rounds_and_suppresses():
    windows = [[1.2, 5.1, 0.9], [1.0, 5.0, 0.8], [-1.0, 3.0, 0.5], [50.0, 70.0, 0.7]]
    before = json.dumps(windows)
    cfg = DecodeConfig(unit=2.0, nms="hard", nms_iou=0.7)
    merged = merge_moments(windows, 60.0, cfg)
    # clamp: [-1, 3] -> [0, 3], [50, 70] -> [50, 60] (reaches the end: not rounded); round half to even on 2 s:
    # [1.2, 5.1] -> [2, 6], [1.0, 5.0] -> [0, 4], [0, 3] -> [0, 4]; hard NMS: [0, 4] @0.5 has IoU 1 with [0, 4] @0.8
    np.testing.assert_allclose(merged, [[2, 6, 0.9], [0, 4, 0.8], [50, 60, 0.7], [0, 4, 0.0]], atol=1e-6)
    assert json.dumps(windows) == before
    plain = merge_moments(windows, 60.0, DecodeConfig(unit=None, nms=None, top_k=2))
    np.testing.assert_allclose(plain, [[1.2, 5.1, 0.9], [1.0, 5.0, 0.8]], atol=1e-6)
    assert merge_moments([], 60.0, cfg) == []


def test_average_saliency_means_over_covering_windows():
    parts = [(0, np.array([[1.0, 2, 3, 4]])), (2, np.array([[5.0, 6, 7, 8]]))]
    np.testing.assert_allclose(average_saliency(parts, 6), [[1, 2, 4, 5, 7, 8]])
    with pytest.raises(ValueError, match="no window"):
        average_saliency(parts, 7)


def test_reel_clips_takes_the_most_salient_clips_in_time_order():
    runs = viz.reel_clips([0.1, 0.9, 0.8, 0.2, 0.95], fps=0.5, duration=9.0, seconds=6)
    assert runs == [(2.0, 6.0, 0.9), (8.0, 9.0, 0.95)]  # clips 1+2 joined; clip 4 cut at the end
    assert len(viz.reel_clips([0.3, 0.1], fps=0.5, duration=4.0, seconds=0.1)) == 1  # at least one clip


def test_import_r2_is_lazy():
    code = "import r2, sys; assert 'torch' not in sys.modules, 'import r2 imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ----------------------------------------------------------------------------------------------- one window


def test_features_equal_the_cached_ones(demo, predictor):
    cache = demo["cache"]
    vid = cache.videos[0]
    feats, duration, truncated = predictor.features(demo["videos"] / f"{vid}.mp4")
    assert feats.dtype == np.float16
    assert np.array_equal(feats, cache.video(vid))  # bit for bit: same decode, CLIP batches and fp16 rounding
    assert (duration, truncated) == (cache.video_info(vid)[0], False)
    texts = cache.texts[:3]
    for text, feats in zip(texts, predictor.encode_queries(texts)):
        # text batches of another width may move a value by one fp16 step
        np.testing.assert_allclose(feats.float().numpy(), cache.query(text).astype(np.float32), rtol=2e-3, atol=1e-3)


def test_short_video_equals_the_trained_pipeline(demo, predictor):
    cache = demo["cache"]
    dataset = GroundingDataset(cache, "val", train=False)
    reference = trained_predict(predictor.model, DataLoader(dataset, batch_size=4, collate_fn=collate), dataset,
                                predictor.decode_cfg, torch.device("cpu"), None)
    for vid, records in _val_records(demo).items():
        pred = predictor.predict(demo["videos"] / f"{vid}.mp4", [r["query"] for r in records])
        n = cache.num_frames(vid)
        assert (pred.n_frames, pred.windows, pred.duration) == (n, [(0, n)], cache.video_info(vid)[0])
        for q, r in zip(pred.queries, records):
            ref = next(x for x in reference if x["qid"] == r["qid"])
            assert len(q.saliency) == n
            np.testing.assert_allclose(q.saliency, ref["pred_saliency_scores"], atol=1e-5)
            np.testing.assert_allclose([[m.start, m.end, m.score] for m in q.moments], ref["pred_relevant_windows"],
                                       atol=1e-5)
            assert [m.score for m in q.moments] == sorted((m.score for m in q.moments), reverse=True)


def test_second_prediction_reads_the_encoded_video_cache(demo, tiny, tmp_path, monkeypatch):
    calls = []
    real = video.iter_decode
    monkeypatch.setattr(video, "iter_decode", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    source = demo["videos"] / f"{demo['cache'].videos[1]}.mp4"
    path = tmp_path / "mine.mp4"
    path.write_bytes(source.read_bytes())
    cached = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=tmp_path / "features")
    first = cached.predict(path, "a red screen")
    second = cached.predict(path, ["colour bars", "a red screen"])
    assert len(calls) == 1 and (first.from_cache, second.from_cache) == (False, True)
    _assert_close(second.queries[1], first.queries[0])  # batched with another query: equal to float tolerance
    fresh_predictor = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=None)
    fresh = fresh_predictor.predict(path, "colour bars")
    assert len(calls) == 2
    _assert_close(fresh.queries[0], second.queries[0])

    stat = path.stat()
    path.touch()  # a new date on the same content: still the same entry
    assert cached.predict(path, "a red screen").from_cache is True and len(calls) == 2
    other = demo["videos"] / f"{demo['cache'].videos[2]}.mp4"
    path.write_bytes(other.read_bytes())  # another video under the same name and dates
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replaced = cached.predict(path, "a red screen")
    assert replaced.from_cache is False and len(calls) == 3
    _assert_close(replaced.queries[0], fresh_predictor.predict(other, "a red screen").queries[0])
    path.write_bytes(source.read_bytes())
    assert cached.predict(path, "a red screen").from_cache and len(calls) == 4

    cached.feature_cache = FeatureCache(tmp_path / "small", max_bytes=1)  # a budget that keeps the newest entry only
    cached.predict(path, "a red screen")
    cached.predict(other, "a red screen")
    assert len(list((tmp_path / "small").glob("*.json"))) == 1
    assert cached.predict(other, "a red screen").from_cache and not cached.predict(path, "x").from_cache


def test_cache_key_is_the_content_not_the_name_or_dates(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"a" * 1000)
    key = FeatureCache.key(path, {"clip": "tiny"}, 0.5)
    stat = path.stat()
    path.write_bytes(b"a" * 499 + b"b" + b"a" * 500)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same dates
    assert FeatureCache.key(path, {"clip": "tiny"}, 0.5) != key
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(path.read_bytes())  # another name, same content
    assert FeatureCache.key(copy, {"clip": "tiny"}, 0.5) == FeatureCache.key(path, {"clip": "tiny"}, 0.5)
    assert FeatureCache.key(path, {"clip": "tiny"}, 1.0) != FeatureCache.key(path, {"clip": "tiny"}, 0.5)


def _entry(folder: Path) -> tuple[Path, Path]:
    [meta] = folder.glob("*.json")
    return meta, meta.with_suffix(".f16")


@pytest.mark.parametrize("damage", ["truncate", "flip", "bad json", "no data"])
def test_damaged_cache_entry_is_encoded_again(demo, tiny, tmp_path, damage):
    path = demo["videos"] / f"{demo['cache'].videos[0]}.mp4"
    cached = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=tmp_path / "features")
    first = cached.predict(path, "a red screen")
    meta, data = _entry(tmp_path / "features")
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:data.stat().st_size // 4])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x7F
        data.write_bytes(bytes(raw))
    elif damage == "bad json":
        meta.write_text('{"shape": [3')
    else:
        data.unlink()
    with pytest.warns(predict.FeatureCacheWarning, match="unusable.*encoding the video again"):
        again = cached.predict(path, "a red screen")
    assert again.from_cache is False and again.queries == first.queries
    assert cached.predict(path, "a red screen").from_cache  # the entry was rewritten whole


def test_cache_write_failures_never_cost_the_prediction(demo, tiny, tmp_path, monkeypatch):
    path = demo["videos"] / f"{demo['cache'].videos[0]}.mp4"
    reference = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=None).predict(path, "a red screen")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("R2_PREDICT_CACHE", str(blocker / "features"))  # cannot be created
    unwritable = Predictor(demo["checkpoint"], clip=tiny, device="cpu")
    with pytest.warns(predict.FeatureCacheWarning, match="cannot write to .*a-file"):
        assert unwritable.predict(path, "a red screen").queries == reference.queries

    limited = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=tmp_path / "limited")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # one frame of tiny-CLIP features is 26 KB
    try:
        with pytest.warns(predict.FeatureCacheWarning, match="File too large"):
            pred = limited.predict(path, "a red screen")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert pred.queries == reference.queries
    assert not list((tmp_path / "limited").iterdir())  # no partial entry left behind


def test_cli_prints_a_cache_problem_as_one_warning_line(demo, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(clip, "load_clip", lambda spec, device="cpu": tiny)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = demo["videos"] / f"{demo['cache'].videos[0]}.mp4"
    args = _cli(demo, tmp_path / "out", "--video", str(path), "--query", "red", "--feature-cache", str(blocker))
    assert predict_cli.main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: encoded-video cache: cannot write to {blocker} (File exists); the prediction goes on without it"]


def test_temporary_files_of_dead_writers_are_removed(demo, tiny, tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan, live = folder / f".{'0' * 32}.{dead.pid}.f16", folder / f".{'1' * 32}.{os.getpid()}.f16"
    orphan.write_bytes(b"x" * 100)
    live.write_bytes(b"x" * 100)
    cached = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=folder)
    cached.predict(demo["videos"] / f"{demo['cache'].videos[0]}.mp4", "red")
    assert not orphan.exists() and live.exists() and len(list(folder.glob("[!.]*.json"))) == 1


# ----------------------------------------------------------------------------------------------- windows


def test_window_path_equals_windows_run_one_by_one(demo, tiny):
    cache = demo["cache"]
    vid = max(cache.videos, key=cache.num_frames)
    n, window, stride = cache.num_frames(vid), 8, 4
    windowed = Predictor(demo["checkpoint"], clip=tiny, device="cpu", window_frames=window,
                         feature_cache=demo["root"] / "features")
    queries = ["a red screen", "a fractal zooming in"]
    pred = windowed.predict(demo["videos"] / f"{vid}.mp4", queries)
    starts = window_starts(n, window, stride)  # the demo's longest video: 16 frames, so 3 overlapping windows
    assert len(starts) >= 3 and pred.windows == [(s, s + window) for s in starts]
    assert pred.frames_held <= window + ENCODE_CHUNK

    feats, duration = cache.video(vid), cache.video_info(vid)[0]
    fps = cache.video_info(vid)[1]
    per_window = dataclasses.replace(windowed.decode_cfg, unit=None, nms=None)
    for q, query in zip(pred.queries, windowed.encode_queries(queries)):
        total, count, moments = np.zeros(n), np.zeros(n), []
        for s in starts:
            span = duration - s / fps if s == starts[-1] else window / fps
            out = _run_reference(windowed.model, feats[s:s + window], query, fps, span, per_window)
            total[s:s + window] += out["pred_saliency_scores"]
            count[s:s + window] += 1
            moments += [[a + s / fps, b + s / fps, c] for a, b, c in out["pred_relevant_windows"]]
        np.testing.assert_allclose(q.saliency, total / count, atol=1e-5)
        np.testing.assert_allclose([[m.start, m.end, m.score] for m in q.moments],
                                   merge_moments(moments, duration, windowed.decode_cfg), atol=1e-5)
        assert all(0 <= m.start <= m.end <= duration for m in q.moments)


def _stub_encoder(held: list):
    """Cheap stand-in for CLIP on long videos: every token of frame i is its mean colour, tiled to Dv."""
    def encode_frames(model, frames, layers, batch_size=64, bf16=False):
        held.append(len(frames))
        colour = torch.from_numpy(frames.reshape(len(frames), -1, 3).mean(axis=1) / 255)  # (n, 3)
        tokens = colour.repeat(1, model.vision_width // 3 + 1)[:, :model.vision_width]  # (n, Dv)
        return tokens[:, None, None].expand(-1, len(layers), model.tokens, -1).float().contiguous()  # (n, K, P+1, Dv)
    return encode_frames


@pytest.mark.slow  # a 20-minute video through sliding windows (~8 s)
def test_twenty_minute_video_streams_through_windows(demo, predictor, tmp_path, monkeypatch):
    path = tmp_path / "long.mp4"
    sources = "".join(f"color=c={c}:s=64x48:r=1:d=300[v{i}];" for i, c in enumerate(("red", "blue", "lime", "red")))
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "nullsrc=s=64x48:d=1", "-filter_complex",
                    sources + "[v0][v1][v2][v3]concat=n=4[out]", "-map", "[out]", "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "600", str(path)], check=True)
    chunks: list[int] = []
    monkeypatch.setattr(clip, "encode_frames", _stub_encoder(chunks))
    pred = predictor.predict(path, ["a red screen", "a blue screen"])
    w, s = predictor.window_frames, predictor.stride_frames
    assert (w, s) == (max(demo["cache"].num_frames(v) for v in demo["cache"].videos), w // 2)
    assert pred.n_frames == 600 and abs(pred.duration - 1200) < 1 and not pred.truncated
    assert pred.windows == [(start, start + w) for start in window_starts(600, w, s)]
    assert max(chunks) <= ENCODE_CHUNK and sum(chunks) == 600
    assert pred.frames_held <= w + ENCODE_CHUNK  # never the whole video
    for q in pred.queries:
        assert len(q.saliency) == 600 and np.isfinite(q.saliency).all()
        scores = [m.score for m in q.moments]
        assert 0 < len(q.moments) <= predictor.decode_cfg.top_k and scores == sorted(scores, reverse=True)
        assert all(0 <= m.start <= m.end <= pred.duration for m in q.moments)
        kept = [m for m in q.moments if m.score > 0]
        for i, a in enumerate(kept):  # hard NMS: no two kept moments overlap at IoU >= 0.7
            for b in kept[i + 1:]:
                inter = max(0.0, min(a.end, b.end) - max(a.start, b.start))
                assert inter / (max(a.end, b.end) - min(a.start, b.start)) < 0.7
    again = predictor.predict(path, ["a red screen", "a blue screen"])
    assert again.from_cache and sum(chunks) == 600 and again.frames_held <= w + ENCODE_CHUNK
    assert again.queries == pred.queries


# ----------------------------------------------------------------------------------------------- CLI and outputs


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _cli(demo, out: Path, *extra: str) -> argparse.Namespace:
    return predict_cli.get_args_parser().parse_args(["--checkpoint", str(demo["checkpoint"]), "--out", str(out),
                                                 "--feature-cache", str(demo["root"] / "features"), *extra])


def test_cli_writes_predictions_plot_page_chapters_and_clips(demo, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(clip, "load_clip", lambda spec, device="cpu": tiny)
    vid, records = next(iter(_val_records(demo).items()))
    video_path = demo["videos"] / f"{vid}.mp4"
    out = tmp_path / "out"
    args = _cli(demo, out, "--video", str(video_path), "--annotations", str(demo["val"]), "--top", "2", "--plot",
                "--html", "--export-clips", "--export-chapters")
    assert predict_cli.main(args) == 0
    stdout = capsys.readouterr().out
    saved = json.loads((out / f"{vid}.json").read_text())
    assert saved["video_file"] == str(video_path.resolve())
    assert [q["query"] for q in saved["queries"]] == [r["query"] for r in records]  # queries from --annotations
    assert all(w[2] > 0 for q in saved["queries"] for w in q["pred_relevant_windows"])  # score > 0 by default
    shown = json.loads(stdout.strip().splitlines()[-1])
    assert shown["queries"][0]["moments"] == [[round(a, 2), round(b, 2), round(c, 4)] for a, b, c in
                                              saved["queries"][0]["pred_relevant_windows"][:2]]
    assert "rank" in stdout and f"{shown['queries'][0]['moments'][0][0]:.2f}" in stdout

    png = (out / f"{vid}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    page = _Page()
    page.feed((out / f"{vid}.html").read_text())
    tags = page.tags
    src = next(a["src"] for t, a in tags if t == "video")
    assert (out / src).resolve() == video_path.resolve()
    buttons = [(float(a["data-start"]), float(a["data-end"])) for t, a in tags if t == "button"]
    expected = [(w[0], w[1]) for q in shown["queries"] for w in q["moments"]]  # top 2 each
    assert buttons == expected
    links = [a["href"] for t, a in tags if t == "a"]
    assert links == [f"#t={s:.2f},{e:.2f}" for s, e in expected]
    assert sum(t == "svg" for t, _ in tags) == len(records) and sum(t == "section" for t, _ in tags) == len(records)
    assert not any(a.get("src", "").startswith("http") or t == "link" for t, a in tags)  # self-contained

    chapters = (out / f"{vid}.vtt").read_text()
    assert chapters.startswith("WEBVTT\n") and chapters.count(" --> ") == len(expected)

    clips = sorted((out / "clips").glob("*.mp4"))
    assert len(clips) == len(buttons) and all(c.name.startswith(f"{vid}_q") for c in clips)
    start, end = buttons[0]
    cut = video.decode(next(c for c in clips if "_q1_1_" in c.name), fps=1, size=32)
    assert abs(cut.duration - (end - start)) < 0.6


def test_cli_names_outputs_by_video_and_loads_clip_once(demo, tiny, tmp_path, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr(clip, "load_clip", lambda spec, device="cpu": loads.append(spec) or tiny)
    folder, elsewhere, out = tmp_path / "videos", tmp_path / "elsewhere", tmp_path / "out"
    folder.mkdir(), elsewhere.mkdir()
    first, second, third = (demo["videos"] / f"{v}.mp4" for v in demo["cache"].videos[:3])
    (folder / "a.mp4").write_bytes(first.read_bytes())
    (folder / "b.mkv").write_bytes(second.read_bytes())
    (folder / "notes.txt").write_text("not a video")
    (elsewhere / "a.mp4").write_bytes(third.read_bytes())  # the same name as folder/a.mp4
    assert predict_cli.main(_cli(demo, out, "--video", str(folder), str(elsewhere / "a.mp4"), "--query", "red")) == 0
    assert len(loads) == 1  # one CLIP for all three videos
    names = {p.name: json.loads(p.read_text())["video_file"] for p in out.glob("*.json")}
    assert names == {"a.json": str((folder / "a.mp4").resolve()), "b.json": str((folder / "b.mkv").resolve()),
                     "a-2.json": str((elsewhere / "a.mp4").resolve())}
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    other = tmp_path / "third" / "a.mp4"  # a later call, a fourth video of that name, into the same --out
    other.parent.mkdir()
    other.write_bytes(second.read_bytes())
    assert predict_cli.main(_cli(demo, out, "--video", str(other), "--query", "red")) == 0
    assert json.loads((out / "a-3.json").read_text())["video_file"] == str(other.resolve())
    assert all((out / name).read_bytes() == data for name, data in before.items())  # nothing overwritten
    assert predict_cli.main(_cli(demo, out, "--video", str(folder / "a.mp4"), "--query", "blue")) == 0  # same video:
    assert json.loads((out / "a.json").read_text())["queries"][0]["query"] == "blue"  # its own file is updated
    assert len(list(out.glob("*.json"))) == 4
    capsys.readouterr()


def test_cli_goes_on_after_a_bad_video_and_writes_all_moments_on_request(demo, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(clip, "load_clip", lambda spec, device="cpu": tiny)
    good = demo["videos"] / f"{demo['cache'].videos[0]}.mp4"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out"
    assert predict_cli.main(_cli(demo, out, "--video", str(broken), str(good), "--query", "red", "--all-moments")) == 1
    err = capsys.readouterr().err
    assert "cannot decode video" in err and "broken.mp4" in err and "1 of 2 videos predicted, 1 failed" in err
    saved = json.loads((out / f"{good.stem}.json").read_text())
    full = Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=None).predict(good, "red")
    assert saved["queries"][0]["pred_relevant_windows"] == [[m.start, m.end, m.score] for m in full.queries[0].moments]
    assert predict_cli.main(_cli(demo, out, "--video", str(broken), "--query", "red")) == 2


def _prediction(moments: list[Moment], saliency=(0.1, 0.5, 0.9, 0.2, 0.3)) -> Prediction:
    return Prediction(video="x.mp4", duration=9.966667, fps=0.5, n_frames=5, truncated=False, window_frames=5,
                      stride_frames=2, windows=[(0, 5)], frames_held=5, from_cache=False,
                      queries=[QueryPrediction("a query", moments, list(saliency))])


def test_printed_moments_are_positive_and_rounded_and_top_zero_says_so():
    pred = _prediction([Moment(4.0, 9.966667, 0.81234567), Moment(0.0, 2.0, 0.0)])
    assert display_json(pred, 5)["queries"][0]["moments"] == [[4.0, 9.97, 0.8123]]
    table = format_table(pred, 5)
    assert "9.97" in table and "0.0000" not in table  # the zero-score window is not shown
    hidden = format_table(pred, 0)
    assert "--top 0" in hidden and "saliency-only" not in hidden and display_json(pred, 0)["queries"][0]["moments"] == []
    assert "saliency-only model" in format_table(_prediction([]), 5)
    assert "no moment with a score > 0" in format_table(_prediction([Moment(0.0, 2.0, 0.0)]), 5)
    assert pred.to_json(all_moments=False)["queries"][0]["pred_relevant_windows"] == [[4.0, 9.966667, 0.81234567]]
    assert len(pred.to_json()["queries"][0]["pred_relevant_windows"]) == 2


def _video_with_audio(path: Path, seconds: int = 16) -> Path:
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc=s=64x48:r=10:d={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:d={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


def _audio_seconds(path: Path) -> float:
    """Seconds of audio in a file: its samples decoded to 8 kHz mono s16."""
    proc = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar",
                           "8000", "-f", "s16le", "pipe:1"], capture_output=True, check=True)
    return len(proc.stdout) / 2 / 8000


def test_highlight_reel_has_the_chosen_length(demo, predictor, tmp_path):
    vid = demo["cache"].videos[0]
    pred = predictor.predict(demo["videos"] / f"{vid}.mp4", "a red screen").to_json()
    [reel] = viz.export_reel(pred, tmp_path, seconds=8)
    runs = viz.reel_clips(pred["queries"][0]["pred_saliency_scores"], pred["fps"], pred["duration"], 8)
    assert abs(video.decode(reel, fps=1, size=32).duration - sum(e - s for s, e, _ in runs)) < 0.6
    assert not viz.has_audio(reel)  # the demo videos have no sound


def test_clips_and_reels_keep_the_audio_track(predictor, tmp_path):
    source = _video_with_audio(tmp_path / "sound.mp4")
    assert viz.has_audio(source)
    pred = predictor.predict(source, "a test pattern").to_json()
    clips = viz.export_moments(pred, tmp_path / "clips", top=1)
    [reel] = viz.export_reel(pred, tmp_path / "reel", seconds=6)
    start, end, _ = viz.top_moments(pred["queries"][0], 1)[0]
    assert abs(_audio_seconds(clips[0]) - (end - start)) < 0.3
    runs = viz.reel_clips(pred["queries"][0]["pred_saliency_scores"], pred["fps"], pred["duration"], 6)
    assert abs(_audio_seconds(reel) - sum(e - s for s, e, _ in runs)) < 0.3
    assert abs(video.decode(reel, fps=10, size=32).duration - sum(e - s for s, e, _ in runs)) < 0.3


# ----------------------------------------------------------------------------------------------- errors


def test_refuses_other_clip_weights_and_other_fps(demo, tiny):
    other = dataclasses.replace(tiny, sha256="0" * 64)
    with pytest.raises(PredictError, match="--clip PATH"):
        Predictor(demo["checkpoint"], clip=other, feature_cache=None)
    with pytest.raises(PredictError, match="0.5 fps"):
        Predictor(demo["checkpoint"], clip=tiny, device="cpu", fps=1.0, feature_cache=None)


def test_cli_errors_are_one_line(demo, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(clip, "load_clip", lambda spec, device="cpu": tiny)
    args = predict_cli.get_args_parser().parse_args(["--checkpoint", str(demo["checkpoint"]), "--video",
                                                 str(tmp_path / "missing.mp4"), "--query", "q", "--no-feature-cache",
                                                 "--out", str(tmp_path)])
    assert predict_cli.main(args) == 2
    assert "missing.mp4: file not found" in capsys.readouterr().err
    args.query, args.video = [], [demo["videos"] / f"{demo['cache'].videos[0]}.mp4"]
    assert predict_cli.main(args) == 2
    assert "--query TEXT" in capsys.readouterr().err
    args.query, args.top = ["q"], -1
    assert predict_cli.main(args) == 2
    assert "--top -1: must be >= 0" in capsys.readouterr().err
    args.top, args.query = 5, ["  "]
    assert predict_cli.main(args) == 2
    assert "--query '': a query needs some text" in capsys.readouterr().err
    args.query, args.annotations = ["q"], tmp_path / "gt.jsonl"
    assert predict_cli.main(args) == 2
    assert f"--annotations {tmp_path / 'gt.jsonl'}: file not found" in capsys.readouterr().err
    assert r2.Predictor is Predictor
