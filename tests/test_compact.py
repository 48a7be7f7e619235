"""Compact caches (int8 / fp8 with float16 scales): the quantization rule by hand, its error bound, the bytes, the
converter, the fingerprints, verify/info, and batches decoded on the device equal to the cache's decoding."""
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from r2 import cache, clip, datasets, verify
from r2.cache import (QUERY_AXES, STORES, VIDEO_AXES, Cache, CacheError, ShardWriter, convert, dequantize, quantize,
                      write_entry)
from r2.checkpoint import check_compatible
from r2.data import DeviceFeatures, GlobalBatchSampler, GroundingDataset, collate, to_device
from r2.data import dequantize as device_dequantize
from r2.errors import CheckpointError
from tests.helpers import REPO, record, write_jsonl

INT8, FP8 = STORES["int8"], STORES["fp8"]
DIMS = {"video_dim": 192, "query_dim": 128, "tokens": 17, "layers": [9, 10, 11, 12]}  # the tiny CLIP's
FP = {"clip": "tiny", "clip_sha256": "abc", "layers": [9, 10, 11, 12], "fps": 0.5, "dtype": "float16"}


# ----------------------------------------------------------------------------------------------- the rule by hand


def test_int8_by_hand_scales_ties_to_even_and_zero_channels():
    # a video (T=2, K=1, P+1=2, D=3); channel 0 absmax 15.875 = 127 / 8, channel 1 all zero, channel 2 absmax 31.75
    x = np.zeros((2, 1, 2, 3), np.float16)
    x[:, 0, :, 0] = [[15.875, -1.0], [0.0625, 0.1875]]  # / 0.125 -> 127, -8, 0.5 -> 0 (even), 1.5 -> 2
    x[:, 0, :, 2] = [[-31.75, 0.375], [0.625, 1.0]]  # / 0.25 -> -127, 1.5 -> 2, 2.5 -> 2 (even), 4
    codes, scales = quantize(x, INT8, VIDEO_AXES)
    assert codes.dtype == np.int8 and scales.dtype == np.float16 and scales.shape == (1, 3)  # (K, Dv)
    assert scales.tolist() == [[0.125, 0.0, 0.25]]
    assert codes[:, 0, :, 0].tolist() == [[127, -8], [0, 2]]
    assert codes[:, 0, :, 1].tolist() == [[0, 0], [0, 0]]
    assert codes[:, 0, :, 2].tolist() == [[-127, 2], [2, 4]]
    back = dequantize(codes, scales, VIDEO_AXES)
    assert back.dtype == np.float16 and back[:, 0, :, 0].tolist() == [[15.875, -1.0], [0.0, 0.25]]
    assert (back[:, 0, :, 1] == 0).all()


def test_the_absmax_maps_to_qmax_and_never_past_it():
    # 1 / 127 and 1 / 448 round to nearest float16s below them; the scale is rounded up instead, so the absmax maps
    # to just under the top code and rounds to it (nothing clips)
    x = np.array([[[1.0, -1.0]], [[0.5, 0.25]]], np.float16)  # (rows=2, K=1, D=2), absmax 1 in both channels
    for store, top in ((INT8, 127), (FP8, 448)):
        codes, scales = quantize(x, store, (0,))  # one scale per (layer, channel) over the rows
        assert np.float32(1 / top).astype(np.float16) < np.float32(1 / top)  # nearest rounding would go down
        assert top - 0.5 < float(np.float32(1.0) / scales.astype(np.float32)[0, 0]) <= top  # rounded up
        values = codes.astype(np.float32) if store is INT8 else cache.FP8_VALUES[codes]
        assert values[0, 0, 0] == top and values[0, 0, 1] == -top


@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_extreme_groups_decode_finite_and_close(name):
    """float16's largest value decodes finite (a scale rounded up would decode it to inf: 127 x 516 > 65504), and
    tiny groups whose absmax / QMAX underflows float16 keep a nonzero scale instead of decoding to zeros."""
    store = STORES[name]
    for absmax in (65504.0, 60000.0, 1.0, 1e-5, 1e-6, 1e-7):
        x = (np.array([1.0, -0.5, 0.25, -1.0], np.float32) * absmax).astype(np.float16).reshape(4, 1, 1)
        codes, scales = quantize(x, store, (0,))
        back = dequantize(codes, scales, (0,)).astype(np.float32)
        assert np.isfinite(back).all() and scales[0, 0] > 0, absmax
        top = float(np.abs(x).max())
        # the absmax itself: within int8's half step (or fp8's 2^-4), or a float16 subnormal step of the scale
        tolerance = max(top * (1 / 254 if name == "int8" else 2 ** -4), float(scales[0, 0]))
        assert abs(float(np.abs(back).max()) - top) <= tolerance * 1.01, absmax


def test_fp8_by_hand():
    # one query token (L=1, K=1, D=4), absmax 28 = 448 / 16: scale 0.0625 exactly
    x = np.array([[[28.0, 1.0, 0.59375, -0.03125]]], np.float16)  # / 0.0625: 448, 16, 9.5 (tie), -0.5
    codes, scales = quantize(x, FP8, QUERY_AXES)
    assert codes.dtype == np.uint8 and scales.tolist() == [[0.0625]]  # (L, K)
    # e4m3fn bits S.EEEE.MMM, bias 7: 448 = 1.75 * 2^8 -> 0.1111.110; 16 -> 0.1011.000; 9.5 ties to even 10 =
    # 1.25 * 2^3 -> 0.1010.010 (not 9 = 0.1010.001); -0.5 = -1.0 * 2^-1 -> 1.0110.000
    assert codes[0, 0].tolist() == [0b01111110, 0b01011000, 0b01010010, 0b10110000]
    assert dequantize(codes, scales, QUERY_AXES)[0, 0].tolist() == [28.0, 1.0, 0.625, -0.03125]


def test_fp8_table_is_torchs_float8_e4m3fn():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    theirs = codes.view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(np.isnan(cache.FP8_VALUES), np.isnan(theirs))
    assert np.isnan(theirs).sum() == 2  # 0x7F and 0xFF
    finite = ~np.isnan(theirs)
    np.testing.assert_array_equal(cache.FP8_VALUES[finite], theirs[finite])


def features(seed: int, shape: tuple) -> np.ndarray:
    """Residual-stream-like features: unit normal with a few channels 30x larger (CLIP's outlier channels)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., :2] *= 30
    return x.astype(np.float16)


@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_round_trip_error_is_bounded_by_the_rule(name):
    store = STORES[name]
    for x, axes in ((features(0, (12, 2, 5, 16)), VIDEO_AXES), (features(1, (9, 2, 8)), QUERY_AXES)):
        codes, scales = quantize(x, store, axes)
        s = np.expand_dims(scales.astype(np.float32), axes)
        x32 = x.astype(np.float32)
        err = np.abs(dequantize(codes, scales, axes).astype(np.float32) - x32)
        rounding = np.abs(x32) * 2.0 ** -11  # the decoded value's own float16 rounding
        if name == "int8":
            bound = s / 2 * (1 + 2 ** -10) + rounding  # half a step (the scale itself is float16)
        else:
            # 3 mantissa bits: half a unit in the last place is <= 2^-4 of the value; subnormals step by 2^-9 * s
            bound = np.maximum(np.abs(x32) * 2.0 ** -4, s * 2.0 ** -10) * (1 + 2 ** -9) + rounding
        assert (err <= bound).all(), float((err - bound).max())
        assert err.max() > 0  # the test would see a broken decoder


def test_decoding_on_the_device_equals_the_cache_decoding():
    for store in (INT8, FP8):
        x = features(2, (6, 2, 5, 16))
        codes, scales = quantize(x, store, VIDEO_AXES)
        # a batch of one: (B, K, T, P+1, Dv) codes with (B, K, Dv) scales
        batch = device_dequantize(torch.from_numpy(codes).transpose(0, 1)[None], torch.from_numpy(scales)[None],
                                  "video")
        assert batch.dtype == torch.float16
        assert torch.equal(batch[0].transpose(0, 1), torch.from_numpy(dequantize(codes, scales, VIDEO_AXES)))
        q = features(3, (7, 2, 8))
        codes, scales = quantize(q, store, QUERY_AXES)
        batch = device_dequantize(torch.from_numpy(codes).transpose(0, 1)[None],
                                  torch.from_numpy(scales).transpose(0, 1)[None], "query")  # (1, K, L, Dq), (1, K, L)
        assert torch.equal(batch[0].transpose(0, 1), torch.from_numpy(dequantize(codes, scales, QUERY_AXES)))


# ----------------------------------------------------------------------------------------------- caches


def make_fp16_cache(tmp_path: Path, n_videos: int = 4, name: str = "src") -> Path:
    """A custom-dataset fp16 cache written by ShardWriter: videos of 10-13 frames (20-26 s at 0.5 fps), two query
    texts per video, and a failed video logged in failures.jsonl."""
    lines = [record(2 * i + j, f"v{i}", f"query {j} of video {i}", 20.0 + 2 * i) for i in range(n_videos)
             for j in range(2)]
    lines.append(record(99, "broken", "a video that failed", 20.0))
    (tmp_path / name).mkdir()
    jsonl = write_jsonl(tmp_path / name / "train.jsonl", lines)
    records = datasets.load_split("custom", "train", annotations=jsonl, fps=0.5)
    entry = tmp_path / f"{name}.h5"
    write_entry(entry, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": [r.to_json() for r in records]})
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        for i in range(n_videos):
            t = 10 + i
            w.add_video(f"v{i}", features(10 + i, (t, 4, 17, 192)), np.arange(t) * 2.0, 20.0 + 2 * i, 0.5)
        for j, text in enumerate(sorted({r.query for r in records})):
            w.add_query(text, features(100 + j, (6 + j % 5, 4, 128)))
        w.failed({"vid": "broken", "error": "VideoDecodeError: no frames"})
    return entry


def folder_digest(entry: Path) -> str:
    digest = hashlib.sha256()
    for path in [entry, *sorted(cache.parts_dir(entry).iterdir())]:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_convert_round_trip_bytes_and_verify(tmp_path, name):
    src = make_fp16_cache(tmp_path)
    before = folder_digest(src)
    dst = tmp_path / f"{name}.h5"
    done = convert(src, dst, name)
    assert folder_digest(src) == before  # SRC is never written
    assert done.videos == 4 and done.queries == 9 and done.skipped == 0
    assert done.bytes / done.source_bytes <= 0.51
    a, b = Cache(src), Cache(dst)
    assert b.store is STORES[name] and b.fingerprint == {**FP, **STORES[name].fields()}
    assert b.records("train") == a.records("train") and sorted(b.videos) == sorted(a.videos)
    for vid in a.videos:
        codes, scales = quantize(a.video(vid), STORES[name], VIDEO_AXES)
        stored, stored_scales = b.stored_video(vid)
        np.testing.assert_array_equal(stored, codes)
        np.testing.assert_array_equal(stored_scales, scales)
        np.testing.assert_array_equal(b.video(vid), dequantize(codes, scales, VIDEO_AXES))
        np.testing.assert_array_equal(b.times(vid), a.times(vid))
        assert b.video_info(vid) == a.video_info(vid)
    for text in a.texts:
        codes, scales = quantize(a.query(text), STORES[name], QUERY_AXES)
        np.testing.assert_array_equal(b.query(text), dequantize(codes, scales, QUERY_AXES))
    report = verify.verify(dst)
    assert report.errors == [] and report.store == name and report.exit_code == 1  # 'broken' failed, as in SRC
    assert report.shards[0].failed == ["broken"]
    assert verify.verify(src).feature_bytes * 0.51 >= report.feature_bytes
    assert any(line.startswith(f"store: {name} (") for line in verify.info(dst))
    # back to fp16: the decoded values exactly
    back = tmp_path / "back.h5"
    convert(dst, back, "fp16")
    for vid in a.videos:
        np.testing.assert_array_equal(Cache(back).video(vid), b.video(vid))
    assert Cache(back).fingerprint == FP


def test_a_checkpoint_trained_on_fp16_features_runs_on_a_compact_copy_only_when_asked(tmp_path):
    """A compact store is a source detail for a checkpoint: refused by default (the fingerprints differ), allowed
    with --allow-feature-source and a warning; other features (another CLIP) stay refused."""
    src = make_fp16_cache(tmp_path)
    dst = tmp_path / "int8.h5"
    convert(src, dst, "int8")
    ckpt = {"dims": DIMS, "fingerprint": Cache(src).fingerprint}
    with pytest.raises(CheckpointError, match=r"dtype: .*or pass --allow-feature-source"):
        check_compatible(ckpt, Cache(dst), "best.pt")
    with pytest.warns(UserWarning, match=r"used anyway \(--allow-feature-source\)"):
        check_compatible(ckpt, Cache(dst), "best.pt", allow_feature_source=True)
    other = {"dims": DIMS, "fingerprint": {**Cache(src).fingerprint, "clip": "ViT-B/32"}}
    with pytest.raises(CheckpointError, match=r"re-extract with the checkpoint's settings, or train"):
        check_compatible(other, Cache(dst), "best.pt", allow_feature_source=True)


def test_convert_resumes_and_refuses(tmp_path, monkeypatch):
    src = make_fp16_cache(tmp_path)
    dst = tmp_path / "dst.h5"
    calls = []
    real = ShardWriter.add_video

    def dies_on_the_third(self, vid, *args):
        calls.append(vid)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a converter stopped mid-way (Ctrl-C)
        return real(self, vid, *args)

    monkeypatch.setattr(ShardWriter, "add_video", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        convert(src, dst, "int8")
    monkeypatch.setattr(ShardWriter, "add_video", real)
    assert len(Cache(dst).videos) == 2
    done = convert(src, dst, "int8")
    assert done.videos == 2 and done.skipped == 2 + 9 and sorted(Cache(dst).videos) == sorted(Cache(src).videos)
    assert convert(src, dst, "int8").videos == 0  # a third run has nothing to do
    with pytest.raises(CacheError, match=r"dtype: cache 'int8', this run 'float8_e4m3fn'"):
        convert(src, dst, "fp8")  # DST holds another store
    with pytest.raises(CacheError, match="must be a new cache, not the source"):
        convert(src, src, "int8")
    with pytest.raises(CacheError, match="already stored as fp16: nothing to convert"):
        convert(src, tmp_path / "copy.h5", "fp16")
    with pytest.raises(CacheError, match=r"--store 'int4': one of fp16, int8, fp8"):
        convert(src, tmp_path / "other.h5", "int4")
    assert not (tmp_path / "copy.h5").exists() and not (tmp_path / "other.h5").exists()


@pytest.mark.slow
def test_convert_command_line(tmp_path):
    src = make_fp16_cache(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "r2.cache", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=REPO)
    out = run("convert", str(src), str(tmp_path / "c.h5"), "--store", "fp8")
    assert out.returncode == 1, out.stderr  # valid but incomplete: the failed video, as in the source
    assert "0.5" in out.stdout.splitlines()[0] and "(fp8)" in out.stdout
    again = run("convert", str(src), str(tmp_path / "c.h5"), "--store", "int8")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "dtype: cache 'float8_e4m3fn'" in again.stderr
    for command in (["convert", str(src), str(tmp_path / "d.h5"), "--store", "int8"], ["info", str(src)],
                    ["verify", str(src)]):  # their stdout read by `| head`, gone already: quiet, no traceback
        closed = subprocess.Popen([sys.executable, "-m", "r2.cache", *command], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO)
        closed.stdout.close()
        assert "Traceback" not in closed.stderr.read() and closed.wait() in (0, 1), command  # 1: src lacks a video
    assert Cache(tmp_path / "d.h5").videos  # the conversion was done before its lines were printed


@pytest.mark.parametrize("victim", ["notes.txt", "best.pt", "other.h5", "folder", "link.h5"])
def test_a_file_that_is_not_a_cache_is_never_overwritten(tmp_path, victim):
    """Convert, extraction and merge write their entry through write_entry: an existing path there that is not an
    r2 cache (notes, a checkpoint, another HDF5 file, a folder, a dangling link) is refused, its bytes untouched."""
    import h5py

    src = make_fp16_cache(tmp_path)
    path = tmp_path / "out" / victim
    path.parent.mkdir()
    if victim == "other.h5":
        with h5py.File(path, "w") as f:
            f["weights"] = np.arange(5)
    elif victim == "folder":
        path.mkdir()
    elif victim == "link.h5":
        path.symlink_to(tmp_path / "nowhere")
    else:
        path.write_bytes(b"PK\x03\x04 a torch checkpoint" if victim == "best.pt" else b"my notes\n")
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(CacheError, match=f"{victim} exists and is not an r2 cache.*never overwrites it"):
        write_entry(path, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": []})
    done = subprocess.run([sys.executable, "-m", "r2.cache", "convert", str(src), str(path), "--store", "int8"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not an r2 cache" in done.stderr, done.stderr
    assert (path.read_bytes() if path.is_file() else None) == before and not cache.parts_dir(path).exists()


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_parts_path_that_is_not_a_folder_is_refused_before_anything_is_written(tmp_path, kind):
    """X.parts beside X.h5 is where a cache keeps its features: a file or a dangling link there is one line naming
    it (was a FileExistsError traceback), for the entry writer and the shard writer alike, and no X.h5 is left."""
    src = make_fp16_cache(tmp_path)
    dst = tmp_path / "c.h5"
    parts = cache.parts_dir(dst)
    if kind == "file":
        parts.write_text("mine")
    else:
        parts.symlink_to(tmp_path / "nowhere")
    for attempt in (lambda: convert(src, dst, "int8"),
                    lambda: write_entry(dst, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": []}),
                    lambda: ShardWriter(dst, shard=(0, 1), fingerprint=FP, dims=DIMS)):
        with pytest.raises(CacheError, match=r"c.parts: is a file or a dangling link, where the cache .*c.h5 keeps"):
            attempt()
    assert not dst.exists() and (parts.read_text() == "mine" if kind == "file" else parts.is_symlink())


def test_a_damaged_entry_beside_its_parts_is_still_rewritten(tmp_path):
    """An entry cut short (or emptied) beside its parts folder is an r2 cache's: re-running rewrites it. A file
    that was never HDF5 there (notes saved under that name) is still refused."""
    src = make_fp16_cache(tmp_path)
    dst = tmp_path / "c.h5"
    convert(src, dst, "int8")
    whole = dst.read_bytes()
    for damaged in (whole[:200], b""):
        dst.write_bytes(damaged)
        assert convert(src, dst, "int8").skipped == 13 and Cache(dst).records("train") == Cache(src).records("train")
    dst.write_bytes(b"my notes")
    with pytest.raises(CacheError, match=r"c.h5 exists and is not an r2 cache \(not an HDF5 file; if it is this "
                                         r"cache's damaged entry, delete it and re-run"):
        convert(src, dst, "int8")
    assert dst.read_bytes() == b"my notes"


def test_a_compact_store_is_refused_in_a_cache_of_another(tmp_path):
    src = make_fp16_cache(tmp_path)
    int8_fp = cache.with_store(FP, INT8)
    with pytest.raises(CacheError, match=r"dtype: cache 'float16', this run 'int8'"):
        cache.check_before_writing(src, int8_fp, DIMS, (0, 1))
    with pytest.raises(CacheError, match="other settings"):
        ShardWriter(src, shard=(0, 1), fingerprint=int8_fp, dims=DIMS)
    odd = tmp_path / "odd.h5"
    write_entry(odd, dataset="custom", fingerprint={**FP, "dtype": "bfloat16"}, dims=DIMS, annotations={"train": []})
    with pytest.raises(CacheError, match=r"odd\.h5: fingerprint dtype 'bfloat16': not a store this r2 reads"):
        Cache(odd)
    assert cache.store_of({}) is STORES["fp16"]  # caches from before compact stores


def test_verify_finds_nan_codes_and_bad_scales(tmp_path):
    import h5py

    dst = tmp_path / "f8.h5"
    convert(make_fp16_cache(tmp_path), dst, "fp8")
    segment = sorted(cache.parts_dir(dst).glob("shard-*.h5"))[0]
    with h5py.File(segment, "r+") as f:
        f["video_feats"][0, 0, 0, 0] = 0x7F  # float8_e4m3fn NaN
        f["query_scales"][0, 0] = -1.0
    errors = verify.verify(dst).errors
    assert any("video_feats rows hold NaN/inf" in e for e in errors)
    assert any("query_scales of queries" in e and "negative or not finite" in e for e in errors)
    int8 = tmp_path / "i8.h5"
    convert(make_fp16_cache(tmp_path, name="again"), int8, "int8")
    _edit_segment(int8, lambda f: f["query_feats"].__setitem__((0, 0, 0), -128))  # no quantize writes it
    assert any("1 query_feats rows hold the int8 code -128 (outside ±127)" in e for e in verify.verify(int8).errors)


def _edit_segment(entry: Path, edit) -> Path:
    import h5py

    segment = sorted(cache.parts_dir(entry).glob("shard-*.h5"))[0]
    with h5py.File(segment, "r+") as f:
        edit(f)
    return segment


def _replace(f, name: str, data: np.ndarray):
    del f[name]
    f.create_dataset(name, data=data, maxshape=(None, *data.shape[1:]))


@pytest.mark.parametrize("damage", ["video_scales missing", "query_scales missing", "video_scales a column short",
                                    "query_scales a column short", "video_scales a row short",
                                    "query_scales a row short", "video_feats a channel short"])
def test_a_segment_with_a_bad_scale_layout_is_refused_when_opened(tmp_path, damage):
    """Every read path (training, preload, evaluate, convert) opens a cache through its segment index: a scale
    dataset that is missing, of another row shape or with fewer rows than the index commits is a one-line error
    there, not an IndexError / shape mismatch in the middle of a batch."""
    entry = tmp_path / "c8.h5"
    convert(make_fp16_cache(tmp_path), entry, "int8")
    name, what = damage.split(" ", 1)

    def edit(f):
        data = f[name][...]
        if what == "missing":
            del f[name]
        elif what == "a row short":
            _replace(f, name, data[:-1])
        else:  # a column (the last axis) short
            _replace(f, name, data[..., :-1])
    segment = _edit_segment(entry, edit)
    with pytest.raises(CacheError, match=rf"{segment.name}: damaged cache segment \((dataset '{name}' is missing|"
                                         rf"{name} is |{name} has )"):
        Cache(entry)
    done = subprocess.run([sys.executable, "-m", "r2.cache", "convert", str(entry), str(tmp_path / "o.h5"),
                           "--store", "fp16"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "damaged cache segment" in done.stderr


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5])
def test_a_bad_scale_is_an_error_on_read_not_a_silent_value(tmp_path, bad):
    """A NaN, inf or negative scale (a negative one would flip the features' signs) stops the read that meets it:
    training, preloading and convert all read through Cache.stored_video / stored_query."""
    entry = tmp_path / "c8.h5"
    convert(make_fp16_cache(tmp_path), entry, "int8")

    def edit(f):
        f["video_scales"][0, 0, 0] = bad
        f["query_scales"][0, 0] = bad
    _edit_segment(entry, edit)
    c = Cache(entry)
    with pytest.raises(CacheError, match=r"the video_scales of video 'v0' are negative or not finite"):
        c.video("v0")
    first_text = min(c._queries, key=lambda t: c._queries[t][1])  # the query whose rows start at 0
    with pytest.raises(CacheError, match=r"the query_scales of query .* are negative or not finite"):
        c.query(first_text)
    with pytest.raises(CacheError, match="negative or not finite"):
        convert(entry, tmp_path / "o.h5", "fp16")


def test_convert_refuses_non_finite_source_features_and_keeps_what_it_wrote(tmp_path):
    src = make_fp16_cache(tmp_path)
    _edit_segment(src, lambda f: f["video_feats"].__setitem__((f["video_feats"].shape[0] - 1, 0, 0, 0), np.inf))
    dst = tmp_path / "c8.h5"
    with pytest.raises(CacheError, match=r"video 'v3' holds non-finite features \(NaN or inf\); .*c8.h5 keeps"):
        convert(src, dst, "int8")
    assert sorted(Cache(dst).videos) == ["v0", "v1", "v2"]  # the items converted before it are committed


def test_convert_into_a_conversion_of_another_source_is_refused(tmp_path):
    """Re-running a conversion resumes it; converting another cache into that destination (other annotations, or
    a source lacking some of its videos) is refused instead of reporting 'already there' for the old features."""
    src = make_fp16_cache(tmp_path)
    dst = tmp_path / "c8.h5"
    convert(src, dst, "int8")
    other = make_fp16_cache(tmp_path, n_videos=3, name="other")
    with pytest.raises(CacheError, match=r"holds a conversion of another cache than .*other.h5 \(its annotations "
                                         r"differ\)"):
        convert(other, dst, "int8")
    fewer = tmp_path / "fewer.h5"  # the same annotations, v3 never extracted
    a = Cache(src)
    write_entry(fewer, dataset="custom", fingerprint=FP, dims=DIMS, annotations={"train": a.records("train")})
    with ShardWriter(fewer, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        for vid in ("v0", "v1", "v2"):
            w.add_video(vid, a.video(vid), a.times(vid), *a.video_info(vid))
        for text in a.texts:
            w.add_query(text, a.query(text))
    with pytest.raises(CacheError, match=r"\(it holds 'v3', which the source lacks\)"):
        convert(fewer, dst, "int8")
    assert convert(src, dst, "int8").skipped == 13  # the same source resumes (here: nothing left)


# Converts SRC under file-size limits from 40 % to 100 % of a clean conversion's segment: each must fail with
# CacheWriteError (or finish), resume to the clean bytes, and leave no HDF5 file open: a segment left open crashes
# the interpreter's exit (SIGSEGV), which is why this runs in its own process.
SIZE_LIMIT_SWEEP = textwrap.dedent("""
    import hashlib, resource, sys
    from pathlib import Path
    from r2 import cache
    src, work, store = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    digest = lambda e: hashlib.sha256(b"".join(p.read_bytes() for p in sorted(cache.parts_dir(e).glob("*.h5")))).hexdigest()
    clean = work / "clean.h5"
    cache.convert(src, clean, store)
    size = sum(p.stat().st_size for p in cache.parts_dir(clean).glob("*.h5"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    failed = 0
    for i in range(30):
        dst = work / f"limited-{i}.h5"
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(size * (0.4 + 0.02 * i)), hard))
        try:
            cache.convert(src, dst, store)
        except cache.CacheWriteError as e:
            assert "committed in this shard are intact" in str(e), e
            failed += 1
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        done = cache.convert(src, dst, store)  # resumes in a new segment
        assert sorted(cache.Cache(dst).videos) == sorted(cache.Cache(clean).videos), i
        assert all((cache.Cache(dst).video(v) == cache.Cache(clean).video(v)).all() for v in cache.Cache(clean).videos)
    print(failed)
""")


@pytest.mark.slow  # ~60 conversions
@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_a_compact_conversion_cut_by_a_file_size_limit_fails_cleanly_and_resumes(tmp_path, name):
    """A write that fails (disk full, file size limit) anywhere in a compact segment, including a new chunk of the
    16-row scale datasets, is a CacheWriteError; the writer's close drops the unwritten chunks instead of leaving
    the segment open, so the process exits normally, and a re-run resumes to the same features."""
    src = make_fp16_cache(tmp_path, n_videos=20)
    done = subprocess.run([sys.executable, "-c", SIZE_LIMIT_SWEEP, str(src), str(tmp_path), name],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) >= 20 and "Traceback" not in done.stderr, done.stderr[-3000:]


# ----------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("name", ["fp16", "int8", "fp8"])
def test_batches_travel_stored_and_decode_after_to_device(tmp_path, name):
    src = make_fp16_cache(tmp_path)
    entry = src if name == "fp16" else tmp_path / f"{name}.h5"
    if name != "fp16":
        convert(src, entry, name)
    c = Cache(entry)
    ds = GroundingDataset(c, "train", train=True)
    ds.seed = 5
    batch = collate([ds[i] for i in range(len(ds))])
    if name == "fp16":
        assert "video_scale" not in batch and batch["video"].dtype == torch.float16
    else:
        assert batch["video"].dtype == (torch.int8 if name == "int8" else torch.uint8)  # what workers hand over
        assert batch["video_scale"].shape == (len(ds), 4, 192) and batch["query_scale"].shape[:2] == (len(ds), 4)
    decoded = to_device(batch, torch.device("cpu"))
    assert "video_scale" not in decoded and decoded["video"].dtype == torch.float16
    for i, r in enumerate(ds.records):
        n, length = c.num_frames(r.vid), c.query(r.query).shape[0]
        # (K, T, P+1, Dv) of sample i equals the cache's decoding of the stored video, bit for bit
        assert torch.equal(decoded["video"][i, :, :n], torch.from_numpy(c.video(r.vid)).transpose(0, 1))
        assert (decoded["video"][i, :, n:] == 0).all()
        assert torch.equal(decoded["query"][i, :, :length], torch.from_numpy(c.query(r.query)).transpose(0, 1))
        assert (decoded["query"][i, :, length:] == 0).all()


@pytest.mark.parametrize("name", ["fp16", "int8"])
def test_device_features_give_the_collate_batches(tmp_path, name):
    src = make_fp16_cache(tmp_path)
    entry = src if name == "fp16" else tmp_path / f"{name}.h5"
    if name != "fp16":
        convert(src, entry, name)
    ds = GroundingDataset(Cache(entry), "train", train=True)
    resident = DeviceFeatures(ds, "cpu")
    assert resident.summary.startswith("resident on cpu: train split, 4 videos (46 frames), 8 query texts: ")
    assert f"GB as {name} in" in resident.summary and resident.nbytes > 0
    for seed in (0, 3):
        ds.seed = seed
        sampler = GlobalBatchSampler(len(ds), 3, seed=seed)
        for indices, got in zip(sampler, resident.batches(sampler)):
            want = collate([ds[i] for i in indices])
            assert list(got) == list(want)  # same keys, same order
            for key, value in want.items():
                if key == "windows":
                    assert all(torch.equal(a, b) for a, b in zip(value, got[key]))
                else:
                    assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            a, b = to_device(want, torch.device("cpu")), to_device(got, torch.device("cpu"))
            assert torch.equal(a["video"], b["video"]) and torch.equal(a["query"], b["query"])


def test_device_features_refuse_when_they_do_not_fit(tmp_path, monkeypatch):
    from r2 import data

    ds = GroundingDataset(Cache(make_fp16_cache(tmp_path)), "train", train=True)
    monkeypatch.setattr(data, "free_bytes", lambda device: 1 << 20)
    with pytest.raises(data.ResidentMemoryError) as e:
        DeviceFeatures(ds, "cpu")
    message = str(e.value)
    assert "--preload cpu: the train split's features need 0.00 GB on cpu (fp16, 4 videos, 46 frames)" in message
    assert "but 0.00 GB are free; pass --preload none" in message and "--store int8" in message
    assert data.resident_features(ds, "auto", torch.device("cpu"))[0] is None  # auto falls back to streaming
    assert "--preload auto: streaming train from the cache" in data.resident_features(ds, "auto", torch.device("cpu"))[1]
    with pytest.raises(data.ResidentMemoryError):
        data.resident_features(ds, "cpu", torch.device("cpu"))
    assert data.resident_features(ds, "none", torch.device("cpu")) == (None, "")


def test_free_bytes_reads_meminfo():
    from r2 import data

    available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    assert abs(data.free_bytes(torch.device("cpu")) - available) < available // 10


# ----------------------------------------------------------------------------------------------- extraction


@pytest.mark.slow
def test_tiny_clip_checksum_is_known_without_building_it():
    ident = clip.identity("tiny")
    model = clip.load_clip("tiny")
    assert ident.sha256 == model.sha256 == clip.TINY_SHA256
    for key in ("vision_width", "text_width", "vision_layers", "text_layers", "tokens", "image_size"):
        assert getattr(ident, key) == getattr(model, key), key
    assert clip.identity("ViT-B/32") is None


NOOP = """
import json, sys
from pathlib import Path
from r2.extract import ExtractConfig, extract
s = extract(ExtractConfig(dataset="demo", out=Path(sys.argv[1]), clip="tiny", demo_videos=6, progress=False,
                          store=sys.argv[2]))
print(json.dumps({"done": s.done, "skipped": s.skipped, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_extract_compact_store_equals_converted_and_a_noop_rerun_skips_torch(tmp_path):
    def extract_run(out: Path, store: str) -> dict:
        result = subprocess.run([sys.executable, "-c", NOOP, str(out), store], capture_output=True, text=True,
                                cwd=REPO, timeout=600)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    fp16 = tmp_path / "cache" / "demo.h5"
    assert extract_run(fp16, "fp16")["done"] == 6
    assert extract_run(fp16, "fp16") == {"done": 0, "skipped": 6, "torch": False}  # nothing to do: no torch
    refused = subprocess.run([sys.executable, "-c", NOOP, str(fp16), "int8"], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode != 0 and "dtype: cache 'float16', this run 'int8'" in refused.stderr
    int8 = tmp_path / "cache" / "demo-int8.h5"
    assert extract_run(int8, "int8")["done"] == 6
    converted = tmp_path / "converted.h5"
    convert(fp16, converted, "int8")
    a, b = Cache(int8), Cache(converted)
    assert a.fingerprint == b.fingerprint and sorted(a.videos) == sorted(b.videos)
    for vid in a.videos:  # extraction quantizes the float16-rounded features: the same bytes as a conversion
        for x, y in zip(a.stored_video(vid), b.stored_video(vid)):
            np.testing.assert_array_equal(x, y)
    assert verify.verify(int8).exit_code == 0
